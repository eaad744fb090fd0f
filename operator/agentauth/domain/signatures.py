"""RFC 9421 HTTP Message Signatures (Ed25519) under the AAuth profile, RFC 9530 digests.

An agent signs each request with an Ed25519 key and names that key in the ``Signature-Key``
header (draft-hardt-httpbis-signature-key, as used by AAuth):

- ``Signature-Key: sig=jwt;jwt="<agent token>"`` -- the key is the token's ``cnf.jwk``
  (RFC 7800), so a verifier needs nothing but the token (proof of possession);
- ``Signature-Key: sig=hwk;kty="OKP";crv="Ed25519";x="..."`` -- a bare public key ("header web
  key"), used to sign a token request so that the issued token gets bound to that key.

The signature base is built by the ``http-message-signatures`` library (never by hand); this
module only decides *what* is covered and *which* key is trusted.

Guarantees of :func:`verify_request`:

- exactly one signature, with the same label in ``Signature-Input``, ``Signature`` and
  ``Signature-Key``; algorithm Ed25519 only (an ``alg`` parameter other than ``ed25519`` fails);
- ``created`` is required, not more than ``MAX_CLOCK_SKEW`` seconds in the future and not more
  than ``max_age`` seconds in the past (relative to the caller's ``now``); ``expires``, when
  present, must not have passed;
- every component in ``required_components`` is covered, and ``content-digest`` is covered and
  matches the body whenever the body is not empty (RFC 9530);
- covered values with CR/LF or control characters are refused by the library (no header
  injection into the signature base);
- for ``sig=jwt`` the token must carry ``cnf.jwk`` (Ed25519) and, when present, ``cnf.jkt``
  must equal its RFC 7638 thumbprint.  The token itself is only verified when a
  ``token_verifier`` is passed; otherwise ``VerifiedRequest.token_claims`` is ``None`` and the
  caller MUST verify the token (``agentauth.verify`` always does).

Every failure raises :class:`SignatureError` with a fixed, human-readable ``reason``.
"""

from __future__ import annotations

import datetime
import hashlib
import hmac
import re
import secrets
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import http_message_signatures as hms
import http_sf
from cryptography.hazmat.primitives.asymmetric import ed25519

from agentauth.domain import errors, jose

SIGNATURE_LABEL = "sig"
"""The signature label AAuth uses in ``Signature-Input``, ``Signature`` and ``Signature-Key``."""

BASE_COMPONENTS: tuple[str, ...] = ("@method", "@authority", "@path", "signature-key")
"""Components every agentauth signature covers (``content-digest`` is added for a body)."""

MAX_AGE_SECONDS = 60
"""Default validity window for ``created`` (AAuth profile)."""

MAX_CLOCK_SKEW = 5
"""Seconds a ``created`` timestamp may lie in the verifier's future."""

SignatureKeyScheme = Literal["jwt", "hwk"]


class SignatureError(Exception):
    """A request signature is missing, malformed, or does not verify.

    ``reason`` is a fixed description safe to return to the client (it never echoes tokens).
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class VerifiedRequest:
    """The outcome of a successful :func:`verify_request`.

    ``public_jwk``/``jkt`` identify the key that signed the request.  ``token`` is the agent
    token from ``sig=jwt`` (``None`` for ``sig=hwk``); ``token_claims`` are its claims when a
    ``token_verifier`` vouched for them, else ``None``.  ``signature`` is the raw signature,
    usable as a replay-cache key together with ``created``.
    """

    scheme: SignatureKeyScheme
    public_jwk: dict[str, str]
    jkt: str
    token: str | None
    token_claims: Mapping[str, Any] | None
    label: str
    keyid: str
    created: int
    covered_components: tuple[str, ...]
    replay_id: bytes


# --------------------------------------------------------------------------- keys and JWKs


def jwk_thumbprint(jwk: Mapping[str, Any]) -> str:
    """RFC 7638 SHA-256 thumbprint (base64url) of a public JWK."""
    return jose.jwk_thumbprint(jwk)


def public_jwk(key: ed25519.Ed25519PublicKey | ed25519.Ed25519PrivateKey) -> dict[str, str]:
    """The public OKP/Ed25519 JWK (``kty``, ``crv``, ``x``) for a key."""
    if isinstance(key, ed25519.Ed25519PrivateKey):
        key = key.public_key()
    return jose.ed25519_jwk(key)


def ed25519_public_key(jwk: Mapping[str, Any]) -> ed25519.Ed25519PublicKey:
    """Load an Ed25519 public JWK; anything else raises :class:`SignatureError`."""
    if "d" in jwk:
        raise SignatureError("signing key must be a public JWK (it contains private key material)")
    if jwk.get("kty") != "OKP" or jwk.get("crv") != "Ed25519":
        raise SignatureError(
            f"signing key must be an Ed25519 OKP JWK, got kty={jwk.get('kty')!r} "
            f"crv={jwk.get('crv')!r}"
        )
    x = jwk.get("x")
    if not isinstance(x, str):
        raise SignatureError("signing key JWK has no x member")
    try:
        raw = jose.b64url_decode(x)
    except errors.OAuthError:
        raise SignatureError("signing key JWK x member is not base64url") from None
    if len(raw) != 32:
        raise SignatureError("signing key JWK x member is not a 32-byte Ed25519 key")
    return ed25519.Ed25519PublicKey.from_public_bytes(raw)


# --------------------------------------------------------------------------- Signature-Key


def signature_key_jwt(token: str, *, label: str = SIGNATURE_LABEL) -> str:
    """``Signature-Key`` value presenting a bound agent token (AAuth ``sig=jwt``)."""
    params: dict[str, http_sf.types.BareItemType] = {"jwt": token}
    return http_sf.ser({label: (http_sf.Token("jwt"), params)})


def signature_key_hwk(
    key: ed25519.Ed25519PublicKey | ed25519.Ed25519PrivateKey, *, label: str = SIGNATURE_LABEL
) -> str:
    """``Signature-Key`` value carrying a bare Ed25519 public key (``sig=hwk``)."""
    jwk = public_jwk(key)
    params: dict[str, http_sf.types.BareItemType] = {
        "kty": jwk["kty"],
        "crv": jwk["crv"],
        "x": jwk["x"],
    }
    return http_sf.ser({label: (http_sf.Token("hwk"), params)})


@dataclass(frozen=True, slots=True)
class _SignatureKey:
    scheme: SignatureKeyScheme
    params: dict[str, Any]


# Fast paths for the two forms agentauth emits; anything else goes through the full
# Structured Fields parser.  Both patterns only match valid sf-dictionary syntax, and the
# value is covered by the signature verbatim, so they cannot change what is trusted.
_JWT_MEMBER = re.compile(r'([a-z*][a-z0-9_.*-]*)=jwt;jwt="([A-Za-z0-9_.~+/=-]+)"')
_HWK_MEMBER = re.compile(
    r'([a-z*][a-z0-9_.*-]*)=hwk;kty="([A-Za-z]+)";crv="([A-Za-z0-9-]+)";x="([A-Za-z0-9_-]+)"'
)


def _parse_signature_key(value: str, *, label: str) -> _SignatureKey:
    fast = _JWT_MEMBER.fullmatch(value)
    if fast is not None and fast.group(1) == label:
        return _SignatureKey("jwt", {"jwt": fast.group(2)})
    fast = _HWK_MEMBER.fullmatch(value)
    if fast is not None and fast.group(1) == label:
        return _SignatureKey(
            "hwk", {"kty": fast.group(2), "crv": fast.group(3), "x": fast.group(4)}
        )
    return _parse_signature_key_fully(value, label=label)


def _parse_signature_key_fully(value: str, *, label: str) -> _SignatureKey:
    def reject_duplicate(key: str, context: str) -> None:
        raise SignatureError(f"Signature-Key has duplicate {context} key {key!r}")

    try:
        parsed = http_sf.parse(
            value.encode("ascii"), tltype="dictionary", on_duplicate_key=reject_duplicate
        )
    except (http_sf.StructuredFieldError, UnicodeEncodeError, ValueError):
        raise SignatureError("Signature-Key is not a valid structured field dictionary") from None
    if not isinstance(parsed, dict) or list(parsed) != [label]:
        raise SignatureError(f"Signature-Key must have exactly one member labelled {label!r}")
    member = parsed[label]
    if not isinstance(member, tuple) or not isinstance(member[0], http_sf.Token):
        raise SignatureError("Signature-Key member must be a token such as jwt or hwk")
    scheme, params = str(member[0]), member[1]
    if scheme == "jwt":
        return _SignatureKey("jwt", dict(params))
    if scheme == "hwk":
        return _SignatureKey("hwk", dict(params))
    raise SignatureError(f"Signature-Key scheme {scheme!r} is not supported (use jwt or hwk)")


def _key_from_jwt(
    token: str, verifier: Callable[[str], Mapping[str, Any]] | None
) -> tuple[dict[str, str], Mapping[str, Any] | None, str | None]:
    if verifier is not None:
        claims: Mapping[str, Any] = verifier(token)
        vouched: Mapping[str, Any] | None = claims
    else:
        try:
            claims = jose.parse(token).payload
        except errors.OAuthError:
            raise SignatureError("Signature-Key jwt is not a compact JWS") from None
        vouched = None
    cnf = claims.get("cnf")
    jwk = cnf.get("jwk") if isinstance(cnf, Mapping) else None
    if not isinstance(jwk, Mapping):
        raise SignatureError("token is not bound to a key (no cnf.jwk)")
    jwk_dict = {str(k): str(v) for k, v in jwk.items() if k in ("kty", "crv", "x", "d")}
    jkt = cnf.get("jkt") if isinstance(cnf, Mapping) else None
    if jkt is not None:
        ed25519_public_key(jwk_dict)  # validate the key type before hashing it
        if not isinstance(jkt, str) or not hmac.compare_digest(jkt, jwk_thumbprint(jwk_dict)):
            raise SignatureError("token cnf.jkt does not match cnf.jwk")
    return jwk_dict, vouched, jkt


# --------------------------------------------------------------------------- message adapter


class _FieldLines:
    """Header field lines in wire order, with the mapping interface the library expects."""

    def __init__(self, lines: list[tuple[str, str]]) -> None:
        self._lines = lines

    def items(self) -> Iterable[tuple[str, str]]:
        return list(self._lines)

    def __iter__(self) -> Iterator[str]:
        return iter(dict.fromkeys(name for name, _ in self._lines))

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and any(n.lower() == name.lower() for n, _ in self._lines)

    def __setitem__(self, name: str, value: str) -> None:
        self.__delitem__(name)
        self._lines.append((name, value))

    def __delitem__(self, name: str) -> None:
        self._lines = [(n, v) for n, v in self._lines if n.lower() != name.lower()]

    def get(self, name: str) -> str | None:
        values = [v for n, v in self._lines if n.lower() == name.lower()]
        return ", ".join(values) if values else None


@dataclass
class _Request:
    method: str
    url: str
    headers: _FieldLines


HeaderInput = Mapping[str, str] | Iterable[tuple[str, str]] | Iterable[tuple[bytes, bytes]]
"""Header field lines: a mapping, or (name, value) pairs as str or as raw latin-1 bytes."""


def _field_lines(headers: HeaderInput) -> list[tuple[str, str]]:
    items: Iterable[Any] = headers.items() if isinstance(headers, Mapping) else headers
    lines: list[tuple[str, str]] = []
    for name, value in items:
        lines.append(
            (
                name.decode("latin-1") if isinstance(name, bytes) else str(name),
                value.decode("latin-1") if isinstance(value, bytes) else str(value),
            )
        )
    return lines


# --------------------------------------------------------------------------- signing


class _SingleKey(hms.HTTPSignatureKeyResolver):
    """The one key a request is verified with (it came from ``Signature-Key``)."""

    def __init__(self, public_key: ed25519.Ed25519PublicKey) -> None:
        self._public_key = public_key

    def resolve_public_key(self, key_id: str) -> ed25519.Ed25519PublicKey:
        return self._public_key

    def resolve_private_key(self, key_id: str) -> ed25519.Ed25519PrivateKey:
        raise SignatureError("verification keys cannot sign")


def content_digest(body: bytes) -> str:
    """RFC 9530 ``Content-Digest`` value (``sha-256``) for ``body``."""
    return hms.ContentDigest.create(body)


def sign_request(
    *,
    method: str,
    url: str,
    headers: HeaderInput,
    body: bytes | None,
    private_key: ed25519.Ed25519PrivateKey,
    key_id: str | None = None,
    signature_key_header: str | None,
    created: int | None = None,
    components: Sequence[str] | None = None,
    label: str = SIGNATURE_LABEL,
    include_alg: bool = True,
    nonce: str | None = None,
    include_nonce: bool = True,
) -> dict[str, str]:
    """Sign a request; return the headers to add (``Signature-Input``, ``Signature``, and
    ``Signature-Key``/``Content-Digest`` when they apply).

    ``url`` is the absolute, encoded request URL.  ``signature_key_header`` is a value from
    :func:`signature_key_jwt` or :func:`signature_key_hwk` (``None`` signs without one, for
    plain RFC 9421 use).  Coverage defaults to :data:`BASE_COMPONENTS` (minus
    ``signature-key`` when there is none) plus ``content-digest`` for a non-empty body.
    ``key_id`` defaults to the key's RFC 7638 thumbprint; ``created`` to the current time.
    A random ``nonce`` is signed too (unless ``include_nonce=False``): Ed25519 is
    deterministic, so two identical requests in the same second would otherwise carry the
    same signature and the second would be refused as a replay.
    """
    lines = [
        (n, v)
        for n, v in _field_lines(headers)
        if n.lower() not in ("signature", "signature-input", "signature-key")
    ]
    added: dict[str, str] = {}
    if signature_key_header is not None:
        lines.append(("Signature-Key", signature_key_header))
        added["Signature-Key"] = signature_key_header
    if components is None:
        components = BASE_COMPONENTS if signature_key_header is not None else BASE_COMPONENTS[:3]
    message = _Request(method=method.upper(), url=url, headers=_FieldLines(lines))
    had_digest = "content-digest" in message.headers
    signer = hms.HTTPMessageSigner(signature_algorithm=hms.algorithms.ED25519)
    try:
        # The library builds the signature base (prepare); we sign it and serialize the two
        # headers.  Its apply() would rebuild the whole base only to check that a message we
        # own has not changed in between, doubling the per-request cost.
        prepared = signer.prepare(
            message,
            key_id=key_id if key_id is not None else jwk_thumbprint(public_jwk(private_key)),
            created=datetime.datetime.fromtimestamp(created, tz=datetime.UTC)
            if created is not None
            else None,
            label=label,
            include_alg=include_alg,
            nonce=(nonce or secrets.token_urlsafe(12)) if include_nonce else None,
            covered_component_ids=tuple(components),
            body=body if body else None,
            use_existing_digest=had_digest,
        )
    except hms.HTTPMessageSignaturesException as exc:
        raise SignatureError(f"cannot sign request: {exc}") from exc
    signature = private_key.sign(prepared.signature_base)
    if not had_digest:
        digest = message.headers.get("Content-Digest")
        if digest is not None:
            added["Content-Digest"] = digest
    added["Signature-Input"] = f"{prepared.label}={prepared.signature_params}"
    added["Signature"] = http_sf.ser({prepared.label: (signature, {})})
    return added


# --------------------------------------------------------------------------- verification


class _Verifier(hms.HTTPMessageVerifier):
    """The library verifier with the clock and window supplied by the caller."""

    require_created = True

    def __init__(self, *, public_key: ed25519.Ed25519PublicKey, now: float, max_age: int) -> None:
        super().__init__(
            signature_algorithm=hms.algorithms.ED25519,
            key_resolver=_SingleKey(public_key),
        )
        self._now = now
        self._max_age = max_age

    def validate_created_and_expires(self, sig_input: Any, max_age: Any = None) -> None:
        params = sig_input.params
        created = params.get("created")
        if created is None:
            raise hms.InvalidSignature('signature is missing the "created" parameter')
        if type(created) is not int:
            raise hms.InvalidSignature('signature "created" parameter must be an integer')
        if created > self._now + MAX_CLOCK_SKEW:
            raise hms.InvalidSignature('signature "created" is in the future')
        if created < self._now - self._max_age:
            raise hms.InvalidSignature(f"signature expired: created more than {self._max_age}s ago")
        expires = params.get("expires")
        if expires is not None and (type(expires) is not int or expires < self._now):
            raise hms.InvalidSignature('signature "expires" has passed')


def _component_name(serialized: str) -> str:
    # Covered component keys are serialized sf-strings such as '"@method"'.
    return (
        serialized[1:-1] if serialized.startswith('"') and serialized.endswith('"') else serialized
    )


def verify_request(
    *,
    method: str,
    url: str,
    headers: HeaderInput,
    body: bytes | None,
    now: float,
    max_age: int = MAX_AGE_SECONDS,
    required_components: Sequence[str] = BASE_COMPONENTS,
    token_verifier: Callable[[str], Mapping[str, Any]] | None = None,
    label: str = SIGNATURE_LABEL,
) -> VerifiedRequest:
    """Verify an AAuth-signed request; raise :class:`SignatureError` if it does not verify.

    ``url`` is the absolute URL the request was addressed to (scheme and authority as the
    client used them).  ``headers`` are the field lines as received (a mapping, or pairs of
    str/bytes to keep repeated lines).  ``now`` is the verifier's clock in epoch seconds.
    ``token_verifier`` verifies the ``sig=jwt`` token and returns its claims; exceptions it
    raises propagate unchanged (so an ``OAuthError`` from token checks stays an OAuthError).
    """
    message = _Request(method=method.upper(), url=url, headers=_FieldLines(_field_lines(headers)))
    signature_key_value = message.headers.get("signature-key")
    if signature_key_value is None:
        raise SignatureError("request has no Signature-Key header")
    if message.headers.get("signature-input") is None or message.headers.get("signature") is None:
        raise SignatureError("request is not signed (no Signature-Input/Signature headers)")
    signature_key = _parse_signature_key(signature_key_value, label=label)

    token: str | None = None
    claims: Mapping[str, Any] | None = None
    if signature_key.scheme == "jwt":
        raw_token = signature_key.params.get("jwt")
        if not isinstance(raw_token, str) or not raw_token:
            raise SignatureError('Signature-Key sig=jwt has no "jwt" parameter')
        token = raw_token
        jwk, claims, known_jkt = _key_from_jwt(token, token_verifier)
    else:
        known_jkt = None
        jwk = {k: str(v) for k, v in signature_key.params.items() if k in ("kty", "crv", "x", "d")}
    public_key = ed25519_public_key(jwk)
    jwk = {"kty": "OKP", "crv": "Ed25519", "x": jwk["x"]}

    verifier = _Verifier(public_key=public_key, now=now, max_age=max_age)
    try:
        results = verifier.verify(message, max_age=None)
        if len(results) != 1 or results[0].label != label:
            raise SignatureError(f"request must carry exactly one signature labelled {label!r}")
        result = results[0]
        _check_body(result.covered_components, body or b"")
    except hms.HTTPMessageSignaturesException as exc:
        raise SignatureError(_reason(exc)) from None
    covered = tuple(
        _component_name(c) for c in result.covered_components if c != '"@signature-params"'
    )
    for component in required_components:
        if component not in covered:
            raise SignatureError(f"signature does not cover required component {component!r}")
    if body and "content-digest" not in covered:
        raise SignatureError("signature does not cover content-digest for a request with a body")
    # Replay identity: a digest of the signed base (covered values plus the signed
    # parameters, including created and nonce).  Re-encoding the Signature header (e.g. adding
    # parameters to its member) cannot change it, and nothing else must be parsed again.
    signed_base = "\n".join(f"{k}: {v}" for k, v in result.covered_components.items())
    replay_id = hashlib.sha256(signed_base.encode("ascii")).digest()
    created = result.parameters.get("created")
    return VerifiedRequest(
        scheme=signature_key.scheme,
        public_jwk=jwk,
        jkt=known_jkt if known_jkt is not None else jwk_thumbprint(jwk),
        token=token,
        token_claims=claims,
        label=result.label,
        keyid=str(result.parameters.get("keyid", "")),
        created=created if isinstance(created, int) else 0,
        covered_components=covered,
        replay_id=replay_id,
    )


def _check_body(covered: Mapping[str, str], body: bytes) -> None:
    """RFC 9530: a non-empty body needs a covered ``Content-Digest`` that matches it.

    The common ``"content-digest"`` component is checked directly with the library's
    ``ContentDigest.verify``; parameterised forms go through its ``verify_components``.
    """
    value = covered.get('"content-digest"')
    if value is not None:
        hms.ContentDigest.verify(value, body)
        return
    parameterised = any(name.startswith('"content-digest"') for name in covered)
    if parameterised and hms.ContentDigest.verify_components(covered, body):
        return
    if body:
        raise hms.InvalidSignature("The message body requires a signed Content-Digest")


def _reason(exc: Exception) -> str:
    # The library wraps cryptography's InvalidSignature (empty message) in its own.
    text = str(exc).strip()
    cause = exc.__cause__ or exc.__context__
    if (
        not text
        or text == "Signature verification failed"
        or (cause is not None and type(cause).__name__ == "InvalidSignature" and not str(cause))
    ):
        return "signature does not verify with the presented key"
    if "Multiple signatures found" in text:
        return "request must carry exactly one signature"
    return text
