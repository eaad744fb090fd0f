"""``agentauth dev``: the embedded control plane, the controller and the token service, one process.

FOR DEVELOPMENT AND TESTS ONLY, never for production: a real cluster (kind, or any conformant
one) installed with the Helm chart is the production target.

What :class:`DevStack` guarantees, so that the dev environment exercises the production paths:

- The objects are the chart's. ``charts/agentauth`` is rendered with real Helm (the Go engine of
  ``helm-python-sdk``) with dev values, and every rendered ServiceAccount, RBAC object, Service
  and webhook configuration is created in the embedded API server, in ``agentauth-system``, as
  ``helm install`` would. Only the workloads (Deployments) are left out: their processes run here
  instead. The webhook configurations keep the chart's ``clientConfig.service``; the controller's
  webhook server listens on loopback at the chart's Service ``targetPort`` (``webhook.port`` is set
  to a free port), which is how the embedded API server reaches Services, and the API server
  verifies TLS for ``agentauth-controller.agentauth-system.svc`` against the ``caBundle`` the
  controller patches in, as a real one does.
- The settings are the chart's. The controller's and the token service's settings are built by
  their own ``settings.from_sources`` from the environment the rendered Deployments give their
  containers; only what a pod would get from its node differs (kubeconfig, listen address, TLS
  files, the cluster's service-account issuer).
- RBAC is enforced as in production: each component authenticates as its own ServiceAccount with
  a TokenRequest token (written to a file, refreshed at 80% of its life like the kubelet does),
  never as the admin.
- :meth:`DevStack.start` returns only when everything serves: the API server with the CRDs, the
  webhook configurations with their ``caBundle``, the controller with its issuer keys and its
  webhook server, and the token service's ``/readyz`` (HTTPS, certificate from the dev CA).
- :meth:`DevStack.stop` stops the token service, then the controller (on its own thread and
  event loop, see :class:`ControllerThread`), then the API server, and leaves nothing running;
  :func:`serve` (the CLI) does it on SIGINT/SIGTERM and returns 0.

Ports (API server, token service, webhook) default to free ones, remembered in ``DIR/ports.json``
and taken back on the next start with the same directory (checked with ``SO_REUSEADDR``, as the
servers bind, so the previous run's connections in TIME-WAIT do not hold them; a port another
process listens on fails the start rather than moving), so the kubeconfig, the issuer and the
``AGENTAUTH_TOKEN_URL`` of existing pods stay valid across restarts. One process per directory:
:meth:`DevStack.start` locks ``DIR/lock`` before touching anything else, and a second one fails
at once with :class:`DevStackError` naming the holder.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime
import json
import logging
import signal
import socket
import ssl
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, TextIO

import aiohttp
import yaml

from agentauth.controller import main as controller_main
from agentauth.controller import settings as controller_settings
from agentauth.devcluster import server
from agentauth.domain import pki
from agentauth.kube import client as kube
from agentauth.kube import config as kube_config
from agentauth.tokenservice import app as tokenservice_app
from agentauth.tokenservice import settings as tokenservice_settings

log = logging.getLogger(__name__)

SYSTEM_NAMESPACE = "agentauth-system"
RELEASE = "agentauth"
TRUST_DOMAIN = "agentauth.local"
LOOPBACK = "127.0.0.1"
CHART_DIR = Path(__file__).resolve().parents[2] / "charts" / "agentauth"
SERVICE_ACCOUNT_TOKEN_SECONDS = 3600
TOKEN_REFRESH_FRACTION = 0.8
READY_TIMEOUT_SECONDS = 120.0
STOP_TIMEOUT_SECONDS = 30.0
POLL_SECONDS = 0.05

PORT_USERS = {"api": "API server", "token_service": "token service", "webhook": "webhooks"}

# Kinds the chart renders that run as processes here instead of being stored.
WORKLOAD_KINDS = frozenset({"Deployment"})


def _resource(group: str, plural: str, *, namespaced: bool = True) -> kube.Resource:
    return kube.Resource(group, "v1", plural, namespaced=namespaced)


# Every kind the chart renders with the dev values, in the order `helm install` creates them.
CHART_KINDS: dict[str, kube.Resource] = {
    "ServiceAccount": _resource("", "serviceaccounts"),
    "ClusterRole": _resource("rbac.authorization.k8s.io", "clusterroles", namespaced=False),
    "ClusterRoleBinding": _resource(
        "rbac.authorization.k8s.io", "clusterrolebindings", namespaced=False
    ),
    "Role": _resource("rbac.authorization.k8s.io", "roles"),
    "RoleBinding": _resource("rbac.authorization.k8s.io", "rolebindings"),
    "Service": _resource("", "services"),
    "MutatingWebhookConfiguration": _resource(
        "admissionregistration.k8s.io", "mutatingwebhookconfigurations", namespaced=False
    ),
    "ValidatingWebhookConfiguration": _resource(
        "admissionregistration.k8s.io", "validatingwebhookconfigurations", namespaced=False
    ),
    "PodDisruptionBudget": _resource("policy", "poddisruptionbudgets"),
    "NetworkPolicy": _resource("networking.k8s.io", "networkpolicies"),
}


class DevStackError(Exception):
    """The dev environment cannot start (chart, ports, a component failing to come up)."""


@dataclasses.dataclass(frozen=True, kw_only=True)
class Options:
    """What ``agentauth dev`` takes on its command line; ports 0 mean "free (or last used)"."""

    directory: Path
    port: int = 0
    token_service_port: int = 0
    webhook_port: int = 0
    chart: Path = CHART_DIR
    trusted_issuers: str | None = None
    """JSON list of ``{"issuer", "jwks_url", "audience"}`` for delegation (token service)."""
    trusted_ca_file: Path | None = None
    log_file: Path | None = None
    """Where the CLI logs everything (printed with the ready line)."""


# -- helpers ------------------------------------------------------------------------------------


def _port_free(port: int) -> bool:
    """Whether ``port`` can be listened on now. With ``SO_REUSEADDR``, as the servers bind: the
    previous run's connections in TIME-WAIT do not count as taking it (a listener does)."""
    try:
        server.listening_socket(port).close()
    except OSError:
        return False
    return True


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


PORT_FLAGS = {"api": "--port", "token_service": "--token-service-port", "webhook": "--webhook-port"}


def choose_ports(directory: Path, *, requested: dict[str, int]) -> dict[str, int]:
    """Ports for ``api``, ``token_service`` and ``webhook``: the requested one when non-zero,
    else the one remembered in ``DIR/ports.json``, else a free one. Remembered.

    A remembered port is never swapped silently for another: the issuer, the kubeconfig and the
    token URL of existing pods name it. If another process listens on it, starting fails and
    says so (pass the flag to move deliberately)."""
    path = directory / "ports.json"
    remembered: dict[str, Any] = {}
    if path.exists():
        with contextlib.suppress(ValueError, OSError):
            loaded = json.loads(path.read_text())
            remembered = loaded if isinstance(loaded, dict) else {}
    chosen: dict[str, int] = {}
    for name, wanted in requested.items():
        if not 0 <= wanted <= 65535:
            raise DevStackError(f"port {wanted} for {name.replace('_', ' ')} is not a TCP port")
        previous = remembered.get(name)
        if wanted:
            chosen[name] = wanted
        elif isinstance(previous, int) and 0 < previous <= 65535:
            if not _port_free(previous):
                raise DevStackError(
                    f"port {previous} on {LOOPBACK} ({PORT_USERS[name]}), remembered in {path}, "
                    f"is in use by another process: stop it, or move with {PORT_FLAGS[name]} N "
                    "(pods and kubeconfigs made before keep the old address)"
                )
            chosen[name] = previous
        else:
            chosen[name] = _free_port()
    if len(set(chosen.values())) != len(chosen):
        raise DevStackError(f"the ports must differ: {chosen}")
    path.write_text(json.dumps(chosen))
    return chosen


def chart_values(*, issuer: str, token_service_port: int, webhook_port: int) -> dict[str, Any]:
    """The dev values: the issuer (the token service) and the webhook on loopback ports and one
    token-service replica. The chart's PodDisruptionBudget (and NetworkPolicy, when enabled) are
    stored as real objects, as ``helm install`` would create them."""
    return {
        "issuer": {"url": issuer, "trustDomain": TRUST_DOMAIN},
        "webhook": {"port": webhook_port, "extraHosts": [LOOPBACK]},
        "tokenService": {
            "replicaCount": 1,
            "containerPort": token_service_port,
            # The dev token service serves HTTPS itself (the dev CA's certificate), in process.
            "tls": {"enabled": False},
        },
    }


def render_chart(chart: Path, values: dict[str, Any]) -> list[dict[str, Any]]:
    """Every object ``helm template`` renders for ``values`` (real Helm, via helm-python-sdk)."""
    try:
        import helm_python as helm
    except ImportError as exc:  # pragma: no cover - depends on the installed extras
        raise DevStackError(
            "agentauth dev renders the Helm chart with helm-python-sdk; install it with "
            "`pip install 'agentauth-k8s[dev]'` (or `make venv`)"
        ) from exc
    if not (chart / "Chart.yaml").is_file():
        raise DevStackError(f"no Helm chart at {chart} (agentauth dev runs from a source checkout)")
    try:
        manifests = helm.Chart.load(chart).render(
            values, name=RELEASE, namespace=SYSTEM_NAMESPACE, is_install=True
        )
    except helm.HelmError as exc:
        raise DevStackError(f"rendering {chart} failed: {exc}") from exc
    objects: list[dict[str, Any]] = []
    for path, text in sorted(manifests.items()):
        if path.endswith("NOTES.txt"):
            continue
        objects += [doc for doc in yaml.safe_load_all(text) if isinstance(doc, dict)]
    return objects


def deployment_environment(objects: Sequence[dict[str, Any]], name: str) -> dict[str, str]:
    """The literal environment the chart gives the first container of Deployment ``name``, plus
    the ``POD_NAMESPACE`` its downward API would resolve."""
    for obj in objects:
        if obj.get("kind") == "Deployment" and obj["metadata"]["name"] == name:
            container = obj["spec"]["template"]["spec"]["containers"][0]
            env = {e["name"]: str(e["value"]) for e in container.get("env") or [] if "value" in e}
            env["POD_NAMESPACE"] = str(obj["metadata"].get("namespace", SYSTEM_NAMESPACE))
            return env
    raise DevStackError(f"the chart rendered no Deployment {name}")


def ensure_serving_certificate(
    directory: Path, *, name: str, hosts: Sequence[str]
) -> tuple[Path, Path]:
    """A serving certificate for ``hosts`` signed by the dev CA (``DIR/ca.crt``/``ca.key``),
    created once as ``DIR/<name>.crt``/``.key``; clients trust it through the dev CA."""
    cert_path, key_path = directory / f"{name}.crt", directory / f"{name}.key"
    if cert_path.exists() and key_path.exists():
        return cert_path, key_path
    try:
        ca = pki.load_authority(
            (directory / "ca.crt").read_bytes(), (directory / "ca.key").read_bytes()
        )
    except pki.PkiError as exc:
        raise DevStackError(f"{directory / 'ca.key'} is not an EC key") from exc
    served = pki.issue_server_certificate(
        ca,
        hosts=hosts,
        now=datetime.datetime.now(datetime.UTC),
        lifetime=datetime.timedelta(days=365),
        common_name=name,
    )
    key_path.write_bytes(served.key_pem)
    key_path.chmod(0o600)
    cert_path.write_bytes(served.certificate_pem)
    return cert_path, key_path


def write_service_account_kubeconfig(
    *, path: Path, cluster: server.DevCluster, account: str, token_file: Path
) -> None:
    """A kubeconfig that authenticates as ``account`` with the (rotated) ``token_file``."""
    document = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": "agentauth-dev",
                "cluster": {"server": cluster.url, "certificate-authority": str(cluster.ca_path)},
            }
        ],
        "users": [{"name": account, "user": {"tokenFile": str(token_file)}}],
        "contexts": [
            {
                "name": account,
                "context": {
                    "cluster": "agentauth-dev",
                    "user": account,
                    "namespace": SYSTEM_NAMESPACE,
                },
            }
        ],
        "current-context": account,
    }
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    path.chmod(0o600)


async def apply_objects(api: kube.KubeClient, objects: Sequence[dict[str, Any]]) -> None:
    """Create each object; one that exists already is merge-patched to the rendered state."""
    order = list(CHART_KINDS)
    for obj in sorted(objects, key=lambda o: order.index(o["kind"])):
        resource = CHART_KINDS[obj["kind"]]
        namespace = obj["metadata"].get("namespace") if resource.namespaced else None
        try:
            await api.create(resource, obj, namespace=namespace)
        except kube.ApiError as exc:
            if exc.code != 409:
                raise DevStackError(
                    f"creating {obj['kind']} {obj['metadata']['name']} failed: {exc}"
                ) from exc
            try:
                await api.patch(resource, obj["metadata"]["name"], obj, namespace=namespace)
            except kube.ApiUnavailable as exc:
                # The store cannot be written (full or read-only disk): keep what it holds and
                # serve reads; writes answer 503 until storage works again.
                log.error(
                    "could not update %s %s to the chart's state: %s",
                    obj["kind"],
                    obj["metadata"]["name"],
                    exc,
                )


# -- the stack ----------------------------------------------------------------------------------


class _SignalsAreOurs(logging.Filter):
    """Drop Kopf's "OS signals are ignored" warning: ``serve`` handles SIGINT/SIGTERM."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "OS signals are ignored" not in record.getMessage()


logging.getLogger("kopf._core.reactor.running").addFilter(_SignalsAreOurs())


class ControllerThread:
    """``controller.main.run`` on its own thread and event loop.

    Why not the API server's loop: when Kopf stops it waits for, then cancels, every task of its
    loop created after it started ("the loop is not fully ours", says Kopf). On a shared loop
    those are the API server's connection handlers, so each stop took Kopf's full 5 s grace and
    cancelled tasks that are not its own. On its own loop Kopf only ever sees the controller.
    """

    def __init__(self, settings: controller_settings.Settings) -> None:
        self.settings = settings
        self.ready = threading.Event()
        self.done = threading.Event()
        self.error: BaseException | None = None
        self._loop = asyncio.new_event_loop()
        self._stop = asyncio.Event()
        self._thread = threading.Thread(target=self._run, name="agentauth-controller", daemon=True)

    def _run(self) -> None:
        async def body() -> None:
            ready = asyncio.Event()

            async def report() -> None:
                await ready.wait()
                self.ready.set()

            reporter = asyncio.create_task(report())
            try:
                await controller_main.run(self.settings, stop=self._stop, ready=ready)
            except BaseException as exc:
                self.error = exc
            finally:
                reporter.cancel()

        try:
            self._loop.run_until_complete(body())
            self._loop.run_until_complete(self._loop.shutdown_asyncgens())
        finally:
            self._loop.close()
            self.done.set()

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Ask Kopf to stop (thread-safe); :meth:`wait` tells when it has."""
        if not self.done.is_set():
            self._loop.call_soon_threadsafe(self._stop.set)

    async def wait(self) -> None:
        """Return when the controller has stopped; raise what stopped it, if anything did."""
        await asyncio.to_thread(self.done.wait)
        if self.error is not None:
            raise self.error


class DevStack:
    """The embedded control plane and the token service on one event loop, the controller on
    its own (see :class:`ControllerThread`), all in this process.

    After :meth:`start`: ``cluster`` (the :class:`~agentauth.devcluster.server.DevCluster`),
    ``kubeconfig_path`` (contexts ``admin``, ``alice``, ``bob``), ``ca_path`` (the dev CA, which
    also signs the token service's certificate), ``issuer`` = ``token_service_url`` (HTTPS on
    loopback), ``token_url`` (its RFC 8693 endpoint), ``objects`` (what the chart rendered),
    ``controller_settings`` and ``token_service_settings``.
    """

    def __init__(self, options: Options) -> None:
        self.options = options
        self.directory = options.directory.resolve()
        self.cluster = server.DevCluster(directory=self.directory, port=0)
        self.issuer = ""
        self.token_service_url = ""
        self.webhook_port = 0
        self.token_service_port = 0
        self.objects: list[dict[str, Any]] = []
        self.controller_settings: controller_settings.Settings | None = None
        self.token_service_settings: tokenservice_settings.Settings | None = None
        self._controller: ControllerThread | None = None
        self._token_service_stop = asyncio.Event()
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._refresher: asyncio.Task[None] | None = None
        self._admin: kube.KubeClient | None = None

    @property
    def kubeconfig_path(self) -> Path:
        return self.cluster.kubeconfig_path

    @property
    def ca_path(self) -> Path:
        return self.cluster.ca_path

    @property
    def token_url(self) -> str:
        return f"{self.token_service_url}/oauth2/token"

    # -- lifecycle --------------------------------------------------------------------------

    async def start(self) -> None:
        """Start everything; returns once it all serves (see the module guarantees)."""
        self._check_options()
        self.directory.mkdir(parents=True, exist_ok=True)
        # First of all: a second agentauth dev on this directory must not touch anything.
        lock = server.DirectoryLock(self.directory)
        try:
            lock.acquire()
        except server.DirectoryInUse as exc:
            raise DevStackError(str(exc)) from None
        try:
            await self._start(lock)
        except BaseException:
            lock.release()
            raise

    async def _start(self, lock: server.DirectoryLock) -> None:
        ports = choose_ports(
            self.directory,
            requested={
                "api": self.options.port,
                "token_service": self.options.token_service_port,
                "webhook": self.options.webhook_port,
            },
        )
        for name, port in ports.items():
            if not _port_free(port):
                raise DevStackError(f"port {port} on {LOOPBACK} ({PORT_USERS[name]}) is in use")
        self.cluster = server.DevCluster(directory=self.directory, port=ports["api"], lock=lock)
        self.webhook_port = ports["webhook"]
        self.token_service_port = ports["token_service"]
        self.issuer = self.token_service_url = f"https://{LOOPBACK}:{self.token_service_port}"
        values = chart_values(
            issuer=self.issuer,
            token_service_port=ports["token_service"],
            webhook_port=self.webhook_port,
        )
        # Render before anything listens: a broken chart fails fast and leaves nothing behind.
        self.objects = await asyncio.to_thread(render_chart, self.options.chart, values)
        await self.cluster.start()
        try:
            await self._start_components()
        except BaseException:
            await self.stop()
            raise

    def _check_options(self) -> None:
        """Refuse bad options before anything is started or written."""
        if not (self.options.chart / "Chart.yaml").is_file():
            raise DevStackError(
                f"no Helm chart at {self.options.chart} (agentauth dev runs from a source checkout)"
            )
        if self.options.trusted_issuers:
            try:
                tokenservice_settings.from_sources(
                    environ={
                        "AGENTAUTH_ISSUER": f"https://{LOOPBACK}",
                        "AGENTAUTH_TRUSTED_ISSUERS": self.options.trusted_issuers,
                    }
                )
            except tokenservice_settings.SettingsError as exc:
                raise DevStackError(str(exc)) from exc
        if self.options.trusted_ca_file is not None and not self.options.trusted_ca_file.is_file():
            raise DevStackError(f"--trusted-ca-file {self.options.trusted_ca_file} does not exist")

    async def _start_components(self) -> None:
        self._admin = kube.KubeClient(
            kube_config.from_kubeconfig(self.kubeconfig_path, context="admin")
        )
        await self._ensure_namespace(SYSTEM_NAMESPACE)
        await apply_objects(self._admin, [o for o in self.objects if o["kind"] in CHART_KINDS])
        skipped = {o["kind"] for o in self.objects} - set(CHART_KINDS) - WORKLOAD_KINDS
        if skipped:
            raise DevStackError(f"the chart rendered kinds agentauth dev cannot install: {skipped}")

        controller_account = f"{RELEASE}-controller"
        token_service_account = f"{RELEASE}-token-service"
        token_files = {
            account: self.directory / "serviceaccounts" / account / "token"
            for account in (controller_account, token_service_account)
        }
        expiries = {
            account: await self._mint(account, path) for account, path in token_files.items()
        }
        self._refresher = asyncio.create_task(self._keep_tokens_fresh(token_files, expiries))
        kubeconfigs = {}
        for account, path in token_files.items():
            kubeconfigs[account] = self.directory / f"{account}.kubeconfig"
            write_service_account_kubeconfig(
                path=kubeconfigs[account], cluster=self.cluster, account=account, token_file=path
            )

        controller_env = deployment_environment(self.objects, controller_account)
        self.controller_settings = dataclasses.replace(
            controller_settings.from_sources(None, environ=controller_env),
            kubeconfig=str(kubeconfigs[controller_account]),
            webhook_host=LOOPBACK,
            health_port=0,
        )
        cert, key = ensure_serving_certificate(
            self.directory,
            name="token-service",
            hosts=(
                LOOPBACK,
                "localhost",
                f"{token_service_account}.{SYSTEM_NAMESPACE}.svc",
            ),
        )
        token_service_env = {
            **deployment_environment(self.objects, token_service_account),
            # A pod listens on all its interfaces; here only loopback is ours to take.
            "AGENTAUTH_LISTEN_HOST": LOOPBACK,
            # Also what the chart sets from tokenService.containerPort; stated, not assumed.
            "AGENTAUTH_LISTEN_PORT": str(self.token_service_port),
            "AGENTAUTH_TLS_CERT": str(cert),
            "AGENTAUTH_TLS_KEY": str(key),
            "KUBECONFIG": str(kubeconfigs[token_service_account]),
            # What a real cluster's --service-account-issuer would be.
            "AGENTAUTH_CLUSTER_ISSUER": self.cluster.issuer,
            "AGENTAUTH_LOG_FORMAT": "text",
        }
        if self.options.trusted_issuers:
            token_service_env["AGENTAUTH_TRUSTED_ISSUERS"] = self.options.trusted_issuers
        if self.options.trusted_ca_file is not None:
            token_service_env["AGENTAUTH_TRUSTED_CA_FILE"] = str(self.options.trusted_ca_file)
        try:
            self.token_service_settings = tokenservice_settings.from_sources(
                environ=token_service_env
            )
        except tokenservice_settings.SettingsError as exc:
            raise DevStackError(f"token service: {exc}") from exc

        self._controller = ControllerThread(self.controller_settings)
        self._controller.start()
        self._tasks["controller"] = asyncio.create_task(
            self._controller.wait(), name="agentauth-controller"
        )

        async def controller_ready() -> bool:
            assert self._controller is not None  # noqa: S101 - set just above
            return self._controller.ready.is_set()

        await self._until(controller_ready, what="the controller")
        await self._until(self._webhooks_have_ca, what="the webhook configurations' caBundle")
        self._tasks["token-service"] = asyncio.create_task(
            tokenservice_app.serve(self.token_service_settings, stop=self._token_service_stop),
            name="agentauth-token-service",
        )
        await self._until(self._token_service_ready, what="the token service's /readyz")

    async def stop(self) -> None:
        """Stop the token service, the controller, then the API server; idempotent."""
        self._token_service_stop.set()
        if "token-service" in self._tasks:
            await self._finish(self._tasks["token-service"])
        if self._controller is not None:
            self._controller.stop()
        if "controller" in self._tasks:
            await self._finish(self._tasks["controller"])
        if self._refresher is not None:
            self._refresher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._refresher
        if self._admin is not None:
            await self._admin.close()
            self._admin = None
        started = asyncio.get_running_loop().time()
        await self.cluster.stop()
        log.info("API server stopped in %.2fs", asyncio.get_running_loop().time() - started)

    async def wait_failure(self) -> str:
        """Return (a description) as soon as one component stops on its own."""
        done, _ = await asyncio.wait(self._tasks.values(), return_when=asyncio.FIRST_COMPLETED)
        task = done.pop()
        error = task.exception() if not task.cancelled() else None
        return f"{task.get_name()} stopped: {error!r}" if error else f"{task.get_name()} stopped"

    # -- internals ----------------------------------------------------------------------------

    @staticmethod
    async def _finish(task: asyncio.Task[None]) -> None:
        started = asyncio.get_running_loop().time()
        try:
            await asyncio.wait_for(asyncio.shield(task), STOP_TIMEOUT_SECONDS)
        except TimeoutError:
            log.warning("%s did not stop in %ss; cancelling", task.get_name(), STOP_TIMEOUT_SECONDS)
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        except Exception:
            log.exception("%s failed", task.get_name())
        log.info(
            "%s stopped in %.2fs", task.get_name(), asyncio.get_running_loop().time() - started
        )

    async def _until(self, check: Any, *, what: str) -> None:
        """Wait until ``await check()`` is truthy, failing at once if a component died and
        after :data:`READY_TIMEOUT_SECONDS` otherwise."""
        deadline = asyncio.get_running_loop().time() + READY_TIMEOUT_SECONDS
        while True:
            for task in self._tasks.values():
                if task.done():
                    error = task.exception() if not task.cancelled() else None
                    raise DevStackError(
                        f"{task.get_name()} stopped while waiting for {what}: {error!r}"
                    ) from error
            remaining = deadline - asyncio.get_running_loop().time()
            if remaining <= 0:
                raise DevStackError(
                    f"timed out after {READY_TIMEOUT_SECONDS:.0f}s waiting for {what}"
                )
            try:
                if await asyncio.wait_for(check(), timeout=min(remaining, 5.0)):
                    return
            except TimeoutError:
                pass
            # The components make progress on this same loop; poll, do not spin.
            await asyncio.sleep(POLL_SECONDS)

    async def _ensure_namespace(self, name: str) -> None:
        assert self._admin is not None  # noqa: S101 - set by _start_components
        try:
            await self._admin.create(
                kube.NAMESPACES,
                {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}},
            )
        except kube.ApiError as exc:
            if exc.code != 409:
                raise

    async def _mint(self, account: str, path: Path) -> datetime.datetime:
        """A TokenRequest token for ``SYSTEM_NAMESPACE/account``, written atomically to ``path``."""
        assert self._admin is not None  # noqa: S101 - set by _start_components
        body = {
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenRequest",
            "spec": {"expirationSeconds": SERVICE_ACCOUNT_TOKEN_SECONDS},
        }
        response = await self._admin.request(
            "POST",
            kube.SERVICE_ACCOUNTS.path(namespace=SYSTEM_NAMESPACE, name=account) + "/token",
            body=body,
        )
        status = response.get("status") or {}
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        temporary = path.with_suffix(".tmp")
        temporary.write_text(str(status["token"]))
        temporary.chmod(0o600)
        temporary.replace(path)
        return datetime.datetime.fromisoformat(
            str(status["expirationTimestamp"]).replace("Z", "+00:00")
        )

    async def _keep_tokens_fresh(
        self, files: dict[str, Path], expiries: dict[str, datetime.datetime]
    ) -> None:
        """Re-mint each ServiceAccount token at 80% of its life (the kubelet's rule)."""
        lifetime = datetime.timedelta(seconds=SERVICE_ACCOUNT_TOKEN_SECONDS)
        while True:
            due = min(expiries.values()) - lifetime * (1 - TOKEN_REFRESH_FRACTION)
            now = datetime.datetime.now(datetime.UTC)
            # A timer, not synchronisation: nothing else waits on this.
            await asyncio.sleep(max((due - now).total_seconds(), 1.0))
            for account, path in files.items():
                if expiries[account] - lifetime * (1 - TOKEN_REFRESH_FRACTION) <= due:
                    try:
                        expiries[account] = await self._mint(account, path)
                    except (kube.ApiError, aiohttp.ClientError, KeyError) as exc:
                        log.warning("refreshing the %s token failed: %s", account, exc)

    async def _webhooks_have_ca(self) -> bool:
        assert self._admin is not None  # noqa: S101 - set by _start_components
        for kind in ("MutatingWebhookConfiguration", "ValidatingWebhookConfiguration"):
            for obj in self.objects:
                if obj["kind"] != kind:
                    continue
                stored = await self._admin.get(CHART_KINDS[kind], obj["metadata"]["name"])
                if not all(
                    (w.get("clientConfig") or {}).get("caBundle") for w in stored["webhooks"]
                ):
                    return False
        return True

    async def _token_service_ready(self) -> bool:
        context = ssl.create_default_context(cafile=str(self.ca_path))
        try:
            async with (
                aiohttp.ClientSession() as session,
                session.get(
                    f"{self.token_service_url}/readyz",
                    ssl=context,
                    timeout=aiohttp.ClientTimeout(total=5),
                ) as response,
            ):
                return response.status == 200
        except (aiohttp.ClientError, OSError):
            return False


# -- running it -----------------------------------------------------------------------------


def print_ready(stack: DevStack, out: TextIO) -> None:
    """The ``ready`` line (exactly one) and what a person needs to use the environment."""
    lines = [
        f"ready kubeconfig={stack.kubeconfig_path}",
        f"  export KUBECONFIG={stack.kubeconfig_path}   # contexts: admin (current), alice, bob",
        f"  token service: {stack.token_service_url}  (token endpoint {stack.token_url})",
        f"  issuer: {stack.issuer}",
        f"  dev CA: {stack.ca_path}  (export AGENTAUTH_CA_FILE={stack.ca_path} for the SDK)",
        "  run a local process as a pod: agentauth dev run-as-pod POD -n NS -- CMD...",
    ]
    if stack.options.log_file is not None:
        lines.append(f"  log: {stack.options.log_file}")
    lines.append("  stop with Ctrl-C")
    out.write("\n".join(lines) + "\n")
    out.flush()


async def serve(options: Options, *, out: TextIO) -> int:
    """``agentauth dev``: start, print the ready line, run until SIGINT/SIGTERM, stop. Returns
    the exit code: 0 after a signal, 1 when a component failed."""
    out.write(server.BANNER + "\n")
    out.flush()
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    stack = DevStack(options)
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    starting = asyncio.create_task(stack.start())
    stopping = asyncio.create_task(stop.wait())
    try:
        await asyncio.wait({starting, stopping}, return_when=asyncio.FIRST_COMPLETED)
        if not starting.done():  # a signal while starting: stop what has started
            starting.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await starting
            await stack.stop()
            return 0
        starting.result()  # raises DevStackError when it could not start (already stopped)
        print_ready(stack, out)
        failed = asyncio.create_task(stack.wait_failure())
        await asyncio.wait({stopping, failed}, return_when=asyncio.FIRST_COMPLETED)
        failure = failed.result() if failed.done() else None
        failed.cancel()
        await stack.stop()
        if failure:
            log.error("agentauth dev: %s", failure)
            return 1
        return 0
    finally:
        stopping.cancel()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)


@contextlib.contextmanager
def running_stack(options: Options) -> Iterator[DevStack]:
    """Run a :class:`DevStack` on a background thread with its own event loop (tests, tools)."""
    loop = asyncio.new_event_loop()
    holder: list[tuple[DevStack, asyncio.Event]] = []
    ready = threading.Event()
    failure: list[BaseException] = []

    async def main() -> None:
        stop = asyncio.Event()
        stack = DevStack(options)
        holder.append((stack, stop))
        try:
            await stack.start()
        except BaseException as error:
            failure.append(error)
            ready.set()
            return
        ready.set()
        try:
            await stop.wait()
        finally:
            await stack.stop()

    thread = threading.Thread(
        target=loop.run_until_complete, args=(main(),), name="agentauth-devstack", daemon=True
    )
    thread.start()
    ready.wait()
    if failure:
        thread.join()
        loop.close()
        raise failure[0]
    stack, stop = holder[0]
    try:
        yield stack
    finally:
        loop.call_soon_threadsafe(stop.set)
        thread.join(timeout=60)
        if not thread.is_alive():
            loop.close()
