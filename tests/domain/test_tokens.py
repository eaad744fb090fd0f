"""Agent tokens: RFC 9068 shape, EdDSA signature checked by PyJWT, and strict verification."""

from __future__ import annotations

import json
from datetime import timedelta

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519

from agentauth.domain import errors, jose, keys, tokens
from tests.domain import tokenkit
from tests.domain.tokenkit import ISSUER, NOW

AGENT = tokens.AgentRef(name="research", namespace="team-a", uid="agent-uid-1")
SUB = tokens.agent_subject(name="research", namespace="team-a", trust_domain="example.test")


@pytest.fixture(scope="module")
def keyset() -> keys.KeySet:
    return tokenkit.issuer_keys()


def issue(keyset: keys.KeySet, **kw: object) -> tokens.IssuedToken:
    args: dict[str, object] = {
        "keyset": keyset,
        "issuer": ISSUER,
        "subject": SUB,
        "agent": AGENT,
        "audience": ISSUER,
        "scope": ("document.read", "document.write"),
        "lifetime": timedelta(minutes=5),
        "now": NOW,
        "client_id": SUB,
    }
    args.update(kw)
    return tokens.issue(**args)  # type: ignore[arg-type]


def test_issued_token_is_an_rfc9068_eddsa_jwt_that_pyjwt_accepts(keyset: keys.KeySet) -> None:
    issued = issue(keyset, pod={"name": "research-0", "uid": "pod-uid-1"})
    header = jwt.get_unverified_header(issued.token)
    assert header == {"alg": "EdDSA", "kid": keyset.signing_key().kid, "typ": "at+jwt"}
    public = keyset.signing_key().public_key
    claims = jwt.decode(
        issued.token,
        public,
        algorithms=["EdDSA"],
        audience=ISSUER,
        issuer=ISSUER,
        options={"verify_exp": False, "verify_iat": False, "verify_nbf": False},
    )
    assert claims["sub"] == "aauth:research.team-a@example.test"
    assert claims["scope"] == "document.read document.write"
    assert claims["agent"] == {"name": "research", "namespace": "team-a", "uid": "agent-uid-1"}
    assert claims["pod"] == {"name": "research-0", "uid": "pod-uid-1"}
    assert claims["exp"] - claims["iat"] == 300 == issued.expires_in
    assert claims["nbf"] == claims["iat"]
    assert set(claims) == {
        "iss",
        "sub",
        "aud",
        "exp",
        "iat",
        "nbf",
        "jti",
        "client_id",
        "scope",
        "agent",
        "pod",
    }


def test_cnf_carries_the_public_jwk_and_its_thumbprint_only(keyset: keys.KeySet) -> None:
    private = ed25519.Ed25519PrivateKey.generate()
    jwk = {**jose.ed25519_jwk(private.public_key()), "d": "secret-part"}
    claims = issue(keyset, cnf_jwk=jwk).claims
    assert "d" not in claims["cnf"]["jwk"]
    assert claims["cnf"]["jkt"] == jose.jwk_thumbprint(jose.ed25519_jwk(private.public_key()))


def test_extra_claims_never_replace_the_tokens_own(keyset: keys.KeySet) -> None:
    named = {"namespace": "team-a", "name": "docs", "uid": "ts-uid-1"}
    extra = {"exp": 1, "iat": 2, "nbf": 3, "jti": "chosen", "iss": "https://evil.test"}
    issued = issue(keyset, extra_claims={**extra, "tool_server": named})
    iat = int(NOW.timestamp())
    assert (issued.claims["iat"], issued.claims["nbf"], issued.claims["exp"]) == (
        iat,
        iat,
        iat + 300,
    )
    assert issued.claims["jti"] != "chosen"
    assert issued.claims["iss"] == ISSUER
    assert issued.claims["tool_server"] == named


def test_lifetime_is_capped_at_one_hour(keyset: keys.KeySet) -> None:
    assert issue(keyset, lifetime=timedelta(hours=5)).expires_in == 3600


def test_verify_round_trip(keyset: keys.KeySet) -> None:
    issued = issue(keyset, act={"sub": "user@example.com"})
    verified = tokens.verify(
        issued.token, public_keys=keyset.public_keys(), issuer=ISSUER, now=NOW, audience=ISSUER
    )
    assert verified.agent == AGENT
    assert verified.scope == ("document.read", "document.write")
    assert verified.act == {"sub": "user@example.com"}


def test_verify_refuses_a_foreign_key_expired_wrong_typ_and_wrong_audience(
    keyset: keys.KeySet,
) -> None:
    issued = issue(keyset)
    other = tokenkit.issuer_keys()
    with pytest.raises(jose.UnknownKeyId):
        tokens.verify(issued.token, public_keys=other.public_keys(), issuer=ISSUER, now=NOW)
    with pytest.raises(errors.InvalidGrant, match=r"^invalid_grant: token has expired$"):
        tokens.verify(
            issued.token,
            public_keys=keyset.public_keys(),
            issuer=ISSUER,
            now=NOW + timedelta(minutes=7),
        )
    with pytest.raises(errors.InvalidGrant, match="token audience does not include this issuer"):
        tokens.verify(
            issued.token,
            public_keys=keyset.public_keys(),
            issuer=ISSUER,
            now=NOW,
            audience="https://tool.example",
        )
    _header, payload, _ = issued.token.split(".")
    plain_header = jose.b64url_encode(
        json.dumps({"alg": "EdDSA", "kid": keyset.signing_key().kid, "typ": "JWT"}).encode()
    )
    signing_input = f"{plain_header}.{payload}"
    signature = jose.b64url_encode(keyset.signing_key().private_key.sign(signing_input.encode()))
    with pytest.raises(errors.InvalidGrant, match=r"token is not an at\+jwt access token"):
        tokens.verify(
            f"{signing_input}.{signature}", public_keys=keyset.public_keys(), issuer=ISSUER, now=NOW
        )


def test_verify_only_accepts_eddsa(keyset: keys.KeySet) -> None:
    cluster = tokenkit.ClusterIssuer(issuer=ISSUER)
    rs256 = cluster.sign({"iss": ISSUER, "sub": SUB, "exp": 2**40}, kid=keyset.signing_key().kid)
    with pytest.raises(errors.InvalidGrant, match="token algorithm 'RS256' is not allowed"):
        tokens.verify(rs256, public_keys=keyset.public_keys(), issuer=ISSUER, now=NOW)


def test_verify_takes_now_as_epoch_seconds_too(keyset: keys.KeySet) -> None:
    issued = issue(keyset, lifetime=timedelta(minutes=5))
    public_keys = keyset.public_keys()
    at = NOW.timestamp()
    verified = tokens.verify(issued.token, public_keys=public_keys, issuer=ISSUER, now=at)
    assert verified.claims == issued.claims
    with pytest.raises(errors.InvalidGrant) as caught:
        tokens.verify(issued.token, public_keys=public_keys, issuer=ISSUER, now=at + 301, leeway=0)
    assert caught.value.description == "token has expired"


def test_the_issued_algorithm_name_is_a_choice_and_both_names_verify(keyset: keys.KeySet) -> None:
    for alg in tokens.ALGORITHMS:
        issued = issue(keyset, algorithm=alg)
        assert jwt.get_unverified_header(issued.token)["alg"] == alg
        verified = tokens.verify(
            issued.token, public_keys=keyset.public_keys(), issuer=ISSUER, now=NOW
        )
        assert verified.subject == SUB
    with pytest.raises(ValueError, match="agent tokens are signed with one of"):
        issue(keyset, algorithm="RS256")


def test_the_jwks_names_the_algorithm_tokens_are_issued_under(keyset: keys.KeySet) -> None:
    assert {k["alg"] for k in keyset.public_jwks()["keys"]} == {"EdDSA"}
    assert {k["alg"] for k in keyset.public_jwks(algorithm="Ed25519")["keys"]} == {"Ed25519"}
    with pytest.raises(keys.KeySetError):
        keyset.public_jwks(algorithm="ES256")
