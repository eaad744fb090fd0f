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

import kopf
import pydantic

from agentauth.controller import agents as agent_handlers
from agentauth.controller import runtime
from agentauth.domain import agents as domain_agents
from agentauth.domain.models import Agent, CapabilityGrant, CapabilityGrantStatus
from agentauth.kube import client as kube

GROUP, VERSION = agent_handlers.GROUP, agent_handlers.VERSION
KIND = "grant"


# One index handler (Kopf's per-event cost grows with handlers); keys are tagged tuples:
#   ("ns", ns) -> the namespace's grants (an Agent's capabilities come from them);
#   ("name", ns, name) -> the grant; ("agent", ns, agent) -> grants naming that agent;
#   ("selector", ns) -> grants selecting by labels (they may match any agent).
@kopf.index(GROUP, VERSION, "capabilitygrants")
async def agentauth_grants(
    *, namespace: str | None, name: str, body: kopf.Body, spec: kopf.Spec, **_: Any
) -> Any:
    plain = dict(body)
    keys: dict[Any, Any] = {("ns", namespace): plain, ("name", namespace, name): plain}
    selection = spec.get("agents") or {}
    for agent in selection.get("names") or []:
        keys[("agent", namespace, str(agent))] = plain
    if selection.get("selector") is not None:
        keys[("selector", namespace)] = plain
    return keys


def _named(body: Mapping[str, Any]) -> set[str]:
    selection = (body.get("spec") or {}).get("agents") or {}
    return {str(n) for n in selection.get("names") or []}


def _listed(body: Mapping[str, Any]) -> set[str]:
    status = body.get("status") or {}
    return {str(n) for n in status.get("matchedAgents") or []}


@kopf.on.event(GROUP, VERSION, "capabilitygrants")
async def grant_changed(
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
    if ctl.is_own_write("CapabilityGrant", body):
        return  # the echo of our own status write: nothing an agent sees has changed
    if type == "DELETED":
        # The index has dropped the grant already; its former agents recompute without it.
        before = ctl.grant_matches.pop((namespace, name), set())
        ctl.grant_fingerprints.pop((namespace, name), None)
        ctl.forget("CapabilityGrant", namespace, name)
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
        bodies = agent_handlers.lookup(ctl.index("agentauth_agents"), ("ns", namespace))
    parsed = (ctl.parse(Agent, b) for b in bodies)
    return [a for a in parsed if isinstance(a, Agent)]


async def reconcile(ctl: runtime.Controller, *, namespace: str, name: str) -> None:
    """Recompute one grant's status, write it if changed, and queue the agents it affects."""
    found = agent_handlers.lookup(ctl.index("agentauth_grants"), ("name", namespace, name))
    if not found:
        return
    body = found[0]
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
