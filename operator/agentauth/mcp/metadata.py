"""RFC 9728 protected-resource metadata locations (no dependency on the ``mcp`` package).

The controller publishes :func:`metadata_url` in ``ToolServer.status.metadataURL``; the MCP
server serves the document there and at the root ``/.well-known/oauth-protected-resource``.
"""

from __future__ import annotations

import urllib.parse

from agentauth.domain import toolservers

WELL_KNOWN = toolservers.WELL_KNOWN


def metadata_url(resource_uri: str) -> str:
    """RFC 9728 section 3.1 (the controller publishes the same URL in ToolServer status)."""
    return toolservers.metadata_url(resource_uri)


def metadata_paths(resource_uri: str) -> tuple[str, ...]:
    """Paths on the resource's host that serve the metadata document."""
    path = urllib.parse.urlsplit(resource_uri).path.rstrip("/")
    return (WELL_KNOWN, WELL_KNOWN + path) if path else (WELL_KNOWN,)
