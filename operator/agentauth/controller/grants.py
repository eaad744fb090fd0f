"""CapabilityGrant reconciliation: validation, matched agents, expiry.

Guarantees:
- A grant's status lists the Agents it currently selects and an ``Active`` condition
  (``Active``, ``NoMatchingAgents``, ``Expired`` or ``Invalid``); a grant that does not parse gives
  nothing (the capability code only ever sees grants that parse).
- Every change to a grant, its deletion included, queues each Agent it selects now or selected
  before, so their capabilities follow within one reconcile (well under 2 s).
- At ``expiresAt`` the grant is re-queued: its status turns ``Expired`` with one Event (the Event
  follows the status transition, so a restart does not post it again) and its Agents lose the
  capabilities.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pydantic

from agentauth.controller import agents as agent_handlers
from agentauth.controller import informers, runtime
from agentauth.domain import agents as domain_agents
from agentauth.domain.models import Agent, CapabilityGrant, CapabilityGrantStatus
from agentauth.kube import client as kube

KIND = "grant"


def _grant_namespace(body: Mapping[str, Any]) -> list[str]:
    return [agent_handlers.namespace_of(body)]


def _grant_agents(body: Mapping[str, Any]) -> list[tuple[str, str]]:
    namespace = agent_handlers.namespace_of(body)
    return [(namespace, name) for name in sorted(_named(body))]


def _grant_selects_by_labels(body: Mapping[str, Any]) -> list[str]:
    selection = (body.get("spec") or {}).get("agents") or {}
    return [agent_handlers.namespace_of(body)] if selection.get("selector") is not None else []


def _named(body: Mapping[str, Any]) -> set[str]:
    selection = (body.get("spec") or {}).get("agents") or {}
    return {str(n) for n in selection.get("names") or []}


def _listed(body: Mapping[str, Any]) -> set[str]:
    status = body.get("status") or {}
    return {str(n) for n in status.get("matchedAgents") or []}


def grant_changed(
    ctl: runtime.Controller, event_type: str, old: dict[str, Any] | None, new: dict[str, Any] | None
) -> None:
    body = new if new is not None else old
    if body is None:
        return
    namespace, name = agent_handlers.namespace_of(body), agent_handlers.name_of(body)
    if new is not None and ctl.is_own_write("CapabilityGrant", new):
        return  # the echo of our own status write: nothing an agent sees has changed
    if new is None:
        # The mirror has dropped the grant already; its former agents recompute without it.
        before = ctl.grant_matches.pop((namespace, name), set())
        ctl.grant_fingerprints.pop((namespace, name), None)
        ctl.forget("CapabilityGrant", namespace, name)
        ctl.forget_parsed(CapabilityGrant, body)
        for agent in before | _named(body) | _listed(body):
            agent_handlers.enqueue(ctl, namespace=namespace, name=agent)
        return
    agent_handlers.enqueue_grant(ctl, namespace=namespace, name=name)


def _agents_for(ctl: runtime.Controller, grant: CapabilityGrant, namespace: str) -> list[Agent]:
    if grant.spec.agents.selector is None:  # by name only: no need to scan the namespace
        bodies = [
            b
            for n in sorted(grant.spec.agents.names)
            if (b := agent_handlers.agent_body(ctl, namespace, n)) is not None
        ]
    else:
        bodies = ctl.informer(agent_handlers.AGENTS).by(agent_handlers.BY_NAMESPACE, namespace)
    parsed = (ctl.parse(Agent, b) for b in bodies)
    return [a for a in parsed if isinstance(a, Agent)]


async def reconcile(ctl: runtime.Controller, *, namespace: str, name: str) -> None:
    """Recompute one grant's status, write it if changed, and queue the agents it affects."""
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
        new = domain_agents.grant_status(
            grant, _agents_for(ctl, grant, namespace=namespace), now=now
        )
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
    matched = set(new.matched_agents)
    before = ctl.grant_matches.get((namespace, name), set()) | _listed(body)
    ctl.grant_matches[(namespace, name)] = matched
    # What agents see of the grant: its spec (generation) and whether it is in force. When that
    # is unchanged only agents entering or leaving the match need a recompute.
    meta = body.get("metadata") or {}
    active = next((c.reason for c in new.conditions if c.type == domain_agents.ACTIVE), None)
    fingerprint = (meta.get("uid"), meta.get("generation"), active)
    changed = ctl.grant_fingerprints.get((namespace, name)) != fingerprint
    ctl.grant_fingerprints[(namespace, name)] = fingerprint
    for agent in (matched | before) if changed else (matched ^ before):
        agent_handlers.enqueue(ctl, namespace=namespace, name=agent)
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
            agent_handlers.BY_NAMESPACE: _grant_namespace,
            agent_handlers.BY_AGENT: _grant_agents,
            agent_handlers.BY_SELECTOR: _grant_selects_by_labels,
        },
    )
    grants.listen(lambda event_type, old, new: grant_changed(ctl, event_type, old, new))
    ctl.informers[agent_handlers.GRANTS] = grants
