"""RFC 9421 signing/verification under the AAuth profile: vectors, round trips, bad input."""

from __future__ import annotations

import base64
import hashlib
import json
from datetime import UTC, datetime, timedelta

import http_message_signatures as hms
import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519
from cryptography.hazmat.primitives.serialization import load_pem_private_key, load_pem_public_key

from agentauth.domain import errors, keys, signatures, tokens

# RFC 9421 Appendix B.1.4 (test-key-ed25519).
RFC9421_ED25519_PRIVATE = b"""-----BEGIN PRIVATE KEY-----
MC4CAQAwBQYDK2VwBCIEIJ+DYvh6SEqVTm50DFtMDoQikTmiCqirVv9mWG9qfSnF
-----END PRIVATE KEY-----
"""
RFC9421_ED25519_PUBLIC = b"""-----BEGIN PUBLIC KEY-----
MCowBQYDK2VwAyEAJrQLj5P/89iXES9+vFgrIy29clF9CC/oPPsw3c5D0bs=
-----END PUBLIC KEY-----
"""
# RFC 9421 Appendix B.2 test-request.
TEST_REQUEST_HEADERS = {
    "Host": "example.com",
    "Date": "Tue, 20 Apr 2021 02:07:55 GMT",
    "Content-Type": "application/json",
    "Content-Digest": "sha-512=:WZDPaVn/7XgHaAy8pmojAkGWoRx2UFChF41A2svX+TaPm+AbwAgBWnrIiYllu7"
    "BNNyealdVLvRwEmTHWXvJwew==:",
    "Content-Length": "18",
}
TEST_REQUEST_BODY = b'{"hello": "world"}'

NOW = 1_790_000_000
URL = "https://api.example.test:8443/v1/documents/42?view=full"
BODY = b'{"title": "quarterly report"}'


@pytest.fixture(scope="module")
def agent_key() -> ed25519.Ed25519PrivateKey:
    return ed25519.Ed25519PrivateKey.generate()


@pytest.fixture(scope="module")
def keyset() -> keys.KeySet:
    return keys.generate_keyset(now=datetime.fromtimestamp(NOW, tz=UTC))


def _bound_token(keyset: keys.KeySet, jwk: dict[str, str] | None) -> str:
    return tokens.issue(
        keyset=keyset,
        issuer="https://agentauth.test",
        subject="aauth:reporter.default@cluster.local",
        agent=tokens.AgentRef(name="reporter", namespace="default", uid="u-1"),
        audience="https://api.example.test",
        scope=["document.read"],
        lifetime=timedelta(minutes=5),
        now=datetime.fromtimestamp(NOW, tz=UTC),
        client_id="aauth:reporter.default@cluster.local",
        cnf_jwk=jwk,
    ).token


def _signed(
    key: ed25519.Ed25519PrivateKey,
    *,
    signature_key: str,
    body: bytes | None = BODY,
    method: str = "POST",
    url: str = URL,
    components: tuple[str, ...] | None = None,
    extra: dict[str, str] | None = None,
) -> dict[str, str]:
    headers = {"Content-Type": "application/json", **(extra or {})}
    headers.update(
        signatures.sign_request(
            method=method,
            url=url,
            headers=headers,
            body=body,
            private_key=key,
            key_id=None,
            signature_key_header=signature_key,
            created=NOW,
            components=components,
        )
    )
    return headers


def _verify(**overrides: object) -> signatures.VerifiedRequest:
    arguments: dict[str, object] = {
        "method": "POST",
        "url": URL,
        "body": BODY,
        "now": NOW,
    }
    arguments.update(overrides)
    return signatures.verify_request(**arguments)  # type: ignore[arg-type]


def _reason(headers: object, **overrides: object) -> str:
    arguments = {"headers": headers, **overrides}
    with pytest.raises(signatures.SignatureError) as caught:
        _verify(**arguments)  # type: ignore[arg-type]
    return caught.value.reason


# --------------------------------------------------------------------------- vectors


def test_rfc9421_b26_ed25519_signature_is_reproduced() -> None:
    private_key = load_pem_private_key(RFC9421_ED25519_PRIVATE, password=None)
    assert isinstance(private_key, ed25519.Ed25519PrivateKey)
    added = signatures.sign_request(
        method="POST",
        url="https://example.com/foo?param=Value&Pet=dog",
        headers=TEST_REQUEST_HEADERS,
        body=None,
        private_key=private_key,
        key_id="test-key-ed25519",
        signature_key_header=None,
        created=1618884473,
        components=("date", "@method", "@path", "@authority", "content-type", "content-length"),
        label="sig-b26",
        include_alg=False,
        include_nonce=False,
    )
    assert added == {
        "Signature-Input": 'sig-b26=("date" "@method" "@path" "@authority" "content-type" '
        '"content-length");created=1618884473;keyid="test-key-ed25519"',
        "Signature": "sig-b26=:wqcAqbmYJ2ji2glfAMaRy4gruYYnx2nEFN2HN6jrnDnQCK1u02Gb04v9EDgwUPiu4"
        "A0w6vuQv5lIp5WPpBKRCw==:",
    }


def test_rfc9421_b26_signature_verifies_with_the_rfc_public_key() -> None:
    public_key = load_pem_public_key(RFC9421_ED25519_PUBLIC)
    assert isinstance(public_key, ed25519.Ed25519PublicKey)
    signature = base64.b64decode(
        "wqcAqbmYJ2ji2glfAMaRy4gruYYnx2nEFN2HN6jrnDnQCK1u02Gb04v9EDgwUPiu4A0w6vuQv5lIp5WPpBKRCw=="
    )
    base = (
        '"date": Tue, 20 Apr 2021 02:07:55 GMT\n"@method": POST\n"@path": /foo\n'
        '"@authority": example.com\n"content-type": application/json\n"content-length": 18\n'
        '"@signature-params": ("date" "@method" "@path" "@authority" "content-type" '
        '"content-length");created=1618884473;keyid="test-key-ed25519"'
    )
    public_key.verify(signature, base.encode())  # raises if the RFC text were misquoted


def test_rfc7638_jwk_thumbprint_vector() -> None:
    # RFC 7638 section 3.1; optional members (kid, alg) do not change the thumbprint.
    jwk = {
        "kty": "RSA",
        "n": "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSo"
        "c_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0"
        "_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI"
        "4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw",
        "e": "AQAB",
        "alg": "RS256",
        "kid": "2011-04-29",
    }
    assert signatures.jwk_thumbprint(jwk) == "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"


def test_ed25519_thumbprint_hashes_the_canonical_members() -> None:
    import hashlib

    jwk = {"x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPPr9m4", "kty": "OKP", "crv": "Ed25519"}
    canonical = b'{"crv":"Ed25519","kty":"OKP","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPPr9m4"}'
    expected = base64.urlsafe_b64encode(hashlib.sha256(canonical).digest()).rstrip(b"=").decode()
    assert signatures.jwk_thumbprint({**jwk, "kid": "k1"}) == expected


def test_content_digest_is_rfc9530_sha256() -> None:
    assert signatures.content_digest(b'{"hello": "world"}') == (
        "sha-256=:X48E9qOokqqrvdts8nOJRJN3OWDUoyWxBf7kbu9DBPE=:"
    )


# --------------------------------------------------------------------------- round trips


def test_hwk_request_round_trip_covers_the_aauth_components(
    agent_key: ed25519.Ed25519PrivateKey,
) -> None:
    headers = _signed(agent_key, signature_key=signatures.signature_key_hwk(agent_key))
    assert headers["Signature-Key"].startswith('sig=hwk;kty="OKP";crv="Ed25519";x="')
    assert headers["Content-Digest"] == signatures.content_digest(BODY)
    verified = _verify(headers=headers)
    assert verified.scheme == "hwk"
    assert verified.token is None
    assert verified.public_jwk == signatures.public_jwk(agent_key)
    assert verified.jkt == signatures.jwk_thumbprint(signatures.public_jwk(agent_key))
    assert verified.keyid == verified.jkt
    assert verified.created == NOW
    assert verified.covered_components == (
        "@method",
        "@authority",
        "@path",
        "signature-key",
        "content-digest",
    )


def test_get_without_body_has_no_digest(agent_key: ed25519.Ed25519PrivateKey) -> None:
    headers = _signed(
        agent_key, signature_key=signatures.signature_key_hwk(agent_key), body=None, method="GET"
    )
    assert "Content-Digest" not in headers
    verified = _verify(headers=headers, method="GET", body=b"")
    assert "content-digest" not in verified.covered_components


def test_jwt_request_uses_the_tokens_cnf_key(
    agent_key: ed25519.Ed25519PrivateKey, keyset: keys.KeySet
) -> None:
    token = _bound_token(keyset, signatures.public_jwk(agent_key))
    headers = _signed(agent_key, signature_key=signatures.signature_key_jwt(token))
    assert headers["Signature-Key"] == f'sig=jwt;jwt="{token}"'
    unverified = _verify(headers=headers)
    assert unverified.token == token
    assert unverified.token_claims is None

    def verifier(raw: str) -> dict[str, object]:
        return tokens.verify(
            raw,
            public_keys=keyset.public_keys(),
            issuer="https://agentauth.test",
            now=datetime.fromtimestamp(NOW, tz=UTC),
        ).claims

    verified = _verify(headers=headers, token_verifier=verifier)
    assert verified.token_claims is not None
    assert verified.token_claims["cnf"]["jkt"] == verified.jkt


def test_token_verifier_errors_propagate(
    agent_key: ed25519.Ed25519PrivateKey, keyset: keys.KeySet
) -> None:
    token = _bound_token(keyset, signatures.public_jwk(agent_key))
    headers = _signed(agent_key, signature_key=signatures.signature_key_jwt(token))

    def expired(raw: str) -> dict[str, object]:
        return tokens.verify(
            raw,
            public_keys=keyset.public_keys(),
            issuer="https://agentauth.test",
            now=datetime.fromtimestamp(NOW + 3600, tz=UTC),
        ).claims

    with pytest.raises(errors.InvalidGrant, match=r"^invalid_grant: token has expired$"):
        _verify(headers=headers, token_verifier=expired)


# --------------------------------------------------------------------------- bad input


def test_signature_over_fewer_components_than_required(
    agent_key: ed25519.Ed25519PrivateKey,
) -> None:
    headers = _signed(
        agent_key,
        signature_key=signatures.signature_key_hwk(agent_key),
        components=("@method", "@authority", "@path"),
    )
    assert _reason(headers) == "signature does not cover required component 'signature-key'"


def test_caller_can_require_more_components(agent_key: ed25519.Ed25519PrivateKey) -> None:
    headers = _signed(agent_key, signature_key=signatures.signature_key_hwk(agent_key))
    required = (*signatures.BASE_COMPONENTS, "@query")
    assert _reason(headers, required_components=required) == (
        "signature does not cover required component '@query'"
    )


def test_missing_created(agent_key: ed25519.Ed25519PrivateKey) -> None:
    headers = _signed(agent_key, signature_key=signatures.signature_key_hwk(agent_key))
    headers["Signature-Input"] = headers["Signature-Input"].replace(f";created={NOW}", "")
    assert _reason(headers) == 'signature is missing the "created" parameter'


def test_expired_window(agent_key: ed25519.Ed25519PrivateKey) -> None:
    headers = _signed(agent_key, signature_key=signatures.signature_key_hwk(agent_key))
    assert _verify(headers=headers, now=NOW + 60).created == NOW  # the window edge is still valid
    assert _reason(headers, now=NOW + 61) == "signature expired: created more than 60s ago"


def test_created_in_the_future(agent_key: ed25519.Ed25519PrivateKey) -> None:
    headers = _signed(agent_key, signature_key=signatures.signature_key_hwk(agent_key))
    assert _reason(headers, now=NOW - 6) == 'signature "created" is in the future'


def test_wrong_key(agent_key: ed25519.Ed25519PrivateKey) -> None:
    other = ed25519.Ed25519PrivateKey.generate()
    headers = _signed(agent_key, signature_key=signatures.signature_key_hwk(other))
    assert _reason(headers) == "signature does not verify with the presented key"


def test_token_bound_to_another_key(
    agent_key: ed25519.Ed25519PrivateKey, keyset: keys.KeySet
) -> None:
    other = ed25519.Ed25519PrivateKey.generate()
    token = _bound_token(keyset, signatures.public_jwk(other))
    headers = _signed(agent_key, signature_key=signatures.signature_key_jwt(token))
    assert _reason(headers) == "signature does not verify with the presented key"


def test_tampered_body(agent_key: ed25519.Ed25519PrivateKey) -> None:
    headers = _signed(agent_key, signature_key=signatures.signature_key_hwk(agent_key))
    assert _reason(headers, body=b'{"title": "forged"}') == (
        "Content-Digest does not match the message body"
    )


def test_body_without_signed_digest(agent_key: ed25519.Ed25519PrivateKey) -> None:
    headers = _signed(agent_key, signature_key=signatures.signature_key_hwk(agent_key), body=None)
    assert _reason(headers) == "The message body requires a signed Content-Digest"


def test_tampered_path_and_authority(agent_key: ed25519.Ed25519PrivateKey) -> None:
    headers = _signed(agent_key, signature_key=signatures.signature_key_hwk(agent_key))
    expected = "signature does not verify with the presented key"
    assert _reason(headers, url="https://api.example.test:8443/v1/documents/43") == expected
    assert _reason(headers, url="https://evil.example.test:8443/v1/documents/42") == expected
    assert _reason(headers, method="PUT") == expected


def test_header_injection_in_a_covered_field_is_refused(
    agent_key: ed25519.Ed25519PrivateKey,
) -> None:
    headers = _signed(
        agent_key,
        signature_key=signatures.signature_key_hwk(agent_key),
        components=(*signatures.BASE_COMPONENTS, "x-tenant"),
        extra={"X-Tenant": "blue"},
    )
    headers["X-Tenant"] = 'blue\n"@path": /admin'
    assert _reason(headers) == ('Component value for ""x-tenant"" contains newline character')
    with pytest.raises(signatures.SignatureError) as caught:
        _signed(
            agent_key,
            signature_key=signatures.signature_key_hwk(agent_key),
            components=(*signatures.BASE_COMPONENTS, "x-tenant"),
            extra={"X-Tenant": 'blue\r\n"@path": /admin'},
        )
    assert caught.value.reason == (
        'cannot sign request: Component value for ""x-tenant"" contains newline character'
    )


def test_second_signature_key_line_is_refused(agent_key: ed25519.Ed25519PrivateKey) -> None:
    headers = _signed(agent_key, signature_key=signatures.signature_key_hwk(agent_key))
    other = ed25519.Ed25519PrivateKey.generate()
    lines = [*headers.items(), ("Signature-Key", signatures.signature_key_hwk(other, label="k2"))]
    assert _reason(lines) == "Signature-Key must have exactly one member labelled 'sig'"


def test_unsigned_request_and_missing_signature_key(agent_key: ed25519.Ed25519PrivateKey) -> None:
    assert _reason({"Content-Type": "application/json"}) == "request has no Signature-Key header"
    assert _reason({"Signature-Key": signatures.signature_key_hwk(agent_key)}) == (
        "request is not signed (no Signature-Input/Signature headers)"
    )


def test_bound_token_required_for_jwt_scheme(
    agent_key: ed25519.Ed25519PrivateKey, keyset: keys.KeySet
) -> None:
    unbound = _bound_token(keyset, None)
    headers = _signed(agent_key, signature_key=signatures.signature_key_jwt(unbound))
    assert _reason(headers) == "token is not bound to a key (no cnf.jwk)"


def test_signature_key_schemes_and_keys_are_allow_listed(
    agent_key: ed25519.Ed25519PrivateKey,
) -> None:
    cases = {
        'sig=jwks_uri;id="https://agent.example";kid="k1"': (
            "Signature-Key scheme 'jwks_uri' is not supported (use jwt or hwk)"
        ),
        'sig=hwk;kty="RSA";n="AQAB";e="AQAB"': (
            "signing key must be an Ed25519 OKP JWK, got kty='RSA' crv=None"
        ),
        'sig=hwk;kty="OKP";crv="Ed25519";x="AAAA"': (
            "signing key JWK x member is not a 32-byte Ed25519 key"
        ),
        'sig=hwk;kty="OKP";crv="Ed25519";x="AAAA";d="AAAA"': (
            "signing key must be a public JWK (it contains private key material)"
        ),
        "sig=jwt": 'Signature-Key sig=jwt has no "jwt" parameter',
        'sig=jwt;jwt="not-a-jwt"': "Signature-Key jwt is not a compact JWS",
        "sig=(": "Signature-Key is not a valid structured field dictionary",
        '"x"': "Signature-Key is not a valid structured field dictionary",
    }
    for value, reason in cases.items():
        headers = _signed(agent_key, signature_key=value)
        assert _reason(headers) == reason, value


def test_other_algorithm_in_signature_input(agent_key: ed25519.Ed25519PrivateKey) -> None:
    headers = _signed(agent_key, signature_key=signatures.signature_key_hwk(agent_key))
    headers["Signature-Input"] = headers["Signature-Input"].replace(
        'alg="ed25519"', 'alg="hmac-sha256"'
    )
    assert _reason(headers) == "Unexpected algorithm specified in the signature"


def test_cnf_jkt_must_match_cnf_jwk(
    agent_key: ed25519.Ed25519PrivateKey, keyset: keys.KeySet
) -> None:
    jwk = signatures.public_jwk(agent_key)
    token = _bound_token(keyset, jwk)
    header, _payload, signature = token.split(".")
    claims = tokens.jose.parse(token).payload
    claims["cnf"]["jkt"] = signatures.jwk_thumbprint(
        signatures.public_jwk(ed25519.Ed25519PrivateKey.generate())
    )

    forged_payload = tokens.jose.b64url_encode(json.dumps(claims).encode())
    forged = f"{header}.{forged_payload}.{signature}"
    headers = _signed(agent_key, signature_key=signatures.signature_key_jwt(forged))
    assert _reason(headers) == "token cnf.jkt does not match cnf.jwk"


def test_library_is_what_builds_the_base() -> None:
    # Guard: the module must delegate to http-message-signatures (issue requirement).
    assert signatures.hms is hms


# ------------------------------------------------------------ fast paths agree with the library
# verify_request reads the common one-signature form with a strict pattern and hands anything
# else to the library's Structured Fields parser; both must reach the same verdict.


def test_non_canonical_signature_fields_take_the_library_parser(
    agent_key: ed25519.Ed25519PrivateKey,
) -> None:
    headers = _signed(agent_key, signature_key=signatures.signature_key_hwk(agent_key))
    canonical = _verify(headers=headers)
    label, _, value = headers["Signature"].partition("=")
    unpadded = value.rstrip(":").rstrip("=") + ":"
    spaced = {
        **headers,
        # Two spaces between inner-list members and an unpadded byte sequence: both valid
        # Structured Fields, neither what the fast path accepts.
        "Signature-Input": headers["Signature-Input"].replace('" "', '"  "'),
        "Signature": f"{label}={unpadded}",
    }
    assert spaced["Signature-Input"] != headers["Signature-Input"]
    assert spaced["Signature"] != headers["Signature"]
    relaxed = _verify(headers=spaced)
    assert relaxed.replay_id == canonical.replay_id  # the same signed base
    assert relaxed.covered_components == canonical.covered_components


def test_second_signature_is_refused_on_the_library_path(
    agent_key: ed25519.Ed25519PrivateKey,
) -> None:
    headers = _signed(agent_key, signature_key=signatures.signature_key_hwk(agent_key))
    _, _, params = headers["Signature-Input"].partition("=")
    _, _, value = headers["Signature"].partition("=")
    doubled = {
        **headers,
        "Signature-Input": f"{headers['Signature-Input']}, other={params}",
        "Signature": f"{headers['Signature']}, other={value}",
    }
    assert _reason(doubled) == "request must carry exactly one signature"
    relabelled = {**headers, "Signature": f"other={value}"}
    assert _reason(relabelled) == "Signature-Input and Signature headers have different labels"


def test_duplicate_signature_parameter_is_read_as_the_library_reads_it(
    agent_key: ed25519.Ed25519PrivateKey,
) -> None:
    headers = _signed(agent_key, signature_key=signatures.signature_key_hwk(agent_key))
    canonical = _verify(headers=headers)
    # Structured Fields: a repeated parameter keeps its first position and takes the last
    # value.  Repeating created with its own value leaves the signed base unchanged...
    same = {**headers, "Signature-Input": headers["Signature-Input"] + f";created={NOW}"}
    assert _verify(headers=same).replay_id == canonical.replay_id
    # ...and with another value changes the base, so the signature no longer verifies.
    other = {**headers, "Signature-Input": headers["Signature-Input"] + f";created={NOW - 1}"}
    assert _reason(other) == "signature does not verify with the presented key"


def test_sha512_content_digest_takes_the_library_digest_check(
    agent_key: ed25519.Ed25519PrivateKey,
) -> None:
    digest = base64.b64encode(hashlib.sha512(BODY).digest()).decode()
    headers = _signed(
        agent_key,
        signature_key=signatures.signature_key_hwk(agent_key),
        extra={"Content-Digest": f"sha-512=:{digest}:"},
    )
    assert "content-digest" in _verify(headers=headers).covered_components
    assert _reason(headers, body=b'{"title": "forged"}') == (
        "Content-Digest does not match the message body"
    )


def test_malformed_signature_fields(agent_key: ed25519.Ed25519PrivateKey) -> None:
    headers = _signed(agent_key, signature_key=signatures.signature_key_hwk(agent_key))
    assert _reason({**headers, "Signature-Input": 'sig=("@method"'}) == (
        'Malformed structured header field "Signature-Input"'
    )
    assert _reason({**headers, "Signature": "sig=:not base64:"}) == (
        'Malformed structured header field "Signature"'
    )
    assert _reason({**headers, "Signature-Input": ""}) == "No signatures found in the message"
    assert _reason({**headers, "Signature": 'sig="text"'}) == (
        'Signature member "sig" must be a Byte Sequence'
    )
    assert _reason({**headers, "Signature-Input": 'sig="@method"'}) == (
        'Signature-Input member "sig" must be an Inner List'
    )


@pytest.mark.parametrize(
    "components",
    [
        ("@method", "@authority", "@path", "signature-key", "content-digest"),
        ("@method", "@authority", "@path", "@query", "content-type", "content-digest"),
        ("content-digest", "@path", "@method", "@authority"),
    ],
)
def test_fast_path_builds_the_base_the_library_parser_leads_to(
    agent_key: ed25519.Ed25519PrivateKey, components: tuple[str, ...]
) -> None:
    # Two requests with the same coverage share the fast path's parsed component
    # identifiers; each must still sign over exactly what the library's own parser yields.
    for _ in range(2):
        headers = _signed(
            agent_key,
            signature_key=signatures.signature_key_hwk(agent_key),
            components=components,
        )
        fast = _verify(headers=headers, required_components=())
        spaced = {**headers, "Signature-Input": headers["Signature-Input"].replace('" "', '"  "')}
        assert spaced["Signature-Input"] != headers["Signature-Input"]
        library = _verify(headers=spaced, required_components=())
        assert fast.replay_id == library.replay_id
        assert fast.covered_components == library.covered_components == components


def test_a_parameterised_digest_component_does_not_stand_for_content_digest(
    agent_key: ed25519.Ed25519PrivateKey,
) -> None:
    headers = _signed(
        agent_key,
        signature_key=signatures.signature_key_hwk(agent_key),
        components=("@method", "@authority", "@path", "signature-key", '"content-digest";sf'),
    )
    reason = "signature does not cover content-digest for a request with a body"
    assert _reason(headers) == reason


# --------------------------------------------------------------------------- keyid, key alg


def _signed_by_hand(
    key: ed25519.Ed25519PrivateKey, *, signature_key: str, params: str
) -> dict[str, str]:
    """A GET signed as the Signature-Key draft's examples are: the base built by the library
    from the given parameters (``keyid`` only when ``params`` has it)."""
    signature_input = f'sig=("@method" "@authority" "@path" "signature-key");{params}'
    parsed = hms.HTTPMessageVerifier._parse_signature_dictionary(signature_input)["sig"]
    headers = {"Signature-Key": signature_key}
    message = signatures._Request(
        method="GET", url=URL, headers=signatures._FieldLines(list(headers.items()))
    )
    builder = hms.HTTPMessageVerifier(signature_algorithm=hms.algorithms.ED25519, key_resolver=None)
    base, _, _ = builder._build_signature_base(
        message, covered_component_ids=list(parsed), signature_params=dict(parsed.params)
    )
    signature = base64.b64encode(key.sign(base.encode())).decode()
    return {**headers, "Signature-Input": signature_input, "Signature": f"sig=:{signature}:"}


def test_keyid_is_optional(agent_key: ed25519.Ed25519PrivateKey) -> None:
    headers = _signed_by_hand(
        agent_key, signature_key=signatures.signature_key_hwk(agent_key), params=f"created={NOW}"
    )
    verified = _verify(method="GET", headers=headers, body=None)
    assert verified.keyid is None
    assert verified.jkt == signatures.jwk_thumbprint(signatures.public_jwk(agent_key))


def test_a_keyid_must_name_the_signing_key(agent_key: ed25519.Ed25519PrivateKey) -> None:
    hwk = signatures.signature_key_hwk(agent_key)
    thumbprint = signatures.jwk_thumbprint(signatures.public_jwk(agent_key))
    named = _signed_by_hand(
        agent_key, signature_key=hwk, params=f'created={NOW};keyid="{thumbprint}"'
    )
    assert _verify(method="GET", headers=named, body=None).keyid == thumbprint
    other = _signed_by_hand(agent_key, signature_key=hwk, params=f'created={NOW};keyid="key-2"')
    assert _reason(other, method="GET", body=None) == (
        'signature "keyid" does not name the signing key (use its RFC 7638 thumbprint or the kid '
        "of its JWK, or leave keyid out)"
    )
    # The kid member of the hwk JWK names the key too.
    with_kid = hwk + ';kid="key-2"'
    named_by_kid = _signed_by_hand(
        agent_key, signature_key=with_kid, params=f'created={NOW};keyid="key-2"'
    )
    assert _verify(method="GET", headers=named_by_kid, body=None).keyid == "key-2"


@pytest.mark.parametrize("alg", ["EdDSA", "Ed25519"])
def test_a_signature_key_may_name_either_ed25519_algorithm(
    agent_key: ed25519.Ed25519PrivateKey, alg: str
) -> None:
    hwk = signatures.signature_key_hwk(agent_key) + f';alg="{alg}"'
    headers = _signed_by_hand(agent_key, signature_key=hwk, params=f"created={NOW}")
    assert _verify(method="GET", headers=headers, body=None).scheme == "hwk"


def test_a_signature_key_naming_another_algorithm_is_refused(
    agent_key: ed25519.Ed25519PrivateKey,
) -> None:
    hwk = signatures.signature_key_hwk(agent_key) + ';alg="RS256"'
    headers = _signed_by_hand(agent_key, signature_key=hwk, params=f"created={NOW}")
    assert (
        _reason(headers, method="GET", body=None)
        == "Signature-Key hwk alg must be EdDSA or Ed25519, not 'RS256'"
    )
