"""The issuer's Ed25519 signing keys: generation, rotation, Secret (de)serialisation, JWKS.

Guarantees:
- Exactly one key is current (signs new tokens); ``kid`` is the key's RFC 7638 thumbprint, so
  it is unique and stable across processes.
- ``rotate`` makes a new current key once the current one is ``rotation_interval`` old and keeps
  every retired key in the set (and so in the public JWKS) for ``retention`` after retirement;
  ``retention`` may not be shorter than the longest token lifetime (``MAX_TOKEN_LIFETIME``), so
  no token we issued ever loses its verification key before it expires.
- Private keys only ever leave this module through ``to_secret_data`` (the controller writes it
  into the ``agentauth-issuer-keys`` Secret, data key ``keys.json``); ``public_jwks`` never
  contains private material.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from agentauth.domain import jose

SECRET_NAME = "agentauth-issuer-keys"
SECRET_DATA_KEY = "keys.json"
MAX_TOKEN_LIFETIME = timedelta(hours=1)
DEFAULT_ROTATION_INTERVAL = timedelta(days=1)
DEFAULT_RETENTION = timedelta(hours=2)
_FORMAT_VERSION = 1


class KeySetError(ValueError):
    """The key set (or its Secret data) is malformed or violates the rotation rules."""


@dataclass(frozen=True, slots=True)
class IssuerKey:
    """One Ed25519 key. ``retired_at`` is None for the current key."""

    kid: str
    private_key: ed25519.Ed25519PrivateKey
    created_at: datetime
    retired_at: datetime | None = None

    @property
    def public_key(self) -> ed25519.Ed25519PublicKey:
        return self.private_key.public_key()

    def public_jwk(self, *, algorithm: str = "EdDSA") -> dict[str, str]:
        """The public JWK; ``alg`` is the name tokens are issued under (``EdDSA`` or
        ``Ed25519``), since verifiers such as the JavaScript ``jose`` package select keys by it."""
        if algorithm not in jose.ED25519_ALGORITHMS:
            raise KeySetError(f"issuer keys sign EdDSA/Ed25519, not {algorithm!r}")
        jwk = jose.ed25519_jwk(self.public_key)
        return {**jwk, "kid": self.kid, "use": "sig", "alg": algorithm}


def new_key(*, now: datetime) -> IssuerKey:
    private = ed25519.Ed25519PrivateKey.generate()
    kid = jose.jwk_thumbprint(jose.ed25519_jwk(private.public_key()))
    return IssuerKey(kid=kid, private_key=private, created_at=now)


@dataclass(frozen=True, slots=True)
class KeySet:
    """The current key plus retired keys still published for verification."""

    keys: tuple[IssuerKey, ...]
    _current: IssuerKey = field(init=False, repr=False, compare=False)
    """The one key with ``retired_at`` None, found once (every minted token asks for it)."""

    def __post_init__(self) -> None:
        current = [k for k in self.keys if k.retired_at is None]
        if len(current) != 1:
            raise KeySetError(f"a key set needs exactly one current key, found {len(current)}")
        if len({k.kid for k in self.keys}) != len(self.keys):
            raise KeySetError("duplicate kid in key set")
        object.__setattr__(self, "_current", current[0])

    def signing_key(self) -> IssuerKey:
        """The current key; new tokens are signed with it."""
        return self._current

    def verification_key(self, kid: str) -> ed25519.Ed25519PublicKey:
        """The public key for ``kid``; raises ``jose.UnknownKeyId`` (an ``InvalidGrant``)."""
        for key in self.keys:
            if key.kid == kid:
                return key.public_key
        raise jose.UnknownKeyId(kid)

    def public_keys(self) -> jose.PublicKeySet:
        return jose.PublicKeySet({k.kid: k.public_key for k in self.keys})

    def public_jwks(self, *, algorithm: str = "EdDSA") -> dict[str, Any]:
        """The JWKS document served at ``/jwks``: current key first, public members only,
        each with ``alg`` = ``algorithm`` (the name the token service issues tokens under)."""
        ordered = sorted(self.keys, key=lambda k: (k.retired_at is not None, k.created_at))
        return {"keys": [k.public_jwk(algorithm=algorithm) for k in ordered]}

    def to_secret_data(self) -> dict[str, str]:
        """The Secret's ``data`` (base64 values): one JSON document under ``keys.json``."""
        document = {
            "version": _FORMAT_VERSION,
            "keys": [
                {
                    "kid": k.kid,
                    "privateKey": jose.b64url_encode(
                        k.private_key.private_bytes(
                            serialization.Encoding.Raw,
                            serialization.PrivateFormat.Raw,
                            serialization.NoEncryption(),
                        )
                    ),
                    "createdAt": _iso(k.created_at),
                    "retiredAt": _iso(k.retired_at) if k.retired_at else None,
                }
                for k in self.keys
            ],
        }
        raw = json.dumps(document, separators=(",", ":"), sort_keys=True).encode("utf-8")
        return {SECRET_DATA_KEY: base64.b64encode(raw).decode("ascii")}

    @classmethod
    def from_secret_data(cls, data: Mapping[str, str]) -> KeySet:
        """Inverse of ``to_secret_data``; raises ``KeySetError`` for anything malformed."""
        try:
            document = json.loads(base64.b64decode(data[SECRET_DATA_KEY], validate=True))
            keys = []
            for entry in document["keys"]:
                private = ed25519.Ed25519PrivateKey.from_private_bytes(
                    jose.b64url_decode(entry["privateKey"])
                )
                kid = jose.jwk_thumbprint(jose.ed25519_jwk(private.public_key()))
                if kid != entry["kid"]:
                    raise KeySetError("kid does not match the key's thumbprint")
                retired = entry.get("retiredAt")
                keys.append(
                    IssuerKey(
                        kid=kid,
                        private_key=private,
                        created_at=_parse_iso(entry["createdAt"]),
                        retired_at=_parse_iso(retired) if retired else None,
                    )
                )
        except KeySetError:
            raise
        except Exception as exc:  # any decoding problem means the Secret is unusable
            raise KeySetError(f"malformed issuer key Secret: {type(exc).__name__}") from exc
        return cls(keys=tuple(keys))


def generate_keyset(*, now: datetime) -> KeySet:
    return KeySet(keys=(new_key(now=now),))


def rotate(
    keyset: KeySet, *, now: datetime, rotation_interval: timedelta, retention: timedelta
) -> KeySet:
    """Rotate when the current key is ``rotation_interval`` old; drop keys retired for longer
    than ``retention``. Returns the same object when nothing changes (callers skip the write).
    """
    if retention < MAX_TOKEN_LIFETIME:
        raise KeySetError(f"retention {retention} is shorter than the max token lifetime")
    keys = list(keyset.keys)
    current = keyset.signing_key()
    changed = False
    if now - current.created_at >= rotation_interval:
        keys = [replace(k, retired_at=now) if k is current else k for k in keys]
        keys.append(new_key(now=now))
        changed = True
    kept = [k for k in keys if k.retired_at is None or now - k.retired_at < retention]
    if len(kept) != len(keys):
        changed = True
    return KeySet(keys=tuple(kept)) if changed else keyset


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _parse_iso(text: str) -> datetime:
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
