"""ToolServer status and who owns a resource URI.

Guarantees:

- A ToolServer whose spec parses gets ``status.metadataURL``, the protected-resource metadata URL
  of its ``resourceURI`` (RFC 9728 section 3.1), and is ``Ready`` when it alone holds its URI
  (:func:`claim_of`); one that does not parse is ``Ready=False`` with reason ``Invalid`` and the
  validation message, and no metadata URL.
- A resource URI belongs to at most one ToolServer. :func:`claimants` are the ToolServers (in any
  namespace) whose ``resourceURI`` is the same once normalised
  (:func:`agentauth.domain.claimpolicy.normalize_resource_uri`: case of scheme and host, default
  port, trailing ``/``) and whose namespace the cluster's claim policy allows to claim it. With
  two or more the URI is contested: every claimant is ``Ready=False`` with reason
  ``ResourceURIContested`` naming the others, and the token service issues no token for the URI
  until one is gone (so a squatter can never hold tokens for someone else's URI, whoever came
  first). A ToolServer the policy does not allow is ``ResourceURINotAllowed`` and claims nothing;
  one that names the issuer's own URL is ``ResourceURIReserved``.
- An Event is due only when the Ready reason changes, so replaying a reconcile posts nothing.
"""

from __future__ import annotations

import dataclasses
import datetime
import urllib.parse
from collections.abc import Iterable

from agentauth.domain import agents, claimpolicy
from agentauth.domain.models import common
from agentauth.domain.models import toolservers as models

WELL_KNOWN = "/.well-known/oauth-protected-resource"
REASON_PUBLISHED = "MetadataPublished"
REASON_INVALID = agents.REASON_INVALID
REASON_CONTESTED = "ResourceURIContested"
REASON_NOT_ALLOWED = "ResourceURINotAllowed"
REASON_RESERVED = "ResourceURIReserved"
MAX_NAMED_CLAIMANTS = 5


def normalized_uri(server: models.ToolServer) -> str | None:
    """The server's ``resourceURI`` normalised, or ``None`` if it cannot be (never matches)."""
    try:
        return claimpolicy.normalize_resource_uri(server.spec.resource_uri)
    except ValueError:
        return None


def qualified_name(server: models.ToolServer) -> str:
    return f"{server.metadata.namespace}/{server.metadata.name}"


def claimants(
    uri: str, servers: Iterable[models.ToolServer], *, policy: claimpolicy.ClaimPolicy
) -> list[models.ToolServer]:
    """The ToolServers that claim ``uri``: same normalised URI, allowed by ``policy``, not being
    deleted; sorted by namespace and name."""
    try:
        wanted = claimpolicy.normalize_resource_uri(uri)
    except ValueError:
        return []
    found = [
        server
        for server in servers
        if server.metadata.deletion_timestamp is None
        and normalized_uri(server) == wanted
        and claimpolicy.resource_uri_allowed(
            policy, namespace=server.metadata.namespace or "", uri=server.spec.resource_uri
        )
    ]
    return sorted(found, key=qualified_name)


@dataclasses.dataclass(frozen=True, slots=True)
class Claim:
    """Where one ToolServer stands on its URI: ``reason`` is its Ready reason."""

    reason: str
    message: str

    @property
    def holds(self) -> bool:
        return self.reason == REASON_PUBLISHED


def claim_of(
    server: models.ToolServer,
    servers: Iterable[models.ToolServer],
    *,
    policy: claimpolicy.ClaimPolicy,
    issuer: str,
) -> Claim:
    """Whether ``server`` alone holds its ``resourceURI`` (see the module docstring)."""
    uri = server.spec.resource_uri
    namespace = server.metadata.namespace or ""
    own = normalized_uri(server)
    try:
        reserved = own is not None and own == claimpolicy.normalize_resource_uri(issuer)
    except ValueError:
        reserved = False
    if reserved:
        return Claim(
            REASON_RESERVED,
            f"resourceURI {uri} is the agentauth issuer's own URL; a ToolServer cannot claim it",
        )
    if not claimpolicy.resource_uri_allowed(policy, namespace=namespace, uri=uri):
        return Claim(
            REASON_NOT_ALLOWED,
            f"the cluster admin's claim policy (chart value claimPolicy) does not allow namespace "
            f"{namespace!r} to claim resourceURI {uri}; no tokens are issued for it",
        )
    others = [
        qualified_name(other)
        for other in claimants(uri, servers, policy=policy)
        if qualified_name(other) != qualified_name(server)
    ]
    if others:
        named = ", ".join(others[:MAX_NAMED_CLAIMANTS]) + (
            f" and {len(others) - MAX_NAMED_CLAIMANTS} more"
            if len(others) > MAX_NAMED_CLAIMANTS
            else ""
        )
        return Claim(
            REASON_CONTESTED,
            f"resourceURI {uri} is also claimed by ToolServer {named}; no tokens are issued "
            "for it while more than one ToolServer claims it (ask a cluster admin to remove "
            "the one that is not the resource's owner)",
        )
    tools = len(server.spec.tools)
    return Claim(
        REASON_PUBLISHED,
        f"{tools} tool{'' if tools == 1 else 's'}; tokens for this server carry audience "
        f"{uri} and name ToolServer {qualified_name(server)} in their tool_server claim",
    )


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
    claim: Claim | None = None,
) -> models.ToolServerStatus:
    """The status of a ToolServer whose spec parsed; ``claim`` from :func:`claim_of` (default:
    it holds its URI alone)."""
    if claim is None:
        claim = claim_of(server, [server], policy=claimpolicy.NO_CLAIMS, issuer="")
    condition = common.Condition(
        type=agents.READY,
        status="True" if claim.holds else "False",
        reason=claim.reason,
        message=claim.message,
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
    if new_ready.reason in (REASON_INVALID, REASON_CONTESTED, REASON_NOT_ALLOWED, REASON_RESERVED):
        return [agents.Event("Warning", new_ready.reason or REASON_INVALID, new_ready.message)]
    return [
        agents.Event(
            "Normal", REASON_PUBLISHED, f"Protected-resource metadata at {new.metadata_url}"
        )
    ]
