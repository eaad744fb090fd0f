"""Signing outgoing requests: an ``httpx.Auth`` and an aiohttp client middleware.

Each request gets an agent token for the target audience from the :class:`AgentClient` cache
and is signed (RFC 9421, Ed25519) with ``Signature-Key: sig=jwt;jwt="<token>"`` covering
``@method``, ``@authority``, ``@path``, ``signature-key`` and, for a body, ``content-digest``.
The token is never put in an ``Authorization`` header: a bound token only works together with
the signature.

Opt-in just-in-time access (``jit=JustInTime(...)``): when the resource server answers 403
``WWW-Authenticate: Bearer error="insufficient_scope", scope="<capability>"``, the SDK files
an AccessRequest for that capability, waits for the decision, gets a fresh token and retries
the request once.  A denial raises ``AccessRequestDeniedError``; without ``jit`` the 403 is
returned to the caller untouched.
"""

from __future__ import annotations

import re
from collections.abc import AsyncGenerator, Awaitable, Callable, Generator, Sequence
from dataclasses import dataclass
from typing import Any

import httpx

from agentauth.sdk.client import AgentClient

_SIGNATURE_HEADERS = ("signature", "signature-input", "signature-key")
_AUTH_PARAM = re.compile(r'([A-Za-z_][A-Za-z0-9_-]*)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^\s,]+))')


@dataclass(frozen=True, slots=True)
class JustInTime:
    """Opt-in: turn ``insufficient_scope`` refusals into AccessRequests."""

    justification: str
    wait: float = 300.0
    duration: str | None = None


@dataclass(frozen=True, slots=True)
class Challenge:
    """A parsed ``WWW-Authenticate: Bearer ...`` challenge (RFC 6750 section 3)."""

    error: str | None
    scope: tuple[str, ...]
    description: str | None
    resource_metadata: str | None


def parse_bearer_challenge(value: str | None) -> Challenge | None:
    """Parse a Bearer challenge; ``None`` when the header is absent or another scheme."""
    if not value:
        return None
    scheme, _, rest = value.strip().partition(" ")
    if scheme.lower() != "bearer":
        return None
    params: dict[str, str] = {}
    for match in _AUTH_PARAM.finditer(rest):
        raw = match.group(2) if match.group(2) is not None else match.group(3)
        params[match.group(1).lower()] = re.sub(r"\\(.)", r"\1", raw)
    return Challenge(
        error=params.get("error"),
        scope=tuple(params.get("scope", "").split()),
        description=params.get("error_description"),
        resource_metadata=params.get("resource_metadata"),
    )


def missing_capability(status: int, header: str | None) -> str | None:
    if status != 403:
        return None
    challenge = parse_bearer_challenge(header)
    if challenge is None or challenge.error != "insufficient_scope" or not challenge.scope:
        return None
    return challenge.scope[0]


def _apply(request: Any, signed: dict[str, str]) -> None:
    for name in _SIGNATURE_HEADERS:
        if name in request.headers:
            del request.headers[name]
    for name, value in signed.items():
        request.headers[name] = value


def sign_http_request(client: AgentClient, request: Any, token: str) -> None:
    """Sign an ``httpx``/``httpx2`` request in place (its body must already be read)."""
    lines = [
        (k, v) for k, v in request.headers.multi_items() if k.lower() not in _SIGNATURE_HEADERS
    ]
    signed = client.sign(
        method=request.method,
        url=str(request.url),
        headers=lines,
        body=request.content or None,
        token=token,
    )
    _apply(request, signed)


class AgentAuth(httpx.Auth):
    """``httpx`` authentication that signs every request as the agent.

    >>> http = httpx.Client(auth=AgentAuth(client, audience="https://docs.example"))
    """

    requires_request_body = True

    def __init__(
        self,
        client: AgentClient,
        *,
        audience: str,
        scope: Sequence[str] | None = None,
        jit: JustInTime | None = None,
    ) -> None:
        self.client = client
        self.audience = audience
        self.scope = tuple(scope) if scope is not None else None
        self.jit = jit

    def _sign(self, request: httpx.Request, token: str) -> None:
        sign_http_request(self.client, request, token)

    def _scope_with(self, capability: str) -> tuple[str, ...] | None:
        return None if self.scope is None else (*self.scope, capability)

    def sync_auth_flow(
        self, request: httpx.Request
    ) -> Generator[httpx.Request, httpx.Response, None]:
        request.read()
        self._sign(request, self.client.token(audience=self.audience, scope=self.scope))
        response = yield request
        capability = missing_capability(
            response.status_code, response.headers.get("www-authenticate")
        )
        if self.jit is None or capability is None:
            return
        response.read()
        self.client.request_access(
            [capability],
            justification=self.jit.justification,
            duration=self.jit.duration,
            wait=self.jit.wait,
        )
        scope = self._scope_with(capability)
        token = self.client.token(audience=self.audience, scope=scope, force_refresh=True)
        self._sign(request, token)
        yield request

    async def async_auth_flow(
        self, request: httpx.Request
    ) -> AsyncGenerator[httpx.Request, httpx.Response]:
        await request.aread()
        self._sign(request, await self.client.atoken(audience=self.audience, scope=self.scope))
        response = yield request
        capability = missing_capability(
            response.status_code, response.headers.get("www-authenticate")
        )
        if self.jit is None or capability is None:
            return
        await response.aread()
        await self.client.arequest_access(
            [capability],
            justification=self.jit.justification,
            duration=self.jit.duration,
            wait=self.jit.wait,
        )
        token = await self.client.atoken(
            audience=self.audience, scope=self._scope_with(capability), force_refresh=True
        )
        self._sign(request, token)
        yield request


def aiohttp_middleware(
    client: AgentClient,
    *,
    audience: str,
    scope: Sequence[str] | None = None,
    jit: JustInTime | None = None,
) -> Callable[[Any, Callable[[Any], Awaitable[Any]]], Awaitable[Any]]:
    """An aiohttp client middleware (``ClientSession(middlewares=(...,))``) that signs
    requests as the agent.  Bodies must be bytes, str or JSON payloads (not streams)."""
    import aiohttp
    from aiohttp import payload as aiohttp_payload

    async def body_of(request: aiohttp.ClientRequest) -> bytes:
        body = request.body
        if body is None or isinstance(body, bytes | bytearray):
            return bytes(body or b"")
        if isinstance(
            body,
            aiohttp_payload.BytesPayload
            | aiohttp_payload.StringPayload
            | aiohttp_payload.JsonPayload,
        ):
            data = await body.as_bytes()
            return bytes(data)
        if body.size == 0:
            return b""
        raise ValueError(
            f"cannot sign a streaming {type(body).__name__} body; pass bytes, str or json"
        )

    async def sign(request: aiohttp.ClientRequest, token: str) -> None:
        if request.compress:
            raise ValueError("cannot sign a compressed request body")
        lines = [(k, v) for k, v in request.headers.items() if k.lower() not in _SIGNATURE_HEADERS]
        signed = client.sign(
            method=request.method,
            url=str(request.url),
            headers=lines,
            body=await body_of(request) or None,
            token=token,
        )
        _apply(request, signed)

    async def middleware(
        request: aiohttp.ClientRequest,
        handler: Callable[[aiohttp.ClientRequest], Awaitable[aiohttp.ClientResponse]],
    ) -> aiohttp.ClientResponse:
        await sign(request, await client.atoken(audience=audience, scope=scope))
        response = await handler(request)
        capability = missing_capability(response.status, response.headers.get("WWW-Authenticate"))
        if jit is None or capability is None:
            return response
        response.release()
        await client.arequest_access(
            [capability], justification=jit.justification, duration=jit.duration, wait=jit.wait
        )
        new_scope = None if scope is None else (*scope, capability)
        await sign(
            request, await client.atoken(audience=audience, scope=new_scope, force_refresh=True)
        )
        return await handler(request)

    return middleware
