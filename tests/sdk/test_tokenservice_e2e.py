"""The SDK against the real token service (``tokenservice.app.build_app``) on loopback: a
service-account exchange and a registered-key agent both get tokens bound to the SDK's
in-memory key, which a resource server (``agentauth.verify``) accepts only when signed."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiohttp import web

from agentauth.domain import jose
from agentauth.sdk import AgentAuth, AgentClient, errors, generate_key_pair
from agentauth.tokenservice import app as service_app
from agentauth.tokenservice import settings as settings_module
from agentauth.tokenservice import state as state_module
from agentauth.verify import JwksCache, ResourceVerifier
from agentauth.verify import aiohttp as verify_aiohttp
from tests.domain import tokenkit
from tests.sdk.loopback import ServerThread

ISSUER = "https://agentauth.example.test"


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture(scope="module")
def server() -> Iterator[ServerThread]:
    thread = ServerThread()
    yield thread
    thread.close()


@pytest.fixture(scope="module")
def cluster() -> tokenkit.ClusterIssuer:
    return tokenkit.ClusterIssuer()


@pytest.fixture(scope="module")
def registered(tmp_path_factory: pytest.TempPathFactory) -> Any:
    return generate_key_pair(private_key_path=tmp_path_factory.mktemp("keys") / "agent.pem")


@pytest.fixture(scope="module")
def service(server: ServerThread, cluster: tokenkit.ClusterIssuer, registered: Any) -> str:
    port = _free_port()
    public_url = f"http://127.0.0.1:{port}"
    settings = settings_module.Settings(
        issuer=ISSUER,
        public_url=public_url,
        cluster_issuer=tokenkit.CLUSTER_ISSUER,
        listen_host="127.0.0.1",
        listen_port=port,
    )
    outside = tokenkit.agent(
        "outside", uid="outside-uid", service_account=None, publicKeys=registered.jwks
    )
    state = state_module.MemoryState(
        snapshot=tokenkit.snapshot(
            agents=[tokenkit.agent(), outside],
            grants=[
                tokenkit.grant("base", capabilities=tokenkit.STANDARD_CAPABILITIES),
                tokenkit.grant(
                    "outside", agents=["outside"], capabilities=[{"name": "document.read"}]
                ),
            ],
        ),
        keyset=tokenkit.issuer_keys(),
        cluster_jwks=cluster.jwks(),
    )

    async def start() -> str:
        runner = web.AppRunner(service_app.build_app(settings=settings, state=state))
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        server._runners.append(runner)
        return public_url

    return server.run(start())


def _pod_client(service: str, cluster: tokenkit.ClusterIssuer, tmp_path: Path) -> AgentClient:
    token_file = tmp_path / "token"
    token_file.write_text(cluster.token(now=datetime.now(UTC)))
    return AgentClient.from_environment(
        {
            "AGENTAUTH_AGENT": "research",
            "AGENTAUTH_NAMESPACE": "team-a",
            "AGENTAUTH_ISSUER": ISSUER,
            "AGENTAUTH_TOKEN_URL": service,
            "AGENTAUTH_TOKEN_FILE": str(token_file),
        }
    )


def test_service_account_exchange_gives_a_bound_token(
    service: str, cluster: tokenkit.ClusterIssuer, tmp_path: Path
) -> None:
    client = _pod_client(service, cluster, tmp_path)
    info = client.token_info(scope=["document.read"])
    claims = jose.parse(info.access_token).payload
    assert claims["sub"] == "aauth:research.team-a@agentauth.example.test"
    assert claims["scope"] == "document.read"
    assert claims["cnf"] == {"jwk": client.public_jwk, "jkt": client.jkt}
    assert client.token(scope="document.read") == info.access_token  # cached
    with pytest.raises(errors.InvalidScopeError) as caught:
        client.token(scope=["payments.authorize"])
    assert caught.value.error == "invalid_scope"
    assert client.is_allowed("document.read") is True


def test_registered_key_agent_gets_a_token(service: str, registered: Any) -> None:
    client = AgentClient.from_private_key(
        agent_id="aauth:outside.team-a@agentauth.example.test",
        issuer=ISSUER,
        token_url=service,
        private_key_file=registered.private_key_path,
    )
    claims = jose.parse(client.token()).payload
    assert claims["sub"] == "aauth:outside.team-a@agentauth.example.test"
    assert claims["scope"] == "document.read"
    assert claims["cnf"]["jkt"] == client.jkt


def test_resource_server_accepts_the_signed_request_only(
    server: ServerThread, service: str, cluster: tokenkit.ClusterIssuer, tmp_path: Path
) -> None:
    verifier = ResourceVerifier(
        issuer=ISSUER, audience=ISSUER, jwks=JwksCache(jwks_url=f"{service}/jwks")
    )

    async def hello(request: web.Request) -> web.Response:
        principal = verify_aiohttp.principal_of(request)
        return web.json_response({"agent": principal.agent.name, "bound": principal.bound})

    app = web.Application(middlewares=[verify_aiohttp.middleware(verifier)])
    app.router.add_get("/hello", hello)
    url = server.serve_aiohttp(app)
    client = _pod_client(service, cluster, tmp_path)
    with httpx.Client(auth=AgentAuth(client, audience=ISSUER)) as http:
        response = http.get(f"{url}/hello")
    assert response.json() == {"agent": "research", "bound": True}
    plain = httpx.get(f"{url}/hello", headers={"Authorization": f"Bearer {client.token()}"})
    assert plain.status_code == 401
