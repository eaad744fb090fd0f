"""Shared test infrastructure for every suite that runs agentauth against a control plane.

One copy of what the controller, integration, end-to-end and JIT suites all need:

- :func:`free_port`, :func:`wait_for` (poll with a deadline; never a bare sleep);
- :func:`run_kubectl` (the real kubectl binary of this virtualenv, as a kubeconfig context; a
  ``kubectl agentauth`` plugin call takes its connection flags after the plugin's name) and
  :func:`plugin_environment` (this virtualenv's bin first on PATH, so the plugin is ours);
- :func:`user_api` (an official ``kubernetes`` client authenticated with a bearer token),
  :func:`request_token` (a TokenRequest token, optionally bound to a pod, exactly what the kubelet
  projects) and :func:`service_account_kubeconfig`;
- :func:`exchange_form` (the RFC 8693 form the token service takes);
- :class:`Background` (an asyncio main on its own thread and event loop, restartable) with
  :class:`ControllerThread` and :class:`TokenServiceThread` on top, run as the CLI runs them;
- :func:`install_chart`: the chart rendered by real Helm for a unique release, applied with real
  kubectl, its webhooks limited to the release's namespace, and the controller's settings derived
  from the rendered Deployment (so chart and settings cannot drift apart).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Coroutine, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

if TYPE_CHECKING:
    # Imported where used at run time: tests/conftest.py imports this module, and unit-test runs
    # should not pay for importing the controller, the token service and Helm.
    from agentauth.controller import runtime
    from agentauth.controller import settings as controller_settings
    from agentauth.devcluster import server
    from agentauth.tokenservice import settings as token_settings

BIN = Path(sys.executable).parent
KUBECTL = BIN / "kubectl"
ISSUER = "https://issuer.agentauth.test"
TOKEN_EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"
JWT_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:jwt"

Kubectl = Callable[..., subprocess.CompletedProcess[str]]
# ``main(stop, ready)``: runs until ``stop`` is set, calls ``ready()`` once it serves.
Main = Callable[[asyncio.Event, Callable[[], None]], Coroutine[Any, Any, None]]


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
    raise AssertionError(f"timed out after {timeout}s waiting for {message}; last value: {last!r}")


# -- kubectl and the API --------------------------------------------------------------------------


def plugin_environment(kubeconfig: Path) -> dict[str, str]:
    """The environment for kubectl with our plugin: this virtualenv's bin first on PATH."""
    return {
        **os.environ,
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        "KUBECONFIG": str(kubeconfig),
        "COLUMNS": "200",
    }


def run_kubectl(
    *args: str,
    kubeconfig: Path,
    context: str | None = "admin",
    check: bool = True,
    input: str | None = None,
    timeout: float = 60,
    env: Mapping[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """Real kubectl as ``context`` of ``kubeconfig``; ``check`` fails the test on non-zero.

    kubectl refuses flags before a plugin's name and hands the plugin everything after it, so a
    ``kubectl agentauth ...`` call finds the kubeconfig in ``$KUBECONFIG`` (with this
    virtualenv's bin first on PATH unless ``env`` is given) and takes ``--context`` last."""
    context_flags = ["--context", context] if context is not None else []
    if args and args[0] == "agentauth":
        command = [str(KUBECTL), *args, *context_flags]
        env = plugin_environment(kubeconfig) if env is None else env
    else:
        command = [str(KUBECTL), "--kubeconfig", str(kubeconfig), *context_flags, *args]
    result = subprocess.run(
        command,
        capture_output=True,
        text=True,
        input=input,
        timeout=timeout,
        env=None if env is None else dict(env),
        check=False,
    )
    if check and result.returncode != 0:
        raise AssertionError(
            f"kubectl --context {context} {' '.join(args)} failed ({result.returncode}):\n"
            f"{result.stdout}\n{result.stderr}"
        )
    return result


def apply(kubectl: Kubectl, objects: list[dict[str, Any]], *, namespace: str | None = None) -> None:
    """``kubectl apply -f -`` of ``objects`` (as the kubectl runner's default user)."""
    scope = ["-n", namespace] if namespace is not None else []
    kubectl("apply", *scope, "-f", "-", input=yaml.safe_dump_all(objects))


def client_configuration(cluster: server.DevCluster, token: str) -> Any:
    from kubernetes import client

    configuration = client.Configuration()
    configuration.host = cluster.url
    configuration.ssl_ca_cert = str(cluster.ca_path)
    configuration.api_key = {"BearerToken": token}
    configuration.api_key_prefix = {"BearerToken": "Bearer"}
    return configuration


def user_api(cluster: server.DevCluster, token: str) -> Any:
    """An official-client ApiClient authenticated with ``token`` (admin, alice, bob, an SA)."""
    from kubernetes import client

    return client.ApiClient(client_configuration(cluster, token))


def request_token(
    api: Any,
    *,
    namespace: str,
    account: str,
    audience: str | None = None,
    pod: str | None = None,
    expiration_seconds: int = 3600,
) -> str:
    """A TokenRequest token for ``namespace/account``; with ``pod``, bound to that pod (its uid
    read from the API), which is what the kubelet projects into the pod."""
    from kubernetes import client

    core = client.CoreV1Api(api)
    spec: dict[str, Any] = {"expirationSeconds": expiration_seconds}
    if audience is not None:
        spec["audiences"] = [audience]
    if pod is not None:
        uid = core.read_namespaced_pod(pod, namespace).metadata.uid
        spec["boundObjectRef"] = {"kind": "Pod", "apiVersion": "v1", "name": pod, "uid": uid}
    result = core.create_namespaced_service_account_token(account, namespace, {"spec": spec})
    return str(result.status.token)


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


def exchange_form(subject_token: str, **form: str) -> dict[str, str]:
    """The RFC 8693 token-exchange form for a service-account JWT (plus ``scope`` etc.)."""
    return {
        "grant_type": TOKEN_EXCHANGE,
        "subject_token": subject_token,
        "subject_token_type": JWT_TOKEN_TYPE,
        **form,
    }


# -- components on threads ------------------------------------------------------------------------


class Background:
    """Run ``main(stop, ready)`` on a dedicated thread and event loop; restartable.

    ``start`` returns once ``main`` calls ``ready()`` and re-raises ``main``'s exception if it
    failed first; later failures are kept in :attr:`errors`."""

    def __init__(self, name: str, main: Main) -> None:
        self.name = name
        self._main = main
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()
        self.errors: list[BaseException] = []

    def launch(self) -> None:
        """Start the thread without waiting (see :meth:`wait_ready`)."""
        ready = threading.Event()
        loop = asyncio.new_event_loop()
        self._ready = ready
        self._loop = loop
        self.errors = []

        async def body() -> None:
            self._stop = asyncio.Event()
            try:
                await self._main(self._stop, ready.set)
            except BaseException as error:
                self.errors.append(error)
            finally:
                ready.set()

        def run() -> None:
            loop.run_until_complete(body())
            loop.close()

        self._thread = threading.Thread(target=run, name=self.name, daemon=True)
        self._thread.start()

    def wait_ready(self, timeout: float) -> bool:
        """Whether ``main`` became ready (or ended) within ``timeout`` seconds."""
        return self._ready.wait(timeout)

    def start(self, *, timeout: float = 60.0) -> None:
        self.launch()
        if not self.wait_ready(timeout):
            raise AssertionError(f"{self.name} did not start within {timeout}s")
        if self.errors:
            raise self.errors[0]

    def stop(self, *, timeout: float = 60.0) -> None:
        """Ask ``main`` to return and wait for the thread (a hung component fails the test)."""
        if self._loop is None or self._thread is None:
            return
        if self._stop is not None and not self._loop.is_closed():
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile: nothing to stop
                self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(timeout)
        assert not self._thread.is_alive(), f"{self.name} did not stop"
        self._loop = self._thread = self._stop = None


class ControllerThread:
    """``controller.main.run`` on its own thread and event loop, as ``agentauth controller`` runs
    it. ``stop`` re-raises anything the controller raised."""

    def __init__(self, settings: controller_settings.Settings) -> None:
        self.settings = settings
        self.controller: runtime.Controller | None = None
        self._background = Background("controller", self._main)

    async def _main(self, stop: asyncio.Event, ready: Callable[[], None]) -> None:
        started = asyncio.Event()

        async def report_ready() -> None:
            await started.wait()
            ready()

        from agentauth.controller import main as controller_main

        watcher = asyncio.create_task(report_ready())
        try:
            await controller_main.run(
                self.settings, stop=stop, ready=started, on_started=self._started
            )
        finally:
            watcher.cancel()

    def _started(self, controller: runtime.Controller) -> None:
        self.controller = controller

    def start(self, timeout: float = 30.0) -> ControllerThread:
        self._background.start(timeout=timeout)
        return self

    def launch(self) -> None:
        """Start without waiting, e.g. to race two controllers (then :meth:`wait_ready`)."""
        self._background.launch()

    def wait_ready(self, timeout: float) -> bool:
        return self._background.wait_ready(timeout)

    @property
    def errors(self) -> list[BaseException]:
        return list(self._background.errors)

    def stop(self) -> None:
        self._background.stop(timeout=30)
        if self._background.errors:
            raise self._background.errors[0]

    @property
    def failures(self) -> list[str]:
        return list(self.controller.failures) if self.controller is not None else []


class TokenServiceThread:
    """``tokenservice.app.serve`` on its own thread and event loop, as the CLI runs it."""

    def __init__(self, settings: token_settings.Settings) -> None:
        self.settings = settings
        self.url = ""
        self._background = Background("token-service", self._main)

    async def _main(self, stop: asyncio.Event, ready: Callable[[], None]) -> None:
        def listening(url: str) -> None:
            self.url = url
            ready()

        from agentauth.tokenservice import app as token_app

        await token_app.serve(self.settings, stop=stop, started=listening)

    def start(self, timeout: float = 30.0) -> TokenServiceThread:
        self._background.start(timeout=timeout)
        return self

    def stop(self) -> None:
        self._background.stop(timeout=30)


# -- the chart ------------------------------------------------------------------------------------


@dataclasses.dataclass
class Install:
    release: str
    system_namespace: str
    namespace: str
    objects: list[dict[str, Any]]
    settings: controller_settings.Settings
    kubeconfig: Path


def deployment_environment(
    objects: list[dict[str, Any]], name: str, *, namespace: str | None = None
) -> dict[str, str]:
    """The literal environment the chart gives Deployment ``name``'s first container, plus (given
    ``namespace``) the ``POD_NAMESPACE`` the controller's downward API would resolve."""
    from tests.charts import chart

    deployment = chart.one(objects, "Deployment", name)
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    environ = {e["name"]: e["value"] for e in container["env"] if "value" in e}
    if namespace is not None:
        environ["POD_NAMESPACE"] = namespace
    return environ


def settings_from_deployment(
    objects: list[dict[str, Any]], *, release: str, namespace: str, **overrides: Any
) -> controller_settings.Settings:
    """Settings exactly as the chart's controller Deployment would build them."""
    from agentauth.controller import settings as controller_settings

    environ = deployment_environment(objects, f"{release}-controller", namespace=namespace)
    built = controller_settings.from_sources(None, environ=environ)
    return dataclasses.replace(built, **overrides)


def _isolate_access_request_webhooks(objects: list[dict[str, Any]], release: str) -> None:
    """The chart registers the AccessRequest webhooks for every namespace; in a shared test
    cluster they must only see this release's namespace (other suites run their own)."""
    for obj in objects:
        if obj["kind"] not in ("MutatingWebhookConfiguration", "ValidatingWebhookConfiguration"):
            continue
        for webhook in obj["webhooks"]:
            webhook["namespaceSelector"] = {"matchLabels": {"agentauth.dev/test-release": release}}


@contextlib.contextmanager
def install_chart(
    kubectl: Kubectl,
    cluster: server.DevCluster,
    directory: Path,
    *,
    values: dict[str, Any] | None = None,
    access_request_webhooks: bool = False,
    prefix: str = "c",
    **overrides: Any,
) -> Iterator[Install]:
    """The chart for a unique release ``<prefix><hex>``: system namespace ``<release>-system``,
    watched namespace ``<release>-apps`` (the only one its webhooks see); removed afterwards.

    ``overrides`` replace fields of the controller's settings."""
    from tests.charts import chart

    release = f"{prefix}{uuid.uuid4().hex[:8]}"
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
            "accessRequests": {"enabled": access_request_webhooks},
        },
        # The token service runs in process on loopback, without the chart's Secret mount, in
        # HTTP (tests/charts covers the chart's TLS).
        "tokenService": {"tls": {"enabled": False}},
        **(values or {}),
    }
    objects = chart.render(chart_values, release=release, namespace=system)
    if access_request_webhooks:
        _isolate_access_request_webhooks(objects, release)
    namespaces: list[dict[str, Any]] = [
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": system}},
        {
            "apiVersion": "v1",
            "kind": "Namespace",
            "metadata": {"name": apps, "labels": {"agentauth.dev/test-release": release}},
        },
    ]
    # One kubectl run for the namespaces and the chart (kubectl applies in order).
    apply(kubectl, [*namespaces, *objects])
    try:
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
        yield Install(release, system, apps, objects, settings, kubeconfig)
    finally:
        cluster_scoped = [o for o in objects if "namespace" not in o["metadata"]]
        kubectl("delete", "--ignore-not-found", "-f", "-", input=yaml.safe_dump_all(cluster_scoped))
        kubectl("delete", "namespace", system, apps, "--wait=false")
