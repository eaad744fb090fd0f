"""An Agent's and a CapabilityGrant's full status, computed from what the cluster holds.

Guarantees:
- :func:`agent_status` is level-based: it depends only on the Agent, the grants in its namespace,
  whether its ServiceAccount exists, the trust domain and ``now``, never on what happened
  before, except that a condition's ``lastTransitionTime`` is kept from ``previous`` when its
  status did not change. Computing it twice from the same inputs gives equal statuses, so the
  controller can compare and skip the write.
- ``Ready`` is True only for an Agent that is not suspended, whose ServiceAccount (when it names
  one) exists, that some credential source can act as (a ServiceAccount, registered public keys
  or cloud federation) and that holds at least one capability. The reason says which rule failed,
  in that order: ``Suspended``, ``ServiceAccountNotFound``, ``NoCredentialSource``,
  ``NoCapabilities``; else ``Ready``.
- ``Federation`` (only for an Agent with ``spec.federation``, when the caller passes the claim
  policy) says whether every cloud identity the Agent claims is one the cluster admin's claim
  policy lets its namespace claim: ``ClaimsAllowed``, or ``ClaimNotAllowed`` naming the ignored
  entries (they are ignored by the token service; see :mod:`agentauth.domain.claimpolicy`).
- :func:`agent_events` / :func:`grant_events` derive Events from the difference between the
  stored status and the new one, so replaying a reconcile (a restart, a duplicate watch event)
  against an already-written status posts nothing.
"""

from __future__ import annotations

import dataclasses
import datetime
from collections.abc import Iterable
from typing import Literal

from agentauth.domain import capabilities, claimpolicy
from agentauth.domain.models import agents as agent_models
from agentauth.domain.models import common
from agentauth.domain.models import grants as grant_models

READY = "Ready"
ACTIVE = "Active"
FEDERATION = "Federation"
REASON_CLAIMS_ALLOWED = "ClaimsAllowed"
REASON_CLAIM_NOT_ALLOWED = "ClaimNotAllowed"

REASON_READY = "Ready"
REASON_SUSPENDED = "Suspended"
REASON_SA_NOT_FOUND = "ServiceAccountNotFound"
REASON_NO_CREDENTIAL_SOURCE = "NoCredentialSource"
REASON_NO_CAPABILITIES = "NoCapabilities"
REASON_INVALID = "Invalid"
REASON_ACTIVE = "Active"
REASON_EXPIRED = "Expired"
REASON_NO_MATCH = "NoMatchingAgents"


@dataclasses.dataclass(frozen=True, slots=True)
class Event:
    """A Kubernetes Event to post on the object: ``type`` Normal or Warning."""

    type: Literal["Normal", "Warning"]
    reason: str
    message: str


def _ready_condition(
    agent: agent_models.Agent,
    held: list[agent_models.EffectiveCapability],
    *,
    service_account_exists: bool,
    now: datetime.datetime,
) -> common.Condition:
    name, namespace = agent.metadata.name, agent.metadata.namespace
    spec = agent.spec
    sa = spec.service_account_name
    has_keys = spec.public_keys is not None and bool(spec.public_keys.keys)
    federation = spec.federation
    has_federation = federation is not None and (
        (federation.aws is not None and bool(federation.aws.role_arns))
        or (federation.gcp is not None and bool(federation.gcp.service_accounts))
    )
    status: Literal["True", "False"] = "False"
    if spec.suspended:
        reason = REASON_SUSPENDED
        message = (
            f"Agent is suspended: no tokens are issued. Resume with: kubectl patch agent {name} "
            f'-n {namespace} --type merge -p \'{{"spec":{{"suspended":false}}}}\''
        )
    elif sa is not None and not service_account_exists:
        reason = REASON_SA_NOT_FOUND
        message = (
            f'ServiceAccount "{sa}" not found in namespace "{namespace}". Create it with: '
            f"kubectl create serviceaccount {sa} -n {namespace}"
        )
    elif sa is None and not has_keys and not has_federation:
        reason = REASON_NO_CREDENTIAL_SOURCE
        message = (
            "Nothing can act as this agent: set spec.serviceAccountName, spec.publicKeys or "
            "spec.federation"
        )
    elif not held:
        reason = REASON_NO_CAPABILITIES
        message = (
            "No CapabilityGrant in this namespace gives this agent a capability; create one "
            f"whose spec.agents.names lists {name!r} or whose selector matches its labels"
        )
    else:
        status, reason = "True", REASON_READY
        names = ", ".join(c.name for c in held)
        message = f"Agent holds {_count(len(held), 'capability', 'capabilities')}: {names}"
    return common.Condition(
        type=READY,
        status=status,
        reason=reason,
        message=message,
        last_transition_time=now,
        observed_generation=agent.metadata.generation,
    )


def agent_status(
    agent: agent_models.Agent,
    grants: Iterable[grant_models.CapabilityGrant],
    *,
    service_account_exists: bool,
    trust_domain: str,
    now: datetime.datetime,
    claim_policy: claimpolicy.ClaimPolicy | None = None,
) -> agent_models.AgentStatus:
    """The Agent's whole status at ``now`` (conditions keep their previous transition times).

    With ``claim_policy`` an Agent with ``spec.federation`` also gets the ``Federation``
    condition; without federation any earlier one is dropped."""
    held = capabilities.effective_capabilities(agent, grants, now=now)
    ready = _ready_condition(agent, held, service_account_exists=service_account_exists, now=now)
    previous = list(agent.status.conditions) if agent.status is not None else []
    conditions = common.set_condition(previous, ready)
    if claim_policy is not None:
        federation = _federation_condition(agent, claim_policy, now=now)
        if federation is None:
            conditions = [c for c in conditions if c.type != FEDERATION]
        else:
            conditions = common.set_condition(conditions, federation)
    return agent_models.AgentStatus(
        agent_id=capabilities.agent_id(
            name=agent.metadata.name or "",
            namespace=agent.metadata.namespace or "",
            trust_domain=trust_domain,
        ),
        capabilities=held,
        conditions=conditions,
        observed_generation=agent.metadata.generation,
    )


def _federation_condition(
    agent: agent_models.Agent, policy: claimpolicy.ClaimPolicy, *, now: datetime.datetime
) -> common.Condition | None:
    federation = agent.spec.federation
    if federation is None or (
        (federation.aws is None or not federation.aws.role_arns)
        and (federation.gcp is None or not federation.gcp.service_accounts)
    ):
        return None
    _, refused = claimpolicy.allowed_federation(agent, policy)
    namespace = agent.metadata.namespace or ""
    if refused:
        status: Literal["True", "False"] = "False"
        reason = REASON_CLAIM_NOT_ALLOWED
        message = claimpolicy.refused_claims_message(refused, namespace=namespace)
    else:
        status, reason = "True", REASON_CLAIMS_ALLOWED
        message = "the claim policy allows every cloud identity in spec.federation"
    return common.Condition(
        type=FEDERATION,
        status=status,
        reason=reason,
        message=message,
        last_transition_time=now,
        observed_generation=agent.metadata.generation,
    )


def invalid_agent_status(
    *,
    generation: int | None,
    previous: list[common.Condition],
    message: str,
    now: datetime.datetime,
) -> agent_models.AgentStatus:
    """Status of an Agent whose spec does not parse: not Ready, reason ``Invalid``, no
    capabilities (a manifest the controller cannot understand grants nothing)."""
    return agent_models.AgentStatus(
        capabilities=[],
        conditions=invalid_conditions(
            READY, generation=generation, previous=previous, message=message, now=now
        ),
        observed_generation=generation,
    )


def invalid_conditions(
    condition_type: str,
    *,
    generation: int | None,
    previous: list[common.Condition],
    message: str,
    now: datetime.datetime,
) -> list[common.Condition]:
    """``previous`` with ``condition_type`` set to False, reason ``Invalid``: the condition every
    kind reports when its spec does not parse."""
    condition = common.Condition(
        type=condition_type,
        status="False",
        reason=REASON_INVALID,
        message=message,
        last_transition_time=now,
        observed_generation=generation,
    )
    return common.set_condition(list(previous), condition)


def _ready(status: agent_models.AgentStatus | None) -> common.Condition | None:
    if status is None:
        return None
    return next((c for c in status.conditions if c.type == READY), None)


def _condition(
    status: agent_models.AgentStatus | None, condition_type: str
) -> common.Condition | None:
    if status is None:
        return None
    return next((c for c in status.conditions if c.type == condition_type), None)


def _describe(held: list[agent_models.EffectiveCapability]) -> dict[str, str]:
    return {c.name: f"{c.name} ({c.approval}, grant {c.grant})" for c in held}


def agent_events(
    old: agent_models.AgentStatus | None, new: agent_models.AgentStatus
) -> list[Event]:
    """Events for the transition from the stored status ``old`` to ``new``."""
    events: list[Event] = []
    registered = old is not None and old.agent_id is not None
    before = _describe(old.capabilities) if old is not None else {}
    after = _describe(new.capabilities)
    if not registered and new.agent_id is not None:
        # One Event for the first status, naming the capabilities it starts with.
        held = ", ".join(after[name] for name in sorted(after)) or "none"
        events.append(
            Event("Normal", "Registered", f"Registered as {new.agent_id}; capabilities: {held}")
        )
    elif before != after:
        added = [after[name] for name in sorted(after) if before.get(name) != after[name]]
        removed = [before[name] for name in sorted(before) if name not in after]
        parts = []
        if added:
            parts.append("granted " + ", ".join(added))
        if removed:
            parts.append("removed " + ", ".join(removed))
        text = "; ".join(parts)
        events.append(Event("Normal", "CapabilitiesChanged", text[:1].upper() + text[1:]))
    old_federation = _condition(old, FEDERATION)
    new_federation = _condition(new, FEDERATION)
    if new_federation is not None and (
        old_federation is None or old_federation.reason != new_federation.reason
    ):
        if new_federation.reason == REASON_CLAIM_NOT_ALLOWED:
            events.append(Event("Warning", REASON_CLAIM_NOT_ALLOWED, new_federation.message))
        elif old_federation is not None:
            events.append(Event("Normal", REASON_CLAIMS_ALLOWED, new_federation.message))
    old_ready, new_ready = _ready(old), _ready(new)
    old_reason = old_ready.reason if old_ready is not None else None
    new_reason = new_ready.reason if new_ready is not None else None
    if new_ready is not None and old_reason != new_reason:
        if new_reason == REASON_SUSPENDED:
            events.append(Event("Normal", "Suspended", "Agent suspended: no tokens are issued"))
        elif old_reason == REASON_SUSPENDED:
            events.append(Event("Normal", "Resumed", "Agent resumed"))
        if new_ready.status == "True":
            events.append(Event("Normal", "Ready", new_ready.message))
        elif new_reason != REASON_SUSPENDED:
            events.append(Event("Warning", new_reason or "NotReady", new_ready.message))
    return events


def grant_status(
    grant: grant_models.CapabilityGrant,
    agents: Iterable[agent_models.Agent],
    *,
    now: datetime.datetime,
) -> grant_models.CapabilityGrantStatus:
    """The grant's status: the agents it selects and whether it is ``Active`` at ``now``."""
    present = list(agents)
    matched = sorted(
        agent.metadata.name or "" for agent in present if capabilities.grant_selects(grant, agent)
    )
    missing = sorted(set(grant.spec.agents.names) - {a.metadata.name or "" for a in present})
    absent = ""
    if missing:
        listed = ", ".join(repr(name) for name in missing)
        verb = "does" if len(missing) == 1 else "do"
        absent = f"spec.agents.names lists {listed}, which {verb} not exist in this namespace"
    if not capabilities.grant_is_active(grant, now=now):
        status: Literal["True", "False"] = "False"
        reason = REASON_EXPIRED
        message = f"Grant expired at {_rfc3339(grant.spec.expires_at)}; it gives nothing"
    elif not matched:
        status, reason = "False", REASON_NO_MATCH
        message = "No Agent in this namespace matches spec.agents" + (
            f": {absent}" if absent else ""
        )
    else:
        status, reason = "True", REASON_ACTIVE
        message = f"Applies to {_count(len(matched), 'agent', 'agents')}"
        if absent:
            message += f"; {absent}"
    condition = common.Condition(
        type=ACTIVE,
        status=status,
        reason=reason,
        message=message,
        last_transition_time=now,
        observed_generation=grant.metadata.generation,
    )
    previous = grant.status.conditions if grant.status is not None else []
    return grant_models.CapabilityGrantStatus(
        matched_agents=matched,
        conditions=common.set_condition(list(previous), condition),
        observed_generation=grant.metadata.generation,
    )


def invalid_grant_status(
    *,
    generation: int | None,
    previous: list[common.Condition],
    message: str,
    now: datetime.datetime,
) -> grant_models.CapabilityGrantStatus:
    """Status of a grant whose spec does not parse: not Active, reason ``Invalid``."""
    return grant_models.CapabilityGrantStatus(
        matched_agents=[],
        conditions=invalid_conditions(
            ACTIVE, generation=generation, previous=previous, message=message, now=now
        ),
        observed_generation=generation,
    )


def grant_events(
    old: grant_models.CapabilityGrantStatus | None, new: grant_models.CapabilityGrantStatus
) -> list[Event]:
    """Events for a grant's transition: it expired, or it became invalid."""
    old_active = next((c for c in (old.conditions if old else []) if c.type == ACTIVE), None)
    new_active = next((c for c in new.conditions if c.type == ACTIVE), None)
    if new_active is None:
        return []
    if new_active.reason == REASON_NO_MATCH and (
        old_active is None or old_active.message != new_active.message
    ):
        # Names the missing Agents (a typo in agents.names is the usual cause); again when the
        # list of missing names changes.
        return [Event("Warning", REASON_NO_MATCH, new_active.message)]
    if old_active is not None and old_active.reason == new_active.reason:
        return []
    if new_active.reason == REASON_EXPIRED:
        return [Event("Normal", "Expired", new_active.message)]
    if new_active.reason == REASON_INVALID:
        return [Event("Warning", "Invalid", new_active.message)]
    return []


def _count(number: int, singular: str, plural: str) -> str:
    """``number`` with the noun in the form English needs: "1 agent", "2 agents"."""
    return f"{number} {singular if number == 1 else plural}"


def _rfc3339(moment: datetime.datetime | None) -> str:
    if moment is None:
        return "never"
    aware = moment if moment.tzinfo is not None else moment.replace(tzinfo=datetime.UTC)
    return aware.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
