"""AAuth request signing (RFC 9421) against two independent JavaScript implementations.

They sign, we verify: ``http-message-signatures`` and ``http-message-sig`` (npm) sign requests
the way the Signature-Key draft's examples do -- ``created`` only, no ``keyid`` -- and with
``keyid`` and ``alg``; the real token service binds the issued token to the key of a signed
token request, ``agentauth.verify`` accepts a bound request, and ``signatures.verify_request``
accepts every shape.  We sign, they verify: requests signed by ``signatures.sign_request`` (what
the SDK sends) verify with both libraries.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519

from agentauth.domain import exchanging, signatures
from agentauth.verify import JwksCache, ResourceVerifier
from tests.domain import tokenkit
from tests.interop.conftest import ISSUER, TokenService, js, private_jwk

BASE = list(signatures.BASE_COMPONENTS)
SIGNERS = ["http-message-signatures", "http-message-sig"]


def _sign(
    library: str,
    *,
    key: ed25519.Ed25519PrivateKey,
    method: str,
    url: str,
    lines: list[tuple[str, str]],
    components: list[str],
    with_keyid: bool,
    keyid: str | None = None,
) -> list[tuple[str, str]]:
    """Field lines of the request signed by ``library`` (label ``sig``); ``with_keyid`` adds
    ``keyid`` (the key's thumbprint unless ``keyid`` is given) and ``alg``."""
    created = int(time.time())
    keyid = keyid or signatures.jwk_thumbprint(signatures.public_jwk(key))
    jwk = private_jwk(key)
    if library == "http-message-signatures":
        params = ["created", "keyid", "alg"] if with_keyid else ["created"]
        values: dict[str, Any] = {"created": created}
        if with_keyid:
            values.update(keyid=keyid, alg="ed25519")
        (result,) = js(
            {
                "op": "hms.sign",
                "method": method,
                "url": url,
                "lines": lines,
                "components": components,
                "params": params,
                "values": values,
                "jwk": jwk,
                "label": "sig",
            }
        )
        assert result["ok"], result
        return [(name, value) for name, value in result["lines"]]
    parameters: dict[str, Any] = {"created": created}
    if with_keyid:
        parameters.update(keyid=keyid, alg="ed25519")
    (result,) = js(
        {
            "op": "sig.sign",
            "method": method,
            "url": url,
            "lines": lines,
            "components": components,
            "parameters": parameters,
            "jwk": jwk,
            "label": "sig",
        }
    )
    assert result["ok"], result
    return [
        *lines,
        ("Signature-Input", result["signatureInput"]),
        ("Signature", result["signature"]),
    ]


def _signature_input(lines: list[tuple[str, str]]) -> str:
    return next(value for name, value in lines if name.lower() == "signature-input")


@pytest.mark.parametrize("library", SIGNERS)
@pytest.mark.parametrize("with_keyid", [False, True], ids=["created only", "keyid and alg"])
def test_token_service_binds_a_token_to_a_key_that_signed_with_another_library(
    service: TokenService, cluster: tokenkit.ClusterIssuer, library: str, with_keyid: bool
) -> None:
    key = ed25519.Ed25519PrivateKey.generate()
    form = {
        "grant_type": exchanging.GRANT_TYPE_TOKEN_EXCHANGE,
        "subject_token": cluster.token(now=datetime.now(UTC)),
        "subject_token_type": exchanging.TOKEN_TYPE_JWT,
    }
    encoded = httpx.Request("POST", service.token_endpoint, data=form).read()
    lines = [
        ("Content-Type", "application/x-www-form-urlencoded"),
        ("Signature-Key", signatures.signature_key_hwk(key)),
        ("Content-Digest", signatures.content_digest(encoded)),
    ]
    signed = _sign(
        library,
        key=key,
        method="POST",
        url=service.token_endpoint,
        lines=lines,
        components=[*BASE, "content-digest"],
        with_keyid=with_keyid,
    )
    assert ("keyid=" in _signature_input(signed)) is with_keyid
    response = httpx.post(service.token_endpoint, content=encoded, headers=signed)
    assert response.status_code == 200, response.text
    claims = jwt.decode(response.json()["access_token"], options={"verify_signature": False})
    assert claims["cnf"] == {
        "jwk": signatures.public_jwk(key),
        "jkt": signatures.jwk_thumbprint(signatures.public_jwk(key)),
    }


@pytest.mark.parametrize("library", SIGNERS)
def test_a_keyid_naming_another_key_is_refused_by_the_token_service(
    service: TokenService, cluster: tokenkit.ClusterIssuer, library: str
) -> None:
    key, other = ed25519.Ed25519PrivateKey.generate(), ed25519.Ed25519PrivateKey.generate()
    form = {
        "grant_type": exchanging.GRANT_TYPE_TOKEN_EXCHANGE,
        "subject_token": cluster.token(now=datetime.now(UTC)),
        "subject_token_type": exchanging.TOKEN_TYPE_JWT,
    }
    encoded = httpx.Request("POST", service.token_endpoint, data=form).read()
    lines = [
        ("Content-Type", "application/x-www-form-urlencoded"),
        # The request is signed by ``key`` and presents ``key``; keyid names ``other``.
        ("Signature-Key", signatures.signature_key_hwk(key)),
        ("Content-Digest", signatures.content_digest(encoded)),
    ]
    wrong = signatures.jwk_thumbprint(signatures.public_jwk(other))
    signed = _sign(
        library,
        key=key,
        method="POST",
        url=service.token_endpoint,
        lines=lines,
        components=[*BASE, "content-digest"],
        with_keyid=True,
        keyid=wrong,
    )
    assert f'keyid="{wrong}"' in _signature_input(signed)
    response = httpx.post(service.token_endpoint, content=encoded, headers=signed)
    assert response.status_code == 400
    assert response.json() == {
        "error": "invalid_request",
        "error_description": 'request signature is invalid: signature "keyid" does not name the '
        "signing key (use its RFC 7638 thumbprint or the kid of its JWK, or leave keyid out)",
    }


@pytest.mark.parametrize("library", SIGNERS)
@pytest.mark.parametrize("with_keyid", [False, True], ids=["created only", "keyid and alg"])
def test_resource_verifier_accepts_a_bound_request_signed_by_another_library(
    service: TokenService, cluster: tokenkit.ClusterIssuer, library: str, with_keyid: bool
) -> None:
    key = ed25519.Ed25519PrivateKey.generate()
    # A token bound to ``key``: the token request itself signed by ``key`` (our signer).
    form = {
        "grant_type": exchanging.GRANT_TYPE_TOKEN_EXCHANGE,
        "subject_token": cluster.token(now=datetime.now(UTC)),
        "subject_token_type": exchanging.TOKEN_TYPE_JWT,
        "audience": ISSUER,
    }
    request = httpx.Request("POST", service.token_endpoint, data=form)
    encoded = request.read()
    headers = dict(request.headers)
    headers.update(
        signatures.sign_request(
            method="POST",
            url=service.token_endpoint,
            headers=headers,
            body=encoded,
            private_key=key,
            signature_key_header=signatures.signature_key_hwk(key),
        )
    )
    response = httpx.post(service.token_endpoint, content=encoded, headers=headers)
    assert response.status_code == 200, response.text
    token = response.json()["access_token"]

    url = "https://docs.example.test/v1/documents/42?view=full"
    body = b'{"title": "quarterly report"}'
    lines = [
        ("Content-Type", "application/json"),
        ("Signature-Key", signatures.signature_key_jwt(token)),
        ("Content-Digest", signatures.content_digest(body)),
    ]
    signed = _sign(
        library,
        key=key,
        method="POST",
        url=url,
        lines=lines,
        components=[*BASE, "content-digest"],
        with_keyid=with_keyid,
    )
    verifier = ResourceVerifier(issuer=ISSUER, audience=ISSUER, jwks=JwksCache(jwks=service.jwks()))
    principal = verifier.verify_with_keys(
        method="POST",
        url=url,
        headers=signed,
        body=body,
        keys=verifier.jwks.keys,  # type: ignore[arg-type]
        required=["document.read"],
    )
    assert principal.bound
    assert principal.jkt == signatures.jwk_thumbprint(signatures.public_jwk(key))


@pytest.mark.parametrize("body", [b"", b'{"a": 1}'], ids=["no body", "body"])
@pytest.mark.parametrize(
    "url", ["https://docs.example.test/v1/a%20b?x=1&y=", "http://docs.example.test:8080/"]
)
def test_requests_we_sign_verify_with_both_libraries(body: bytes, url: str) -> None:
    key = ed25519.Ed25519PrivateKey.generate()
    lines = [("Content-Type", "application/json"), ("X-Repeated", "one"), ("X-Repeated", "two")]
    added = signatures.sign_request(
        method="POST",
        url=url,
        headers=lines,
        body=body,
        private_key=key,
        signature_key_header=signatures.signature_key_hwk(key),
        components=[*BASE, "@query", "x-repeated"],
    )
    received = [*lines, *added.items()]
    covered = ["@method", "@authority", "@path", "signature-key"]
    hms, sig = js(
        {
            "op": "hms.verify",
            "method": "POST",
            "url": url,
            "lines": received,
            "jwk": signatures.public_jwk(key),
            "requiredFields": covered,
        },
        {
            "op": "sig.verify",
            "method": "POST",
            "url": url,
            "lines": received,
            "jwk": signatures.public_jwk(key),
            "label": "sig",
            "requiredComponents": covered,
            "now": int(time.time()),
        },
    )
    assert hms == {"ok": True, "verified": True}
    assert sig["ok"], sig
    assert sig["parameters"]["keyid"] == signatures.jwk_thumbprint(signatures.public_jwk(key))


def test_a_tampered_request_is_refused_by_both_libraries() -> None:
    # The libraries are real verifiers: a covered value changed after signing fails in both.
    key = ed25519.Ed25519PrivateKey.generate()
    url = "https://docs.example.test/v1/documents/42"
    added = signatures.sign_request(
        method="GET",
        url=url,
        headers=[],
        body=None,
        private_key=key,
        signature_key_header=signatures.signature_key_hwk(key),
    )
    tampered = "https://docs.example.test/v1/documents/43"
    common = {"method": "GET", "url": tampered, "lines": list(added.items())}
    hms, sig = js(
        {"op": "hms.verify", **common, "jwk": signatures.public_jwk(key), "requiredFields": []},
        {
            "op": "sig.verify",
            **common,
            "jwk": signatures.public_jwk(key),
            "label": "sig",
            "requiredComponents": [],
            "now": int(time.time()),
        },
    )
    assert not hms["ok"] and not sig["ok"]
