"""The verified-token cache of ResourceVerifier: a shortcut, never a weaker check.

Real Ed25519 keys and tokens; ``verify_with_keys`` is the synchronous core the middleware runs.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519

from agentauth.domain import errors, jose, keys, signatures, tokens
from agentauth.verify import JwksCache, ResourceVerifier

ISSUER = "https://agentauth.cache.test"
AUDIENCE = "https://docs.cache.test"
URL = "https://docs.cache.test/v1/documents/7"
START = 1_800_000_000


@pytest.fixture(scope="module")
def keyset() -> keys.KeySet:
    return keys.generate_keyset(now=datetime.fromtimestamp(START, tz=UTC))


@pytest.fixture(scope="module")
def agent_key() -> ed25519.Ed25519PrivateKey:
    return ed25519.Ed25519PrivateKey.generate()


def _token(keyset: keys.KeySet, agent_key: ed25519.Ed25519PrivateKey) -> str:
    return tokens.issue(
        keyset=keyset,
        issuer=ISSUER,
        subject="aauth:reporter.team-a@cluster.local",
        agent=tokens.AgentRef(name="reporter", namespace="team-a", uid="u1"),
        audience=AUDIENCE,
        scope=["document.read"],
        lifetime=timedelta(minutes=5),
        now=datetime.fromtimestamp(START, tz=UTC),
        client_id="aauth:reporter.team-a@cluster.local",
        cnf_jwk=signatures.public_jwk(agent_key),
        extra_claims={"tool_server": {"namespace": "team-a", "name": "docs", "uid": "ts-1"}},
    ).token


def _headers(agent_key: ed25519.Ed25519PrivateKey, token: str, created: int) -> dict[str, str]:
    return signatures.sign_request(
        method="GET",
        url=URL,
        headers={},
        body=None,
        private_key=agent_key,
        signature_key_header=signatures.signature_key_jwt(token),
        created=created,
    )


class _Clock:
    def __init__(self) -> None:
        self.now = float(START)

    def __call__(self) -> float:
        return self.now


def _verifier(keyset: keys.KeySet, clock: _Clock, *, size: int = 1024) -> ResourceVerifier:
    return ResourceVerifier(
        issuer=ISSUER,
        audience=AUDIENCE,
        tool_server="team-a/docs",
        jwks=JwksCache(jwks=keyset.public_jwks()),
        token_cache_size=size,
        clock=clock,
    )


def test_cache_hit_gives_fresh_claims_and_still_checks_the_request(
    keyset: keys.KeySet, agent_key: ed25519.Ed25519PrivateKey
) -> None:
    clock = _Clock()
    verifier = _verifier(keyset, clock)
    token = _token(keyset, agent_key)
    public_keys = keyset.public_keys()
    first_headers = _headers(agent_key, token, START)
    first = verifier.verify_with_keys(
        method="GET", url=URL, headers=first_headers, body=b"", keys=public_keys
    )
    assert verifier.token_cache is not None and len(verifier.token_cache) == 1
    second = verifier.verify_with_keys(
        method="GET",
        url=URL,
        headers=_headers(agent_key, token, START),
        body=b"",
        keys=public_keys,
    )
    assert second.claims == first.claims
    assert second.claims is not first.claims
    assert second.claims["agent"] is not first.claims["agent"]
    # The cache never stands in for the request checks: a replay and a wrong key still fail.
    with pytest.raises(errors.InvalidToken, match=r"already used \(replay\)$"):
        verifier.verify_with_keys(
            method="GET", url=URL, headers=first_headers, body=b"", keys=public_keys
        )
    thief = ed25519.Ed25519PrivateKey.generate()
    with pytest.raises(
        errors.InvalidToken, match=r"signature does not verify with the presented key$"
    ):
        verifier.verify_with_keys(
            method="GET",
            url=URL,
            headers=_headers(thief, token, START),
            body=b"",
            keys=public_keys,
        )


def test_cached_token_expires_with_its_exp(
    keyset: keys.KeySet, agent_key: ed25519.Ed25519PrivateKey
) -> None:
    clock = _Clock()
    verifier = _verifier(keyset, clock)
    token = _token(keyset, agent_key)
    public_keys = keyset.public_keys()
    verifier.verify_with_keys(
        method="GET",
        url=URL,
        headers=_headers(agent_key, token, START),
        body=b"",
        keys=public_keys,
    )
    exp = int(jose.parse(token).payload["exp"])
    clock.now = exp + verifier.leeway  # first instant the full check refuses it
    headers = _headers(agent_key, token, int(clock.now))
    with pytest.raises(errors.InvalidToken) as caught:
        verifier.verify_with_keys(
            method="GET", url=URL, headers=headers, body=b"", keys=public_keys
        )
    assert caught.value.description == "token has expired"
    assert verifier.token_cache is not None and len(verifier.token_cache) == 0


def test_cached_token_needs_the_key_that_verified_it(
    keyset: keys.KeySet, agent_key: ed25519.Ed25519PrivateKey
) -> None:
    clock = _Clock()
    verifier = _verifier(keyset, clock)
    token = _token(keyset, agent_key)
    verifier.verify_with_keys(
        method="GET",
        url=URL,
        headers=_headers(agent_key, token, START),
        body=b"",
        keys=keyset.public_keys(),
    )
    rotated = keys.generate_keyset(now=datetime.fromtimestamp(START, tz=UTC)).public_keys()
    with pytest.raises(jose.UnknownKeyId):
        verifier.verify_with_keys(
            method="GET",
            url=URL,
            headers=_headers(agent_key, token, START),
            body=b"",
            keys=rotated,
        )


def test_cache_is_bounded_and_can_be_disabled(
    keyset: keys.KeySet, agent_key: ed25519.Ed25519PrivateKey
) -> None:
    clock = _Clock()
    bounded = _verifier(keyset, clock, size=2)
    for _ in range(3):
        token = _token(keyset, agent_key)
        bounded.verify_with_keys(
            method="GET",
            url=URL,
            headers=_headers(agent_key, token, START),
            body=b"",
            keys=keyset.public_keys(),
        )
    assert bounded.token_cache is not None and len(bounded.token_cache) == 2
    assert _verifier(keyset, clock, size=0).token_cache is None
