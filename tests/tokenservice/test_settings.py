"""Token service settings, rate limiter and remote JWKS refresh policy."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import pytest

from agentauth.domain import errors
from agentauth.tokenservice import ratelimit, settings, state


def test_flags_win_over_environment_and_defaults_fill_the_rest() -> None:
    parser = argparse.ArgumentParser()
    settings.add_arguments(parser)
    args = parser.parse_args(["--issuer", "https://flag.example/", "--listen-port", "9000"])
    env = {
        "AGENTAUTH_ISSUER": "https://env.example",
        "AGENTAUTH_TOKEN_REVIEW": "true",
        "AGENTAUTH_TRUSTED_ISSUERS": (
            '[{"issuer": "https://idp", "jwks_url": "https://idp/jwks", "audience": "aa"}]'
        ),
        "KUBECONFIG": "/tmp/a:/tmp/b",
    }
    built = settings.from_sources(args=args, environ=env)
    assert built.issuer == "https://flag.example"
    assert built.public_url == "https://flag.example"
    assert built.token_endpoint == "https://flag.example/oauth2/token"
    assert built.trust_domain == "flag.example"
    assert built.listen_port == 9000
    assert built.token_review is True
    assert built.trusted_issuers[0].audience == "aa"
    assert built.kubeconfig == Path("/tmp/a")


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({}, "--issuer / AGENTAUTH_ISSUER is required"),
        (
            {"AGENTAUTH_ISSUER": "not a url"},
            "--issuer / AGENTAUTH_ISSUER 'not a url' must be an absolute URL",
        ),
        (
            {"AGENTAUTH_ISSUER": "https://x", "AGENTAUTH_TLS_CERT": "/c.pem"},
            "--tls-cert and --tls-key must be given together",
        ),
        (
            {"AGENTAUTH_ISSUER": "https://x", "AGENTAUTH_LISTEN_PORT": "eighty"},
            "--listen-port / AGENTAUTH_LISTEN_PORT: 'eighty' is not valid",
        ),
        (
            {"AGENTAUTH_ISSUER": "https://x", "AGENTAUTH_TOKEN_REVIEW": "maybe"},
            "'maybe' is not a boolean (true/false)",
        ),
        (
            {"AGENTAUTH_ISSUER": "https://x", "AGENTAUTH_TRUSTED_ISSUERS": "[{}]"},
            "--trusted-issuers / AGENTAUTH_TRUSTED_ISSUERS must be a JSON list",
        ),
    ],
)
def test_bad_settings_name_the_flag(env: dict[str, str], message: str) -> None:
    with pytest.raises(settings.SettingsError) as caught:
        settings.from_sources(environ=env)
    assert str(caught.value).startswith(message)


def test_token_bucket_allows_burst_then_refills() -> None:
    clock = [0.0]
    buckets = ratelimit.TokenBuckets(rate=2.0, burst=3, clock=lambda: clock[0])
    for _ in range(3):
        buckets.take("a")
    with pytest.raises(errors.RateLimited) as caught:
        buckets.take("a")
    assert caught.value.retry_after == 1
    assert caught.value.headers == {"Retry-After": "1"}
    buckets.take("b")  # independent bucket
    clock[0] = 0.5
    buckets.take("a")  # one token refilled after 0.5 s at 2/s
    with pytest.raises(errors.RateLimited):
        buckets.take("a")


class CountingFetch:
    """A JWKS source that counts fetches and can rotate its key set."""

    def __init__(self) -> None:
        self.calls = 0
        self.document: dict[str, Any] = {"keys": []}

    async def __call__(self) -> dict[str, Any]:
        self.calls += 1
        return self.document


async def test_remote_keys_cache_and_rate_limit_refetches() -> None:
    clock = [100.0]
    source = CountingFetch()
    remote = state.RemoteKeys(source, name="cluster", clock=lambda: clock[0])
    await remote.get(refresh=False)
    await remote.get(refresh=False)
    assert source.calls == 1
    # an unknown kid asks for a refresh; within MIN_REFETCH_INTERVAL it is not honoured
    clock[0] += state.MIN_REFETCH_INTERVAL - 1
    await remote.get(refresh=True)
    assert source.calls == 1
    clock[0] += 1
    source.document = {"keys": [{"kty": "OKP", "crv": "Ed25519", "x": "A" * 43, "kid": "new"}]}
    assert "new" in await remote.get(refresh=True)
    assert source.calls == 2
    # without a refresh request the set is still refetched once it is JWKS_MAX_AGE old
    clock[0] += state.JWKS_MAX_AGE + 1
    await remote.get(refresh=False)
    assert source.calls == 3


async def test_remote_keys_unavailable_on_first_fetch_failure() -> None:
    async def failing() -> dict[str, Any]:
        raise OSError("connection refused")

    with pytest.raises(errors.TemporarilyUnavailable) as caught:
        await state.RemoteKeys(failing, name="cluster").get(refresh=False)
    assert caught.value.description == "cannot fetch the cluster signing keys"
