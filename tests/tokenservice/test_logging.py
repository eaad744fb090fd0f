"""``AGENTAUTH_LOG_LEVEL`` through the real ``agentauth token-service`` process.

The process runs against the embedded control plane (watching one empty namespace) and is stopped
with SIGTERM once ``/healthz`` answers; what it wrote on stderr shows which records passed.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from agentauth.devcluster import server
from tests.stack import free_port, wait_for

AGENTAUTH = Path(sys.executable).parent / "agentauth"


def _run_until_healthy(
    dev_cluster: server.DevCluster, *, level: str
) -> tuple[int, list[dict[str, str]]]:
    port = free_port()
    environment = {
        **os.environ,
        "AGENTAUTH_ISSUER": "https://issuer.agentauth.test",
        "AGENTAUTH_CONTROLLER_NAMESPACE": "default",
        "AGENTAUTH_WATCH_NAMESPACES": "default",
        "AGENTAUTH_LISTEN_HOST": "127.0.0.1",
        "AGENTAUTH_LISTEN_PORT": str(port),
        "AGENTAUTH_LOG_LEVEL": level,
        "KUBECONFIG": str(dev_cluster.kubeconfig_path),
    }
    process = subprocess.Popen(
        [str(AGENTAUTH), "token-service"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env=environment,
    )
    try:
        # "token service on URL" is logged in the same step that opens the listener, so it is
        # written before /healthz can answer.
        wait_for(lambda: _healthy(port, process), timeout=20, message="token service /healthz")
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=20)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    lines = [json.loads(line) for line in stderr.splitlines() if line.startswith("{")]
    return process.returncode, lines


def _healthy(port: int, process: subprocess.Popen[str]) -> bool:
    if process.poll() is not None:
        raise AssertionError(f"token service exited {process.returncode}")
    try:
        return httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200
    except httpx.TransportError:
        return False


@pytest.mark.parametrize(("level", "shown"), [("info", True), ("WARNING", False)])
def test_log_level_decides_what_reaches_stderr(
    dev_cluster: server.DevCluster, level: str, shown: bool
) -> None:
    code, lines = _run_until_healthy(dev_cluster, level=level)
    assert code == 0
    started = [line for line in lines if line["message"].startswith("token service on http://")]
    assert bool(started) is shown, lines
    if not shown:
        assert [line for line in lines if line["level"] in ("DEBUG", "INFO")] == []


def test_a_bad_log_level_stops_the_command_before_it_serves() -> None:
    result = subprocess.run(
        [str(AGENTAUTH), "token-service", "--log-level", "loud"],
        capture_output=True,
        text=True,
        env={**os.environ, "AGENTAUTH_ISSUER": "https://issuer.agentauth.test"},
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert result.stderr == (
        "agentauth token-service: error: --log-level / AGENTAUTH_LOG_LEVEL: 'loud' is not one of "
        "debug, info, warning, error\n"
    )
