"""The token service when its API server freezes, dies and comes back, and when it is stopped.

What is real: ``agentauth dev`` as a subprocess (the embedded control plane, the controller and
the chart's RBAC; SIGSTOP freezes it, SIGTERM and a new start with the same ``--dir`` restart
it), ``agentauth token-service`` as a subprocess authenticating as the chart's token-service
ServiceAccount with the token file the dev stack writes (a restart writes a new one and the old
one is refused with 401), the SDK, real ``kubectl`` and the ``kubectl agentauth`` plugin.

Between the token service and the API server sits a loopback TCP proxy that forwards each new
connection to wherever the dev API server listens now, so one kubeconfig survives restarts that
move the dev cluster's port (that port is not what is under test here).

Each break issue 20 lists has its test: filing while the API server is frozen (no hang: a 503
with Retry-After within the deadline; a retry with the same Idempotency-Key files once),
``kubectl agentauth approve`` against a frozen API server (a timeout that says what it waited
for), filing while it is down (503, never 500), watches recovering within seconds of its return
(long-poll answered, 401 answered by re-reading the token file), readiness telling what is
still served, and SIGTERM answering open long-polls at once and exiting within seconds.
"""

from __future__ import annotations

import json
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from agentauth.sdk import client as sdk
from tests import faults, stack

pytestmark = pytest.mark.slow

API_TIMEOUT = 2.0
CAPABILITY = "payments.approve"


@dataclass
class World:
    dev: faults.DevProcess
    proxy: faults.TcpProxy
    service: faults.TokenServiceProcess
    environment: dict[str, str]
    namespace: str
    subject_token: str
    bearer: str
    agent: sdk.AgentClient
    tmp: Path

    def kubectl(
        self, *args: str, user: str = "admin", timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        return stack.run_kubectl(
            *args, kubeconfig=self.dev.kubeconfig, context=user, check=False, timeout=timeout
        )

    def file(self, justification: str, *, key: str | None = None) -> httpx.Response:
        """``POST /v1/access-requests`` with a plain bearer agent token (no SDK retries)."""
        headers = {"Authorization": f"Bearer {self.bearer}"}
        if key is not None:
            headers["Idempotency-Key"] = f'"{key}"'
        return httpx.post(
            f"{self.service.url}/v1/access-requests",
            json={"capabilities": [CAPABILITY], "justification": justification},
            headers=headers,
            timeout=30,
        )

    def poll(self, name: str, *, wait: int = 0, url: str | None = None) -> httpx.Response:
        return httpx.get(
            f"{url or self.service.url}/v1/access-requests/{name}?wait={wait}",
            headers={"Authorization": f"Bearer {self.bearer}"},
            timeout=wait + 30,
        )

    def requests_with(self, justification: str) -> list[dict[str, Any]]:
        listing = json.loads(
            self.kubectl("get", "accessrequests", "-n", self.namespace, "-o", "json").stdout
        )
        return [i for i in listing["items"] if i["spec"]["justification"] == justification]

    def readiness(self) -> dict[str, Any]:
        answer = self.service.readyz()
        assert answer is not None, "the token service does not answer /readyz"
        body: dict[str, Any] = answer.json()
        body["httpStatus"] = answer.status_code
        return body


def _server(kubeconfig: Path) -> str:
    return str(yaml.safe_load(kubeconfig.read_text())["clusters"][0]["cluster"]["server"])


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    tmp = tmp_path_factory.mktemp("faults")
    dev = faults.DevProcess(tmp / "dev")
    dev.start()
    proxy = faults.TcpProxy(dev.api_address)
    service: faults.TokenServiceProcess | None = None
    agent: sdk.AgentClient | None = None
    try:
        cluster_url = yaml.safe_load(dev.kubeconfig.read_text())["clusters"][0]["cluster"]["server"]
        kubeconfig = yaml.safe_load(
            (dev.directory / "agentauth-token-service.kubeconfig").read_text()
        )
        kubeconfig["clusters"][0]["cluster"]["server"] = f"https://127.0.0.1:{proxy.port}"
        (tmp / "token-service.kubeconfig").write_text(yaml.safe_dump(kubeconfig))
        environment = {
            "AGENTAUTH_ISSUER": dev.issuer,
            "AGENTAUTH_CLUSTER_ISSUER": cluster_url,
            "KUBECONFIG": str(tmp / "token-service.kubeconfig"),
            "AGENTAUTH_API_TIMEOUT": str(API_TIMEOUT),
        }
        service = faults.TokenServiceProcess(environment, log_dir=tmp, name="token-service")
        service.wait_ready()

        namespace = f"faults-{uuid.uuid4().hex[:6]}"
        documents = [
            {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}},
            {
                "apiVersion": "v1",
                "kind": "ServiceAccount",
                "metadata": {"name": "payer", "namespace": namespace},
            },
            {
                "apiVersion": "agentauth.dev/v1alpha1",
                "kind": "Agent",
                "metadata": {"name": "payer", "namespace": namespace},
                "spec": {"serviceAccountName": "payer"},
            },
            {
                "apiVersion": "agentauth.dev/v1alpha1",
                "kind": "CapabilityGrant",
                "metadata": {"name": "payer", "namespace": namespace},
                "spec": {
                    "agents": {"names": ["payer"]},
                    "capabilities": [
                        {"name": "document.read"},
                        {"name": CAPABILITY, "approval": "Required"},
                    ],
                    "approvers": {"users": ["alice"]},
                },
            },
            {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {
                    "name": "payer-0",
                    "namespace": namespace,
                    "labels": {"agentauth.dev/agent": "payer"},
                },
                "spec": {
                    "serviceAccountName": "payer",
                    "containers": [{"name": "agent", "image": "example.test/agent:1"}],
                },
            },
        ]
        stack.run_kubectl(
            "apply", "-f", "-", kubeconfig=dev.kubeconfig, input=yaml.safe_dump_all(documents)
        )
        stack.run_kubectl(
            "create", "rolebinding", "approver", "--clusterrole=agentauth-approver",
            "--user=alice", "-n", namespace, kubeconfig=dev.kubeconfig,
        )  # fmt: skip
        stack.run_kubectl(
            "wait", "--for=condition=Ready", "agent/payer", "-n", namespace, "--timeout=60s",
            kubeconfig=dev.kubeconfig,
        )  # fmt: skip
        subject_token = stack.run_kubectl(
            "create", "token", "payer", "-n", namespace, f"--audience={dev.issuer}",
            "--bound-object-kind=Pod", "--bound-object-name=payer-0", "--duration=2h",
            kubeconfig=dev.kubeconfig,
        ).stdout.strip()  # fmt: skip

        def exchanged() -> str | None:
            response = httpx.post(
                f"{service.url}/oauth2/token", data=stack.exchange_form(subject_token)
            )
            return str(response.json()["access_token"]) if response.status_code == 200 else None

        # the token service's caches see the Agent, its grant and the pod within moments
        bearer = stack.wait_for(exchanged, timeout=30, message="a first token exchange")
        agent = sdk.AgentClient(
            issuer=dev.issuer,
            token_url=service.url,
            subject_token_source=lambda _jkt: sdk.SubjectToken(subject_token, sdk.JWT_TOKEN_TYPE),
        )
        yield World(dev, proxy, service, environment, namespace, subject_token, bearer, agent, tmp)
    finally:
        if agent is not None:
            agent.close()
        if service is not None:
            service.kill()
        proxy.close()
        dev.kill()


def _approve(world: World, name: str) -> None:
    result = world.kubectl(
        "agentauth", "approve", name, "-n", world.namespace, "--context", "alice", user="alice"
    )
    assert result.returncode == 0, result.stderr


def test_frozen_api_server_filing_answers_503_in_time_and_a_retry_files_once(
    world: World,
) -> None:
    before = world.agent.request_access([CAPABILITY], justification="filed before the freeze")
    key = uuid.uuid4().hex
    # The freeze must come after the token service's cache has seen the request (its watch
    # event), or the read below asks a frozen API server.
    stack.wait_for(
        lambda: (
            (r := world.poll(before.name)).status_code == 200 and r.json()["phase"] == "Pending"
        ),
        timeout=20,
        message="the token service's cache holding the pending request filed before the freeze",
    )
    world.dev.freeze()
    try:
        # exchanges and reads are served from the caches
        started = time.monotonic()
        assert world.agent.token_info(force_refresh=True).access_token
        assert world.poll(before.name).json()["phase"] == "Pending"
        assert time.monotonic() - started < 3

        started = time.monotonic()
        answer = world.file("filed during the freeze", key=key)
        elapsed = time.monotonic() - started
        assert answer.status_code == 503, answer.text
        assert answer.json()["error"] == "temporarily_unavailable"
        assert answer.json()["error_description"] == (
            f"cannot file the access request now: the Kubernetes API gave no answer within "
            f"{API_TIMEOUT:g}s; retry with the same Idempotency-Key (a retry never files twice)"
        )
        assert int(answer.headers["Retry-After"]) > 0
        assert API_TIMEOUT - 0.5 < elapsed < API_TIMEOUT + 3

        # readiness: still serving (from the caches), and says the API server is gone
        report = stack.wait_for(
            lambda: (r := world.readiness()).get("apiServer") == "unreachable" and r,
            timeout=20,
            message="readiness reporting the frozen API server",
        )
        assert report["httpStatus"] == 200 and report["status"] == "ready"
        assert report["notServing"] == ["filing access requests"]
    finally:
        world.dev.thaw()
    # the retry (same key) files it once, whatever reached the API server before
    retried = stack.wait_for(
        lambda: (r := world.file("filed during the freeze", key=key)).status_code == 201 and r,
        timeout=30,
        message="filing to work again after the freeze",
    )
    again = world.file("filed during the freeze", key=key)
    assert again.status_code == 201 and again.headers["Idempotent-Replayed"] == "true"
    assert again.json()["name"] == retried.json()["name"]
    (stored,) = world.requests_with("filed during the freeze")
    assert stored["metadata"]["name"] == retried.json()["name"]
    stack.wait_for(
        lambda: world.readiness().get("apiServer") == "reachable",
        timeout=20,
        message="readiness reporting the API server back",
    )


def test_kubectl_agentauth_approve_times_out_on_a_frozen_api_server_and_says_why(
    world: World,
) -> None:
    pending = world.agent.request_access([CAPABILITY], justification="approve while frozen")
    world.dev.freeze()
    try:
        started = time.monotonic()
        result = world.kubectl(
            "agentauth", "approve", pending.name, "-n", world.namespace, "--context", "alice",
            "--request-timeout=2s", user="alice", timeout=60,
        )  # fmt: skip
        elapsed = time.monotonic() - started
    finally:
        world.dev.thaw()
    assert result.returncode == 1
    server = _server(world.dev.kubeconfig)
    assert result.stderr == (
        # approving starts with reading the request: that is the call that times out
        f"error: timed out waiting for the API server at {server} (context 'alice') to read "
        f"access request {pending.name!r}: no answer within 2s; the cluster may be down or "
        "overloaded; try again, or allow longer with --request-timeout\n"
    )
    assert elapsed < 15  # 2s, plus starting kubectl and Python under load


def test_api_server_down_filing_answers_503_and_watches_recover_within_seconds(
    world: World,
) -> None:
    pending = world.agent.request_access([CAPABILITY], justification="pending over a restart")
    assert world.dev.stop() == 0
    try:
        assert world.agent.token_info(force_refresh=True).access_token  # from the caches
        answer = world.file("filed while the API server is down", key=uuid.uuid4().hex)
        assert answer.status_code == 503, answer.text
        assert answer.json() == {
            "error": "temporarily_unavailable",
            "error_description": "cannot file the access request now: the Kubernetes API "
            "cannot be reached; retry with the same Idempotency-Key (a retry never files twice)",
        }
        assert int(answer.headers["Retry-After"]) > 0
        stack.wait_for(
            lambda: world.readiness().get("apiServer") == "unreachable",
            timeout=20,
            message="readiness reporting the API server down",
        )
    finally:
        world.dev.start()
    restarted = time.monotonic()
    # A long-poll waits for the decision; the watches must be back (with the new token file:
    # the old token is refused with 401 by the restarted dev cluster) for it to see it.
    answers: list[httpx.Response] = []
    poller = threading.Thread(target=lambda: answers.append(world.poll(pending.name, wait=50)))
    poller.start()
    _approve(world, pending.name)
    approved = time.monotonic()
    poller.join(60)
    assert answers and answers[0].status_code == 200, answers
    assert answers[0].json()["phase"] == "Approved"
    answered = time.monotonic()
    # The watches relist within seconds of the API server's return (not after a minute-long
    # token cache or a 5-second backoff per failure).
    assert answered - approved < 8, (answered - approved, answered - restarted)
    stack.wait_for(
        lambda: world.readiness().get("apiServer") == "reachable",
        timeout=20,
        message="readiness reporting the API server back",
    )


def test_sigterm_answers_open_long_polls_at_once_and_exits_within_seconds(world: World) -> None:
    pending = world.agent.request_access([CAPABILITY], justification="pending at shutdown")
    second = faults.TokenServiceProcess(world.environment, log_dir=world.tmp, name="stopping")
    try:
        second.wait_ready()
        answers: list[httpx.Response] = []
        poller = threading.Thread(
            target=lambda: answers.append(world.poll(pending.name, wait=55, url=second.url))
        )
        poller.start()

        def waiting_long_polls() -> float:
            metrics = httpx.get(f"{second.url}/metrics").text
            line = next(
                line
                for line in metrics.splitlines()
                if line.startswith("agentauth_access_request_long_polls ")
            )
            return float(line.split()[1])

        stack.wait_for(lambda: waiting_long_polls() == 1, message="the long-poll to be waiting")
        code, seconds = second.terminate()
        poller.join(10)
    finally:
        second.kill()
    assert code == 0, second.log()
    assert seconds < 5, second.log()
    assert answers, "the long-poll got no answer"
    (answer,) = answers
    assert answer.status_code == 200
    assert answer.json()["phase"] == "Pending"
    assert answer.headers.get("Connection", "").lower() == "close"
