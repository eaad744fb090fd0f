"""Fault injection on loopback, for the reliability tests: what a network and a Service do.

- :class:`TcpProxy`: a TCP forwarder on 127.0.0.1 in front of one upstream (an API server) or
  several (token-service replicas, round-robin over the ready ones, as a Service routes). It can
  ``pause`` (every byte held in both directions and new connections left hanging: what a frozen,
  SIGSTOPped server looks like from outside), ``resume``, ``go_down`` (every connection cut and
  the port refusing: a server that died) and ``come_up`` (listening again on the same port).
- :class:`Endpoints`: a readiness-driven endpoint list, as the kubelet's probe and the
  EndpointSlice controller keep one: each backend's ``/readyz`` is probed every
  ``interval`` seconds and a backend is routed to only while it answers 200.
- :class:`TokenServiceProcess`: ``agentauth token-service`` as a real subprocess (SIGTERM is a
  real signal), with its stderr kept for the test's failure message.

Everything runs on its own thread and event loop; no test code sleeps to synchronise: callers
wait with :func:`tests.stack.wait_for` on observable state (``connections``, ``ready``, ...).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import httpx

from tests import stack

Address = tuple[str, int]
LOOPBACK = "127.0.0.1"


class _LoopThread:
    """An asyncio loop on a daemon thread; ``call(coro)`` runs a coroutine there and waits."""

    def __init__(self, name: str) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name=name, daemon=True)
        self._thread.start()

    def call(self, coro: Any, timeout: float = 30.0) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def stop(self) -> None:
        async def cancel_all() -> None:
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        with contextlib.suppress(Exception):
            self.call(cancel_all(), timeout=10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()


class TcpProxy:
    """See the module docstring. ``upstream()`` names where a new connection goes (None: no
    endpoint, the connection is closed at once, as with a Service without ready endpoints)."""

    def __init__(self, upstream: Callable[[], Address | None], *, port: int = 0) -> None:
        self._upstream = upstream
        self._runner = _LoopThread("tcp-proxy")
        self._flowing = asyncio.Event()
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.StreamWriter] = set()
        self.accepted = 0
        self.port = port
        self._runner.call(self._start())

    @property
    def connections(self) -> int:
        return len(self._connections) // 2

    async def _start(self) -> None:
        self._flowing.set()
        self._server = await asyncio.start_server(self._handle, LOOPBACK, self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                await self._flowing.wait()  # paused: hold the bytes, like a stopped process
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            with contextlib.suppress(Exception):
                writer.close()

    async def _handle(
        self, client_reader: asyncio.StreamReader, client: asyncio.StreamWriter
    ) -> None:
        self.accepted += 1
        await self._flowing.wait()
        target = self._upstream()
        if target is None:
            client.close()
            return
        try:
            upstream_reader, upstream = await asyncio.open_connection(*target)
        except OSError:
            client.close()  # nothing listens there: the client sees its connection closed
            return
        self._connections.update((client, upstream))
        try:
            await asyncio.gather(
                self._pipe(client_reader, upstream), self._pipe(upstream_reader, client)
            )
        finally:
            self._connections.discard(client)
            self._connections.discard(upstream)

    def pause(self) -> None:
        self._runner.loop.call_soon_threadsafe(self._flowing.clear)

    def resume(self) -> None:
        self._runner.loop.call_soon_threadsafe(self._flowing.set)

    async def _down(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        for writer in list(self._connections):
            writer.transport.abort()  # RST, as the kernel does for a killed process
        self._connections.clear()

    def go_down(self) -> None:
        """Cut every connection and stop listening (connections are refused)."""
        self._runner.call(self._down())

    def come_up(self) -> None:
        """Listen again, on the same port."""
        self._runner.call(self._start())

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._runner.call(self._down())
        self._runner.stop()


class Endpoints:
    """Backends routed to while their ``/readyz`` answers 200 (see the module docstring)."""

    def __init__(self, *, interval: float = 0.1) -> None:
        self.interval = interval
        self._backends: dict[str, bool] = {}
        self._lock = threading.Lock()
        self._cycle = itertools.count()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._probe_forever, name="endpoints", daemon=True)
        self._thread.start()

    def add(self, url: str) -> None:
        with self._lock:
            self._backends.setdefault(url, False)

    def remove(self, url: str) -> None:
        with self._lock:
            self._backends.pop(url, None)

    def ready(self) -> list[str]:
        with self._lock:
            return [url for url, ready in self._backends.items() if ready]

    def is_ready(self, url: str) -> bool:
        with self._lock:
            return self._backends.get(url, False)

    def pick(self) -> Address | None:
        """Round-robin over the ready backends."""
        ready = self.ready()
        if not ready:
            return None
        url = ready[next(self._cycle) % len(ready)]
        host, _, port = url.removeprefix("http://").partition(":")
        return host, int(port)

    def _probe_forever(self) -> None:
        with httpx.Client(timeout=1.0) as http:
            while not self._stop.is_set():
                with self._lock:
                    urls = list(self._backends)
                for url in urls:
                    try:
                        ready = http.get(f"{url}/readyz").status_code == 200
                    except httpx.HTTPError:
                        ready = False
                    with self._lock:
                        if url in self._backends:
                            self._backends[url] = ready
                self._stop.wait(self.interval)  # the probe period

    def close(self) -> None:
        self._stop.set()
        self._thread.join(10)


def token_service_environment(settings: Any, **overrides: str) -> dict[str, str]:
    """The ``AGENTAUTH_*`` environment that makes ``agentauth token-service`` run with
    ``settings`` (a token-service ``Settings``), with ``overrides`` on top."""
    import dataclasses

    from agentauth.tokenservice import settings as settings_module

    environ: dict[str, str] = {}
    defaults = settings_module.Settings(issuer=settings.issuer)
    for field in dataclasses.fields(settings):
        flag_env = settings_module._FIELDS.get(field.name)
        if flag_env is None:
            continue
        value = getattr(settings, field.name)
        if field.name != "issuer" and (value == getattr(defaults, field.name) or value is None):
            continue
        if field.name == "trusted_issuers":
            continue  # not needed by these tests
        if isinstance(value, tuple):
            text = ",".join(str(v) for v in value)
        elif isinstance(value, bool):
            text = "true" if value else "false"
        else:
            text = str(value)
        environ[flag_env[1]] = text
    return {**environ, **overrides}


class TokenServiceProcess:
    """``agentauth token-service`` on a free loopback port, plain HTTP (see module docstring)."""

    def __init__(
        self,
        environment: Mapping[str, str],
        *,
        log_dir: Path,
        name: str,
        public_url: str | None = None,
    ) -> None:
        """``public_url``: where clients reach it (signatures cover it); default its own URL."""
        self.port = stack.free_port()
        self.url = f"http://{LOOPBACK}:{self.port}"
        self.name = name
        self.log_path = log_dir / f"{name}.log"
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("AGENTAUTH_")},
            **environment,
            "AGENTAUTH_LISTEN_HOST": LOOPBACK,
            "AGENTAUTH_LISTEN_PORT": str(self.port),
            "AGENTAUTH_LOG_FORMAT": "text",
            "AGENTAUTH_TOKEN_SERVICE_URL": public_url or self.url,
        }
        env.pop("AGENTAUTH_TLS_CERT", None)
        env.pop("AGENTAUTH_TLS_KEY", None)
        self._log = self.log_path.open("w")
        self.process = subprocess.Popen(
            [str(stack.BIN / "agentauth"), "token-service"],
            env=env,
            stdout=subprocess.DEVNULL,  # audit lines
            stderr=self._log,
        )

    def log(self) -> str:
        return self.log_path.read_text()

    def readyz(self) -> httpx.Response | None:
        try:
            return httpx.get(f"{self.url}/readyz", timeout=2.0)
        except httpx.HTTPError:
            return None

    def wait_ready(self, timeout: float = 60.0) -> None:
        def ready() -> bool:
            if self.process.poll() is not None:
                raise AssertionError(f"{self.name} exited early:\n{self.log()}")
            answer = self.readyz()
            return answer is not None and answer.status_code == 200

        stack.wait_for(ready, timeout=timeout, interval=0.1, message=f"{self.name} ready")

    def terminate(self, timeout: float = 30.0) -> tuple[int, float]:
        """SIGTERM; (exit code, seconds until the process ended)."""
        started = time.monotonic()
        self.process.send_signal(signal.SIGTERM)
        code = self.process.wait(timeout=timeout)
        return code, time.monotonic() - started

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=30)
        self._log.close()


class DevProcess:
    """``agentauth dev --dir DIR`` as a real subprocess, to freeze (SIGSTOP), thaw and restart.

    ``start`` waits for its ready line and returns it parsed: the kubeconfig path and the issuer
    (the token service URL the dev stack prints)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.process: subprocess.Popen[str] | None = None
        self.kubeconfig = directory / "kubeconfig"
        self.issuer = ""

    def start(self, timeout: float = 120.0) -> None:
        log = (self.directory.parent / f"{self.directory.name}.out").open("a")
        self.process = subprocess.Popen(
            [str(stack.BIN / "agentauth"), "dev", "--dir", str(self.directory)],
            stdout=subprocess.PIPE,
            stderr=log,
            text=True,
        )
        assert self.process.stdout is not None
        deadline = time.monotonic() + timeout
        lines: list[str] = []
        while time.monotonic() < deadline:
            line = self.process.stdout.readline()
            if not line:
                raise AssertionError(f"agentauth dev exited before ready: {lines}")
            lines.append(line.rstrip())
            if line.strip().startswith("issuer: "):
                self.issuer = line.split("issuer: ", 1)[1].strip()
            if line.strip().startswith("stop with"):
                threading.Thread(target=self.process.stdout.read, daemon=True).start()
                return
        raise AssertionError(f"agentauth dev not ready within {timeout}s: {lines}")

    def api_address(self) -> Address:
        """Where its API server listens now (restarts may move it)."""
        import json

        ports = json.loads((self.directory / "ports.json").read_text())
        return LOOPBACK, int(ports["api"])

    def freeze(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGSTOP)

    def thaw(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGCONT)

    def stop(self, timeout: float = 60.0) -> int:
        assert self.process is not None
        self.process.send_signal(signal.SIGCONT)  # a stopped process cannot handle SIGTERM
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=timeout)

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGCONT)
            self.process.kill()
            self.process.wait(timeout=30)
