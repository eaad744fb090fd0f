"""The controller's liveness endpoint (the chart's probes point at it)."""

from __future__ import annotations

import dataclasses

import httpx

from tests.controller.conftest import ControllerThread, Install, free_port, wait_for


def test_healthz_answers_while_running(install: Install) -> None:
    port = free_port()
    settings = dataclasses.replace(install.settings, health_host="127.0.0.1", health_port=port)
    running = ControllerThread(settings).start()
    try:
        response = wait_for(
            lambda: _get(f"http://127.0.0.1:{port}/healthz"), message="healthz answers"
        )
        assert response.status_code == 200
    finally:
        running.stop()
    assert _get(f"http://127.0.0.1:{port}/healthz") is None


def _get(url: str) -> httpx.Response | None:
    try:
        return httpx.get(url, timeout=2)
    except httpx.TransportError:
        return None
