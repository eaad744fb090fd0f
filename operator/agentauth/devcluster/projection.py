"""``agentauth dev run-as-pod``: run a local command as if it were a pod's first container.

Stands in for the kubelet's projected service-account tokens, which nothing provides in the
embedded control plane (pods are stored, never scheduled). For development and tests only.

What it does, as a client of the cluster (kubeconfig + bearer token or client certificate, TLS
verified against the kubeconfig's CA):

1. Reads the pod, and for every ``projected`` volume mounted by the pod's first container:
   - each ``serviceAccountToken`` source gets a TokenRequest for the pod's service account, with
     the source's ``audience`` (empty: the API server's own audiences) and ``expirationSeconds``
     (default 3600), **bound to the pod** (``boundObjectRef`` kind Pod, name and uid), so deleting
     the pod revokes the token, exactly as on a real node;
   - ``configMap`` and ``secret`` sources are written from the stored objects (with ``items``),
     ``downwardAPI`` items from the pod's fields; plain ``configMap``/``secret``/``downwardAPI``
     volumes are handled as one-source projections. Other volume types are left alone.
2. Writes each file into a private temporary directory (0700; files 0600), atomically (write, then
   ``os.replace``), so a reader never sees a partial token.
3. Refreshes every token at 80% of its lifetime (the kubelet's rule), retrying every few seconds
   on failure until the old token expires.
4. Builds the environment from the first container's ``env`` (literal values, ``$(VAR)``
   expansion, ``fieldRef`` for metadata/spec fields, ``configMapKeyRef``/``secretKeyRef``) on top
   of this process's environment, then **remaps mount paths**: every env value that equals a
   volume's ``mountPath`` or starts with ``mountPath + "/"`` is rewritten to the temporary
   directory holding that volume (longest mount path wins). ``AGENTAUTH_TOKEN_FILE`` is set to the
   first projected service-account token file, and ``AGENTAUTH_POD_ROOT`` to the temporary
   directory. A program that reads ``/var/run/secrets/tokens/agentauth`` in the cluster therefore
   reads the same file here when it takes the path from its environment.
5. Runs the command, forwards SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGUSR1 and SIGUSR2 to it, returns
   its exit code (128+N when it died of signal N, like a shell), and removes the directory.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import dataclasses
import logging
import os
import re
import shutil
import signal
import ssl
import sys
import tempfile
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import yaml

log = logging.getLogger(__name__)

REFRESH_FRACTION = 0.8
RETRY_SECONDS = 5.0
DEFAULT_TOKEN_EXPIRATION = 3600
TOKEN_FILE_ENV = "AGENTAUTH_TOKEN_FILE"
POD_ROOT_ENV = "AGENTAUTH_POD_ROOT"
_FORWARDED_SIGNALS = (
    signal.SIGINT,
    signal.SIGTERM,
    signal.SIGHUP,
    signal.SIGQUIT,
    signal.SIGUSR1,
    signal.SIGUSR2,
)
_VAR_REFERENCE = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)")


class ProjectionError(Exception):
    """The pod cannot be run locally (missing pod, refused TokenRequest, bad kubeconfig...)."""


# -- a minimal Kubernetes client over the kubeconfig ------------------------------------------


@dataclasses.dataclass(frozen=True)
class _Connection:
    server: str
    ssl_context: ssl.SSLContext
    headers: Mapping[str, str]


def _load_connection(kubeconfig: Path, context_name: str | None) -> _Connection:
    try:
        config = yaml.safe_load(kubeconfig.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ProjectionError(f"cannot read kubeconfig {kubeconfig}: {exc}") from exc
    if not isinstance(config, dict):
        raise ProjectionError(f"kubeconfig {kubeconfig} is not a mapping")

    def named(section: str, name: str) -> dict[str, Any]:
        for entry in config.get(section) or []:
            if isinstance(entry, dict) and entry.get("name") == name:
                value = entry.get(section[:-1])
                if isinstance(value, dict):
                    return value
        raise ProjectionError(f'kubeconfig {kubeconfig} has no {section[:-1]} named "{name}"')

    context = named("contexts", context_name or str(config.get("current-context") or ""))
    cluster = named("clusters", str(context.get("cluster", "")))
    user = named("users", str(context.get("user", "")))
    base = kubeconfig.parent

    def data_or_file(data_key: str, file_key: str, source: dict[str, Any]) -> bytes | None:
        if source.get(data_key):
            return base64.b64decode(str(source[data_key]))
        if source.get(file_key):
            return (base / str(source[file_key])).read_bytes()
        return None

    ca = data_or_file("certificate-authority-data", "certificate-authority", cluster)
    context_ssl = ssl.create_default_context(cadata=ca.decode("ascii") if ca is not None else None)
    if cluster.get("insecure-skip-tls-verify"):
        raise ProjectionError(
            "refusing insecure-skip-tls-verify: the token would be sent unverified"
        )
    headers: dict[str, str] = {"Accept": "application/json"}
    token = user.get("token")
    if not token and user.get("tokenFile"):
        token = (base / str(user["tokenFile"])).read_text().strip()
    if token:
        headers["Authorization"] = f"Bearer {token}"
    cert = data_or_file("client-certificate-data", "client-certificate", user)
    key = data_or_file("client-key-data", "client-key", user)
    if cert is not None and key is not None:
        with tempfile.TemporaryDirectory() as directory:
            cert_path, key_path = Path(directory, "tls.crt"), Path(directory, "tls.key")
            cert_path.write_bytes(cert)
            key_path.write_bytes(key)
            context_ssl.load_cert_chain(cert_path, key_path)
    server = str(cluster.get("server", "")).rstrip("/")
    if not server.startswith("https://"):
        raise ProjectionError(f'cluster server "{server}" must be an https URL')
    return _Connection(server=server, ssl_context=context_ssl, headers=headers)


class _Client:
    def __init__(self, connection: _Connection, session: aiohttp.ClientSession) -> None:
        self._connection = connection
        self._session = session

    async def request(self, method: str, path: str, body: Any = None) -> dict[str, Any]:
        url = self._connection.server + path
        try:
            async with self._session.request(
                method,
                url,
                json=body,
                ssl=self._connection.ssl_context,
                headers=dict(self._connection.headers),
            ) as response:
                try:
                    payload = await response.json(content_type=None)
                except ValueError:
                    payload = None
                if response.status >= 300:
                    message = payload.get("message") if isinstance(payload, dict) else None
                    raise ProjectionError(
                        f"{method} {path}: HTTP {response.status}: {message or response.reason}"
                    )
        except aiohttp.ClientError as exc:
            raise ProjectionError(f"{method} {url}: {exc}") from exc
        if not isinstance(payload, dict):
            raise ProjectionError(f"{method} {path}: response is not a JSON object")
        return payload


# -- projection -------------------------------------------------------------------------------


@dataclasses.dataclass
class _TokenFile:
    path: Path
    audience: str
    expiration_seconds: int
    # When the current token was requested and when it expires (set by each TokenRequest).
    issued: datetime = dataclasses.field(default_factory=lambda: datetime.now(UTC))
    expires: datetime = dataclasses.field(default_factory=lambda: datetime.now(UTC))


def _write_atomically(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd, temp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.chmod(temp, 0o600)
        os.replace(temp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp)
        raise


def _safe_join(root: Path, relative: str) -> Path:
    """``root/relative``, refusing paths that escape ``root`` (``..``, absolute paths)."""
    candidate = (root / relative).resolve()
    if candidate != root.resolve() and root.resolve() not in candidate.parents:
        raise ProjectionError(f'path "{relative}" escapes its volume')
    return candidate


def _parse_time(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


class _Projector:
    def __init__(
        self, *, client: _Client, pod: dict[str, Any], root: Path, refresh_fraction: float
    ) -> None:
        self._client = client
        self._pod = pod
        self._root = root
        self._refresh_fraction = refresh_fraction
        metadata = pod.get("metadata") or {}
        self.namespace = str(metadata.get("namespace", ""))
        self.name = str(metadata.get("name", ""))
        self.uid = str(metadata.get("uid", ""))
        spec = pod.get("spec") or {}
        self.service_account = str(spec.get("serviceAccountName") or "default")
        containers = spec.get("containers") or []
        if not containers or not isinstance(containers[0], dict):
            raise ProjectionError(f'pod "{self.name}" has no containers')
        self.container: dict[str, Any] = containers[0]
        self.tokens: list[_TokenFile] = []
        self.mounts: dict[str, Path] = {}

    async def project(self) -> None:
        volumes = {
            str(v.get("name")): v
            for v in (self._pod.get("spec") or {}).get("volumes") or []
            if isinstance(v, dict)
        }
        projected_dirs: dict[str, Path] = {}
        for mount in self.container.get("volumeMounts") or []:
            if not isinstance(mount, dict):
                continue
            volume = volumes.get(str(mount.get("name")))
            sources = _sources(volume) if volume is not None else None
            if volume is None or sources is None:
                continue  # emptyDir, hostPath, PVCs...: nothing the kubelet would project
            name = str(volume["name"])
            if name not in projected_dirs:
                volume_dir = self._root / "volumes" / name
                volume_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
                await self._project_sources(sources, volume_dir)
                projected_dirs[name] = volume_dir
            target = projected_dirs[name]
            if mount.get("subPath"):
                target = _safe_join(target, str(mount["subPath"]))
            self.mounts[str(mount.get("mountPath", "")).rstrip("/") or "/"] = target

    async def _project_sources(self, sources: list[Any], volume_dir: Path) -> None:
        for source in sources:
            if not isinstance(source, dict):
                continue
            if isinstance(source.get("serviceAccountToken"), dict):
                token_source = source["serviceAccountToken"]
                token = _TokenFile(
                    path=_safe_join(volume_dir, str(token_source.get("path") or "token")),
                    audience=str(token_source.get("audience") or ""),
                    expiration_seconds=int(
                        token_source.get("expirationSeconds") or DEFAULT_TOKEN_EXPIRATION
                    ),
                )
                await self._fetch_token(token)
                self.tokens.append(token)
            for kind in ("configMap", "secret"):
                if isinstance(source.get(kind), dict):
                    await self._project_data(kind, source[kind], volume_dir)
            if isinstance(source.get("downwardAPI"), dict):
                for item in source["downwardAPI"].get("items") or []:
                    field_ref = item.get("fieldRef") if isinstance(item, dict) else None
                    if isinstance(field_ref, dict):
                        value = _field_value(self._pod, str(field_ref.get("fieldPath", "")))
                        path = _safe_join(volume_dir, str(item.get("path")))
                        _write_atomically(path, (value or "").encode())

    async def _project_data(self, kind: str, source: dict[str, Any], volume_dir: Path) -> None:
        resource = "configmaps" if kind == "configMap" else "secrets"
        name = str(source.get("name", ""))
        try:
            obj = await self._client.request(
                "GET", f"/api/v1/namespaces/{self.namespace}/{resource}/{name}"
            )
        except ProjectionError:
            if source.get("optional"):
                return
            raise
        data: dict[str, bytes] = {}
        for key, value in (obj.get("data") or {}).items():
            data[key] = base64.b64decode(value) if kind == "secret" else str(value).encode()
        if kind == "configMap":
            for key, value in (obj.get("binaryData") or {}).items():
                data[key] = base64.b64decode(value)
        items = source.get("items")
        if items:
            for item in items:
                if isinstance(item, dict) and item.get("key") in data:
                    _write_atomically(
                        _safe_join(volume_dir, str(item.get("path"))), data[str(item["key"])]
                    )
        else:
            for key, value in data.items():
                _write_atomically(_safe_join(volume_dir, key), value)

    async def _fetch_token(self, token: _TokenFile) -> None:
        spec: dict[str, Any] = {
            "expirationSeconds": token.expiration_seconds,
            "boundObjectRef": {
                "kind": "Pod",
                "apiVersion": "v1",
                "name": self.name,
                "uid": self.uid,
            },
        }
        if token.audience:
            spec["audiences"] = [token.audience]
        body = {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": spec}
        path = f"/api/v1/namespaces/{self.namespace}/serviceaccounts/{self.service_account}/token"
        issued = datetime.now(UTC)
        response = await self._client.request("POST", path, body)
        status = response.get("status") or {}
        if not status.get("token") or not status.get("expirationTimestamp"):
            raise ProjectionError(f"TokenRequest for {self.service_account} returned no token")
        _write_atomically(token.path, str(status["token"]).encode("ascii"))
        token.issued, token.expires = issued, _parse_time(str(status["expirationTimestamp"]))

    async def keep_fresh(self, token: _TokenFile) -> None:
        """Refresh ``token`` at ``refresh_fraction`` of its life, forever (until cancelled)."""
        while True:
            refresh_at = token.issued + (token.expires - token.issued) * self._refresh_fraction
            # The tool's own refresh timer (the kubelet's 80% rule).
            await asyncio.sleep(max((refresh_at - datetime.now(UTC)).total_seconds(), 0))
            while True:
                try:
                    await self._fetch_token(token)
                    break
                except ProjectionError as exc:
                    if datetime.now(UTC) >= token.expires:
                        log.error("token %s expired and was not refreshed: %s", token.path, exc)
                    else:
                        log.warning("refreshing %s failed, retrying: %s", token.path, exc)
                    await asyncio.sleep(RETRY_SECONDS)

    async def environment(self, base: Mapping[str, str]) -> dict[str, str]:
        env = dict(base)
        defined: dict[str, str] = {}
        for entry in self.container.get("env") or []:
            if not isinstance(entry, dict) or not entry.get("name"):
                continue
            name = str(entry["name"])
            if "valueFrom" in entry:
                value = await self._value_from(entry["valueFrom"])
                if value is None:
                    continue
            else:
                value = _expand(str(entry.get("value", "")), defined)
            defined[name] = value
        for name, value in defined.items():
            env[name] = self.remap(value)
        if self.tokens:
            env[TOKEN_FILE_ENV] = str(self.tokens[0].path)
        env[POD_ROOT_ENV] = str(self._root)
        return env

    def remap(self, value: str) -> str:
        for mount_path in sorted(self.mounts, key=len, reverse=True):
            if value == mount_path:
                return str(self.mounts[mount_path])
            prefix = mount_path if mount_path.endswith("/") else mount_path + "/"
            if value.startswith(prefix):
                return str(self.mounts[mount_path] / value[len(prefix) :])
        return value

    async def _value_from(self, source: Any) -> str | None:
        if not isinstance(source, dict):
            return None
        field_ref = source.get("fieldRef")
        if isinstance(field_ref, dict):
            return _field_value(self._pod, str(field_ref.get("fieldPath", "")))
        for kind, resource in (("configMapKeyRef", "configmaps"), ("secretKeyRef", "secrets")):
            ref = source.get(kind)
            if not isinstance(ref, dict):
                continue
            try:
                obj = await self._client.request(
                    "GET", f"/api/v1/namespaces/{self.namespace}/{resource}/{ref.get('name')}"
                )
            except ProjectionError:
                if ref.get("optional"):
                    return None
                raise
            value = (obj.get("data") or {}).get(str(ref.get("key")))
            if value is None:
                if ref.get("optional"):
                    return None
                raise ProjectionError(
                    f'{resource} "{ref.get("name")}" has no key "{ref.get("key")}"'
                )
            return base64.b64decode(value).decode() if resource == "secrets" else str(value)
        return None


def _sources(volume: dict[str, Any]) -> list[Any] | None:
    """A volume's sources in ``projected`` form; plain configMap/secret/downwardAPI volumes
    are one-source projections. ``None`` for volume types that are not projected."""
    if isinstance(volume.get("projected"), dict):
        sources = volume["projected"].get("sources") or []
        return sources if isinstance(sources, list) else []
    if isinstance(volume.get("secret"), dict):
        secret = dict(volume["secret"])
        secret["name"] = secret.pop("secretName", "")
        return [{"secret": secret}]
    for kind in ("configMap", "downwardAPI"):
        if isinstance(volume.get(kind), dict):
            return [{kind: volume[kind]}]
    return None


def _expand(value: str, defined: Mapping[str, str]) -> str:
    """Kubernetes ``$(VAR)`` expansion: defined names expand, ``$$`` escapes, others stay."""

    def replace(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        return defined.get(match.group(1), match.group(0))

    return _VAR_REFERENCE.sub(replace, value)


def _field_value(pod: dict[str, Any], field_path: str) -> str | None:
    metadata = pod.get("metadata") or {}
    match = re.fullmatch(r"metadata\.(labels|annotations)\['([^']+)'\]", field_path)
    if match:
        return str((metadata.get(match.group(1)) or {}).get(match.group(2), ""))
    simple = {
        "metadata.name": metadata.get("name"),
        "metadata.namespace": metadata.get("namespace"),
        "metadata.uid": metadata.get("uid"),
        "spec.serviceAccountName": (pod.get("spec") or {}).get("serviceAccountName") or "default",
        "spec.nodeName": (pod.get("spec") or {}).get("nodeName") or "",
        "status.podIP": "127.0.0.1",
        "status.hostIP": "127.0.0.1",
    }
    value = simple.get(field_path)
    return None if value is None else str(value)


async def run_as_pod(
    *,
    kubeconfig: Path,
    namespace: str,
    pod: str,
    command: list[str],
    context: str | None = None,
    refresh_fraction: float = REFRESH_FRACTION,
) -> int:
    """Run ``command`` with ``pod``'s projected tokens and env; return its exit code."""
    if not command:
        raise ProjectionError("no command to run")
    if not 0 < refresh_fraction < 1:
        raise ProjectionError("refresh_fraction must be between 0 and 1")
    connection = _load_connection(kubeconfig, context)
    root = Path(tempfile.mkdtemp(prefix=f"agentauth-{pod}-"))
    refreshers: list[asyncio.Task[None]] = []
    loop = asyncio.get_running_loop()
    installed: list[signal.Signals] = []
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
            client = _Client(connection, session)
            pod_object = await client.request("GET", f"/api/v1/namespaces/{namespace}/pods/{pod}")
            projector = _Projector(
                client=client, pod=pod_object, root=root, refresh_fraction=refresh_fraction
            )
            await projector.project()
            refreshers.extend(
                asyncio.create_task(projector.keep_fresh(token)) for token in projector.tokens
            )
            env = await projector.environment(os.environ)
            try:
                process = await asyncio.create_subprocess_exec(*command, env=env)
            except OSError as exc:
                raise ProjectionError(f"cannot run {command[0]}: {exc}") from exc
            for signum in _FORWARDED_SIGNALS:
                loop.add_signal_handler(signum, process.send_signal, signum)
                installed.append(signum)
            code = await process.wait()
    finally:
        for signum in installed:
            loop.remove_signal_handler(signum)
        for task in refreshers:
            task.cancel()
        await asyncio.gather(*refreshers, return_exceptions=True)
        shutil.rmtree(root, ignore_errors=True)
    return 128 - code if code < 0 else code


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="agentauth dev run-as-pod",
        usage="agentauth dev run-as-pod POD [-n NS] [--kubeconfig PATH] [--context NAME] -- CMD...",
        description="Run a command locally with a pod's projected service-account tokens and env.",
    )
    parser.add_argument("pod", help="the pod to impersonate")
    parser.add_argument("-n", "--namespace", default="default")
    parser.add_argument(
        "--kubeconfig",
        type=Path,
        default=Path(os.environ.get("KUBECONFIG", str(Path.home() / ".kube" / "config"))),
    )
    parser.add_argument("--context", default=None)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """``agentauth dev run-as-pod POD [-n NS] [--kubeconfig P] [--context C] -- CMD...``.

    ``argv`` is everything after ``run-as-pod``; the command is everything after ``--`` (split
    here rather than by argparse, whose REMAINDER would swallow the options of the command).
    """
    args_list = list(sys.argv[1:] if argv is None else argv)
    if "--" in args_list:
        split = args_list.index("--")
        options, command = args_list[:split], args_list[split + 1 :]
    else:
        options, command = args_list, []
    args = build_parser().parse_args(options)
    if not command:
        print("agentauth dev run-as-pod: a command is required after --", file=sys.stderr)
        return 2
    try:
        return asyncio.run(
            run_as_pod(
                kubeconfig=args.kubeconfig,
                namespace=args.namespace,
                pod=args.pod,
                command=command,
                context=args.context,
            )
        )
    except ProjectionError as exc:
        print(f"agentauth dev run-as-pod: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
