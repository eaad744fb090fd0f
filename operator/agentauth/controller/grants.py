"""CapabilityGrant reconciliation: validation, matched agents, expiry.

Guarantees:
- A grant's status lists the Agents it currently selects and an ``Active`` condition
  (``Active``, ``NoMatchingAgents``, ``Expired`` or ``Invalid``); a grant that does not parse gives
  nothing (the capability code only ever sees grants that parse).
- Every change to a grant's spec, its creation and deletion included, queues each Agent it
  selects now or selected before (``grant_changed``, from the informer's old and new versions),
  so their capabilities follow within one reconcile (well under 2 s). Agents entering or leaving
  a selector queue the grant from their own changes (``agents.agent_changed``).
- At ``expiresAt`` the grant is re-queued: its status turns ``Expired`` with one Event (the Event
  follows the status transition, so a restart does not post it again) and its Agents lose the
  capabilities.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pydantic

from agentauth.controller import agents as agent_handlers
from agentauth.controller import informers, runtime, selection
from agentauth.domain import agents as domain_agents
from agentauth.domain.models import Agent, CapabilityGrant, CapabilityGrantStatus
from agentauth.kube import client as kube

KIND = "grant"


def _listed(body: Mapping[str, Any]) -> set[str]:
    status = body.get("status") or {}
    return {str(n) for n in status.get("matchedAgents") or []}


def _affected_agents(ctl: runtime.Controller, body: Mapping[str, Any]) -> set[str]:
    """The Agents whose capabilities may come from the grant ``body``: the candidates it selects
    and those its status lists."""
    agents = ctl.informer(selection.AGENTS)
    return {selection.name_of(a) for a in selection.candidate_agents(agents, body)} | _listed(body)


def grant_changed(
    ctl: runtime.Controller, event_type: str, old: dict[str, Any] | None, new: dict[str, Any] | None
) -> None:
    """Queue the grant, and (when what Agents see of it changed: it appeared, went, or its spec
    changed) every Agent it selects or selected."""
    body = new if new is not None else old
    if body is None:
        return
    namespace, name = selection.namespace_of(body), selection.name_of(body)
    if old is not None:
        ctl.forget_parsed(CapabilityGrant, old)  # that version is gone
    if new is not None and ctl.is_own_write("CapabilityGrant", new):
        return  # the echo of our own status write: nothing an agent sees has changed
    if new is None:
        ctl.forget("CapabilityGrant", namespace, name)
    else:
        agent_handlers.enqueue_grant(ctl, namespace=namespace, name=name)
    if old is not None and new is not None and _same_for_agents(old, new):
        return
    affected: set[str] = set()
    for version in (old, new):
        if version is not None:
            affected |= _affected_agents(ctl, version)
    for agent in affected:
        agent_handlers.enqueue(ctl, namespace=namespace, name=agent)


def _same_for_agents(old: Mapping[str, Any], new: Mapping[str, Any]) -> bool:
    """Whether an Agent's capabilities cannot differ between the two versions of a grant: same
    object, same spec. (Expiry is time, not a change: Agents wake themselves at it.)"""
    return bool(
        (old.get("metadata") or {}).get("uid") == (new.get("metadata") or {}).get("uid")
        and old.get("spec") == new.get("spec")
    )


def _agents_for(ctl: runtime.Controller, body: Mapping[str, Any]) -> list[Agent]:
    candidates = selection.candidate_agents(ctl.informer(selection.AGENTS), body)
    parsed = (ctl.parse(Agent, b) for b in candidates)
    return [a for a in parsed if isinstance(a, Agent)]


async def reconcile(ctl: runtime.Controller, *, namespace: str, name: str) -> None:
    """Recompute one grant's status and write it if changed."""
    body = ctl.informer(agent_handlers.GRANTS).get(namespace, name)
    if body is None:
        return
    now = runtime.utcnow()
    raw = ctl.stored_status("CapabilityGrant", body)
    try:
        old = CapabilityGrantStatus.model_validate(raw) if raw else None
    except pydantic.ValidationError:
        old = None
    parsed = ctl.parse(CapabilityGrant, body)
    if isinstance(parsed, CapabilityGrant):
        grant = parsed.model_copy(update={"status": old})
        new = domain_agents.grant_status(grant, _agents_for(ctl, body), now=now)
        expires_at = grant.spec.expires_at
        if expires_at is not None:
            aware = expires_at if expires_at.tzinfo else expires_at.replace(tzinfo=now.tzinfo)
            if aware > now:
                ctl.wake_at((KIND, namespace, name), aware)
    else:
        new = domain_agents.invalid_grant_status(
            generation=(body.get("metadata") or {}).get("generation"),
            previous=list(old.conditions) if old else [],
            message=f"CapabilityGrant spec is invalid: {agent_handlers.summarize(parsed)}",
            now=now,
        )
    if old is not None and old.to_api() == new.to_api():
        return
    await ctl.write_status(
        resource=kube.CAPABILITY_GRANTS,
        kind="CapabilityGrant",
        body=body,
        status=new.to_api(),
        events=domain_agents.grant_events(old, new),
    )


def register(ctl: runtime.Controller) -> None:
    ctl.reconcilers[KIND] = reconcile
    grants = informers.Informer(
        ctl.api,
        kube.CAPABILITY_GRANTS,
        namespaces=ctl.settings.watch_namespaces,
        indexers={
            selection.BY_NAMESPACE: selection.in_namespace,
            selection.BY_AGENT: selection.grant_names,
            selection.BY_ANCHOR: selection.grant_anchors,
        },
    )
    grants.listen(lambda event_type, old, new: grant_changed(ctl, event_type, old, new))
    ctl.informers[agent_handlers.GRANTS] = grants
