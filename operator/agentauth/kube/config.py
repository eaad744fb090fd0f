"""Connection settings for the Kubernetes API: from a kubeconfig file or in-cluster.

Guarantees: TLS verification is always on unless the kubeconfig says
``insecure-skip-tls-verify: true``; the cluster CA from the kubeconfig (file or inline data) or the
in-cluster ``ca.crt`` is the only trust anchor added; a bearer token file (in-cluster, or a
kubeconfig ``tokenFile``) is re-read as soon as the file changes (kubelet rotation, a restarted dev
cluster writing a new one) and at least every ``TOKEN_REFRESH`` seconds, and at once after
:meth:`KubeConfig.refresh_token` (what the client calls on a 401); a file caught empty mid-write
never replaces a token already read.
"""

from __future__ import annotations

import base64
import os
import ssl
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

IN_CLUSTER_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")
TOKEN_REFRESH = 60.0


class ConfigError(Exception):
    """The kubeconfig or in-cluster environment is incomplete or malformed."""


@dataclass
class KubeConfig:
    server: str
    ca_data: bytes | None = None
    ca_file: Path | None = None
    insecure: bool = False
    token: str | None = None
    token_file: Path | None = None
    client_cert_file: Path | None = None
    client_key_file: Path | None = None
    namespace: str = "default"
    _token_cache: tuple[float, tuple[int, int, int], str] | None = field(default=None, repr=False)

    def ssl_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context()
        if self.insecure:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        if self.ca_file is not None:
            context.load_verify_locations(cafile=str(self.ca_file))
        if self.ca_data is not None:
            context.load_verify_locations(cadata=self.ca_data.decode("ascii"))
        if self.client_cert_file is not None:
            context.load_cert_chain(
                str(self.client_cert_file),
                str(self.client_key_file) if self.client_key_file else None,
            )
        return context

    def bearer_token(self) -> str | None:
        if self.token is not None:
            return self.token
        if self.token_file is None:
            return None
        now = time.monotonic()
        cached = self._token_cache
        try:
            stat = self.token_file.stat()
            identity = (stat.st_ino, stat.st_mtime_ns, stat.st_size)
        except OSError:
            if cached is not None:
                return cached[2]  # the file is being replaced: keep the token we have
            raise
        if cached is None or cached[1] != identity or now - cached[0] > TOKEN_REFRESH:
            token = self.token_file.read_text().strip()
            if not token and cached is not None:
                return cached[2]  # caught mid-write: the next call reads the complete file
            self._token_cache = (now, identity, token)
            return token
        return cached[2]

    def refresh_token(self) -> bool:
        """Forget the cached token file contents; True if a token file will be re-read (so a
        request refused with 401 is worth retrying once)."""
        if self.token is not None or self.token_file is None:
            return False
        previous = self._token_cache[2] if self._token_cache is not None else None
        self._token_cache = None
        try:
            return self.bearer_token() != previous
        except OSError:
            return False


def _data_or_file(entry: dict[str, Any], key: str, base: Path) -> tuple[bytes | None, Path | None]:
    data = entry.get(f"{key}-data")
    if data:
        return base64.b64decode(data), None
    path = entry.get(key)
    if path:
        resolved = Path(path) if Path(path).is_absolute() else base / path
        return None, resolved
    return None, None


def _materialise(data: bytes) -> Path:
    # ssl.load_cert_chain only accepts files; the file lives as long as the process.
    handle = tempfile.NamedTemporaryFile(prefix="agentauth-kube-", delete=False)  # noqa: SIM115
    with handle:
        handle.write(data)
    os.chmod(handle.name, 0o600)
    return Path(handle.name)


def from_kubeconfig(path: Path, *, context: str | None = None) -> KubeConfig:
    """Load ``context`` (default: current-context) from the kubeconfig at ``path``."""
    try:
        document = yaml.safe_load(path.read_text())
        context_name = context or document["current-context"]
        ctx = next(c["context"] for c in document["contexts"] if c["name"] == context_name)
        cluster = next(c["cluster"] for c in document["clusters"] if c["name"] == ctx["cluster"])
        user = next(u["user"] for u in document["users"] if u["name"] == ctx["user"])
    except (OSError, KeyError, StopIteration, TypeError, yaml.YAMLError) as exc:
        raise ConfigError(f"cannot use kubeconfig {path}: {exc!r}") from exc
    base = path.parent
    ca_data, ca_file = _data_or_file(cluster, "certificate-authority", base)
    cert_data, cert_file = _data_or_file(user, "client-certificate", base)
    key_data, key_file = _data_or_file(user, "client-key", base)
    token_file = user.get("tokenFile")
    return KubeConfig(
        server=str(cluster["server"]).rstrip("/"),
        ca_data=ca_data,
        ca_file=ca_file,
        insecure=bool(cluster.get("insecure-skip-tls-verify", False)),
        token=user.get("token"),
        token_file=Path(token_file) if token_file else None,
        client_cert_file=_materialise(cert_data) if cert_data else cert_file,
        client_key_file=_materialise(key_data) if key_data else key_file,
        namespace=ctx.get("namespace", "default"),
    )


def in_cluster(directory: Path = IN_CLUSTER_DIR) -> KubeConfig:
    host = os.environ.get("KUBERNETES_SERVICE_HOST")
    port = os.environ.get("KUBERNETES_SERVICE_PORT", "443")
    if not host or not (directory / "token").exists():
        raise ConfigError("not running in a Kubernetes pod (no service host or token)")
    if ":" in host:
        host = f"[{host}]"
    namespace_file = directory / "namespace"
    return KubeConfig(
        server=f"https://{host}:{port}",
        ca_file=directory / "ca.crt",
        token_file=directory / "token",
        namespace=namespace_file.read_text().strip() if namespace_file.exists() else "default",
    )


def load(kubeconfig: Path | None = None, *, context: str | None = None) -> KubeConfig:
    """``kubeconfig`` if given, else ``$KUBECONFIG``, else in-cluster, else ``~/.kube/config``."""
    if kubeconfig is not None:
        return from_kubeconfig(kubeconfig, context=context)
    env = os.environ.get("KUBECONFIG")
    if env:
        return from_kubeconfig(Path(env.split(os.pathsep)[0]), context=context)
    try:
        return in_cluster()
    except ConfigError:
        return from_kubeconfig(Path.home() / ".kube" / "config", context=context)
