"""RFC 9728 protected-resource metadata locations (no dependency on the ``mcp`` package).

The controller publishes :func:`metadata_url` in ``ToolServer.status.metadataURL``; the MCP
server serves the document there and at the root ``/.well-known/oauth-protected-resource``.
"""

from __future__ import annotations

import urllib.parse

WELL_KNOWN = "/.well-known/oauth-protected-resource"


def metadata_url(resource_uri: str) -> str:
    """RFC 9728 section 3.1: the well-known path is inserted between host and resource path
    (``https://h/mcp`` -> ``https://h/.well-known/oauth-protected-resource/mcp``)."""
    parts = urllib.parse.urlsplit(resource_uri)
    path = parts.path.rstrip("/")
    return urllib.parse.urlunsplit((parts.scheme, parts.netloc, WELL_KNOWN + path, "", ""))


def metadata_paths(resource_uri: str) -> tuple[str, ...]:
    """Paths on the resource's host that serve the metadata document."""
    path = urllib.parse.urlsplit(resource_uri).path.rstrip("/")
    return (WELL_KNOWN, WELL_KNOWN + path) if path else (WELL_KNOWN,)
