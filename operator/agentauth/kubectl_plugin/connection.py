"""Connect to the cluster the way kubectl does: kubeconfig merging, current context, overrides.

kubectl passes no flags that come before a plugin's name, so every subcommand takes the usual
connection flags after it. Guarantees, matching kubectl's loading rules:

- The kubeconfig is ``--kubeconfig`` if given, else every file in ``KUBECONFIG`` (separated by
  ``os.pathsep``; missing files skipped) merged so that the first file defining a cluster, user
  or context name wins, and the first ``current-context`` set wins; else ``~/.kube/config``.
- Relative file paths inside a kubeconfig are resolved against that file's directory.
- ``--context`` picks the context; ``--cluster`` and ``--user`` replace the context's; ``--server``,
  ``--certificate-authority`` and ``--insecure-skip-tls-verify`` replace the cluster's; ``--token``
  replaces the user's credentials.
- The namespace is ``-n/--namespace``, else the context's namespace, else ``default``.
- Every API call has a deadline: ``--request-timeout`` (kubectl's syntax: ``30s``, ``2m``, or
  plain seconds; default :data:`DEFAULT_REQUEST_TIMEOUT`), for connecting, the TLS handshake and
  the answer together. Unlike kubectl, ``0`` (no deadline) is refused: a person at a terminal is
  owed an answer, and a frozen API server must not hang ``kubectl agentauth approve``.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client as k8s_client
from kubernetes.config import kube_config

DEFAULT_REQUEST_TIMEOUT = 30.0
"""Seconds an API call may take when ``--request-timeout`` is not given."""
_DURATION = re.compile(r"^(?:(?P<plain>\d+(?:\.\d+)?)|(?P<parts>(?:\d+(?:\.\d+)?(?:ms|s|m|h))+))$")
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h)")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}

_PATH_KEYS = {
    "cluster": ("certificate-authority",),
    "user": ("client-certificate", "client-key", "tokenFile"),
}


class KubeconfigError(Exception):
    """The kubeconfig cannot produce a connection; the message says what to fix."""


@dataclasses.dataclass(frozen=True)
class Connection:
    """An API client for the selected context and the namespace commands default to."""

    api_client: k8s_client.ApiClient
    namespace: str
    context: str
    cluster: dict[str, Any]
    user: str
    request_timeout: float = DEFAULT_REQUEST_TIMEOUT


class DeadlineApiClient(k8s_client.ApiClient):  # type: ignore[misc]
    """An ``ApiClient`` whose every request has a deadline (``request_timeout`` seconds, unless
    a call passes its own ``_request_timeout``): the generated API classes pass none."""

    def __init__(self, configuration: k8s_client.Configuration, *, request_timeout: float) -> None:
        super().__init__(configuration)
        self.request_timeout = request_timeout

    def request(self, method: str, url: str, *args: Any, **kwargs: Any) -> Any:
        if not kwargs.get("_request_timeout"):
            kwargs["_request_timeout"] = self.request_timeout
        return super().request(method, url, *args, **kwargs)


def parse_request_timeout(text: str | None) -> float:
    """Seconds from a ``--request-timeout`` value (``30s``, ``1m30s``, ``500ms``, ``10``)."""
    if text is None:
        return DEFAULT_REQUEST_TIMEOUT
    match = _DURATION.match(text.strip())
    if match is None:
        raise KubeconfigError(
            f"--request-timeout {text!r} is not a duration: use a number of seconds or units "
            "such as 30s, 2m, 1m30s"
        )
    if match["plain"] is not None:
        seconds = float(match["plain"])
    else:
        seconds = sum(
            float(number) * _UNIT_SECONDS[unit]
            for number, unit in _DURATION_PART.findall(match["parts"])
        )
    if seconds <= 0:
        raise KubeconfigError(
            "--request-timeout must be more than 0: every call to the API server has a deadline"
        )
    return seconds


def add_flags(parser: argparse.ArgumentParser) -> None:
    """Add kubectl's connection flags to a subcommand's parser."""
    group = parser.add_argument_group("connection (as kubectl)")
    group.add_argument("--kubeconfig", help="path to the kubeconfig file to use")
    group.add_argument("--context", help="the kubeconfig context to use")
    group.add_argument("--cluster", help="the kubeconfig cluster to use")
    group.add_argument("--user", help="the kubeconfig user to use")
    group.add_argument("-n", "--namespace", help="the namespace (default: the context's)")
    group.add_argument("--token", help="bearer token for authentication to the API server")
    group.add_argument("-s", "--server", help="the address and port of the API server")
    group.add_argument(
        "--certificate-authority", help="path to a CA certificate file for the API server"
    )
    group.add_argument(
        "--request-timeout",
        help="how long to wait for each API call, e.g. 30s, 2m "
        f"(default {DEFAULT_REQUEST_TIMEOUT:g}s; 0 is not allowed)",
    )
    group.add_argument(
        "--insecure-skip-tls-verify",
        action="store_true",
        default=None,
        help="do not verify the API server's certificate (insecure)",
    )


def kubeconfig_paths(explicit: str | None) -> list[Path]:
    """The kubeconfig files to merge, in precedence order."""
    if explicit:
        return [Path(explicit).expanduser()]
    env = os.environ.get("KUBECONFIG", "")
    if env:
        return [Path(item).expanduser() for item in env.split(os.pathsep) if item]
    return [Path.home() / ".kube" / "config"]


def merge_kubeconfigs(paths: list[Path], *, explicit: bool) -> dict[str, Any]:
    """Merge kubeconfig files with kubectl's first-wins rules; paths made absolute."""
    merged: dict[str, Any] = {"clusters": [], "users": [], "contexts": []}
    seen: dict[str, set[str]] = {"clusters": set(), "users": set(), "contexts": set()}
    for path in paths:
        if not path.exists():
            if explicit:
                raise KubeconfigError(f"kubeconfig file {path} does not exist")
            continue
        try:
            document = yaml.safe_load(path.read_text()) or {}
        except (OSError, yaml.YAMLError) as error:
            raise KubeconfigError(f"cannot read kubeconfig {path}: {error}") from error
        if not isinstance(document, dict):
            raise KubeconfigError(f"kubeconfig {path} is not a kubeconfig document")
        base = path.resolve().parent
        if "current-context" not in merged and document.get("current-context"):
            merged["current-context"] = document["current-context"]
        for section, inner in (("clusters", "cluster"), ("users", "user"), ("contexts", "context")):
            for entry in document.get(section) or []:
                name = entry.get("name")
                if not name or name in seen[section]:
                    continue
                seen[section].add(name)
                body = dict(entry.get(inner) or {})
                for key in _PATH_KEYS.get(inner, ()):
                    if isinstance(body.get(key), str) and not os.path.isabs(body[key]):
                        body[key] = str(base / body[key])
                merged[section].append({"name": name, inner: body})
    return merged


def connect(options: argparse.Namespace) -> Connection:
    """Build an API client from the parsed connection flags and the kubeconfig."""
    request_timeout = parse_request_timeout(getattr(options, "request_timeout", None))
    paths = kubeconfig_paths(options.kubeconfig)
    merged = merge_kubeconfigs(paths, explicit=bool(options.kubeconfig))
    contexts = {entry["name"]: entry["context"] for entry in merged["contexts"]}
    clusters = {entry["name"]: entry["cluster"] for entry in merged["clusters"]}
    users = {entry["name"]: entry["user"] for entry in merged["users"]}
    context_name = options.context or merged.get("current-context") or ""
    if options.context and options.context not in contexts:
        raise KubeconfigError(
            f"context {options.context!r} is not in the kubeconfig; "
            f"known contexts: {', '.join(sorted(contexts)) or 'none'}"
        )
    context = dict(contexts.get(context_name, {}))
    if not context and not options.server:
        where = ", ".join(str(path) for path in paths)
        raise KubeconfigError(
            f"no current context in the kubeconfig ({where}): pass --context, or --server with "
            "--token, or run 'kubectl config use-context NAME'"
        )
    cluster_name = options.cluster or context.get("cluster") or ""
    user_name = options.user or context.get("user") or ""
    if options.cluster and options.cluster not in clusters:
        raise KubeconfigError(f"cluster {options.cluster!r} is not in the kubeconfig")
    if options.user and options.user not in users:
        raise KubeconfigError(f"user {options.user!r} is not in the kubeconfig")
    cluster = dict(clusters.get(cluster_name, {}))
    user = dict(users.get(user_name, {}))
    if options.server:
        cluster["server"] = options.server
    if options.certificate_authority:
        cluster.pop("certificate-authority-data", None)
        cluster["certificate-authority"] = str(Path(options.certificate_authority).resolve())
    if options.insecure_skip_tls_verify:
        cluster.pop("certificate-authority-data", None)
        cluster.pop("certificate-authority", None)
        cluster["insecure-skip-tls-verify"] = True
    if options.token:
        user = {"token": options.token}
    if not cluster.get("server"):
        raise KubeconfigError(
            f"context {context_name!r} names cluster {cluster_name!r}, which has no server "
            "address in the kubeconfig"
        )
    single = {
        "apiVersion": "v1",
        "kind": "Config",
        "current-context": "selected",
        "clusters": [{"name": "selected", "cluster": cluster}],
        "users": [{"name": "selected", "user": user}],
        "contexts": [{"name": "selected", "context": {"cluster": "selected", "user": "selected"}}],
    }
    configuration = k8s_client.Configuration()
    try:
        kube_config.KubeConfigLoader(config_dict=single).load_and_set(configuration)
    except kube_config.ConfigException as error:
        raise KubeconfigError(f"kubeconfig context {context_name!r}: {error}") from error
    # One attempt only: a person at a terminal wants the error now, not after urllib3's retries.
    configuration.retries = 0
    namespace = options.namespace or context.get("namespace") or "default"
    return Connection(
        api_client=DeadlineApiClient(configuration, request_timeout=request_timeout),
        namespace=namespace,
        context=context_name,
        cluster=cluster,
        user=user_name,
        request_timeout=request_timeout,
    )
