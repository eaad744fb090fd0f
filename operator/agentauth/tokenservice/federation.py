"""I/O adapter for cloud workload federation: forwards AWS signed requests to STS and verifies
Google ID tokens with google-auth.

Guarantees:

- AWS: nothing is sent anywhere until ``domain.federation.aws.validate_signed_request`` has
  accepted the request and the replay cache has recorded its signature; the request goes to the
  URL the domain rebuilt (an allow-listed STS host or the configured test endpoint), redirects
  are never followed, the answer is read up to ``aws_sts_max_response_bytes`` and the exchange
  is bounded by ``aws_sts_timeout_seconds``. STS refusing the signature becomes
  ``invalid_grant`` naming STS's error code; STS unreachable or failing becomes
  ``temporarily_unavailable``.
- Both are bound to the key that signs the token request (``signer_jkt``, the thumbprint of the
  verified RFC 9421 signature; an unsigned request is refused): the AWS request must sign
  ``X-AgentAuth-Key-Thumbprint`` with that thumbprint, the GCP ID token's audience must be
  ``gcp.bound_audience(issuer, signer_jkt)``. A captured subject token is thus useless with any
  other key, at whichever replica it is replayed.
- GCP: the ID token is verified by google-auth's own ``id_token.verify_token`` (signature with
  Google's certificates, ``exp``/``iat`` with ``gcp_clock_skew_seconds`` of leeway, the shared
  ``clockskew.LEEWAY_SECONDS``, ``aud`` = the bound audience), run in a worker thread because
  google-auth's transport is synchronous; only ``RS256`` is accepted; then
  ``domain.federation.gcp.check_claims`` adds ``iss``, ``email_verified`` and the rest.
  Certificates are cached per certs URL for their ``Cache-Control: max-age`` (bounded), and
  refetched when a token names an unknown key id (Google rotates keys), at most once per
  ``gcp_certs_min_refetch_seconds``.

Both functions return a ``FederatedIdentity``; ``domain.federation.matching.match_agent`` turns
it into an Agent.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime
import re
import threading
import time
import typing
from typing import Any
from xml.etree import ElementTree

import aiohttp

from agentauth.domain import clockskew, errors
from agentauth.domain.federation import aws, gcp
from agentauth.domain.federation.matching import FederatedIdentity

MAX_CERTS_CACHE_SECONDS = 3600.0
_MAX_AGE = re.compile(r"max-age=(\d+)")


@dataclasses.dataclass(frozen=True)
class FederationSettings:
    """What the token service needs to verify cloud identities.

    ``issuer`` is our issuer URL: the value the AWS ``X-AgentAuth-Server-ID`` header carries and
    the GCP ``aud`` starts with. ``aws_sts_test_endpoint`` (tests and local emulators only) is one
    extra origin accepted as STS, over http too; it is normalised at construction and a
    malformed one raises ``ValueError``.
    """

    issuer: str
    aws_sts_test_endpoint: str | None = None
    aws_sts_timeout_seconds: float = 10.0
    aws_sts_max_response_bytes: int = 64 * 1024
    gcp_certs_url: str = gcp.GOOGLE_CERTS_URL
    gcp_clock_skew_seconds: int = clockskew.LEEWAY_SECONDS
    gcp_certs_timeout_seconds: float = 10.0
    gcp_certs_min_refetch_seconds: float = 30.0

    def __post_init__(self) -> None:
        if self.aws_sts_test_endpoint is not None:
            normalized = aws.normalize_test_endpoint(self.aws_sts_test_endpoint)
            object.__setattr__(self, "aws_sts_test_endpoint", normalized)


async def verify_aws_subject_token(
    token: str,
    *,
    settings: FederationSettings,
    replay_cache: aws.ReplayCache,
    signer_jkt: str | None,
    http_session: aiohttp.ClientSession | None = None,
) -> FederatedIdentity:
    """Validate a signed ``GetCallerIdentity``, have STS check it, return who signed it.

    ``http_session`` lets the token service reuse one connection pool; a private session is
    opened and closed per call when it is ``None``.
    """
    envelope = aws.decode_subject_token(token)
    now = datetime.datetime.now(datetime.UTC)
    request = aws.validate_signed_request(
        envelope,
        issuer=settings.issuer,
        now=now,
        signer_jkt=signer_jkt,
        test_endpoint=settings.aws_sts_test_endpoint,
    )
    # Recorded before forwarding: two concurrent presentations of one request cannot both pass.
    # Forgotten again when STS does not vouch for it, so garbage signatures (which anyone can
    # make up) cannot fill the cache and lock everyone out of AWS federation.
    replay_cache.remember(request.replay_key, expires_at=request.replay_expires_at, now=now)
    try:
        if http_session is None:
            async with aiohttp.ClientSession() as private_session:
                status, content_type, body = await _post_to_sts(
                    private_session, request, settings=settings
                )
        else:
            status, content_type, body = await _post_to_sts(
                http_session, request, settings=settings
            )
    except errors.OAuthError:
        replay_cache.forget(request.replay_key)
        raise
    if status != 200:
        replay_cache.forget(request.replay_key)
    if 300 <= status < 400:
        raise errors.InvalidGrant("AWS STS answered a redirect, which is never followed")
    if 400 <= status < 500:
        raise errors.InvalidGrant(
            f"AWS STS rejected the signed request: {_sts_error_code(body)} (HTTP {status})"
        )
    if status != 200:
        raise errors.TemporarilyUnavailable(f"AWS STS failed with HTTP {status}; retry later")
    caller = aws.parse_caller_identity(body, content_type=content_type)
    return FederatedIdentity.from_aws(caller)


async def _post_to_sts(
    session: aiohttp.ClientSession,
    request: aws.SignedStsRequest,
    *,
    settings: FederationSettings,
) -> tuple[int, str, bytes]:
    limit = settings.aws_sts_max_response_bytes
    try:
        async with session.post(
            request.url,
            data=request.body,
            headers=list(request.headers),
            allow_redirects=False,
            timeout=aiohttp.ClientTimeout(total=settings.aws_sts_timeout_seconds),
        ) as response:
            body = bytearray()
            async for chunk in response.content.iter_chunked(16 * 1024):
                body += chunk
                if len(body) > limit:
                    raise errors.InvalidGrant(
                        f"AWS STS answered more than {limit} bytes; refusing to read it"
                    )
            return response.status, response.headers.get("Content-Type", ""), bytes(body)
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise errors.TemporarilyUnavailable(
            f"AWS STS is unreachable ({type(exc).__name__}); retry later"
        ) from exc


def _sts_error_code(body: bytes) -> str:
    """STS's ``<Error><Code>`` (e.g. ``SignatureDoesNotMatch``), or ``unknown error``."""
    if b"<!DOCTYPE" in body.upper() or b"<!ENTITY" in body.upper():
        return "unknown error"
    try:
        root = ElementTree.fromstring(body)  # noqa: S314 - DTDs refused above, size bounded
    except ElementTree.ParseError:
        return "unknown error"
    for element in root.iter():
        if element.tag.rsplit("}", 1)[-1] == "Code" and element.text:
            code = element.text.strip()
            if re.fullmatch(r"[A-Za-z0-9.]{1,64}", code):
                return code
    return "unknown error"


async def verify_gcp_subject_token(
    token: str, *, settings: FederationSettings, signer_jkt: str | None
) -> FederatedIdentity:
    """Verify a Google-signed ID token with google-auth and return the service account."""
    gcp.check_token_shape(token)
    if signer_jkt is None:
        raise errors.InvalidGrant(
            "the token request must be signed (RFC 9421) by the key the GCP ID token's audience "
            "names"
        )
    audience = gcp.bound_audience(settings.issuer, signer_jkt)
    claims = await asyncio.to_thread(_verify_with_google_auth, token, settings, audience)
    identity = gcp.check_claims(claims, audience=audience)
    return FederatedIdentity.from_gcp(identity)


def _verify_with_google_auth(
    token: str, settings: FederationSettings, audience: str
) -> dict[str, Any]:
    # Lazy: google-auth is the optional "gcp" extra.
    import google.auth.exceptions
    import jwt as pyjwt  # google-auth's JWKS path raises PyJWT's errors
    from google.auth import transport
    from google.oauth2 import id_token

    certs = _certs_cache_for(settings)
    # Duck-typed: google-auth only ever calls the request object.
    certs_request = typing.cast(transport.Request, certs)
    for attempt in range(2):
        try:
            claims = id_token.verify_token(
                token,
                certs_request,
                audience=audience,
                certs_url=settings.gcp_certs_url,
                clock_skew_in_seconds=settings.gcp_clock_skew_seconds,
            )
        except google.auth.exceptions.TransportError as exc:
            raise errors.TemporarilyUnavailable(
                "cannot fetch Google's ID-token certificates; retry later"
            ) from exc
        except (ValueError, google.auth.exceptions.GoogleAuthError, pyjwt.PyJWTError) as exc:
            description = gcp.describe_google_auth_error(str(exc))
            if description == gcp.UNKNOWN_KEY_DESCRIPTION and attempt == 0 and certs.invalidate():
                continue  # Google rotated its keys since we cached them: refetch once.
            raise errors.InvalidGrant(description) from None
        return dict(claims)
    raise errors.InvalidGrant(gcp.UNKNOWN_KEY_DESCRIPTION)  # pragma: no cover - loop exits above


class _CachedCertsRequest:
    """A google-auth ``transport.Request`` that caches the certs URL's answer.

    google-auth fetches the certificates on every ``verify_token`` call; Google publishes them
    with ``Cache-Control: max-age`` for exactly this reason.
    """

    def __init__(
        self, *, certs_url: str, timeout_seconds: float, min_refetch_seconds: float
    ) -> None:
        self._certs_url = certs_url
        self._timeout_seconds = timeout_seconds
        self._min_refetch_seconds = min_refetch_seconds
        self._lock = threading.Lock()
        self._response: Any = None
        self._expires_at = 0.0
        self._fetched_at = 0.0
        self._transport: Any = None

    def __call__(self, url: str, method: str = "GET", **kwargs: Any) -> Any:
        if url != self._certs_url or method != "GET":
            raise errors.ServerError("the GCP certificates cache only fetches its certs URL")
        with self._lock:
            now = time.monotonic()
            if self._response is not None and now < self._expires_at:
                return self._response
            if self._transport is None:
                import google.auth.transport.requests

                self._transport = google.auth.transport.requests.Request()
            response = self._transport(url, method="GET", timeout=self._timeout_seconds)
            self._fetched_at = now
            if response.status == 200:
                self._response = response
                self._expires_at = now + _max_age(response.headers.get("Cache-Control", ""))
            return response

    def invalidate(self) -> bool:
        """Forget the cached certificates unless they were fetched very recently.

        Returns whether a refetch is allowed; an attacker sending tokens with made-up key ids
        therefore causes at most one fetch per ``min_refetch_seconds``.
        """
        with self._lock:
            if time.monotonic() - self._fetched_at < self._min_refetch_seconds:
                return False
            self._response = None
            return True


def _max_age(cache_control: str) -> float:
    match = _MAX_AGE.search(cache_control)
    seconds = float(match.group(1)) if match else 300.0
    return min(seconds, MAX_CERTS_CACHE_SECONDS)


_certs_caches: dict[tuple[str, float, float], _CachedCertsRequest] = {}
_certs_caches_lock = threading.Lock()


def _certs_cache_for(settings: FederationSettings) -> _CachedCertsRequest:
    key = (
        settings.gcp_certs_url,
        settings.gcp_certs_timeout_seconds,
        settings.gcp_certs_min_refetch_seconds,
    )
    with _certs_caches_lock:
        cache = _certs_caches.get(key)
        if cache is None:
            cache = _CachedCertsRequest(
                certs_url=settings.gcp_certs_url,
                timeout_seconds=settings.gcp_certs_timeout_seconds,
                min_refetch_seconds=settings.gcp_certs_min_refetch_seconds,
            )
            _certs_caches[key] = cache
        return cache
