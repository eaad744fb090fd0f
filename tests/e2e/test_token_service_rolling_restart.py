"""A rolling restart of two token-service replicas under load drops nothing.

What is real: two (then four, over the roll) ``agentauth token-service`` subprocesses against the
shared ``agentauth dev`` stack (the chart's RBAC, the controller's issuer keys), stopped with a
real SIGTERM; agents are the SDK (``AgentClient``) exchanging tokens and filing and long-polling a
JIT request through a loopback round-robin TCP load balancer, which routes new connections only to
replicas whose ``/readyz`` answers 200 (as the kubelet's probe and the EndpointSlice controller
do).

The roll is the chart's (``maxSurge: 1, maxUnavailable: 0``), in the order Kubernetes does it: a
new replica starts and becomes ready; the old one leaves the endpoints (a deleted pod does at
once; the chart's ``preStop`` sleep keeps it serving while nodes catch up, which here is
immediate), then gets SIGTERM while it still holds open long-polls and keep-alive connections.

Zero failed requests means: every SDK call succeeded, and no HTTP answer was a 5xx.
"""

from __future__ import annotations

import threading
import uuid
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from agentauth.sdk import client as sdk
from tests import faults, stack
from tests.e2e.conftest import Stack

pytestmark = pytest.mark.slow

CAPABILITY = "payments.approve"


class CountingTransport(httpx.HTTPTransport):
    """Counts every HTTP answer by status, and every request that got no answer."""

    def __init__(self, record: Callable[[str], None]) -> None:
        super().__init__()
        self._record = record

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        try:
            response = super().handle_request(request)
        except httpx.TransportError as exc:
            self._record(f"no answer: {type(exc).__name__}")
            raise
        self._record(str(response.status_code))
        return response


class Load:
    """Agents on threads calling through the load balancer until ``stop``; tallies outcomes."""

    def __init__(self, *, issuer: str, url: str, subject_token: str) -> None:
        self.issuer, self.url, self.subject_token = issuer, url, subject_token
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.http: Counter[str] = Counter()
        self.calls: Counter[str] = Counter()
        self.failures: list[str] = []
        self.threads: list[threading.Thread] = []

    def record(self, outcome: str) -> None:
        with self.lock:
            self.http[outcome] += 1

    def client(self) -> sdk.AgentClient:
        return sdk.AgentClient(
            issuer=self.issuer,
            token_url=self.url,
            subject_token_source=lambda _jkt: sdk.SubjectToken(
                self.subject_token, sdk.JWT_TOKEN_TYPE
            ),
            transport=CountingTransport(self.record),
        )

    def _run(self, name: str, call: Callable[[sdk.AgentClient], object], pace: float) -> None:
        with self.client() as agent:
            while not self.stop.is_set():
                try:
                    call(agent)
                    outcome = "ok"
                except Exception as exc:  # every failure is the test's finding
                    outcome = "failed"
                    with self.lock:
                        self.failures.append(f"{name}: {exc!r}")
                with self.lock:
                    self.calls[f"{name} {outcome}"] += 1
                self.stop.wait(pace)  # the load's pacing (under the per-agent rate limit)

    def start(self, *, connected: Callable[[Callable[[], None]], None]) -> None:
        """Start the agents one at a time, each once the previous one holds its connection
        (``connected(start_one)`` starts one and waits): the balancer deals connections round-
        robin, so the two long-polling agents (started first) sit on different replicas."""
        key = uuid.uuid4().hex

        def file_and_long_poll(agent: sdk.AgentClient) -> object:
            # the same logical request, filed again (idempotently) and long-polled 2s each time
            return agent.request_access(
                [CAPABILITY], justification="rolling restart", wait=2, idempotency_key=key
            )

        # One agent: its token requests share the per-agent budget (20/s sustained by default),
        # which the exchanges' pacing stays under (two at 0.12 s: at most ~16/s), whatever
        # replica they land on and however long the restart takes.
        workers: list[tuple[str, Callable[[sdk.AgentClient], object], float]] = [
            ("file+long-poll", file_and_long_poll, 0.0),
            ("file+long-poll", file_and_long_poll, 0.0),
            ("exchange", lambda a: a.token_info(force_refresh=True), 0.12),
            ("exchange", lambda a: a.token_info(force_refresh=True), 0.12),
        ]
        for name, call, pace in workers:
            thread = threading.Thread(target=self._run, args=(name, call, pace), daemon=True)
            self.threads.append(thread)
            connected(thread.start)

    def finish(self) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(30)


def _long_polls(url: str) -> float:
    metrics = httpx.get(f"{url}/metrics", timeout=5).text
    for line in metrics.splitlines():
        if line.startswith("agentauth_access_request_long_polls "):
            return float(line.split()[1])
    return 0.0


def test_rolling_restart_of_two_replicas_under_load_fails_no_request(
    dev_stack: Stack, tmp_path: Path
) -> None:
    namespace = dev_stack.new_namespace("roll")
    dev_stack.create_agent(
        namespace,
        "roller",
        capabilities=[{"name": "document.read"}, {"name": CAPABILITY, "approval": "Required"}],
        approvers={"users": ["alice"]},
    )
    dev_stack.create_pod(namespace, "roller-0", agent="roller")
    subject_token = dev_stack.projected_token(namespace, "roller-0")
    settings = dev_stack.stack.token_service_settings
    assert settings is not None
    environment = faults.token_service_environment(settings)

    endpoints = faults.Endpoints(interval=0.1)
    balancer = faults.TcpProxy(endpoints.pick)
    public_url = f"http://127.0.0.1:{balancer.port}"
    replicas: list[faults.TokenServiceProcess] = []
    load = Load(issuer=dev_stack.issuer, url=public_url, subject_token=subject_token)

    def start_replica(name: str) -> faults.TokenServiceProcess:
        replica = faults.TokenServiceProcess(
            environment, log_dir=tmp_path, name=name, public_url=public_url
        )
        replicas.append(replica)
        replica.wait_ready()
        endpoints.add(replica.url)
        stack.wait_for(lambda: endpoints.is_ready(replica.url), message=f"{name} in endpoints")
        return replica

    stopped: list[tuple[str, int, float]] = []
    try:
        old = [start_replica("old-0"), start_replica("old-1")]

        def connected(start_one: Callable[[], None]) -> None:
            before = balancer.accepted
            start_one()
            stack.wait_for(lambda: balancer.accepted > before, message="an agent's connection")

        load.start(connected=connected)
        for index, replica in enumerate(old):
            # under load: the replica is holding a long-poll when its turn comes
            stack.wait_for(
                lambda r=replica: _long_polls(r.url) >= 1,  # type: ignore[misc]
                timeout=60,
                message=f"a long-poll waiting on {replica.name}",
            )
            start_replica(f"new-{index}")
            endpoints.remove(replica.url)  # the deleted pod leaves the Service
            code, seconds = replica.terminate()
            stopped.append((replica.name, code, seconds))
        # the new replicas carry both kinds of load before it stops: a count of calls over the
        # whole run would depend on how long the restart took (a 2 s long-poll may outlast it),
        # so the load runs until the new replicas have answered each kind
        exchanged, polled = load.calls["exchange ok"], load.calls["file+long-poll ok"]
        stack.wait_for(
            lambda: (
                load.calls["exchange ok"] >= max(exchanged + 10, 20)
                and load.calls["file+long-poll ok"] >= max(polled + 2, 4)
            ),
            timeout=30,
            message="exchanges and long-polls answered by the new replicas",
        )
    finally:
        load.finish()
        for replica in replicas:
            replica.kill()
        balancer.close()
        endpoints.close()

    logs = "\n".join(f"--- {r.name}\n{r.log()}" for r in replicas)
    assert [(name, code) for name, code, _ in stopped] == [("old-0", 0), ("old-1", 0)], logs
    # within the shutdown timeout (in-flight requests may use it) plus process exit
    assert all(seconds < settings.shutdown_timeout + 3 for _, _, seconds in stopped), (
        stopped,
        logs,
    )
    assert load.failures == [], (load.failures, load.http, logs)
    assert not [status for status in load.http if status.startswith("5")], load.http
    assert load.calls["exchange ok"] >= 20 and load.calls["file+long-poll ok"] >= 4, load.calls
    # what the transport saw, for the report (a retried connection failure is not a failure)
    print(f"\ncalls: {dict(load.calls)}\nhttp: {dict(load.http)}\nstopped: {stopped}")
