"""The embedded control plane as a runnable server: HTTPS, its own CA, a kubeconfig.

FOR DEVELOPMENT AND TESTS ONLY, never for production: a real cluster (kind, or any conformant
one) is the production target.

:class:`DevCluster` owns everything under its directory: the SQLite store (``store.db``), the CA
and serving certificate (``ca.crt``/``ca.key``, ``server.crt``/``server.key``), the user tokens
(``tokens.json``), the service-account signing key and the ``kubeconfig`` with the contexts
``admin`` (current; group ``system:masters``), ``alice`` and ``bob`` (ordinary users). A restart
with the same directory keeps every object, the CA and the tokens. The server listens on
127.0.0.1 only, with ``SO_REUSEADDR`` (a restart takes its port back at once, whatever the old
connections' TIME-WAIT).

One process at a time per directory: :class:`DirectoryLock` (``flock`` on ``DIR/lock``, released
by the kernel when the process dies, even by ``kill -9``) refuses a second one at once with
:class:`DirectoryInUse`, naming the process that holds it.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import errno
import fcntl
import json
import logging
import os
import secrets
import socket
import ssl
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml
from aiohttp import web

from agentauth.devcluster import api, rbac, serviceaccounts, storage, types
from agentauth.domain import pki

log = logging.getLogger(__name__)

BANNER = (
    "agentauth dev: embedded Kubernetes control plane for DEVELOPMENT AND TESTS ONLY - "
    "never use it in production"
)
HOST = "127.0.0.1"
USERS = ("alice", "bob")
# The names the API server's certificate covers: loopback, plus the in-cluster service name.
SERVING_HOSTS = ("localhost", "kubernetes.default.svc", HOST)
DEFAULT_NAMESPACES = ("default", "kube-system", "kube-public", "kube-node-lease")
# Slow clients (slowloris): a request head must arrive within HEADER_TIMEOUT_SECONDS of the
# connection opening or of the previous response (kube-apiserver: 32 s), a body within
# BODY_TIMEOUT_SECONDS of its head; otherwise the connection is closed.
HEADER_TIMEOUT_SECONDS = 30.0
BODY_TIMEOUT_SECONDS = 60.0


def deadlines(*, body_timeout: float) -> Any:
    """Middleware: the request body is read (and kept for the handler) within ``body_timeout``
    seconds, or the request is answered 504 ``Timeout`` and its connection closed."""

    @web.middleware
    async def read_body_in_time(request: web.Request, handler: Any) -> web.StreamResponse:
        if request.body_exists:
            try:
                if request.content.is_eof():
                    # The whole body has arrived already (the usual small body): nothing can
                    # time out, so no timer is armed for it.
                    await request.read()
                else:
                    await asyncio.wait_for(request.read(), body_timeout)
            except TimeoutError:
                timed_out = api.error_response(
                    api.ApiError(
                        504,
                        "Timeout",
                        "Timeout: request did not complete within the allowed duration "
                        f"(the body did not arrive within {body_timeout:g}s)",
                    )
                )
                # Answered, then closed at once: no lingering read of what the client trickles.
                await timed_out.prepare(request)
                await timed_out.write_eof()
                request.protocol.force_close()
                return timed_out
            except web.HTTPRequestEntityTooLarge:
                return api.error_response(
                    api.ApiError(
                        413,
                        "RequestEntityTooLarge",
                        f"Request entity too large: limit is {api.MAX_BODY_BYTES}",
                    )
                )
        answered: web.StreamResponse = await handler(request)
        return answered

    return read_body_in_time


class DirectoryInUse(Exception):
    """Another process runs on this state directory."""


class DirectoryLock:
    """An exclusive ``flock`` on ``DIR/lock`` for as long as this object holds it open."""

    def __init__(self, directory: Path) -> None:
        self.path = Path(directory) / "lock"
        self._fd: int | None = None

    def acquire(self) -> None:
        if self._fd is not None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as error:
            os.close(fd)
            if error.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise
            holder = ""
            with contextlib.suppress(OSError, ValueError):
                holder = f" (pid {int(self.path.read_text().strip())})"
            raise DirectoryInUse(
                f"{self.path.parent} is in use by another agentauth dev{holder}: stop it first, "
                "or give this one another --dir"
            ) from None
        # Who holds it, for the message above (best effort: a read-only directory still locks).
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor releases the flock
            self._fd = None


def listening_socket(port: int) -> socket.socket:
    """A non-blocking listening socket on 127.0.0.1:``port`` (0: a free one), ``SO_REUSEADDR``
    so that connections of a previous run in TIME-WAIT do not keep the port."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((HOST, port))
        sock.listen(512)
    except BaseException:
        sock.close()
        raise
    sock.setblocking(False)
    return sock


def _write_private(path: Path, data: bytes) -> None:
    path.write_bytes(data)
    path.chmod(0o600)


def ensure_certificates(directory: Path) -> tuple[Path, Path, Path]:
    """Create (once) a CA and a serving certificate for 127.0.0.1/localhost.

    Returns (ca.crt, server.crt, server.key) paths.
    """
    ca_cert_path = directory / "ca.crt"
    ca_key_path = directory / "ca.key"
    cert_path = directory / "server.crt"
    key_path = directory / "server.key"
    if all(p.exists() for p in (ca_cert_path, ca_key_path, cert_path, key_path)):
        return ca_cert_path, cert_path, key_path
    moment = datetime.datetime.now(datetime.UTC)
    ca = pki.new_ca("agentauth-dev-ca", now=moment, lifetime=datetime.timedelta(days=3650))
    served = pki.issue_server_certificate(
        ca,
        hosts=SERVING_HOSTS,
        now=moment,
        lifetime=datetime.timedelta(days=3650),
        common_name="kube-apiserver",
    )
    _write_private(ca_key_path, ca.key_pem)
    ca_cert_path.write_bytes(ca.certificate_pem)
    _write_private(key_path, served.key_pem)
    cert_path.write_bytes(served.certificate_pem)
    return ca_cert_path, cert_path, key_path


def _load_tokens(directory: Path) -> dict[str, str]:
    """The bearer tokens of admin, alice and bob; created once, kept across restarts."""
    path = directory / "tokens.json"
    if path.exists():
        loaded = json.loads(path.read_text())
        if isinstance(loaded, dict) and all(u in loaded for u in ("admin", *USERS)):
            return {str(k): str(v) for k, v in loaded.items()}
    tokens = {user: secrets.token_urlsafe(32) for user in ("admin", *USERS)}
    _write_private(path, json.dumps(tokens).encode())
    return tokens


def write_kubeconfig(*, path: Path, url: str, ca_pem: bytes, tokens: dict[str, str]) -> None:
    import base64

    ca_data = base64.b64encode(ca_pem).decode()
    users = ("admin", *USERS)
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "preferences": {},
        "clusters": [
            {
                "name": "agentauth-dev",
                "cluster": {"server": url, "certificate-authority-data": ca_data},
            }
        ],
        "users": [{"name": user, "user": {"token": tokens[user]}} for user in users],
        "contexts": [
            {
                "name": user,
                "context": {"cluster": "agentauth-dev", "user": user, "namespace": "default"},
            }
            for user in users
        ],
        "current-context": "admin",
    }
    _write_private(path, yaml.safe_dump(config, sort_keys=False).encode())


def agentauth_crds() -> list[dict[str, Any]]:
    """The project's CRDs, from the generator (or the generated YAML files as a fallback)."""
    try:
        from agentauth.domain import crds
    except ImportError:
        crds = None  # type: ignore[assignment]
    if crds is not None:
        return list(crds.generate_crds())
    found: list[dict[str, Any]] = []
    for path in sorted(Path(__file__).resolve().parents[3].glob("crds/*.yaml")):
        found += [doc for doc in yaml.safe_load_all(path.read_text()) if doc]
    return found


class DevCluster:
    """One embedded API server. ``port=0`` picks a free port."""

    def __init__(
        self,
        *,
        directory: Path,
        port: int = 0,
        history_window: int = 5000,
        bookmark_interval: float = 5.0,
        apply_crds: bool = True,
        lock: DirectoryLock | None = None,
        header_timeout: float = HEADER_TIMEOUT_SECONDS,
        body_timeout: float = BODY_TIMEOUT_SECONDS,
    ) -> None:
        self._header_timeout = header_timeout
        self._body_timeout = body_timeout
        self.directory = Path(directory)
        # Given by a caller that locked the directory before choosing ports (agentauth dev).
        self._lock = lock if lock is not None else DirectoryLock(self.directory)
        self._port = port
        self._history_window = history_window
        self._bookmark_interval = bookmark_interval
        self._apply_crds = apply_crds
        self.url = ""
        self.issuer = ""
        self.kubeconfig_path = self.directory / "kubeconfig"
        self.ca_path = self.directory / "ca.crt"
        self.admin_token = ""
        self.user_tokens: dict[str, str] = {}
        self.api: api.ApiServer | None = None
        self._runner: web.ServerRunner | None = None
        self._store: storage.Store | None = None

    @property
    def port(self) -> int:
        return self._port

    async def start(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        self._lock.acquire()
        try:
            await self._start()
        except BaseException:
            await self.stop()
            raise

    async def _start(self) -> None:
        ca_path, cert_path, key_path = ensure_certificates(self.directory)
        tokens = _load_tokens(self.directory)
        self.admin_token = tokens["admin"]
        self.user_tokens = {user: tokens[user] for user in USERS}

        sock = listening_socket(self._port)
        self._port = sock.getsockname()[1]
        self.url = f"https://{HOST}:{self._port}"
        self.issuer = self.url

        static_tokens = {
            tokens["admin"]: types.UserInfo(username="admin", groups=(rbac.MASTERS_GROUP,)),
            **{tokens[user]: types.UserInfo(username=user, uid=f"{user}-uid") for user in USERS},
        }
        self._store = storage.Store(
            self.directory / "store.db", history_window=self._history_window
        )
        issuer = serviceaccounts.ServiceAccountTokenIssuer(
            issuer=self.issuer, directory=self.directory
        )
        server = api.ApiServer(
            store=self._store,
            token_issuer=issuer,
            static_tokens=static_tokens,
            server_address=f"{HOST}:{self._port}",
            bookmark_interval=self._bookmark_interval,
        )
        self.api = server
        try:
            for name in DEFAULT_NAMESPACES:
                server.ensure({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})
            for item in rbac.bootstrap_policy():
                server.ensure(item)
            if self._apply_crds:
                for crd in agentauth_crds():
                    server.ensure(crd)
        except storage.StorageError as error:
            # Serve what the store holds: reads work, writes answer 503 until storage recovers.
            log.error("the store cannot be written (%s): bootstrap objects not updated", error)
        server.resume()

        read_body = deadlines(body_timeout=self._body_timeout)

        async def handle(request: web.BaseRequest) -> web.StreamResponse:
            answered: web.StreamResponse = await read_body(request, server.handle)
            return answered

        def make_request(
            message: Any, payload: Any, protocol: Any, writer: Any, task: Any
        ) -> web.Request:
            return web.Request(
                message,
                payload,
                protocol,
                writer,
                task,
                asyncio.get_running_loop(),
                client_max_size=api.MAX_BODY_BYTES + 1,
            )

        # aiohttp's low-level server: every path goes to one handler, so an Application's
        # router, middleware chain and signals would only add work to each request.
        lowlevel = web.Server(
            handle,
            request_factory=make_request,
            access_log=None,
            # aiohttp's keep-alive timer runs from the connection's start (or the previous
            # response) until a complete request head: it is the header deadline. It stops
            # while a handler runs, so watches are unaffected.
            keepalive_timeout=self._header_timeout,
        )
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(cert_path, key_path)
        self._runner = web.ServerRunner(lowlevel, handle_signals=False, shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.SockSite(self._runner, sock, ssl_context=context)
        await site.start()
        write_kubeconfig(
            path=self.kubeconfig_path, url=self.url, ca_pem=ca_path.read_bytes(), tokens=tokens
        )

    async def stop(self) -> None:
        if self.api is not None:
            await self.api.stop()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self._store is not None:
            self._store.close()
            self._store = None
        self._lock.release()

    def register_service(
        self, *, namespace: str, name: str, target_port: int, port: int = 443
    ) -> None:
        """Route webhook calls for Service ``namespace/name:port`` to 127.0.0.1:target_port.

        Nothing runs Services here, so a webhook configured with ``clientConfig.service`` (as
        the Helm chart does) needs this mapping to reach a webhook served in-process.
        """
        if self.api is None:
            raise RuntimeError("start() the cluster before registering services")
        self.api.admission.register_service(
            namespace=namespace, name=name, port=port, target_port=target_port
        )

    async def serve_forever_until(self, stop_event: asyncio.Event) -> None:
        """Serve until ``stop_event`` is set, then stop cleanly (for ``agentauth dev``)."""
        try:
            await stop_event.wait()
        finally:
            await self.stop()


@contextlib.contextmanager
def running_cluster(directory: Path, **options: Any) -> Iterator[DevCluster]:
    """Run a :class:`DevCluster` on a background thread with its own event loop."""
    loop = asyncio.new_event_loop()
    cluster = DevCluster(directory=directory, **options)
    holder: list[asyncio.Event] = []
    ready = threading.Event()
    failure: list[BaseException] = []

    async def main() -> None:
        stop_event = asyncio.Event()
        holder.append(stop_event)
        try:
            await cluster.start()
        except BaseException as error:
            failure.append(error)
            ready.set()
            return
        ready.set()
        await cluster.serve_forever_until(stop_event)

    thread = threading.Thread(
        target=loop.run_until_complete, args=(main(),), name="agentauth-devcluster", daemon=True
    )
    thread.start()
    ready.wait()
    if failure:
        thread.join()
        loop.close()
        raise failure[0]
    try:
        yield cluster
    finally:
        loop.call_soon_threadsafe(holder[0].set)
        thread.join(timeout=30)
        loop.close()
