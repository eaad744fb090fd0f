"""ToolServer reconciliation: validation and the published metadata URL.

Guarantees: every ToolServer gets ``status.metadataURL`` (RFC 9728) and a ``Ready`` condition
(``MetadataPublished``, or ``Invalid`` with the validation message) computed by
``agentauth.domain.toolservers``; status is written only when it changes, and Events follow the
Ready reason's transitions, so a restarted controller writes and posts nothing new.
"""

from __future__ import annotations

from typing import Any

import kopf
import pydantic

from agentauth.controller import agents as agent_handlers
from agentauth.controller import runtime
from agentauth.domain import toolservers as domain_toolservers
from agentauth.domain.models import ToolServer, ToolServerStatus
from agentauth.kube import client as kube

GROUP, VERSION = agent_handlers.GROUP, agent_handlers.VERSION
KIND = "toolserver"


@kopf.index(GROUP, VERSION, "toolservers")
async def agentauth_toolservers(
    *, namespace: str | None, name: str, body: kopf.Body, **_: Any
) -> Any:
    return {(namespace, name): dict(body)}


@kopf.on.event(GROUP, VERSION, "toolservers")
async def toolserver_changed(
    *, type: str, namespace: str | None, name: str, body: kopf.Body, memo: kopf.Memo, **kwargs: Any
) -> None:
    ctl: runtime.Controller = memo.controller
    namespace = namespace or ""
    ctl.bind(kwargs)
    if ctl.is_own_write("ToolServer", body):
        return
    if type == "DELETED":
        ctl.forget("ToolServer", namespace, name)
        return
    ctl.soon(namespace, (KIND, namespace, name))


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
        new = domain_toolservers.status(parsed, previous=previous, now=now)
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
