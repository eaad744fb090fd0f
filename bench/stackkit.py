"""The dev stack the benchmarks run on: the embedded control plane and the real controller (on
threads of the benchmark's process, ``tests/e2e/jitkit``) and the real token service in a
process of its own, as it runs in a cluster (``agentauth token-service``), so its CPU, threads
and latency are its own. :func:`running_stack` starts all three on a fresh dev cluster and stops
them again."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.e2e import jitkit  # noqa: E402

from agentauth.controller import settings as controller_settings  # noqa: E402
from agentauth.devcluster import server  # noqa: E402
from agentauth.tokenservice import settings as tokenservice_settings  # noqa: E402


class BenchEnv(jitkit.JitEnv):
    """The JIT kit's stack, with the token service in a process of its own, as it runs in a
    cluster (``agentauth token-service``; the controller, with its default settings, and the API
    server stay in this process, on threads). Its per-address and per-caller limits are lifted:
    every check comes from 127.0.0.1, and one caller introspects 1,000 tokens."""

    process: subprocess.Popen[bytes] | None = None

    def controller_settings(self) -> controller_settings.Settings:
        # The controller as it is deployed: its default number of concurrent reconciles (the
        # test kit runs 4, which queues a decision behind three others' status writes).
        return dataclasses.replace(
            super().controller_settings(), workers=controller_settings.Settings.workers
        )

    def token_service_settings(self) -> tokenservice_settings.Settings:
        return dataclasses.replace(
            super().token_service_settings(),
            client_rate_limit_per_second=0,
            introspection_rate_limit_per_second=1e6,
            introspection_rate_limit_burst=10**6,
        )

    def start_token_service(self) -> None:
        settings = self.token_service_settings()
        environment = {
            **os.environ,
            "AGENTAUTH_ISSUER": settings.issuer,
            "AGENTAUTH_LISTEN_HOST": settings.listen_host,
            "AGENTAUTH_LISTEN_PORT": str(settings.listen_port),
            "AGENTAUTH_CONTROLLER_NAMESPACE": settings.namespace,
            "KUBECONFIG": str(settings.kubeconfig),
            "AGENTAUTH_CLUSTER_ISSUER": settings.cluster_issuer,
            "AGENTAUTH_TLS_CERT": str(settings.tls_cert),
            "AGENTAUTH_TLS_KEY": str(settings.tls_key),
            "AGENTAUTH_CLIENT_RATE_LIMIT": "0",
            "AGENTAUTH_INTROSPECTION_RATE_LIMIT": "1000000",
            "AGENTAUTH_INTROSPECTION_RATE_LIMIT_BURST": "1000000",
            "AGENTAUTH_LOG_LEVEL": "warning",
        }
        self.process = subprocess.Popen(
            [sys.executable, "-m", "agentauth", "token-service"],
            env=environment,
            stdout=subprocess.DEVNULL,
        )
        jitkit.wait_for(self._ready, timeout=60, message="token service /readyz")

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(timeout=30)
        self.token_service = None
        super().stop()


def threads_of(pid: int) -> int:
    """The threads of process ``pid`` (``Threads:`` in /proc)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Threads:"):
            return int(line.split()[1])
    raise RuntimeError(f"no thread count for process {pid}")


@contextlib.contextmanager
def running_stack(*, bookmark_interval: float = 1.0) -> Iterator[BenchEnv]:
    """A fresh dev cluster in a temporary directory with the controller and the token service
    running on it (``env.cluster``; ``env.api`` is an admin client of the official library);
    everything is stopped on exit."""
    with (
        tempfile.TemporaryDirectory() as directory,
        server.running_cluster(Path(directory), bookmark_interval=bookmark_interval) as cluster,
    ):
        env = BenchEnv(cluster, jitkit.user_api(cluster, cluster.admin_token))
        env.start()
        try:
            yield env
        finally:
            env.stop()


def cpu_seconds_of(pid: int) -> float:
    """User plus system CPU seconds of process ``pid`` so far (/proc/<pid>/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
