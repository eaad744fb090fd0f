"""Compact JWS parsing: decoded headers are memoised, yet every caller gets its own objects."""

from __future__ import annotations

import functools
import json
import subprocess
import sys

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

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


# --------------------------------------------------------------------------- on pyjwt


def test_both_names_of_ed25519_verify_and_are_signed_by_pyjwt(
    key: ed25519.Ed25519PrivateKey,
) -> None:
    keys = jose.PublicKeySet({"k1": key.public_key()})
    for alg in ("EdDSA", "Ed25519"):
        token = jose.sign({"sub": "a"}, key=key, alg=alg, headers={"kid": "k1", "typ": "JWT"})
        parsed = jose.verify(token, keys=keys, allowed_algorithms=jose.ED25519_ALGORITHMS)
        assert parsed.header == {"alg": alg, "kid": "k1", "typ": "JWT"}
        assert parsed.payload == {"sub": "a"}
    # pyjwt itself reads what jose.sign writes (EdDSA is the only name pyjwt knows).
    token = jose.sign({"sub": "a"}, key=key, alg="EdDSA", headers={"kid": "k1"})
    assert jwt.decode(token, key.public_key(), algorithms=["EdDSA"]) == {"sub": "a"}


def test_allowing_either_name_allows_both() -> None:
    assert jose.allowing_ed25519_names({"EdDSA"}) == {"EdDSA", "Ed25519"}
    assert jose.allowing_ed25519_names({"Ed25519", "RS256"}) == {"EdDSA", "Ed25519", "RS256"}
    assert jose.allowing_ed25519_names({"RS256"}) == {"RS256"}


def test_failures_are_typed_and_stay_oauth_errors(key: ed25519.Ed25519PrivateKey) -> None:
    keys = jose.PublicKeySet({"k1": key.public_key()})
    other = ed25519.Ed25519PrivateKey.generate()
    rsa_keys = jose.PublicKeySet(
        {"k1": rsa.generate_private_key(public_exponent=65537, key_size=2048).public_key()}
    )
    cases: list[tuple[str, jose.PublicKeySet, type[jose.JoseError], str]] = [
        ("x" * (jose.MAX_TOKEN_BYTES + 1), keys, jose.TokenTooLarge, "token exceeds 16384 bytes"),
        ("a.b", keys, jose.MalformedToken, "token is not a compact JWS (expected three segments)"),
        (
            _token({"alg": "EdDSA", "kid": "k1"}, {"sub": "a"}, key) + "=",
            keys,
            jose.MalformedToken,
            "token is not valid base64url",
        ),
        (
            _token({"alg": "none", "kid": "k1"}, {"sub": "a"}, key),
            keys,
            jose.AlgorithmNotAllowed,
            "token algorithm 'none' is not allowed",
        ),
        (
            _token({"alg": "EdDSA"}, {"sub": "a"}, key),
            keys,
            jose.MissingKeyId,
            "token header has no kid",
        ),
        (
            _token({"alg": "EdDSA", "kid": "k2"}, {"sub": "a"}, key),
            keys,
            jose.UnknownKeyId,
            "token signed with unknown key id 'k2'",
        ),
        (
            _token({"alg": "EdDSA", "kid": "k1"}, {"sub": "a"}, other),
            keys,
            jose.BadSignature,
            "token signature is invalid",
        ),
        (
            _token({"alg": "Ed25519", "kid": "k1"}, {"sub": "a"}, key),
            rsa_keys,
            jose.KeyTypeMismatch,
            "token key type does not match algorithm Ed25519",
        ),
    ]
    for token, key_set, kind, description in cases:
        with pytest.raises(kind) as caught:
            jose.verify(token, keys=key_set, allowed_algorithms=jose.ED25519_ALGORITHMS)
        assert caught.value.description == description
        wire = "invalid_request" if kind is jose.TokenTooLarge else "invalid_grant"
        assert (caught.value.error, caught.value.status) == (wire, 400)


def test_each_registered_claim_check_has_its_own_error() -> None:
    good = {"iss": "https://i", "aud": ["https://a"], "exp": 200, "nbf": 100, "iat": 100}
    cases: list[tuple[dict[str, object], type[jose.InvalidClaim], str, str]] = [
        ({"iss": "https://other"}, jose.UntrustedIssuer, "iss", "token issuer is not trusted"),
        ({"aud": None}, jose.InvalidClaim, "aud", "token has no aud claim"),
        (
            {"aud": "https://b"},
            jose.WrongAudience,
            "aud",
            "token audience does not include this issuer",
        ),
        ({"exp": None}, jose.InvalidClaim, "exp", "token has no exp claim"),
        ({"exp": float("nan")}, jose.InvalidClaim, "exp", "token exp claim is not a finite number"),
        ({"exp": 140}, jose.Expired, "exp", "token has expired"),
        ({"nbf": 170}, jose.NotYetValid, "nbf", "token is not yet valid"),
        ({"iat": "soon"}, jose.InvalidClaim, "iat", "token iat claim is not a number"),
    ]
    jose.check_registered_claims(
        good, issuers=("https://i",), audience="https://a", now=150, leeway=10
    )
    for change, kind, claim, description in cases:
        claims = {k: v for k, v in {**good, **change}.items() if v is not None}
        with pytest.raises(kind) as caught:
            jose.check_registered_claims(
                claims, issuers=("https://i",), audience="https://a", now=150, leeway=10
            )
        assert type(caught.value) is kind
        assert (caught.value.claim, caught.value.description) == (claim, description)


def test_the_times_of_checked_claims_fail_later_as_the_full_check_would() -> None:
    """``Validity.check`` at a later moment raises what ``check_registered_claims`` raises at
    that moment, claim and description alike, in its order."""
    claims = {"iss": "https://i", "aud": "https://a", "exp": 200, "nbf": 100, "iat": 90}
    validity = jose.check_registered_claims(
        claims, issuers=("https://i",), audience="https://a", now=150, leeway=10
    )
    assert validity == jose.Validity(expires=200, not_before=100, issued_at=90)
    validity.check(now=189.5, leeway=10)
    for now, leeway, kind, claim in [
        (210, 10, jose.Expired, "exp"),  # exp + leeway is already too late
        (201, 0, jose.Expired, "exp"),
        (89, 10, jose.NotYetValid, "nbf"),  # nbf is checked before iat
        (79, 10, jose.NotYetValid, "nbf"),
    ]:
        for check in (
            functools.partial(validity.check, now=now, leeway=leeway),
            functools.partial(
                jose.check_registered_claims,
                claims,
                issuers=("https://i",),
                audience="https://a",
                now=now,
                leeway=leeway,
            ),
        ):
            with pytest.raises(kind) as caught:
                check()
            assert type(caught.value) is kind
            assert caught.value.claim == claim
            assert caught.value.description == (
                "token has expired" if kind is jose.Expired else "token is not yet valid"
            )
    issued_later = jose.check_registered_claims(
        {**claims, "nbf": 80, "iat": 120},
        issuers=("https://i",),
        audience="https://a",
        now=150,
        leeway=10,
    )
    with pytest.raises(jose.NotYetValid) as caught:
        issued_later.check(now=100, leeway=10)
    assert (caught.value.claim, caught.value.description) == ("iat", "token is not yet valid")
    bare = jose.check_registered_claims(
        {"iss": "https://i", "aud": "https://a", "exp": 200},
        issuers=("https://i",),
        audience="https://a",
        now=150,
        leeway=0,
    )
    assert bare == jose.Validity(expires=200, not_before=None, issued_at=None)
    bare.check(now=0, leeway=0)


def test_jwks_are_loaded_by_pyjwt_public_members_only() -> None:
    private = ed25519.Ed25519PrivateKey.generate()
    jwk = {**jose.ed25519_jwk(private.public_key()), "kid": "k", "alg": "Ed25519"}
    loaded = jose.public_key_from_jwk({**jwk, "d": "ignored-private-member"})
    assert isinstance(loaded, ed25519.Ed25519PublicKey)
    assert loaded.public_bytes_raw() == private.public_key().public_bytes_raw()
    for bad, message in [
        ({"kty": "oct", "k": "c2VjcmV0"}, "unsupported JWK key type 'oct'"),
        ({"kty": "OKP", "crv": "Ed448", "x": "AA"}, "unsupported OKP curve 'Ed448'"),
        ({"kty": "OKP", "crv": "Ed25519", "x": "AA=="}, "malformed OKP JWK"),
        ({"kty": "OKP", "crv": "Ed25519", "x": "AAAA"}, "malformed OKP JWK"),
        ({"kty": "EC", "crv": "P-521", "x": "AA", "y": "AA"}, "unsupported EC curve 'P-521'"),
        ({"kty": "RSA", "n": "AQAB"}, "malformed RSA JWK"),
    ]:
        with pytest.raises(jose.UnsupportedJwk) as caught:
            jose.public_key_from_jwk(bad)
        assert caught.value.description == message
        assert isinstance(caught.value, ValueError)
    keys = jose.PublicKeySet.from_jwks({"keys": [jwk, {"kty": "oct", "kid": "h", "k": "AA"}]})
    assert "k" in keys and "h" not in keys


# --------------------------------------------------------------------------- JSON of the segments

MALFORMED_PAYLOADS = [
    (b'{"exp": NaN}', "token payload is not valid JSON"),
    (b'{"exp": 1e999}', "token payload is not valid JSON"),
    (b'{"exp": Infinity}', "token payload is not valid JSON"),
    (b'\xef\xbb\xbf{"sub": "a"}', "token payload is not valid JSON"),
    ('{"sub": "a"}'.encode("utf-16"), "token payload is not valid JSON"),
    (b'{"sub": "\xff"}', "token payload is not valid JSON"),
    (b'["sub"]', "token payload is not a JSON object"),
]


@pytest.mark.parametrize(("raw", "description"), MALFORMED_PAYLOADS)
def test_a_payload_that_is_not_strict_utf8_json_is_refused(
    key: ed25519.Ed25519PrivateKey, raw: bytes, description: str
) -> None:
    header = _segment({"alg": "EdDSA", "kid": "k1"})
    signing_input = f"{header}.{jose.b64url_encode(raw)}"
    token = f"{signing_input}.{jose.b64url_encode(key.sign(signing_input.encode()))}"
    with pytest.raises(jose.MalformedToken) as caught:
        jose.parse(token)
    assert caught.value.description == description


def test_without_orjson_tokens_are_signed_and_parsed_alike() -> None:
    """The SDK's base install has no orjson: the standard library signs the same claims and
    refuses the same malformed payloads (run in a fresh interpreter where orjson cannot load)."""
    probe = f"""
import sys
sys.modules["orjson"] = None  # ImportError: the base install
from cryptography.hazmat.primitives.asymmetric import ed25519
from agentauth.domain import jose
assert jose.orjson is None
key = ed25519.Ed25519PrivateKey.generate()
claims = {{"sub": "aauth:a.b@t", "scope": "x.y", "exp": 2, "agent": {{"name": "\\u00e9"}}}}
token = jose.sign(claims, key=key, alg="EdDSA", headers={{"kid": "k1", "typ": "at+jwt"}})
keys = jose.PublicKeySet({{"k1": key.public_key()}})
assert jose.verify(token, keys=keys, allowed_algorithms=("EdDSA",)).payload == claims
for raw, description in {MALFORMED_PAYLOADS!r}:
    header = jose.b64url_encode(b'{{"alg":"EdDSA","kid":"k1"}}')
    try:
        jose.parse(header + "." + jose.b64url_encode(raw) + ".AA")
    except jose.MalformedToken as exc:
        assert exc.description == description, (raw, exc.description)
    else:
        raise AssertionError(raw)
print("ok")
"""
    completed = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=False, timeout=60
    )
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.strip() == "ok"
