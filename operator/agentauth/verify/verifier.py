"""Resource-server verification of agent tokens and AAuth request signatures.

Guarantees of :meth:`ResourceVerifier.verify` (every refusal raises an ``OAuthError``):

- The agent token is verified against the issuer's JWKS (fetched once, cached; an unknown
  ``kid`` triggers one refetch, at most every ``min_refetch_interval`` seconds, so key rotation
  works and a flood of bogus ``kid``s cannot hammer the issuer): ``EdDSA`` only, ``typ``
  ``at+jwt``, ``iss``, ``exp``/``nbf``/``iat`` (with ``leeway``) and the agent claims, then
  ``aud`` must include this resource's audience.
- A resource that is a ToolServer (an ``audience`` other than the issuer) is configured with its
  own ToolServer identity (:class:`ToolServerRef`, ``namespace/name``, optionally the uid) and
  accepts only tokens whose ``tool_server`` claim names exactly that ToolServer: a token minted
  for a ToolServer another namespace created with the same ``resourceURI`` is refused, whoever
  created theirs first. Constructing a verifier for a ToolServer audience without it raises
  ``ValueError`` (fail closed: there is no way to accept any ToolServer's tokens). A verifier for
  the issuer's own audience refuses tokens that name a ToolServer.
- A bound token (``cnf``) is accepted only with a valid RFC 9421 signature by the bound key
  over this very request (method, authority, path, ``Signature-Key`` and the body digest),
  created within ``max_signature_age`` seconds; presented as a plain bearer token it is
  refused.  A signature is accepted once: a replay inside the window is refused, one outside
  the window is refused as expired.
- Required capabilities must be in the token's ``scope`` (a ``<prefix>.*`` scope entry covers
  ``<prefix>.<anything>``); otherwise :class:`MissingCapability` (403 ``insufficient_scope``
  naming the capability).
- Verified tokens may be remembered (``token_cache_size``, default 1024, 0 disables) by
  their exact string, never past ``exp`` (+ ``leeway``), only while the issuer key that
  verified them is still the one in the key set, and only for the same issuer/audience; a
  hit re-decodes the claims from the token, so no two requests share claim objects.  Only
  successes are remembered.  The request signature, replay and scope checks run every time.
- 401s are ``invalid_token`` (or no error code at all when no credentials were presented,
  RFC 6750 section 3.1); :func:`www_authenticate` renders the challenge header.
"""

from __future__ import annotations

import asyncio
import collections
import json
import re
import ssl
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx

from agentauth.domain import assertions, errors, jose, signatures, tokens


@dataclass(frozen=True, slots=True)
class ToolServerRef:
    """The ToolServer a resource server is: ``namespace``/``name`` and, if pinned, its uid.

    Without ``uid`` a ToolServer deleted and created again under the same name is the same
    resource (only its own namespace can do that); with it, tokens minted for an earlier
    object of that name are refused as well.
    """

    namespace: str
    name: str
    uid: str | None = None

    @classmethod
    def parse(cls, text: str) -> ToolServerRef:
        """``"namespace/name"`` (as ``AGENTAUTH_TOOL_SERVER`` holds it)."""
        namespace, slash, name = text.strip().partition("/")
        if not slash or not _DNS_LABEL.fullmatch(namespace) or not _DNS_SUBDOMAIN.fullmatch(name):
            raise ValueError(
                f"{text!r} is not a ToolServer reference: expected '<namespace>/<name>', such "
                "as 'team-a/docs-tools'"
            )
        return cls(namespace=namespace, name=name)

    def __str__(self) -> str:
        return f"{self.namespace}/{self.name}"

    def check(self, claims: Mapping[str, Any]) -> None:
        """Raise ``InvalidToken`` unless the token's ``tool_server`` claim names this one."""
        named = claims.get("tool_server")
        if not isinstance(named, Mapping):
            raise errors.InvalidToken(
                f"the token names no ToolServer; this resource is ToolServer {self}"
            )
        namespace, name = named.get("namespace"), named.get("name")
        if namespace != self.namespace or name != self.name:
            raise errors.InvalidToken(
                f"the token was issued for ToolServer {namespace}/{name}, not for this "
                f"resource's ToolServer {self}"
            )
        if self.uid is not None and named.get("uid") != self.uid:
            raise errors.InvalidToken(
                f"the token was issued for an earlier ToolServer {self} (uid "
                f"{named.get('uid')}), not this one (uid {self.uid})"
            )


_DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")
_DNS_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")


def _same_resource(left: str, right: str) -> bool:
    return left.rstrip("/") == right.rstrip("/")


class MissingToken(errors.InvalidToken):
    """No credentials at all: the challenge carries no error code (RFC 6750 section 3.1)."""


class MissingCapability(errors.InsufficientScope):
    """The token lacks ``capability`` (403 with ``scope="<capability>"``)."""

    def __init__(self, capability: str) -> None:
        super().__init__(f"the agent token lacks capability {capability}")
        self.capability = capability


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: the verified agent token and, when signed, the signing key."""

    subject: str
    agent: tokens.AgentRef
    scope: tuple[str, ...]
    claims: Mapping[str, Any] = field(repr=False)
    jkt: str | None
    bound: bool

    def allows(self, capability: str) -> bool:
        return scope_allows(self.scope, capability)

    def require(self, capability: str) -> None:
        """Raise :class:`MissingCapability` unless the token carries ``capability``."""
        if not self.allows(capability):
            raise MissingCapability(capability)

    @property
    def actor_chain(self) -> tuple[str, ...]:
        """``sub`` of each actor, outermost (current) first (RFC 8693 ``act``)."""
        chain: list[str] = []
        act = self.claims.get("act")
        while isinstance(act, Mapping):
            chain.append(str(act.get("sub")))
            act = act.get("act")
        return tuple(chain)


def scope_allows(scope: Iterable[str], capability: str) -> bool:
    for entry in scope:
        if entry == capability:
            return True
        if entry.endswith(".*") and capability.startswith(entry[:-1]):
            return True
    return False


def _quote(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def www_authenticate(exc: errors.OAuthError, *, resource_metadata: str | None = None) -> str:
    """The RFC 6750 ``WWW-Authenticate`` value for a refusal (plus RFC 9728
    ``resource_metadata`` when given)."""
    params: list[str] = []
    if not isinstance(exc, MissingToken):
        params.append(f"error={_quote(exc.error)}")
        if exc.description:
            params.append(f"error_description={_quote(exc.description)}")
    if isinstance(exc, MissingCapability):
        params.append(f"scope={_quote(exc.capability)}")
    if resource_metadata:
        params.append(f"resource_metadata={_quote(resource_metadata)}")
    return "Bearer " + ", ".join(params) if params else "Bearer"


class JwksCache:
    """The issuer's JWKS, fetched lazily and refetched (rate-limited) on unknown ``kid``."""

    def __init__(
        self,
        *,
        jwks_url: str | None = None,
        jwks: Mapping[str, Any] | None = None,
        ca_file: str | None = None,
        http: httpx.AsyncClient | None = None,
        min_refetch_interval: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if (jwks_url is None) == (jwks is None):
            raise ValueError("give exactly one of jwks_url and jwks")
        self._url = jwks_url
        self._keys = jose.PublicKeySet.from_jwks(jwks) if jwks is not None else None
        self._http = http
        self._verify: ssl.SSLContext | bool = (
            ssl.create_default_context(cafile=ca_file) if ca_file else True
        )
        self._min_interval = min_refetch_interval
        self._clock = clock
        self._fetched_at: float | None = None
        self._last_unknown_kid_fetch: float | None = None
        self._lock = asyncio.Lock()
        self.fetches = 0

    @property
    def keys(self) -> jose.PublicKeySet | None:
        return self._keys

    async def get(self) -> jose.PublicKeySet:
        if self._keys is None:
            await self.refresh(force=True)
        if self._keys is None:  # pragma: no cover - refresh sets the keys or raises
            raise errors.TemporarilyUnavailable("the issuer's JWKS is not loaded")
        return self._keys

    async def refresh(self, *, force: bool = False) -> bool:
        """Refetch; an unforced refetch (an unknown ``kid``) happens at most once per
        ``min_refetch_interval``.  True if fetched."""
        if self._url is None:
            return False
        async with self._lock:
            now = self._clock()
            if not force:
                if (
                    self._last_unknown_kid_fetch is not None
                    and now - self._last_unknown_kid_fetch < self._min_interval
                ):
                    return False
                self._last_unknown_kid_fetch = now
            self._fetched_at = now
            self.fetches += 1
            try:
                if self._http is not None:
                    response = await self._http.get(self._url)
                else:
                    async with httpx.AsyncClient(verify=self._verify, timeout=10.0) as http:
                        response = await http.get(self._url)
                response.raise_for_status()
                document = response.json()
            except (httpx.HTTPError, ValueError) as exc:
                if self._keys is None:
                    raise errors.TemporarilyUnavailable(
                        "the issuer's JWKS cannot be fetched"
                    ) from exc
                return False  # keep serving with the keys we have
            if not isinstance(document, dict):
                raise errors.TemporarilyUnavailable("the issuer's JWKS is not a JSON object")
            self._keys = jose.PublicKeySet.from_jwks(document)
            return True


@dataclass(frozen=True, slots=True)
class _VerifiedToken:
    kid: str
    key: jose.PublicKey
    issuer: str
    audience: str
    tool_server: ToolServerRef | None
    not_before: float
    expires_at: float


class VerifiedTokenCache:
    """Tokens that passed full verification, by exact string (bounded, least recently used
    evicted first; thread-safe).  An entry is only a shortcut past the token's signature and
    claim checks; :meth:`ResourceVerifier._verify_token` decides when it still applies."""

    def __init__(self, *, max_entries: int) -> None:
        self._entries: collections.OrderedDict[str, _VerifiedToken] = collections.OrderedDict()
        self._max_entries = max_entries
        self._lock = threading.Lock()

    def get(self, token: str) -> _VerifiedToken | None:
        with self._lock:
            entry = self._entries.get(token)
            if entry is not None:
                self._entries.move_to_end(token)
            return entry

    def put(self, token: str, entry: _VerifiedToken) -> None:
        with self._lock:
            self._entries[token] = entry
            self._entries.move_to_end(token)
            while len(self._entries) > self._max_entries:
                self._entries.popitem(last=False)

    def discard(self, token: str) -> None:
        with self._lock:
            self._entries.pop(token, None)

    def __len__(self) -> int:
        return len(self._entries)


class ResourceVerifier:
    """Verifies requests to one protected resource (``audience``) from one issuer."""

    def __init__(
        self,
        *,
        issuer: str,
        audience: str,
        jwks: JwksCache,
        leeway: float = tokens.DEFAULT_LEEWAY,
        max_signature_age: int = signatures.MAX_AGE_SECONDS,
        replay_cache: assertions.ReplayCache | None = None,
        allow_unbound_bearer: bool = True,
        token_cache_size: int = 1024,
        clock: Callable[[], float] = time.time,
        tool_server: ToolServerRef | str | None = None,
    ) -> None:
        if isinstance(tool_server, str):
            tool_server = ToolServerRef.parse(tool_server)
        if tool_server is None and not _same_resource(audience, issuer):
            raise ValueError(
                f"audience {audience!r} is a ToolServer's resource URI: pass "
                "tool_server='<namespace>/<name>' (this resource's ToolServer), so that tokens "
                "minted for a ToolServer another namespace created with the same URI are refused"
            )
        self.issuer = issuer
        self.audience = audience
        self.tool_server = tool_server
        self.jwks = jwks
        self.leeway = leeway
        self.max_signature_age = max_signature_age
        self.replay_cache = (
            replay_cache if replay_cache is not None else (assertions.InMemoryReplayCache())
        )
        self.allow_unbound_bearer = allow_unbound_bearer
        self.token_cache = (
            VerifiedTokenCache(max_entries=token_cache_size) if token_cache_size > 0 else None
        )
        self._clock = clock

    # The synchronous core; the async wrapper only adds the JWKS (re)fetch.
    def _verify_token(self, token: str, keys: jose.PublicKeySet, now: float) -> dict[str, Any]:
        cache = self.token_cache
        if cache is not None:
            hit = cache.get(token)
            if hit is not None:
                if (
                    hit.kid in keys
                    and keys.get(hit.kid) is hit.key  # the same JWKS generation
                    and hit.issuer == self.issuer
                    and hit.audience == self.audience
                    and hit.tool_server == self.tool_server
                    and hit.not_before <= now + self.leeway
                    and now < hit.expires_at + self.leeway
                ):
                    # Fresh objects for every request, exactly what full verification
                    # returns (the payload segment already verified with this token).
                    claims: dict[str, Any] = json.loads(jose.b64url_decode(token.split(".", 2)[1]))
                    return claims
                cache.discard(token)
        try:
            verified = tokens.verify(
                token,
                public_keys=keys,
                issuer=self.issuer,
                now=now,
                leeway=self.leeway,
            )
        except jose.UnknownKeyId:
            raise
        except errors.OAuthError as exc:
            raise errors.InvalidToken(exc.description) from None
        claims = verified.claims
        aud = claims.get("aud")
        audiences = [aud] if isinstance(aud, str) else aud if isinstance(aud, list) else []
        if self.audience not in audiences:
            raise errors.InvalidToken(f"token audience does not include {self.audience}")
        if self.tool_server is not None:
            self.tool_server.check(claims)
        elif "tool_server" in claims:
            raise errors.InvalidToken(
                "the token was issued for a ToolServer, not for this resource"
            )
        if cache is not None:
            # nbf/iat were checked above (numbers when present); a hit re-checks the later.
            times = [v for v in (claims.get("nbf"), claims.get("iat")) if v is not None]
            cache.put(
                token,
                _VerifiedToken(
                    kid=verified.kid,
                    key=keys.get(verified.kid),
                    issuer=self.issuer,
                    audience=self.audience,
                    tool_server=self.tool_server,
                    not_before=float(max(times)) if times else float("-inf"),
                    expires_at=float(verified.expires_at),
                ),
            )
        return claims

    def verify_with_keys(
        self,
        *,
        method: str,
        url: str,
        headers: signatures.HeaderInput,
        body: bytes,
        keys: jose.PublicKeySet,
        required: Sequence[str] = (),
    ) -> Principal:
        """Verify with an already loaded key set (raises ``jose.UnknownKeyId`` for a kid that
        is not in it; :meth:`verify` refetches and retries)."""
        now = self._clock()
        normalized = _lines(headers)
        bearer, signed_request = _bearer_and_signed(normalized)
        jkt: str | None = None
        if signed_request:
            try:
                signed = signatures.verify_request(
                    method=method,
                    url=url,
                    headers=normalized,
                    body=body,
                    now=now,
                    max_age=self.max_signature_age,
                    token_verifier=lambda token: self._verify_token(token, keys, now),
                )
            except signatures.SignatureError as exc:
                raise errors.InvalidToken(f"request signature is invalid: {exc.reason}") from None
            if signed.token is not None:
                if bearer is not None and bearer != signed.token:
                    raise errors.InvalidToken(
                        "Authorization and Signature-Key carry different tokens"
                    )
                claims = dict(signed.token_claims or {})
            elif bearer is not None:
                claims = self._verify_token(bearer, keys, now)
                cnf = claims.get("cnf")
                if not isinstance(cnf, Mapping) or cnf.get("jkt") != signed.jkt:
                    raise errors.InvalidToken("the token is not bound to the signing key")
            else:
                raise errors.InvalidToken("a signed request must present an agent token")
            try:
                self.replay_cache.remember(
                    "sig|" + signed.replay_id.hex(),
                    expires_at=signed.created + self.max_signature_age + signatures.MAX_CLOCK_SKEW,
                    now=now,
                )
            except assertions.Replayed:
                raise errors.InvalidToken("request signature was already used (replay)") from None
            jkt = signed.jkt
        elif bearer is not None:
            claims = self._verify_token(bearer, keys, now)
            if "cnf" in claims:
                raise errors.InvalidToken(
                    "bound token presented without a request signature (sign the request)"
                )
            if not self.allow_unbound_bearer:
                raise errors.InvalidToken("this resource requires a signed request")
        else:
            raise MissingToken("no agent token presented")
        agent = claims["agent"]
        principal = Principal(
            subject=str(claims["sub"]),
            agent=tokens.AgentRef(
                name=agent["name"], namespace=agent["namespace"], uid=agent["uid"]
            ),
            scope=tuple(str(claims.get("scope", "")).split()),
            claims=claims,
            jkt=jkt,
            bound=jkt is not None,
        )
        for capability in required:
            principal.require(capability)
        return principal

    async def verify(
        self,
        *,
        method: str,
        url: str,
        headers: signatures.HeaderInput,
        body: bytes,
        required: Sequence[str] = (),
    ) -> Principal:
        """Verify a request (see the module docstring); ``url`` is the absolute URL as the
        client addressed it.  Raises ``OAuthError`` subclasses."""
        lines = _lines(headers)
        keys = await self.jwks.get()
        try:
            return self.verify_with_keys(
                method=method, url=url, headers=lines, body=body, keys=keys, required=required
            )
        except jose.UnknownKeyId as exc:
            if not await self.jwks.refresh():
                raise errors.InvalidToken(f"token signed with unknown key id {exc.kid!r}") from None
        try:
            return self.verify_with_keys(
                method=method,
                url=url,
                headers=lines,
                body=body,
                keys=await self.jwks.get(),
                required=required,
            )
        except jose.UnknownKeyId as exc:
            raise errors.InvalidToken(f"token signed with unknown key id {exc.kid!r}") from None


def _lines(headers: signatures.HeaderInput) -> list[tuple[str, str]]:
    items: Iterable[Any] = headers.items() if isinstance(headers, Mapping) else headers
    return [
        (
            k.decode("latin-1") if isinstance(k, bytes) else str(k),
            v.decode("latin-1") if isinstance(v, bytes) else str(v),
        )
        for k, v in items
    ]


def _bearer_and_signed(lines: Sequence[tuple[str, str]]) -> tuple[str | None, bool]:
    """The ``Authorization: Bearer`` credentials (``None`` without them) and whether the
    request carries a ``Signature-Key``, from one pass over the field lines."""
    authorizations: list[str] = []
    signed = False
    for name, value in lines:
        lowered = name.lower()
        if lowered == "authorization":
            authorizations.append(value)
        elif lowered == "signature-key":
            signed = True
    if len(authorizations) != 1:
        if len(authorizations) > 1:
            raise errors.InvalidRequest("more than one Authorization header")
        return None, signed
    scheme, _, credentials = authorizations[0].strip().partition(" ")
    if scheme.lower() != "bearer" or not credentials.strip():
        return None, signed
    return credentials.strip(), signed


def request_url(
    *, scheme: str, host: str | None, raw_path: str, public_origin: str | None = None
) -> str:
    """The absolute URL a client addressed: ``public_origin`` (behind a proxy) or the
    request's scheme and ``Host`` header, plus the raw path and query."""
    if public_origin:
        return public_origin.rstrip("/") + raw_path
    if not host:
        raise errors.InvalidRequest("request has no Host header")
    return f"{scheme}://{host}{raw_path}"
