"""Which Agent a verified cloud identity acts as (pure).

Guarantees: ``match_agent`` returns the one Agent whose ``spec.federation`` claims the identity
or raises ``errors.InvalidGrant``: when no Agent claims it (the message names the identity, so an
admin can paste it into a manifest) and when more than one does (an identity must never be
able to choose which agent it becomes). Rules:

- AWS: an Agent claims a role when one of ``federation.aws.roleArns`` matches it
  (``aws.role_arn_matches``) and, if ``accountIds`` is set, the role's account is listed. An
  empty ``roleArns`` claims nothing: ``accountIds`` only narrows.
- GCP: an Agent claims a service account when its e-mail is listed (case-insensitively) in
  ``federation.gcp.serviceAccounts`` and, if ``projectIds`` is set, the token's
  ``google.compute_engine.project_id`` is listed (a token without one does not match).

Only what the cluster admin's claim policy allows counts (:mod:`agentauth.domain.claimpolicy`):
an Agent's federation entry that its namespace may not claim is ignored, so it can neither take
an identity nor make it ambiguous for the namespace it belongs to (no cross-namespace denial of
service); with no policy no entry counts.

Suspension and readiness are not considered here: the token service checks them on the
matched Agent, so a suspended agent's identity gets "suspended", not "unknown".
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from typing import Literal

from agentauth.domain import claimpolicy, errors
from agentauth.domain.federation import aws, gcp
from agentauth.domain.models import Agent
from agentauth.domain.models import agents as agent_models


@dataclasses.dataclass(frozen=True)
class FederatedIdentity:
    """A cloud workload identity proven by AWS STS or a Google-signed ID token.

    ``principal`` is what manifests name: the IAM role ARN (path-less) or the service-account
    e-mail. ``account`` is the AWS account ID or the GCP project ID (``None`` when the token
    does not say). ``subject`` is the provider's own identifier for audit: the assumed-role ARN
    with its session name, or the Google ``sub``.
    """

    provider: Literal["aws", "gcp"]
    principal: str
    account: str | None
    subject: str

    @classmethod
    def from_aws(cls, caller: aws.CallerIdentity) -> FederatedIdentity:
        return cls(
            provider="aws", principal=caller.role_arn, account=caller.account_id, subject=caller.arn
        )

    @classmethod
    def from_gcp(cls, identity: gcp.GoogleIdentity) -> FederatedIdentity:
        return cls(
            provider="gcp",
            principal=identity.email,
            account=identity.project_id,
            subject=identity.subject,
        )

    def describe(self) -> str:
        if self.provider == "aws":
            return f"AWS role {self.principal}"
        project = f" in project {self.account}" if self.account else ""
        return f"GCP service account {self.principal}{project}"


def claims(
    agent: Agent,
    identity: FederatedIdentity,
    *,
    federation: agent_models.Federation | None = None,
) -> bool:
    """Whether ``agent``'s federation rules (or ``federation``, the ones the policy allows of
    them) admit ``identity`` (see the module docstring)."""
    federation = federation if federation is not None else agent.spec.federation
    if federation is None:
        return False
    if identity.provider == "aws":
        rules = federation.aws
        if rules is None:
            return False
        if rules.account_ids and identity.account not in rules.account_ids:
            return False
        return any(aws.role_arn_matches(identity.principal, p) for p in rules.role_arns)
    gcp_rules = federation.gcp
    if gcp_rules is None:
        return False
    if gcp_rules.project_ids and identity.account not in gcp_rules.project_ids:
        return False
    return any(identity.principal == email.lower() for email in gcp_rules.service_accounts)


def _qualified_name(agent: Agent) -> str:
    return f"{agent.metadata.namespace}/{agent.metadata.name}"


def match_agent(
    identity: FederatedIdentity,
    agents: Iterable[Agent],
    *,
    policy: claimpolicy.ClaimPolicy,
) -> Agent:
    """The single Agent whose allowed federation entries claim ``identity``; ``InvalidGrant``
    for none or several."""
    claimants: list[Agent] = []
    for agent in agents:
        allowed, _refused = claimpolicy.allowed_federation(agent, policy)
        if allowed is not None and claims(agent, identity, federation=allowed):
            claimants.append(agent)
    if not claimants:
        raise errors.InvalidGrant(
            f"no Agent's spec.federation admits {identity.describe()} (that the cluster's claim "
            "policy allows its namespace to claim)"
        )
    if len(claimants) > 1:
        names = ", ".join(sorted(_qualified_name(agent) for agent in claimants))
        raise errors.InvalidGrant(
            f"{identity.describe()} is admitted by more than one Agent ({names}); "
            "exactly one Agent may claim a cloud identity"
        )
    return claimants[0]
