"""Registered-key agents: RFC 7523 client assertions, each bad input with its exact error."""

from __future__ import annotations

import json

import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

from agentauth.domain import assertions, errors, jose, signatures

NOW = 1_790_000_000.0
LIFETIME_EXCEEDED = (
    "assertion lifetime exceeds 5 minutes: set exp to at most iat + 300 (authlib: expires_in=300)"
)
AGENT_ID = "aauth:reporter.team-a@cluster.local"
TOKEN_ENDPOINT = "https://agentauth.test/oauth2/token"
SIGNER_JKT = "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"
"""Thumbprint of the key that signs the token request (the assertion names it in cnf.jkt)."""


@pytest.fixture(scope="module")
def agent_key() -> ed25519.Ed25519PrivateKey:
    return ed25519.Ed25519PrivateKey.generate()


@pytest.fixture(scope="module")
def kid(agent_key: ed25519.Ed25519PrivateKey) -> str:
    return signatures.jwk_thumbprint(signatures.public_jwk(agent_key))


@pytest.fixture(scope="module")
def jwks(agent_key: ed25519.Ed25519PrivateKey, kid: str) -> dict[str, object]:
    return {"keys": [{**signatures.public_jwk(agent_key), "kid": kid}]}


def _assertion(key: ed25519.Ed25519PrivateKey, kid: str, **overrides: object) -> str:
    return assertions.create_client_assertion(
        private_key=key,
        kid=kid,
        agent_id=str(overrides.pop("agent_id", AGENT_ID)),
        token_endpoint=str(overrides.pop("token_endpoint", TOKEN_ENDPOINT)),
        now=float(overrides.pop("now", NOW)),  # type: ignore[arg-type]
        lifetime=int(overrides.pop("lifetime", 60)),  # type: ignore[call-overload]
        cnf_jkt=str(overrides.pop("cnf_jkt", SIGNER_JKT)),
    )


def _forge(header: dict[str, object], claims: dict[str, object], sign: object) -> str:
    signing_input = (
        jose.b64url_encode(json.dumps(header).encode())
        + "."
        + jose.b64url_encode(json.dumps(claims).encode())
    )
    signature = sign(signing_input.encode())  # type: ignore[operator]
    return f"{signing_input}.{jose.b64url_encode(signature)}"


def _claims(**overrides: object) -> dict[str, object]:
    claims: dict[str, object] = {
        "iss": AGENT_ID,
        "sub": AGENT_ID,
        "aud": TOKEN_ENDPOINT,
        "iat": int(NOW),
        "exp": int(NOW) + 60,
        "jti": "jti-1",
        "cnf": {"jkt": SIGNER_JKT},
    }
    claims.update(overrides)
    return {k: v for k, v in claims.items() if v is not None}


def _verify(
    assertion: str,
    jwks: dict[str, object],
    *,
    cache: assertions.ReplayCache | None = None,
    now: float = NOW,
    client_id: str | None = None,
    signer_jkt: str | None = SIGNER_JKT,
) -> assertions.VerifiedAssertion:
    return assertions.verify_client_assertion(
        assertion=assertion,
        agent_id=AGENT_ID,
        public_keys=jwks,
        token_endpoint=TOKEN_ENDPOINT,
        now=now,
        replay_cache=cache if cache is not None else assertions.InMemoryReplayCache(),
        signer_jkt=signer_jkt,
        client_id=client_id,
    )


def _error(assertion: str, jwks: dict[str, object], **kwargs: object) -> str:
    with pytest.raises(errors.InvalidClient) as caught:
        _verify(assertion, jwks, **kwargs)  # type: ignore[arg-type]
    assert caught.value.error == "invalid_client"
    assert caught.value.status == 401
    return caught.value.description


def test_valid_assertion(agent_key: ed25519.Ed25519PrivateKey, kid: str, jwks: dict) -> None:
    verified = _verify(_assertion(agent_key, kid), jwks, client_id=AGENT_ID)
    assert verified.agent_id == AGENT_ID
    assert verified.kid == kid
    assert verified.expires_at == int(NOW) + 60


def test_key_without_kid_matches_by_thumbprint(
    agent_key: ed25519.Ed25519PrivateKey, kid: str
) -> None:
    jwks = {"keys": [signatures.public_jwk(agent_key)]}
    assert _verify(_assertion(agent_key, kid), jwks).kid == kid


def test_replayed_jti(agent_key: ed25519.Ed25519PrivateKey, kid: str, jwks: dict) -> None:
    cache = assertions.InMemoryReplayCache()
    assertion = _assertion(agent_key, kid)
    _verify(assertion, jwks, cache=cache)
    assert _error(assertion, jwks, cache=cache) == "assertion jti has already been used"
    # After it expires the jti may be forgotten; the assertion itself is then expired anyway.
    assert _error(assertion, jwks, cache=cache, now=NOW + 120) == "assertion has expired"


def test_expired_and_far_future(agent_key: ed25519.Ed25519PrivateKey, kid: str, jwks: dict) -> None:
    assert _error(_assertion(agent_key, kid), jwks, now=NOW + 91) == "assertion has expired"
    assert _error(_assertion(agent_key, kid, now=NOW + 600), jwks) == "assertion is not yet valid"
    too_long = _forge(
        {"alg": "EdDSA", "kid": kid},
        _claims(exp=int(NOW) + 301),
        agent_key.sign,
    )
    assert _error(too_long, jwks) == LIFETIME_EXCEEDED
    backdated_iat = _forge(
        {"alg": "EdDSA", "kid": kid},
        _claims(iat=int(NOW) - 100, exp=int(NOW) + 400),
        agent_key.sign,
    )
    assert _error(backdated_iat, jwks) == LIFETIME_EXCEEDED


def test_lifetime_is_capped_when_creating(agent_key: ed25519.Ed25519PrivateKey, kid: str) -> None:
    created = _assertion(agent_key, kid, lifetime=3600)
    claims = jose.parse(created).payload
    assert claims["exp"] - claims["iat"] == 300


def test_key_not_registered(agent_key: ed25519.Ed25519PrivateKey, jwks: dict) -> None:
    other = ed25519.Ed25519PrivateKey.generate()
    other_kid = signatures.jwk_thumbprint(signatures.public_jwk(other))
    assert _error(_assertion(other, other_kid), jwks) == (
        f"assertion key {other_kid!r} is not registered for this agent"
    )
    assert _error(_assertion(agent_key, "k1"), {"keys": []}) == (
        "assertion key 'k1' is not registered for this agent"
    )
    assert _error(_assertion(agent_key, "k1"), {}) == "agent has no registered public keys"


def test_registered_kid_signed_by_another_key(kid: str, jwks: dict) -> None:
    impostor = ed25519.Ed25519PrivateKey.generate()
    assert _error(_assertion(impostor, kid), jwks) == "assertion signature is invalid"


def test_wrong_audience(agent_key: ed25519.Ed25519PrivateKey, kid: str, jwks: dict) -> None:
    assertion = _assertion(agent_key, kid, token_endpoint="https://other.test/oauth2/token")
    assert _error(assertion, jwks) == (
        "assertion audience must be the token endpoint https://agentauth.test/oauth2/token"
    )


def test_iss_sub_and_client_id(agent_key: ed25519.Ed25519PrivateKey, kid: str, jwks: dict) -> None:
    other = _assertion(agent_key, kid, agent_id="aauth:other.team-a@cluster.local")
    assert _error(other, jwks) == "assertion iss and sub must both be the agent identifier"
    sub_differs = _forge({"alg": "EdDSA", "kid": kid}, _claims(sub="someone"), agent_key.sign)
    assert _error(sub_differs, jwks) == "assertion iss and sub must both be the agent identifier"
    assert _error(_assertion(agent_key, kid), jwks, client_id="aauth:x.y@cluster.local") == (
        "client_id does not match the assertion issuer"
    )


def test_missing_claims(agent_key: ed25519.Ed25519PrivateKey, kid: str, jwks: dict) -> None:
    header = {"alg": "EdDSA", "kid": kid}
    for claim, message in {
        "exp": "assertion has no exp claim",
        "iat": "assertion has no iat claim",
        "jti": "assertion has no jti claim",
    }.items():
        forged = _forge(header, _claims(**{claim: None}), agent_key.sign)
        assert _error(forged, jwks) == message, claim
    assert _error(_forge({"alg": "EdDSA", "kid": ""}, _claims(), agent_key.sign), jwks) == (
        "assertion header kid must be a non-empty string"
    )


def test_without_kid_the_one_registered_key_is_used(
    agent_key: ed25519.Ed25519PrivateKey, kid: str, jwks: dict
) -> None:
    # authlib's PrivateKeyJWT sends no kid; with one registered key there is no ambiguity.
    assertion = _forge({"alg": "EdDSA", "typ": "JWT"}, _claims(), agent_key.sign)
    assert _verify(assertion, jwks).kid == kid
    unnamed = {"keys": [signatures.public_jwk(agent_key)]}  # no kid: its thumbprint names it
    assertion = _forge({"alg": "EdDSA"}, _claims(jti="jti-2"), agent_key.sign)
    assert _verify(assertion, unnamed).kid == kid


def test_without_kid_a_second_registered_key_makes_it_ambiguous(
    agent_key: ed25519.Ed25519PrivateKey, jwks: dict
) -> None:
    other = ed25519.Ed25519PrivateKey.generate()
    two = {"keys": [*jwks["keys"], signatures.public_jwk(other)]}
    assertion = _forge({"alg": "EdDSA"}, _claims(), agent_key.sign)
    assert _error(assertion, two) == (
        "assertion header has no kid and the agent has 2 registered keys: name the signing key "
        "in kid"
    )
    # Without kid the one key is the only candidate: another key's signature does not verify.
    forged = _forge({"alg": "EdDSA"}, _claims(), other.sign)
    assert _error(forged, jwks) == "assertion signature is invalid"


def test_the_rfc9864_algorithm_name_is_accepted(
    agent_key: ed25519.Ed25519PrivateKey, kid: str, jwks: dict
) -> None:
    assertion = _forge({"alg": "Ed25519", "kid": kid}, _claims(jti="jti-9864"), agent_key.sign)
    assert _verify(assertion, jwks).jti == "jti-9864"


def test_rsa_and_hmac_keys_and_algorithms_are_refused(
    agent_key: ed25519.Ed25519PrivateKey, kid: str
) -> None:
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    numbers = rsa_key.public_key().public_numbers()
    rsa_jwk = {
        "kty": "RSA",
        "kid": "rsa-1",
        "n": jose.b64url_encode(numbers.n.to_bytes(256, "big")),
        "e": jose.b64url_encode(numbers.e.to_bytes(3, "big")),
    }
    hmac_jwk = {"kty": "oct", "kid": "hmac-1", "k": jose.b64url_encode(b"s" * 32)}
    jwks = {"keys": [rsa_jwk, hmac_jwk]}
    assert _error(_assertion(agent_key, "rsa-1"), jwks) == (
        "registered key 'rsa-1' is an RSA key; only Ed25519 (OKP) keys are accepted"
    )
    assert _error(_assertion(agent_key, "hmac-1"), jwks) == (
        "registered key 'hmac-1' is a symmetric (HMAC) key; only Ed25519 (OKP) keys are accepted"
    )
    import hashlib
    import hmac as hmac_module

    hs256 = _forge(
        {"alg": "HS256", "kid": "hmac-1"},
        _claims(),
        lambda data: hmac_module.new(b"s" * 32, data, hashlib.sha256).digest(),
    )
    assert _error(hs256, jwks) == "assertion algorithm 'HS256' is not allowed; use EdDSA or Ed25519"
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import padding

    rs256 = _forge(
        {"alg": "RS256", "kid": "rsa-1"},
        _claims(),
        lambda data: rsa_key.sign(data, padding.PKCS1v15(), hashes.SHA256()),
    )
    assert _error(rs256, jwks) == "assertion algorithm 'RS256' is not allowed; use EdDSA or Ed25519"
    unsigned = _forge({"alg": "none", "kid": kid}, _claims(), lambda data: b"")
    assert (
        _error(unsigned, {"keys": []})
        == "assertion algorithm 'none' is not allowed; use EdDSA or Ed25519"
    )


def test_malformed_assertion(jwks: dict) -> None:
    assert _error("garbage", jwks) == (
        "client_assertion is malformed: token is not a compact JWS (expected three segments)"
    )


def test_assertion_type_and_other_forms_are_refused(
    agent_key: ed25519.Ed25519PrivateKey, kid: str
) -> None:
    assertions.check_assertion_type(assertions.CLIENT_ASSERTION_TYPE)
    with pytest.raises(errors.InvalidClient) as caught:
        assertions.check_assertion_type("urn:ietf:params:oauth:client-assertion-type:saml2-bearer")
    assert caught.value.description == (
        "client_assertion_type must be urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
    )
    with pytest.raises(errors.InvalidRequest) as as_subject:
        assertions.reject_as_subject_token(_assertion(agent_key, kid))
    assert as_subject.value.error == "invalid_request"
    assert as_subject.value.description == (
        "agent assertions must be sent as client_assertion (RFC 7523) with "
        "grant_type=client_credentials, not as a subject_token"
    )
    assertions.reject_as_subject_token("not-a-jwt")  # left to the regular verifier
    with pytest.raises(errors.UnsupportedGrantType) as grant:
        assertions.reject_grant_type(assertions.JWT_BEARER_GRANT)
    assert grant.value.error == "unsupported_grant_type"
    assertions.reject_grant_type("client_credentials")


def test_agent_name_from_identifier() -> None:
    name = assertions.agent_name_from_identifier(AGENT_ID, trust_domain="cluster.local")
    assert name == assertions.AgentName(name="reporter", namespace="team-a")
    expected = "assertion issuer must be an agent identifier aauth:<name>.<namespace>@cluster.local"
    for bad in (
        "aauth:reporter@cluster.local",
        "aauth:reporter.team-a@other.domain",
        "spiffe://cluster.local/ns/team-a/sa/reporter",
        "aauth:.team-a@cluster.local",
        "aauth:a.b.c@cluster.local",
    ):
        with pytest.raises(errors.InvalidClient) as caught:
            assertions.agent_name_from_identifier(bad, trust_domain="cluster.local")
        assert caught.value.description == expected, bad


def test_peek_issuer(agent_key: ed25519.Ed25519PrivateKey, kid: str) -> None:
    assert assertions.peek_issuer(_assertion(agent_key, kid)) == AGENT_ID
    no_iss = _forge({"alg": "EdDSA", "kid": kid}, _claims(iss=None), agent_key.sign)
    with pytest.raises(errors.InvalidClient, match=r"^invalid_client: assertion has no iss claim$"):
        assertions.peek_issuer(no_iss)


def test_replay_cache_fails_closed_when_full() -> None:
    cache = assertions.InMemoryReplayCache(max_entries=2)
    cache.remember("a", expires_at=NOW + 10, now=NOW)
    cache.remember("b", expires_at=NOW + 10, now=NOW)
    with pytest.raises(errors.TemporarilyUnavailable):
        cache.remember("c", expires_at=NOW + 10, now=NOW)
    cache.remember("c", expires_at=NOW + 30, now=NOW + 11)  # expired entries are pruned
    assert len(cache) == 1
    with pytest.raises(assertions.Replayed):
        cache.remember("c", expires_at=NOW + 30, now=NOW + 12)


def test_assertion_is_bound_to_the_key_that_signs_the_request(
    agent_key: ed25519.Ed25519PrivateKey, kid: str, jwks: dict
) -> None:
    """A captured assertion is worth nothing without the key it names (issue 14, finding 4)."""
    assertion = _assertion(agent_key, kid)
    cache = assertions.InMemoryReplayCache()
    assert _error(assertion, jwks, cache=cache, signer_jkt=None) == (
        "the token request must be signed (RFC 9421) by the key the assertion names in cnf.jkt"
    )
    assert _error(assertion, jwks, cache=cache, signer_jkt="an-attackers-key-thumbprint") == (
        "the token request is not signed by the key the assertion names in cnf.jkt"
    )
    # the refused attempts did not spend the jti: its holder's own request still succeeds
    assert _verify(assertion, jwks, cache=cache).jti
    # Without cnf the token goes to the registered key itself: a captured cnf-less assertion
    # yields a token only the registered key's holder can use, and a request signed by any other
    # key is refused.
    unbound = _forge({"alg": "EdDSA", "kid": kid}, _claims(cnf=None), agent_key.sign)
    registered = jose.ed25519_jwk(agent_key.public_key())
    assert _error(unbound, jwks, signer_jkt="an-attackers-key-thumbprint") == (
        "the token request is signed by a key the assertion does not name: put that key's "
        "RFC 7638 thumbprint in the assertion's cnf.jkt, or sign with the registered key"
    )
    assert _verify(unbound, jwks, signer_jkt=None).holder_jwk == registered
    again = _forge({"alg": "EdDSA", "kid": kid}, _claims(cnf=None, jti="jti-2"), agent_key.sign)
    by_registered = _verify(again, jwks, signer_jkt=jose.jwk_thumbprint(registered))
    assert by_registered.holder_jwk is None
    assert _verify(assertion, jwks, cache=assertions.InMemoryReplayCache()).holder_jwk is None
    malformed = _forge({"alg": "EdDSA", "kid": kid}, _claims(cnf={"jkt": 7}), agent_key.sign)
    assert _error(malformed, jwks) == (
        "assertion cnf must carry jkt: the thumbprint of the key that signs the token request"
    )
