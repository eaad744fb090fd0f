"""Benchmark of the controller at growing cluster sizes (issues 4 and 19).

For each size N of the series (default 1,000, 3,000 and 10,000) three fresh processes run: the
embedded control plane (child), the controller exactly as ``agentauth controller`` runs it (child,
``main.run`` with settings from the environment, cluster-wide), and the load generator (this
process). The load generator creates 100 namespaces with one ServiceAccount each, then N Agents
and N CapabilityGrants spread evenly over them (64 concurrent writers, namespace after namespace,
each namespace's Agents and grants interleaved, as ``kubectl apply`` of one namespace's manifests
would send them). Half the grants name two Agents, half select two Agents by labels (alternately
``matchLabels`` and ``matchExpressions``), so every Agent holds exactly two capabilities from two
grants of different kinds.

It polls the Agents until every one is Ready with exactly the capabilities (name and source grant)
the bench itself derives from its manifests, then waits until the controller is idle and checks
the Events: every Agent has exactly ``Registered`` and ``Ready`` (the Events of the single
transition from nothing to Ready) and every grant none (its transition to Active posts nothing).

At the largest size the controller is then stopped and started again: the new one re-lists
everything, and the bench counts the writes it makes (the API's global resourceVersion before and
after) and the Events it posts, which must both be zero.

Prints one JSON line with, per size:

- ``all_ready_seconds``: first create to every Agent correct (target 30 s at 10,000);
  ``create_seconds``: the creates alone;
- ``cpu_seconds``: CPU used by the controller, the control plane and the load generator until
  all were Ready (on a shared machine the wall-clock figures depend on what else runs;
  ``load_average`` says how busy it was);
- ``controller_peak_rss_mb`` (VmHWM, target under 400 MB at 10,000), ``controller_rss_mb``
  (VmRSS when idle);
- ``event_violations``: objects whose Events differ from one transition's (target 0);
- at the largest size, ``restart``: ``writes`` and ``events`` (target 0 each),
  ``relist_seconds`` (start to idle) and RSS.

Usage: ``.venv/bin/python bench/controller_bench.py [--series 1000,3000,10000]``. Diagnosis:
``CONTROLLER_BENCH_PROFILE=path`` / ``SERVER_BENCH_PROFILE=path`` write cProfile data of the
controller / the control plane (of the last size run).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

NAMESPACES = 100
CONTROLLER_NAMESPACE = "agentauth-system"
SERVICE_ACCOUNT = "bench-sa"
WRITERS = 64
# The controller is idle once it has used less than this share of a core for IDLE_SECONDS.
IDLE_CPU_SHARE = 0.03
IDLE_SECONDS = 2.0
TARGET_SECONDS = 30
TARGET_RSS_MB = 400


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

    _profiled(main, os.environ.get("SERVER_BENCH_PROFILE"))


def _profiled(main: Any, profile: str | None) -> None:
    """Run ``main()`` under asyncio, profiled into ``profile`` when set (diagnosis only). The
    profile counts CPU time: on a shared machine wall time lands on whichever call was
    preempted (often a socket send that woke the other side)."""
    if not profile:
        asyncio.run(main())
        return
    import cProfile

    profiler = cProfile.Profile(time.process_time)
    try:
        profiler.runcall(asyncio.run, main())
    finally:
        profiler.dump_stats(profile)


def run_controller() -> None:
    """Child process: the controller, configured from the environment like the chart does."""
    from agentauth.controller import main, settings

    started: list[Any] = []

    def on_started(controller: Any) -> None:
        started.append(controller)
        print(json.dumps({"ready": True}), flush=True)  # the bench starts its clock after this

    async def body() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        loop.run_in_executor(None, lambda: (sys.stdin.read(), loop.call_soon_threadsafe(stop.set)))
        await main.run(settings.from_sources(None), stop=stop, on_started=on_started)

    _profiled(body, os.environ.get("CONTROLLER_BENCH_PROFILE"))
    # What the controller's own client sent (Kopf's client, for the other kinds, is not counted)
    # and the reconciles it ran, by kind.
    counts: dict[str, Any] = {"requests": {}, "reconciles": {}}
    if started:
        counts = {"requests": started[0].api.requests, "reconciles": started[0].reconciled}
    print(json.dumps(counts), flush=True)


# --- the manifests and what they must produce -------------------------------------------------


def namespace_name(index: int) -> str:
    return f"bench-{index:02d}"


def agent(namespace: str, index: int) -> dict[str, Any]:
    return {
        "apiVersion": "agentauth.dev/v1alpha1",
        "kind": "Agent",
        "metadata": {
            "name": f"agent-{index}",
            "namespace": namespace,
            "labels": {"pair": f"p{index // 2}", "tier": "gold" if index % 2 else "silver"},
        },
        "spec": {"serviceAccountName": SERVICE_ACCOUNT},
    }


def named_grant(namespace: str, index: int, *, per_namespace: int) -> dict[str, Any]:
    """Names Agents 2i+1 and 2i+2 (wrapping): a different pair than the selector grant's."""
    names = [f"agent-{(2 * index + 1) % per_namespace}", f"agent-{(2 * index + 2) % per_namespace}"]
    return {
        "apiVersion": "agentauth.dev/v1alpha1",
        "kind": "CapabilityGrant",
        "metadata": {"name": f"named-{index}", "namespace": namespace},
        "spec": {"agents": {"names": names}, "capabilities": [{"name": f"doc{index}.read"}]},
    }


def selector_grant(namespace: str, index: int) -> dict[str, Any]:
    """Selects Agents 2i and 2i+1 by their ``pair`` label."""
    selector: dict[str, Any]
    if index % 2:
        selector = {
            "matchExpressions": [
                {"key": "pair", "operator": "In", "values": [f"p{index}"]},
                {"key": "tier", "operator": "Exists"},
            ]
        }
    else:
        selector = {"matchLabels": {"pair": f"p{index}"}}
    return {
        "apiVersion": "agentauth.dev/v1alpha1",
        "kind": "CapabilityGrant",
        "metadata": {"name": f"pair-{index}", "namespace": namespace},
        "spec": {"agents": {"selector": selector}, "capabilities": [{"name": f"pay{index}.send"}]},
    }


def manifests(count: int) -> tuple[list[tuple[str, dict[str, Any]]], dict[tuple[str, str], Any]]:
    """The objects to create in order (kind, body) and, per Agent, the capabilities it must hold
    as a sorted list of (capability, grant)."""
    per_namespace = count // NAMESPACES
    documents: list[tuple[str, dict[str, Any]]] = []
    expected: dict[tuple[str, str], list[tuple[str, str]]] = {}
    for n in range(NAMESPACES):
        namespace = namespace_name(n)
        for pair in range(per_namespace // 2):
            named = named_grant(namespace, pair, per_namespace=per_namespace)
            selecting = selector_grant(namespace, pair)
            documents += [
                ("agent", agent(namespace, 2 * pair)),
                ("agent", agent(namespace, 2 * pair + 1)),
                ("grant", named),
                ("grant", selecting),
            ]
            for name in named["spec"]["agents"]["names"]:
                expected.setdefault((namespace, name), []).append(
                    (f"doc{pair}.read", f"named-{pair}")
                )
            for index in (2 * pair, 2 * pair + 1):
                expected.setdefault((namespace, f"agent-{index}"), []).append(
                    (f"pay{pair}.send", f"pair-{pair}")
                )
    return documents, {key: sorted(value) for key, value in expected.items()}


def correct(item: dict[str, Any], expected: dict[tuple[str, str], Any]) -> bool:
    meta = item["metadata"]
    status = item.get("status") or {}
    ready = any(
        c["type"] == "Ready" and c["status"] == "True" for c in status.get("conditions") or []
    )
    held = sorted((c["name"], c["grant"]) for c in status.get("capabilities") or [])
    return ready and held == expected[(meta["namespace"], meta["name"])]


# --- the controller process -------------------------------------------------------------------


def rss_mb(pid: int) -> tuple[float, float]:
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        fields[key] = value.strip()
    return int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def until_idle(pid: int, *, deadline: float) -> float:
    """Wait until process ``pid`` has been (nearly) idle for ``IDLE_SECONDS``; returns when its
    last busy period ended (monotonic)."""
    step = 0.25
    window: collections.deque[float] = collections.deque(maxlen=int(IDLE_SECONDS / step) + 1)
    last_busy = time.monotonic()
    while True:
        used = cpu_seconds(pid)
        window.append(used)
        if len(window) >= 2 and window[-1] - window[-2] > IDLE_CPU_SHARE * step:
            last_busy = time.monotonic()
        if len(window) == window.maxlen and window[-1] - window[0] <= IDLE_CPU_SHARE * IDLE_SECONDS:
            return last_busy
        if time.monotonic() > deadline:
            raise SystemExit("the controller did not become idle")
        await asyncio.sleep(step)


class Controller:
    """One controller child process."""

    def __init__(self, environ: dict[str, str]) -> None:
        self.process = subprocess.Popen(
            [sys.executable, __file__, "--role", "controller"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=environ,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        self.started = time.monotonic()
        self.requests: dict[str, int] = {}
        self.reconciles: dict[str, int] = {}

    @property
    def pid(self) -> int:
        return self.process.pid

    def stop(self) -> None:
        """Stop the controller and read the requests it sent (``requests``, by method)."""
        try:
            # Closing stdin (communicate does) is the controller's stop signal.
            output, _ = self.process.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            return
        lines = output.strip().splitlines()
        counts = json.loads(lines[-1]) if lines else {}
        self.requests, self.reconciles = counts.get("requests", {}), counts.get("reconciles", {})


# --- one size ---------------------------------------------------------------------------------


async def list_version(api: Any) -> int:
    from agentauth.kube import client as kube

    listed = await api.list(kube.NAMESPACES)
    return int(listed["metadata"]["resourceVersion"])


async def events_by_object(api: Any) -> dict[tuple[str, str, str], list[str]]:
    from agentauth.kube import client as kube

    found: dict[tuple[str, str, str], list[str]] = collections.defaultdict(list)
    for event in (await api.list(kube.EVENTS))["items"]:
        involved = event.get("involvedObject") or {}
        if not str(involved.get("namespace", "")).startswith("bench-"):
            continue
        key = (str(involved.get("kind")), str(involved["namespace"]), str(involved.get("name")))
        found[key].append(str(event.get("reason")))
    return found


def event_violations(
    found: dict[tuple[str, str, str], list[str]], expected: dict[tuple[str, str], Any]
) -> list[str]:
    """Objects whose Events are not exactly one transition's (Agents: Registered and Ready;
    grants: none)."""
    wrong = []
    for namespace, name in expected:
        reasons = sorted(found.get(("Agent", namespace, name), []))
        if reasons != ["Ready", "Registered"]:
            wrong.append(f"Agent {namespace}/{name}: {reasons}")
    for (kind, namespace, name), reasons in found.items():
        if kind != "Agent":
            wrong.append(f"{kind} {namespace}/{name}: {sorted(reasons)}")
    return wrong


async def until_all_correct(
    api: Any, expected: dict[tuple[str, str], Any], *, started: float
) -> float:
    """Follow the Agents (list, then watch: polling lists of 10,000 Agents would load the
    control plane more than the controller does) until every one is correct; returns the
    seconds from ``started``."""
    from agentauth.kube import client as kube

    good: set[tuple[str, str]] = set()
    trace = bool(os.environ.get("CONTROLLER_BENCH_TRACE"))
    while True:
        listed = await api.list(kube.AGENTS)
        good = {informer_key(item) for item in listed["items"] if correct(item, expected)}
        version = listed["metadata"]["resourceVersion"]
        try:
            while True:
                async for event in api.watch(
                    kube.AGENTS, resource_version=version, timeout_seconds=300
                ):
                    version = event.object["metadata"].get("resourceVersion") or version
                    if event.type in ("ADDED", "MODIFIED"):
                        key = informer_key(event.object)
                        if correct(event.object, expected):
                            good.add(key)
                        else:
                            good.discard(key)
                        if trace and len(good) % 500 == 0:
                            print(
                                f"{time.monotonic() - started:6.2f} s: {len(good)}", file=sys.stderr
                            )
                        if len(good) == len(expected):
                            return time.monotonic() - started
        except kube.ResourceExpired:
            continue  # list again


def informer_key(item: dict[str, Any]) -> tuple[str, str]:
    return (item["metadata"]["namespace"], item["metadata"]["name"])


async def create_all(api: Any, documents: list[tuple[str, dict[str, Any]]]) -> None:
    from agentauth.kube import client as kube

    resources = {"agent": kube.AGENTS, "grant": kube.CAPABILITY_GRANTS}
    queue: collections.deque[tuple[str, dict[str, Any]]] = collections.deque(documents)

    async def writer() -> None:
        while queue:
            kind, body = queue.popleft()
            await api.create(resources[kind], body, namespace=body["metadata"]["namespace"])

    await asyncio.gather(*(writer() for _ in range(WRITERS)))


async def measure(
    kubeconfig: Path,
    *,
    server_pid: int,
    count: int,
    environ: dict[str, str],
    restart: bool,
    timeout: float,
) -> dict[str, Any]:
    from agentauth.kube import client as kube
    from agentauth.kube import config as kube_config

    documents, expected = manifests(count)
    async with kube.KubeClient(kube_config.load(kubeconfig)) as api:
        for n in [CONTROLLER_NAMESPACE, *(namespace_name(i) for i in range(NAMESPACES))]:
            await api.create(kube.NAMESPACES, {"metadata": {"name": n}})
            if n != CONTROLLER_NAMESPACE:
                await api.create(
                    kube.SERVICE_ACCOUNTS, {"metadata": {"name": SERVICE_ACCOUNT}}, namespace=n
                )
        controller = Controller(environ)
        try:
            await until_ready(controller)
            started = time.monotonic()
            load_before = os.getloadavg()[0]
            cpu_before = {
                "controller": cpu_seconds(controller.pid),
                "server": cpu_seconds(server_pid),
                "bench": time.process_time(),
            }
            follower = asyncio.create_task(until_all_correct(api, expected, started=started))
            await create_all(api, documents)
            created = time.monotonic() - started
            try:
                elapsed = await asyncio.wait_for(asyncio.shield(follower), timeout)
            except TimeoutError:
                raise SystemExit(f"not all agents correct after {timeout} s") from None
            cpu = {
                "controller": cpu_seconds(controller.pid),
                "server": cpu_seconds(server_pid),
                "bench": time.process_time(),
            }
            idle_at = await until_idle(controller.pid, deadline=time.monotonic() + timeout)
            rss, peak = rss_mb(controller.pid)
            wrong = event_violations(await events_by_object(api), expected)
            figures: dict[str, Any] = {
                # The machine's 1-minute load average when the creates began and when all were
                # Ready: above the core count, other work competed for the CPU.
                "load_average": [round(load_before, 2), round(os.getloadavg()[0], 2)],
                "agents": count,
                "grants": count,
                "namespaces": NAMESPACES,
                "create_seconds": round(created, 2),
                "all_ready_seconds": round(elapsed, 2),
                "idle_after_seconds": round(idle_at - started, 2),
                "controller_rss_mb": round(rss, 1),
                "controller_peak_rss_mb": round(peak, 1),
                # CPU seconds each process used until all were Ready (the machine is shared:
                # these say what the work costs, the wall figures what it took here).
                "cpu_seconds": {k: round(cpu[k] - cpu_before[k], 1) for k in cpu},
                "event_violations": len(wrong),
                "event_violation_examples": wrong[:5],
            }
        finally:
            controller.stop()
        # Every request the controller's client sent, start to idle (keys, lists, watches,
        # status writes, Events), per Agent and grant: what the controller costs the API server.
        figures["controller_requests"] = controller.requests
        figures["controller_requests_per_object"] = round(
            sum(controller.requests.values()) / (2 * count), 2
        )
        figures["controller_reconciles"] = controller.reconciles
        if not restart:
            return figures
        version = await list_version(api)
        events_before = sum(len(v) for v in (await events_by_object(api)).values())
        controller = Controller(environ)
        try:
            await until_ready(controller)
            idle_at = await until_idle(controller.pid, deadline=time.monotonic() + timeout)
            rss, peak = rss_mb(controller.pid)
        finally:
            controller.stop()
        events_after = sum(len(v) for v in (await events_by_object(api)).values())
        figures["restart"] = {
            "writes": await list_version(api) - version,
            "events": events_after - events_before,
            "relist_seconds": round(idle_at - controller.started, 2),
            "controller_rss_mb": round(rss, 1),
            "controller_peak_rss_mb": round(peak, 1),
            "controller_requests": controller.requests,
            "controller_reconciles": controller.reconciles,
        }
        return figures


async def until_ready(controller: Controller) -> None:
    """The controller is up once it says it is ready (``main.run``'s ``on_started``: its
    webhooks serve, Kopf runs and every informer has its first listing): the clock then measures
    the controller at work, not its start."""
    assert controller.process.stdout is not None
    loop = asyncio.get_running_loop()
    try:
        line = await asyncio.wait_for(
            loop.run_in_executor(None, controller.process.stdout.readline), 60
        )
    except TimeoutError:
        raise SystemExit("controller did not start") from None
    if not line or not json.loads(line).get("ready"):
        raise SystemExit("controller did not start")


def run_size(count: int, *, restart: bool, timeout: float) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="controller-bench-") as directory:
        server = subprocess.Popen(
            [sys.executable, __file__, "--role", "server", "--dir", directory],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert server.stdout is not None and server.stdin is not None
        try:
            kubeconfig = Path(json.loads(server.stdout.readline())["kubeconfig"])
            environ = {
                **os.environ,
                "KUBECONFIG": str(kubeconfig),
                "AGENTAUTH_ISSUER": "https://issuer.bench.test",
                "AGENTAUTH_CONTROLLER_NAMESPACE": CONTROLLER_NAMESPACE,
                "AGENTAUTH_WEBHOOK_HOST": "127.0.0.1",
                "AGENTAUTH_WEBHOOK_PORT": "0",
                "AGENTAUTH_HEALTH_PORT": "0",
            }
            figures = asyncio.run(
                measure(
                    kubeconfig,
                    server_pid=server.pid,
                    count=count,
                    environ=environ,
                    restart=restart,
                    timeout=timeout,
                )
            )
            figures["server_peak_rss_mb"] = round(rss_mb(server.pid)[1], 1)
            return figures
        finally:
            server.stdin.close()
            server.wait(timeout=60)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--series", default="1000,3000,10000", help="sizes, comma-separated")
    parser.add_argument("--no-restart", action="store_true", help="skip the restart")
    parser.add_argument("--timeout", type=float, default=300, help="seconds per phase")
    parser.add_argument("--role", choices=["bench", "server", "controller"], default="bench")
    parser.add_argument("--dir", type=Path)
    args = parser.parse_args()
    if args.role == "server":
        serve(args.dir)
        return
    if args.role == "controller":
        run_controller()
        return
    sizes = [int(size) for size in args.series.split(",")]
    for size in sizes:
        if size % (2 * NAMESPACES):
            raise SystemExit(f"each size must be a multiple of {2 * NAMESPACES}")
    results: dict[str, Any] = {
        "all_ready_target_seconds": TARGET_SECONDS,
        "controller_rss_target_mb": TARGET_RSS_MB,
        "sizes": {},
    }
    for size in sizes:
        figures = run_size(
            size, restart=size == sizes[-1] and not args.no_restart, timeout=args.timeout
        )
        results["sizes"][str(size)] = figures
        print(json.dumps({str(size): figures}), file=sys.stderr, flush=True)
    print(json.dumps(results))


if __name__ == "__main__":
    main()
