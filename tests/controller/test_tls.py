"""The webhook CA and serving certificate (real cryptography, real TLS handshake)."""

from __future__ import annotations

import asyncio
import datetime
import ssl

import pytest
from aiohttp import web

from agentauth.controller import tls

NOW = datetime.datetime.now(datetime.UTC)
HOSTS = ("svc", "svc.ns", "svc.ns.svc", "127.0.0.1")


def test_reissue_when_names_change_or_expiry_nears() -> None:
    material = tls.generate(hosts=HOSTS, now=NOW)
    assert not tls.needs_reissue(material, hosts=HOSTS, now=NOW)
    assert not tls.needs_reissue(material, hosts=HOSTS[:2], now=NOW)
    assert tls.needs_reissue(material, hosts=(*HOSTS, "other.svc"), now=NOW)
    assert tls.needs_reissue(material, hosts=HOSTS, now=NOW + datetime.timedelta(days=340))
    again = tls.Material.from_secret_data(material.to_secret_data())
    assert again == material


async def ok(_request: web.Request) -> web.Response:
    return web.Response(text="ok")


async def test_clients_trusting_the_ca_verify_the_served_certificate() -> None:
    material = tls.generate(hosts=HOSTS, now=NOW)
    app = web.Application()
    app.router.add_get("/", ok)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=material.ssl_context())
    await site.start()
    port = runner.addresses[0][1]
    try:
        trusting = ssl.create_default_context(cadata=material.ca_crt.decode())
        _reader, writer = await asyncio.open_connection(
            "127.0.0.1", port, ssl=trusting, server_hostname="svc.ns.svc"
        )
        writer.close()
        stranger = ssl.create_default_context()
        with pytest.raises(
            ssl.SSLCertVerificationError, match="self-signed certificate in certificate chain"
        ):
            await asyncio.open_connection(
                "127.0.0.1", port, ssl=stranger, server_hostname="svc.ns.svc"
            )
        with pytest.raises(ssl.SSLCertVerificationError, match="Hostname mismatch"):
            await asyncio.open_connection(
                "127.0.0.1", port, ssl=trusting, server_hostname="evil.example"
            )
    finally:
        await runner.cleanup()
