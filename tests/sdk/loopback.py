"""Loopback servers for SDK, verifier and MCP tests: real HTTP, real crypto.

``ServerThread`` runs aiohttp/ASGI apps on 127.0.0.1 in a background event loop so that sync
and async clients can both call them.  ``LoopbackIssuer`` is a small token service built only
from the domain functions the real one uses (``tokens.issue``, ``signatures.verify_request``,
``assertions.verify_client_assertion``): RFC 8693 exchange of a service-account token, RFC 7523
client assertions, delegation with ``actor_token``, ``/jwks``, ``/v1/ask`` and
``/v1/access-requests`` with long-poll.  Used until the real ``tokenservice.app`` exists.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
import urllib.parse
import uuid
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from aiohttp import web

from agentauth.domain import assertions, errors, keys, signatures, tokens

T = TypeVar("T")
TRUST_DOMAIN = "cluster.local"
AGENT_NAME = "reporter"
NAMESPACE = "team-a"
AGENT_ID = tokens.agent_subject(name=AGENT_NAME, namespace=NAMESPACE, trust_domain=TRUST_DOMAIN)


class ServerThread:
    """An event loop in a daemon thread that serves apps on loopback ports."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()
        self._runners: list[web.AppRunner] = []
        self._uvicorn: list[Any] = []

    def run(self, coroutine: Coroutine[Any, Any, T], timeout: float = 30.0) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)

    def serve_aiohttp(self, app: web.Application) -> str:
        async def start() -> str:
            runner = web.AppRunner(app)
            await runner.setup()
            site = web.TCPSite(runner, "127.0.0.1", 0)
            await site.start()
            self._runners.append(runner)
            server = site._server
            assert server is not None
            port = server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
            return f"http://127.0.0.1:{port}"

        return self.run(start())

    def serve_asgi(self, app: Any) -> str:
        import uvicorn

        config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="on")
        server = uvicorn.Server(config)

        async def start() -> str:
            task = asyncio.ensure_future(server.serve())
            deadline = time.monotonic() + 20
            while not server.started:
                if task.done():
                    task.result()
                if time.monotonic() > deadline:
                    raise TimeoutError("uvicorn did not start")
                await asyncio.sleep(0.01)  # polling the started flag with a deadline
            self._uvicorn.append((server, task))
            port = server.servers[0].sockets[0].getsockname()[1]
            return f"http://127.0.0.1:{port}"

        return self.run(start())

    def close(self) -> None:
        async def stop() -> None:
            for runner in self._runners:
                await runner.cleanup()
            for server, task in self._uvicorn:
                server.should_exit = True
                await asyncio.wait_for(task, 10)
            current = asyncio.current_task()
            leftovers = [t for t in asyncio.all_tasks() if t is not current]
            for task in leftovers:
                task.cancel()
            await asyncio.gather(*leftovers, return_exceptions=True)

        self.run(stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)


@dataclass
class AccessRequestRecord:
    name: str
    capabilities: list[str]
    justification: str
    phase: str = "Pending"
    decided: asyncio.Event = field(default_factory=asyncio.Event)


TOOL_SERVER = "loopback-tools"
"""The ToolServer (in ``NAMESPACE``) the loopback issuer names in every token for an audience
other than itself, as the real token service does (``tool_server`` claim)."""
TOOL_SERVER_REF = f"{NAMESPACE}/{TOOL_SERVER}"


def tool_server_claims(audience: str, issuer: str) -> dict[str, Any] | None:
    if audience.rstrip("/") == issuer.rstrip("/"):
        return None
    return {"tool_server": {"namespace": NAMESPACE, "name": TOOL_SERVER, "uid": "ts-uid-1"}}


class LoopbackIssuer:
    """A token service on loopback, built from the domain layer (see module docstring)."""

    def __init__(self, server: ServerThread) -> None:
        self.keyset = keys.generate_keyset(now=datetime.now(tz=UTC))
        self.service_account_tokens: set[str] = set()
        self.registered_jwks: dict[str, Any] = {"keys": []}
        self.granted: set[str] = {"document.read", "document.list"}
        self.jit_capabilities: set[str] = {"document.write", "payments.authorize"}
        self.lifetime = timedelta(minutes=5)
        self.replay_cache = assertions.InMemoryReplayCache()
        self.exchange_gate: asyncio.Event | None = None
        self.exchange_started = threading.Event()
        self.exchange_count = 0
        self.subject_tokens_seen: list[str] = []
        self.requests: dict[str, AccessRequestRecord] = {}
        self.request_filed = threading.Event()
        self.jwks_fetches = 0
        self._server = server
        app = web.Application()
        app.router.add_get("/jwks", self._jwks)
        app.router.add_post("/oauth2/token", self._token)
        app.router.add_post("/v1/ask", self._ask)
        app.router.add_post("/v1/access-requests", self._file)
        app.router.add_get("/v1/access-requests/{name}", self._poll)
        self.url = server.serve_aiohttp(app)
        self.issuer = self.url
        self.token_endpoint = f"{self.url}/oauth2/token"

    # ------------------------------------------------------------------ helpers for tests

    def mint(
        self,
        *,
        audience: str,
        scope: list[str],
        cnf_jwk: dict[str, str] | None = None,
        lifetime: timedelta | None = None,
        now: datetime | None = None,
        keyset: keys.KeySet | None = None,
    ) -> str:
        return tokens.issue(
            keyset=keyset or self.keyset,
            issuer=self.issuer,
            subject=AGENT_ID,
            agent=tokens.AgentRef(name=AGENT_NAME, namespace=NAMESPACE, uid="uid-1"),
            audience=audience,
            scope=scope,
            lifetime=lifetime or self.lifetime,
            now=now or datetime.now(tz=UTC),
            client_id=AGENT_ID,
            cnf_jwk=cnf_jwk,
            extra_claims=tool_server_claims(audience, self.issuer),
        ).token

    def rotate(self) -> None:
        now = datetime.now(tz=UTC)
        self.keyset = keys.rotate(
            self.keyset,
            now=now + timedelta(days=2),
            rotation_interval=timedelta(days=1),
            retention=timedelta(hours=2),
        )

    def hold_exchanges(self) -> None:
        """Make token exchanges wait (after counting) until :meth:`release_exchanges`."""
        self.exchange_gate = asyncio.Event()

    def release_exchanges(self) -> None:
        gate = self.exchange_gate
        if gate is not None:
            self._server.loop.call_soon_threadsafe(gate.set)

    def approve(self, name: str, *, phase: str = "Approved") -> None:
        async def decide() -> None:
            record = self.requests[name]
            record.phase = phase
            if phase == "Approved":
                self.granted.update(record.capabilities)
            record.decided.set()

        self._server.run(decide())

    # ------------------------------------------------------------------ handlers

    @staticmethod
    def _error(exc: errors.OAuthError) -> web.Response:
        return web.json_response(exc.to_json(), status=exc.status, headers=exc.headers)

    async def _jwks(self, request: web.Request) -> web.Response:
        self.jwks_fetches += 1
        return web.json_response(self.keyset.public_jwks())

    def _verify_agent(self, request: web.Request, body: bytes) -> tokens.AgentTokenClaims:
        auth = request.headers.get("Authorization", "")
        if not auth.startswith("Bearer "):
            raise errors.InvalidToken("no agent token")
        claims = tokens.verify(
            auth[7:],
            public_keys=self.keyset.public_keys(),
            issuer=self.issuer,
            now=datetime.now(tz=UTC),
        )
        signed = signatures.verify_request(
            method=request.method,
            url=f"{self.url}{request.raw_path}",
            headers=list(request.raw_headers),
            body=body,
            now=time.time(),
            required_components=(*signatures.BASE_COMPONENTS, "authorization"),
        )
        if claims.claims.get("cnf", {}).get("jkt") != signed.jkt:
            raise errors.InvalidToken("token not bound to the signing key")
        return claims

    async def _token(self, request: web.Request) -> web.Response:
        body = await request.read()
        try:
            form = dict(urllib.parse.parse_qsl(body.decode()))
            signed = signatures.verify_request(
                method=request.method,
                url=f"{self.url}{request.raw_path}",
                headers=list(request.raw_headers),
                body=body,
                now=time.time(),
            )
            self.exchange_count += 1
            self.exchange_started.set()
            if self.exchange_gate is not None:
                await self.exchange_gate.wait()
            grant = form.get("grant_type")
            subject = AGENT_ID
            act: dict[str, Any] | None = None
            scope = sorted(self.granted)
            if grant == "client_credentials":
                assertions.check_assertion_type(form.get("client_assertion_type"))
                assertion = form.get("client_assertion", "")
                assertions.verify_client_assertion(
                    assertion=assertion,
                    agent_id=assertions.peek_issuer(assertion),
                    public_keys=self.registered_jwks,
                    token_endpoint=self.token_endpoint,
                    now=time.time(),
                    replay_cache=self.replay_cache,
                    signer_jkt=signed.jkt,
                    client_id=form.get("client_id"),
                )
            elif "actor_token" in form:
                actor = tokens.verify(
                    form["actor_token"],
                    public_keys=self.keyset.public_keys(),
                    issuer=self.issuer,
                    now=datetime.now(tz=UTC),
                )
                subject = form["subject_token"].removeprefix("user:")
                act = {"sub": actor.subject}
            else:
                token = form.get("subject_token", "")
                self.subject_tokens_seen.append(token)
                if token not in self.service_account_tokens:
                    raise errors.InvalidGrant("service-account token is not valid")
            requested = form.get("scope")
            if requested:
                wanted = requested.split()
                missing = [c for c in wanted if c not in self.granted]
                if missing:
                    raise errors.InvalidScope(f"capability {missing[0]} is not granted")
                scope = wanted
            issued = tokens.issue(
                keyset=self.keyset,
                issuer=self.issuer,
                subject=subject,
                agent=tokens.AgentRef(name=AGENT_NAME, namespace=NAMESPACE, uid="uid-1"),
                audience=form.get("audience") or self.issuer,
                scope=scope,
                lifetime=self.lifetime,
                now=datetime.now(tz=UTC),
                client_id=AGENT_ID,
                cnf_jwk=signed.public_jwk,
                act=act,
                extra_claims=tool_server_claims(form.get("audience") or self.issuer, self.issuer),
            )
        except errors.OAuthError as exc:
            return self._error(exc)
        except signatures.SignatureError as exc:
            return self._error(errors.InvalidRequest(f"request signature: {exc.reason}"))
        return web.json_response(
            {
                "access_token": issued.token,
                "token_type": "N_A",
                "issued_token_type": "urn:ietf:params:oauth:token-type:access_token",
                "expires_in": issued.expires_in,
                "scope": " ".join(scope),
            }
        )

    async def _ask(self, request: web.Request) -> web.Response:
        body = await request.read()
        try:
            self._verify_agent(request, body)
        except (errors.OAuthError, signatures.SignatureError) as exc:
            return self._error(
                exc if isinstance(exc, errors.OAuthError) else errors.InvalidToken(exc.reason)
            )
        payload = await request.json()
        capability = payload.get("action") or (
            "document.read" if "read" in payload.get("question", "") else "payments.authorize"
        )
        allowed = capability in self.granted
        return web.json_response(
            {
                "allowed": allowed,
                "capability": capability,
                "approval_required": not allowed and capability in self.jit_capabilities,
                "confidence": 0.9,
                "reason": "granted" if allowed else "not granted",
                "audit_id": "audit-1",
            }
        )

    async def _file(self, request: web.Request) -> web.Response:
        body = await request.read()
        try:
            self._verify_agent(request, body)
        except errors.OAuthError as exc:
            return self._error(exc)
        payload = await request.json()
        unknown = [c for c in payload["capabilities"] if c not in self.jit_capabilities]
        if unknown:
            return self._error(errors.InvalidScope(f"capability {unknown[0]} cannot be requested"))
        name = f"{AGENT_NAME}-{uuid.uuid4().hex[:6]}"
        self.requests[name] = AccessRequestRecord(
            name=name, capabilities=payload["capabilities"], justification=payload["justification"]
        )
        self.request_filed.set()
        return web.json_response(
            {"name": name, "phase": "Pending", "capabilities": payload["capabilities"]},
            status=201,
        )

    async def _poll(self, request: web.Request) -> web.Response:
        try:
            self._verify_agent(request, b"")
        except errors.OAuthError as exc:
            return self._error(exc)
        record = self.requests.get(request.match_info["name"])
        if record is None:
            return self._error(errors.NotFound("no such access request"))
        wait = float(request.query.get("wait", "0"))
        if wait > 0 and record.phase == "Pending":
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(record.decided.wait(), wait)
        return web.json_response(
            {"name": record.name, "phase": record.phase, "capabilities": record.capabilities}
        )


def wait_for(predicate: Callable[[], bool], *, timeout: float = 10.0) -> None:
    """Poll ``predicate`` until true or fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met before the deadline")
        time.sleep(0.005)


AsyncHandler = Callable[[web.Request], Awaitable[web.StreamResponse]]
