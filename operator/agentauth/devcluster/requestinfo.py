"""Turn an HTTP method, path and query into the attributes an authorizer decides on.

Follows Kubernetes' ``RequestInfoFactory``: paths under ``/api/v1`` and ``/apis/GROUP/VERSION``
with at least a resource segment are resource requests; everything else (discovery, ``/version``,
``/openapi``, health) is a non-resource request whose verb is the lower-cased HTTP method.
"""

from __future__ import annotations

from collections.abc import Mapping

from agentauth.devcluster import types

_METHOD_VERBS = {"POST": "create", "PUT": "update", "PATCH": "patch"}


def parse_bool(text: str) -> bool:
    """Go's ``strconv.ParseBool`` truthy values, as the real server reads query flags."""
    return text in ("1", "t", "T", "true", "TRUE", "True")


def parse(method: str, path: str, query: Mapping[str, str]) -> types.RequestAttributes:
    """Request attributes for ``method path?query`` (``path`` without the query string)."""
    parts = [part for part in path.strip("/").split("/") if part]
    non_resource = types.RequestAttributes(
        verb=method.lower(), resource_request=False, path=path or "/"
    )
    if not parts:
        return non_resource
    if parts[0] == "api" and len(parts) >= 3:
        group, version, rest = "", parts[1], parts[2:]
    elif parts[0] == "apis" and len(parts) >= 4:
        group, version, rest = parts[1], parts[2], parts[3:]
    else:
        return non_resource

    watch_prefix = False
    if rest and rest[0] == "watch":
        # Deprecated ``/watch/`` path prefix: the same as ``?watch=true``.
        watch_prefix = True
        rest = rest[1:]
    namespace = ""
    # /namespaces/NS/RESOURCE... addresses namespaced objects; /namespaces[/NAME[/SUB]] alone
    # addresses the namespace objects themselves.
    if len(rest) >= 3 and rest[0] == "namespaces" and rest[2] not in ("status", "finalize"):
        namespace, rest = rest[1], rest[2:]
    if not rest:
        return non_resource
    resource = rest[0]
    name = rest[1] if len(rest) >= 2 else ""
    subresource = "/".join(rest[2:]) if len(rest) >= 3 else ""
    if resource == "namespaces" and name:
        namespace = name

    if method == "GET" or method == "HEAD":
        if watch_prefix or parse_bool(query.get("watch", "")):
            verb = "watch"
        else:
            verb = "get" if name else "list"
    elif method == "DELETE":
        verb = "delete" if name else "deletecollection"
    else:
        verb = _METHOD_VERBS.get(method, method.lower())
    if verb in ("list", "watch") and not name:
        field_selector = query.get("fieldSelector", "")
        # A list or watch of one named object is authorised against that name, like upstream.
        for term in field_selector.split(","):
            key, sep, value = term.partition("=")
            if sep and key.strip() == "metadata.name" and not value.startswith("="):
                name = value.strip()
    return types.RequestAttributes(
        verb=verb,
        resource_request=True,
        path=path,
        api_group=group,
        api_version=version,
        resource=resource,
        subresource=subresource,
        namespace=namespace,
        name=name,
    )
