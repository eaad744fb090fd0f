"""Each Deployment passes its command only flags and variables that command reads.

The chart is rendered with real Helm for every variant of ``test_chart.VARIANTS`` (including
``tokenService.useTokenReview=true`` and ``extraArgs``); the container's ``args`` are parsed with
the real ``agentauth`` parser (an unknown flag is an error there, as it is in the pod), every
variable name is checked against the component's ``ENVIRONMENT_VARIABLES``, and settings are built
from both the way the process builds them. The two components must then agree on everything they
share: issuer, namespace, watched namespaces, log level.
"""

from __future__ import annotations

import argparse
import contextlib
import io
from typing import Any

import pytest

from agentauth import cli
from agentauth.controller import settings as controller_settings
from agentauth.tokenservice import settings as tokenservice_settings
from tests.charts import chart
from tests.charts.test_chart import VARIANTS

COMPONENTS = {
    "agentauth-controller": ("controller", controller_settings.ENVIRONMENT_VARIABLES),
    "agentauth-token-service": ("token-service", tokenservice_settings.ENVIRONMENT_VARIABLES),
}


def _container(objects: list[dict[str, Any]], name: str) -> dict[str, Any]:
    pod = chart.one(objects, "Deployment", name)["spec"]["template"]["spec"]
    container: dict[str, Any] = pod["containers"][0]
    return container


def _parse(args: list[str]) -> argparse.Namespace:
    errors = io.StringIO()
    try:
        with contextlib.redirect_stderr(errors):
            return cli.build_parser().parse_args(args)
    except SystemExit:
        raise AssertionError(f"agentauth {' '.join(args)}: {errors.getvalue()}") from None


def _settings(objects: list[dict[str, Any]], name: str) -> Any:
    command, known = COMPONENTS[name]
    container = _container(objects, name)
    assert container["args"][0] == command
    parsed = _parse(container["args"])
    names = [e["name"] for e in container["env"]]
    assert len(names) == len(set(names)), names
    assert sorted(set(names) - known) == []
    environ = {e["name"]: e["value"] for e in container["env"] if "value" in e}
    if name == "agentauth-controller":
        environ["POD_NAMESPACE"] = "agentauth-system"  # the downward API's value in the pod
        return controller_settings.from_sources(parsed, environ=environ)
    return tokenservice_settings.from_sources(args=parsed, environ=environ)


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_deployments_pass_only_what_their_command_reads(variant: str) -> None:
    values = VARIANTS[variant]
    objects = chart.render(values)
    controller = _settings(objects, "agentauth-controller")
    tokens = _settings(objects, "agentauth-token-service")
    watched = tuple((values.get("controller") or {}).get("watchNamespaces") or ())
    level = (values.get("global") or {}).get("logLevel", "info")
    assert controller.watch_namespaces == tokens.watch_namespaces == watched
    assert controller.log_level == tokens.log_level == level
    assert controller.issuer == tokens.issuer == "https://agentauth.example.com"
    assert controller.namespace == tokens.namespace == "agentauth-system"
    review = (values.get("tokenService") or {}).get("useTokenReview", False)
    assert tokens.token_review is review


def test_extra_args_reach_the_settings() -> None:
    objects = chart.render(VARIANTS["dev-url-tokenreview"])
    assert _settings(objects, "agentauth-controller").workers == 4
    tokens = _settings(objects, "agentauth-token-service")
    assert tokens.client_rate_limit_per_second == 5.0
    assert tokens.log_format == "text"
    assert tokens.token_review is True


def test_an_unknown_extra_flag_is_caught() -> None:
    objects = chart.render({"tokenService": {"extraArgs": ["--watch-namespaces=a"]}})
    with pytest.raises(AssertionError) as caught:
        _settings(objects, "agentauth-token-service")
    assert "unrecognized arguments: --watch-namespaces=a" in str(caught.value)
