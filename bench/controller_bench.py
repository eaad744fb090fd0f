"""Benchmark of the controller (issue 4 numbers).

Three processes: the embedded control plane (child), the controller exactly as
``agentauth controller`` runs it (child, ``main.run`` with settings from the environment,
cluster-wide), and the load generator (this process). The load generator creates one
ServiceAccount, then 1,000 Agents and 1,000 CapabilityGrants at once (64 concurrent writers,
Agents and grants interleaved), and polls the Agents until every one is Ready with exactly the
capability its grant gives. Prints one JSON line:

- ``all_ready_seconds``: from the first create to the moment all Agents are Ready with correct
  capabilities (target < 30 s);
- ``create_seconds``: how long the creates themselves took;
- ``controller_rss_mb``: the controller process's resident set size at that moment (VmRSS,
  target < 200 MB), and ``controller_peak_rss_mb`` (VmHWM).

Usage: ``.venv/bin/python bench/controller_bench.py [--agents 1000]``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

NAMESPACE = "bench"
CONTROLLER_NAMESPACE = "agentauth-system"
WRITERS = 64


def serve(directory: Path) -> None:
    """Child process: run the embedded control plane until stdin closes."""
    from agentauth.devcluster import server

    async def main() -> None:
        cluster = server.DevCluster(directory=directory)
        await cluster.start()
        print(json.dumps({"kubeconfig": str(cluster.kubeconfig_path)}), flush=True)
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, sys.stdin.read)
        await cluster.stop()

    asyncio.run(main())


def run_controller() -> None:
    """Child process: the controller, configured from the environment like the chart does."""
    from agentauth.controller import main, settings

    async def body() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        loop.run_in_executor(None, lambda: (sys.stdin.read(), loop.call_soon_threadsafe(stop.set)))
        await main.run(settings.from_sources(None), stop=stop)

    profile = os.environ.get("CONTROLLER_BENCH_PROFILE")
    if profile:  # diagnosis only: where the controller spends its time
        import cProfile

        cProfile.runctx("asyncio.run(body())", globals(), locals(), profile)
    else:
        asyncio.run(body())


def rss_mb(pid: int) -> tuple[float, float]:
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        fields[key] = value.strip()
    return int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024


def agent(index: int) -> dict[str, Any]:
    return {
        "apiVersion": "agentauth.dev/v1alpha1",
        "kind": "Agent",
        "metadata": {"name": f"agent-{index}", "namespace": NAMESPACE},
        "spec": {"serviceAccountName": "bench-sa"},
    }


def grant(index: int) -> dict[str, Any]:
    return {
        "apiVersion": "agentauth.dev/v1alpha1",
        "kind": "CapabilityGrant",
        "metadata": {"name": f"grant-{index}", "namespace": NAMESPACE},
        "spec": {
            "agents": {"names": [f"agent-{index}"]},
            "capabilities": [{"name": f"res{index}.read"}],
        },
    }


def correct(item: dict[str, Any]) -> bool:
    index = item["metadata"]["name"].split("-", 1)[1]
    status = item.get("status") or {}
    ready = any(
        c["type"] == "Ready" and c["status"] == "True" for c in status.get("conditions") or []
    )
    capabilities = [(c["name"], c["grant"]) for c in status.get("capabilities") or []]
    return ready and capabilities == [(f"res{index}.read", f"grant-{index}")]


async def load(kubeconfig: Path, *, count: int, controller_pid: int) -> dict[str, Any]:
    from agentauth.kube import client as kube
    from agentauth.kube import config as kube_config

    async with kube.KubeClient(kube_config.load(kubeconfig)) as api:
        await api.create(
            kube.SERVICE_ACCOUNTS, {"metadata": {"name": "bench-sa"}}, namespace=NAMESPACE
        )
        documents: list[tuple[kube.Resource, dict[str, Any]]] = []
        for index in range(count):
            documents += [(kube.AGENTS, agent(index)), (kube.CAPABILITY_GRANTS, grant(index))]
        queue: asyncio.Queue[tuple[kube.Resource, dict[str, Any]]] = asyncio.Queue()
        for item in documents:
            queue.put_nowait(item)

        async def writer() -> None:
            while not queue.empty():
                resource, body = queue.get_nowait()
                await api.create(resource, body, namespace=NAMESPACE)

        started = time.monotonic()
        await asyncio.gather(*(writer() for _ in range(WRITERS)))
        created = time.monotonic() - started
        done = 0
        while True:
            listed = await api.list(kube.AGENTS, namespace=NAMESPACE)
            done = sum(1 for item in listed["items"] if correct(item))
            if done == count:
                break
            if time.monotonic() - started > 300:
                raise SystemExit(f"only {done}/{count} agents correct after 300 s")
            await asyncio.sleep(0.25)
        elapsed = time.monotonic() - started
        rss, peak = rss_mb(controller_pid)
        events = await api.list(kube.EVENTS, namespace=NAMESPACE)
        reasons: dict[str, int] = {}
        for event in events["items"]:
            reasons[event["reason"]] = reasons.get(event["reason"], 0) + 1
        return {
            "agents": count,
            "grants": count,
            "create_seconds": round(created, 2),
            "all_ready_seconds": round(elapsed, 2),
            "all_ready_target_seconds": 30,
            "controller_rss_mb": round(rss, 1),
            "controller_peak_rss_mb": round(peak, 1),
            "controller_rss_target_mb": 200,
            "events_by_reason": reasons,
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--agents", type=int, default=1000)
    parser.add_argument("--role", choices=["bench", "server", "controller"], default="bench")
    parser.add_argument("--dir", type=Path)
    args = parser.parse_args()
    if args.role == "server":
        serve(args.dir)
        return
    if args.role == "controller":
        run_controller()
        return
    with tempfile.TemporaryDirectory(prefix="controller-bench-") as directory:
        server = subprocess.Popen(
            [sys.executable, __file__, "--role", "server", "--dir", directory],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert server.stdout is not None and server.stdin is not None
        kubeconfig = Path(json.loads(server.stdout.readline())["kubeconfig"])
        kubectl = [str(Path(sys.executable).parent / "kubectl"), "--kubeconfig", str(kubeconfig)]
        for namespace in (NAMESPACE, CONTROLLER_NAMESPACE):
            subprocess.run(
                [*kubectl, "create", "namespace", namespace], check=True, capture_output=True
            )
        environ = {
            **os.environ,
            "KUBECONFIG": str(kubeconfig),
            "AGENTAUTH_ISSUER": "https://issuer.bench.test",
            "AGENTAUTH_CONTROLLER_NAMESPACE": CONTROLLER_NAMESPACE,
            "AGENTAUTH_WEBHOOK_HOST": "127.0.0.1",
            "AGENTAUTH_WEBHOOK_PORT": "0",
            "AGENTAUTH_HEALTH_PORT": "0",
        }
        controller = subprocess.Popen(
            [sys.executable, __file__, "--role", "controller"],
            stdin=subprocess.PIPE,
            env=environ,
            stderr=subprocess.DEVNULL,
        )
        assert controller.stdin is not None
        try:
            # The controller is up once it has written the issuer keys.
            deadline = time.monotonic() + 60
            while (
                subprocess.run(
                    [
                        *kubectl,
                        "get",
                        "secret",
                        "agentauth-issuer-keys",
                        "-n",
                        CONTROLLER_NAMESPACE,
                    ],
                    capture_output=True,
                    check=False,
                ).returncode
                != 0
            ):
                if time.monotonic() > deadline or controller.poll() is not None:
                    raise SystemExit("controller did not start")
                time.sleep(0.2)
            results = asyncio.run(
                load(kubeconfig, count=args.agents, controller_pid=controller.pid)
            )
        finally:
            controller.stdin.close()
            try:
                controller.wait(timeout=30)
            except subprocess.TimeoutExpired:
                controller.kill()
            server.stdin.close()
            server.wait(timeout=30)
    print(json.dumps(results))


if __name__ == "__main__":
    main()
