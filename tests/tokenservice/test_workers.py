"""``agentauth token-service --workers 2``: one replica, two processes, one port.

What is real: the CLI started as a process against the embedded control plane (its own caches in
each worker, real watches), the kernel's ``SO_REUSEPORT`` spreading connections over the workers,
real keep-alive HTTP/1.1 connections pinned to one worker each (``/readyz`` names the worker that
answers), a registered-key Agent's RFC 7523 assertion and RFC 9421-signed requests, real
signals. A credential accepted by one worker must be refused by the other, budgets must be the
replica's, and SIGTERM must drain both workers.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.parse
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519
from prometheus_client import parser as prometheus_parser

from agentauth.devcluster import server
from agentauth.domain import keys, signatures
from tests import stack

ISSUER = "https://agentauth.workers.test"
TOKEN = "/oauth2/token"
ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
STARTED = re.compile(r"token service worker (\d+) on http://127\.0\.0\.1:(\d+)")


class Service:
    """The CLI process and what it logged."""

    def __init__(self, process: subprocess.Popen[str]) -> None:
        self.process = process
        self.lines: queue.Queue[str] = queue.Queue()
        self.log: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self.lines.put(line)

    def wait_line(self, pattern: re.Pattern[str], *, timeout: float = 30) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                break
            self.log.append(line)
            found = pattern.search(line)
            if found:
                return found
        raise AssertionError(f"no line matching {pattern.pattern!r}; log: {self.log}")


class Pinned:
    """One keep-alive connection, and the worker the kernel gave it to."""

    def __init__(self, port: int) -> None:
        self.connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        status, body = self.request("GET", "/readyz")
        self.worker = int(body["worker"])
        self.ready = status == 200

    def request(
        self,
        method: str,
        path: str,
        *,
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> tuple[int, dict[str, Any]]:
        self.connection.request(method, path, body=body, headers=headers or {})
        response = self.connection.getresponse()
        return response.status, json.loads(response.read() or b"{}")

    def text(self, path: str) -> str:
        self.connection.request("GET", path)
        response = self.connection.getresponse()
        assert response.status == 200, response.status
        return response.read().decode()


def objects(namespace: str, keyset: keys.KeySet, key: ed25519.Ed25519PrivateKey) -> list[Any]:
    jwk = {**signatures.public_jwk(key), "kid": "registered-1"}
    return [
        {
            "apiVersion": "agentauth.dev/v1alpha1",
            "kind": "Agent",
            "metadata": {"name": "outside", "namespace": namespace},
            "spec": {"publicKeys": {"keys": [jwk]}},
        },
        {
            "apiVersion": "agentauth.dev/v1alpha1",
            "kind": "CapabilityGrant",
            "metadata": {"name": "docs", "namespace": namespace},
            "spec": {
                "agents": {"names": ["outside"]},
                "capabilities": [{"name": "document.read"}],
            },
        },
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": keys.SECRET_NAME, "namespace": namespace},
            "data": keyset.to_secret_data(),
        },
    ]


@contextlib.contextmanager
def started(
    dev_cluster: server.DevCluster, namespace: str, **environment: str
) -> Iterator[tuple[Service, int]]:
    env = {
        **os.environ,
        "AGENTAUTH_ISSUER": ISSUER,
        "AGENTAUTH_CLUSTER_ISSUER": dev_cluster.issuer,
        "KUBECONFIG": str(dev_cluster.kubeconfig_path),
        "AGENTAUTH_CONTROLLER_NAMESPACE": namespace,
        "AGENTAUTH_WATCH_NAMESPACES": namespace,
        "AGENTAUTH_LISTEN_HOST": "127.0.0.1",
        "AGENTAUTH_LISTEN_PORT": "0",
        "AGENTAUTH_WORKERS": "2",
        "AGENTAUTH_LOG_FORMAT": "text",
        **environment,
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "agentauth", "token-service"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    service = Service(process)
    try:
        ports = {service.wait_line(STARTED).group(2) for _ in range(2)}
        assert len(ports) == 1, ports  # both workers on the port the supervisor chose
        yield service, int(ports.pop())
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def one_per_worker(port: int) -> tuple[Pinned, Pinned]:
    """A connection to worker 0 and one to worker 1, once both are ready."""
    found: dict[int, Pinned] = {}

    def both() -> bool:
        pinned = Pinned(port)
        if pinned.ready:
            found.setdefault(pinned.worker, pinned)
        return len(found) == 2

    stack.wait_for(both, timeout=30, interval=0.02, message="a ready connection to each worker")
    return found[0], found[1]


@pytest.fixture
def registered() -> ed25519.Ed25519PrivateKey:
    return ed25519.Ed25519PrivateKey.generate()


@pytest.fixture
def replica(
    dev_cluster: server.DevCluster,
    kubectl: stack.Kubectl,
    namespace: str,
    registered: ed25519.Ed25519PrivateKey,
) -> Iterator[tuple[Service, int]]:
    keyset = keys.generate_keyset(now=datetime.now(UTC) - timedelta(minutes=1))
    stack.apply(kubectl, objects(namespace, keyset, registered))
    with started(dev_cluster, namespace, AGENTAUTH_CLIENT_RATE_LIMIT="0") as running:
        yield running


def assertion_form(key: ed25519.Ed25519PrivateKey, namespace: str) -> bytes:
    """A plain RFC 7523 client assertion (no cnf: the token is bound to the registered key)."""
    agent = f"aauth:outside.{namespace}@agentauth.workers.test"
    now = int(time.time())
    assertion = jwt.encode(
        {
            "iss": agent,
            "sub": agent,
            "aud": f"{ISSUER}{TOKEN}",
            "iat": now,
            "exp": now + 120,
            "jti": uuid.uuid4().hex,
        },
        key,
        algorithm="EdDSA",
        headers={"kid": "registered-1"},
    )
    return urllib.parse.urlencode(
        {
            "grant_type": "client_credentials",
            "client_assertion_type": ASSERTION_TYPE,
            "client_assertion": assertion,
        }
    ).encode()


FORM = {"Content-Type": "application/x-www-form-urlencoded"}


def test_a_jti_accepted_by_one_worker_is_refused_by_the_other(
    replica: tuple[Service, int], registered: ed25519.Ed25519PrivateKey, namespace: str
) -> None:
    _, port = replica
    first, second = one_per_worker(port)
    body = assertion_form(registered, namespace)
    status, issued = first.request("POST", TOKEN, body=body, headers=FORM)
    assert status == 200, issued
    status, replayed = second.request("POST", TOKEN, body=body, headers=FORM)
    assert (status, replayed) == (
        401,
        {"error": "invalid_client", "error_description": "assertion jti has already been used"},
    )
    # and the other way round, with a fresh assertion
    body = assertion_form(registered, namespace)
    assert second.request("POST", TOKEN, body=body, headers=FORM)[0] == 200
    status, replayed = first.request("POST", TOKEN, body=body, headers=FORM)
    assert (status, replayed["error_description"]) == (401, "assertion jti has already been used")


def test_a_signed_request_replayed_to_the_other_worker_is_refused(
    replica: tuple[Service, int], registered: ed25519.Ed25519PrivateKey, namespace: str
) -> None:
    _, port = replica
    first, second = one_per_worker(port)
    body = assertion_form(registered, namespace)
    headers = {
        **FORM,
        **signatures.sign_request(
            method="POST",
            url=ISSUER + TOKEN,
            headers=FORM,
            body=body,
            private_key=registered,
            signature_key_header=signatures.signature_key_hwk(registered),
        ),
    }
    status, issued = first.request("POST", TOKEN, body=body, headers=headers)
    assert status == 200, issued
    status, replayed = second.request("POST", TOKEN, body=body, headers=headers)
    assert (status, replayed) == (
        400,
        {
            "error": "invalid_request",
            "error_description": "request signature was already used (replay)",
        },
    )


def test_the_client_rate_limit_is_the_replicas_budget_not_one_per_worker(
    dev_cluster: server.DevCluster, kubectl: stack.Kubectl, namespace: str
) -> None:
    keyset = keys.generate_keyset(now=datetime.now(UTC) - timedelta(minutes=1))
    stack.apply(kubectl, objects(namespace, keyset, ed25519.Ed25519PrivateKey.generate()))
    with started(
        dev_cluster,
        namespace,
        AGENTAUTH_CLIENT_RATE_LIMIT="0.01",
        AGENTAUTH_CLIENT_RATE_LIMIT_BURST="3",
    ) as (_, port):
        first, second = one_per_worker(port)
        garbage = b"grant_type=nothing"
        answers = [
            pinned.request("POST", TOKEN, body=garbage, headers=FORM)
            for pinned in (first, second, first, second, first)
        ]
        assert [status for status, _ in answers] == [400, 400, 400, 429, 429]
        assert answers[3][1]["error_description"] == (
            "too many token requests from 127.0.0.1; retry in 100 s"
        )


def test_sigterm_drains_every_worker_and_the_supervisor_exits_0(
    dev_cluster: server.DevCluster, kubectl: stack.Kubectl, namespace: str
) -> None:
    keyset = keys.generate_keyset(now=datetime.now(UTC) - timedelta(minutes=1))
    stack.apply(kubectl, objects(namespace, keyset, ed25519.Ed25519PrivateKey.generate()))
    with started(dev_cluster, namespace, AGENTAUTH_SHUTDOWN_DELAY="2") as (service, port):
        first, second = one_per_worker(port)
        service.process.send_signal(signal.SIGTERM)
        for pinned in (first, second):  # still serving, no longer ready: the replica's answer
            status = stack.wait_for(
                lambda p=pinned: (s := p.request("GET", "/readyz")[0]) == 503 and s,
                timeout=5,
                message=f"worker {pinned.worker} to report not ready",
            )
            assert status == 503
            assert pinned.request("GET", "/healthz")[0] == 200
        assert service.process.wait(timeout=20) == 0
        service.wait_line(re.compile(r"stopped serving"))


def test_a_worker_that_dies_stops_the_replica_with_exit_code_1(
    dev_cluster: server.DevCluster, kubectl: stack.Kubectl, namespace: str
) -> None:
    keyset = keys.generate_keyset(now=datetime.now(UTC) - timedelta(minutes=1))
    stack.apply(kubectl, objects(namespace, keyset, ed25519.Ed25519PrivateKey.generate()))
    with started(dev_cluster, namespace) as (service, port):
        one_per_worker(port)
        workers = subprocess.run(
            ["pgrep", "-P", str(service.process.pid)], capture_output=True, text=True, check=True
        ).stdout.split()
        assert len(workers) == 2
        os.kill(int(workers[0]), signal.SIGKILL)
        assert service.process.wait(timeout=20) == 1
        service.wait_line(re.compile(r"exited \(code -9\): stopping the others"))


def exchanges_by_worker(exposition: str) -> dict[tuple[str, str], float]:
    """``agentauth_token_exchanges_total`` of a scrape, by (worker, result)."""
    return {
        (sample.labels["worker"], sample.labels["result"]): sample.value
        for family in prometheus_parser.text_string_to_metric_families(exposition)
        for sample in family.samples
        if sample.name == "agentauth_token_exchanges_total"
    }


def test_metrics_of_either_worker_count_the_requests_of_both(
    replica: tuple[Service, int],
) -> None:
    _, port = replica
    first, second = one_per_worker(port)
    garbage = b"grant_type=nothing"
    for pinned, times in ((first, 3), (second, 5)):
        for _ in range(times):
            assert pinned.request("POST", TOKEN, body=garbage, headers=FORM)[0] == 400
    expected = {("0", "unsupported_grant_type"): 3.0, ("1", "unsupported_grant_type"): 5.0}
    scrapes: dict[int, dict[tuple[str, str], float]] = {}

    def both_count_both() -> bool:
        # a sibling's figures are its snapshot of at most a second ago
        for pinned in (first, second):
            scrapes[pinned.worker] = exchanges_by_worker(pinned.text("/metrics"))
        return scrapes[0] == scrapes[1] == expected

    try:
        stack.wait_for(both_count_both, timeout=10, interval=0.1, message="both scrapes")
    except AssertionError as failed:
        raise AssertionError(f"{failed}; the last scrapes: {scrapes}") from None
