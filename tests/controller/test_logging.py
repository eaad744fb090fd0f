"""``AGENTAUTH_LOG_LEVEL`` for the controller: the flag or variable reaches the settings, and
``main.configure_logging`` (what ``agentauth controller`` calls once at startup) applies it to the
whole process, Kopf's loggers included."""

from __future__ import annotations

import argparse
import io
import logging
from collections.abc import Iterator

import pytest

from agentauth.controller import main
from agentauth.controller import settings as controller_settings

ISSUER = {"AGENTAUTH_ISSUER": "https://i.example"}


@pytest.fixture
def restored_root() -> Iterator[None]:
    """Leave the root logger as the test found it (configure_logging is process-wide)."""
    root = logging.getLogger()
    level, handlers = root.level, list(root.handlers)
    yield
    root.setLevel(level)
    for handler in list(root.handlers):
        if handler not in handlers:
            root.removeHandler(handler)


def test_level_comes_from_flag_over_environment() -> None:
    assert controller_settings.from_sources(None, environ=ISSUER).log_level == "info"
    environ = {**ISSUER, "AGENTAUTH_LOG_LEVEL": "Warning"}
    assert controller_settings.from_sources(None, environ=environ).log_level == "warning"
    parser = argparse.ArgumentParser()
    controller_settings.add_arguments(parser)
    args = parser.parse_args(["--log-level", "debug"])
    assert controller_settings.from_sources(args, environ=environ).log_level == "debug"


@pytest.mark.usefixtures("restored_root")
@pytest.mark.parametrize(
    ("level", "expected"),
    [
        ("debug", ["DEBUG kopf.objects: d", "INFO agentauth.controller: i", "WARNING kopf: w"]),
        ("info", ["INFO agentauth.controller: i", "WARNING kopf: w"]),
        ("warning", ["WARNING kopf: w"]),
        ("error", []),
    ],
)
def test_configure_logging_applies_the_level(level: str, expected: list[str]) -> None:
    settings = controller_settings.from_sources(
        None, environ={**ISSUER, "AGENTAUTH_LOG_LEVEL": level}
    )
    stream = io.StringIO()
    main.configure_logging(settings, stream=stream)
    logging.getLogger("kopf.objects").debug("d")
    logging.getLogger("agentauth.controller").info("i")
    logging.getLogger("kopf").warning("w")
    written = [line.split(" ", 2)[2] for line in stream.getvalue().splitlines()]
    assert written == expected
