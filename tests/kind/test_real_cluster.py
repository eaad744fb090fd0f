"""End to end on a real cluster (kind), run by `make kind-e2e` after the chart is installed.

Skipped unless AGENTAUTH_E2E_KUBECONFIG names the cluster's kubeconfig: the project's CI machines
have no Docker, so `make test` proves the same flows on the embedded control plane instead.
"""

from __future__ import annotations

import contextlib
import json
import os
import pathlib
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import httpx
import jwt
import pytest

KUBECONFIG = os.environ.get("AGENTAUTH_E2E_KUBECONFIG", "")
ISSUER = os.environ.get("AGENTAUTH_E2E_ISSUER", "https://agentauth.e2e.test")
SAMPLES = pathlib.Path(__file__).resolve().parents[2] / "samples"
KUBECTL = pathlib.Path(sys.executable).parent / "kubectl"

pytestmark = pytest.mark.skipif(
    not KUBECONFIG, reason="no real cluster: set AGENTAUTH_E2E_KUBECONFIG (make kind-e2e does)"
)


def kubectl(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(KUBECTL), "--kubeconfig", KUBECONFIG, *args],
        capture_output=True,
        text=True,
        check=check,
        timeout=120,
    )


def get(kind: str, name: str, namespace: str) -> dict[str, Any]:
    result: dict[str, Any] = json.loads(
        kubectl("get", kind, name, "-n", namespace, "-o", "json").stdout
    )
    return result


@pytest.fixture(scope="module")
def samples_applied() -> Iterator[None]:
    kubectl("apply", "-f", str(SAMPLES))
    kubectl(
        "wait", "--for=condition=Ready", "agent/research-assistant", "-n", "demo", "--timeout=60s"
    )
    yield
    kubectl("delete", "namespace", "demo", "--wait=false", check=False)


@contextlib.contextmanager
def port_forward(service: str, port: int) -> Iterator[str]:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        local = probe.getsockname()[1]
    process = subprocess.Popen(
        [
            str(KUBECTL),
            "--kubeconfig",
            KUBECONFIG,
            "port-forward",
            "-n",
            "agentauth-system",
            f"service/{service}",
            f"{local}:{port}",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"http://127.0.0.1:{local}/readyz", timeout=2).status_code == 200:
                    break
            if time.monotonic() > deadline or process.poll() is not None:
                raise AssertionError("port-forward to the token service never became ready")
        yield f"http://127.0.0.1:{local}"
    finally:
        process.terminate()
        process.wait(timeout=10)


@pytest.mark.usefixtures("samples_applied")
def test_agent_is_ready_with_its_capabilities() -> None:
    agent = get("agent", "research-assistant", "demo")
    names = {capability["name"] for capability in agent["status"]["capabilities"]}
    assert names == {"document.read", "document.search", "payments.authorize"}
    assert agent["status"]["agentID"].startswith("aauth:research-assistant.demo@")


@pytest.mark.usefixtures("samples_applied")
def test_pod_gets_projected_credentials_from_the_webhook() -> None:
    pod = get("pod", "research-assistant", "demo")
    volumes = {volume["name"]: volume for volume in pod["spec"]["volumes"]}
    projected = [
        source["serviceAccountToken"]
        for volume in volumes.values()
        for source in (volume.get("projected") or {}).get("sources", [])
        if "serviceAccountToken" in source
    ]
    assert any(token["audience"] == ISSUER for token in projected)
    env = {item["name"]: item.get("value") for item in pod["spec"]["containers"][0]["env"]}
    assert env["AGENTAUTH_AGENT"] == "research-assistant"
    assert env["AGENTAUTH_TOKEN_FILE"] == "/var/run/secrets/agentauth.dev/serviceaccount/token"


@pytest.mark.usefixtures("samples_applied")
def test_projected_token_exchanges_for_an_agent_token() -> None:
    pod = get("pod", "research-assistant", "demo")
    token = kubectl(
        "create",
        "token",
        "research-assistant",
        "-n",
        "demo",
        "--audience",
        ISSUER,
        "--bound-object-kind",
        "Pod",
        "--bound-object-name",
        "research-assistant",
        "--bound-object-uid",
        pod["metadata"]["uid"],
    ).stdout.strip()
    with port_forward("agentauth-token-service", 80) as url:
        response = httpx.post(
            f"{url}/oauth2/token",
            data={
                "grant_type": "urn:ietf:params:oauth:grant-type:token-exchange",
                "subject_token": token,
                "subject_token_type": "urn:ietf:params:oauth:token-type:jwt",
            },
            timeout=10,
        )
    assert response.status_code == 200, response.text
    claims = jwt.decode(response.json()["access_token"], options={"verify_signature": False})
    assert claims["iss"] == ISSUER
    assert set(claims["scope"].split()) == {"document.read", "document.search"}
    assert claims["pod"]["uid"] == pod["metadata"]["uid"]
