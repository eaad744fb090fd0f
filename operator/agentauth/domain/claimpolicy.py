"""Who may claim what across namespaces: the cluster admin's claim policy (pure).

A namespace admin writes Agents and ToolServers in their own namespace; some of what those
objects name is not theirs to take: a cloud identity (an Agent's ``spec.federation``: an AWS
role, a GCP service account) and a protected resource's URI (a ToolServer's ``resourceURI``).
Which namespace may claim which is decided here, by the cluster admin, in the chart value
``claimPolicy`` (``AGENTAUTH_CLAIM_POLICY``, read by the controller and the token service alike),
never by any namespace. Guarantees:

- Cloud identities are refused unless allowed: an Agent's federation entry (a role ARN pattern, a
  service-account e-mail) counts only if a rule for the Agent's namespace admits *everything the
  entry could match* (:func:`aws_role_allowed`, :func:`gcp_account_allowed`). Entries that are
  not allowed are reported on the Agent and ignored (:func:`allowed_federation`): they never make
  another namespace's identity ambiguous, so no namespace can deny federation to another. With
  no policy, no namespace may federate (fail closed).
- Resource URIs: with ``restrictResourceURIs: true``, a ToolServer's ``resourceURI`` counts only
  if a rule for its namespace lists it or a prefix of it (:func:`resource_uri_allowed`); a
  ToolServer that is not allowed claims nothing, so it can neither obtain tokens for the URI nor
  contest it. Without it every namespace may name any URI; a URI named by two ToolServers is then
  contested and no token is issued for it (see :mod:`agentauth.domain.toolservers`), and the
  tokens name their ToolServer (``tool_server`` claim) so a resource server accepts only its own.
- :func:`parse` reads the JSON document and raises :class:`PolicyError` with the path of the
  first bad entry; nothing half-parsed is ever used.

Patterns: an AWS entry is an IAM role ARN where ``*`` matches any run of characters within one
ARN field (never ``:`` or ``/``), as in ``Agent.spec.federation.aws.roleArns``; a GCP entry is an
e-mail where ``*`` matches any run of characters other than ``@``
(``*@team-a.iam.gserviceaccount.com``), compared case-insensitively; a resource-URI entry is an
https URL whose normalised form (:func:`normalize_resource_uri`) must equal the URI's or be a
path prefix of it, ending at a ``/``.
"""

from __future__ import annotations

import json
import re
import urllib.parse
from collections.abc import Sequence

import pydantic

from agentauth.domain import display
from agentauth.domain.models import agents as agent_models
from agentauth.domain.models import common

_PARTITIONS = "aws|aws-cn|aws-us-gov"
_ROLE_PATTERN = re.compile(
    rf"arn:(?:{_PARTITIONS}|\*):iam::(?:\d{{12}}|\*):role/[\w+=,.@*/-]{{1,512}}"
)
_EXACT_ROLE = re.compile(
    rf"arn:(?P<partition>{_PARTITIONS}):iam::(?P<account>\d{{12}}):role/"
    r"(?P<path>(?:[!-~]+/)?)(?P<role>[\w+=,.@-]{1,64})"
)
_EMAIL_PATTERN = re.compile(r"[A-Za-z0-9*._%+-]{1,64}@[A-Za-z0-9*.-]{1,253}")


class PolicyError(ValueError):
    """The claim policy document is malformed; the message names the entry."""


class AwsRule(common.ApiModel):
    """AWS IAM roles a namespace's Agents may claim."""

    role_arns: list[str] = pydantic.Field(default_factory=list, max_length=256)

    @pydantic.field_validator("role_arns")
    @classmethod
    def _arns(cls, value: list[str]) -> list[str]:
        for entry in value:
            if not _ROLE_PATTERN.fullmatch(entry):
                raise ValueError(
                    f"{entry!r} is not an IAM role ARN pattern such as "
                    "arn:aws:iam::123456789012:role/team-a-*"
                )
        return value


class GcpRule(common.ApiModel):
    """Google service accounts a namespace's Agents may claim."""

    service_accounts: list[str] = pydantic.Field(default_factory=list, max_length=256)

    @pydantic.field_validator("service_accounts")
    @classmethod
    def _emails(cls, value: list[str]) -> list[str]:
        for entry in value:
            if not _EMAIL_PATTERN.fullmatch(entry):
                raise ValueError(
                    f"{entry!r} is not a service-account e-mail pattern such as "
                    "*@team-a.iam.gserviceaccount.com"
                )
        return value


class Rule(common.ApiModel):
    """What the Agents and ToolServers of ``namespaces`` may claim."""

    namespaces: list[common.DNSLabel] = pydantic.Field(min_length=1, max_length=256)
    aws: AwsRule = pydantic.Field(default_factory=AwsRule)
    gcp: GcpRule = pydantic.Field(default_factory=GcpRule)
    resource_uris: list[str] = pydantic.Field(
        default_factory=list, alias="resourceURIs", max_length=256
    )

    @pydantic.field_validator("resource_uris")
    @classmethod
    def _uris(cls, value: list[str]) -> list[str]:
        for entry in value:
            normalize_resource_uri(entry)
        return value


class ClaimPolicy(common.ApiModel):
    """The whole policy: rules per namespace, and whether resource URIs are restricted."""

    restrict_resource_uris: bool = pydantic.Field(default=False, alias="restrictResourceURIs")
    rules: list[Rule] = pydantic.Field(default_factory=list, max_length=1024)

    def rules_for(self, namespace: str) -> list[Rule]:
        return [rule for rule in self.rules if namespace in rule.namespaces]


NO_CLAIMS = ClaimPolicy()
"""The default: no namespace may claim a cloud identity; resource URIs are not restricted."""


def parse(text: str) -> ClaimPolicy:
    """The policy in ``text`` (JSON), or :class:`PolicyError`; empty text is :data:`NO_CLAIMS`."""
    if not text.strip():
        return NO_CLAIMS
    try:
        document = json.loads(text)
    except ValueError as exc:
        raise PolicyError(f"the claim policy is not JSON: {exc}") from None
    if isinstance(document, list):  # the rules alone
        document = {"rules": document}
    try:
        return ClaimPolicy.model_validate(document)
    except pydantic.ValidationError as exc:
        path, message = common.describe_errors(exc)[0]
        raise PolicyError(
            f"the claim policy is invalid at {path or 'top level'}: {message}"
        ) from None


# -- resource URIs -----------------------------------------------------------------------------


def normalize_resource_uri(uri: str) -> str:
    """The form two resource URIs are compared in: scheme and host lower case, no default port,
    no trailing ``/``, no fragment; the path (case-sensitive) and query kept. Raises
    :class:`ValueError` for anything but an absolute https URL."""
    parts = urllib.parse.urlsplit(uri.strip())
    if parts.scheme.lower() != "https" or not parts.hostname:
        raise ValueError(f"{uri!r} is not an absolute https URL")
    try:
        port = parts.port
    except ValueError:
        raise ValueError(f"{uri!r} has an invalid port") from None
    host = parts.hostname.lower().rstrip(".")
    if ":" in host:  # an IPv6 literal: urlsplit drops its brackets
        host = f"[{host}]"
    netloc = host if port in (None, 443) else f"{host}:{port}"
    path = parts.path.rstrip("/")
    query = f"?{parts.query}" if parts.query else ""
    return f"https://{netloc}{path}{query}"


def _uri_within(uri: str, prefix: str) -> bool:
    if uri == prefix:
        return True
    return "?" not in prefix and uri.startswith(prefix + "/")


def resource_uri_allowed(policy: ClaimPolicy, *, namespace: str, uri: str) -> bool:
    """Whether a ToolServer in ``namespace`` may claim ``uri`` (always, unless restricted)."""
    if not policy.restrict_resource_uris:
        return True
    try:
        wanted = normalize_resource_uri(uri)
    except ValueError:
        return False
    return any(
        _uri_within(wanted, normalize_resource_uri(entry))
        for rule in policy.rules_for(namespace)
        for entry in rule.resource_uris
    )


# -- cloud identities --------------------------------------------------------------------------


def _glob(pattern: str, *, run: str, flags: int = 0) -> re.Pattern[str]:
    return re.compile(run.join(re.escape(piece) for piece in pattern.split("*")), flags)


def _path_less(arn: str) -> str | None:
    match = _EXACT_ROLE.fullmatch(arn)
    if match is None:
        return None
    return f"arn:{match['partition']}:iam::{match['account']}:role/{match['role']}"


def aws_role_allowed(claim: str, allowed: str) -> bool:
    """Whether every role the Agent's ``claim`` pattern admits is admitted by ``allowed``.

    Both follow ``aws.role_arn_matches``: ``*`` stays within one ARN field; a pattern with a role
    path and a wildcard admits nothing; an exact ARN with a path is compared path-less.
    ``allowed``'s wildcards are matched against ``claim``'s text with the claim's own ``*``
    taken literally: a wildcard of ``allowed`` accepts any run of field characters, so it also
    accepts whatever the claim's ``*`` could stand for.
    """
    if "*" not in allowed:
        return (
            "*" not in claim
            and _path_less(claim) is not None
            and (_path_less(claim) == _path_less(allowed))
        )
    if "/" in allowed.partition(":role/")[2]:
        return False
    if "*" in claim:
        if "/" in claim.partition(":role/")[2]:
            return False
        text: str | None = claim
    else:
        text = _path_less(claim)
    if text is None:
        return False
    return _glob(allowed, run="[^:/]*").fullmatch(text) is not None


def gcp_account_allowed(email: str, allowed: str) -> bool:
    """Whether the service-account ``email`` an Agent claims is admitted by ``allowed``."""
    return _glob(allowed.lower(), run="[^@]*").fullmatch(email.lower()) is not None


def allowed_federation(
    agent: agent_models.Agent, policy: ClaimPolicy
) -> tuple[agent_models.Federation | None, list[str]]:
    """``agent``'s federation with only the entries ``policy`` allows, and the refused ones
    (each described as ``AWS role "<pattern>"`` or ``GCP service account "<e-mail>"``, quoted:
    the entries are whatever the namespace admin wrote, shown to people in conditions and
    Events)."""
    federation = agent.spec.federation
    if federation is None:
        return None, []
    rules = policy.rules_for(agent.metadata.namespace or "")
    refused: list[str] = []
    aws_rule = federation.aws
    if aws_rule is not None:
        allowed_arns = [a for rule in rules for a in rule.aws.role_arns]
        kept = [
            claim
            for claim in aws_rule.role_arns
            if any(aws_role_allowed(claim, allowed) for allowed in allowed_arns)
        ]
        refused += [
            f"AWS role {display.quote(claim)}" for claim in aws_rule.role_arns if claim not in kept
        ]
        aws_rule = aws_rule.model_copy(update={"role_arns": kept})
    gcp_rule = federation.gcp
    if gcp_rule is not None:
        allowed_emails = [e for rule in rules for e in rule.gcp.service_accounts]
        kept = [
            email
            for email in gcp_rule.service_accounts
            if any(gcp_account_allowed(email, allowed) for allowed in allowed_emails)
        ]
        refused += [
            f"GCP service account {display.quote(email)}"
            for email in gcp_rule.service_accounts
            if email not in kept
        ]
        gcp_rule = gcp_rule.model_copy(update={"service_accounts": kept})
    return federation.model_copy(update={"aws": aws_rule, "gcp": gcp_rule}), refused


def refused_claims_message(refused: Sequence[str], *, namespace: str) -> str:
    """The condition message for refused federation entries."""
    listed = "; ".join(refused[:8]) + (f"; and {len(refused) - 8} more" if len(refused) > 8 else "")
    return (
        f"ignored: {listed}. The cluster admin's claim policy (chart value claimPolicy) does not "
        f"allow namespace {namespace!r} to claim {'it' if len(refused) == 1 else 'them'}"
    )
