"""The token service's TLS context follows renewed certificate files.

Real here: certificates issued by agentauth's PKI code, a TLS server on loopback using the
context :func:`tlsreload.serving_context` returns (the one ``agentauth token-service`` serves
with), and real client handshakes with and without SNI; the files are replaced on disk the way
the kubelet replaces a renewed Secret.
"""

from __future__ import annotations

import datetime
import socket
import ssl
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from agentauth.domain import pki
from agentauth.tokenservice import tlsreload

NOW = datetime.datetime.now(datetime.UTC)


@pytest.fixture
def ca() -> pki.KeyPair:
    return pki.new_ca("test CA", now=NOW)


def _write(directory: Path, pair: pki.KeyPair) -> None:
    # Write beside and rename, as the kubelet's atomic writer does.
    for name, data in (("tls.crt", pair.certificate_pem), ("tls.key", pair.key_pem)):
        staged = directory / f".{name}.new"
        staged.write_bytes(data)
        staged.replace(directory / name)


class Server:
    def __init__(self, context: ssl.SSLContext) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.context = context
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                raw, _ = self.listener.accept()
            except OSError:
                return
            try:
                with self.context.wrap_socket(raw, server_side=True) as tls:
                    tls.sendall(b"ok")
            except (ssl.SSLError, OSError):
                continue

    def serial(self, ca: pki.KeyPair, *, sni: str | None) -> int:
        client = ssl.create_default_context(cadata=ca.certificate_pem.decode())
        client.check_hostname = sni is not None
        with (
            socket.create_connection(("127.0.0.1", self.port)) as raw,
            client.wrap_socket(raw, server_hostname=sni) as tls,
        ):
            der = tls.getpeercert(binary_form=True)
            tls.recv(2)
        assert der is not None
        from cryptography import x509

        return x509.load_der_x509_certificate(der).serial_number

    def close(self) -> None:
        self.listener.close()


@pytest.fixture
def files(tmp_path: Path, ca: pki.KeyPair) -> tuple[Path, Path, pki.KeyPair]:
    first = pki.issue_server_certificate(ca, hosts=["localhost", "127.0.0.1"], now=NOW)
    _write(tmp_path, first)
    return tmp_path / "tls.crt", tmp_path / "tls.key", first


@pytest.fixture
def server(files: tuple[Path, Path, pki.KeyPair]) -> Iterator[Server]:
    cert, key, _ = files
    running = Server(tlsreload.serving_context(cert, key, recheck=0))
    yield running
    running.close()


@pytest.mark.parametrize("sni", ["localhost", None], ids=["with-sni", "without-sni"])
def test_a_renewed_certificate_is_served_without_a_restart(
    server: Server, files: tuple[Path, Path, pki.KeyPair], ca: pki.KeyPair, sni: str | None
) -> None:
    cert, _key, first = files
    assert server.serial(ca, sni=sni) == first.certificate.serial_number
    renewed = pki.issue_server_certificate(ca, hosts=["localhost", "127.0.0.1"], now=NOW)
    _write(cert.parent, renewed)
    assert server.serial(ca, sni=sni) == renewed.certificate.serial_number


def test_a_half_written_pair_keeps_the_previous_certificate(
    server: Server, files: tuple[Path, Path, pki.KeyPair], ca: pki.KeyPair
) -> None:
    cert, key, first = files
    renewed = pki.issue_server_certificate(ca, hosts=["localhost"], now=NOW)
    cert.write_bytes(renewed.certificate_pem)  # the key not yet swapped: they do not match
    assert server.serial(ca, sni="localhost") == first.certificate.serial_number
    key.write_bytes(renewed.key_pem)
    assert server.serial(ca, sni="localhost") == renewed.certificate.serial_number


def test_unloadable_files_fail_at_start(tmp_path: Path) -> None:
    (tmp_path / "tls.crt").write_text("not a certificate")
    (tmp_path / "tls.key").write_text("not a key")
    with pytest.raises(ssl.SSLError):
        tlsreload.serving_context(tmp_path / "tls.crt", tmp_path / "tls.key")
