"""aiohttp server middleware: verify agent tokens and request signatures per request.

Guarantees: a request reaches the handler only after
:meth:`~agentauth.verify.verifier.ResourceVerifier.verify` succeeded; the principal is in
``request[REQUEST_KEY]`` (read it with :func:`principal_of`).  ``OAuthError``s raised by
the verifier or by a handler (e.g. ``principal.require("document.write")``) become RFC 6749
JSON responses with the RFC 6750 ``WWW-Authenticate`` challenge, so a missing capability is
a 403 ``insufficient_scope`` naming it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from aiohttp import typedefs, web

from agentauth.domain import errors
from agentauth.verify.verifier import Principal, ResourceVerifier, request_url, www_authenticate

REQUEST_KEY = web.RequestKey("agentauth", Principal)
Handler = typedefs.Handler
# aiohttp's own middleware protocol (its parameters are named ``request`` and ``handler``), so
# ``web.Application(middlewares=[middleware(verifier)])`` type-checks under ``mypy --strict``.
Middleware = typedefs.Middleware


def error_response(exc: errors.OAuthError, *, resource_metadata: str | None = None) -> web.Response:
    headers = {"Cache-Control": "no-store", **exc.headers}
    if exc.status in (401, 403):
        headers["WWW-Authenticate"] = www_authenticate(exc, resource_metadata=resource_metadata)
    return web.json_response(exc.to_json(), status=exc.status, headers=headers)


def middleware(
    verifier: ResourceVerifier,
    *,
    requirements: Callable[[web.Request], Sequence[str]] | None = None,
    public_origin: str | None = None,
    exempt_paths: Sequence[str] = (),
    resource_metadata: str | None = None,
) -> Middleware:
    """``web.Application(middlewares=[verify.aiohttp.middleware(verifier)])``."""
    exempt = frozenset(exempt_paths)

    @web.middleware
    async def agentauth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path in exempt:
            return await handler(request)
        try:
            body = await request.read()
            principal = await verifier.verify(
                method=request.method,
                url=request_url(
                    scheme=request.scheme,
                    host=request.headers.get("Host"),
                    raw_path=request.raw_path,
                    public_origin=public_origin,
                ),
                headers=list(request.raw_headers),
                body=body,
                required=requirements(request) if requirements else (),
            )
            request[REQUEST_KEY] = principal
            return await handler(request)
        except errors.OAuthError as exc:
            return error_response(exc, resource_metadata=resource_metadata)

    return agentauth_middleware


def principal_of(request: web.Request) -> Principal:
    principal = request.get(REQUEST_KEY)
    if not isinstance(principal, Principal):
        raise errors.InvalidToken("request was not verified by the agentauth middleware")
    return principal
