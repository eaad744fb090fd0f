"""``kubectl agentauth requests --watch``: the list, then a line per change (``kubectl get -w``).

Guarantees: the first lines are what ``requests`` prints (pending only unless ``--all``); after
that every added, changed or deleted AccessRequest in scope (the namespace, or all with ``-A``)
prints one row, flushed at once, including the decisions that take a request out of Pending. An
expired watch (HTTP 410) is resumed from a fresh list without printing the same state twice. It
runs until interrupted (exit 130) or, with ``--watch-timeout``, until that long has passed (exit
0).
"""

from __future__ import annotations

import datetime
import time
from typing import Any

from kubernetes import watch as k8s_watch
from kubernetes.client import exceptions as k8s_exceptions
from urllib3 import exceptions as urllib3_exceptions

from agentauth.domain.models import common
from agentauth.kubectl_plugin import commands, output
from agentauth.kubectl_plugin.errors import PluginError, from_api_error, from_connection_error

HEADERS = ["NAME", "AGENT", "PHASE", "CAPABILITIES", "APPROVALS", "EXPIRES", "AGE", "JUSTIFICATION"]
# Fixed widths: rows arrive one at a time, so columns cannot be sized from the whole table.
WIDTHS = [28, 20, 9, 28, 10, 14, 6]


def row(item: dict[str, Any], *, now: datetime.datetime, deleted: bool = False) -> list[str]:
    meta, spec, status = item["metadata"], item.get("spec") or {}, item.get("status") or {}
    phase = "Deleted" if deleted else (status.get("phase") or "New")
    if status.get("phase") == "Approved":
        expires = "until " + output.until(status.get("grantedUntil"), now=now)
    elif status.get("phase") == "Pending":
        expires = output.until(status.get("expiresAt"), now=now)
    else:
        expires = "-"
    return [
        meta.get("name", ""),
        spec.get("agent", ""),
        phase,
        ",".join(spec.get("capabilities", [])),
        str(len(status.get("approvals") or [])),
        expires,
        output.age(meta.get("creationTimestamp"), now=now),
        spec.get("justification", ""),
    ]


def _cell(text: str, width: int) -> str:
    flat = " ".join(str(text).split())  # untrusted text stays on one line
    if len(flat) > width:
        flat = flat[: width - len(output.ELLIPSIS)] + output.ELLIPSIS
    return flat.ljust(width)


def _line(cells: list[str], *, namespace: str | None) -> str:
    """One row in fixed-width columns; the last (the justification) takes what is left."""
    widths = ([20] if namespace is not None else []) + WIDTHS
    values = ([namespace] if namespace is not None else []) + cells
    fixed = [_cell(value, width) for value, width in zip(values[:-1], widths, strict=True)]
    rest = max(20, output.terminal_width() - sum(widths) - 3 * len(fixed))
    return "   ".join([*fixed, _cell(values[-1], rest)]).rstrip()


def watch_requests(ctx: commands.Context) -> int:
    options = ctx.options
    every = options.all_namespaces
    api = ctx.custom()
    namespace = None if every else ctx.namespace
    if every:
        lister: Any = api.list_cluster_custom_object
        arguments: tuple[Any, ...] = (common.GROUP, common.VERSION, "accessrequests")
    else:
        lister = api.list_namespaced_custom_object
        arguments = (common.GROUP, common.VERSION, ctx.namespace, "accessrequests")
    deadline = time.monotonic() + options.watch_timeout if options.watch_timeout else None

    def emit(item: dict[str, Any], *, deleted: bool = False) -> None:
        now = datetime.datetime.now(datetime.UTC)
        ns = item["metadata"].get("namespace", "") if every else None
        ctx.print(_line(row(item, now=now, deleted=deleted), namespace=ns))
        ctx.stdout.flush()

    ctx.print(_line(HEADERS, namespace="NAMESPACE" if every else None))
    seen: dict[tuple[str, str], str] = {}
    first = True
    while True:
        listing = ctx.call(
            lister, *arguments, action="list", what="access requests", namespace=namespace
        )
        items = sorted(listing.get("items", []), key=commands._request_sort_key)
        for item in items:
            meta = item["metadata"]
            key = (meta.get("namespace", ""), meta.get("name", ""))
            version = meta.get("resourceVersion", "")
            pending = (item.get("status") or {}).get("phase") in ("Pending", None)
            if seen.get(key) != version and (options.all or pending or not first):
                emit(item)
            seen[key] = version
        first = False
        resource_version = listing.get("metadata", {}).get("resourceVersion")
        stream = k8s_watch.Watch()
        remaining = None if deadline is None else max(1, int(deadline - time.monotonic()))
        try:
            for event in stream.stream(
                lister,
                *arguments,
                resource_version=resource_version,
                timeout_seconds=remaining,
                allow_watch_bookmarks=False,
            ):
                item = event["object"]
                if event["type"] == "ERROR":
                    if (item or {}).get("code") == 410:
                        break
                    raise PluginError(f"the watch failed: {(item or {}).get('message', item)}")
                meta = item["metadata"]
                key = (meta.get("namespace", ""), meta.get("name", ""))
                if event["type"] == "DELETED":
                    seen.pop(key, None)
                    emit(item, deleted=True)
                elif seen.get(key) != meta.get("resourceVersion"):
                    seen[key] = meta.get("resourceVersion", "")
                    emit(item)
        except k8s_exceptions.ApiException as error:
            if error.status != 410:
                raise from_api_error(
                    error,
                    action="watch",
                    what="access requests",
                    namespace=namespace,
                    context=ctx.conn.context,
                ) from error
        except (urllib3_exceptions.HTTPError, OSError) as error:
            raise from_connection_error(
                error, server=str(ctx.conn.cluster.get("server")), context=ctx.conn.context
            ) from error
        finally:
            stream.stop()
        if deadline is not None and time.monotonic() >= deadline:
            return 0


def cmd_requests(ctx: commands.Context) -> int:
    """``requests``: the list, or with ``--watch`` the list and then every change."""
    if ctx.options.watch:
        if ctx.options.output:
            raise PluginError("--watch prints rows; it cannot be combined with -o")
        return watch_requests(ctx)
    if ctx.options.watch_timeout is not None:
        raise PluginError("--watch-timeout needs --watch")
    return commands.cmd_requests(ctx)
