"""MCP clients that call agentauth-protected servers as an agent.

The ``mcp`` package talks HTTP through ``httpx2``; :class:`MCPAgentAuth` is the ``httpx2``
twin of :class:`agentauth.sdk.AgentAuth`: it gets a token for the server's ``resourceURI``
(audience, RFC 8707) and signs every MCP request (RFC 9421, ``Signature-Key: sig=jwt``).
With ``jit=JustInTime(...)`` a 403 ``insufficient_scope`` for a tool becomes an
AccessRequest, and the call is retried once after approval.

    async with connect(agent, url="https://tools.example/mcp",
                       resource_uri="https://tools.example/mcp") as session:
        await session.call_tool("search", {"q": "..."})
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncGenerator, AsyncIterator, Sequence

import httpx2
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from agentauth.sdk import errors
from agentauth.sdk.auth import JustInTime, missing_capability, sign_http_request
from agentauth.sdk.client import AgentClient


class MCPAgentAuth(httpx2.Auth):
    """``httpx2`` authentication signing MCP requests as the agent (async only)."""

    requires_request_body = True

    def __init__(
        self,
        client: AgentClient,
        *,
        resource_uri: str,
        scope: Sequence[str] | None = None,
        jit: JustInTime | None = None,
    ) -> None:
        self.client = client
        self.resource_uri = resource_uri
        self.scope = tuple(scope) if scope is not None else None
        self.jit = jit

    async def async_auth_flow(
        self, request: httpx2.Request
    ) -> AsyncGenerator[httpx2.Request, httpx2.Response]:
        await request.aread()
        token = await self.client.atoken(audience=self.resource_uri, scope=self.scope)
        sign_http_request(self.client, request, token)
        response = yield request
        capability = missing_capability(
            response.status_code, response.headers.get("www-authenticate")
        )
        if capability is None:
            return
        if self.jit is None:
            # Surface the refusal as a typed error naming the capability instead of the MCP
            # client's generic "Server returned an error response".
            await response.aread()
            raise errors.InsufficientScopeError(
                "insufficient_scope",
                f"the MCP server requires capability {capability}",
                status=403,
                capability=capability,
            )
        await response.aread()
        await self.client.arequest_access(
            [capability],
            justification=self.jit.justification,
            duration=self.jit.duration,
            wait=self.jit.wait,
        )
        scope = None if self.scope is None else (*self.scope, capability)
        token = await self.client.atoken(
            audience=self.resource_uri, scope=scope, force_refresh=True
        )
        sign_http_request(self.client, request, token)
        yield request


def http_client(
    client: AgentClient,
    *,
    resource_uri: str,
    scope: Sequence[str] | None = None,
    jit: JustInTime | None = None,
    verify: object = True,
) -> httpx2.AsyncClient:
    """An ``httpx2.AsyncClient`` for ``streamable_http_client(..., http_client=...)``."""
    return httpx2.AsyncClient(
        auth=MCPAgentAuth(client, resource_uri=resource_uri, scope=scope, jit=jit),
        verify=verify,  # type: ignore[arg-type]
        timeout=httpx2.Timeout(30.0, read=300.0),
    )


@contextlib.asynccontextmanager
async def connect(
    client: AgentClient,
    *,
    url: str,
    resource_uri: str,
    scope: Sequence[str] | None = None,
    jit: JustInTime | None = None,
    verify: object = True,
) -> AsyncIterator[Client]:
    """An ``mcp.Client`` session to ``url`` authorized as the agent."""
    async with (
        http_client(client, resource_uri=resource_uri, scope=scope, jit=jit, verify=verify) as http,
        Client(streamable_http_client(url, http_client=http)) as session,
    ):
        yield session
