"""Agent reconciliation: level-based, full status recomputation.

Guarantees:
- Any change to an Agent, to a grant in its namespace that selects (or selected) it, or to the
  ServiceAccount it names, and every start of the controller (the informers' first listing),
  puts the Agent on the work queue; its reconcile recomputes the whole status from the in-memory
  mirrors with :func:`agentauth.domain.agents.agent_status` and writes it only if it differs.
- Agents and ServiceAccounts are mirrored by :class:`agentauth.controller.informers.Informer`
  (not Kopf: see that module for why); workers reconcile only once every mirror has its first
  listing, so a restarted controller never computes from a half-filled cache (no spurious
  ServiceAccountNotFound).
- An Agent whose grants expire is re-queued at the expiry moment.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import pydantic

from agentauth.controller import informers, runtime, selection
from agentauth.domain import agents as domain_agents
from agentauth.domain import capabilities
from agentauth.domain.models import Agent, AgentStatus, CapabilityGrant
from agentauth.domain.models import common as model_common
from agentauth.kube import client as kube

GROUP, VERSION = model_common.GROUP, model_common.VERSION
KIND = "agent"

# Re-exported for the other handler modules (the names live in selection.py).
AGENTS, GRANTS, SERVICE_ACCOUNTS = selection.AGENTS, selection.GRANTS, selection.SERVICE_ACCOUNTS
BY_NAMESPACE = selection.BY_NAMESPACE
namespace_of, name_of = selection.namespace_of, selection.name_of


def lookup(index: Any, key: Any) -> list[dict[str, Any]]:
    """The values stored under ``key`` in a Kopf index (empty when absent or not yet bound)."""
    if index is None or key not in index:
        return []
    return list(index[key])


def agent_body(ctl: runtime.Controller, namespace: str, name: str) -> dict[str, Any] | None:
    return ctl.informer(AGENTS).get(namespace, name)


def valid_grants(ctl: runtime.Controller, namespace: str) -> Iterator[CapabilityGrant]:
    for body in ctl.informer(GRANTS).by(BY_NAMESPACE, namespace):
        parsed = ctl.parse(CapabilityGrant, body)
        if isinstance(parsed, CapabilityGrant):
            yield parsed


def grants_for_agent(ctl: runtime.Controller, body: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The grants that may select the Agent ``body`` (``selection.candidate_grants``)."""
    return selection.candidate_grants(ctl.informer(GRANTS), body)


def enqueue(ctl: runtime.Controller, *, namespace: str, name: str) -> None:
    """Reconcile the Agent once its namespace settles (``runtime.Controller.soon``)."""
    ctl.soon(namespace, (KIND, namespace, name))


def enqueue_grant(ctl: runtime.Controller, *, namespace: str, name: str) -> None:
    """Reconcile the CapabilityGrant once its namespace settles."""
    ctl.soon(namespace, ("grant", namespace, name))


# --- triggers --------------------------------------------------------------------------------


def agent_changed(
    ctl: runtime.Controller, event_type: str, old: dict[str, Any] | None, new: dict[str, Any] | None
) -> None:
    body = new if new is not None else old
    if body is None:
        return
    namespace, name = namespace_of(body), name_of(body)
    if old is not None:
        ctl.forget_parsed(Agent, old)  # that version is gone
    if new is not None and ctl.is_own_write("Agent", new):
        return  # the echo of our own status write
    if new is None:
        ctl.forget("Agent", namespace, name)
    else:
        enqueue(ctl, namespace=namespace, name=name)
    if old is not None and new is not None and _same_selection_inputs(old, new):
        return  # no grant's matchedAgents can change
    # The grants whose status may list the Agent before or after (its labels may have changed).
    touching = {
        name_of(grant)
        for agent in (old, new)
        if agent is not None
        for grant in grants_for_agent(ctl, agent)
    }
    for grant in touching:
        enqueue_grant(ctl, namespace=namespace, name=grant)


def _same_selection_inputs(old: Mapping[str, Any], new: Mapping[str, Any]) -> bool:
    """Whether nothing a grant's status depends on differs: uid, labels and generation (a
    grant counts only Agents whose spec parses). A status change alone changes nothing."""
    old_meta, new_meta = old.get("metadata") or {}, new.get("metadata") or {}
    return bool(
        old_meta.get("uid") == new_meta.get("uid")
        and old_meta.get("generation") == new_meta.get("generation")
        and (old_meta.get("labels") or {}) == (new_meta.get("labels") or {})
    )


def serviceaccount_changed(
    ctl: runtime.Controller, event_type: str, old: dict[str, Any] | None, new: dict[str, Any] | None
) -> None:
    if event_type == "MODIFIED":
        return  # only whether it exists matters
    body = new if new is not None else old
    if body is None:
        return
    namespace = namespace_of(body)
    agents = ctl.informer(AGENTS).by(selection.BY_SERVICE_ACCOUNT, (namespace, name_of(body)))
    for agent in agents:
        enqueue(ctl, namespace=namespace, name=name_of(agent))


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
        candidates = (ctl.parse(CapabilityGrant, b) for b in grants_for_agent(ctl, body))
        grants = [g for g in candidates if isinstance(g, CapabilityGrant)]
        account = agent.spec.service_account_name
        exists = (
            account is not None
            and ctl.informer(SERVICE_ACCOUNTS).get(namespace, account) is not None
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
    namespaces = ctl.settings.watch_namespaces
    agents = informers.Informer(
        ctl.api,
        kube.AGENTS,
        namespaces=namespaces,
        indexers={
            selection.BY_NAMESPACE: selection.in_namespace,
            selection.BY_SERVICE_ACCOUNT: selection.agent_service_account,
            selection.BY_LABEL: selection.agent_labels,
        },
    )
    agents.listen(lambda event_type, old, new: agent_changed(ctl, event_type, old, new))
    accounts = informers.Informer(ctl.api, kube.SERVICE_ACCOUNTS, namespaces=namespaces)
    accounts.listen(lambda event_type, old, new: serviceaccount_changed(ctl, event_type, old, new))
    ctl.informers[AGENTS] = agents
    ctl.informers[SERVICE_ACCOUNTS] = accounts
