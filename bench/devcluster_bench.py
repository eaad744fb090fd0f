"""Benchmark of the embedded control plane (issue 3 numbers).

Runs the server in a child process pinned to one core (CPU 0) and the load generator in this
process (pinned to CPU 1 when there is one), then prints one JSON line:

- ``writes_per_second``: ConfigMap creates per second, 8 concurrent writers over keep-alive
  connections, while 50 watches on the same namespace are open (target >= 1000);
- ``watch_latency_p99_ms`` / ``p50``: from sending a write to each of the 50 watchers reading
  its event, over every (write, watcher) pair, at a paced 200 writes/s (target p99 < 50 ms);
  ``saturated_latency_p99_ms`` is the same figure during the unpaced throughput run;
- ``list_10k_seconds``: one GET of a namespace holding 10,000 ConfigMaps, body read and parsed
  (target < 1 s);
- ``controller_mix``: the requests the controller bench makes of the control plane, without the
  controller: ``--mix-agents`` Agents and as many CapabilityGrants created over 10 namespaces
  (64 concurrent writers, a cluster-wide watch of each kind open), a status merge patch of
  each, and two core Events per Agent (capability names and selectors repeat every 50 Agents,
  as in the controller bench); ``server_cpu_ms_per_request`` is the server's CPU time per
  request (the cost of one request on one core, whatever else the machine runs).

Usage: ``.venv/bin/python bench/devcluster_bench.py [--writes 3000] [--objects 10000]
[--mix-agents 2000] [--mix-only]``.
``BENCH_SERVER_WRAPPER=script.py`` runs the server child as ``python script.py DIR`` instead
(for profiling it, e.g. under cProfile).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import os
import re
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

WATCHERS = 50
WRITERS = 8
MIX_WRITERS = 64
MIX_NAMESPACES = 10
CRD_GROUP = "agentauth.dev/v1alpha1"
NAME = re.compile(rb'"metadata":\{"name":"([^"]+)"')


def serve(directory: Path) -> None:
    """Child process: run the server until stdin closes."""
    from agentauth.devcluster import server

    async def main() -> None:
        cluster = server.DevCluster(directory=directory)
        await cluster.start()
        print(
            json.dumps(
                {"url": cluster.url, "token": cluster.admin_token, "ca": str(cluster.ca_path)}
            ),
            flush=True,
        )
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, sys.stdin.read)
        await cluster.stop()
        print(f"server cpu seconds: {time.process_time():.2f}", file=sys.stderr)

    asyncio.run(main())


def cpu_seconds(pid: int) -> float:
    """User+system CPU time of a process, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


class Bench:
    def __init__(self, url: str, token: str, ca: str, *, watchers: int) -> None:
        self.url = url
        self.watchers = watchers
        self.headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
        self.ssl = ssl.create_default_context(cafile=ca)

    def session(self) -> aiohttp.ClientSession:
        connector = aiohttp.TCPConnector(ssl=self.ssl, limit=0)
        return aiohttp.ClientSession(
            connector=connector, headers=self.headers, timeout=aiohttp.ClientTimeout(total=None)
        )

    async def create_namespace(self, session: aiohttp.ClientSession, name: str) -> None:
        async with session.post(
            f"{self.url}/api/v1/namespaces", json={"metadata": {"name": name}}
        ) as response:
            assert response.status == 201, await response.text()

    async def write_many(
        self,
        session: aiohttp.ClientSession,
        namespace: str,
        names: list[str],
        *,
        sent: dict[str, float],
        rate: float | None = None,
    ) -> float:
        queue: asyncio.Queue[str] = asyncio.Queue()
        for name in names:
            queue.put_nowait(name)
        started = time.perf_counter()
        path = f"{self.url}/api/v1/namespaces/{namespace}/configmaps"

        async def writer() -> None:
            while not queue.empty():
                name = queue.get_nowait()
                if rate is not None:
                    due = started + names.index(name) / rate
                    delay = due - time.perf_counter()
                    if delay > 0:
                        await asyncio.sleep(delay)
                sent[name] = time.perf_counter()
                body = {"metadata": {"name": name}, "data": {"k": "v" * 64}}
                async with session.post(path, json=body) as response:
                    if response.status != 201:
                        raise RuntimeError(await response.text())
                    await response.read()

        await asyncio.gather(*(writer() for _ in range(WRITERS)))
        return time.perf_counter() - started

    async def watch(
        self,
        session: aiohttp.ClientSession,
        namespace: str,
        version: str,
        arrivals: dict[str, float],
        expected: int,
        ready: asyncio.Event,
        opened: list[int],
    ) -> None:
        url = (
            f"{self.url}/api/v1/namespaces/{namespace}/configmaps?watch=true"
            f"&resourceVersion={version}"
        )
        async with session.get(url) as response:
            opened[0] += 1
            if opened[0] == self.watchers:
                ready.set()
            seen = 0
            buffer = b""
            while seen < expected:
                chunk = await response.content.readany()
                if not chunk:
                    return
                now = time.perf_counter()
                buffer += chunk
                # Find names with a regex over whole chunks: the client must not be the
                # bottleneck of a server benchmark.
                cut = buffer.rfind(b"\n") + 1
                for name in NAME.findall(buffer, 0, cut):
                    arrivals.setdefault(name.decode(), now)
                    seen += 1
                buffer = buffer[cut:]

    async def fan_out(
        self, namespace: str, count: int, rate: float | None, prefix: str
    ) -> tuple[float, list[float]]:
        async with self.session() as session:
            async with session.get(
                f"{self.url}/api/v1/namespaces/{namespace}/configmaps?limit=1"
            ) as response:
                version = (await response.json())["metadata"]["resourceVersion"]
            arrivals = [dict[str, float]() for _ in range(self.watchers)]
            ready = asyncio.Event()
            opened = [0]
            async with self.session() as watch_session:
                watchers = [
                    asyncio.create_task(
                        self.watch(
                            watch_session, namespace, version, arrivals[i], count, ready, opened
                        )
                    )
                    for i in range(self.watchers)
                ]
                if self.watchers:
                    await asyncio.wait_for(ready.wait(), 30)
                sent: dict[str, float] = {}
                names = [f"{prefix}-{index}" for index in range(count)]
                elapsed = await self.write_many(session, namespace, names, sent=sent, rate=rate)
                await asyncio.wait_for(asyncio.gather(*watchers), 120)
            latencies = [(seen[name] - sent[name]) * 1000 for seen in arrivals for name in seen]
            return count / elapsed, latencies

    async def list_many(self, namespace: str, count: int) -> float:
        async with self.session() as session:
            await self.create_namespace(session, namespace)
            await self.write_many(session, namespace, [f"item-{i}" for i in range(count)], sent={})
            timings = []
            for _ in range(3):
                started = time.perf_counter()
                async with session.get(
                    f"{self.url}/api/v1/namespaces/{namespace}/configmaps"
                ) as response:
                    items = (await response.json())["items"]
                timings.append(time.perf_counter() - started)
                assert len(items) == count
            return statistics.median(timings)

    async def controller_mix(self, agents: int) -> tuple[int, float]:
        """The controller bench's load (see the module docstring); returns (requests, seconds)."""
        namespaces = [f"mix-{n}" for n in range(MIX_NAMESPACES)]
        requests = [0]
        async with self.session() as session:
            for namespace in namespaces:
                await self.create_namespace(session, namespace)
            watches = [
                asyncio.create_task(self.drain(session, f"/apis/{CRD_GROUP}/{plural}"))
                for plural in ("agents", "capabilitygrants")
            ]

            async def send(method: str, path: str, body: Any, content_type: str) -> None:
                async with session.request(
                    method,
                    f"{self.url}{path}",
                    data=json.dumps(body),
                    headers={"Content-Type": content_type},
                ) as response:
                    if response.status >= 300:
                        raise RuntimeError(f"{method} {path}: {await response.text()}")
                    await response.read()
                requests[0] += 1

            async def one(index: int) -> None:
                namespace = namespaces[index % MIX_NAMESPACES]
                base = f"/apis/{CRD_GROUP}/namespaces/{namespace}"
                name = f"agent-{index}"
                agent = {
                    "apiVersion": CRD_GROUP,
                    "kind": "Agent",
                    "metadata": {"name": name, "labels": {"pair": f"p{index // 2 % 50}"}},
                    "spec": {"serviceAccountName": "bench-sa"},
                }
                grant = {
                    "apiVersion": CRD_GROUP,
                    "kind": "CapabilityGrant",
                    "metadata": {"name": f"grant-{index}"},
                    "spec": {
                        "agents": {"selector": {"matchLabels": {"pair": f"p{index // 2 % 50}"}}},
                        "capabilities": [{"name": f"doc{index % 50}.read"}],
                    },
                }
                await send("POST", f"{base}/agents", agent, "application/json")
                await send("POST", f"{base}/capabilitygrants", grant, "application/json")
                now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
                condition = {"status": "True", "lastTransitionTime": now, "observedGeneration": 1}
                await send(
                    "PATCH",
                    f"{base}/capabilitygrants/grant-{index}/status",
                    {
                        "status": {
                            "observedGeneration": 1,
                            "matchedAgents": [name],
                            "conditions": [{**condition, "type": "Active", "reason": "Matched"}],
                        }
                    },
                    "application/merge-patch+json",
                )
                await send(
                    "PATCH",
                    f"{base}/agents/{name}/status",
                    {
                        "status": {
                            "observedGeneration": 1,
                            "agentID": f"aauth:{name}.{namespace}@bench.test",
                            "capabilities": [
                                {
                                    "name": f"doc{index % 50}.read",
                                    "grant": f"grant-{index}",
                                    "approval": "Automatic",
                                }
                            ],
                            "conditions": [{**condition, "type": "Ready", "reason": "Ready"}],
                        }
                    },
                    "application/merge-patch+json",
                )
                for reason in ("Registered", "Ready"):
                    event = {
                        "metadata": {"generateName": f"{name}."},
                        "involvedObject": {
                            "apiVersion": CRD_GROUP,
                            "kind": "Agent",
                            "name": name,
                            "namespace": namespace,
                        },
                        "type": "Normal",
                        "reason": reason,
                        "message": f"{reason} {name}",
                        "source": {"component": "agentauth-controller"},
                        "firstTimestamp": now,
                        "lastTimestamp": now,
                        "count": 1,
                    }
                    await send(
                        "POST", f"/api/v1/namespaces/{namespace}/events", event, "application/json"
                    )

            pending = collections.deque(range(agents))

            async def worker() -> None:
                while pending:
                    await one(pending.popleft())

            started = time.perf_counter()
            await asyncio.gather(*(worker() for _ in range(MIX_WRITERS)))
            elapsed = time.perf_counter() - started
            for task in watches:
                task.cancel()
            await asyncio.gather(*watches, return_exceptions=True)
        return requests[0], elapsed

    async def drain(self, session: aiohttp.ClientSession, path: str) -> None:
        """A cluster-wide watch read and discarded (the controller's informers hold two)."""
        async with session.get(f"{self.url}{path}?watch=true&resourceVersion=0") as response:
            while await response.content.readany():
                pass


async def run_mix(
    arguments: argparse.Namespace, url: str, token: str, ca: str, pid: int
) -> dict[str, Any]:
    bench = Bench(url, token, ca, watchers=0)
    cpu_before = cpu_seconds(pid)
    requests, elapsed = await bench.controller_mix(arguments.mix_agents)
    server_cpu = cpu_seconds(pid) - cpu_before
    return {
        "agents": arguments.mix_agents,
        "requests": requests,
        "server_cpu_seconds": round(server_cpu, 2),
        "server_cpu_ms_per_request": round(1000 * server_cpu / requests, 3),
        "requests_per_server_cpu_second": round(requests / server_cpu, 1),
        "requests_per_second": round(requests / elapsed, 1),
    }


async def run(
    arguments: argparse.Namespace, url: str, token: str, ca: str, pid: int
) -> dict[str, Any]:
    bench = Bench(url, token, ca, watchers=arguments.watchers)
    async with bench.session() as session:
        await bench.create_namespace(session, "bench-throughput")
        await bench.create_namespace(session, "bench-latency")
    cpu_before = cpu_seconds(pid)
    throughput, saturated = await bench.fan_out("bench-throughput", arguments.writes, None, "t")
    server_cpu = cpu_seconds(pid) - cpu_before
    _, paced = await bench.fan_out("bench-latency", arguments.paced_writes, 200.0, "p")
    list_seconds = await bench.list_many("bench-list", arguments.objects)
    mix = await run_mix(arguments, url, token, ca, pid) if arguments.mix_agents else None
    return {
        "watchers": arguments.watchers,
        "writes": arguments.writes,
        "writes_per_second": round(throughput, 1),
        # Throughput per second of server CPU: what one uncontended core sustains. On a shared
        # machine the wall-clock figure above also measures everyone else's load.
        "writes_per_server_cpu_second": round(arguments.writes / server_cpu, 1),
        "saturated_latency_p99_ms": round(percentile(saturated, 0.99), 2) if saturated else None,
        "watch_latency_p50_ms": round(percentile(paced, 0.50), 2) if paced else None,
        "watch_latency_p99_ms": round(percentile(paced, 0.99), 2) if paced else None,
        "list_objects": arguments.objects,
        "list_10k_seconds": round(list_seconds, 3),
        "controller_mix": mix,
        "load_average_1m": os.getloadavg()[0],
        # The raw samples go only to bench/run.py, which plots them (bench/plots/*.png).
        "distributions": {"write_to_watcher_ms_paced_200_per_s": [round(v, 2) for v in paced]},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--serve", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--writes", type=int, default=3000)
    parser.add_argument("--watchers", type=int, default=WATCHERS)
    parser.add_argument("--paced-writes", type=int, default=600)
    parser.add_argument("--objects", type=int, default=10_000)
    parser.add_argument("--mix-agents", type=int, default=2000)
    parser.add_argument("--mix-only", action="store_true", help="run the controller mix only")
    arguments = parser.parse_args()
    if arguments.serve:
        os.sched_setaffinity(0, {0})
        serve(arguments.serve)
        return
    cpus = os.sched_getaffinity(0)
    if len(cpus) > 1:
        os.sched_setaffinity(0, cpus - {0})
    with tempfile.TemporaryDirectory() as directory:
        child = subprocess.Popen(
            [
                sys.executable,
                *(
                    [os.environ["BENCH_SERVER_WRAPPER"]]
                    if os.environ.get("BENCH_SERVER_WRAPPER")
                    else [__file__, "--serve"]
                ),
                directory,
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            assert child.stdout is not None and child.stdin is not None
            info = json.loads(child.stdout.readline())
            runner = run_mix if arguments.mix_only else run
            result = asyncio.run(
                runner(arguments, info["url"], info["token"], info["ca"], child.pid)
            )
        finally:
            if child.stdin is not None:
                child.stdin.close()
            child.wait(30)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
