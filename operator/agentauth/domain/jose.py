"""Minimal, strict compact JWS (RFC 7515) parsing and verification with an explicit allow-list.

Guarantees:
- A token is rejected before any crypto when it is larger than ``MAX_TOKEN_BYTES``, is not three
  base64url segments (unpadded, RFC 7515 section 2), or its header/payload is not a JSON object.
- ``alg`` must be in the caller's allow-list; ``none`` and every ``HS*`` algorithm are refused
  unconditionally, so a public key can never be used as an HMAC secret.
- The verification key is chosen by ``kid`` and its type must match the algorithm family
  (RSA for RS*/PS*, EC P-256/384 for ES*, Ed25519 for EdDSA).
- Verification failures raise ``errors.InvalidGrant`` (``UnknownKeyId`` for a ``kid`` that is not
  in the key set, so a caller may refresh its JWKS once and retry).
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from agentauth.domain import errors, strictjson

MAX_TOKEN_BYTES = 16 * 1024
"""Upper bound for any JWT we parse; Kubernetes, cloud and our own tokens are a few KiB."""

FORBIDDEN_ALGORITHMS = frozenset({"none", "HS256", "HS384", "HS512"})
ASYMMETRIC_ALGORITHMS = frozenset(
    {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "EdDSA"}
)

_HASHES: dict[str, type[hashes.HashAlgorithm]] = {
    "256": hashes.SHA256,
    "384": hashes.SHA384,
    "512": hashes.SHA512,
}
_EC_CURVES: dict[str, tuple[type[ec.EllipticCurve], int]] = {
    "ES256": (ec.SECP256R1, 32),
    "ES384": (ec.SECP384R1, 48),
}

PublicKey = rsa.RSAPublicKey | ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey


class UnknownKeyId(errors.InvalidGrant):
    """The token's ``kid`` is not in the key set (the caller may refresh its JWKS and retry)."""

    def __init__(self, kid: str) -> None:
        super().__init__(f"token signed with unknown key id {kid!r}")
        self.kid = kid


def b64url_decode(segment: str) -> bytes:
    """Strict unpadded base64url decoding; raises ``InvalidGrant`` on anything else."""
    # "+", "/" and "=" are not base64url; translating first would let them through, so refuse
    # them explicitly, then decode with validation (which refuses every other stray byte).
    if "+" in segment or "/" in segment or "=" in segment or len(segment) % 4 == 1:
        raise errors.InvalidGrant("token is not valid base64url")
    try:
        return base64.b64decode(
            segment.replace("-", "+").replace("_", "/") + "=" * (-len(segment) % 4), validate=True
        )
    except (binascii.Error, ValueError) as exc:
        raise errors.InvalidGrant("token is not valid base64url") from exc


def b64url_encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


@dataclass(frozen=True, slots=True)
class ParsedJWS:
    """A compact JWS split and decoded but NOT yet verified."""

    header: dict[str, Any]
    payload: dict[str, Any]
    signing_input: bytes
    signature: bytes


def _json_object(raw: bytes, what: str) -> dict[str, Any]:
    try:
        value = strictjson.loads(raw)
    except (UnicodeDecodeError, ValueError) as exc:
        raise errors.InvalidGrant(f"token {what} is not valid JSON") from exc
    if not isinstance(value, dict):
        raise errors.InvalidGrant(f"token {what} is not a JSON object")
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
        raise errors.InvalidRequest(f"token exceeds {MAX_TOKEN_BYTES} bytes")
    parts = token.split(".")
    if len(parts) != 3:
        raise errors.InvalidGrant("token is not a compact JWS (expected three segments)")
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


def check_algorithm(header: Mapping[str, Any], *, allowed: Iterable[str]) -> str:
    """Return the header's ``alg`` when it is allowed; ``none``/``HS*`` are never allowed."""
    alg = header.get("alg")
    if not isinstance(alg, str):
        raise errors.InvalidGrant("token header has no alg")
    if alg in FORBIDDEN_ALGORITHMS or alg not in allowed or alg not in ASYMMETRIC_ALGORITHMS:
        raise errors.InvalidGrant(f"token algorithm {alg!r} is not allowed")
    return alg


def verify_signature(parsed: ParsedJWS, *, alg: str, key: PublicKey) -> None:
    """Verify ``parsed.signature`` with ``key`` for ``alg``; raise ``InvalidGrant`` on failure."""
    data, sig = parsed.signing_input, parsed.signature
    try:
        if alg == "EdDSA":
            if not isinstance(key, ed25519.Ed25519PublicKey):
                raise errors.InvalidGrant("token key type does not match algorithm EdDSA")
            key.verify(sig, data)
        elif alg[:2] in ("RS", "PS"):
            if not isinstance(key, rsa.RSAPublicKey):
                raise errors.InvalidGrant(f"token key type does not match algorithm {alg}")
            digest = _HASHES[alg[2:]]()
            pad: padding.AsymmetricPadding = (
                padding.PKCS1v15()
                if alg[:2] == "RS"
                else padding.PSS(mgf=padding.MGF1(digest), salt_length=digest.digest_size)
            )
            key.verify(sig, data, pad, digest)
        else:
            curve, size = _EC_CURVES[alg]
            if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, curve):
                raise errors.InvalidGrant(f"token key type does not match algorithm {alg}")
            if len(sig) != 2 * size:
                raise errors.InvalidGrant("token signature is invalid")
            der = encode_dss_signature(
                int.from_bytes(sig[:size], "big"), int.from_bytes(sig[size:], "big")
            )
            key.verify(der, data, ec.ECDSA(_HASHES[alg[2:]]()))
    except InvalidSignature as exc:
        raise errors.InvalidGrant("token signature is invalid") from exc


def public_key_from_jwk(jwk: Mapping[str, Any]) -> PublicKey:
    """Load a public JWK (RSA, EC P-256/P-384, OKP Ed25519); private members are ignored."""
    kty = jwk.get("kty")
    try:
        if kty == "RSA":
            n = int.from_bytes(b64url_decode(str(jwk["n"])), "big")
            e = int.from_bytes(b64url_decode(str(jwk["e"])), "big")
            return rsa.RSAPublicNumbers(e, n).public_key()
        if kty == "EC":
            curves: dict[str, ec.EllipticCurve] = {"P-256": ec.SECP256R1(), "P-384": ec.SECP384R1()}
            curve = curves[str(jwk["crv"])]
            x = int.from_bytes(b64url_decode(str(jwk["x"])), "big")
            y = int.from_bytes(b64url_decode(str(jwk["y"])), "big")
            return ec.EllipticCurvePublicNumbers(x, y, curve).public_key()
        if kty == "OKP" and jwk.get("crv") == "Ed25519":
            return ed25519.Ed25519PublicKey.from_public_bytes(b64url_decode(str(jwk["x"])))
    except (KeyError, ValueError, errors.InvalidGrant) as exc:
        raise ValueError(f"malformed {kty} JWK") from exc
    raise ValueError(f"unsupported JWK key type {kty!r}")


def ed25519_jwk(key: ed25519.Ed25519PublicKey) -> dict[str, str]:
    from cryptography.hazmat.primitives import serialization

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
        raise ValueError(f"unsupported JWK key type {jwk.get('kty')!r}")
    canonical = json.dumps({m: jwk[m] for m in members}, separators=(",", ":"), sort_keys=True)
    return b64url_encode(hashlib.sha256(canonical.encode("utf-8")).digest())


class PublicKeySet:
    """Public verification keys by ``kid``, parsed once from a JWKS document."""

    def __init__(self, keys: Mapping[str, PublicKey]) -> None:
        self._keys = dict(keys)

    @classmethod
    def from_jwks(cls, jwks: Mapping[str, Any]) -> PublicKeySet:
        """Parse ``{"keys": [...]}``; keys without ``kid`` or of unsupported types are skipped."""
        loaded: dict[str, PublicKey] = {}
        for jwk in jwks.get("keys", []):
            if not isinstance(jwk, Mapping) or not isinstance(jwk.get("kid"), str):
                continue
            if jwk.get("use") not in (None, "sig"):
                continue
            try:
                loaded[jwk["kid"]] = public_key_from_jwk(jwk)
            except ValueError:
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


def verify(token: str, *, keys: PublicKeySet, allowed_algorithms: Iterable[str]) -> ParsedJWS:
    """Parse, check the algorithm against the allow-list, find the key by kid, verify."""
    parsed = parse(token)
    alg = check_algorithm(parsed.header, allowed=allowed_algorithms)
    kid = parsed.header.get("kid")
    if not isinstance(kid, str) or not kid:
        raise errors.InvalidGrant("token header has no kid")
    verify_signature(parsed, alg=alg, key=keys.get(kid))
    return parsed


def check_registered_claims(
    claims: Mapping[str, Any],
    *,
    issuers: Iterable[str],
    audience: str | None,
    now: float,
    leeway: float,
) -> None:
    """Require ``iss`` in ``issuers``, ``aud`` containing ``audience`` (when given), ``exp``
    in the future, and ``nbf``/``iat`` not in the future, each with at most ``leeway`` seconds.
    """
    iss = claims.get("iss")
    if not isinstance(iss, str) or iss not in set(issuers):
        raise errors.InvalidGrant("token issuer is not trusted")
    if audience is not None:
        aud = claims.get("aud")
        audiences = [aud] if isinstance(aud, str) else aud if isinstance(aud, list) else None
        if audiences is None:
            raise errors.InvalidGrant("token has no aud claim")
        if audience not in audiences:
            raise errors.InvalidGrant("token audience does not include this issuer")
    exp = claims.get("exp")
    if not isinstance(exp, int | float) or isinstance(exp, bool):
        raise errors.InvalidGrant("token has no exp claim")
    if not math.isfinite(exp):  # NaN compares false with everything: it would never expire
        raise errors.InvalidGrant("token exp claim is not a finite number")
    if now >= exp + leeway:
        raise errors.InvalidGrant("token has expired")
    for name in ("nbf", "iat"):
        value = claims.get(name)
        if value is None:
            continue
        if (
            not isinstance(value, int | float)
            or isinstance(value, bool)
            or not math.isfinite(value)
        ):
            raise errors.InvalidGrant(f"token {name} claim is not a number")
        if value > now + leeway:
            raise errors.InvalidGrant("token is not yet valid")
