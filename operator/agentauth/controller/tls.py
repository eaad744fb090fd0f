"""The admission webhook's TLS material: a CA the controller manages and a serving certificate.

Guarantees:
- The CA and serving certificate live in the Secret ``agentauth-webhook-tls`` in the controller's
  namespace (``ca.crt``, ``ca.key``, ``tls.crt``, ``tls.key``), created if absent (a lost create
  race reads the winner's), so a restarted controller keeps serving with the CA already in the
  webhook configurations.
- The serving certificate is re-issued (same CA) when it does not cover the configured DNS names /
  IPs or has less than 30 days left; the CA (ECDSA P-256, 10 years) is only replaced if unusable.
- Keys and certificates come from :mod:`agentauth.domain.pki`; nothing is written to disk except
  the temporary files ``ssl`` needs to load a certificate chain, readable only by this user.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime
import logging
import os
import ssl
import tempfile
from collections.abc import Sequence
from typing import Any

from cryptography import x509

from agentauth.domain import pki
from agentauth.kube import client as kube

logger = logging.getLogger("agentauth.controller.tls")

CA_COMMON_NAME = "agentauth-webhook-ca"
CA_LIFETIME = pki.CA_LIFETIME
CERT_LIFETIME = pki.SERVER_LIFETIME
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
        return server_ssl_context(certificate_chain=self.tls_crt + self.ca_crt, key=self.tls_key)


def server_ssl_context(*, certificate_chain: bytes, key: bytes) -> ssl.SSLContext:
    """A TLS 1.2+ server context for PEM material (``ssl`` only loads chains from files)."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    with tempfile.TemporaryDirectory(prefix="agentauth-tls-") as directory:
        cert_path = os.path.join(directory, "tls.crt")
        key_path = os.path.join(directory, "tls.key")
        for path, content in ((cert_path, certificate_chain), (key_path, key)):
            descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(descriptor, "wb") as handle:
                handle.write(content)
        context.load_cert_chain(cert_path, key_path)
    return context


def new_ca(*, now: datetime.datetime) -> tuple[bytes, bytes]:
    ca = pki.new_ca(CA_COMMON_NAME, now=now, lifetime=CA_LIFETIME)
    return ca.certificate_pem, ca.key_pem


def issue(
    *, ca_crt: bytes, ca_key: bytes, hosts: Sequence[str], now: datetime.datetime
) -> tuple[bytes, bytes]:
    ca = pki.load_authority(ca_crt, ca_key)
    served = pki.issue_server_certificate(ca, hosts=hosts, now=now, lifetime=CERT_LIFETIME)
    return served.certificate_pem, served.key_pem


def needs_reissue(material: Material, *, hosts: Sequence[str], now: datetime.datetime) -> bool:
    cert = x509.load_pem_x509_certificate(material.tls_crt)
    if cert.not_valid_after_utc - now < RENEW_BEFORE:
        return True
    return not pki.covers(cert, hosts)


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
