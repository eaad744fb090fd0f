"""``token decode``, ``token verify`` (against a real JWKS over HTTP), ``keys generate``."""

from __future__ import annotations

import datetime
import http.server
import io
import json
import stat
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from agentauth.domain import keys, tokens
from agentauth.kubectl_plugin import run

NOW = datetime.datetime.now(datetime.UTC)


class Issuer:
    def __init__(self, url: str, keyset: keys.KeySet) -> None:
        self.url = url
        self.keyset = keyset

    def token(
        self, *, lifetime: datetime.timedelta = datetime.timedelta(minutes=5), **extra: Any
    ) -> str:
        issued = tokens.issue(
            keyset=extra.pop("keyset", self.keyset),
            issuer=extra.pop("issuer", self.url),
            subject="aauth:buyer.shop@example.test",
            agent=tokens.AgentRef(name="buyer", namespace="shop", uid="u-1"),
            audience="https://tools.example.test",
            scope=["document.read"],
            lifetime=lifetime,
            # Issued now, not at import: the suite may reach this test minutes after collection.
            now=extra.pop("now", None) or datetime.datetime.now(datetime.UTC),
            client_id="aauth:buyer.shop@example.test",
        )
        return issued.token


@pytest.fixture(scope="module")
def issuer() -> Iterator[Issuer]:
    keyset = keys.generate_keyset(now=NOW)
    state: dict[str, str] = {}

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path == "/.well-known/oauth-authorization-server":
                body = {"issuer": state["url"], "jwks_uri": state["url"] + "/jwks"}
            elif self.path == "/jwks":
                body = keyset.public_jwks()
            else:
                self.send_response(404)
                self.end_headers()
                return
            data = json.dumps(body).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: Any) -> None:
            return

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state["url"] = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield Issuer(state["url"], keyset)
    server.shutdown()
    thread.join()


def plugin(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = run(list(argv), stdout=out, stderr=err)
    return code, out.getvalue(), err.getvalue()


def test_decode_prints_header_and_claims_and_warns(issuer: Issuer) -> None:
    code, out, err = plugin("token", "decode", issuer.token())
    assert code == 0
    document = json.loads(out)
    assert document["header"]["typ"] == "at+jwt"
    assert document["payload"]["agent"] == {"name": "buyer", "namespace": "shop", "uid": "u-1"}
    assert "NOT checked" in err
    code, out, _ = plugin("token", "decode", issuer.token(), "-o", "yaml")
    assert yaml.safe_load(out)["payload"]["scope"] == "document.read"


def test_decode_rejects_garbage() -> None:
    assert plugin("token", "decode", "abc") == (
        1,
        "",
        "error: not a JWT: token is not a compact JWS (expected three segments)\n",
    )


def test_verify_accepts_a_good_token(issuer: Issuer) -> None:
    code, out, err = plugin("token", "verify", issuer.token(), "--issuer", issuer.url)
    assert (code, err) == (0, "")
    assert out.splitlines()[1:4] == [
        "  subject:  aauth:buyer.shop@example.test",
        "  agent:    shop/buyer",
        "  scope:    document.read",
    ]
    code, out, _ = plugin(
        "token",
        "verify",
        issuer.token(),
        "--issuer",
        issuer.url,
        "-o",
        "json",
        "--audience",
        "https://tools.example.test",
    )
    assert code == 0
    assert json.loads(out)["iss"] == issuer.url


def test_verify_refuses_bad_tokens(issuer: Issuer) -> None:
    expired = issuer.token(now=NOW - datetime.timedelta(hours=2))
    code, _, err = plugin("token", "verify", expired, "--issuer", issuer.url)
    assert code == 1
    assert err.startswith("error: token is NOT valid: ")
    foreign = issuer.token(keyset=keys.generate_keyset(now=NOW))
    code, _, err = plugin("token", "verify", foreign, "--issuer", issuer.url)
    assert code == 1
    assert err.startswith("error: token is NOT valid: ")
    code, _, err = plugin(
        "token", "verify", issuer.token(), "--issuer", issuer.url, "--audience", "https://other"
    )
    assert code == 1
    assert err.startswith("error: token is NOT valid: ")


def test_verify_requires_an_issuer_you_trust(
    issuer: Issuer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("AGENTAUTH_ISSUER", raising=False)
    code, _, err = plugin("token", "verify", issuer.token())
    assert code == 1
    assert err == (
        "error: pass --issuer URL (or set AGENTAUTH_ISSUER): the issuer you trust. The token "
        f"claims iss={issuer.url!r}; pass that only if it is your agentauth token service\n"
    )


def test_verify_reports_unreachable_issuer(issuer: Issuer) -> None:
    code, _, err = plugin("token", "verify", issuer.token(), "--issuer", issuer.url + "/nothing")
    assert code == 1
    assert err == (
        f"error: cannot fetch the issuer's metadata from {issuer.url}/nothing"
        "/.well-known/oauth-authorization-server: HTTP 404\n"
    )


def test_keys_generate_writes_private_key_and_prints_jwks(tmp_path: Path) -> None:
    target = tmp_path / "agent.key"
    code, out, err = plugin("keys", "generate", "--out", str(target))
    assert code == 0
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    snippet = yaml.safe_load(out)
    (jwk,) = snippet["spec"]["publicKeys"]["keys"]
    assert (jwk["kty"], jwk["crv"], "d" in jwk) == ("OKP", "Ed25519", False)
    assert jwk["kid"] in err
    code, _, err = plugin("keys", "generate", "--out", str(target))
    assert (code, err) == (
        1,
        f"error: {target} already exists; refusing to overwrite a private key\n",
    )
    code, out, _ = plugin("keys", "generate", "--out", str(target), "--force", "-o", "json")
    assert code == 0
    assert json.loads(out)["keys"][0]["kid"] != jwk["kid"]


def test_usage_errors_exit_2() -> None:
    code, _, err = plugin("deny", "buyer-1")
    assert code == 2
    assert "--reason" in err
    assert plugin("version", "--client") == (
        0,
        f"kubectl-agentauth {__import__('agentauth').__version__}\n",
        "",
    )
