"""``AgentClient``: how agent code gets and uses its identity (sync and async faces).

Guarantees:

- The request-signing key is an Ed25519 key generated in memory per process; it is never
  written anywhere.  Every token request is signed with it (``Signature-Key: sig=hwk``), so
  issued tokens are bound to it (``cnf.jkt``) and useless without it.
- The projected service-account token is re-read from its file on every exchange (the kubelet
  rotates it); it is sent only to the configured token endpoint.
- Tokens are cached per (audience, scope) and refreshed once 80% of their lifetime has passed;
  concurrent callers (threads, or tasks on one event loop) share one in-flight exchange.
- Every failure raises an :mod:`agentauth.sdk.errors` exception carrying the server's RFC
  error code and description.
- Token exchanges and access requests survive a token-service replica going away: a request
  whose connection failed (refused, reset, closed before the answer) or that was answered 502/503/
  504 is re-signed and sent again, at most :data:`RETRY_ATTEMPTS` times in all, after a short
  backoff or the server's ``Retry-After`` (if it is at most :data:`MAX_RETRY_AFTER` seconds). A
  filing carries an ``Idempotency-Key`` (one per logical request, covered by the signature), so
  a retry never files twice; a long-poll answered early (the replica shut down) polls again.

Environment (injected by the agentauth pod webhook; see docs/sdk.md):
``AGENTAUTH_AGENT``, ``AGENTAUTH_NAMESPACE``, ``AGENTAUTH_ISSUER``, ``AGENTAUTH_TOKEN_URL``
(the token service base URL, or its ``/oauth2/token`` endpoint), ``AGENTAUTH_TOKEN_FILE``
(the projected service-account token) and, optionally, ``AGENTAUTH_CA_FILE`` (a PEM bundle
to trust for the token service's TLS, e.g. the dev cluster's CA).
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import ssl
import threading
import time
import urllib.parse
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import httpx
from cryptography.hazmat.primitives.asymmetric import ed25519

from agentauth.domain import assertions, signatures
from agentauth.sdk import errors, keys

TOKEN_EXCHANGE_GRANT = "urn:ietf:params:oauth:grant-type:token-exchange"
JWT_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:jwt"
ACCESS_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:access_token"
REFRESH_AT_FRACTION = 0.8
"""A cached token is refreshed once this fraction of its lifetime has passed."""

RETRY_ATTEMPTS = 3
"""Attempts per call (the first included) when the connection fails or the answer is 502-504."""
RETRY_BACKOFF = (0.1, 0.5)
"""Seconds (jittered) before the second and third attempts when the server gives no Retry-After."""
MAX_RETRY_AFTER = 5.0
"""A longer ``Retry-After`` is not waited for: the error is raised for the caller to decide."""
RETRY_STATUSES = frozenset({502, 503, 504})
IDEMPOTENCY_KEY_HEADER = "Idempotency-Key"

ENV_AGENT = "AGENTAUTH_AGENT"
ENV_NAMESPACE = "AGENTAUTH_NAMESPACE"
ENV_ISSUER = "AGENTAUTH_ISSUER"
ENV_TOKEN_URL = "AGENTAUTH_TOKEN_URL"
ENV_TOKEN_FILE = "AGENTAUTH_TOKEN_FILE"
ENV_CA_FILE = "AGENTAUTH_CA_FILE"


# --------------------------------------------------------------------------- credentials


@dataclass(frozen=True, slots=True)
class SubjectToken:
    """A credential to exchange: the token and its RFC 8693 ``subject_token_type``."""

    token: str
    token_type: str


class SubjectTokenSource(Protocol):
    """Produces a fresh subject token for each exchange (a file read, a cloud call, ...).

    ``key_thumbprint`` is the RFC 7638 thumbprint of the key that signs the exchange request and
    will hold the token; a source binds its credential to it where the credential allows (the
    AWS source signs it into ``GetCallerIdentity``, the GCP source puts it in the ID token's
    audience), so a captured credential is useless to anyone without that key. AWS and GCP
    sources (``agentauth-k8s[aws]``, ``agentauth-k8s[gcp]``) implement this protocol.
    """

    def __call__(self, key_thumbprint: str) -> SubjectToken: ...


@dataclass(frozen=True, slots=True)
class ServiceAccountTokenFile:
    """The kubelet-projected service-account token, re-read on every call.

    The kubelet chooses its claims, so it cannot name the signing key: it is bound to its pod
    (uid), its service account (uid) and our issuer as audience instead.
    """

    path: Path

    def __call__(self, key_thumbprint: str = "") -> SubjectToken:
        try:
            token = self.path.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise errors.ConfigurationError(
                f"cannot read service-account token {self.path}: {exc.strerror}"
            ) from None
        if not token:
            raise errors.ConfigurationError(f"service-account token file {self.path} is empty")
        return SubjectToken(token=token, token_type=JWT_TOKEN_TYPE)


@dataclass(frozen=True, slots=True)
class _RegisteredKey:
    private_key: ed25519.Ed25519PrivateKey
    kid: str
    agent_id: str


# --------------------------------------------------------------------------- results


@dataclass(frozen=True, slots=True)
class AgentToken:
    """An agent token from the cache or a fresh exchange."""

    access_token: str
    token_type: str
    scope: tuple[str, ...]
    issued_at: float
    expires_at: float
    audience: str | None

    @property
    def refresh_at(self) -> float:
        return self.issued_at + REFRESH_AT_FRACTION * (self.expires_at - self.issued_at)


@dataclass(frozen=True, slots=True)
class AskAnswer:
    """The token service's answer to ``ask``/``is_allowed`` (``POST /v1/ask``)."""

    allowed: bool
    capability: str | None
    approval_required: bool
    confidence: float
    reason: str
    audit_id: str | None
    raw: Mapping[str, Any] = field(repr=False)


@dataclass(frozen=True, slots=True)
class AccessRequestState:
    """A just-in-time ``AccessRequest`` as the token service reports it."""

    name: str
    phase: str
    capabilities: tuple[str, ...]
    granted_until: str | None
    raw: Mapping[str, Any] = field(repr=False)

    @property
    def approved(self) -> bool:
        return self.phase == "Approved"


# --------------------------------------------------------------------------- HTTP plumbing


@dataclass(frozen=True, slots=True)
class _Call:
    method: str
    url: str
    headers: dict[str, str]
    body: bytes
    timeout: float | None = None


def _form(fields: Mapping[str, str | None]) -> bytes:
    return urllib.parse.urlencode({k: v for k, v in fields.items() if v is not None}).encode()


def _decode_json(response: httpx.Response) -> Any:
    try:
        return response.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None


def _check(response: httpx.Response) -> dict[str, Any]:
    body = _decode_json(response)
    if response.status_code >= 400:
        raise errors.from_response(
            status=response.status_code,
            body=body if isinstance(body, dict) else None,
            headers={k.lower(): v for k, v in response.headers.items()},
        )
    if not isinstance(body, dict):
        raise errors.TransportError(
            "transport_error",
            f"{response.request.method} {response.request.url.path} answered "
            f"{response.status_code} without a JSON object",
            status=response.status_code,
        )
    return body


def _mapping(value: object) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _scope_key(scope: Sequence[str] | str | None) -> tuple[str, ...]:
    if scope is None:
        return ()
    items = scope.split() if isinstance(scope, str) else list(scope)
    return tuple(sorted(set(items)))


def _base_urls(token_url: str) -> tuple[str, str]:
    """(service base URL, token endpoint) from either form of ``AGENTAUTH_TOKEN_URL``."""
    url = token_url.rstrip("/")
    if url.endswith("/oauth2/token"):
        return url[: -len("/oauth2/token")], url
    return url, url + "/oauth2/token"


def _retriable_failure(error: BaseException | None) -> bool:
    """A failure after which the request certainly or harmlessly did not complete: the
    connection was refused, reset or closed before an answer (a replica going away). Timeouts
    are not retried: the caller's timeout is the caller's budget."""
    return isinstance(
        error, httpx.ConnectError | httpx.RemoteProtocolError | httpx.ReadError | httpx.WriteError
    )


def _retry_delay(response: httpx.Response, attempt: int) -> float | None:
    """Seconds to wait before trying ``response``'s request again; None: do not."""
    if attempt >= RETRY_ATTEMPTS or response.status_code not in RETRY_STATUSES:
        return None
    backoff = RETRY_BACKOFF[min(attempt, len(RETRY_BACKOFF)) - 1] * random.uniform(0.5, 1.0)  # noqa: S311
    header = response.headers.get("retry-after")
    if header is None:
        return backoff
    try:
        retry_after = float(header)
    except ValueError:
        return backoff
    if not 0 <= retry_after <= MAX_RETRY_AFTER:
        return None
    return max(retry_after, backoff)


def _sf_string(value: str) -> str:
    """``value`` as an RFC 9651 Structured Field string."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


# --------------------------------------------------------------------------- the client


class AgentClient:
    """An agent's identity: agent tokens, the Ask API, JIT access requests, delegation.

    Sync methods (``token``, ``ask``, ...) and their async twins (``atoken``, ``aask``, ...)
    share one token cache.  Use :meth:`from_environment` inside a pod, or
    :meth:`from_private_key` for an agent with a registered key.
    """

    def __init__(
        self,
        *,
        issuer: str,
        token_url: str,
        subject_token_source: SubjectTokenSource | None = None,
        registered_key: tuple[ed25519.Ed25519PrivateKey, str, str] | None = None,
        ca_file: str | None = None,
        timeout: float = 10.0,
        clock: Callable[[], float] = time.time,
        transport: httpx.BaseTransport | None = None,
        async_transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        """``registered_key`` is ``(private_key, kid, agent_id)``; exactly one of it and
        ``subject_token_source`` must be given.  ``transport``/``async_transport`` are for
        custom httpx transports (proxies, tests)."""
        if (subject_token_source is None) == (registered_key is None):
            raise errors.ConfigurationError(
                "give exactly one of subject_token_source and registered_key"
            )
        self.issuer = issuer.rstrip("/")
        self.base_url, self.token_endpoint = _base_urls(token_url)
        self._subject = subject_token_source
        self._registered = _RegisteredKey(*registered_key) if registered_key else None
        self._signing_key = ed25519.Ed25519PrivateKey.generate()
        self.public_jwk = signatures.public_jwk(self._signing_key)
        self.jkt = signatures.jwk_thumbprint(self.public_jwk)
        self._clock = clock
        self._timeout = timeout
        self._verify: ssl.SSLContext | bool = (
            ssl.create_default_context(cafile=ca_file) if ca_file else True
        )
        self._transport = transport
        self._async_transport = async_transport
        self._http: httpx.Client | None = None
        self._async_http: httpx.AsyncClient | None = None
        self._async_loop: asyncio.AbstractEventLoop | None = None
        self._cache: dict[tuple[str | None, tuple[str, ...]], AgentToken] = {}
        self._cache_lock = threading.Lock()
        self._key_locks: dict[tuple[str | None, tuple[str, ...]], threading.Lock] = {}
        self._inflight: dict[tuple[int, str | None, tuple[str, ...]], asyncio.Task[AgentToken]] = {}
        self.exchanges = 0
        """How many token exchanges this client performed (observability, tests)."""

    # ------------------------------------------------------------------ constructors

    @classmethod
    def from_environment(
        cls, environ: Mapping[str, str] | None = None, **kwargs: Any
    ) -> AgentClient:
        """Configure from the variables the agentauth pod webhook injects."""
        env = os.environ if environ is None else environ
        missing = [
            name for name in (ENV_ISSUER, ENV_TOKEN_URL, ENV_TOKEN_FILE) if not env.get(name)
        ]
        if missing:
            raise errors.ConfigurationError(
                f"missing environment variable(s) {', '.join(missing)}; is the pod labelled "
                "agentauth.dev/agent=<agent>?"
            )
        client = cls(
            issuer=env[ENV_ISSUER],
            token_url=env[ENV_TOKEN_URL],
            subject_token_source=ServiceAccountTokenFile(Path(env[ENV_TOKEN_FILE])),
            ca_file=env.get(ENV_CA_FILE) or None,
            **kwargs,
        )
        client.agent_name = env.get(ENV_AGENT)
        client.namespace = env.get(ENV_NAMESPACE)
        return client

    @classmethod
    def from_private_key(
        cls,
        *,
        agent_id: str,
        issuer: str,
        token_url: str,
        private_key: ed25519.Ed25519PrivateKey | None = None,
        private_key_file: Path | str | None = None,
        kid: str | None = None,
        **kwargs: Any,
    ) -> AgentClient:
        """An agent with a registered Ed25519 key (``spec.publicKeys``), running anywhere.

        ``agent_id`` is ``aauth:<name>.<namespace>@<trust-domain>``; ``kid`` defaults to the
        key's RFC 7638 thumbprint (what ``kubectl agentauth keys generate`` registers).
        """
        if (private_key is None) == (private_key_file is None):
            raise errors.ConfigurationError("give exactly one of private_key and private_key_file")
        key = private_key if private_key is not None else keys.load_private_key(private_key_file)  # type: ignore[arg-type]
        key_id = kid or signatures.jwk_thumbprint(signatures.public_jwk(key))
        return cls(
            issuer=issuer, token_url=token_url, registered_key=(key, key_id, agent_id), **kwargs
        )

    agent_name: str | None = None
    namespace: str | None = None

    # ------------------------------------------------------------------ lifecycle

    def close(self) -> None:
        if self._http is not None:
            self._http.close()
            self._http = None

    async def aclose(self) -> None:
        self.close()
        if self._async_http is not None:
            await self._async_http.aclose()
            self._async_http = None

    def __enter__(self) -> AgentClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    async def __aenter__(self) -> AgentClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def _sync_http(self) -> httpx.Client:
        if self._http is None:
            self._http = httpx.Client(
                verify=self._verify, timeout=self._timeout, transport=self._transport
            )
        return self._http

    def _aio_http(self) -> httpx.AsyncClient:
        loop = asyncio.get_running_loop()
        if self._async_http is None or self._async_loop is not loop:
            # A connection pool belongs to one event loop; a new loop gets a new pool.
            self._async_http = httpx.AsyncClient(
                verify=self._verify, timeout=self._timeout, transport=self._async_transport
            )
            self._async_loop = loop
        return self._async_http

    def _send(self, call: _Call) -> httpx.Response:
        try:
            return self._sync_http().request(
                call.method,
                call.url,
                headers=call.headers,
                content=call.body,
                timeout=call.timeout if call.timeout is not None else self._timeout,
            )
        except httpx.HTTPError as exc:
            raise errors.TransportError("transport_error", f"{call.url}: {exc}") from exc

    async def _asend(self, call: _Call) -> httpx.Response:
        try:
            return await self._aio_http().request(
                call.method,
                call.url,
                headers=call.headers,
                content=call.body,
                timeout=call.timeout if call.timeout is not None else self._timeout,
            )
        except httpx.HTTPError as exc:
            raise errors.TransportError("transport_error", f"{call.url}: {exc}") from exc

    def _send_retrying(self, build: Callable[[], _Call]) -> httpx.Response:
        """``_send(build())``, built (so signed) anew and sent again after a failure worth
        retrying (see the module guarantees)."""
        for attempt in range(1, RETRY_ATTEMPTS + 1):
            try:
                response = self._send(build())
            except errors.TransportError as exc:
                if attempt == RETRY_ATTEMPTS or not _retriable_failure(exc.__cause__):
                    raise
                time.sleep(RETRY_BACKOFF[attempt - 1] * random.uniform(0.5, 1.0))  # noqa: S311
                continue
            delay = _retry_delay(response, attempt)
            if delay is None:
                return response
            response.close()
            time.sleep(delay)  # backoff before a retry, not synchronisation
        raise AssertionError("unreachable")  # pragma: no cover - the loop returns or raises

    async def _asend_retrying(self, build: Callable[[], Any]) -> httpx.Response:
        """Async twin of :meth:`_send_retrying`; ``build`` returns an awaitable ``_Call``."""
        for attempt in range(1, RETRY_ATTEMPTS + 1):
            try:
                response = await self._asend(await build())
            except errors.TransportError as exc:
                if attempt == RETRY_ATTEMPTS or not _retriable_failure(exc.__cause__):
                    raise
                await asyncio.sleep(RETRY_BACKOFF[attempt - 1] * random.uniform(0.5, 1.0))  # noqa: S311
                continue
            delay = _retry_delay(response, attempt)
            if delay is None:
                return response
            await response.aclose()
            await asyncio.sleep(delay)
        raise AssertionError("unreachable")  # pragma: no cover - the loop returns or raises

    # ------------------------------------------------------------------ signing

    def sign(
        self,
        *,
        method: str,
        url: str,
        headers: signatures.HeaderInput,
        body: bytes | None,
        token: str | None,
        components: Sequence[str] | None = None,
    ) -> dict[str, str]:
        """Headers that sign a request with this process's key (``sig=jwt`` with ``token``,
        else ``sig=hwk``).  Used by :class:`agentauth.sdk.AgentAuth` and the middleware."""
        signature_key = (
            signatures.signature_key_jwt(token)
            if token is not None
            else signatures.signature_key_hwk(self._signing_key)
        )
        return signatures.sign_request(
            method=method,
            url=url,
            headers=headers,
            body=body,
            private_key=self._signing_key,
            key_id=self.jkt,
            signature_key_header=signature_key,
            # Wall-clock time: the verifier checks it; ``clock`` only drives cache decisions.
            created=int(time.time()),
            components=components,
        )

    def _signed_call(
        self,
        method: str,
        url: str,
        *,
        body: bytes,
        content_type: str | None,
        token: str | None,
        timeout: float | None = None,
        covered: Mapping[str, str] | None = None,
    ) -> _Call:
        headers = {"Accept": "application/json"}
        if content_type is not None:
            headers["Content-Type"] = content_type
        components: tuple[str, ...] | None = None
        if token is not None:
            # Bearer for the token service's own APIs, and covered by the signature.
            headers["Authorization"] = f"Bearer {token}"
            components = (*signatures.BASE_COMPONENTS, "authorization")
        if covered:
            # More headers the signature covers (an Idempotency-Key, say).
            headers.update(covered)
            components = (
                *(components or signatures.BASE_COMPONENTS),
                *(k.lower() for k in covered),
            )
        headers.update(
            self.sign(
                method=method,
                url=url,
                headers=headers,
                body=body or None,
                token=token,
                components=components,
            )
        )
        return _Call(method=method, url=url, headers=headers, body=body, timeout=timeout)

    # ------------------------------------------------------------------ token exchange

    def _exchange_call(
        self, audience: str | None, scope: tuple[str, ...], extra: Mapping[str, str] | None
    ) -> _Call:
        fields: dict[str, str | None]
        scope_text = " ".join(scope) or None
        if self._registered is not None:
            assertion = assertions.create_client_assertion(
                private_key=self._registered.private_key,
                kid=self._registered.kid,
                agent_id=self._registered.agent_id,
                token_endpoint=self.token_endpoint,
                now=time.time(),
                # bound to this process's request-signing key, which signs the request below
                cnf_jkt=self.jkt,
            )
            fields = {
                "grant_type": "client_credentials",
                "client_id": self._registered.agent_id,
                "client_assertion_type": assertions.CLIENT_ASSERTION_TYPE,
                "client_assertion": assertion,
                "scope": scope_text,
                "audience": audience,
            }
        elif self._subject is not None:
            subject = self._subject(self.jkt)
            fields = {
                "grant_type": TOKEN_EXCHANGE_GRANT,
                "subject_token": subject.token,
                "subject_token_type": subject.token_type,
                "requested_token_type": ACCESS_TOKEN_TYPE,
                "scope": scope_text,
                "audience": audience,
            }
        else:  # pragma: no cover - the constructor requires one of the two
            raise errors.ConfigurationError("no credential configured")
        if extra:
            fields.update(extra)
        return self._signed_call(
            "POST",
            self.token_endpoint,
            body=_form(fields),
            content_type="application/x-www-form-urlencoded",
            token=None,
        )

    def _parse_token(
        self, response: httpx.Response, audience: str | None, started: float
    ) -> AgentToken:
        body = _check(response)
        access_token = body.get("access_token")
        expires_in = body.get("expires_in")
        if not isinstance(access_token, str) or not isinstance(expires_in, int | float):
            raise errors.TransportError(
                "transport_error", "token response lacks access_token or expires_in"
            )
        scope = body.get("scope", "")
        return AgentToken(
            access_token=access_token,
            token_type=str(body.get("token_type", "Bearer")),
            scope=tuple(str(scope).split()),
            issued_at=started,
            expires_at=started + float(expires_in),
            audience=audience,
        )

    def _cached(self, key: tuple[str | None, tuple[str, ...]]) -> AgentToken | None:
        with self._cache_lock:
            entry = self._cache.get(key)
        if entry is not None and self._clock() < entry.refresh_at:
            return entry
        return None

    def _store(self, key: tuple[str | None, tuple[str, ...]], token: AgentToken) -> None:
        with self._cache_lock:
            self._cache[key] = token
            self.exchanges += 1

    def invalidate(self, *, audience: str | None = None, all_audiences: bool = False) -> None:
        """Forget cached tokens (for ``audience``, or all), e.g. after an approval."""
        with self._cache_lock:
            for key in list(self._cache):
                if all_audiences or key[0] == audience:
                    del self._cache[key]

    def token_info(
        self,
        *,
        audience: str | None = None,
        scope: Sequence[str] | str | None = None,
        force_refresh: bool = False,
    ) -> AgentToken:
        """Like :meth:`token`, returning the token with its lifetime and granted scope."""
        key = (audience, _scope_key(scope))
        if not force_refresh and (entry := self._cached(key)) is not None:
            return entry
        with self._cache_lock:
            lock = self._key_locks.setdefault(key, threading.Lock())
        with lock:
            # Whoever held the lock before us may have refreshed it already.
            if not force_refresh and (entry := self._cached(key)) is not None:
                return entry
            started = self._clock()
            response = self._send_retrying(lambda: self._exchange_call(audience, key[1], None))
            fresh = self._parse_token(response, audience, started)
            self._store(key, fresh)
            return fresh

    def token(
        self,
        *,
        audience: str | None = None,
        scope: Sequence[str] | str | None = None,
        force_refresh: bool = False,
    ) -> str:
        """An agent token for ``audience`` (a ToolServer ``resourceURI``, or ``None`` for
        the token service's default) with ``scope`` (capabilities; ``None`` = all automatic
        ones), from the cache when still fresh."""
        return self.token_info(
            audience=audience, scope=scope, force_refresh=force_refresh
        ).access_token

    async def atoken_info(
        self,
        *,
        audience: str | None = None,
        scope: Sequence[str] | str | None = None,
        force_refresh: bool = False,
    ) -> AgentToken:
        """Async twin of :meth:`token_info`; concurrent tasks share one exchange."""
        key = (audience, _scope_key(scope))
        if not force_refresh and (entry := self._cached(key)) is not None:
            return entry
        loop = asyncio.get_running_loop()
        flight_key = (id(loop), *key)
        pending = None if force_refresh else self._inflight.get(flight_key)
        if pending is None:
            # The exchange runs as its own task: a caller that is cancelled does not cancel
            # the exchange the other callers are waiting for.
            pending = loop.create_task(self._exchange_async(key))
            self._inflight[flight_key] = pending
            pending.add_done_callback(
                lambda done: (
                    self._inflight.pop(flight_key, None)
                    if self._inflight.get(flight_key) is done
                    else None
                )
            )
        return await asyncio.shield(pending)

    async def _exchange_async(self, key: tuple[str | None, tuple[str, ...]]) -> AgentToken:
        started = self._clock()

        async def build() -> _Call:
            return self._exchange_call(key[0], key[1], None)

        response = await self._asend_retrying(build)
        fresh = self._parse_token(response, key[0], started)
        self._store(key, fresh)
        return fresh

    async def atoken(
        self,
        *,
        audience: str | None = None,
        scope: Sequence[str] | str | None = None,
        force_refresh: bool = False,
    ) -> str:
        """Async twin of :meth:`token`."""
        info = await self.atoken_info(audience=audience, scope=scope, force_refresh=force_refresh)
        return info.access_token

    # ------------------------------------------------------------------ delegation

    def _delegate_call(
        self,
        user_token: str,
        actor_token: str,
        scope: Sequence[str] | None,
        audience: str | None,
        subject_token_type: str,
        may_act: str | None = None,
    ) -> _Call:
        fields = {
            "grant_type": TOKEN_EXCHANGE_GRANT,
            "subject_token": user_token,
            "subject_token_type": subject_token_type,
            "actor_token": actor_token,
            "actor_token_type": ACCESS_TOKEN_TYPE,
            "requested_token_type": ACCESS_TOKEN_TYPE,
            "scope": " ".join(_scope_key(scope)) or None,
            "audience": audience,
            "may_act": may_act,
        }
        return self._signed_call(
            "POST",
            self.token_endpoint,
            body=_form(fields),
            content_type="application/x-www-form-urlencoded",
            token=None,
        )

    def delegate(
        self,
        user_token: str,
        *,
        scope: Sequence[str] | None = None,
        audience: str | None = None,
        subject_token_type: str = ACCESS_TOKEN_TYPE,
        may_act: str | None = None,
    ) -> AgentToken:
        """Chain of agency (RFC 8693): a token whose ``sub`` is the user and whose ``act``
        names this agent, with scope = user's ∩ agent's ∩ ``scope``.  Not cached.

        ``user_token`` may also be a token another agent handed over (tool -> agent -> user).
        Tokens are bound to their agent's key, so that agent must have named this one with
        ``may_act`` (the agent identifier ``aauth:<name>.<namespace>@<trust-domain>``) when it
        delegated: pass ``may_act`` here to hand the result to the next agent in the chain.
        """
        actor = self.token()
        started = self._clock()
        response = self._send(
            self._delegate_call(user_token, actor, scope, audience, subject_token_type, may_act)
        )
        return self._parse_token(response, audience, started)

    async def adelegate(
        self,
        user_token: str,
        *,
        scope: Sequence[str] | None = None,
        audience: str | None = None,
        subject_token_type: str = ACCESS_TOKEN_TYPE,
        may_act: str | None = None,
    ) -> AgentToken:
        """Async twin of :meth:`delegate`."""
        actor = await self.atoken()
        started = self._clock()
        response = await self._asend(
            self._delegate_call(user_token, actor, scope, audience, subject_token_type, may_act)
        )
        return self._parse_token(response, audience, started)

    # ------------------------------------------------------------------ Ask API

    def _ask_call(self, payload: Mapping[str, Any], token: str) -> _Call:
        return self._signed_call(
            "POST",
            f"{self.base_url}/v1/ask",
            body=json.dumps(payload).encode(),
            content_type="application/json",
            token=token,
        )

    @staticmethod
    def _answer(response: httpx.Response) -> AskAnswer:
        body = _check(response)
        capability = body.get("capability")
        return AskAnswer(
            allowed=body.get("allowed") is True,
            capability=capability if isinstance(capability, str) else None,
            approval_required=body.get("approval_required") is True,
            confidence=float(body.get("confidence") or 0.0),
            reason=str(body.get("reason", "")),
            audit_id=str(body["audit_id"]) if body.get("audit_id") else None,
            raw=body,
        )

    def ask(self, question: str, *, context: Mapping[str, Any] | None = None) -> AskAnswer:
        """Ask in plain language whether this agent may do something."""
        payload: dict[str, Any] = {"question": question}
        if context:
            payload["context"] = dict(context)
        return self._answer(self._send(self._ask_call(payload, self.token())))

    async def aask(self, question: str, *, context: Mapping[str, Any] | None = None) -> AskAnswer:
        payload: dict[str, Any] = {"question": question}
        if context:
            payload["context"] = dict(context)
        return self._answer(await self._asend(self._ask_call(payload, await self.atoken())))

    def check(self, capability: str, *, context: Mapping[str, Any] | None = None) -> AskAnswer:
        """The full answer for an exact capability name (``{"action": ...}``)."""
        payload: dict[str, Any] = {"action": capability}
        if context:
            payload["context"] = dict(context)
        return self._answer(self._send(self._ask_call(payload, self.token())))

    async def acheck(
        self, capability: str, *, context: Mapping[str, Any] | None = None
    ) -> AskAnswer:
        payload: dict[str, Any] = {"action": capability}
        if context:
            payload["context"] = dict(context)
        return self._answer(await self._asend(self._ask_call(payload, await self.atoken())))

    def is_allowed(self, capability: str) -> bool:
        """True when the agent holds ``capability`` without needing approval now."""
        return self.check(capability).allowed

    async def ais_allowed(self, capability: str) -> bool:
        return (await self.acheck(capability)).allowed

    # ------------------------------------------------------------------ JIT access requests

    @staticmethod
    def _access_state(body: Mapping[str, Any]) -> AccessRequestState:
        status, spec, metadata = (_mapping(body.get(k)) for k in ("status", "spec", "metadata"))
        name = body.get("name") or metadata.get("name")
        phase = body.get("phase") or status.get("phase") or "Pending"
        capabilities = body.get("capabilities") or spec.get("capabilities") or []
        granted = body.get("grantedUntil") or status.get("grantedUntil")
        if not isinstance(name, str):
            raise errors.TransportError("transport_error", "access request answer has no name")
        return AccessRequestState(
            name=name,
            phase=str(phase),
            capabilities=tuple(str(c) for c in capabilities),
            granted_until=str(granted) if granted else None,
            raw=body,
        )

    def _file_call(
        self,
        capabilities: Sequence[str],
        justification: str,
        duration: str | None,
        context: Mapping[str, Any] | None,
        token: str,
        idempotency_key: str,
    ) -> _Call:
        payload: dict[str, Any] = {
            "capabilities": list(capabilities),
            "justification": justification,
        }
        if duration is not None:
            payload["duration"] = duration
        if context:
            payload["context"] = dict(context)
        return self._signed_call(
            "POST",
            f"{self.base_url}/v1/access-requests",
            body=json.dumps(payload).encode(),
            content_type="application/json",
            token=token,
            covered={IDEMPOTENCY_KEY_HEADER: _sf_string(idempotency_key)},
        )

    def _poll_call(self, name: str, wait: float, token: str) -> _Call:
        # Fractions kept: flooring the last second of a wait to 0 would poll in a tight loop.
        seconds = round(max(0.0, wait), 3)
        url = f"{self.base_url}/v1/access-requests/{urllib.parse.quote(name)}?wait={seconds:g}"
        return self._signed_call(
            "GET", url, body=b"", content_type=None, token=token, timeout=seconds + self._timeout
        )

    def _poller(self, name: str, wait: float) -> Callable[[], _Call]:
        return lambda: self._poll_call(name, wait, self.token())

    def _apoller(self, name: str, wait: float) -> Callable[[], Any]:
        async def build() -> _Call:
            return self._poll_call(name, wait, await self.atoken())

        return build

    def _finish(self, state: AccessRequestState) -> AccessRequestState:
        if state.phase in ("Denied", "Expired"):
            raise errors.AccessRequestDeniedError(
                f"access request {state.name} ended {state.phase}",
                name=state.name,
                phase=state.phase,
            )
        if state.approved:
            # New capabilities: tokens minted before the approval do not carry them.
            self.invalidate(all_audiences=True)
        return state

    def request_access(
        self,
        capabilities: Sequence[str],
        *,
        justification: str,
        duration: str | None = None,
        context: Mapping[str, Any] | None = None,
        wait: float | None = None,
        idempotency_key: str | None = None,
    ) -> AccessRequestState:
        """File a just-in-time ``AccessRequest``; with ``wait`` (seconds), long-poll until it
        is decided.  Raises :class:`~agentauth.sdk.errors.AccessRequestDeniedError` when it
        ends Denied/Expired while waiting; returns the (maybe still Pending) state otherwise.

        ``idempotency_key`` names this logical request (default: a new random one): filing
        again with the same key, from any process, returns the same request instead of filing
        another, so a caller that lost the answer (a crash, a timeout) can safely call again.
        """
        key = idempotency_key or str(uuid.uuid4())
        response = self._send_retrying(
            lambda: self._file_call(
                capabilities, justification, duration, context, self.token(), key
            )
        )
        state = self._access_state(_check(response))
        if wait is None:
            return state
        deadline = time.monotonic() + wait
        while state.phase == "Pending" and (remaining := deadline - time.monotonic()) > 0:
            response = self._send_retrying(self._poller(state.name, min(remaining, 30.0)))
            state = self._access_state(_check(response))
        return self._finish(state)

    async def arequest_access(
        self,
        capabilities: Sequence[str],
        *,
        justification: str,
        duration: str | None = None,
        context: Mapping[str, Any] | None = None,
        wait: float | None = None,
        idempotency_key: str | None = None,
    ) -> AccessRequestState:
        """Async twin of :meth:`request_access`."""
        key = idempotency_key or str(uuid.uuid4())

        async def file() -> _Call:
            token = await self.atoken()
            return self._file_call(capabilities, justification, duration, context, token, key)

        state = self._access_state(_check(await self._asend_retrying(file)))
        if wait is None:
            return state
        deadline = time.monotonic() + wait
        while state.phase == "Pending" and (remaining := deadline - time.monotonic()) > 0:
            poll = self._apoller(state.name, min(remaining, 30.0))
            state = self._access_state(_check(await self._asend_retrying(poll)))
        return self._finish(state)

    def access_request(self, name: str) -> AccessRequestState:
        """The current state of a filed request (no waiting)."""
        response = self._send_retrying(lambda: self._poll_call(name, 0, self.token()))
        return self._access_state(_check(response))
