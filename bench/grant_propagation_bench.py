"""Benchmark: deleting one grant that selects 1,000 Agents reaches every token within 2 s.

On the embedded control plane with the real controller and token service (``stackkit``,
HTTPS): 1,000 Agents, each with a service account and a pod, all selected by label by grant
``docs`` (``document.read``) and by grant ``base`` (``reports.read``); one more Agent,
``resource``, holds only ``reports.read`` and introspects. Every agent exchanges its pod's
service-account token (the token carries ``document.read``). Then ``docs`` is deleted, and two
checks per agent go round-robin until each has seen the change: a new exchange no longer
carries ``document.read`` (the agent still gets a token: it keeps ``reports.read``), and
introspecting the token it held before answers ``{"active": false}`` (docs/token-exchange.md: a
token whose scope is no longer held is inactive).

The checks run in ``CHECKING_PROCESSES`` processes of their own, ``CONCURRENCY`` in flight
each, over keep-alive connections with every request prepared before the delete (a check costs
the client a write, a read and a JSON parse: ``cpu_seconds_until_all_reflected.checkers``). A
check that does not see the change goes back to the end of the line, so every check comes
round once per pass over all 2,000. Reported, in seconds from the delete request:
``seconds_to_reflect`` per agent (the later of its two checks' first answer that saw it; the
max is ``all_reflected_s``, the figure the issue names, target 2 s); ``first_reflected_s``;
``last_unreflected_check_sent_s`` (the latest moment any check still did not see it: the token
service had not applied the deletion yet); and ``check_resolution_s``, per check, the gap between
its last check that did not see the change being sent and its first answer that did (from the
delete when every check of it saw it): how much of each figure is the bench's own round trip
and not propagation. ``checks_per_s`` and the CPU seconds of the token service, of this process
(API server and controller) and of the checkers, from the delete until every agent saw it,
say where a slow sweep went.

Run: ``.venv/bin/python bench/grant_propagation_bench.py [--agents 1000]``. One JSON line on
stdout (``bench/run.py``); exits 1 if an agent never saw the change within 30 s.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import logging
import multiprocessing
import ssl
import statistics
import sys
import time
import urllib.parse
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import aiohttp  # noqa: E402
import stackkit  # noqa: E402

from agentauth.kube import client as kubeclient  # noqa: E402
from agentauth.kube import config  # noqa: E402

NAMESPACE = "propagation"
EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"
JWT = "urn:ietf:params:oauth:token-type:jwt"
CONCURRENCY = 32
"""Checks in flight per checking process (and connections while setting up)."""
CHECKING_PROCESSES = 2
GIVE_UP_SECONDS = 30.0


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(fraction * len(ordered) + 0.5) - 1))]


async def create_world(api: kubeclient.KubeClient, agents: int) -> list[dict[str, Any]]:
    await api.create(kubeclient.NAMESPACES, {"metadata": {"name": NAMESPACE}})
    for name, label, capability in (
        ("docs", "team", "document.read"),
        ("base", "tier", "reports.read"),
    ):
        await api.create(
            kubeclient.CAPABILITY_GRANTS,
            {
                "apiVersion": "agentauth.dev/v1alpha1",
                "kind": "CapabilityGrant",
                "metadata": {"name": name},
                "spec": {
                    "agents": {"selector": {"matchLabels": {label: "bench"}}},
                    "capabilities": [{"name": capability}],
                },
            },
            namespace=NAMESPACE,
        )
    gate = asyncio.Semaphore(CONCURRENCY)

    async def one(name: str, labels: dict[str, str]) -> dict[str, Any]:
        async with gate:
            account = f"{name}-sa"
            await api.create(
                kubeclient.SERVICE_ACCOUNTS, {"metadata": {"name": account}}, namespace=NAMESPACE
            )
            await api.create(
                kubeclient.AGENTS,
                {
                    "apiVersion": "agentauth.dev/v1alpha1",
                    "kind": "Agent",
                    "metadata": {"name": name, "labels": labels},
                    "spec": {"serviceAccountName": account},
                },
                namespace=NAMESPACE,
            )
            pod = await api.create(
                kubeclient.PODS,
                {
                    "metadata": {"name": f"{name}-0", "labels": {"agentauth.dev/agent": name}},
                    "spec": {
                        "serviceAccountName": account,
                        "containers": [{"name": "agent", "image": "example.test/agent:1"}],
                    },
                },
                namespace=NAMESPACE,
            )
            return {"name": name, "account": account, "pod": pod}

    everyone = [one(f"agent-{i}", {"team": "bench", "tier": "bench"}) for i in range(agents)]
    everyone.append(one("resource", {"tier": "bench"}))
    return list(await asyncio.gather(*everyone))


async def sa_tokens(
    api: kubeclient.KubeClient, world: list[dict[str, Any]], audience: str
) -> dict[str, str]:
    gate = asyncio.Semaphore(CONCURRENCY)

    async def one(entry: dict[str, Any]) -> tuple[str, str]:
        async with gate:
            pod = entry["pod"]["metadata"]
            review = await api.request(
                "POST",
                f"/api/v1/namespaces/{NAMESPACE}/serviceaccounts/{entry['account']}/token",
                body={
                    "apiVersion": "authentication.k8s.io/v1",
                    "kind": "TokenRequest",
                    "spec": {
                        "audiences": [audience],
                        "expirationSeconds": 3600,
                        "boundObjectRef": {
                            "kind": "Pod",
                            "apiVersion": "v1",
                            "name": pod["name"],
                            "uid": pod["uid"],
                        },
                    },
                },
            )
            return entry["name"], str(review["status"]["token"])

    return dict(await asyncio.gather(*(one(entry) for entry in world)))


class Checker:
    def __init__(self, http: aiohttp.ClientSession, issuer: str) -> None:
        self.http, self.issuer = http, issuer
        self.requests = 0

    async def exchange(self, subject: str) -> tuple[int, dict[str, Any]]:
        self.requests += 1
        form = {"grant_type": EXCHANGE, "subject_token": subject, "subject_token_type": JWT}
        async with self.http.post(f"{self.issuer}/oauth2/token", data=form) as response:
            return response.status, await response.json()

    async def introspect(self, token: str, *, caller: str) -> dict[str, Any]:
        self.requests += 1
        async with self.http.post(
            f"{self.issuer}/oauth2/introspect",
            data={"token": token},
            headers={"Authorization": f"Bearer {caller}"},
        ) as response:
            body: dict[str, Any] = await response.json()
            return body


class Connection:
    """One keep-alive HTTPS connection speaking just the HTTP/1.1 these checks need: a request
    is bytes prepared before the delete, written at once, and its answer read by its
    Content-Length, so a check costs the client a write, a read and a JSON parse instead of a
    client library's per-request bookkeeping (which made the bench, not the token service, the
    limit on how fast 2,000 checks went round)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, issuer: str, tls: ssl.SSLContext) -> Connection:
        address = urllib.parse.urlsplit(issuer)
        reader, writer = await asyncio.open_connection(address.hostname, address.port, ssl=tls)
        return cls(reader, writer)

    async def send(self, request: bytes) -> tuple[int, Any]:
        self.writer.write(request)
        head = await self.reader.readuntil(b"\r\n\r\n")
        status = int(head[9:12])
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        return status, json.loads(await self.reader.readexactly(length))

    def close(self) -> None:
        self.writer.close()


def prepared(issuer: str, path: str, form: dict[str, str], *, bearer: str | None = None) -> bytes:
    """The bytes of ``POST path`` with ``form`` (url-encoded), ready to write."""
    body = urllib.parse.urlencode(form).encode()
    head = [
        f"POST {path} HTTP/1.1",
        f"Host: {urllib.parse.urlsplit(issuer).netloc}",
        "Content-Type: application/x-www-form-urlencoded",
        f"Content-Length: {len(body)}",
    ]
    if bearer is not None:
        head.append(f"Authorization: Bearer {bearer}")
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


def reflected(kind: str, status: int, body: Any) -> bool:
    """Whether one check's answer shows the change: a new exchange without ``document.read``
    (the agent still gets a token), or ``{"active": false}`` for the token held before."""
    if kind == "exchange":
        return status == 200 and "document.read" not in str(body.get("scope", "")).split()
    return status == 200 and body == {"active": False}


@dataclasses.dataclass(frozen=True)
class Job:
    """What one checking process checks: its agents, their subject tokens and held tokens."""

    issuer: str
    ca: str
    subjects: dict[str, str]
    held: dict[str, str]
    caller: str
    names: list[str]


@dataclasses.dataclass
class Observed:
    """Per (kind, agent): when the last check that did not see the change was sent and when the
    first one that saw it was answered (seconds since the delete): the change reached the token
    service between the two, so their gap is the resolution of that agent's figure."""

    last_unreflected_sent: dict[tuple[str, str], float] = dataclasses.field(default_factory=dict)
    reflected_answered: dict[tuple[str, str], float] = dataclasses.field(default_factory=dict)
    requests: int = 0
    checking_seconds: float = 0.0
    cpu_seconds: float = 0.0


def check_in_process(job: Job, go: Any, t0_shared: Any, out: Any) -> None:
    """From ``go`` on, round-robin over every (kind, agent) check of ``job`` until each has seen
    the change, ``CONCURRENCY`` checks in flight; puts an :class:`Observed`."""

    async def main() -> None:
        tls = ssl.create_default_context(cafile=job.ca)
        requests = {}
        for name in job.names:
            requests[("exchange", name)] = prepared(
                job.issuer,
                "/oauth2/token",
                {
                    "grant_type": EXCHANGE,
                    "subject_token": job.subjects[name],
                    "subject_token_type": JWT,
                },
            )
            requests[("introspection", name)] = prepared(
                job.issuer, "/oauth2/introspect", {"token": job.held[name]}, bearer=job.caller
            )
        connections = [await Connection.open(job.issuer, tls) for _ in range(CONCURRENCY)]
        observed = Observed()
        # Round-robin: a check that has not seen the change goes back to the end of the line,
        # so every check comes round once per pass over all of them.
        line: asyncio.Queue[tuple[str, str]] = asyncio.Queue()
        for item in requests:
            line.put_nowait(item)
        remaining = line.qsize()
        finished = asyncio.Event()
        out.put("ready")
        await asyncio.to_thread(go.wait)
        t0 = t0_shared.value
        cpu0 = time.process_time()

        async def worker(connection: Connection) -> None:
            nonlocal remaining
            while True:
                item = await line.get()
                sent = time.monotonic() - t0
                status, body = await connection.send(requests[item])
                observed.requests += 1
                if reflected(item[0], status, body):
                    observed.reflected_answered[item] = time.monotonic() - t0
                    remaining -= 1
                    if remaining == 0:
                        finished.set()
                else:
                    observed.last_unreflected_sent[item] = sent
                    line.put_nowait(item)

        workers = [asyncio.create_task(worker(c)) for c in connections]
        with contextlib.suppress(TimeoutError):  # what is left is reported not reflected
            await asyncio.wait_for(finished.wait(), timeout=GIVE_UP_SECONDS)
        observed.checking_seconds = time.monotonic() - t0
        observed.cpu_seconds = time.process_time() - cpu0
        for task in workers:
            task.cancel()
        await asyncio.gather(*workers, return_exceptions=True)
        for connection in connections:
            connection.close()
        out.put(dataclasses.asdict(observed))  # plain data: this module is __mp_main__ here

    asyncio.run(main())


async def measure(env: stackkit.BenchEnv, agents: int) -> dict[str, Any]:
    api = kubeclient.KubeClient(config.from_kubeconfig(env.cluster.kubeconfig_path))
    connector = aiohttp.TCPConnector(ssl=env.tls, limit=CONCURRENCY)
    http = aiohttp.ClientSession(connector=connector)
    try:
        started = time.monotonic()
        world = await create_world(api, agents)
        subjects = await sa_tokens(api, world, env.issuer)
        setup_seconds = time.monotonic() - started
        checker = Checker(http, env.issuer)
        names = [entry["name"] for entry in world if entry["name"] != "resource"]

        async def token_of(name: str, *, wanted: str) -> str:
            deadline = time.monotonic() + 120
            while True:  # until the token service's caches hold the agent, its pod and grants
                status, body = await checker.exchange(subjects[name])
                if status == 200 and wanted in body["scope"].split():
                    return str(body["access_token"])
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{name}: no token with {wanted}: {status} {body}")
                await asyncio.sleep(0.2)  # polling the token service until its caches synced

        caller = await token_of("resource", wanted="reports.read")
        gate = asyncio.Semaphore(CONCURRENCY)

        async def before(name: str) -> str:
            async with gate:
                return await token_of(name, wanted="document.read")

        held = dict(zip(names, await asyncio.gather(*(before(n) for n in names)), strict=True))
        assert (await checker.introspect(held[names[0]], caller=caller))["active"] is True

        # The checks run in processes of their own: in this one the API server and the
        # controller (busy rewriting 1,000 Agent statuses after the delete) would hold the
        # interpreter while the answers wait to be read.
        context = multiprocessing.get_context("spawn")
        go, t0_shared, out = context.Event(), context.Value("d", 0.0), context.Queue()
        checking = [
            context.Process(
                target=check_in_process,
                args=(
                    Job(
                        issuer=env.issuer,
                        ca=str(env.ca),
                        subjects=subjects,
                        held=held,
                        caller=caller,
                        names=names[index::CHECKING_PROCESSES],
                    ),
                    go,
                    t0_shared,
                    out,
                ),
            )
            for index in range(CHECKING_PROCESSES)
        ]
        for process in checking:
            process.start()
        for _ in checking:
            assert out.get(timeout=60) == "ready"
        token_service = stackkit.cpu_seconds_of(env.process.pid) if env.process else 0.0
        here = time.process_time()
        t0 = time.monotonic()  # CLOCK_MONOTONIC: the same clock in every process
        t0_shared.value = t0
        go.set()
        await api.delete(kubeclient.CAPABILITY_GRANTS, "docs", namespace=NAMESPACE)
        deleted_after = time.monotonic() - t0
        results = [
            Observed(**await asyncio.to_thread(out.get, True, GIVE_UP_SECONDS + 60))
            for _ in checking
        ]
        window = time.monotonic() - t0
        cpu = {
            "token_service": round(
                (stackkit.cpu_seconds_of(env.process.pid) if env.process else 0.0) - token_service,
                2,
            ),
            "api_server_and_controller": round(time.process_time() - here, 2),
            "checkers": round(sum(r.cpu_seconds for r in results), 2),
        }
        for process in checking:
            process.join(timeout=30)
        answered: dict[tuple[str, str], float] = {}
        unreflected: dict[tuple[str, str], float] = {}
        for result in results:
            answered.update(result.reflected_answered)
            unreflected.update(result.last_unreflected_sent)
        kinds = ("exchange", "introspection")
        done = [n for n in names if all((kind, n) in answered for kind in kinds)]
        both = [max(answered[(kind, n)] for kind in kinds) for n in done]
        # The change reached the token service for a check between its last unreflected check
        # being sent and its first reflected answer: the width of that bracket is what the
        # bench's own checking rate adds to the figure (0 when the first check saw it).
        resolution = [answered[item] - unreflected.get(item, 0.0) for item in answered]
        requests = sum(r.requests for r in results)
        checking_seconds = max(r.checking_seconds for r in results)

        def spread(values: list[float]) -> dict[str, float | None]:
            if not values:
                return {"min": None, "p50": None, "p99": None, "max": None}
            return {
                "min": round(min(values), 4),
                "p50": round(statistics.median(values), 4),
                "p99": round(percentile(values, 0.99), 4),
                "max": round(max(values), 4),
            }

        def of(kind: str) -> list[float]:
            return [at for (k, _), at in answered.items() if k == kind]

        return {
            "agents": agents,
            "setup_seconds": round(setup_seconds, 1),
            "delete_call_seconds": round(deleted_after, 4),
            "reflected_in_exchange_and_introspection": len(both),
            "not_reflected": agents - len(both),
            "first_reflected_s": spread(both)["min"],
            "all_reflected_s": spread(both)["max"],
            "seconds_to_reflect": spread(both),
            "seconds_to_reflect_in_exchange": spread(of("exchange")),
            "seconds_to_reflect_in_introspection": spread(of("introspection")),
            "last_unreflected_check_sent_s": round(max(unreflected.values(), default=0.0), 4),
            "check_resolution_s": spread(resolution),
            "checks_per_s": round(requests / checking_seconds, 1),
            "checking_processes": CHECKING_PROCESSES,
            "checks_in_flight": CHECKING_PROCESSES * CONCURRENCY,
            "cpu_seconds_until_all_reflected": cpu,
            "window_s": round(window, 3),
            "target_s": 2.0,
        }
    finally:
        await http.close()
        await api.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--agents", type=int, default=1000)
    options = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)
    with stackkit.running_stack(bookmark_interval=1.0) as env:
        summary = asyncio.run(measure(env, options.agents))
    print(json.dumps(summary, indent=2), file=sys.stderr)
    print(json.dumps(summary))  # bench/run.py reads the last stdout line
    return 0 if summary["not_reflected"] == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
