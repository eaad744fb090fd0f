"""Turn failures into sentences a person can act on, and a non-zero exit status.

Guarantees: every failure the plugin anticipates is a :class:`PluginError` with a message that
says what went wrong and what to do; API errors are translated by :func:`from_api_error`, which
keeps the API server's (or our admission webhook's) own explanation and adds the missing context
(which object, which user, which permission, which command to run next).
"""

from __future__ import annotations

import json
import re
from typing import Any

from kubernetes.client import exceptions as k8s_exceptions
from urllib3 import exceptions as urllib3_exceptions

_WEBHOOK_PREFIX = re.compile(r'^admission webhook "[^"]+" denied the request:\s*')
_FORBIDDEN = re.compile(
    r'User "(?P<user>[^"]*)" cannot (?P<verb>\S+) resource "(?P<resource>[^"]+)"'
    r'(?: in API group "(?P<group>[^"]*)")?'
    r'(?: in the namespace "(?P<namespace>[^"]*)")?'
)


class PluginError(Exception):
    """A failure to report on stderr as ``error: <message>``, exiting with ``exit_code``."""

    def __init__(self, message: str, *, exit_code: int = 1) -> None:
        super().__init__(message)
        self.message = message
        self.exit_code = exit_code


def _status_body(error: k8s_exceptions.ApiException) -> dict[str, Any]:
    try:
        body = json.loads(error.body or "")
    except (TypeError, ValueError):
        return {}
    return body if isinstance(body, dict) else {}


def is_admission_denial(error: k8s_exceptions.ApiException) -> bool:
    """Whether an admission webhook refused the write (its 409 is final, not a write race)."""
    message = str(_status_body(error).get("message") or "").strip()
    return _WEBHOOK_PREFIX.match(message) is not None


def from_api_error(
    error: k8s_exceptions.ApiException,
    *,
    action: str,
    what: str,
    namespace: str | None,
    context: str,
) -> PluginError:
    """Explain ``error``, raised while trying to ``action`` (``approve``) ``what``."""
    body = _status_body(error)
    message = str(body.get("message") or error.reason or "").strip()
    code = error.status or 0
    where = f" in namespace {namespace!r}" if namespace else ""
    webhook = _WEBHOOK_PREFIX.match(message)
    if webhook:
        # agentauth's webhook already says who may not do what, and why: print it as is.
        return PluginError(message[webhook.end() :])
    if code == 401:
        return PluginError(
            f"the API server did not accept your credentials (context {context!r}): log in "
            "again, or pass a valid --token"
        )
    if code == 403:
        forbidden = _FORBIDDEN.search(message)
        if forbidden:
            group = forbidden["group"] or ""
            resource = forbidden["resource"] + (f".{group}" if group else "")
            scope = f" in namespace {forbidden['namespace']!r}" if forbidden["namespace"] else ""
            return PluginError(
                f"cannot {action} {what}: user {forbidden['user']!r} is not allowed to "
                f"{forbidden['verb']} {resource}{scope}; ask a cluster admin for a Role that "
                f"grants it (for approvers: bind the ClusterRole 'agentauth-approver')"
            )
        return PluginError(f"cannot {action} {what}: {message or 'forbidden'}")
    if code == 404:
        details = body.get("details") or {}
        if details.get("name"):
            return PluginError(
                f"{what} not found{where}; list them with 'kubectl agentauth requests"
                f"{' -n ' + namespace if namespace else ''} --all'"
                if what.startswith("access request")
                else f"{what} not found{where}"
            )
        return PluginError(
            f"cannot {action} {what}: the API server does not serve this resource; are the "
            "agentauth CRDs installed? (agentauth crds | kubectl apply -f -)"
        )
    if code == 409:
        return PluginError(
            f"cannot {action} {what}: it changed while we were writing; run the command again"
        )
    if code == 422:
        return PluginError(f"cannot {action} {what}: the API server rejected it: {message}")
    return PluginError(f"cannot {action} {what}: API error {code}: {message or error.reason}")


def _timed_out(error: BaseException) -> bool:
    cause: object = error
    for _ in range(4):  # urllib3 wraps: MaxRetryError(reason=ConnectTimeoutError(...)), ...
        if isinstance(cause, TimeoutError | urllib3_exceptions.TimeoutError):
            return True
        cause = getattr(cause, "reason", None)
    return False


def from_connection_error(
    error: Exception,
    *,
    server: str,
    context: str,
    action: str | None = None,
    what: str | None = None,
    timeout: float | None = None,
) -> PluginError:
    """Explain a failure to reach the API server at all (or to get its answer in time, while
    trying to ``action`` ``what`` with a ``timeout`` of that many seconds)."""
    if _timed_out(error):
        doing = f" to {action} {what}" if action and what else ""
        limit = f" within {timeout:g}s" if timeout else ""
        return PluginError(
            f"timed out waiting for the API server at {server} (context {context!r}){doing}: "
            f"no answer{limit}; the cluster may be down or overloaded; try again, or allow "
            "longer with --request-timeout"
        )
    reason = str(getattr(error, "reason", None) or error)
    if "CERTIFICATE_VERIFY_FAILED" in reason or "SSL" in reason:
        return PluginError(
            f"cannot verify the API server's certificate at {server} (context {context!r}): "
            "check the cluster's certificate-authority in your kubeconfig or pass "
            "--certificate-authority"
        )
    return PluginError(
        f"cannot reach the API server at {server} (context {context!r}): {reason}; check that "
        "the cluster is running and the kubeconfig points at it"
    )
