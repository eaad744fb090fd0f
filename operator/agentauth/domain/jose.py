"""JWS (RFC 7515) and JWT verification and signing on pyjwt, behind a strict wrapper.

pyjwt's algorithm implementations verify and make every signature and load every JWK; this
module is the thin wrapper that adds what agentauth requires of them.

Guarantees:
- A token is rejected before any crypto when it is larger than ``MAX_TOKEN_BYTES``
  (:class:`TokenTooLarge`, an ``invalid_request``), is not three unpadded base64url segments
  (RFC 7515 section 2; pyjwt would accept padding), or its header/payload is not a JSON object
  of RFC 8259 (``strictjson``: no ``NaN``/``Infinity``, which slip through time checks).
- ``alg`` must be in the caller's allow-list; ``none`` and every ``HS*`` algorithm are refused
  unconditionally, so a public key can never be used as an HMAC secret.  ``EdDSA`` and its
  fully specified name ``Ed25519`` (RFC 9864) both mean Ed25519 and are accepted wherever
  either is allowed (:func:`allowing_ed25519_names`); pyjwt knows only ``EdDSA``, so
  ``Ed25519`` is registered on this module's own ``PyJWS`` instance (never globally).
- The verification key is chosen by ``kid`` and its type must match the algorithm family
  (RSA for RS*/PS*, EC P-256/P-384 for ES256/ES384, Ed25519 for EdDSA/Ed25519).
- Every failure raises a :class:`JoseError`, one class per reason (the pyjwt way:
  ``MalformedToken``, ``AlgorithmNotAllowed``, ``KeyTypeMismatch``, ``BadSignature``,
  ``UnknownKeyId``, ``UnsupportedJwk`` and one class per registered-claim check).  The tree is
  rooted in ``errors.InvalidGrant`` so that every caller that answers OAuth errors keeps doing
  so unchanged (``UnknownKeyId`` in particular lets a caller refresh its JWKS once and retry);
  callers with a more precise OAuth meaning catch the typed classes and translate them.
"""

from __future__ import annotations

import binascii
import functools
import hashlib
import json
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from jwt import algorithms as jwt_algorithms

from agentauth.domain import errors, strictjson

try:  # the operator's install has it: 4 us less per signed token, 3 us per parsed one
    import orjson
except ImportError:  # pragma: no cover - the SDK's base install: the standard library's encoder
    orjson = None  # type: ignore[assignment]

MAX_TOKEN_BYTES = 16 * 1024
"""Upper bound for any JWT we parse; Kubernetes, cloud and our own tokens are a few KiB."""

ED25519_ALGORITHMS = frozenset({"EdDSA", "Ed25519"})
"""The two names of Ed25519 signatures: ``EdDSA`` (RFC 8037) and ``Ed25519`` (RFC 9864)."""

FORBIDDEN_ALGORITHMS = frozenset({"none", "HS256", "HS384", "HS512"})
ASYMMETRIC_ALGORITHMS = frozenset(
    {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384"} | ED25519_ALGORITHMS
)

PublicKey = rsa.RSAPublicKey | ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey
PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey

# pyjwt with exactly the asymmetric algorithms allowed here, plus the RFC 9864 name.
_JWS = jwt.PyJWS(algorithms=sorted(ASYMMETRIC_ALGORITHMS - {"Ed25519"}))
_JWS.register_algorithm("Ed25519", jwt_algorithms.OKPAlgorithm())
_ALGORITHMS: dict[str, jwt_algorithms.Algorithm] = {
    name: _JWS.get_algorithm_by_name(name) for name in ASYMMETRIC_ALGORITHMS
}
_EC_CURVES: dict[str, type[ec.EllipticCurve]] = {"ES256": ec.SECP256R1, "ES384": ec.SECP384R1}
_JWK_CURVES = {"EC": ("P-256", "P-384"), "OKP": ("Ed25519",)}
_PRIVATE_MEMBERS = frozenset({"d", "p", "q", "dp", "dq", "qi", "oth", "k"})


# --------------------------------------------------------------------------- errors


class JoseError(errors.InvalidGrant):
    """A JWS or JWT failed a check of this module (see the module docstring on the root)."""


class TokenTooLarge(errors.InvalidRequest, JoseError):
    """The token is larger than :data:`MAX_TOKEN_BYTES` (``invalid_request``)."""


class MalformedToken(JoseError):
    """Not a compact JWS of base64url segments with JSON-object header and payload."""


class AlgorithmNotAllowed(JoseError):
    """``alg`` is missing, forbidden, or not in the caller's allow-list."""


class KeyTypeMismatch(JoseError):
    """The key found by ``kid`` is not of the family ``alg`` needs."""


class BadSignature(JoseError):
    """The signature does not verify."""


class UnknownKeyId(JoseError):
    """The token's ``kid`` is not in the key set (the caller may refresh its JWKS and retry)."""

    def __init__(self, kid: str) -> None:
        super().__init__(f"token signed with unknown key id {kid!r}")
        self.kid = kid


class MissingKeyId(JoseError):
    """The header has no ``kid`` where one is needed to choose the key."""


class UnsupportedJwk(JoseError, ValueError):
    """A JWK this module cannot load (type, curve or members); also a ``ValueError``."""


class InvalidClaim(JoseError):
    """A registered claim is missing or malformed; ``claim`` names it."""

    def __init__(self, description: str, *, claim: str) -> None:
        super().__init__(description)
        self.claim = claim


class UntrustedIssuer(InvalidClaim):
    """``iss`` is not one of the trusted issuers."""


class WrongAudience(InvalidClaim):
    """``aud`` does not contain the expected audience."""


class Expired(InvalidClaim):
    """``exp`` has passed (beyond the leeway)."""


class NotYetValid(InvalidClaim):
    """``nbf`` or ``iat`` lies in the future (beyond the leeway)."""


# --------------------------------------------------------------------------- base64url


def b64url_decode(segment: str) -> bytes:
    """Strict unpadded base64url decoding; raises :class:`MalformedToken` on anything else."""
    # "+", "/" and "=" are not base64url; translating first would let them through, so refuse
    # them explicitly, then decode with validation (which refuses every other stray byte).
    if "+" in segment or "/" in segment or "=" in segment or len(segment) % 4 == 1:
        raise MalformedToken("token is not valid base64url")
    try:
        # strict_mode: what b64decode(validate=True) checks, without its regular expression
        return binascii.a2b_base64(
            segment.encode("ascii").translate(_URLSAFE_TO_STANDARD) + _PADDING[len(segment) % 4],
            strict_mode=True,
        )
    except (binascii.Error, ValueError) as exc:  # UnicodeEncodeError is a ValueError
        raise MalformedToken("token is not valid base64url") from exc


_URLSAFE_TO_STANDARD = bytes.maketrans(b"-_", b"+/")
_PADDING = (b"", b"", b"==", b"=")


def b64url_encode(data: bytes) -> str:
    return (
        binascii.b2a_base64(data, newline=False)
        .translate(_STANDARD_TO_URLSAFE)
        .rstrip(b"=")
        .decode("ascii")
    )


_STANDARD_TO_URLSAFE = bytes.maketrans(b"+/", b"-_")


# --------------------------------------------------------------------------- parsing


@dataclass(frozen=True, slots=True)
class ParsedJWS:
    """A compact JWS split and decoded but NOT yet verified."""

    header: dict[str, Any]
    payload: dict[str, Any]
    signing_input: bytes
    signature: bytes


def _json_object(raw: bytes, what: str) -> dict[str, Any]:
    try:
        # JWS and JWT JSON is UTF-8 (RFC 7515 section 5.1, RFC 7519 section 7.2). orjson is as
        # strict as ``strictjson`` (no NaN, Infinity or overflowing numbers, no byte-order mark)
        # and stricter still (no lone surrogates, at most 1024 levels); it reads integers past
        # 64 bits as floats, which compare the same in every claim check.
        value = orjson.loads(raw) if orjson is not None else strictjson.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise MalformedToken(f"token {what} is not valid JSON") from exc
    if not isinstance(value, dict):
        raise MalformedToken(f"token {what} is not a JSON object")
    return value


@functools.lru_cache(maxsize=256)
def _flat_header(segment: str) -> tuple[tuple[str, str | int | bool], ...] | None:
    # An issuer signs every token under one of a few headers ({"alg", "kid", "typ"}), so a
    # header whose values are all scalars is memoised by its exact segment, as immutable
    # pairs; any other header is decoded afresh on every call (None).  Failures raise and are
    # never cached.
    header = _json_object(b64url_decode(segment), "header")
    if all(isinstance(v, str | int | bool) for v in header.values()):
        return tuple(header.items())
    return None


def _header(segment: str) -> dict[str, Any]:
    flat = _flat_header(segment)
    return dict(flat) if flat is not None else _json_object(b64url_decode(segment), "header")


def parse(token: str) -> ParsedJWS:
    """Split and decode a compact JWS without verifying it."""
    if len(token) > MAX_TOKEN_BYTES:
        raise TokenTooLarge(f"token exceeds {MAX_TOKEN_BYTES} bytes")
    parts = token.split(".")
    if len(parts) != 3:
        raise MalformedToken("token is not a compact JWS (expected three segments)")
    header_b64, payload_b64, signature_b64 = parts
    header = _header(header_b64)
    payload = _json_object(b64url_decode(payload_b64), "payload")
    signature = b64url_decode(signature_b64)
    return ParsedJWS(
        header=header,
        payload=payload,
        signing_input=f"{header_b64}.{payload_b64}".encode("ascii"),
        signature=signature,
    )


# --------------------------------------------------------------------------- algorithms, keys


def allowing_ed25519_names(allowed: Iterable[str]) -> frozenset[str]:
    """``allowed`` with both names of Ed25519 when it has either (RFC 9864 section 2.2)."""
    names = frozenset(allowed)
    return names | ED25519_ALGORITHMS if names & ED25519_ALGORITHMS else names


def check_algorithm(header: Mapping[str, Any], *, allowed: Iterable[str]) -> str:
    """Return the header's ``alg`` when it is allowed; ``none``/``HS*`` are never allowed."""
    alg = header.get("alg")
    if not isinstance(alg, str):
        raise AlgorithmNotAllowed("token header has no alg")
    if alg in FORBIDDEN_ALGORITHMS or alg not in allowed or alg not in ASYMMETRIC_ALGORITHMS:
        raise AlgorithmNotAllowed(f"token algorithm {alg!r} is not allowed")
    return alg


def _key_fits(alg: str, key: object) -> bool:
    if alg in ED25519_ALGORITHMS:
        return isinstance(key, ed25519.Ed25519PublicKey)
    if alg[:2] in ("RS", "PS"):
        return isinstance(key, rsa.RSAPublicKey)
    return isinstance(key, ec.EllipticCurvePublicKey) and isinstance(key.curve, _EC_CURVES[alg])


# (alg, key class) -> whether keys of that class fit alg. isinstance against the ``cryptography``
# ABCs costs more than the rest of the check; the answer depends on the class alone, except for
# EC keys, whose curve is looked at every time.
_KEY_CLASS_FITS: dict[tuple[str, type], bool] = {}


def _check_key_type(alg: str, key: object) -> None:
    fits = _KEY_CLASS_FITS.get((alg, type(key)))
    if fits is None:
        fits = _key_fits(alg, key)
        if not alg.startswith("ES"):
            _KEY_CLASS_FITS[(alg, type(key))] = fits
    if not fits:
        raise KeyTypeMismatch(f"token key type does not match algorithm {alg}")


def verify_signature(parsed: ParsedJWS, *, alg: str, key: PublicKey) -> None:
    """Verify ``parsed.signature`` with ``key`` for ``alg`` (pyjwt's implementation of ``alg``,
    after the key family check); raise :class:`BadSignature` when it does not verify."""
    _check_key_type(alg, key)
    if not _ALGORITHMS[alg].verify(parsed.signing_input, key, parsed.signature):
        raise BadSignature("token signature is invalid")


def public_key_from_jwk(jwk: Mapping[str, Any]) -> PublicKey:
    """Load a public JWK (RSA, EC P-256/P-384, OKP Ed25519) with pyjwt; private members are
    ignored, everything else raises :class:`UnsupportedJwk`."""
    kty = jwk.get("kty")
    public = {str(k): v for k, v in jwk.items() if k not in _PRIVATE_MEMBERS}
    if kty == "RSA":
        loader: type[jwt_algorithms.Algorithm] = jwt_algorithms.RSAAlgorithm
    elif kty == "EC":
        loader = jwt_algorithms.ECAlgorithm
    elif kty == "OKP":
        loader = jwt_algorithms.OKPAlgorithm
    else:
        raise UnsupportedJwk(f"unsupported JWK key type {kty!r}")
    if kty in _JWK_CURVES and public.get("crv") not in _JWK_CURVES[kty]:
        raise UnsupportedJwk(f"unsupported {kty} curve {public.get('crv')!r}")
    for member in ("n", "e", "x", "y"):
        value = public.get(member)
        if value is not None and (not isinstance(value, str) or not _B64URL.fullmatch(value)):
            raise UnsupportedJwk(f"malformed {kty} JWK")
    try:
        key = loader.from_jwk(public)
    except (jwt.InvalidKeyError, KeyError, ValueError, TypeError) as exc:
        raise UnsupportedJwk(f"malformed {kty} JWK") from exc
    if not isinstance(key, PublicKey):
        raise UnsupportedJwk(f"malformed {kty} JWK")
    return key


_B64URL = re.compile(r"[A-Za-z0-9_-]+")


def ed25519_jwk(key: ed25519.Ed25519PublicKey) -> dict[str, str]:
    raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return {"kty": "OKP", "crv": "Ed25519", "x": b64url_encode(raw)}


def jwk_thumbprint(jwk: Mapping[str, Any]) -> str:
    """RFC 7638 JWK thumbprint (SHA-256, base64url) over the required members only."""
    required = {
        "RSA": ("e", "kty", "n"),
        "EC": ("crv", "kty", "x", "y"),
        "OKP": ("crv", "kty", "x"),
    }
    members = required.get(str(jwk.get("kty")))
    if members is None:
        raise UnsupportedJwk(f"unsupported JWK key type {jwk.get('kty')!r}")
    canonical = json.dumps({m: jwk[m] for m in members}, separators=(",", ":"), sort_keys=True)
    return b64url_encode(hashlib.sha256(canonical.encode("utf-8")).digest())


class PublicKeySet:
    """Public verification keys by ``kid``, parsed once from a JWKS document."""

    def __init__(self, keys: Mapping[str, PublicKey]) -> None:
        self._keys = dict(keys)

    @classmethod
    def from_jwks(cls, jwks: Mapping[str, Any]) -> PublicKeySet:
        """Parse ``{"keys": [...]}``; keys without ``kid``, of unsupported types or for
        another use than signing are skipped."""
        loaded: dict[str, PublicKey] = {}
        for jwk in jwks.get("keys", []):
            if not isinstance(jwk, Mapping) or not isinstance(jwk.get("kid"), str):
                continue
            if jwk.get("use") not in (None, "sig"):
                continue
            try:
                loaded[jwk["kid"]] = public_key_from_jwk(jwk)
            except UnsupportedJwk:
                continue
        return cls(loaded)

    def get(self, kid: str) -> PublicKey:
        try:
            return self._keys[kid]
        except KeyError:
            raise UnknownKeyId(kid) from None

    def __contains__(self, kid: object) -> bool:
        return kid in self._keys

    def __len__(self) -> int:
        return len(self._keys)


# --------------------------------------------------------------------------- verify, sign


def verify(token: str, *, keys: PublicKeySet, allowed_algorithms: Iterable[str]) -> ParsedJWS:
    """Parse, check the algorithm against the allow-list, find the key by kid, verify."""
    parsed = parse(token)
    verify_parsed(parsed, keys=keys, allowed_algorithms=allowed_algorithms)
    return parsed


def verify_parsed(
    parsed: ParsedJWS, *, keys: PublicKeySet, allowed_algorithms: Iterable[str]
) -> tuple[str, str]:
    """:func:`verify` of a token already parsed: the algorithm against the allow-list, the key
    by kid, the signature. Returns the header's ``alg`` and ``kid``: verifying the same parsed
    token again under the same allow-list is :func:`verify_signature` with them (a header's
    checks are a function of the header alone)."""
    alg = check_algorithm(parsed.header, allowed=allowed_algorithms)
    kid = parsed.header.get("kid")
    if not isinstance(kid, str) or not kid:
        raise MissingKeyId("token header has no kid")
    verify_signature(parsed, alg=alg, key=keys.get(kid))
    return alg, kid


def compact_json(value: Any) -> bytes:
    """``value`` as compact UTF-8 JSON (no whitespace), what is signed: ``orjson`` when it is
    installed (the operator's dependencies), else the standard library (``json.dumps`` with
    ``ensure_ascii``): the same JSON values, byte for byte for ASCII text."""
    if orjson is not None:
        return orjson.dumps(value)
    return json.dumps(value, separators=(",", ":")).encode()


@functools.lru_cache(maxsize=64)
def _header_segment(header: tuple[tuple[str, str], ...]) -> str:
    # An issuer signs every token under one of a few headers: each is encoded once.
    return b64url_encode(json.dumps(dict(header), separators=(",", ":")).encode())


def sign(
    payload: Mapping[str, Any], *, key: PrivateKey, alg: str, headers: Mapping[str, str]
) -> str:
    """A compact JWS of ``payload`` (compact JSON) signed with ``key`` by pyjwt's
    implementation of ``alg``; the protected header is ``alg`` plus ``headers``, members in
    sorted order (as pyjwt writes them)."""
    if alg not in ASYMMETRIC_ALGORITHMS:
        raise AlgorithmNotAllowed(f"token algorithm {alg!r} is not allowed")
    header = _header_segment(tuple(sorted({**headers, "alg": alg}.items())))
    return sign_with_header(payload, key=key, alg=alg, header=header)


def header_segment(*, alg: str, kid: str, typ: str) -> str:
    """The encoded protected header ``{"alg", "kid", "typ"}`` as :func:`sign` writes it."""
    return _header_segment((("alg", alg), ("kid", kid), ("typ", typ)))


def sign_with_header(payload: Mapping[str, Any], *, key: PrivateKey, alg: str, header: str) -> str:
    """:func:`sign` with the encoded protected header already made (:func:`header_segment`);
    ``alg`` must be the header's."""
    if alg not in ASYMMETRIC_ALGORITHMS:
        raise AlgorithmNotAllowed(f"token algorithm {alg!r} is not allowed")
    signing_input = f"{header}.{b64url_encode(compact_json(payload))}"
    signature = _ALGORITHMS[alg].sign(signing_input.encode("ascii"), key)
    return f"{signing_input}.{b64url_encode(signature)}"


# --------------------------------------------------------------------------- claims


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def check_issuer(claims: Mapping[str, Any], *, issuers: Iterable[str]) -> None:
    iss = claims.get("iss")
    trusted = issuers if isinstance(issuers, tuple | frozenset | set) else set(issuers)
    if not isinstance(iss, str) or iss not in trusted:
        raise UntrustedIssuer("token issuer is not trusted", claim="iss")


def check_audience(claims: Mapping[str, Any], *, audience: str) -> None:
    aud = claims.get("aud")
    audiences = [aud] if isinstance(aud, str) else aud if isinstance(aud, list) else None
    if audiences is None:
        raise InvalidClaim("token has no aud claim", claim="aud")
    if audience not in audiences:
        raise WrongAudience("token audience does not include this issuer", claim="aud")


def check_expiry(claims: Mapping[str, Any], *, now: float, leeway: float) -> None:
    exp = claims.get("exp")
    if not isinstance(exp, int | float) or isinstance(exp, bool):
        raise InvalidClaim("token has no exp claim", claim="exp")
    if not math.isfinite(exp):  # NaN compares false with everything: it would never expire
        raise InvalidClaim("token exp claim is not a finite number", claim="exp")
    if now >= exp + leeway:
        raise Expired("token has expired", claim="exp")


def check_not_before(claims: Mapping[str, Any], *, name: str, now: float, leeway: float) -> None:
    """``nbf`` or ``iat`` (``name``), when present, is a number not in the future."""
    value = claims.get(name)
    if value is None:
        return
    if not _is_number(value) or not math.isfinite(value):
        raise InvalidClaim(f"token {name} claim is not a number", claim=name)
    if value > now + leeway:
        raise NotYetValid("token is not yet valid", claim=name)


@dataclass(frozen=True, slots=True)
class Validity:
    """The times of claims that passed :func:`check_registered_claims`: ``exp``, and ``nbf`` and
    ``iat`` when present, each already known to be a finite number. What a later moment needs
    checked of the same claims (their issuer and audience do not change with time)."""

    expires: float
    not_before: float | None
    issued_at: float | None

    def check(self, *, now: float, leeway: float) -> None:
        """What :func:`check_registered_claims` checks of the times at ``now``, in its order and
        with its errors."""
        if now >= self.expires + leeway:
            raise Expired("token has expired", claim="exp")
        if self.not_before is not None and self.not_before > now + leeway:
            raise NotYetValid("token is not yet valid", claim="nbf")
        if self.issued_at is not None and self.issued_at > now + leeway:
            raise NotYetValid("token is not yet valid", claim="iat")


def check_registered_claims(
    claims: Mapping[str, Any],
    *,
    issuers: Iterable[str],
    audience: str | None,
    now: float,
    leeway: float,
) -> Validity:
    """Require ``iss`` in ``issuers``, ``aud`` containing ``audience`` (when given), ``exp``
    in the future, and ``nbf``/``iat`` not in the future, each with at most ``leeway`` seconds;
    the claims' times, checked, are returned for :meth:`Validity.check` at a later moment.
    """
    check_issuer(claims, issuers=issuers)
    if audience is not None:
        check_audience(claims, audience=audience)
    check_expiry(claims, now=now, leeway=leeway)
    check_not_before(claims, name="nbf", now=now, leeway=leeway)
    check_not_before(claims, name="iat", now=now, leeway=leeway)
    return Validity(
        expires=claims["exp"], not_before=claims.get("nbf"), issued_at=claims.get("iat")
    )
