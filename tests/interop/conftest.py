"""Interop fixtures: independent implementations, and the real token service on loopback.

Independent implementations: joserfc, jwcrypto and authlib from PyPI (the ``test`` extra), and
from npm the ``jose`` package and two RFC 9421 libraries (``http-message-signatures``,
``http-message-sig``), pinned by ``tests/interop/package-lock.json`` and installed by
``make test`` (``npm ci``); :func:`js` drives them through ``driver.mjs`` with Node.

The token service is ``tokenservice.app.build_app`` served over HTTP on 127.0.0.1 with
in-memory state (real keys, real service-account tokens from ``tests.domain.tokenkit``), once
per issued-token algorithm.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric import ed25519

from agentauth.domain import jose, signatures
from agentauth.tokenservice import app as service_app
from agentauth.tokenservice import settings as settings_module
from agentauth.tokenservice import state as state_module
from tests.domain import tokenkit
from tests.sdk.loopback import ServerThread

HERE = Path(__file__).parent
ISSUER = "https://agentauth.example.test"
TRUST_DOMAIN = "agentauth.example.test"
OUTSIDE_AGENT = f"aauth:outside.team-a@{TRUST_DOMAIN}"


def js(*operations: dict[str, Any]) -> list[dict[str, Any]]:
    """Run operations through the Node driver; one result dict per operation."""
    node = shutil.which("node")
    if node is None:
        pytest.fail("node is not on PATH: the interop tests need Node.js (and npm for make test)")
    if not (HERE / "node_modules" / "jose").is_dir():
        pytest.fail("tests/interop/node_modules is missing: run `make test` (it runs npm ci there)")
    done = subprocess.run(
        [node, str(HERE / "driver.mjs")],
        input=json.dumps(list(operations)),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    results: list[dict[str, Any]] = json.loads(done.stdout)
    return results


def private_jwk(key: ed25519.Ed25519PrivateKey) -> dict[str, str]:
    raw = key.private_bytes_raw()
    return {**signatures.public_jwk(key), "d": jose.b64url_encode(raw)}


@pytest.fixture(scope="session")
def server() -> Iterator[ServerThread]:
    thread = ServerThread()
    yield thread
    thread.close()


@pytest.fixture(scope="session")
def cluster() -> tokenkit.ClusterIssuer:
    return tokenkit.ClusterIssuer()


@pytest.fixture(scope="session")
def outside_key() -> ed25519.Ed25519PrivateKey:
    """The one registered key of the Agent ``team-a/outside`` (no service account)."""
    return ed25519.Ed25519PrivateKey.generate()


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class TokenService:
    """A running token service: its URL, issued-token algorithm and in-memory state."""

    def __init__(self, *, url: str, algorithm: str, state: state_module.MemoryState) -> None:
        self.url = url
        self.algorithm = algorithm
        self.state = state
        self.token_endpoint = f"{url}/oauth2/token"

    def jwks(self) -> dict[str, Any]:
        keyset = self.state.keyset()
        assert keyset is not None
        return keyset.public_jwks(algorithm=self.algorithm)


def _start(
    server: ServerThread,
    cluster: tokenkit.ClusterIssuer,
    outside_key: ed25519.Ed25519PrivateKey,
    algorithm: str,
) -> TokenService:
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    settings = settings_module.Settings(
        issuer=ISSUER,
        public_url=url,
        cluster_issuer=tokenkit.CLUSTER_ISSUER,
        listen_host="127.0.0.1",
        listen_port=port,
        token_algorithm=algorithm,
    )
    jwk = signatures.public_jwk(outside_key)
    outside = tokenkit.agent(
        "outside",
        uid="outside-uid",
        service_account=None,
        publicKeys={"keys": [{**jwk, "kid": signatures.jwk_thumbprint(jwk)}]},
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

    async def start() -> None:
        runner = web.AppRunner(service_app.build_app(settings=settings, state=state))
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        server._runners.append(runner)

    server.run(start())
    return TokenService(url=url, algorithm=algorithm, state=state)


@pytest.fixture(scope="session")
def services(
    server: ServerThread, cluster: tokenkit.ClusterIssuer, outside_key: ed25519.Ed25519PrivateKey
) -> dict[str, TokenService]:
    """One token service per issued-token algorithm (``EdDSA``, the default, and ``Ed25519``)."""
    return {
        algorithm: _start(server, cluster, outside_key, algorithm)
        for algorithm in ("EdDSA", "Ed25519")
    }


@pytest.fixture(scope="session")
def service(services: dict[str, TokenService]) -> TokenService:
    """The token service with default settings."""
    return services[settings_module.Settings(issuer=ISSUER).token_algorithm]
