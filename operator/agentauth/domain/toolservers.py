"""ToolServer status: the RFC 9728 metadata URL clients discover, and a Ready condition.

Guarantees: a ToolServer whose spec parses is ``Ready`` with ``status.metadataURL`` set to the
protected-resource metadata URL of its ``resourceURI`` (RFC 9728 section 3.1); one that does not
parse is ``Ready=False`` with reason ``Invalid`` and the validation message, and no metadata URL.
An Event is due only when the Ready reason changes, so replaying a reconcile posts nothing.
"""

from __future__ import annotations

import datetime
import urllib.parse

from agentauth.domain import agents
from agentauth.domain.models import common
from agentauth.domain.models import toolservers as models

WELL_KNOWN = "/.well-known/oauth-protected-resource"
REASON_PUBLISHED = "MetadataPublished"
REASON_INVALID = agents.REASON_INVALID


def metadata_url(resource_uri: str) -> str:
    """RFC 9728 section 3.1: the well-known path goes between host and resource path
    (``https://h/mcp`` -> ``https://h/.well-known/oauth-protected-resource/mcp``)."""
    parts = urllib.parse.urlsplit(resource_uri)
    path = parts.path.rstrip("/")
    return urllib.parse.urlunsplit((parts.scheme, parts.netloc, WELL_KNOWN + path, "", ""))


def status(
    server: models.ToolServer,
    *,
    previous: list[common.Condition],
    now: datetime.datetime,
) -> models.ToolServerStatus:
    """The status of a ToolServer whose spec parsed."""
    tools = len(server.spec.tools)
    condition = common.Condition(
        type=agents.READY,
        status="True",
        reason=REASON_PUBLISHED,
        message=(
            f"{tools} tool{'' if tools == 1 else 's'}; tokens for this server carry audience "
            f"{server.spec.resource_uri}"
        ),
        last_transition_time=now,
        observed_generation=server.metadata.generation,
    )
    return models.ToolServerStatus(
        metadata_url=metadata_url(server.spec.resource_uri),
        conditions=common.set_condition(list(previous), condition),
        observed_generation=server.metadata.generation,
    )


def invalid_status(
    *,
    generation: int | None,
    previous: list[common.Condition],
    message: str,
    now: datetime.datetime,
) -> models.ToolServerStatus:
    """The status of a ToolServer whose spec does not parse."""
    return models.ToolServerStatus(
        conditions=agents.invalid_conditions(
            agents.READY, generation=generation, previous=previous, message=message, now=now
        ),
        observed_generation=generation,
    )


def events(old: models.ToolServerStatus | None, new: models.ToolServerStatus) -> list[agents.Event]:
    """One Event when the Ready reason changes (published, or became invalid)."""
    old_ready = next((c for c in (old.conditions if old else []) if c.type == agents.READY), None)
    new_ready = next((c for c in new.conditions if c.type == agents.READY), None)
    if new_ready is None or (old_ready is not None and old_ready.reason == new_ready.reason):
        return []
    if new_ready.reason == REASON_INVALID:
        return [agents.Event("Warning", REASON_INVALID, new_ready.message)]
    return [
        agents.Event(
            "Normal", REASON_PUBLISHED, f"Protected-resource metadata at {new.metadata_url}"
        )
    ]
