"""Ed25519 key pairs for agents with registered keys (``kubectl agentauth keys generate``).

Guarantees: :func:`generate_key_pair` creates the private key file with mode 0600 and refuses
to overwrite an existing file unless asked; the returned JWKS snippet holds only the public key
(``kty``, ``crv``, ``x``, ``kid``, ``alg``, ``use``) with ``kid`` = its RFC 7638 thumbprint.
:func:`load_private_key` refuses files readable by group or others and non-Ed25519 keys.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from agentauth.domain import signatures
from agentauth.sdk import errors


@dataclass(frozen=True, slots=True)
class KeyPair:
    """A generated key pair: where the private key went and the JWKS to register."""

    private_key_path: Path
    kid: str
    public_jwk: dict[str, str]

    @property
    def jwks(self) -> dict[str, Any]:
        """The ``spec.publicKeys`` value to paste into the Agent."""
        return {"keys": [self.public_jwk]}


def public_jwk_with_kid(
    key: ed25519.Ed25519PrivateKey | ed25519.Ed25519PublicKey,
) -> dict[str, str]:
    jwk = signatures.public_jwk(key)
    return {**jwk, "kid": signatures.jwk_thumbprint(jwk), "alg": "EdDSA", "use": "sig"}


def generate_key_pair(*, private_key_path: Path | str, overwrite: bool = False) -> KeyPair:
    """Generate an Ed25519 key pair, write the private key (PKCS#8 PEM, mode 0600)."""
    path = Path(private_key_path)
    key = ed25519.Ed25519PrivateKey.generate()
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    flags = os.O_WRONLY | os.O_CREAT | (os.O_TRUNC if overwrite else os.O_EXCL)
    try:
        fd = os.open(path, flags, 0o600)
    except FileExistsError:
        raise errors.ConfigurationError(
            f"{path} already exists; refusing to overwrite a private key"
        ) from None
    with os.fdopen(fd, "wb") as handle:
        os.fchmod(handle.fileno(), 0o600)  # an existing file keeps its mode under O_TRUNC
        handle.write(pem)
    jwk = public_jwk_with_kid(key)
    return KeyPair(private_key_path=path, kid=jwk["kid"], public_jwk=jwk)


def load_private_key(path: Path | str) -> ed25519.Ed25519PrivateKey:
    """Load an Ed25519 private key written by :func:`generate_key_pair` (PEM, PKCS#8)."""
    path = Path(path)
    try:
        mode = path.stat().st_mode
        data = path.read_bytes()
    except OSError as exc:
        raise errors.ConfigurationError(f"cannot read private key {path}: {exc.strerror}") from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise errors.ConfigurationError(
            f"private key {path} is accessible by group or others (mode {oct(mode & 0o777)}); "
            "chmod 600 it"
        )
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError):
        raise errors.ConfigurationError(f"{path} is not a PEM private key") from None
    if not isinstance(key, ed25519.Ed25519PrivateKey):
        raise errors.ConfigurationError(f"{path} is not an Ed25519 private key")
    return key
