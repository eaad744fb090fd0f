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

from agentauth.controller import informers, runtime
from agentauth.domain import agents as domain_agents
from agentauth.domain import capabilities
from agentauth.domain.models import Agent, AgentStatus, CapabilityGrant
from agentauth.domain.models import common as model_common
from agentauth.kube import client as kube

GROUP, VERSION = model_common.GROUP, model_common.VERSION
KIND = "agent"

# Informer names (runtime.Controller.informers) and their indices.
AGENTS = "agents"
SERVICE_ACCOUNTS = "serviceaccounts"
GRANTS = "capabilitygrants"  # registered by grants.py
BY_NAMESPACE = "namespace"  # namespace -> its Agents (and, for grants, its grants)
BY_SERVICE_ACCOUNT = "serviceaccount"  # (namespace, serviceAccountName) -> Agents using it
BY_AGENT = "agent"  # grants: (namespace, agent name) -> grants naming that agent
BY_SELECTOR = "selector"  # grants: namespace -> grants selecting by labels


def namespace_of(body: Mapping[str, Any]) -> str:
    return str((body.get("metadata") or {}).get("namespace") or "")


def name_of(body: Mapping[str, Any]) -> str:
    return str((body.get("metadata") or {}).get("name") or "")


def _agent_service_account(body: Mapping[str, Any]) -> list[tuple[str, str]]:
    account = (body.get("spec") or {}).get("serviceAccountName")
    return [(namespace_of(body), str(account))] if account else []


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


def grants_for_agent(ctl: runtime.Controller, *, namespace: str, name: str) -> list[dict[str, Any]]:
    """The grants that may select Agent ``name``: those naming it, and every selector grant."""
    grants = ctl.informer(GRANTS)
    found = {
        name_of(body): body
        for body in grants.by(BY_AGENT, (namespace, name)) + grants.by(BY_SELECTOR, namespace)
    }
    return list(found.values())


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
    if new is not None and ctl.is_own_write("Agent", new):
        return  # the echo of our own status write
    if new is None:
        ctl.forget("Agent", namespace, name)
        ctl.forget_parsed(Agent, body)
    else:
        enqueue(ctl, namespace=namespace, name=name)
    enqueue_grants_touching(ctl, namespace=namespace, agent=name)


def enqueue_grants_touching(ctl: runtime.Controller, *, namespace: str, agent: str) -> None:
    """Queue the grants whose status may list ``agent``: those that name it and those that
    select by labels (a grant that stops naming it re-queues it from its own reconcile)."""
    for body in grants_for_agent(ctl, namespace=namespace, name=agent):
        enqueue_grant(ctl, namespace=namespace, name=name_of(body))


def serviceaccount_changed(
    ctl: runtime.Controller, event_type: str, old: dict[str, Any] | None, new: dict[str, Any] | None
) -> None:
    if event_type == "MODIFIED":
        return  # only whether it exists matters
    body = new if new is not None else old
    if body is None:
        return
    namespace = namespace_of(body)
    for agent in ctl.informer(AGENTS).by(BY_SERVICE_ACCOUNT, (namespace, name_of(body))):
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
        candidates = (
            ctl.parse(CapabilityGrant, b)
            for b in grants_for_agent(ctl, namespace=namespace, name=name)
        )
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
            BY_NAMESPACE: lambda body: [namespace_of(body)],
            BY_SERVICE_ACCOUNT: _agent_service_account,
        },
    )
    agents.listen(lambda event_type, old, new: agent_changed(ctl, event_type, old, new))
    accounts = informers.Informer(ctl.api, kube.SERVICE_ACCOUNTS, namespaces=namespaces)
    accounts.listen(lambda event_type, old, new: serviceaccount_changed(ctl, event_type, old, new))
    ctl.informers[AGENTS] = agents
    ctl.informers[SERVICE_ACCOUNTS] = accounts
