"""ASGI middleware that admits only requests signed by an agent holding the right capability.

Guarantees: every HTTP request outside ``exempt_paths`` is verified by a
:class:`~agentauth.verify.verifier.ResourceVerifier` before the wrapped app sees it; refusals
are answered here (JSON body, RFC 6750 ``WWW-Authenticate``) and never reach the app.  The
verified :class:`Principal` is put in ``scope["agentauth.principal"]`` (and
``scope["state"]["agentauth"]`` for Starlette).  Credentials are removed from the headers the
app sees (``Authorization``, ``Signature-Key``, ``Signature``, ``Signature-Input``), so an app
cannot pass the caller's token through to another service.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, MutableMapping, Sequence
from typing import Any

from agentauth.domain import errors
from agentauth.verify.verifier import Principal, ResourceVerifier, request_url, www_authenticate

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]
Requirements = Callable[[str, str, bytes], Sequence[str]]
"""``(method, path, body) -> capabilities`` the request needs (may raise ``OAuthError``)."""

PRINCIPAL_KEY = "agentauth.principal"
CREDENTIAL_HEADERS = frozenset(
    {b"authorization", b"signature-key", b"signature", b"signature-input"}
)
MAX_BODY = 1024 * 1024


async def send_error(
    send: Send, exc: errors.OAuthError, *, resource_metadata: str | None = None
) -> None:
    """Answer an ``OAuthError`` as RFC 6749 JSON with the RFC 6750 challenge on 401/403."""
    body = json.dumps(exc.to_json()).encode()
    headers = [(b"content-type", b"application/json"), (b"cache-control", b"no-store")]
    if exc.status in (401, 403):
        value = www_authenticate(exc, resource_metadata=resource_metadata)
        headers.append((b"www-authenticate", value.encode("latin-1")))
    headers.extend((k.lower().encode(), v.encode("latin-1")) for k, v in exc.headers.items())
    await send({"type": "http.response.start", "status": exc.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def read_body(receive: Receive, *, limit: int = MAX_BODY) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise errors.InvalidRequest("client disconnected")
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise errors.OAuthError("invalid_request", "request body too large", 413)
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


def replay_receive(body: bytes, receive: Receive) -> Receive:
    sent = False

    async def wrapped() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return wrapped


class AgentAuthMiddleware:
    """Wrap an ASGI app: ``AgentAuthMiddleware(app, verifier=..., requirements=...)``."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        verifier: ResourceVerifier,
        requirements: Requirements | None = None,
        public_origin: str | None = None,
        exempt_paths: Sequence[str] = (),
        resource_metadata: str | None = None,
    ) -> None:
        self.app = app
        self.verifier = verifier
        self.requirements = requirements
        self.public_origin = public_origin
        self.exempt_paths = frozenset(exempt_paths)
        self.resource_metadata = resource_metadata

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in self.exempt_paths:
            await self.app(scope, receive, send)
            return
        try:
            body = await read_body(receive)
            principal = await self.authenticate(scope, body)
        except errors.OAuthError as exc:
            await send_error(send, exc, resource_metadata=self.resource_metadata)
            return
        inner = dict(scope)
        inner["headers"] = [
            (k, v) for k, v in scope["headers"] if k.lower() not in CREDENTIAL_HEADERS
        ]
        inner[PRINCIPAL_KEY] = principal
        state = dict(scope.get("state") or {})
        state["agentauth"] = principal
        inner["state"] = state
        await self.app(inner, replay_receive(body, receive), send)

    async def authenticate(self, scope: Scope, body: bytes) -> Principal:
        headers: list[tuple[bytes, bytes]] = list(scope["headers"])
        host = next((v.decode("latin-1") for k, v in headers if k.lower() == b"host"), None)
        raw_path = (scope.get("raw_path") or scope["path"].encode()).decode("latin-1")
        query = scope.get("query_string", b"").decode("latin-1")
        url = request_url(
            scheme=scope.get("scheme", "http"),
            host=host,
            raw_path=raw_path + (f"?{query}" if query else ""),
            public_origin=self.public_origin,
        )
        required = (
            self.requirements(scope["method"], scope["path"], body) if self.requirements else ()
        )
        return await self.verifier.verify(
            method=scope["method"], url=url, headers=headers, body=body, required=required
        )


def principal_of(scope: Scope) -> Principal:
    """The verified caller of a request that passed :class:`AgentAuthMiddleware`."""
    principal = scope.get(PRINCIPAL_KEY)
    if not isinstance(principal, Principal):
        raise errors.InvalidToken("request was not verified by AgentAuthMiddleware")
    return principal
