"""Controller settings from flags and environment: precedence, defaults, every refusal."""

from __future__ import annotations

import argparse
import datetime

import pytest

from agentauth.controller import settings


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    settings.add_arguments(parser)
    return parser.parse_args(list(argv))


def test_defaults_derive_from_the_issuer() -> None:
    built = settings.from_sources(None, environ={"AGENTAUTH_ISSUER": "https://id.example.com"})
    assert built.token_service_url == "https://id.example.com"
    assert built.token_endpoint == "https://id.example.com/oauth2/token"
    assert built.trust_domain == "id.example.com"
    assert built.namespace == "agentauth-system"
    assert built.clusterwide
    assert built.projected_token_expiry == datetime.timedelta(hours=1)
    assert built.access_request_expiry == datetime.timedelta(minutes=10)
    assert built.webhook_dns_names() == (
        "agentauth-controller",
        "agentauth-controller.agentauth-system",
        "agentauth-controller.agentauth-system.svc",
        "agentauth-controller.agentauth-system.svc.cluster.local",
    )


def test_flags_win_over_environment_which_wins_over_defaults() -> None:
    environ = {
        "AGENTAUTH_ISSUER": "https://env.example.com",
        "AGENTAUTH_WATCH_NAMESPACES": "a, b,",
        "AGENTAUTH_KEY_ROTATION_INTERVAL": "12h",
        "POD_NAMESPACE": "from-pod",
        "AGENTAUTH_WEBHOOK_PORT": "9000",
    }
    built = settings.from_sources(
        parse(
            "--issuer",
            "https://flag.example.com",
            "--watch-namespace",
            "c",
            "--webhook-extra-host",
            "127.0.0.1",
        ),
        environ=environ,
    )
    assert built.issuer == "https://flag.example.com"
    assert built.watch_namespaces == ("c",)
    assert not built.clusterwide
    assert built.key_rotation_interval == datetime.timedelta(hours=12)
    assert built.namespace == "from-pod"
    assert built.webhook_port == 9000
    assert built.webhook_dns_names()[-1] == "127.0.0.1"
    env_only = settings.from_sources(None, environ=environ)
    assert env_only.watch_namespaces == ("a", "b")


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        ({}, "--issuer / AGENTAUTH_ISSUER is required (the token issuer URL)"),
        (
            {"AGENTAUTH_ISSUER": "http://plain.example"},
            "--issuer / AGENTAUTH_ISSUER: 'http://plain.example' is not an https:// URL",
        ),
        (
            {"AGENTAUTH_ISSUER": "https://i.example", "AGENTAUTH_TOKEN_SERVICE_URL": "ftp://x"},
            "--token-service-url / AGENTAUTH_TOKEN_SERVICE_URL: 'ftp://x' is not an http(s) URL",
        ),
        (
            {"AGENTAUTH_ISSUER": "https://i.example", "AGENTAUTH_PROJECTED_TOKEN_EXPIRY": "599s"},
            "--projected-token-expiry / AGENTAUTH_PROJECTED_TOKEN_EXPIRY: must be at least 600s "
            "(the kubelet rejects shorter projected tokens)",
        ),
        (
            {"AGENTAUTH_ISSUER": "https://i.example", "AGENTAUTH_KEY_RETENTION": "30m"},
            "--key-retention / AGENTAUTH_KEY_RETENTION: must be at least 1h (the longest "
            "agent-token lifetime), or tokens would outlive their verification key",
        ),
        (
            {"AGENTAUTH_ISSUER": "https://i.example", "AGENTAUTH_WEBHOOK_PORT": "70000"},
            "--webhook-port: 70000 is not a TCP port",
        ),
        (
            {"AGENTAUTH_ISSUER": "https://i.example", "AGENTAUTH_WEBHOOK_PORT": "https"},
            "--webhook-port / AGENTAUTH_WEBHOOK_PORT: invalid literal for int() with base 10: "
            "'https'",
        ),
        (
            {"AGENTAUTH_ISSUER": "https://i.example", "AGENTAUTH_KEY_ROTATION_INTERVAL": "1 day"},
            "--key-rotation-interval / AGENTAUTH_KEY_ROTATION_INTERVAL: invalid duration '1 day': "
            "expected a duration such as '300s', '5m', '1h' or '1h30m' (whole hours, minutes, "
            "seconds)",
        ),
        (
            {"AGENTAUTH_ISSUER": "https://i.example", "AGENTAUTH_WORKERS": "0"},
            "--workers / AGENTAUTH_WORKERS: must be at least 1",
        ),
        (
            {"AGENTAUTH_ISSUER": "https://i.example", "AGENTAUTH_LOG_LEVEL": "trace"},
            "--log-level / AGENTAUTH_LOG_LEVEL: 'trace' is not one of debug, info, warning, error",
        ),
    ],
)
def test_bad_values_are_refused_with_the_flag_and_variable(
    environ: dict[str, str], message: str
) -> None:
    with pytest.raises(settings.SettingsError) as caught:
        settings.from_sources(None, environ=environ)
    assert str(caught.value) == message
