"""Agent reconciliation: level-based, full status recomputation.

Guarantees:
- Any change to an Agent, to a grant in its namespace that selects (or selected) it, or to the
  ServiceAccount it names, and every start of the controller (Kopf's initial listing), puts the
  Agent on the work queue; its reconcile recomputes the whole status from the in-memory indices
  with :func:`agentauth.domain.agents.agent_status` and writes it only if it differs.
- Kopf runs these handlers only after every index below has its initial listing, so a restarted
  controller never computes from a half-filled cache (no spurious ServiceAccountNotFound).
- An Agent whose grants expire is re-queued at the expiry moment.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import kopf
import pydantic

from agentauth.controller import runtime
from agentauth.domain import agents as domain_agents
from agentauth.domain import capabilities
from agentauth.domain.models import Agent, AgentStatus, CapabilityGrant
from agentauth.domain.models import common as model_common
from agentauth.kube import client as kube

GROUP, VERSION = model_common.GROUP, model_common.VERSION
KIND = "agent"


def _plain(body: Mapping[str, Any]) -> dict[str, Any]:
    return dict(body)


# --- indices (Kopf keeps them current from list+watch; handlers wait for their first listing) ---


# One index handler per kind keeps Kopf's per-event cost low; keys are tagged tuples:
#   ("name", ns, name) -> the Agent; ("ns", ns) -> the namespace's Agents;
#   ("sa", ns, serviceAccountName) -> names of the Agents using that ServiceAccount.
@kopf.index(GROUP, VERSION, "agents")
async def agentauth_agents(
    *, namespace: str | None, name: str, body: kopf.Body, spec: kopf.Spec, **_: Any
) -> Any:
    plain = _plain(body)
    keys: dict[Any, Any] = {("name", namespace, name): plain, ("ns", namespace): plain}
    account = spec.get("serviceAccountName")
    if account:
        keys[("sa", namespace, account)] = name
    return keys


@kopf.index("v1", "serviceaccounts")
async def agentauth_serviceaccounts(*, namespace: str | None, name: str, **_: Any) -> Any:
    """(namespace, name) of every ServiceAccount that exists."""
    return {(namespace, name): True}


def lookup(index: Any, key: Any) -> list[dict[str, Any]]:
    """The values stored under ``key`` in a Kopf index (empty when absent or not yet bound)."""
    if index is None or key not in index:
        return []
    return list(index[key])


def agent_body(ctl: runtime.Controller, namespace: str, name: str) -> dict[str, Any] | None:
    found = lookup(ctl.index("agentauth_agents"), ("name", namespace, name))
    return found[0] if found else None


def valid_grants(ctl: runtime.Controller, namespace: str) -> Iterator[CapabilityGrant]:
    for body in lookup(ctl.index("agentauth_grants"), ("ns", namespace)):
        parsed = ctl.parse(CapabilityGrant, body)
        if isinstance(parsed, CapabilityGrant):
            yield parsed


def grants_for_agent(ctl: runtime.Controller, *, namespace: str, name: str) -> list[dict[str, Any]]:
    """The grants that may select Agent ``name``: those naming it, and every selector grant."""
    found = {
        str((body.get("metadata") or {}).get("uid")): body
        for key in (("agent", namespace, name), ("selector", namespace))
        for body in lookup(ctl.index("agentauth_grants"), key)
    }
    return list(found.values())


def enqueue(ctl: runtime.Controller, *, namespace: str, name: str) -> None:
    """Reconcile the Agent once its namespace settles (``runtime.Controller.soon``)."""
    ctl.soon(namespace, (KIND, namespace, name))


def enqueue_grant(ctl: runtime.Controller, *, namespace: str, name: str) -> None:
    """Reconcile the CapabilityGrant once its namespace settles."""
    ctl.soon(namespace, ("grant", namespace, name))


# --- triggers --------------------------------------------------------------------------------


@kopf.on.event(GROUP, VERSION, "agents")
async def agent_changed(
    *,
    type: str,
    namespace: str | None,
    name: str,
    body: kopf.Body,
    memo: kopf.Memo,
    **kwargs: Any,
) -> None:
    ctl: runtime.Controller = memo.controller
    namespace = namespace or ""
    ctl.bind(kwargs)
    if ctl.is_own_write("Agent", body):
        return  # the echo of our own status write
    if type == "DELETED":
        ctl.forget("Agent", namespace, name)
    else:
        enqueue(ctl, namespace=namespace, name=name)
    enqueue_grants_touching(ctl, namespace=namespace, agent=name)


def enqueue_grants_touching(ctl: runtime.Controller, *, namespace: str, agent: str) -> None:
    """Queue the grants whose status may list ``agent``: those that name it and those that
    select by labels (a grant that stops naming it re-queues it from its own reconcile)."""
    for body in grants_for_agent(ctl, namespace=namespace, name=agent):
        grant = str((body.get("metadata") or {}).get("name"))
        enqueue_grant(ctl, namespace=namespace, name=grant)


@kopf.on.event("v1", "serviceaccounts")
async def serviceaccount_changed(
    *, namespace: str | None, name: str, memo: kopf.Memo, **kwargs: Any
) -> None:
    ctl: runtime.Controller = memo.controller
    namespace = namespace or ""
    ctl.bind(kwargs)
    for agent in lookup(ctl.index("agentauth_agents"), ("sa", namespace, name)):
        enqueue(ctl, namespace=namespace, name=str(agent))


# --- reconcile -------------------------------------------------------------------------------


def _stored(ctl: runtime.Controller, body: Mapping[str, Any]) -> AgentStatus | None:
    raw = ctl.stored_status("Agent", body)
    if not raw:
        return None
    try:
        return AgentStatus.model_validate(raw)
    except pydantic.ValidationError:
        return None  # someone wrote garbage: recompute from scratch


async def reconcile(ctl: runtime.Controller, *, namespace: str, name: str) -> None:
    """Recompute and (if changed) write one Agent's status; post Events on transitions."""
    body = agent_body(ctl, namespace, name)
    if body is None:
        return
    now = runtime.utcnow()
    old = _stored(ctl, body)
    parsed = ctl.parse(Agent, body)
    grants: list[CapabilityGrant] = []
    if isinstance(parsed, Agent):
        agent = parsed.model_copy(update={"status": old})
        candidates = (
            ctl.parse(CapabilityGrant, b)
            for b in grants_for_agent(ctl, namespace=namespace, name=name)
        )
        grants = [g for g in candidates if isinstance(g, CapabilityGrant)]
        account = agent.spec.service_account_name
        exists = account is not None and bool(
            lookup(ctl.index("agentauth_serviceaccounts"), (namespace, account))
        )
        new = domain_agents.agent_status(
            agent,
            grants,
            service_account_exists=exists,
            trust_domain=ctl.settings.trust_domain,
            now=now,
            claim_policy=ctl.settings.claim_policy,
        )
        selecting = [g for g in grants if capabilities.grant_selects(g, agent)]
        upcoming = capabilities.next_expiry(selecting, now=now)
        if upcoming is not None:
            ctl.wake_at((KIND, namespace, name), upcoming)
    else:
        new = domain_agents.invalid_agent_status(
            generation=(body.get("metadata") or {}).get("generation"),
            previous=list(old.conditions) if old else [],
            message=f"Agent spec is invalid: {summarize(parsed)}",
            now=now,
        )
    if old is not None and old.to_api() == new.to_api():
        return
    await ctl.write_status(
        resource=kube.AGENTS,
        kind="Agent",
        body=body,
        status=new.to_api(),
        events=domain_agents.agent_events(old, new),
    )


def summarize(error: pydantic.ValidationError) -> str:
    """The first validation problems of a spec, for a condition message."""
    parts = []
    for item in error.errors()[:3]:
        location = ".".join(str(p) for p in item["loc"])
        parts.append(f"{location}: {item['msg']}" if location else item["msg"])
    return "; ".join(parts)


def register(ctl: runtime.Controller) -> None:
    ctl.reconcilers[KIND] = reconcile
