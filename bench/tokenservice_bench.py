"""Token service benchmark: the issue's numbers, measured in one run.

1. Crypto floor: one RS256 verification plus one Ed25519 signature (``cryptography``), the
   irreducible cost of one exchange.
2. In-process exchange of a service-account token (verify, bind to the pod, decide scope, mint),
   single thread, compared with the floor.
3. Over HTTP on loopback: the service runs in its own process (one core, one event loop); a
   separate load process (a minimal keep-alive HTTP/1.1 client, so that the generator's own CPU
   cost stays small) measures (a) maximum throughput with 32 connections and (b) an
   open-loop 500 requests/second run, latency counted from each request's scheduled send time
   (no coordinated omission), reporting p50/p99. The server also reports its own CPU time, so
   ``exchanges_per_s_per_server_core`` (requests served / server CPU seconds) is the one-core
   capacity even when the shared machine gives the server less than a core.

Run: ``.venv/bin/python bench/tokenservice_bench.py`` (``--seconds N`` per phase, default 5).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cryptography.hazmat.primitives import hashes  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import padding  # noqa: E402
from tests.domain import tokenkit  # noqa: E402

from agentauth.domain import exchanging, jose, keys, serviceaccounts  # noqa: E402

ISSUER = "https://agentauth.bench.test"
EXCHANGE = exchanging.GRANT_TYPE_TOKEN_EXCHANGE
PODS = 50


def world(cluster: tokenkit.ClusterIssuer) -> tuple[exchanging.Snapshot, list[str]]:
    """50 agents, each with a pod and a grant, and one service-account token per pod."""
    agents, pods, grants, sa_tokens = [], [], [], []
    now = datetime.now(UTC)
    for i in range(PODS):
        name = f"agent-{i}"
        agents.append(tokenkit.agent(name, uid=f"uid-{i}", service_account=f"sa-{i}"))
        pods.append(
            tokenkit.pod(f"{name}-0", uid=f"pod-{i}", agent_label=name, service_account=f"sa-{i}")
        )
        grants.append(
            tokenkit.grant(f"g-{i}", agents=[name], capabilities=tokenkit.STANDARD_CAPABILITIES)
        )
        sa_tokens.append(
            cluster.token(
                service_account=f"sa-{i}",
                pod=f"{name}-0",
                pod_uid=f"pod-{i}",
                audience=ISSUER,
                now=now,
                lifetime=3600,
            )
        )
    return tokenkit.snapshot(agents=agents, pods=pods, grants=grants), sa_tokens


def timed(fn: Any, seconds: float) -> tuple[float, float]:
    """Calls per wall-clock second and per CPU second of ``fn`` over about ``seconds``. On a
    shared machine the CPU-second rate is the one-core capacity (time spent preempted by other
    processes does not count)."""
    count, started, cpu_started = 0, time.perf_counter(), time.process_time()
    while True:
        for _ in range(50):
            fn()
        count += 50
        elapsed = time.perf_counter() - started
        if elapsed >= seconds:
            cpu = max(time.process_time() - cpu_started, 1e-9)
            return count / elapsed, count / cpu


def in_process(seconds: float) -> dict[str, float]:
    cluster = tokenkit.ClusterIssuer()
    snapshot, sa_tokens = world(cluster)
    keyset = keys.generate_keyset(now=datetime.now(UTC) - timedelta(minutes=1))
    jwks = jose.PublicKeySet.from_jwks(cluster.jwks())
    signer = keyset.signing_key().private_key
    rsa_public = cluster.key.public_key()
    token = sa_tokens[0]
    signing_input, _, signature_b64 = token.rpartition(".")
    signature = jose.b64url_decode(signature_b64)
    payload = b"x" * 400

    def floor() -> None:
        rsa_public.verify(signature, signing_input.encode(), padding.PKCS1v15(), hashes.SHA256())
        signer.sign(payload)

    target = exchanging.Target()
    index = [0]

    def exchange() -> None:
        i = index[0] = (index[0] + 1) % PODS
        now = datetime.now(UTC)
        identity = serviceaccounts.verify_service_account_token(
            sa_tokens[i], jwks=jwks, issuer=tokenkit.CLUSTER_ISSUER, audience=ISSUER, now=now
        )
        decision = exchanging.decide_for_service_account(
            identity=identity,
            target=target,
            snapshot=snapshot,
            issuer=ISSUER,
            trust_domain="bench.test",
            now=now,
        )
        exchanging.mint(decision, keyset=keyset, issuer=ISSUER, now=now)

    exchange()  # warm up
    # The machine is shared: interleave short rounds of both so they see the same load, and
    # report per-CPU-second rates (one-core capacity) and wall-clock rates, as medians over the
    # rounds; the ratio is taken per round, then the median.
    rounds = max(4, int(seconds / 0.5))
    floors, exchanges = [], []
    for _ in range(rounds):
        floors.append(timed(floor, 0.25))
        exchanges.append(timed(exchange, 0.25))
    return {
        "rounds": rounds,
        "floor_per_cpu_s": statistics.median(f[1] for f in floors),
        "exchange_per_cpu_s": statistics.median(e[1] for e in exchanges),
        "ratio_to_floor": statistics.median(
            f[1] / e[1] for f, e in zip(floors, exchanges, strict=True)
        ),
        "floor_per_wall_s": statistics.median(f[0] for f in floors),
        "exchange_per_wall_s": statistics.median(e[0] for e in exchanges),
        "exchange_per_wall_s_best_round": max(e[0] for e in exchanges),
    }


# -- HTTP --------------------------------------------------------------------------------------


async def _serve(info_path: Path) -> None:
    from aiohttp import web

    from agentauth.tokenservice import app as service_app
    from agentauth.tokenservice import observability
    from agentauth.tokenservice import settings as settings_module
    from agentauth.tokenservice import state as state_module

    # audit lines are written as ``agentauth token-service`` writes them, into /dev/null
    observability.install_audit_sink(open(os.devnull, "w"))  # noqa: SIM115
    cluster = tokenkit.ClusterIssuer()
    snapshot, sa_tokens = world(cluster)
    settings = settings_module.Settings(
        issuer=ISSUER,
        cluster_issuer=tokenkit.CLUSTER_ISSUER,
        rate_limit_per_second=1e9,
        rate_limit_burst=10**9,
        client_rate_limit_per_second=0,  # one load generator: the per-address limit is off
    )
    state = state_module.MemoryState(
        snapshot=snapshot,
        keyset=keys.generate_keyset(now=datetime.now(UTC) - timedelta(minutes=1)),
        cluster_jwks=cluster.jwks(),
    )
    app = service_app.build_app(settings=settings, state=state)

    async def cpu_seconds(request: web.Request) -> web.Response:
        # the server's own CPU time: capacity per core independent of what else runs
        return web.json_response({"cpu": time.process_time()})

    app.router.add_get("/_bench/cpu", cpu_seconds)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0, backlog=1024).start()
    info_path.write_text(json.dumps({"port": runner.addresses[0][1], "tokens": sa_tokens}))
    await asyncio.Event().wait()


class _Connection:
    """A minimal keep-alive HTTP/1.1 client: pre-encoded requests, Content-Length responses.

    The load generator shares the machine with the server; aiohttp's client costs more CPU per
    request than the server's handler, so the generator would measure itself.
    """

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, port: int) -> _Connection:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        return cls(reader, writer)

    async def exchange(self, request: bytes) -> int:
        self.writer.write(request)
        head = await self.reader.readuntil(b"\r\n\r\n")
        status = int(head[9:12])
        length = 0
        for line in head.split(b"\r\n"):
            if line[:15].lower() == b"content-length:":
                length = int(line[15:])
        await self.reader.readexactly(length)
        return status

    def close(self) -> None:
        self.writer.close()


def _requests(port: int, sa_tokens: list[str]) -> list[bytes]:
    from urllib.parse import urlencode

    encoded = []
    for token in sa_tokens:
        body = urlencode(
            {
                "grant_type": EXCHANGE,
                "subject_token": token,
                "subject_token_type": exchanging.TOKEN_TYPE_JWT,
            }
        ).encode()
        encoded.append(
            b"POST /oauth2/token HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n"
            b"Content-Type: application/x-www-form-urlencoded\r\nContent-Length: %d\r\n\r\n%s"
            % (port, len(body), body)
        )
    return encoded


async def _server_cpu(port: int) -> float:
    connection = await _Connection.open(port)
    connection.writer.write(b"GET /_bench/cpu HTTP/1.1\r\nHost: x\r\n\r\n")
    head = await connection.reader.readuntil(b"\r\n\r\n")
    length = next(
        int(line[15:]) for line in head.split(b"\r\n") if line[:15].lower() == b"content-length:"
    )
    body = json.loads(await connection.reader.readexactly(length))
    connection.close()
    return float(body["cpu"])


async def _closed_loop(
    port: int, sa_tokens: list[str], seconds: float, concurrency: int
) -> tuple[float, int]:
    requests = _requests(port, sa_tokens)
    done = 0
    deadline = time.perf_counter() + seconds

    async def worker(offset: int) -> None:
        nonlocal done
        connection = await _Connection.open(port)
        i = offset
        try:
            while time.perf_counter() < deadline:
                status = await connection.exchange(requests[i % PODS])
                assert status == 200, status
                done += 1
                i += 1
        finally:
            connection.close()

    started = time.perf_counter()
    await asyncio.gather(*(worker(k) for k in range(concurrency)))
    return done / (time.perf_counter() - started), done


async def _open_loop(
    port: int, sa_tokens: list[str], seconds: float, rate: float
) -> dict[str, float]:
    requests = _requests(port, sa_tokens)
    latencies: list[float] = []
    failures = 0
    idle: asyncio.Queue[_Connection] = asyncio.Queue()
    for _ in range(64):
        idle.put_nowait(await _Connection.open(port))

    async def one(i: int, scheduled: float) -> None:
        nonlocal failures
        connection = await idle.get()  # waiting for a free connection counts as latency
        try:
            if await connection.exchange(requests[i % PODS]) != 200:
                failures += 1
        finally:
            idle.put_nowait(connection)
        latencies.append(time.perf_counter() - scheduled)

    for i in range(64):  # warm up every connection
        await one(i, time.perf_counter())
    latencies.clear()
    tasks = []
    start = time.perf_counter()
    total = int(seconds * rate)
    for i in range(total):
        scheduled = start + i / rate
        delay = scheduled - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)  # pacing of the open-loop generator
        tasks.append(asyncio.create_task(one(i, scheduled)))
    await asyncio.gather(*tasks)
    elapsed = time.perf_counter() - start
    while not idle.empty():
        idle.get_nowait().close()
    latencies.sort()
    return {
        "offered_rps": rate,
        "achieved_rps": len(latencies) / elapsed,
        "p50_ms": 1000 * statistics.median(latencies),
        "p99_ms": 1000 * latencies[int(0.99 * (len(latencies) - 1))],
        "max_ms": 1000 * latencies[-1],
        "failures": failures,
        "samples_ms": [round(1000 * value, 3) for value in latencies],
    }


def over_http(seconds: float) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as directory:
        info_path = Path(directory) / "info.json"
        env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
        server = subprocess.Popen([sys.executable, __file__, "--serve", str(info_path)], env=env)
        try:
            deadline = time.monotonic() + 60
            while not info_path.exists() or not info_path.read_text():
                if time.monotonic() > deadline or server.poll() is not None:
                    raise RuntimeError("benchmark server did not start")
                time.sleep(0.05)  # waiting for the server subprocess to write its port file
            info = json.loads(info_path.read_text())
            port = info["port"]
            cpu_before = asyncio.run(_server_cpu(port))
            throughput, served = asyncio.run(
                _closed_loop(port, info["tokens"], seconds, concurrency=32)
            )
            cpu_used = asyncio.run(_server_cpu(port)) - cpu_before
            paced = asyncio.run(_open_loop(port, info["tokens"], seconds, rate=500.0))
        finally:
            server.terminate()
            server.wait(timeout=10)
    return {
        "max_exchanges_per_s_wall_clock": throughput,
        "server_cpu_ms_per_exchange": 1000 * cpu_used / served,
        "exchanges_per_s_per_server_core": served / cpu_used,
        "at_500_rps": paced,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--serve", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--skip-http", action="store_true")
    args = parser.parse_args()
    if args.serve:
        asyncio.run(_serve(args.serve))
        return
    results: dict[str, Any] = {"cpu_count": os.cpu_count(), "in_process": in_process(args.seconds)}
    if not args.skip_http:
        results["http"] = over_http(args.seconds)
        samples = results["http"]["at_500_rps"].pop("samples_ms")
    else:
        samples = []
    print(json.dumps(results, indent=2), file=sys.stderr)
    # The raw samples go only to bench/run.py, which plots them (bench/plots/*.png).
    results["distributions"] = {"http_exchange_latency_at_500_rps_ms": samples}
    print(json.dumps(results))  # bench/run.py reads the last stdout line


if __name__ == "__main__":
    main()
