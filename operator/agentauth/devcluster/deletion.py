"""Deletion: the delete verbs, finalizers, namespace termination and garbage collection.

An object with finalizers is only marked (``deletionTimestamp``) and removed by the update that
clears its last finalizer; a namespace turns ``Terminating`` and is removed once everything in it
is gone (retried while the store fails, resumed after a restart). Removing an object deletes its
dependents in the background once none of their owners is left (``Foreground`` is treated as
``Background``) or, with ``propagationPolicy: Orphan``, drops the owner reference from them.
Delete preconditions (uid, resourceVersion) are checked and answered as upstream (409).
"""

from __future__ import annotations

import asyncio
import copy
import json
from typing import Any

from aiohttp import web

from agentauth.devcluster import (
    commits,
    context,
    decoding,
    errors,
    protobuf,
    reads,
    resources,
    responses,
    statuses,
    storage,
)


def remove(
    server: context.Server,
    rt: resources.ResourceType,
    *,
    key: storage.ObjectKey,
    obj: dict[str, Any],
    orphan: bool = False,
) -> dict[str, Any]:
    final = copy.deepcopy(obj)
    final["metadata"]["resourceVersion"] = str(server.store.next_version())
    server.store.remove(key, final)
    uid = final["metadata"].get("uid", "")
    if rt.group == "apiextensions.k8s.io":
        unregister_crd(server, final)
    if uid:
        if orphan:
            orphan_dependents(server, uid)
        else:
            server.spawn(collect_dependents(server, uid))
    return final


def unregister_crd(server: context.Server, crd: dict[str, Any]) -> None:
    spec = crd.get("spec") or {}
    group, plural = str(spec.get("group", "")), str((spec.get("names") or {}).get("plural"))
    served = server.registry.by_group_resource(group, plural)
    server.registry.set_custom(group, plural, None)
    if served is None:
        return
    for namespace, name in server.store.keys(group, plural):
        key = (group, plural, namespace, name)
        found = server.store.get(key)
        if found is not None:
            remove(server, served, key=key, obj=found.obj)


async def collect_dependents(server: context.Server, owner_uid: str) -> None:
    """Background cascade: delete dependents whose owners are all gone."""
    for key in server.store.dependents(owner_uid):
        entry = server.store.get(key)
        rt = server.registry.by_group_resource(key[0], key[1])
        if entry is None or rt is None:
            continue
        owners = entry.obj["metadata"].get("ownerReferences") or []
        if any(server.store.by_uid(o.get("uid", "")) for o in owners):
            continue
        delete_object(server, rt, key=key, obj=entry.obj)


def orphan_dependents(server: context.Server, owner_uid: str) -> None:
    for key in server.store.dependents(owner_uid):
        entry = server.store.get(key)
        rt = server.registry.by_group_resource(key[0], key[1])
        if entry is None or rt is None:
            continue
        updated = copy.deepcopy(entry.obj)
        updated["metadata"]["ownerReferences"] = [
            o for o in updated["metadata"].get("ownerReferences") or () if o.get("uid") != owner_uid
        ]
        if not updated["metadata"]["ownerReferences"]:
            del updated["metadata"]["ownerReferences"]
        commits.commit(server, rt, key=key, obj=updated, event_type="MODIFIED")


def delete_object(
    server: context.Server,
    rt: resources.ResourceType,
    *,
    key: storage.ObjectKey,
    obj: dict[str, Any],
    orphan: bool = False,
) -> tuple[dict[str, Any], bool]:
    """Delete now, or mark for deletion while finalizers remain. Returns (obj, deleted)."""
    metadata = obj["metadata"]
    if rt.group == "" and rt.plural == "namespaces":
        if not metadata.get("deletionTimestamp"):
            updated = copy.deepcopy(obj)
            updated["metadata"]["deletionTimestamp"] = context.now()
            updated["status"] = {"phase": "Terminating"}
            entry = commits.commit(server, rt, key=key, obj=updated, event_type="MODIFIED")
            server.spawn(terminate_namespace(server, key[3]))
            return entry.obj, False
        return obj, False
    if metadata.get("finalizers"):
        if metadata.get("deletionTimestamp"):
            return obj, False
        updated = copy.deepcopy(obj)
        updated["metadata"]["deletionTimestamp"] = context.now()
        updated["metadata"]["deletionGracePeriodSeconds"] = 0
        if rt.tracks_generation:
            updated["metadata"]["generation"] = int(metadata.get("generation") or 1) + 1
        entry = commits.commit(server, rt, key=key, obj=updated, event_type="MODIFIED")
        return entry.obj, False
    return remove(server, rt, key=key, obj=obj, orphan=orphan), True


async def terminate_namespace(server: context.Server, namespace: str) -> None:
    """Namespace lifecycle: delete everything inside, then the namespace itself."""
    if namespace in server.terminating:
        return
    server.terminating.add(namespace)
    pause = 0.02
    try:
        while True:
            remaining = 0
            for rt in list(server.registry):
                if not rt.namespaced or rt.virtual:
                    continue
                for entry in server.store.entries(rt.group, rt.plural, namespace):
                    remaining += 1
                    key = context.object_key(
                        rt, namespace=namespace, name=entry.obj["metadata"]["name"]
                    )
                    if not entry.obj["metadata"].get("deletionTimestamp"):
                        delete_object(server, rt, key=key, obj=entry.obj)
            if remaining == 0:
                break
            # Objects with finalizers wait for their controllers; check again shortly, less
            # often the longer it takes (a finalizer nobody removes must not cost CPU).
            await asyncio.sleep(pause)
            pause = min(pause * 2, 1.0)
        namespace_key = ("", "namespaces", "", namespace)
        namespace_entry = server.store.get(namespace_key)
        namespaces = server.registry.by_group_resource("", "namespaces")
        if namespace_entry is not None and namespaces is not None:
            remove(server, namespaces, key=namespace_key, obj=namespace_entry.obj)
    except storage.StorageError:
        # The store is failing: the namespace stays Terminating; try again in a while.
        asyncio.get_running_loop().call_later(
            1.0, lambda: server.spawn(terminate_namespace(server, namespace))
        )
    finally:
        server.terminating.discard(namespace)


async def delete(server: context.Server, ctx: context.Context) -> web.Response:
    rt = ctx.rt
    raw = await ctx.request.read()
    options: dict[str, Any] = {}
    if raw.strip():
        try:
            if ctx.request.content_type == "application/vnd.kubernetes.protobuf":
                options = protobuf.decode(raw)
            else:
                options = decoding.delete_options(json.loads(raw))
        except ValueError:  # ProtobufError included
            raise errors.bad_request("error decoding DeleteOptions") from None
    policy = ctx.request.query.get("propagationPolicy") or options.get("propagationPolicy") or ""
    if options.get("orphanDependents") is True:
        policy = "Orphan"
    key = context.object_key(rt, namespace=ctx.namespace, name=ctx.name)
    entry = server.store.get(key)
    if entry is None:
        raise errors.not_found(rt, ctx.name)
    preconditions = options.get("preconditions") or {}
    metadata = entry.obj["metadata"]
    if preconditions.get("uid") and preconditions["uid"] != metadata.get("uid"):
        raise errors.conflict(
            rt,
            ctx.name,
            f"Precondition failed: UID in precondition: "
            f"{preconditions['uid']}, UID in object meta: {metadata.get('uid')}",
        )
    if (
        preconditions.get("resourceVersion")
        and preconditions["resourceVersion"] != metadata["resourceVersion"]
    ):
        raise errors.conflict(
            rt,
            ctx.name,
            "Precondition failed: ResourceVersion in precondition: "
            f"{preconditions['resourceVersion']}, ResourceVersion in object meta: "
            f"{metadata['resourceVersion']}",
        )
    await server.admit(
        operation="DELETE",
        attributes=ctx.attributes,
        kind=context.gvk(rt, ctx.version),
        obj=None,
        old_obj=entry.obj,
        user=ctx.user,
        dry_run=ctx.dry_run,
    )
    entry = server.store.get(key)
    if entry is None:
        raise errors.not_found(rt, ctx.name)
    if ctx.dry_run:
        return responses.object_response(ctx, entry)
    obj, deleted = delete_object(server, rt, key=key, obj=entry.obj, orphan=policy == "Orphan")
    if deleted and not rt.custom and rt.plural != "pods":
        success = statuses.success(
            {**errors.details(rt, ctx.name), "uid": obj["metadata"].get("uid", "")}
        )
        return web.Response(body=statuses.encode(success), content_type="application/json")
    return responses.object_response(ctx, obj, status=200 if deleted else 202)


async def delete_collection(server: context.Server, ctx: context.Context) -> web.Response:
    rt = ctx.rt
    selection = reads.request_filter(ctx)
    namespace = ctx.namespace if rt.namespaced and ctx.namespace else None
    deleted: list[dict[str, Any]] = []
    for entry in server.store.entries(*context.stored_as(rt), namespace):
        if not selection.matches(entry.obj):
            continue
        metadata = entry.obj["metadata"]
        key = context.object_key(rt, namespace=metadata.get("namespace", ""), name=metadata["name"])
        await server.admit(
            operation="DELETE",
            attributes=context.with_name(ctx.attributes, metadata["name"]),
            kind=context.gvk(rt, ctx.version),
            obj=None,
            old_obj=entry.obj,
            user=ctx.user,
            dry_run=ctx.dry_run,
        )
        latest = server.store.get(key)
        if latest is None or ctx.dry_run:
            continue
        obj, _ = delete_object(server, rt, key=key, obj=latest.obj)
        deleted.append(obj)
    return responses.json_response(
        {
            "kind": f"{rt.kind}List",
            "apiVersion": rt.api_version(ctx.version),
            "metadata": {"resourceVersion": str(server.store.resource_version)},
            "items": deleted,
        }
    )
