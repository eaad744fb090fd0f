"""The shared PKI profile: real keys, real certificates, real chain verification."""

from __future__ import annotations

import datetime
import ipaddress

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509 import verification
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from agentauth.domain import pki

NOW = datetime.datetime(2026, 11, 28, 12, 0, tzinfo=datetime.UTC)
HOSTS = ("svc", "svc.ns.svc", "127.0.0.1", "::1")


@pytest.fixture(scope="module")
def ca() -> pki.KeyPair:
    return pki.new_ca("test-ca", now=NOW)


@pytest.fixture(scope="module")
def served(ca: pki.KeyPair) -> pki.KeyPair:
    return pki.issue_server_certificate(ca, hosts=HOSTS, now=NOW)


def _verifier(ca: pki.KeyPair, *, at: datetime.datetime = NOW) -> verification.PolicyBuilder:
    return verification.PolicyBuilder().store(verification.Store([ca.certificate])).time(at)


def test_ca_is_a_self_signed_leaf_only_authority(ca: pki.KeyPair) -> None:
    cert = ca.certificate
    assert cert.subject == cert.issuer
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "test-ca"
    cert.verify_directly_issued_by(cert)
    constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints)
    assert constraints.critical
    assert constraints.value == x509.BasicConstraints(ca=True, path_length=0)
    usage = cert.extensions.get_extension_for_class(x509.KeyUsage)
    assert usage.critical
    assert usage.value.key_cert_sign and usage.value.crl_sign and usage.value.digital_signature
    assert not usage.value.key_encipherment
    identifier = cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    assert identifier == x509.SubjectKeyIdentifier.from_public_key(ca.key.public_key())
    assert isinstance(ca.key.curve, ec.SECP256R1)


def test_validity_is_backdated_five_minutes_and_lasts_the_lifetime(ca: pki.KeyPair) -> None:
    assert ca.certificate.not_valid_before_utc == NOW - datetime.timedelta(minutes=5)
    assert ca.certificate.not_valid_after_utc == NOW + datetime.timedelta(days=3650)
    short = pki.issue_server_certificate(
        ca, hosts=["a"], now=NOW, lifetime=datetime.timedelta(hours=2)
    )
    assert short.certificate.not_valid_before_utc == NOW - datetime.timedelta(minutes=5)
    assert short.certificate.not_valid_after_utc == NOW + datetime.timedelta(hours=2)


def test_server_certificate_profile(ca: pki.KeyPair, served: pki.KeyPair) -> None:
    cert = served.certificate
    assert cert.issuer == ca.certificate.subject
    cert.verify_directly_issued_by(ca.certificate)
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "svc"
    assert cert.not_valid_after_utc == NOW + datetime.timedelta(days=365)
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    assert not sans.critical
    assert list(sans.value) == [
        x509.DNSName("svc"),
        x509.DNSName("svc.ns.svc"),
        x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
        x509.IPAddress(ipaddress.ip_address("::1")),
    ]
    constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints)
    assert constraints.critical and constraints.value.ca is False
    usage = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(usage) == [ExtendedKeyUsageOID.SERVER_AUTH]
    authority = cert.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    subject_key = ca.certificate.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
    assert authority.key_identifier == subject_key.value.digest


def test_common_name_can_differ_from_the_first_host(ca: pki.KeyPair) -> None:
    cert = pki.issue_server_certificate(
        ca, hosts=["localhost"], now=NOW, common_name="kube-apiserver"
    ).certificate
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "kube-apiserver"


def test_chain_verifies_for_every_host_and_only_those(ca: pki.KeyPair, served: pki.KeyPair) -> None:
    for subject in (
        verification.DNSName("svc.ns.svc"),
        verification.IPAddress(ipaddress.ip_address("127.0.0.1")),
        verification.IPAddress(ipaddress.ip_address("::1")),
    ):
        chain = _verifier(ca).build_server_verifier(subject).verify(served.certificate, [])
        assert chain == [served.certificate, ca.certificate]
    with pytest.raises(verification.VerificationError, match="leaf certificate has no matching"):
        _verifier(ca).build_server_verifier(verification.DNSName("evil.example")).verify(
            served.certificate, []
        )


def test_chain_fails_under_another_ca_or_after_expiry(ca: pki.KeyPair, served: pki.KeyPair) -> None:
    stranger = pki.new_ca("test-ca", now=NOW)
    with pytest.raises(verification.VerificationError, match="candidates exhausted"):
        _verifier(stranger).build_server_verifier(verification.DNSName("svc")).verify(
            served.certificate, []
        )
    with pytest.raises(verification.VerificationError, match="cert is not valid at validation"):
        _verifier(ca, at=NOW + datetime.timedelta(days=366)).build_server_verifier(
            verification.DNSName("svc")
        ).verify(served.certificate, [])


def test_covers(served: pki.KeyPair, ca: pki.KeyPair) -> None:
    assert pki.covers(served.certificate, HOSTS)
    assert pki.covers(served.certificate, ["127.0.0.1"])
    assert pki.covers(served.certificate, [])
    assert not pki.covers(served.certificate, [*HOSTS, "other.svc"])
    assert not pki.covers(served.certificate, ["127.0.0.2"])
    # A CA certificate has no SubjectAlternativeName at all.
    assert not pki.covers(ca.certificate, ["svc"])


def test_pem_round_trip(ca: pki.KeyPair) -> None:
    assert ca.key_pem.startswith(b"-----BEGIN PRIVATE KEY-----\n")
    assert ca.certificate_pem.startswith(b"-----BEGIN CERTIFICATE-----\n")
    loaded = pki.load_authority(ca.certificate_pem, ca.key_pem)
    assert loaded.certificate == ca.certificate
    assert loaded.key.private_numbers() == ca.key.private_numbers()
    assert pki.certificate_pem(ca.certificate) == ca.certificate_pem
    assert pki.private_key_pem(ca.key) == ca.key_pem


def test_load_authority_refuses_a_non_ecdsa_key(ca: pki.KeyPair) -> None:
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    rsa_pem = rsa_key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    with pytest.raises(pki.PkiError, match=r"^CA key is not an ECDSA key$"):
        pki.load_authority(ca.certificate_pem, rsa_pem)


def test_a_serving_certificate_needs_a_host(ca: pki.KeyPair) -> None:
    with pytest.raises(pki.PkiError, match=r"^a serving certificate needs at least one host$"):
        pki.issue_server_certificate(ca, hosts=[], now=NOW)
