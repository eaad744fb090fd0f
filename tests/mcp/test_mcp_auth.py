"""A real MCP server (``mcp`` MCPServer, streamable HTTP) protected by agentauth, called by a
real MCP client on loopback: allowed tool, forbidden tool, wrong audience, no token."""

from __future__ import annotations

import asyncio
import datetime
import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from mcp.server.mcpserver import Context, MCPServer

from agentauth.domain import errors, signatures, tokens
from agentauth.domain.models import ToolServer
from agentauth.mcp import metadata
from agentauth.mcp.client import connect
from agentauth.mcp.server import ToolCapabilities, protect
from agentauth.sdk import AgentAuth, AgentClient, JustInTime
from agentauth.sdk import errors as sdk_errors
from agentauth.verify import JwksCache, ResourceVerifier
from tests.sdk.loopback import (
    NAMESPACE,
    TOOL_SERVER,
    TOOL_SERVER_REF,
    LoopbackIssuer,
    ServerThread,
)

RESOURCE = "https://tools.example.test/mcp"
TOOLSERVER = ToolServer.model_validate(
    {
        "metadata": {"name": TOOL_SERVER, "namespace": NAMESPACE, "uid": "ts-uid-1"},
        "spec": {
            "resourceURI": RESOURCE,
            "tools": [
                {"name": "search", "capability": "document.read"},
                {"name": "whoami", "capability": "document.read"},
                {"name": "delete", "capability": "document.delete"},
            ],
        },
    }
)


def _mcp_app() -> Any:
    server = MCPServer("docs-tools")

    @server.tool()
    def search(query: str) -> str:
        return f"results for {query}"

    @server.tool()
    def delete(document: str) -> str:
        return f"deleted {document}"

    @server.tool()
    def unmapped() -> str:
        return "should never run"

    @server.tool()
    def whoami(ctx: Context) -> str:
        headers = ctx.headers or {}
        return json.dumps(sorted(k.lower() for k in headers))

    return server.streamable_http_app(json_response=True)


@pytest.fixture(scope="module")
def server() -> Iterator[ServerThread]:
    thread = ServerThread()
    yield thread
    thread.close()


@pytest.fixture(scope="module")
def issuer(server: ServerThread) -> LoopbackIssuer:
    return LoopbackIssuer(server)


@pytest.fixture(scope="module")
def mcp_url(server: ServerThread, issuer: LoopbackIssuer) -> str:
    app = protect(
        _mcp_app(),
        capabilities=ToolCapabilities.from_toolserver(TOOLSERVER),
        issuer=issuer.issuer,
        jwks=JwksCache(jwks_url=f"{issuer.url}/jwks"),
    )
    return server.serve_asgi(app)


@pytest.fixture(scope="module")
def agent(issuer: LoopbackIssuer, tmp_path_factory: pytest.TempPathFactory) -> AgentClient:
    token_file = tmp_path_factory.mktemp("sa") / "token"
    token_file.write_text("sa-token-mcp")
    issuer.service_account_tokens.add("sa-token-mcp")
    return AgentClient.from_environment(
        {
            "AGENTAUTH_ISSUER": issuer.issuer,
            "AGENTAUTH_TOKEN_URL": issuer.url,
            "AGENTAUTH_TOKEN_FILE": str(token_file),
        }
    )


def _leaf(exc: BaseException) -> BaseException:
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc


def _text(result: Any) -> str:
    return "".join(getattr(block, "text", "") for block in result.content)


def test_protected_resource_metadata(mcp_url: str, issuer: LoopbackIssuer) -> None:
    expected = {
        "resource": RESOURCE,
        "authorization_servers": [issuer.issuer],
        "scopes_supported": ["document.delete", "document.read"],
        "bearer_methods_supported": ["header"],
        "signature_algorithms_supported": ["ed25519"],
    }
    for path in (
        "/.well-known/oauth-protected-resource",
        "/.well-known/oauth-protected-resource/mcp",
    ):
        response = httpx.get(mcp_url + path)
        assert response.status_code == 200
        assert response.json() == expected
    assert metadata.metadata_url(RESOURCE) == (
        "https://tools.example.test/.well-known/oauth-protected-resource/mcp"
    )
    assert metadata.metadata_url("https://tools.example.test") == (
        "https://tools.example.test/.well-known/oauth-protected-resource"
    )


def test_no_token_gets_401_with_resource_metadata(mcp_url: str) -> None:
    response = httpx.post(
        f"{mcp_url}/mcp",
        json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"},
        headers={"Accept": "application/json, text/event-stream"},
    )
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == (
        'Bearer resource_metadata="https://tools.example.test/.well-known/'
        'oauth-protected-resource/mcp"'
    )


def test_agent_calls_an_allowed_tool(mcp_url: str, agent: AgentClient) -> None:
    async def scenario() -> tuple[str, str, list[str]]:
        async with connect(agent, url=f"{mcp_url}/mcp", resource_uri=RESOURCE) as session:
            tools = await session.list_tools()
            found = await session.call_tool("search", {"query": "q3 report"})
            seen = await session.call_tool("whoami", {})
            return _text(found), _text(seen), sorted(t.name for t in tools.tools)

    found, seen_headers, names = asyncio.run(scenario())
    assert found == "results for q3 report"
    assert "search" in names
    # No token passthrough: the tool never sees the caller's credentials.
    assert not {"authorization", "signature", "signature-input", "signature-key"} & set(
        json.loads(seen_headers)
    )


def test_agent_calling_a_forbidden_tool_gets_403(mcp_url: str, agent: AgentClient) -> None:
    async def scenario() -> None:
        async with connect(agent, url=f"{mcp_url}/mcp", resource_uri=RESOURCE) as session:
            await session.call_tool("delete", {"document": "q3"})

    with pytest.raises(ExceptionGroup) as caught:
        asyncio.run(scenario())
    refusal = _leaf(caught.value)
    assert isinstance(refusal, sdk_errors.InsufficientScopeError)
    assert (refusal.error, refusal.status, refusal.capability) == (
        "insufficient_scope",
        403,
        "document.delete",
    )
    body = {
        "jsonrpc": "2.0",
        "id": 7,
        "method": "tools/call",
        "params": {"name": "delete", "arguments": {"document": "q3"}},
    }
    with httpx.Client(auth=AgentAuth(agent, audience=RESOURCE)) as http:
        response = http.post(
            f"{mcp_url}/mcp",
            content=json.dumps(body).encode(),
            headers={
                "Content-Type": "application/json",
                "Accept": "application/json, text/event-stream",
            },
        )
        unmapped = http.post(
            f"{mcp_url}/mcp",
            content=json.dumps({**body, "params": {"name": "unmapped"}}).encode(),
            headers={"Content-Type": "application/json"},
        )
    assert response.status_code == 403
    assert response.headers["www-authenticate"] == (
        'Bearer error="insufficient_scope", error_description="the agent token lacks capability '
        'document.delete", scope="document.delete", resource_metadata="https://tools.example.test/'
        '.well-known/oauth-protected-resource/mcp"'
    )
    assert unmapped.status_code == 403
    assert unmapped.json() == {
        "error": "access_denied",
        "error_description": "tool 'unmapped' is not mapped to a capability",
    }


def test_wrong_audience_is_refused(mcp_url: str, agent: AgentClient) -> None:
    with httpx.Client(auth=AgentAuth(agent, audience="https://other.example.test/mcp")) as http:
        response = http.post(
            f"{mcp_url}/mcp",
            json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"},
            headers={"Accept": "application/json, text/event-stream"},
        )
    assert response.status_code == 401
    assert response.json() == {
        "error": "invalid_token",
        "error_description": "token audience does not include https://tools.example.test/mcp",
    }
    assert 'resource_metadata="https://tools.example.test/' in response.headers["www-authenticate"]


@pytest.mark.parametrize(
    ("named", "description"),
    [
        (
            {"namespace": "squatter", "name": TOOL_SERVER, "uid": "ts-uid-1"},
            f"the token was issued for ToolServer squatter/{TOOL_SERVER}, not for this "
            f"resource's ToolServer {TOOL_SERVER_REF}",
        ),
        (
            {"namespace": NAMESPACE, "name": TOOL_SERVER, "uid": "an-earlier-object"},
            f"the token was issued for an earlier ToolServer {TOOL_SERVER_REF} (uid "
            "an-earlier-object), not this one (uid ts-uid-1)",
        ),
        (None, f"the token names no ToolServer; this resource is ToolServer {TOOL_SERVER_REF}"),
    ],
)
def test_token_for_another_toolserver_with_this_uri_is_refused(
    mcp_url: str, issuer: LoopbackIssuer, named: dict[str, str] | None, description: str
) -> None:
    """A token with the right audience minted for someone else's ToolServer object (another
    namespace squatting the URI, or an earlier object of this name) never gets in."""
    token = tokens.issue(
        keyset=issuer.keyset,
        issuer=issuer.issuer,
        subject="aauth:squat.squatter@cluster.local",
        agent=tokens.AgentRef(name="squat", namespace="squatter", uid="u-squat"),
        audience=RESOURCE,
        scope=["document.read"],
        lifetime=issuer.lifetime,
        now=datetime.datetime.now(datetime.UTC),
        client_id="aauth:squat.squatter@cluster.local",
        extra_claims={"tool_server": named} if named is not None else None,
    ).token
    response = httpx.post(
        f"{mcp_url}/mcp",
        json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"},
        headers={"Authorization": f"Bearer {token}", "Accept": "application/json"},
    )
    assert (response.status_code, response.json()) == (
        401,
        {"error": "invalid_token", "error_description": description},
    )


def test_a_resource_without_its_toolserver_identity_cannot_be_built() -> None:
    with pytest.raises(ValueError, match="is not a ToolServer reference") as caught:
        ToolCapabilities.from_mapping(resource_uri=RESOURCE, tools={}, tool_server="docs-tools")
    assert str(caught.value) == (
        "'docs-tools' is not a ToolServer reference: expected '<namespace>/<name>', such as "
        "'team-a/docs-tools'"
    )
    unnamed = ToolServer.model_validate({"spec": {"resourceURI": RESOURCE}})
    with pytest.raises(ValueError, match=r"has no metadata\.namespace"):
        ToolCapabilities.from_toolserver(unnamed)
    with pytest.raises(ValueError) as refused:
        ResourceVerifier(
            issuer="https://issuer.test", audience=RESOURCE, jwks=JwksCache(jwks={"keys": []})
        )
    assert str(refused.value) == (
        f"audience {RESOURCE!r} is a ToolServer's resource URI: pass "
        "tool_server='<namespace>/<name>' (this resource's ToolServer), so that tokens minted "
        "for a ToolServer another namespace created with the same URI are refused"
    )


def test_bound_token_without_signature_is_refused(mcp_url: str, agent: AgentClient) -> None:
    token = agent.token(audience=RESOURCE)
    response = httpx.post(
        f"{mcp_url}/mcp",
        json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"},
        headers={"Authorization": f"Bearer {token}"},
    )
    assert response.status_code == 401
    assert response.json()["error_description"] == (
        "bound token presented without a request signature (sign the request)"
    )


def test_forbidden_tool_with_jit_is_retried_after_approval(
    mcp_url: str, agent: AgentClient, issuer: LoopbackIssuer
) -> None:
    issuer.jit_capabilities.add("document.delete")

    async def scenario() -> str:
        async with connect(
            agent,
            url=f"{mcp_url}/mcp",
            resource_uri=RESOURCE,
            jit=JustInTime(justification="clean up", wait=20),
        ) as session:
            call = asyncio.ensure_future(session.call_tool("delete", {"document": "q3"}))
            await asyncio.to_thread(issuer.request_filed.wait, 10)
            name = next(n for n, r in issuer.requests.items() if r.phase == "Pending")
            await asyncio.to_thread(issuer.approve, name)
            return _text(await call)

    issuer.request_filed.clear()
    assert asyncio.run(scenario()) == "deleted q3"
    issuer.granted.discard("document.delete")
    agent.invalidate(all_audiences=True)


def test_tool_mapping_from_local_config() -> None:
    local = ToolCapabilities.from_mapping(
        resource_uri=RESOURCE, tools={"search": "document.read"}, tool_server=TOOL_SERVER_REF
    )
    call = {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "search"}}
    assert local.required(json.dumps(call).encode()) == ["document.read"]
    assert local.required(json.dumps([call, {"method": "tools/list"}]).encode()) == [
        "document.read"
    ]
    assert local.required(b"") == []
    with pytest.raises(errors.InvalidRequest) as caught:
        local.required(json.dumps({"method": "tools/call", "params": {}}).encode())
    assert caught.value.description == "tools/call without a tool name"
    assert signatures.BASE_COMPONENTS == ("@method", "@authority", "@path", "signature-key")
