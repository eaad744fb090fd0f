"""ToolServer reconciliation: validation, the published metadata URL, and URI ownership.

Guarantees: every ToolServer gets ``status.metadataURL`` (RFC 9728) and a ``Ready`` condition
(``MetadataPublished``, ``ResourceURIContested`` naming the other claimants,
``ResourceURINotAllowed``, ``ResourceURIReserved``, or ``Invalid`` with the validation message)
computed by ``agentauth.domain.toolservers`` from every ToolServer the controller sees and the
claim policy; status is written only when it changes, and Events follow the Ready reason's
transitions, so a restarted controller writes and posts nothing new. When a ToolServer is
created, changes its URI or is deleted, every other ToolServer claiming the old or the new URI
is reconciled too, so both sides of a contest report it, and the survivor of one reports its end.
"""

from __future__ import annotations

import weakref
from typing import Any

import kopf
import pydantic

from agentauth.controller import agents as agent_handlers
from agentauth.controller import runtime
from agentauth.domain import claimpolicy
from agentauth.domain import toolservers as domain_toolservers
from agentauth.domain.models import ToolServer, ToolServerStatus
from agentauth.kube import client as kube

GROUP, VERSION = agent_handlers.GROUP, agent_handlers.VERSION
KIND = "toolserver"

# The normalised URI each ToolServer had when last seen, per controller: an update that changes
# the URI must wake the claimants of the old one as well.
_last_uri: weakref.WeakKeyDictionary[runtime.Controller, dict[tuple[str, str], str]] = (
    weakref.WeakKeyDictionary()
)


def _uri_of(body: Any) -> str | None:
    raw = ((body or {}).get("spec") or {}).get("resourceURI")
    if not isinstance(raw, str):
        return None
    try:
        return claimpolicy.normalize_resource_uri(raw)
    except ValueError:
        return None


@kopf.index(GROUP, VERSION, "toolservers")
async def agentauth_toolservers(
    *, namespace: str | None, name: str, body: kopf.Body, **_: Any
) -> Any:
    return {(namespace, name): dict(body)}


@kopf.index(GROUP, VERSION, "toolservers")
async def agentauth_toolservers_by_uri(
    *, namespace: str | None, name: str, body: kopf.Body, **_: Any
) -> Any:
    """Normalised resource URI -> (namespace, name) of each ToolServer naming it."""
    uri = _uri_of(body)
    return {uri: (namespace or "", name)} if uri is not None else None


def _wake_claimants(ctl: runtime.Controller, uri: str | None, *, skip: tuple[str, str]) -> None:
    if uri is None:
        return
    for other in agent_handlers.lookup(ctl.index("agentauth_toolservers_by_uri"), uri):
        other_ns, other_name = other
        if (other_ns, other_name) != skip:
            ctl.soon(other_ns, (KIND, other_ns, other_name))


@kopf.on.event(GROUP, VERSION, "toolservers")
async def toolserver_changed(
    *, type: str, namespace: str | None, name: str, body: kopf.Body, memo: kopf.Memo, **kwargs: Any
) -> None:
    ctl: runtime.Controller = memo.controller
    namespace = namespace or ""
    ctl.bind(kwargs)
    key = (namespace, name)
    seen = _last_uri.setdefault(ctl, {})
    before, now = seen.get(key), _uri_of(body)
    if type == "DELETED":
        seen.pop(key, None)
        ctl.forget("ToolServer", namespace, name)
        _wake_claimants(ctl, before or now, skip=key)
        return
    if now is not None:
        seen[key] = now
    if before != now:
        _wake_claimants(ctl, before, skip=key)
        _wake_claimants(ctl, now, skip=key)
    if ctl.is_own_write("ToolServer", body):
        return
    ctl.soon(namespace, (KIND, namespace, name))


def _all_tool_servers(ctl: runtime.Controller, uri: str) -> list[ToolServer]:
    """The parsed ToolServers naming ``uri`` (normalised), from the controller's indices."""
    found: list[ToolServer] = []
    for ref in agent_handlers.lookup(ctl.index("agentauth_toolservers_by_uri"), uri):
        for other in agent_handlers.lookup(ctl.index("agentauth_toolservers"), tuple(ref)):
            parsed = ctl.parse(ToolServer, other)
            if isinstance(parsed, ToolServer):
                found.append(parsed)
    return found


async def reconcile(ctl: runtime.Controller, *, namespace: str, name: str) -> None:
    """Recompute one ToolServer's status and write it if it changed."""
    found = agent_handlers.lookup(ctl.index("agentauth_toolservers"), (namespace, name))
    if not found:
        return
    body = found[0]
    now = runtime.utcnow()
    raw = ctl.stored_status("ToolServer", body)
    try:
        old = ToolServerStatus.model_validate(raw) if raw else None
    except pydantic.ValidationError:
        old = None
    previous = list(old.conditions) if old else []
    parsed = ctl.parse(ToolServer, body)
    if isinstance(parsed, ToolServer):
        uri = domain_toolservers.normalized_uri(parsed)
        claim = domain_toolservers.claim_of(
            parsed,
            _all_tool_servers(ctl, uri) if uri is not None else [parsed],
            policy=ctl.settings.claim_policy,
            issuer=ctl.settings.issuer,
        )
        new = domain_toolservers.status(parsed, previous=previous, now=now, claim=claim)
    else:
        new = domain_toolservers.invalid_status(
            generation=(body.get("metadata") or {}).get("generation"),
            previous=previous,
            message=f"ToolServer spec is invalid: {agent_handlers.summarize(parsed)}",
            now=now,
        )
    if old is not None and old.to_api() == new.to_api():
        return
    await ctl.write_status(
        resource=kube.TOOL_SERVERS,
        kind="ToolServer",
        body=body,
        status=new.to_api(),
        events=domain_toolservers.events(old, new),
    )


def register(ctl: runtime.Controller) -> None:
    ctl.reconcilers[KIND] = reconcile
