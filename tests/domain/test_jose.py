"""Compact JWS parsing: decoded headers are memoised, yet every caller gets its own objects."""

from __future__ import annotations

import json

import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519

from agentauth.domain import errors, jose


def _segment(document: object) -> str:
    return jose.b64url_encode(json.dumps(document, separators=(",", ":")).encode())


def _token(header: object, payload: object, key: ed25519.Ed25519PrivateKey) -> str:
    signing_input = f"{_segment(header)}.{_segment(payload)}"
    return f"{signing_input}.{jose.b64url_encode(key.sign(signing_input.encode()))}"


@pytest.fixture(scope="module")
def key() -> ed25519.Ed25519PrivateKey:
    return ed25519.Ed25519PrivateKey.generate()


def test_each_parse_returns_its_own_header(key: ed25519.Ed25519PrivateKey) -> None:
    token = _token({"alg": "EdDSA", "kid": "k1", "typ": "at+jwt"}, {"sub": "a"}, key)
    first = jose.parse(token)
    first.header["kid"] = "tampered"
    first.header["extra"] = True
    second = jose.parse(token)
    assert second.header == {"alg": "EdDSA", "kid": "k1", "typ": "at+jwt"}
    assert second.header is not first.header


def test_a_header_with_nested_members_is_decoded_afresh(key: ed25519.Ed25519PrivateKey) -> None:
    header = {"alg": "EdDSA", "kid": "k1", "jwk": {"kty": "OKP", "crv": "Ed25519", "x": "AA"}}
    token = _token(header, {"sub": "a"}, key)
    first = jose.parse(token)
    first.header["jwk"]["x"] = "tampered"
    assert jose.parse(token).header == header


def test_a_malformed_header_is_refused_every_time(key: ed25519.Ed25519PrivateKey) -> None:
    token = _token(["not", "an", "object"], {"sub": "a"}, key)
    for _ in range(2):  # the refusal is not memoised away
        with pytest.raises(errors.InvalidGrant) as caught:
            jose.parse(token)
        assert caught.value.description == "token header is not a JSON object"


def test_verification_reads_the_memoised_header(key: ed25519.Ed25519PrivateKey) -> None:
    keys = jose.PublicKeySet({"k1": key.public_key()})
    token = _token({"alg": "EdDSA", "kid": "k1"}, {"sub": "a"}, key)
    assert jose.verify(token, keys=keys, allowed_algorithms=("EdDSA",)).payload == {"sub": "a"}
    assert jose.verify(token, keys=keys, allowed_algorithms=("EdDSA",)).payload == {"sub": "a"}
    forged = _token({"alg": "HS256", "kid": "k1"}, {"sub": "a"}, key)
    with pytest.raises(errors.InvalidGrant) as caught:
        jose.verify(forged, keys=keys, allowed_algorithms=("EdDSA",))
    assert caught.value.description == "token algorithm 'HS256' is not allowed"
