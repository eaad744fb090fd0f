"""Token service settings, rate limiter and remote JWKS refresh policy."""

from __future__ import annotations

import argparse
import os
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


def test_watched_namespaces_log_level_and_client_limit() -> None:
    base = {"AGENTAUTH_ISSUER": "https://x"}
    defaults = settings.from_sources(environ=base)
    assert defaults.watch_namespaces == ()
    assert defaults.log_level == "info"
    assert (defaults.client_rate_limit_per_second, defaults.client_rate_limit_burst) == (50.0, 100)
    env = {
        **base,
        "AGENTAUTH_WATCH_NAMESPACES": "team-a, team-b,",
        "AGENTAUTH_LOG_LEVEL": "WARNING",
        "AGENTAUTH_CLIENT_RATE_LIMIT": "0",
        "AGENTAUTH_CLIENT_RATE_LIMIT_BURST": "7",
    }
    from_env = settings.from_sources(environ=env)
    assert from_env.watch_namespaces == ("team-a", "team-b")
    assert from_env.log_level == "warning"
    assert (from_env.client_rate_limit_per_second, from_env.client_rate_limit_burst) == (0.0, 7)
    parser = argparse.ArgumentParser()
    settings.add_arguments(parser)
    args = parser.parse_args(
        ["--watch-namespace", "c", "--watch-namespace", "d", "--log-level", "debug"]
    )
    from_flags = settings.from_sources(args=args, environ=env)
    assert from_flags.watch_namespaces == ("c", "d")  # the flag wins over the variable
    assert from_flags.log_level == "debug"
    assert "AGENTAUTH_WATCH_NAMESPACES" in settings.ENVIRONMENT_VARIABLES
    assert "AGENTAUTH_WATCH_NAMESPACE" not in settings.ENVIRONMENT_VARIABLES


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
        (
            {"AGENTAUTH_ISSUER": "https://x", "AGENTAUTH_WATCH_NAMESPACE": "team-a"},
            "AGENTAUTH_WATCH_NAMESPACE is no longer read: set AGENTAUTH_WATCH_NAMESPACES "
            "(comma-separated, as for the controller) or --watch-namespace (repeatable)",
        ),
        (
            {"AGENTAUTH_ISSUER": "https://x", "AGENTAUTH_LOG_LEVEL": "verbose"},
            "--log-level / AGENTAUTH_LOG_LEVEL: 'verbose' is not one of debug, info, warning, "
            "error",
        ),
        (
            {"AGENTAUTH_ISSUER": "https://x", "AGENTAUTH_CLIENT_RATE_LIMIT": "-1"},
            "--client-rate-limit must be >= 0 (0: off) and --client-rate-limit-burst >= 1",
        ),
        (
            {"AGENTAUTH_ISSUER": "https://x", "AGENTAUTH_CLIENT_RATE_LIMIT_BURST": "0"},
            "--client-rate-limit must be >= 0 (0: off) and --client-rate-limit-burst >= 1",
        ),
        (
            {"AGENTAUTH_ISSUER": "https://x", "AGENTAUTH_CLIENT_RATE_LIMIT": "lots"},
            "--client-rate-limit / AGENTAUTH_CLIENT_RATE_LIMIT: 'lots' is not valid",
        ),
    ],
)
def test_bad_settings_name_the_flag(env: dict[str, str], message: str) -> None:
    with pytest.raises(settings.SettingsError) as caught:
        settings.from_sources(environ=env)
    assert str(caught.value).startswith(message)


def test_api_deadline_and_shutdown_timings() -> None:
    base = {"AGENTAUTH_ISSUER": "https://x"}
    defaults = settings.from_sources(environ=base)
    assert (defaults.api_timeout, defaults.shutdown_delay, defaults.shutdown_timeout) == (5, 0, 5)
    tuned = settings.from_sources(
        environ={
            **base,
            "AGENTAUTH_API_TIMEOUT": "2.5",
            "AGENTAUTH_SHUTDOWN_DELAY": "3",
            "AGENTAUTH_SHUTDOWN_TIMEOUT": "10",
        }
    )
    assert (tuned.api_timeout, tuned.shutdown_delay, tuned.shutdown_timeout) == (2.5, 3, 10)


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("AGENTAUTH_API_TIMEOUT", "0", "--api-timeout must be more than 0 and at most 300"),
        ("AGENTAUTH_API_TIMEOUT", "nan", "--api-timeout must be more than 0 and at most 300"),
        ("AGENTAUTH_API_TIMEOUT", "soon", "--api-timeout / AGENTAUTH_API_TIMEOUT: 'soon' is not"),
        (
            "AGENTAUTH_SHUTDOWN_TIMEOUT",
            "301",
            "--shutdown-timeout must be more than 0 and at most 300",
        ),
        ("AGENTAUTH_SHUTDOWN_DELAY", "-1", "--shutdown-delay must be between 0 and 300 seconds"),
    ],
)
def test_bad_timings_name_the_flag(variable: str, value: str, message: str) -> None:
    with pytest.raises(settings.SettingsError) as caught:
        settings.from_sources(environ={"AGENTAUTH_ISSUER": "https://x", variable: value})
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


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("0", "--workers / AGENTAUTH_WORKERS must be 1 to 64 or auto"),
        ("65", "--workers / AGENTAUTH_WORKERS must be 1 to 64 or auto"),
        ("many", "--workers / AGENTAUTH_WORKERS: 'many' is not valid"),
    ],
)
def test_bad_worker_counts_name_the_flag(value: str, message: str) -> None:
    with pytest.raises(settings.SettingsError) as caught:
        settings.from_sources(environ={"AGENTAUTH_ISSUER": "https://x", "AGENTAUTH_WORKERS": value})
    assert str(caught.value) == message


def test_workers_default_to_one_and_auto_is_the_cpus_the_process_may_use() -> None:
    base = {"AGENTAUTH_ISSUER": "https://x"}
    assert settings.from_sources(environ=base).workers == 1
    assert settings.from_sources(environ={**base, "AGENTAUTH_WORKERS": "3"}).workers == 3
    auto = settings.from_sources(environ={**base, "AGENTAUTH_WORKERS": "auto"}).workers
    assert auto == settings.available_cpus()
    assert 1 <= auto <= len(os.sched_getaffinity(0))


@pytest.mark.parametrize(
    ("files", "cpus"),
    [
        ({"cpu.max": "max 100000\n"}, None),  # no quota: the CPUs it may run on
        ({"cpu.max": "200000 100000\n"}, 2),
        ({"cpu.max": "150000 100000\n"}, 1),  # 1.5 CPUs: rounded down
        ({"cpu.max": "50000 100000\n"}, 1),  # less than one: still one worker
        ({"cpu/cpu.cfs_quota_us": "300000\n", "cpu/cpu.cfs_period_us": "100000\n"}, 3),
        ({"cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n"}, None),
        ({}, None),
    ],
)
def test_auto_reads_the_cgroup_cpu_quota(
    tmp_path: Path, files: dict[str, str], cpus: int | None
) -> None:
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    affinity = len(os.sched_getaffinity(0))
    expected = min(cpus, affinity) if cpus is not None else min(affinity, settings.MAX_WORKERS)
    assert settings.available_cpus(cgroup=tmp_path) == expected
