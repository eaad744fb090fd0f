"""``agentauth dev`` restarts on the same directory come back on the same ports, one process per
directory, and SIGTERM ends it within seconds with every open watch and long-poll answered
(issue 20).

- After ``kill -9`` with connections open (the old sockets sit in TIME-WAIT on the API port),
  the restart takes the remembered ports at once: same kubeconfig URL, same issuer, and a
  service-account token minted before the kill still authenticates. Right after a SIGTERM, the
  explicit ``--port`` flags with the same ports work too.
- A second ``agentauth dev`` on a directory in use exits at once with a message naming the
  process that holds it, and leaves the first one serving.
- SIGTERM with an API watch and a token-service long-poll open: both are answered (the watch
  ends with a clean end of stream, the long-poll with the request's current state) and the
  process exits 0 within a few seconds.
"""

from __future__ import annotations

import json
import ssl
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests import stack
from tests.e2e.devprocess import DevServer

pytestmark = pytest.mark.slow

# Well under the 30 s it took before (and a pod's default grace period), with room for a loaded
# 2-core CI machine: a quiet one stops in 1-3 s.
STOP_SECONDS = 15.0
TIME_WAIT = "06"


def _ports(directory: Path) -> dict[str, int]:
    loaded: dict[str, int] = json.loads((directory / "ports.json").read_text())
    return loaded


def _sockets_in_time_wait(port: int) -> int:
    """Sockets on local port ``port`` in TIME-WAIT (from /proc/net/tcp)."""
    count = 0
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if int(fields[1].split(":")[1], 16) == port and fields[3] == TIME_WAIT:
            count += 1
    return count


def _issuer_line(server: DevServer) -> str:
    return next(line for line in server.more_output(1.0) if line.startswith("  issuer: "))


def test_restarts_keep_the_ports_and_the_issuer(tmp_path: Path, servers: list[DevServer]) -> None:
    directory = tmp_path / "dev"
    first = DevServer(directory)
    servers.append(first)
    kubeconfig = first.wait_ready()
    output = first.more_output(1.0)
    assert f"  log: {directory.resolve() / 'dev.log'}" in output
    assert output[-1] == "  stop with Ctrl-C"
    issuer = _issuer_line(first)
    ports = _ports(directory)
    url = first.url
    token_path = "/api/v1/namespaces/default/serviceaccounts/default/token"
    client = first.api()
    minted = client.post(token_path, json={"spec": {"audiences": [url]}})
    assert minted.status_code == 201, minted.text
    token = minted.json()["status"]["token"]
    # Keep-alive connections open at the kill: the kernel closes them for the dead process.
    assert client.get("/api/v1/namespaces").status_code == 200
    first.kill9()
    client.close()
    stack.wait_for(
        lambda: _sockets_in_time_wait(ports["api"]),
        timeout=10,
        message="the killed server's connections in TIME-WAIT",
    )

    again = DevServer(directory)
    servers.append(again)
    assert again.wait_ready() == kubeconfig
    assert _ports(directory) == ports
    assert again.url == url
    assert yaml.safe_load(kubeconfig.read_text())["clusters"][0]["cluster"]["server"] == url
    assert _issuer_line(again) == issuer
    with again.api() as client:
        review = client.post(
            "/apis/authentication.k8s.io/v1/tokenreviews",
            json={"apiVersion": "authentication.k8s.io/v1", "spec": {"token": token}},
        )
        assert review.json()["status"]["authenticated"] is True, review.text
        assert client.get("/api/v1/namespaces").status_code == 200
    assert again.terminate() == 0

    # The ports named explicitly, right after the stop (connections of the last run linger).
    flags = (
        *("--port", str(ports["api"])),
        *("--token-service-port", str(ports["token_service"])),
        *("--webhook-port", str(ports["webhook"])),
    )
    third = DevServer(directory, arguments=flags)
    servers.append(third)
    third.wait_ready()
    assert third.url == url
    assert _issuer_line(third) == issuer


def test_a_second_dev_on_the_same_directory_is_refused(
    tmp_path: Path, servers: list[DevServer]
) -> None:
    directory = tmp_path / "dev"
    first = DevServer(directory)
    servers.append(first)
    first.wait_ready()
    started = time.monotonic()
    second = DevServer(directory)
    servers.append(second)
    assert second.process.wait(30) == 1
    assert time.monotonic() - started < 15
    assert (
        f"agentauth dev: error: {directory.resolve()} is in use by another agentauth dev "
        f"(pid {first.process.pid}): stop it first, or give this one another --dir"
    ) in second.stderr
    assert not any(line.startswith("ready") for line in second.more_output(0.1))
    with first.api() as client:
        assert client.get("/api/v1/namespaces").status_code == 200
    assert _ports(directory) == _ports(directory)  # untouched by the refused process


def _agent_token(server: DevServer, kubeconfig: Path, namespace: str) -> tuple[str, str]:
    """An agent with a Required capability and a pod; returns (agent token, token URL)."""
    issuer = _issuer_line(server).removeprefix("  issuer: ")
    objects: list[dict[str, Any]] = [
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}},
        {
            "apiVersion": "v1",
            "kind": "ServiceAccount",
            "metadata": {"name": "bot", "namespace": namespace},
        },
        {
            "apiVersion": "agentauth.dev/v1alpha1",
            "kind": "Agent",
            "metadata": {"name": "bot", "namespace": namespace},
            "spec": {"serviceAccountName": "bot"},
        },
        {
            "apiVersion": "agentauth.dev/v1alpha1",
            "kind": "CapabilityGrant",
            "metadata": {"name": "bot", "namespace": namespace},
            "spec": {
                "agents": {"names": ["bot"]},
                "capabilities": [
                    {"name": "document.read"},
                    {"name": "payments.refund", "approval": "Required"},
                ],
                "approvers": {"users": ["alice"]},
            },
        },
    ]
    stack.run_kubectl("apply", "-f", "-", kubeconfig=kubeconfig, input=yaml.safe_dump_all(objects))
    stack.run_kubectl(
        *("wait", "--for=condition=Ready", "agent/bot", "-n", namespace, "--timeout=60s"),
        kubeconfig=kubeconfig,
    )
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": "bot",
            "namespace": namespace,
            "labels": {"agentauth.dev/agent": "bot"},
        },
        "spec": {"serviceAccountName": "bot", "containers": [{"name": "a", "image": "x/y:1"}]},
    }
    with server.api() as client:
        created = client.post(f"/api/v1/namespaces/{namespace}/pods", json=pod)
        assert created.status_code == 201, created.text
        minted = client.post(
            f"/api/v1/namespaces/{namespace}/serviceaccounts/bot/token",
            json={
                "spec": {
                    "audiences": [issuer],
                    "boundObjectRef": {
                        "kind": "Pod",
                        "apiVersion": "v1",
                        "name": "bot",
                        "uid": created.json()["metadata"]["uid"],
                    },
                }
            },
        )
        assert minted.status_code == 201, minted.text
    tls = ssl.create_default_context(cafile=str(server.ca_path))
    exchanged = httpx.post(
        f"{issuer}/oauth2/token",
        data=stack.exchange_form(minted.json()["status"]["token"], scope="document.read"),
        verify=tls,
        timeout=30,
    )
    assert exchanged.status_code == 200, exchanged.text
    return str(exchanged.json()["access_token"]), issuer


def _open_long_polls(issuer: str, tls: ssl.SSLContext) -> float:
    metrics = httpx.get(f"{issuer}/metrics", verify=tls, timeout=10).text
    for line in metrics.splitlines():
        if line.startswith("agentauth_access_request_long_polls "):
            return float(line.split()[1])
    return 0.0


def test_sigterm_answers_open_watches_and_long_polls_and_exits_within_seconds(
    tmp_path: Path, servers: list[DevServer]
) -> None:
    server = DevServer(tmp_path / "dev")
    servers.append(server)
    kubeconfig = server.wait_ready()
    agent_token, issuer = _agent_token(server, kubeconfig, "shutdown")
    tls = ssl.create_default_context(cafile=str(server.ca_path))
    headers = {"Authorization": f"Bearer {agent_token}"}
    filed = httpx.post(
        f"{issuer}/v1/access-requests",
        json={"capabilities": ["payments.refund"], "justification": "refund order 1"},
        headers=headers,
        verify=tls,
        timeout=30,
    )
    assert filed.status_code in (200, 201, 202), filed.text
    request_name = filed.json()["name"]

    outcomes: dict[str, Any] = {}
    watching = threading.Event()

    def watch() -> None:
        try:
            with (
                server.api(timeout=120) as client,
                client.stream(
                    "GET", "/api/v1/namespaces/default/configmaps", params={"watch": "1"}
                ) as response,
            ):
                watching.set()
                for _ in response.iter_lines():
                    pass
                outcomes["watch"] = response.status_code
        except httpx.HTTPError as error:
            outcomes["watch"] = error
        outcomes["watch_ended"] = time.monotonic()

    def long_poll() -> None:
        try:
            response = httpx.get(
                f"{issuer}/v1/access-requests/{request_name}",
                params={"wait": "60"},
                headers=headers,
                verify=tls,
                timeout=120,
            )
            outcomes["poll"] = response
        except httpx.HTTPError as error:
            outcomes["poll"] = error
        outcomes["poll_ended"] = time.monotonic()

    threads = [threading.Thread(target=watch), threading.Thread(target=long_poll)]
    for thread in threads:
        thread.start()
    assert watching.wait(30)
    # Parked: the token service's gauge of open long-polls counts it.
    stack.wait_for(
        lambda: _open_long_polls(issuer, tls) == 1, timeout=30, message="the long-poll parked"
    )
    signalled = time.monotonic()
    assert server.terminate(timeout=60) == 0
    stopped = time.monotonic() - signalled
    for thread in threads:
        thread.join(30)
    assert stopped < STOP_SECONDS, f"took {stopped:.1f}s to stop"
    assert outcomes["watch"] == 200, outcomes
    poll = outcomes["poll"]
    assert isinstance(poll, httpx.Response), poll
    assert poll.status_code == 200, poll.text
    assert poll.json()["phase"] == "Pending"
    assert outcomes["poll_ended"] - signalled < STOP_SECONDS
