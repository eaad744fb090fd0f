"""tool -> agent -> user through the SDK against the real token service on loopback.

Every SDK token is bound to its process's key, so the agent names the tool with ``may_act`` when
it delegates; the tool then nests one level more. Without ``may_act`` the tool is refused.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from aiohttp import web

from agentauth.domain import delegation, jose
from agentauth.sdk import AgentClient, errors
from agentauth.tokenservice import app as service_app
from agentauth.tokenservice import settings as settings_module
from agentauth.tokenservice import state as state_module
from tests.domain import tokenkit
from tests.sdk.loopback import ServerThread

ISSUER = "https://agentauth.example.test"
USER_ISSUER = "https://idp.example.test"
TOOL_ID = "aauth:tool.team-a@agentauth.example.test"
AGENT_ID = "aauth:research.team-a@agentauth.example.test"


@pytest.fixture(scope="module")
def cluster() -> tokenkit.ClusterIssuer:
    return tokenkit.ClusterIssuer()


@pytest.fixture(scope="module")
def idp() -> tokenkit.ClusterIssuer:
    return tokenkit.ClusterIssuer(issuer=USER_ISSUER)


@pytest.fixture(scope="module")
def service(cluster: tokenkit.ClusterIssuer, idp: tokenkit.ClusterIssuer) -> Iterator[str]:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = int(probe.getsockname()[1])
    public_url = f"http://127.0.0.1:{port}"
    settings = settings_module.Settings(
        issuer=ISSUER,
        public_url=public_url,
        cluster_issuer=tokenkit.CLUSTER_ISSUER,
        listen_host="127.0.0.1",
        listen_port=port,
        trusted_issuers=(
            delegation.TrustedIssuer(issuer=USER_ISSUER, jwks_url="unused", audience="agentauth"),
        ),
    )
    delegating = {"allowed": True, "maxDepth": 3}
    state = state_module.MemoryState(
        snapshot=tokenkit.snapshot(
            agents=[
                tokenkit.agent(delegation=delegating),
                tokenkit.agent(
                    "tool", uid="tool-uid", service_account="tool-sa", delegation=delegating
                ),
            ],
            pods=[
                tokenkit.pod(),
                tokenkit.pod(
                    "tool-0", uid="tool-pod-uid", agent_label="tool", service_account="tool-sa"
                ),
            ],
            grants=[
                tokenkit.grant("base", capabilities=tokenkit.STANDARD_CAPABILITIES),
                tokenkit.grant("tool", agents=["tool"], capabilities=[{"name": "document.read"}]),
            ],
        ),
        keyset=tokenkit.issuer_keys(),
        cluster_jwks=cluster.jwks(),
        trusted_jwks={USER_ISSUER: idp.jwks()},
    )
    server = ServerThread()

    async def start() -> str:
        runner = web.AppRunner(service_app.build_app(settings=settings, state=state))
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        server._runners.append(runner)
        return public_url

    yield server.run(start())
    server.close()


def client(
    service: str, cluster: tokenkit.ClusterIssuer, token_file: Path, **pod: str
) -> AgentClient:
    token_file.write_text(cluster.sign(cluster.claims(now=datetime.now(UTC), **pod)))
    return AgentClient.from_environment(
        {
            "AGENTAUTH_AGENT": "unused",
            "AGENTAUTH_NAMESPACE": "team-a",
            "AGENTAUTH_ISSUER": ISSUER,
            "AGENTAUTH_TOKEN_URL": service,
            "AGENTAUTH_TOKEN_FILE": str(token_file),
        }
    )


def user_token(idp: tokenkit.ClusterIssuer) -> str:
    now = datetime.now(UTC)
    return idp.sign(
        {
            "iss": USER_ISSUER,
            "sub": "jane@example.test",
            "aud": "agentauth",
            "exp": int((now + timedelta(minutes=10)).timestamp()),
            "iat": int(now.timestamp()),
            "scope": "document.read document.write",
            "may_act": {"sub": AGENT_ID},  # jane names the agent that may act for her
        }
    )


def test_tool_agent_user_chain_with_bound_tokens(
    service: str, cluster: tokenkit.ClusterIssuer, idp: tokenkit.ClusterIssuer, tmp_path: Path
) -> None:
    agent = client(service, cluster, tmp_path / "agent")
    tool = client(
        service,
        cluster,
        tmp_path / "tool",
        service_account="tool-sa",
        pod="tool-0",
        pod_uid="tool-pod-uid",
    )
    on_behalf = agent.delegate(user_token(idp), may_act=TOOL_ID)
    handed = jose.parse(on_behalf.access_token).payload
    assert handed["sub"] == "jane@example.test"
    assert handed["act"] == {"sub": AGENT_ID}
    assert handed["may_act"] == {"sub": TOOL_ID}
    assert handed["cnf"]["jkt"] == agent.jkt

    nested = tool.delegate(on_behalf.access_token)
    claims = jose.parse(nested.access_token).payload
    assert claims["sub"] == "jane@example.test"
    assert claims["act"] == {"sub": TOOL_ID, "act": {"sub": AGENT_ID}}
    assert claims["scope"] == "document.read"
    assert claims["cnf"]["jkt"] == tool.jkt

    without_consent = agent.delegate(user_token(idp))
    with pytest.raises(errors.AgentAuthError) as caught:
        tool.delegate(without_consent.access_token)
    assert caught.value.error == "invalid_grant"
    assert caught.value.description == (
        "the subject token is bound to a key (cnf): it can be the subject of a delegation only "
        "when its may_act names the actor or the request is signed with that key"
    )
