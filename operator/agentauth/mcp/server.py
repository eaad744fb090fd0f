"""MCP authorization for servers built with the official ``mcp`` package (streamable HTTP).

``protect(app, ...)`` wraps the ASGI app from ``MCPServer.streamable_http_app()``:

- ``GET /.well-known/oauth-protected-resource[/<path>]`` serves RFC 9728 metadata (the
  ``mcp`` package's ``ProtectedResourceMetadata`` model) naming our token service as the
  authorization server and the tools' capabilities as ``scopes_supported``;
- every other request must carry an agent token whose audience is the ToolServer's
  ``resourceURI`` (RFC 8707) and whose ``tool_server`` claim names this very ToolServer
  (``namespace/name``, and its uid when built from the ToolServer object), signed per AAuth
  when the token is bound (see :mod:`agentauth.verify`); otherwise 401 with
  ``WWW-Authenticate: Bearer ..., resource_metadata="<metadata URL>"``;
- a ``tools/call`` needs the capability mapped to the tool (from the ``ToolServer`` resource
  or local config); without it: 403 ``insufficient_scope`` with ``scope="<capability>"``.
  A tool with no mapping is refused (403 ``access_denied``): fail closed;
- credentials are stripped before the MCP app runs, so tools cannot pass the caller's token
  through to other services (they should exchange for their own, RFC 8693).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from mcp.shared.auth import ProtectedResourceMetadata

from agentauth.domain import assertions, errors
from agentauth.domain.models import ToolServer
from agentauth.mcp import metadata
from agentauth.verify.asgi import (
    AgentAuthMiddleware,
    ASGIApp,
    Receive,
    Scope,
    Send,
)
from agentauth.verify.verifier import JwksCache, ResourceVerifier, ToolServerRef


@dataclass(frozen=True, slots=True)
class ToolCapabilities:
    """Which capability each tool needs, for one protected resource, and which ToolServer the
    resource is (tokens must name it in their ``tool_server`` claim)."""

    resource_uri: str
    tools: Mapping[str, str]
    tool_server: ToolServerRef

    @classmethod
    def from_toolserver(cls, toolserver: ToolServer) -> ToolCapabilities:
        """From the ``ToolServer`` object as read from the cluster: its namespace and name, and
        its uid when it has one (then tokens minted for an earlier object of that name are
        refused too)."""
        namespace, name = toolserver.metadata.namespace, toolserver.metadata.name
        if not namespace or not name:
            raise ValueError(
                "the ToolServer has no metadata.namespace and metadata.name: read it from the "
                "cluster, or use ToolCapabilities.from_mapping(..., tool_server='<ns>/<name>')"
            )
        return cls(
            resource_uri=toolserver.spec.resource_uri,
            tools={tool.name: tool.capability for tool in toolserver.spec.tools},
            tool_server=ToolServerRef(
                namespace=namespace, name=name, uid=toolserver.metadata.uid or None
            ),
        )

    @classmethod
    def from_mapping(
        cls,
        *,
        resource_uri: str,
        tools: Mapping[str, str],
        tool_server: ToolServerRef | str,
    ) -> ToolCapabilities:
        """Local configuration: ``{"search": "document.read", ...}`` and the ToolServer this
        resource is, ``"<namespace>/<name>"``."""
        ref = (
            tool_server
            if isinstance(tool_server, ToolServerRef)
            else ToolServerRef.parse(tool_server)
        )
        return cls(resource_uri=resource_uri, tools=dict(tools), tool_server=ref)

    def capability_for(self, tool: str) -> str:
        capability = self.tools.get(tool)
        if capability is None:
            raise errors.AccessDenied(f"tool {tool!r} is not mapped to a capability")
        return capability

    def required(self, body: bytes) -> list[str]:
        """Capabilities needed by the JSON-RPC message(s) in ``body``."""
        if not body:
            return []
        try:
            message = json.loads(body)
        except (UnicodeDecodeError, ValueError):
            return []  # not JSON: the MCP transport answers its own parse error
        messages = message if isinstance(message, list) else [message]
        needed: list[str] = []
        for item in messages:
            if not isinstance(item, dict) or item.get("method") != "tools/call":
                continue
            params = item.get("params")
            name = params.get("name") if isinstance(params, dict) else None
            if not isinstance(name, str):
                raise errors.InvalidRequest("tools/call without a tool name")
            needed.append(self.capability_for(name))
        return needed


def protected_resource_metadata(
    capabilities: ToolCapabilities, *, authorization_server: str
) -> dict[str, Any]:
    """The RFC 9728 document for this resource."""
    document = ProtectedResourceMetadata.model_validate(
        {
            "resource": capabilities.resource_uri,
            "authorization_servers": [authorization_server],
            "scopes_supported": sorted(set(capabilities.tools.values())),
            "bearer_methods_supported": ["header"],
            "resource_signing_alg_values_supported": None,
        }
    )
    body = document.model_dump(mode="json", exclude_none=True)
    # AAuth: requests are signed (RFC 9421, Ed25519) with the token in Signature-Key.
    body["signature_algorithms_supported"] = ["ed25519"]
    return body


class _ProtectedMCP:
    def __init__(
        self,
        app: ASGIApp,
        *,
        guard: AgentAuthMiddleware,
        document: bytes,
        paths: Sequence[str],
    ) -> None:
        self._app = app
        self._guard = guard
        self._document = document
        self._paths = frozenset(paths)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] in self._paths:
            if scope["method"] not in ("GET", "HEAD"):
                await send({"type": "http.response.start", "status": 405, "headers": []})
                await send({"type": "http.response.body", "body": b""})
                return
            await send(
                {
                    "type": "http.response.start",
                    "status": 200,
                    "headers": [
                        (b"content-type", b"application/json"),
                        (b"cache-control", b"public, max-age=300"),
                    ],
                }
            )
            await send({"type": "http.response.body", "body": self._document})
            return
        if scope["type"] == "http":
            await self._guard(scope, receive, send)
            return
        await self._app(scope, receive, send)  # lifespan


def protect(
    app: ASGIApp,
    *,
    capabilities: ToolCapabilities,
    issuer: str,
    jwks: JwksCache,
    authorization_server: str | None = None,
    public_origin: str | None = None,
    replay_cache: assertions.ReplayCache | None = None,
    allow_unbound_bearer: bool = True,
) -> ASGIApp:
    """Wrap an MCP streamable-HTTP ASGI app with agentauth authorization.

    ``issuer`` is the agent-token issuer (``AGENTAUTH_ISSUER``), ``jwks`` its key set,
    ``authorization_server`` what the metadata advertises (defaults to ``issuer``).
    """
    verifier = ResourceVerifier(
        issuer=issuer,
        audience=capabilities.resource_uri,
        jwks=jwks,
        replay_cache=replay_cache,
        allow_unbound_bearer=allow_unbound_bearer,
        tool_server=capabilities.tool_server,
    )
    guard = AgentAuthMiddleware(
        app,
        verifier=verifier,
        requirements=lambda _method, _path, body: capabilities.required(body),
        public_origin=public_origin,
        resource_metadata=metadata.metadata_url(capabilities.resource_uri),
    )
    document = protected_resource_metadata(
        capabilities, authorization_server=authorization_server or issuer
    )
    return _ProtectedMCP(
        app,
        guard=guard,
        document=json.dumps(document).encode(),
        paths=metadata.metadata_paths(capabilities.resource_uri),
    )
