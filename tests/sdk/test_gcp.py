"""``agentauth.sdk.gcp.gcp_subject_token`` against a loopback metadata server."""

from __future__ import annotations

import http.server
from collections.abc import Iterator
from typing import Any

import pytest
from google.auth import jwt as google_jwt

from agentauth.sdk import gcp as sdk_gcp
from tests.domain.federation.loopback_clouds import (
    KEY_THUMBPRINT,
    LoopbackGoogle,
    make_google_key,
    serving,
)

ISSUER = "https://agentauth.example.com"
AUDIENCE = f"{ISSUER}#jkt={KEY_THUMBPRINT}"
"""Our issuer, bound to the key that will sign the exchange request."""


@pytest.fixture(scope="module")
def google() -> Iterator[LoopbackGoogle]:
    server = LoopbackGoogle(make_google_key("key-1"))
    with serving(server.server):
        yield server


def test_fetches_a_full_format_token_for_our_issuer(google: LoopbackGoogle) -> None:
    token = sdk_gcp.gcp_subject_token(
        key_thumbprint=KEY_THUMBPRINT, issuer=ISSUER, metadata_host=google.host
    )
    assert google.metadata_requests[-1] == {
        "flavor": "Google",
        "audience": AUDIENCE,
        "format": "full",
    }
    claims = google_jwt.decode(token, certs={"key-1": google.signing_key.certificate_pem})
    assert claims["aud"] == AUDIENCE
    assert claims["email_verified"] is True
    assert claims["google"]["compute_engine"]["project_id"] == "research-prod"


def test_token_source_for_agent_client(google: LoopbackGoogle) -> None:
    source = sdk_gcp.GcpSubjectTokenSource(issuer=ISSUER, metadata_host=google.host)
    subject = source(KEY_THUMBPRINT)
    assert subject.token_type == "urn:ietf:params:oauth:token-type:id_token"
    assert google_jwt.decode(subject.token, verify=False)["aud"] == AUDIENCE


def test_issuer_is_canonicalised_without_trailing_slash(google: LoopbackGoogle) -> None:
    sdk_gcp.gcp_subject_token(
        key_thumbprint=KEY_THUMBPRINT, issuer=ISSUER + "/", metadata_host=google.host
    )
    assert google.metadata_requests[-1]["audience"] == AUDIENCE


def test_host_from_gce_metadata_host(
    google: LoopbackGoogle, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GCE_METADATA_HOST", google.host)
    monkeypatch.delenv("GCE_METADATA_ROOT", raising=False)
    token = sdk_gcp.gcp_subject_token(key_thumbprint=KEY_THUMBPRINT, issuer=ISSUER)
    assert token.count(".") == 2


def test_host_resolution_order(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GCE_METADATA_HOST", raising=False)
    monkeypatch.delenv("GCE_METADATA_ROOT", raising=False)
    assert sdk_gcp.resolve_metadata_host() == "metadata.google.internal"
    monkeypatch.setenv("GCE_METADATA_ROOT", "root.example:80")
    assert sdk_gcp.resolve_metadata_host() == "root.example:80"
    monkeypatch.setenv("GCE_METADATA_HOST", "host.example:80")
    assert sdk_gcp.resolve_metadata_host() == "host.example:80"
    assert sdk_gcp.resolve_metadata_host("explicit:1") == "explicit:1"


class _Impostor(http.server.BaseHTTPRequestHandler):
    """Answers 200 with a JWT-looking body but without ``Metadata-Flavor: Google``."""

    def do_GET(self) -> None:
        body = b"a.b.c"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


def test_a_server_without_the_metadata_flavor_is_not_believed() -> None:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Impostor)
    host = f"127.0.0.1:{server.server_address[1]}"
    with serving(server), pytest.raises(sdk_gcp.MetadataServerError) as caught:
        sdk_gcp.gcp_subject_token(key_thumbprint=KEY_THUMBPRINT, issuer=ISSUER, metadata_host=host)
    assert str(caught.value) == (
        f"the server at {host} is not a GCP metadata server (no Metadata-Flavor: Google)"
    )


def test_metadata_server_errors_are_reported(google: LoopbackGoogle) -> None:
    # The loopback server answers 404 for paths it does not serve; a host with a path prefix
    # makes the identity path one it does not serve.
    with pytest.raises(sdk_gcp.MetadataServerError) as caught:
        sdk_gcp.gcp_subject_token(
            key_thumbprint=KEY_THUMBPRINT, issuer=ISSUER, metadata_host=google.host + "/nowhere"
        )
    assert str(caught.value).startswith(
        f"the GCP metadata server at {google.host}/nowhere answered HTTP 404"
    )


def test_unreachable_metadata_server() -> None:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        host = f"127.0.0.1:{probe.getsockname()[1]}"
    with pytest.raises(sdk_gcp.MetadataServerError) as caught:
        sdk_gcp.gcp_subject_token(key_thumbprint=KEY_THUMBPRINT, issuer=ISSUER, metadata_host=host)
    assert str(caught.value).startswith(f"cannot reach the GCP metadata server at {host}: ")


def test_modules_import_without_loading_the_cloud_extras() -> None:
    # The aws and gcp extras are optional: importing the modules must not need them.
    import subprocess
    import sys

    code = (
        "import sys\n"
        "import agentauth.sdk.aws, agentauth.sdk.gcp, agentauth.tokenservice.federation\n"
        "assert 'botocore' not in sys.modules, 'botocore'\n"
        "assert 'google.auth' not in sys.modules, 'google.auth'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
