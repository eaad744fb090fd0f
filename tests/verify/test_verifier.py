"""Resource-server verification over real HTTP: aiohttp and ASGI middleware, bound tokens,
replay, rotation, RFC 6750 challenges, and the SDK's signing auth with opt-in JIT."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import httpx
import pytest
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric import ed25519

from agentauth.domain import errors, signatures
from agentauth.sdk import AgentAuth, AgentClient, JustInTime, aiohttp_middleware
from agentauth.sdk import errors as sdk_errors
from agentauth.verify import JwksCache, ResourceVerifier, www_authenticate
from agentauth.verify import aiohttp as verify_aiohttp
from agentauth.verify.asgi import AgentAuthMiddleware, principal_of
from tests.sdk.loopback import AGENT_ID, TOOL_SERVER_REF, LoopbackIssuer, ServerThread

AUDIENCE = "https://docs.example.test"


@pytest.fixture(scope="module")
def server() -> Iterator[ServerThread]:
    thread = ServerThread()
    yield thread
    thread.close()


@pytest.fixture(scope="module")
def issuer(server: ServerThread) -> LoopbackIssuer:
    return LoopbackIssuer(server)


def _requirements(request: web.Request) -> list[str]:
    return ["document.write"] if request.method == "POST" else ["document.read"]


async def _document(request: web.Request) -> web.Response:
    principal = verify_aiohttp.principal_of(request)
    if request.query.get("need"):
        principal.require(request.query["need"])
    return web.json_response(
        {
            "agent": principal.agent.name,
            "bound": principal.bound,
            "jkt": principal.jkt,
            "body": (await request.read()).decode(),
            "authorization_seen": "Authorization" in request.headers,
        }
    )


@pytest.fixture(scope="module")
def resource(server: ServerThread, issuer: LoopbackIssuer) -> dict[str, Any]:
    verifier = ResourceVerifier(
        issuer=issuer.issuer,
        audience=AUDIENCE,
        tool_server=TOOL_SERVER_REF,
        jwks=JwksCache(jwks_url=f"{issuer.url}/jwks", min_refetch_interval=0.5),
    )
    app = web.Application(
        middlewares=[verify_aiohttp.middleware(verifier, requirements=_requirements)]
    )
    app.router.add_get("/documents/{id}", _document)
    app.router.add_post("/documents/{id}", _document)
    return {"url": server.serve_aiohttp(app), "verifier": verifier}


@pytest.fixture(scope="module")
def agent(issuer: LoopbackIssuer, tmp_path_factory: pytest.TempPathFactory) -> AgentClient:
    token_file = tmp_path_factory.mktemp("sa") / "token"
    token_file.write_text("sa-token-verify")
    issuer.service_account_tokens.add("sa-token-verify")
    return AgentClient.from_environment(
        {
            "AGENTAUTH_ISSUER": issuer.issuer,
            "AGENTAUTH_TOKEN_URL": issuer.url,
            "AGENTAUTH_TOKEN_FILE": str(token_file),
        }
    )


def _signed_headers(
    agent_key: ed25519.Ed25519PrivateKey,
    *,
    token: str,
    method: str,
    url: str,
    body: bytes | None = None,
) -> dict[str, str]:
    return signatures.sign_request(
        method=method,
        url=url,
        headers={},
        body=body,
        private_key=agent_key,
        signature_key_header=signatures.signature_key_jwt(token),
        created=int(time.time()),
    )


def _challenge(response: httpx.Response) -> str:
    return response.headers["www-authenticate"]


def test_signed_request_with_bound_token_is_admitted(
    resource: dict[str, Any], agent: AgentClient
) -> None:
    with httpx.Client(auth=AgentAuth(agent, audience=AUDIENCE)) as http:
        response = http.get(f"{resource['url']}/documents/7?view=full")
        posted = http.post(f"{resource['url']}/documents/7", content=b"x")
    assert response.status_code == 200, response.text
    assert response.json() == {
        "agent": "reporter",
        "bound": True,
        "jkt": agent.jkt,
        "body": "",
        "authorization_seen": False,
    }
    assert posted.status_code == 403  # document.write is not granted
    assert _challenge(posted) == (
        'Bearer error="insufficient_scope", error_description="the agent token lacks '
        'capability document.write", scope="document.write"'
    )
    assert posted.json() == {
        "error": "insufficient_scope",
        "error_description": "the agent token lacks capability document.write",
    }


def test_no_token_is_a_bare_challenge(resource: dict[str, Any]) -> None:
    response = httpx.get(f"{resource['url']}/documents/7")
    assert response.status_code == 401
    assert _challenge(response) == "Bearer"
    assert response.json()["error"] == "invalid_token"


def test_bound_token_as_plain_bearer_is_refused(
    resource: dict[str, Any], agent: AgentClient
) -> None:
    token = agent.token(audience=AUDIENCE)
    response = httpx.get(
        f"{resource['url']}/documents/7", headers={"Authorization": f"Bearer {token}"}
    )
    assert response.status_code == 401
    assert _challenge(response) == (
        'Bearer error="invalid_token", error_description="bound token presented without a '
        'request signature (sign the request)"'
    )


def test_unbound_bearer_token_policy(resource: dict[str, Any], issuer: LoopbackIssuer) -> None:
    token = issuer.mint(audience=AUDIENCE, scope=["document.read"])
    response = httpx.get(
        f"{resource['url']}/documents/7", headers={"Authorization": f"Bearer {token}"}
    )
    assert response.status_code == 200 and response.json()["bound"] is False
    strict = ResourceVerifier(
        issuer=issuer.issuer,
        audience=AUDIENCE,
        tool_server=TOOL_SERVER_REF,
        jwks=JwksCache(jwks=issuer.keyset.public_jwks()),
        allow_unbound_bearer=False,
    )
    with pytest.raises(errors.InvalidToken) as caught:
        asyncio.run(
            strict.verify(
                method="GET",
                url=f"{resource['url']}/documents/7",
                headers={"Authorization": f"Bearer {token}"},
                body=b"",
            )
        )
    assert caught.value.description == "this resource requires a signed request"


def test_token_for_another_audience(resource: dict[str, Any], agent: AgentClient) -> None:
    with httpx.Client(auth=AgentAuth(agent, audience="https://other.example.test")) as http:
        response = http.get(f"{resource['url']}/documents/7")
    assert response.status_code == 401
    assert response.json()["error_description"] == (
        "token audience does not include https://docs.example.test"
    )


def test_replayed_signature_is_refused(resource: dict[str, Any], issuer: LoopbackIssuer) -> None:
    key = ed25519.Ed25519PrivateKey.generate()
    token = issuer.mint(
        audience=AUDIENCE, scope=["document.read"], cnf_jwk=signatures.public_jwk(key)
    )
    url = f"{resource['url']}/documents/9"
    headers = _signed_headers(key, token=token, method="GET", url=url)
    assert httpx.get(url, headers=headers).status_code == 200
    replay = httpx.get(url, headers=headers)
    assert replay.status_code == 401
    assert replay.json()["error_description"] == "request signature was already used (replay)"


def test_signature_checks_over_http(resource: dict[str, Any], issuer: LoopbackIssuer) -> None:
    key = ed25519.Ed25519PrivateKey.generate()
    token = issuer.mint(
        audience=AUDIENCE,
        scope=["document.read", "document.write"],
        cnf_jwk=signatures.public_jwk(key),
    )
    url = f"{resource['url']}/documents/3"
    signed = _signed_headers(key, token=token, method="POST", url=url, body=b"hello")
    tampered = httpx.post(url, headers=signed, content=b"HELLO")
    assert tampered.json()["error_description"] == (
        "request signature is invalid: Content-Digest does not match the message body"
    )
    other_path = httpx.post(f"{resource['url']}/documents/4", headers=signed, content=b"hello")
    assert other_path.json()["error_description"] == (
        "request signature is invalid: signature does not verify with the presented key"
    )
    wrong_key = ed25519.Ed25519PrivateKey.generate()
    forged = _signed_headers(wrong_key, token=token, method="POST", url=url, body=b"hello")
    assert httpx.post(url, headers=forged, content=b"hello").json()["error_description"] == (
        "request signature is invalid: signature does not verify with the presented key"
    )
    ok = httpx.post(url, headers=signed, content=b"hello")
    assert ok.status_code == 200 and ok.json()["body"] == "hello"
    conflicting = _signed_headers(key, token=token, method="GET", url=url)
    conflicting["Authorization"] = "Bearer " + issuer.mint(audience=AUDIENCE, scope=[])
    answer = httpx.get(url, headers=conflicting)
    assert answer.json()["error_description"] == (
        "Authorization and Signature-Key carry different tokens"
    )


def test_expired_window_and_token(issuer: LoopbackIssuer) -> None:
    key = ed25519.Ed25519PrivateKey.generate()
    now = [time.time()]
    verifier = ResourceVerifier(
        issuer=issuer.issuer,
        audience=AUDIENCE,
        tool_server=TOOL_SERVER_REF,
        jwks=JwksCache(jwks=issuer.keyset.public_jwks()),
        clock=lambda: now[0],
        leeway=0,
    )
    url = "https://docs.example.test/documents/1"
    token = issuer.mint(
        audience=AUDIENCE, scope=["document.read"], cnf_jwk=signatures.public_jwk(key)
    )
    headers = _signed_headers(key, token=token, method="GET", url=url)

    def reason(**kwargs: Any) -> str:
        with pytest.raises(errors.OAuthError) as caught:
            asyncio.run(verifier.verify(method="GET", url=url, headers=headers, body=b"", **kwargs))
        return caught.value.description

    now[0] += 61
    assert reason() == "request signature is invalid: signature expired: created more than 60s ago"
    now[0] += 300
    assert reason() == "token has expired"
    now[0] -= 361
    headers = _signed_headers(key, token=token, method="GET", url=url)
    with pytest.raises(errors.InsufficientScope) as scope_error:
        asyncio.run(
            verifier.verify(
                method="GET", url=url, headers=headers, body=b"", required=["payments.authorize"]
            )
        )
    assert www_authenticate(scope_error.value, resource_metadata="https://m") == (
        'Bearer error="insufficient_scope", error_description="the agent token lacks '
        'capability payments.authorize", scope="payments.authorize", resource_metadata="https://m"'
    )


def test_kid_rotation_refetches_once_and_is_rate_limited(issuer: LoopbackIssuer) -> None:
    jwks = JwksCache(jwks_url=f"{issuer.url}/jwks", min_refetch_interval=60)
    verifier = ResourceVerifier(
        issuer=issuer.issuer, audience=AUDIENCE, tool_server=TOOL_SERVER_REF, jwks=jwks
    )
    old = issuer.mint(audience=AUDIENCE, scope=["document.read"])

    async def check(token: str) -> str:
        principal = await verifier.verify(
            method="GET",
            url="https://docs.example.test/x",
            headers={"Authorization": f"Bearer {token}"},
            body=b"",
        )
        return principal.subject

    assert asyncio.run(check(old)) == AGENT_ID
    assert jwks.fetches == 1
    issuer.rotate()
    rotated = issuer.mint(audience=AUDIENCE, scope=["document.read"])
    assert asyncio.run(check(rotated)) == AGENT_ID  # unknown kid -> one refetch
    assert jwks.fetches == 2
    from agentauth.domain import keys

    foreign = keys.generate_keyset(now=datetime.now(tz=UTC))
    bogus = issuer.mint(audience=AUDIENCE, scope=[], keyset=foreign)
    with pytest.raises(errors.InvalidToken) as caught:
        asyncio.run(check(bogus))
    assert caught.value.description == (
        f"token signed with unknown key id {foreign.signing_key().kid!r}"
    )
    assert jwks.fetches == 2  # within min_refetch_interval: no refetch storm


def test_insufficient_scope_turns_into_jit_request(
    resource: dict[str, Any], issuer: LoopbackIssuer, agent: AgentClient
) -> None:
    def approver() -> None:
        assert issuer.request_filed.wait(10)
        name = next(n for n, r in issuer.requests.items() if r.phase == "Pending")
        issuer.approve(name)

    issuer.request_filed.clear()
    thread = threading.Thread(target=approver)
    thread.start()
    auth = AgentAuth(agent, audience=AUDIENCE, jit=JustInTime(justification="edit doc", wait=20))
    with httpx.Client(auth=auth) as http:
        response = http.post(f"{resource['url']}/documents/5", content=b"new text")
    thread.join(10)
    assert response.status_code == 200, response.text
    assert response.json()["body"] == "new text"
    issuer.granted.discard("document.write")
    agent.invalidate(all_audiences=True)


def test_jit_denied_raises(
    resource: dict[str, Any], issuer: LoopbackIssuer, agent: AgentClient
) -> None:
    async def scenario() -> None:
        issuer.request_filed.clear()
        auth = AgentAuth(agent, audience=AUDIENCE, jit=JustInTime(justification="x", wait=20))
        async with httpx.AsyncClient(auth=auth) as http:
            call = asyncio.ensure_future(http.post(f"{resource['url']}/documents/5", content=b"y"))
            await asyncio.to_thread(issuer.request_filed.wait, 10)
            name = next(n for n, r in issuer.requests.items() if r.phase == "Pending")
            await asyncio.to_thread(issuer.approve, name, phase="Denied")
            await call

    with pytest.raises(sdk_errors.AccessRequestDeniedError):
        asyncio.run(scenario())


def test_aiohttp_client_middleware_signs(resource: dict[str, Any], agent: AgentClient) -> None:
    async def scenario() -> tuple[int, dict[str, Any]]:
        async with (
            aiohttp.ClientSession(
                middlewares=(aiohttp_middleware(agent, audience=AUDIENCE),)
            ) as session,
            session.get(f"{resource['url']}/documents/1") as response,
        ):
            return response.status, await response.json()

    status, body = asyncio.run(scenario())
    assert status == 200 and body["jkt"] == agent.jkt


async def _asgi_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        while (await receive())["type"] != "lifespan.shutdown":
            await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})
        return
    principal = principal_of(scope)
    message = await receive()
    body = json.dumps(
        {
            "agent": principal.agent.name,
            "scope": list(principal.scope),
            "headers": sorted(k.decode() for k, _ in scope["headers"]),
            "body": message["body"].decode(),
        }
    ).encode()
    await send(
        {"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"json")]}
    )
    await send({"type": "http.response.body", "body": body})


def test_asgi_middleware(server: ServerThread, issuer: LoopbackIssuer, agent: AgentClient) -> None:
    verifier = ResourceVerifier(
        issuer=issuer.issuer,
        audience=AUDIENCE,
        tool_server=TOOL_SERVER_REF,
        jwks=JwksCache(jwks_url=f"{issuer.url}/jwks"),
    )
    app = AgentAuthMiddleware(
        _asgi_app,  # type: ignore[arg-type]
        verifier=verifier,
        requirements=lambda method, path, body: ["document.read"],
        exempt_paths=("/healthz",),
    )
    url = server.serve_asgi(app)
    with httpx.Client(auth=AgentAuth(agent, audience=AUDIENCE)) as http:
        response = http.put(f"{url}/notes/1?x=1", content=b"payload")
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["agent"] == "reporter" and body["body"] == "payload"
    assert not {"authorization", "signature", "signature-input", "signature-key"} & set(
        body["headers"]
    )
    refused = httpx.get(f"{url}/notes/1")
    assert refused.status_code == 401 and refused.headers["www-authenticate"] == "Bearer"


def test_sdk_key_never_touches_disk(agent: AgentClient, tmp_path: Path) -> None:
    # The signing key lives only in the AgentClient object; nothing under the agent's
    # working directory or the token file's directory holds private key material.
    assert agent.public_jwk.keys() == {"kty", "crv", "x"}
    assert not list(tmp_path.iterdir())


def test_hwk_signature_with_bearer_token_and_other_credential_shapes(
    issuer: LoopbackIssuer,
) -> None:
    key = ed25519.Ed25519PrivateKey.generate()
    verifier = ResourceVerifier(
        issuer=issuer.issuer,
        audience=AUDIENCE,
        tool_server=TOOL_SERVER_REF,
        jwks=JwksCache(jwks=issuer.keyset.public_jwks()),
    )
    url = "https://docs.example.test/documents/1"
    bound = issuer.mint(
        audience=AUDIENCE, scope=["document.read"], cnf_jwk=signatures.public_jwk(key)
    )

    def hwk_request(token: str | None) -> list[tuple[str, str]]:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        headers.update(
            signatures.sign_request(
                method="GET",
                url=url,
                headers=headers,
                body=None,
                private_key=key,
                signature_key_header=signatures.signature_key_hwk(key),
                components=(*signatures.BASE_COMPONENTS, "authorization") if token else None,
            )
        )
        return list(headers.items())

    def run(headers: list[tuple[str, str]]) -> Any:
        return asyncio.run(verifier.verify(method="GET", url=url, headers=headers, body=b""))

    assert run(hwk_request(bound)).jkt == signatures.jwk_thumbprint(signatures.public_jwk(key))
    other = issuer.mint(
        audience=AUDIENCE,
        scope=["document.read"],
        cnf_jwk=signatures.public_jwk(ed25519.Ed25519PrivateKey.generate()),
    )
    with pytest.raises(errors.InvalidToken) as not_bound:
        run(hwk_request(other))
    assert not_bound.value.description == "the token is not bound to the signing key"
    with pytest.raises(errors.InvalidToken) as no_token:
        run(hwk_request(None))
    assert no_token.value.description == "a signed request must present an agent token"
    with pytest.raises(errors.InvalidRequest) as two:
        run([("Authorization", "Bearer a"), ("Authorization", "Bearer b")])
    assert two.value.description == "more than one Authorization header"


def test_asgi_body_limit(server: ServerThread, issuer: LoopbackIssuer) -> None:
    verifier = ResourceVerifier(
        issuer=issuer.issuer,
        audience=AUDIENCE,
        tool_server=TOOL_SERVER_REF,
        jwks=JwksCache(jwks=issuer.keyset.public_jwks()),
    )
    url = server.serve_asgi(AgentAuthMiddleware(_asgi_app, verifier=verifier))  # type: ignore[arg-type]
    response = httpx.post(f"{url}/upload", content=b"x" * (1024 * 1024 + 1))
    assert response.status_code == 413
    assert response.json() == {
        "error": "invalid_request",
        "error_description": "request body too large",
    }
