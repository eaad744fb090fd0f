"""Service-account token verification: every bad input gets its exact error."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest

from agentauth.domain import clockskew, errors, jose, serviceaccounts
from tests.domain import tokenkit
from tests.domain.tokenkit import CLUSTER_ISSUER, ISSUER, NOW


@pytest.fixture(scope="module")
def cluster() -> tokenkit.ClusterIssuer:
    return tokenkit.ClusterIssuer()


@pytest.fixture(scope="module")
def jwks(cluster: tokenkit.ClusterIssuer) -> jose.PublicKeySet:
    return jose.PublicKeySet.from_jwks(cluster.jwks())


def verify(
    token: str, jwks: jose.PublicKeySet, **kw: object
) -> serviceaccounts.ServiceAccountIdentity:
    return serviceaccounts.verify_service_account_token(
        token,
        jwks=jwks,
        issuer=CLUSTER_ISSUER,
        audience=ISSUER,
        now=kw.pop("now", NOW),
        **kw,  # type: ignore[arg-type]
    )


def test_valid_token_gives_the_pod_bound_identity(
    cluster: tokenkit.ClusterIssuer, jwks: jose.PublicKeySet
) -> None:
    identity = verify(cluster.token(), jwks)
    assert identity.namespace == "team-a"
    assert identity.service_account == "research-sa"
    assert (identity.pod_name, identity.pod_uid) == ("research-0", "pod-uid-1")
    assert identity.username == "system:serviceaccount:team-a:research-sa"


def bad(cluster: tokenkit.ClusterIssuer) -> dict[str, str]:
    claims = cluster.claims()
    token = cluster.sign(claims)
    header, payload, signature = token.split(".")
    tampered_claims = dict(claims, sub="system:serviceaccount:team-a:admin")
    tampered_payload = tokenkit.b64(json.dumps(tampered_claims).encode())
    return {
        "alg none": cluster.alg_none(claims),
        "hs256 with public key": cluster.hs256_with_public_key(claims),
        "unknown kid": cluster.sign(claims, kid="not-a-cluster-key"),
        "expired": cluster.token(now=NOW - timedelta(minutes=20), lifetime=600),
        "not yet valid": cluster.token(now=NOW + timedelta(minutes=5)),
        "wrong aud": cluster.token(audience="https://someone-else.example"),
        "wrong iss": cluster.sign(dict(claims, iss="https://evil.example")),
        "tampered": f"{header}.{tampered_payload}.{signature}",
        "garbage base64": "eyJhbGciOiJSUzI1NiJ9.%%%not-base64%%%.c2ln",
        "two segments": f"{header}.{payload}",
        "huge": "a" * (1024 * 1024),
    }


EXPECTED = {
    "alg none": (errors.InvalidGrant, "token algorithm 'none' is not allowed"),
    "hs256 with public key": (errors.InvalidGrant, "token algorithm 'HS256' is not allowed"),
    "unknown kid": (jose.UnknownKeyId, "token signed with unknown key id 'not-a-cluster-key'"),
    "expired": (errors.InvalidGrant, "token has expired"),
    "not yet valid": (errors.InvalidGrant, "token is not yet valid"),
    "wrong aud": (errors.InvalidGrant, "token audience does not include this issuer"),
    "wrong iss": (errors.InvalidGrant, "token issuer is not trusted"),
    "tampered": (errors.InvalidGrant, "token signature is invalid"),
    "garbage base64": (errors.InvalidGrant, "token is not valid base64url"),
    "two segments": (errors.InvalidGrant, "token is not a compact JWS (expected three segments)"),
    "huge": (errors.InvalidRequest, "token exceeds 16384 bytes"),
}


@pytest.mark.parametrize("case", sorted(EXPECTED))
def test_bad_tokens_are_refused_with_exact_errors(
    case: str, cluster: tokenkit.ClusterIssuer, jwks: jose.PublicKeySet
) -> None:
    kind, description = EXPECTED[case]
    with pytest.raises(kind) as caught:
        verify(bad(cluster)[case], jwks)
    assert caught.value.description == description
    # The wire error exactly (jose's typed failures are subclasses of these OAuth classes).
    assert (caught.value.error, caught.value.status) == (kind.default_error, kind.default_status)


def test_leeway_is_the_shared_clock_skew_and_cannot_be_widened(
    cluster: tokenkit.ClusterIssuer, jwks: jose.PublicKeySet
) -> None:
    leeway = clockskew.LEEWAY_SECONDS
    token = cluster.token(now=NOW - timedelta(seconds=600 + leeway - 1), lifetime=600)
    assert verify(token, jwks).pod_name == "research-0"  # expired less than the leeway ago
    with pytest.raises(errors.InvalidGrant, match="token has expired"):
        verify(token, jwks, leeway=3600, now=NOW + timedelta(seconds=1))


def test_token_not_bound_to_a_pod_is_refused(
    cluster: tokenkit.ClusterIssuer, jwks: jose.PublicKeySet
) -> None:
    claims = cluster.claims()
    del claims["kubernetes.io"]["pod"]
    with pytest.raises(errors.InvalidGrant) as caught:
        verify(cluster.sign(claims), jwks)
    assert caught.value.description == "service-account token is not bound to a pod"


def test_sub_that_disagrees_with_the_kubernetes_claims_is_refused(
    cluster: tokenkit.ClusterIssuer, jwks: jose.PublicKeySet
) -> None:
    claims = dict(cluster.claims(), sub="system:serviceaccount:team-a:other")
    with pytest.raises(errors.InvalidGrant) as caught:
        verify(cluster.sign(claims), jwks)
    assert caught.value.description == "service-account token subject does not match its claims"


def test_missing_exp_is_refused(cluster: tokenkit.ClusterIssuer, jwks: jose.PublicKeySet) -> None:
    claims = cluster.claims()
    del claims["exp"]
    with pytest.raises(errors.InvalidGrant) as caught:
        verify(cluster.sign(claims), jwks)
    assert caught.value.description == "token has no exp claim"


REVIEWED = {
    "authenticated": True,
    "audiences": ["https://agentauth.example"],
    "user": {
        "username": "system:serviceaccount:team-a:research-sa",
        "uid": "sa-uid-1",
        "extra": {
            serviceaccounts.POD_NAME_EXTRA: ["research-0"],
            serviceaccounts.POD_UID_EXTRA: ["pod-uid-1"],
        },
    },
}


def test_token_review_must_confirm_our_audience() -> None:
    for audiences in (None, [], ["https://other.example"]):
        status = {**REVIEWED, "audiences": audiences}
        with pytest.raises(errors.InvalidGrant) as caught:
            serviceaccounts.identity_from_token_review(status, audience="https://agentauth.example")
        assert caught.value.description == (
            "the cluster did not confirm that the service-account token is meant for "
            "https://agentauth.example"
        )


def test_token_review_status_gives_the_same_identity() -> None:
    identity = serviceaccounts.identity_from_token_review(
        REVIEWED, audience="https://agentauth.example"
    )
    assert (identity.namespace, identity.service_account, identity.pod_uid) == (
        "team-a",
        "research-sa",
        "pod-uid-1",
    )
    with pytest.raises(errors.InvalidGrant, match="the cluster rejected the service-account token"):
        serviceaccounts.identity_from_token_review(
            {"authenticated": False}, audience="https://agentauth.example"
        )


def test_a_token_presented_again_is_checked_again(
    cluster: tokenkit.ClusterIssuer, jwks: jose.PublicKeySet
) -> None:
    """The second presentation of a token is not decoded again, but nothing it is checked for
    is remembered: its expiry against the time of the call, its audience and issuer against
    the call's, and its signature against the call's key set (a rotated-out cluster key)."""
    token = cluster.token(lifetime=600)
    assert verify(token, jwks).pod_name == "research-0"
    with pytest.raises(jose.Expired):
        verify(token, jwks, now=NOW + timedelta(minutes=20))
    with pytest.raises(jose.WrongAudience):
        serviceaccounts.verify_service_account_token(
            token, jwks=jwks, issuer=CLUSTER_ISSUER, audience="https://other.example", now=NOW
        )
    with pytest.raises(jose.UntrustedIssuer):
        serviceaccounts.verify_service_account_token(
            token, jwks=jwks, issuer="https://other-cluster.example", audience=ISSUER, now=NOW
        )
    with pytest.raises(jose.UnknownKeyId):
        verify(token, jose.PublicKeySet({}))
    # the same kid naming another key (the cluster's key replaced): the signature fails
    replaced = jose.PublicKeySet({cluster.kid: tokenkit.ClusterIssuer().key.public_key()})
    with pytest.raises(jose.BadSignature):
        verify(token, replaced)
    assert verify(token, jwks).pod_uid == "pod-uid-1"


def test_tokens_kept_decoded_are_bounded() -> None:
    cluster = tokenkit.ClusterIssuer()
    keyset = jose.PublicKeySet.from_jwks(cluster.jwks())
    for index in range(serviceaccounts.DECODED_TOKENS + 5):
        token = cluster.token(pod_uid=f"pod-{index}")
        assert verify(token, keyset).pod_uid == f"pod-{index}"
    assert len(serviceaccounts._decoded) == serviceaccounts.DECODED_TOKENS


def test_a_token_presented_again_outlasts_tokens_presented_once() -> None:
    """The decoded tokens are bounded, and the first to go is the least recently presented: a
    pod presenting its token between as many tokens presented once as the bound still finds it
    decoded (its entry is the same object), where the first of those others is gone."""
    cluster = tokenkit.ClusterIssuer()
    keyset = jose.PublicKeySet.from_jwks(cluster.jwks())
    kept = cluster.token(pod_uid="kept")
    verify(kept, keyset)
    entry = serviceaccounts._decoded[kept]
    once = [
        cluster.token(pod_uid=f"once-{index}") for index in range(serviceaccounts.DECODED_TOKENS)
    ]
    for index, token in enumerate(once):
        verify(token, keyset)
        if index % 100 == 0:
            assert verify(kept, keyset).pod_uid == "kept"
    assert len(serviceaccounts._decoded) == serviceaccounts.DECODED_TOKENS
    assert serviceaccounts._decoded.get(kept) is entry
    assert once[0] not in serviceaccounts._decoded
