"""The controller installed by the chart into the embedded control plane, run with the chart's RBAC.

``install_chart`` renders the chart (real Helm) for a unique release, applies every object with
real kubectl, and derives the controller's settings from the rendered Deployment's environment,
so the chart and the settings cannot drift apart. The controller authenticates as the chart's
ServiceAccount with a token from the TokenRequest API. Webhooks reach it through the chart's
Service (the dev control plane resolves it via the ``agentauth.dev/dev-endpoint`` annotation),
with the ``caBundle`` the controller patches in. The webhook configurations only select the
release's own namespace (a label), so no other suite's pods see them, and are deleted afterwards.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from agentauth.controller import main, runtime
from agentauth.controller import settings as controller_settings
from agentauth.devcluster import server
from tests.charts import chart
from tests.conftest import Kubectl

ISSUER = "https://issuer.agentauth.test"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for(
    check: Callable[[], Any],
    *,
    timeout: float = 15.0,
    interval: float = 0.05,
    message: str = "condition",
) -> Any:
    """Poll ``check`` until it returns something truthy; fail with the last value after
    ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        threading.Event().wait(interval)
    raise AssertionError(f"timed out waiting for {message}; last value: {last!r}")


@dataclasses.dataclass
class Install:
    release: str
    system_namespace: str
    namespace: str
    objects: list[dict[str, Any]]
    settings: controller_settings.Settings
    kubeconfig: Path


def service_account_kubeconfig(
    kubectl: Kubectl, cluster: server.DevCluster, *, namespace: str, account: str, path: Path
) -> Path:
    """A kubeconfig authenticating as ``namespace/account`` with a TokenRequest token."""
    token = kubectl("create", "token", account, "-n", namespace, "--duration=2h").stdout.strip()
    document = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": "dev",
                "cluster": {"server": cluster.url, "certificate-authority": str(cluster.ca_path)},
            }
        ],
        "users": [{"name": account, "user": {"token": token}}],
        "contexts": [{"name": account, "context": {"cluster": "dev", "user": account}}],
        "current-context": account,
    }
    path.write_text(yaml.safe_dump(document))
    return path


def settings_from_deployment(
    objects: list[dict[str, Any]], *, release: str, namespace: str, **overrides: Any
) -> controller_settings.Settings:
    """Settings exactly as the chart's controller Deployment would build them."""
    deployment = chart.one(objects, "Deployment", f"{release}-controller")
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    environ = {e["name"]: e["value"] for e in container["env"] if "value" in e}
    environ["POD_NAMESPACE"] = namespace
    built = controller_settings.from_sources(None, environ=environ)
    return dataclasses.replace(built, **overrides)


@contextlib.contextmanager
def install_chart(
    kubectl: Kubectl,
    cluster: server.DevCluster,
    directory: Path,
    *,
    values: dict[str, Any] | None = None,
    **overrides: Any,
) -> Iterator[Install]:
    release = f"c{uuid.uuid4().hex[:8]}"
    system = f"{release}-system"
    apps = f"{release}-apps"
    port = free_port()
    chart_values: dict[str, Any] = {
        "fullnameOverride": release,
        "issuer": {"url": ISSUER},
        "controller": {
            "watchNamespaces": [apps],
            "service": {"annotations": {"agentauth.dev/dev-endpoint": f"127.0.0.1:{port}"}},
        },
        "webhook": {
            "namespaceSelector": {"matchLabels": {"agentauth.dev/test-release": release}},
            "accessRequests": {"enabled": False},
        },
        # policy/v1 is not served by the dev control plane (tests/charts covers the PDB).
        "tokenService": {"podDisruptionBudget": {"enabled": False}},
        **(values or {}),
    }
    objects = chart.render(chart_values, release=release, namespace=system)
    kubectl("create", "namespace", system)
    kubectl("create", "namespace", apps)
    kubectl("label", "namespace", apps, f"agentauth.dev/test-release={release}")
    kubectl("apply", "-f", "-", input=yaml.safe_dump_all(objects))
    kubeconfig = service_account_kubeconfig(
        kubectl,
        cluster,
        namespace=system,
        account=f"{release}-controller",
        path=directory / f"{release}.kubeconfig",
    )
    settings = settings_from_deployment(
        objects,
        release=release,
        namespace=system,
        kubeconfig=str(kubeconfig),
        webhook_host="127.0.0.1",
        webhook_port=port,
        health_port=0,
        **overrides,
    )
    try:
        yield Install(release, system, apps, objects, settings, kubeconfig)
    finally:
        cluster_scoped = [o for o in objects if "namespace" not in o["metadata"]]
        kubectl("delete", "--ignore-not-found", "-f", "-", input=yaml.safe_dump_all(cluster_scoped))
        kubectl("delete", "namespace", system, apps, "--wait=false")


class ControllerThread:
    """``main.run`` on its own thread and event loop, as ``agentauth controller`` runs it."""

    def __init__(self, settings: controller_settings.Settings) -> None:
        self.settings = settings
        self.controller: runtime.Controller | None = None
        self._loop = asyncio.new_event_loop()
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()
        self._errors: list[BaseException] = []
        self._thread = threading.Thread(target=self._main, daemon=True, name="controller")

    def _main(self) -> None:
        async def body() -> None:
            self._stop = asyncio.Event()
            ready = asyncio.Event()

            async def report_ready() -> None:
                await ready.wait()
                self._ready.set()

            watcher = asyncio.create_task(report_ready())
            try:
                await main.run(
                    self.settings, stop=self._stop, ready=ready, on_started=self._started
                )
            except BaseException as exc:
                self._errors.append(exc)
            finally:
                watcher.cancel()
                self._ready.set()

        self._loop.run_until_complete(body())
        self._loop.close()

    def _started(self, controller: runtime.Controller) -> None:
        self.controller = controller

    def start(self, timeout: float = 30.0) -> ControllerThread:
        self._thread.start()
        if not self._ready.wait(timeout):
            raise AssertionError("controller did not become ready")
        if self._errors:
            raise self._errors[0]
        return self

    def stop(self) -> None:
        if self._stop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(timeout=30)
        assert not self._thread.is_alive(), "controller did not stop"
        if self._errors:
            raise self._errors[0]

    @property
    def failures(self) -> list[str]:
        return list(self.controller.failures) if self.controller is not None else []


@pytest.fixture(scope="module")
def install(
    kubectl: Kubectl, dev_cluster: server.DevCluster, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Install]:
    with install_chart(kubectl, dev_cluster, tmp_path_factory.mktemp("ctl")) as installed:
        yield installed


@pytest.fixture(scope="module")
def controller(install: Install) -> Iterator[ControllerThread]:
    running = ControllerThread(install.settings).start()
    yield running
    running.stop()


def get_json(kubectl: Kubectl, *args: str) -> Any:
    result = kubectl("get", *args, "-o", "json", check=False)
    if result.returncode != 0:
        return None
    return json.loads(result.stdout)


def events_for(
    kubectl: Kubectl, *, namespace: str, name: str, kind: str
) -> list[tuple[str, str, str]]:
    """(type, reason, message) of the Events on one object, oldest first."""
    items = (get_json(kubectl, "events", "-n", namespace) or {}).get("items", [])
    found = [
        e
        for e in items
        if e["involvedObject"].get("name") == name and e["involvedObject"].get("kind") == kind
    ]
    found.sort(key=lambda e: int(e["metadata"].get("resourceVersion") or 0))
    return [(e["type"], e["reason"], e["message"]) for e in found]


def ready_condition(obj: dict[str, Any] | None) -> tuple[str, str] | None:
    if not obj:
        return None
    for condition in (obj.get("status") or {}).get("conditions") or []:
        if condition["type"] == "Ready":
            return condition["status"], condition["reason"]
    return None
