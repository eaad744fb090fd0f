"""The admission webhook's TLS material: a CA the controller manages and a serving certificate.

Guarantees:
- The CA and serving certificate live in the Secret ``agentauth-webhook-tls`` in the controller's
  namespace (``ca.crt``, ``ca.key``, ``tls.crt``, ``tls.key``), created if absent (a lost create
  race reads the winner's), so a restarted controller keeps serving with the CA already in the
  webhook configurations.
- The serving certificate is re-issued (same CA) when it does not cover the configured DNS names /
  IPs or has less than 30 days left; the CA (ECDSA P-256, 10 years) is only replaced if unusable.
- Keys are generated with ``cryptography``; nothing is written to disk except the temporary
  files ``ssl`` needs to load a certificate chain, readable only by this user.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime
import ipaddress
import logging
import os
import ssl
import tempfile
from collections.abc import Sequence
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from agentauth.kube import client as kube

logger = logging.getLogger("agentauth.controller.tls")

CA_LIFETIME = datetime.timedelta(days=3650)
CERT_LIFETIME = datetime.timedelta(days=365)
RENEW_BEFORE = datetime.timedelta(days=30)


@dataclasses.dataclass(frozen=True)
class Material:
    """PEM-encoded CA and serving certificate with its key."""

    ca_crt: bytes
    ca_key: bytes
    tls_crt: bytes
    tls_key: bytes

    def to_secret_data(self) -> dict[str, str]:
        return {
            name: base64.b64encode(value).decode("ascii")
            for name, value in (
                ("ca.crt", self.ca_crt),
                ("ca.key", self.ca_key),
                ("tls.crt", self.tls_crt),
                ("tls.key", self.tls_key),
            )
        }

    @classmethod
    def from_secret_data(cls, data: dict[str, str]) -> Material:
        decoded = {k: base64.b64decode(v) for k, v in data.items()}
        return cls(decoded["ca.crt"], decoded["ca.key"], decoded["tls.crt"], decoded["tls.key"])

    def ssl_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        with tempfile.TemporaryDirectory(prefix="agentauth-webhook-") as directory:
            cert_path = os.path.join(directory, "tls.crt")
            key_path = os.path.join(directory, "tls.key")
            for path, content in (
                (cert_path, self.tls_crt + self.ca_crt),
                (key_path, self.tls_key),
            ):
                descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                with os.fdopen(descriptor, "wb") as handle:
                    handle.write(content)
            context.load_cert_chain(cert_path, key_path)
        return context


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _san(hosts: Sequence[str]) -> x509.SubjectAlternativeName:
    names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    return x509.SubjectAlternativeName(names)


def new_ca(*, now: datetime.datetime) -> tuple[bytes, bytes]:
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name("agentauth-webhook-ca"))
        .issuer_name(_name("agentauth-webhook-ca"))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + CA_LIFETIME)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM), _pem_key(key)


def issue(
    *, ca_crt: bytes, ca_key: bytes, hosts: Sequence[str], now: datetime.datetime
) -> tuple[bytes, bytes]:
    ca_cert = x509.load_pem_x509_certificate(ca_crt)
    signer = serialization.load_pem_private_key(ca_key, password=None)
    if not isinstance(signer, ec.EllipticCurvePrivateKey):
        raise ValueError("webhook CA key is not an ECDSA key")
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(hosts[0]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + CERT_LIFETIME)
        .add_extension(_san(hosts), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(signer, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM), _pem_key(key)


def needs_reissue(material: Material, *, hosts: Sequence[str], now: datetime.datetime) -> bool:
    cert = x509.load_pem_x509_certificate(material.tls_crt)
    if cert.not_valid_after_utc - now < RENEW_BEFORE:
        return True
    try:
        present = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return True
    wanted = set(_san(hosts))
    return not wanted.issubset(set(present))


def generate(*, hosts: Sequence[str], now: datetime.datetime) -> Material:
    ca_crt, ca_key = new_ca(now=now)
    tls_crt, tls_key = issue(ca_crt=ca_crt, ca_key=ca_key, hosts=hosts, now=now)
    return Material(ca_crt, ca_key, tls_crt, tls_key)


async def ensure(
    api: kube.KubeClient,
    *,
    namespace: str,
    secret_name: str,
    hosts: Sequence[str],
    now: datetime.datetime,
) -> Material:
    """The webhook TLS material from the Secret, created or re-issued as needed."""
    secret: dict[str, Any] | None
    try:
        secret = await api.get(kube.SECRETS, secret_name, namespace=namespace)
    except kube.ApiError as exc:
        if exc.code != 404:
            raise
        secret = None
    if secret is None:
        material = generate(hosts=hosts, now=now)
        body = {
            "apiVersion": "v1",
            "kind": "Secret",
            "type": "kubernetes.io/tls",
            "metadata": {
                "name": secret_name,
                "namespace": namespace,
                "labels": {"app.kubernetes.io/part-of": "agentauth"},
            },
            "data": material.to_secret_data(),
        }
        try:
            await api.create(kube.SECRETS, body, namespace=namespace)
            return material
        except kube.ApiError as exc:
            if exc.code != 409:
                raise
            secret = await api.get(kube.SECRETS, secret_name, namespace=namespace)
    material = Material.from_secret_data(secret.get("data") or {})
    if needs_reissue(material, hosts=hosts, now=now):
        tls_crt, tls_key = issue(
            ca_crt=material.ca_crt, ca_key=material.ca_key, hosts=hosts, now=now
        )
        material = dataclasses.replace(material, tls_crt=tls_crt, tls_key=tls_key)
        secret["data"] = material.to_secret_data()
        try:
            await api.replace(kube.SECRETS, secret, namespace=namespace)
        except kube.ApiError as exc:
            if exc.code != 409:
                raise
            # Another writer re-issued meanwhile; its certificate is signed by the same CA.
            logger.info("webhook certificate re-issued concurrently; serving our own copy")
    return material
