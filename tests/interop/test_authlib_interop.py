"""authlib against the real token service: discovery metadata and private_key_jwt.

- The RFC 8414 document passes authlib's own validation; there is no OpenID Connect discovery
  document (agentauth is no OpenID Provider, and a document claiming to be one was invalid).
- The authlib snippet of ``docs/aauth.md`` is extracted and run as written (only the token
  endpoint and agent identifier are pointed at the test service): it gets a token.
- authlib's ``PrivateKeyJWT`` with its defaults but Ed25519 (no ``kid``, one-hour lifetime) is
  refused with an error that says what to set.
"""

from __future__ import annotations

import contextlib
import io
import re
import time
from pathlib import Path

import httpx
import jwt
import pytest
from authlib.integrations.base_client.errors import OAuthError as AuthlibError
from authlib.integrations.httpx_client import OAuth2Client
from authlib.oauth2.rfc7523 import PrivateKeyJWT
from authlib.oauth2.rfc8414 import AuthorizationServerMetadata
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from joserfc.jwk import OKPKey

from agentauth.domain import signatures
from tests.interop.conftest import OUTSIDE_AGENT, TokenService

DOCS = Path(__file__).parents[2] / "docs" / "aauth.md"
MARKER = "<!-- tested: tests/interop/test_authlib_interop.py -->"


def test_the_rfc8414_metadata_is_valid_for_authlib(service: TokenService) -> None:
    document = httpx.get(f"{service.url}/.well-known/oauth-authorization-server").json()
    AuthorizationServerMetadata(document).validate()
    assert document["token_endpoint_auth_signing_alg_values_supported"] == ["EdDSA", "Ed25519"]
    assert "id_token_signing_alg_values_supported" not in document


def test_there_is_no_openid_connect_discovery_document(service: TokenService) -> None:
    response = httpx.get(f"{service.url}/.well-known/openid-configuration")
    assert response.status_code == 404


def _documented_snippet() -> str:
    text = DOCS.read_text()
    assert MARKER in text, "docs/aauth.md lost its tested authlib snippet"
    block = re.search(r"```python\n(.*?)```", text[text.index(MARKER) :], re.DOTALL)
    assert block is not None
    return block.group(1)


def _write_pem(key: ed25519.Ed25519PrivateKey, directory: Path) -> None:
    (directory / "agent.pem").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )


def test_the_documented_authlib_snippet_gets_a_token(
    service: TokenService,
    outside_key: ed25519.Ed25519PrivateKey,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    snippet = _documented_snippet()
    snippet, endpoints = re.subn(
        r'^TOKEN_ENDPOINT = ".*"$',
        f'TOKEN_ENDPOINT = "{service.token_endpoint}"',
        snippet,
        flags=re.M,
    )
    snippet, agents = re.subn(
        r'^AGENT_ID = ".*"$', f'AGENT_ID = "{OUTSIDE_AGENT}"', snippet, flags=re.M
    )
    assert (endpoints, agents) == (1, 1)
    _write_pem(outside_key, tmp_path)
    monkeypatch.chdir(tmp_path)  # the snippet opens "agent.pem"
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        exec(compile(snippet, str(DOCS), "exec"), {"__name__": "snippet"})  # noqa: S102
    token = printed.getvalue().strip()
    claims = jwt.decode(token, options={"verify_signature": False})
    assert claims["sub"] == OUTSIDE_AGENT
    assert jwt.get_unverified_header(token)["alg"] == service.algorithm
    # No cnf in authlib's assertion: the token is bound to the registered key itself.
    registered = signatures.public_jwk(outside_key)
    assert claims["cnf"] == {"jwk": registered, "jkt": signatures.jwk_thumbprint(registered)}


def _client(service: TokenService, key: ed25519.Ed25519PrivateKey, **auth: object) -> OAuth2Client:
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    client = OAuth2Client(
        OUTSIDE_AGENT, OKPKey.import_key(pem), token_endpoint_auth_method="private_key_jwt"
    )
    client.register_client_auth_method(PrivateKeyJWT(service.token_endpoint, **auth))
    return client


def test_authlib_defaults_are_refused_with_what_to_set(
    service: TokenService, outside_key: ed25519.Ed25519PrivateKey
) -> None:
    client = _client(service, outside_key, alg="EdDSA")
    with pytest.raises(AuthlibError) as caught:
        client.fetch_token(service.token_endpoint, grant_type="client_credentials")
    assert caught.value.error == "invalid_client"
    assert caught.value.description == (
        "assertion lifetime exceeds 5 minutes: set exp to at most iat + 300 "
        "(authlib: expires_in=300)"
    )


def test_claims_passed_to_private_key_jwt_pin_the_jti_as_the_docs_warn(
    service: TokenService, outside_key: ed25519.Ed25519PrivateKey
) -> None:
    # docs/aauth.md: authlib writes the first jti into the claims= dict, so the second
    # assertion repeats it and is refused as a replay.
    claims = {"exp": int(time.time()) + 120}
    client = _client(service, outside_key, alg="Ed25519", claims=claims)
    client.fetch_token(service.token_endpoint, grant_type="client_credentials")
    assert "jti" in claims
    with pytest.raises(AuthlibError) as caught:
        client.fetch_token(service.token_endpoint, grant_type="client_credentials")
    assert (caught.value.error, caught.value.description) == (
        "invalid_client",
        "assertion jti has already been used",
    )
