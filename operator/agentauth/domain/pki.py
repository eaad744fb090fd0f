"""Certificate authorities and TLS serving certificates, in memory (pure: no file or network I/O).

Every CA the project makes (the webhook CA, the embedded control plane's dev CA, test CAs) and
every serving certificate they sign comes from here, so they all share one profile.

Guarantees:
- Keys are ECDSA P-256; certificates are signed with SHA-256.
- A CA is self-signed, has ``BasicConstraints(ca=True, path_length=0)`` (critical: it signs leaf
  certificates only), ``KeyUsage`` digitalSignature + keyCertSign + cRLSign (critical) and a
  subject key identifier.
- A serving certificate has ``BasicConstraints(ca=False)`` (critical), ``ExtendedKeyUsage``
  serverAuth, the authority key identifier of its CA, and a SubjectAlternativeName with one entry
  per host: an ``IPAddress`` when the host parses as an IPv4/IPv6 address, a ``DNSName``
  otherwise. Its common name is the first host unless one is given.
- Validity starts five minutes before ``now`` (clock skew between issuer and verifier) and ends
  at ``now + lifetime``; callers pass ``now`` so results are reproducible in tests.
- A CA key that is not ECDSA is refused with :class:`PkiError` (never silently used).
"""

from __future__ import annotations

import dataclasses
import datetime
import ipaddress
from collections.abc import Iterable, Sequence

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

CA_LIFETIME = datetime.timedelta(days=3650)
SERVER_LIFETIME = datetime.timedelta(days=365)
# Verifiers whose clock runs a little behind the issuer's still accept a fresh certificate.
BACKDATE = datetime.timedelta(minutes=5)


class PkiError(ValueError):
    """PEM material that cannot be used as asked (wrong key type, no hosts, ...)."""


@dataclasses.dataclass(frozen=True)
class KeyPair:
    """A certificate with its private key."""

    certificate: x509.Certificate
    key: ec.EllipticCurvePrivateKey

    @property
    def certificate_pem(self) -> bytes:
        return certificate_pem(self.certificate)

    @property
    def key_pem(self) -> bytes:
        return private_key_pem(self.key)


def certificate_pem(certificate: x509.Certificate) -> bytes:
    return certificate.public_bytes(serialization.Encoding.PEM)


def private_key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    """Unencrypted PKCS#8 PEM (the files are protected by their permissions, not a password)."""
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def load_authority(certificate: bytes, key: bytes) -> KeyPair:
    """A CA from its PEM certificate and PEM private key; :class:`PkiError` unless ECDSA."""
    signer = serialization.load_pem_private_key(key, password=None)
    if not isinstance(signer, ec.EllipticCurvePrivateKey):
        raise PkiError("CA key is not an ECDSA key")
    return KeyPair(x509.load_pem_x509_certificate(certificate), signer)


def subject_alternative_names(hosts: Iterable[str]) -> list[x509.GeneralName]:
    """One SAN entry per host: an IP address when it parses as one, a DNS name otherwise."""
    names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    return names


def covers(certificate: x509.Certificate, hosts: Iterable[str]) -> bool:
    """Whether every host is among the certificate's SubjectAlternativeName entries."""
    try:
        present = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        return False
    return set(subject_alternative_names(hosts)).issubset(set(present.value))


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def new_ca(
    common_name: str,
    *,
    now: datetime.datetime,
    lifetime: datetime.timedelta = CA_LIFETIME,
) -> KeyPair:
    """A fresh self-signed CA that may sign leaf certificates (not intermediates)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = _name(common_name)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(now + lifetime)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return KeyPair(certificate, key)


def issue_server_certificate(
    ca: KeyPair,
    *,
    hosts: Sequence[str],
    now: datetime.datetime,
    lifetime: datetime.timedelta = SERVER_LIFETIME,
    common_name: str | None = None,
) -> KeyPair:
    """A fresh key and a serverAuth certificate for ``hosts`` signed by ``ca``."""
    if not hosts:
        raise PkiError("a serving certificate needs at least one host")
    key = ec.generate_private_key(ec.SECP256R1())
    certificate = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name if common_name is not None else hosts[0]))
        .issuer_name(ca.certificate.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(now + lifetime)
        .add_extension(
            x509.SubjectAlternativeName(subject_alternative_names(hosts)), critical=False
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()),
            critical=False,
        )
        .sign(ca.key, hashes.SHA256())
    )
    return KeyPair(certificate, key)
