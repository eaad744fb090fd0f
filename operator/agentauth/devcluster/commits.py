"""The one place a created or updated object reaches the store, and what that sets off.

:func:`commit` gives the object the next ``resourceVersion`` and stores it (the store notifies
the watch hub); a committed CRD is served at once and a new namespace gets its ``default``
ServiceAccount, as kube-apiserver's controllers do. Removal is in :mod:`deletion`.
"""

from __future__ import annotations

from typing import Any

from agentauth.devcluster import context, resources, storage, strategy


def commit(
    server: context.Server,
    rt: resources.ResourceType,
    *,
    key: storage.ObjectKey,
    obj: dict[str, Any],
    event_type: str,
    deferred: bool = False,
) -> storage.Entry:
    """Store ``obj`` at the next version. ``deferred`` (request handlers): join the store's group
    commit, which :func:`routing.handle` awaits before answering; CRDs and Namespaces, whose
    commit sets off more here, are always committed at once."""
    obj["metadata"]["resourceVersion"] = str(server.store.next_version())
    deferred = deferred and rt.group != "apiextensions.k8s.io" and rt.plural != "namespaces"
    entry = server.store.put(key, obj, event_type=event_type, deferred=deferred)
    if rt.group == "apiextensions.k8s.io":
        register_crd(server.registry, obj)
    elif rt.group == "" and rt.plural == "namespaces" and event_type == "ADDED":
        ensure_default_service_account(server, obj["metadata"]["name"])
    return entry


def register_crd(registry: resources.Registry, crd: dict[str, Any]) -> None:
    spec = crd.get("spec") or {}
    names = spec.get("names") or {}
    group, plural = str(spec.get("group", "")), str(names.get("plural", ""))
    if group and plural:
        registry.set_custom(group, plural, resources.from_crd(crd))


def ensure_default_service_account(server: context.Server, namespace: str) -> None:
    key = ("", "serviceaccounts", namespace, "default")
    if server.store.get(key) is not None:
        return
    rt = server.registry.by_group_resource("", "serviceaccounts")
    if rt is None:  # pragma: no cover - serviceaccounts is a built-in kind
        return
    obj = {
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "metadata": {"name": "default", "namespace": namespace},
    }
    commit(
        server,
        rt,
        key=key,
        obj=strategy.prepare_create(server.reader, rt, version="v1", obj=obj, namespace=namespace),
        event_type="ADDED",
    )
