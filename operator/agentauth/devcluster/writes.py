"""The write verbs: create, update (replace), patch and server-side apply.

Each write runs the pipeline in kube-apiserver's order: decode -> mutating admission -> strategy,
defaults and validation (:mod:`strategy`) -> validating admission -> commit (:mod:`commits`).
Webhooks are awaited without holding anything: before committing, the object is re-read and its
``resourceVersion`` compared, so a concurrent write turns into a retry (patch, unconditional
update) or a ``409 Conflict`` (update with a ``resourceVersion``). A no-op update keeps its
``resourceVersion`` and notifies no one; an update that clears the last finalizer of an object
being deleted removes it. Server-side apply to a missing object creates it.
"""

from __future__ import annotations

import copy
import secrets
from typing import Any

from aiohttp import web

from agentauth.devcluster import (
    builtins,
    commits,
    context,
    decoding,
    deletion,
    errors,
    patching,
    responses,
    schema,
    storage,
    strategy,
)
from agentauth.kube import jsontext

_GENERATE_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"
_SUFFIX_LENGTH = 5


def _random_suffix() -> str:
    """Five characters of the alphabet, uniform, as upstream's generateName: one draw from the
    CSPRNG (its base-27 digits) rather than one per character."""
    value = secrets.randbelow(len(_GENERATE_ALPHABET) ** _SUFFIX_LENGTH)
    suffix = []
    for _ in range(_SUFFIX_LENGTH):
        value, digit = divmod(value, len(_GENERATE_ALPHABET))
        suffix.append(_GENERATE_ALPHABET[digit])
    return "".join(suffix)


async def create(
    server: context.Server, ctx: context.Context, *, body: dict[str, Any] | None = None
) -> web.Response:
    if body is None:
        body = decoding.decode_object(ctx, await decoding.read_body(ctx.request))
    rt = ctx.rt
    metadata = body["metadata"]
    if not metadata.get("name"):
        prefix = metadata.get("generateName")
        if prefix:
            metadata["name"] = prefix + _random_suffix()
        else:
            raise errors.invalid(
                rt,
                "",
                [
                    schema.FieldError(
                        "FieldValueRequired",
                        "metadata.name",
                        "Required value: name or generateName is required",
                    )
                ],
            )
    name = str(metadata["name"])
    ctx.name = name
    strategy.check_namespace(server.store, ctx, name=name)
    key = context.object_key(rt, namespace=ctx.namespace, name=name)
    if server.store.get(key) is not None:
        raise errors.already_exists(rt, name)
    store_rt = context.storage_type(server.registry, rt)
    obj = strategy.prepare_create(
        server.reader,
        store_rt,
        version=store_rt.storage_version,
        obj=context.to_storage(ctx, body),
        namespace=ctx.namespace,
    )
    if ctx.managed_fields:
        obj["metadata"]["managedFields"] = ctx.managed_fields
    attributes = context.with_name(ctx.attributes, name)
    webhook_warnings: list[str] = []
    mutated = await server.mutate(
        warnings=webhook_warnings,
        operation="CREATE",
        attributes=attributes,
        kind=context.gvk(rt, ctx.version),
        obj=obj,
        old_obj=None,
        user=ctx.user,
        dry_run=ctx.dry_run,
    )
    if mutated is not None:
        obj = mutated
    # Webhooks may not change identity fields the server owns.
    obj["metadata"]["name"] = name
    if rt.namespaced:
        obj["metadata"]["namespace"] = ctx.namespace
    warnings = strategy.validate(server.registry, ctx, obj=obj, creating=True)
    await server.admit(
        warnings=webhook_warnings,
        operation="CREATE",
        attributes=attributes,
        kind=context.gvk(rt, ctx.version),
        obj=obj,
        old_obj=None,
        user=ctx.user,
        dry_run=ctx.dry_run,
    )
    if server.store.get(key) is not None:
        raise errors.already_exists(rt, name)
    strategy.check_namespace(server.store, ctx, name=name)
    warnings += webhook_warnings
    if ctx.dry_run:
        return responses.object_response(ctx, obj, status=201, warnings=warnings)
    entry = commits.commit(server, store_rt, key=key, obj=obj, event_type="ADDED", deferred=True)
    return responses.object_response(ctx, entry, status=201, warnings=warnings)


async def update(server: context.Server, ctx: context.Context) -> web.Response:
    body = decoding.decode_object(ctx, await decoding.read_body(ctx.request))
    rt = ctx.rt
    if body["metadata"].get("name", ctx.name) != ctx.name:
        raise errors.bad_request(
            "the name of the object "
            f"({body['metadata'].get('name')}) does not match the name on the "
            f"URL ({ctx.name})"
        )
    body["metadata"]["name"] = ctx.name
    precondition = str(body["metadata"].get("resourceVersion") or "")
    if not precondition and rt.custom:
        raise errors.invalid(
            rt,
            ctx.name,
            [
                schema.FieldError(
                    "FieldValueInvalid",
                    "metadata.resourceVersion",
                    "Invalid value: 0x0: must be specified for an update",
                )
            ],
        )
    for _ in range(8):
        entry = server.store.get(context.object_key(rt, namespace=ctx.namespace, name=ctx.name))
        if entry is None:
            raise errors.not_found(rt, ctx.name)
        try:
            return await write_existing(
                server,
                ctx,
                entry=entry,
                new=context.to_storage(ctx, copy.deepcopy(body)),
                precondition=precondition,
            )
        except errors.Retry:
            if precondition:
                raise errors.conflict(rt, ctx.name, errors.MODIFIED) from None
    raise errors.conflict(rt, ctx.name, errors.MODIFIED)


async def patch(server: context.Server, ctx: context.Context) -> web.Response:
    rt = ctx.rt
    content_type = ctx.request.content_type
    is_apply = content_type in (patching.APPLY_PATCH_YAML, patching.APPLY_PATCH_CBOR)
    if content_type not in (
        patching.MERGE_PATCH,
        patching.JSON_PATCH,
        patching.STRATEGIC_PATCH,
        patching.APPLY_PATCH_YAML,
    ):
        raise errors.ApiError(
            415,
            "UnsupportedMediaType",
            f"the body of the request was in an unknown format - accepted media "
            f"types include: {patching.JSON_PATCH}, {patching.MERGE_PATCH}, "
            f"{patching.APPLY_PATCH_YAML}, {patching.STRATEGIC_PATCH}",
        )
    if content_type == patching.STRATEGIC_PATCH and rt.custom:
        raise errors.ApiError(
            415,
            "UnsupportedMediaType",
            "strategic merge patch is not supported for custom resources",
        )
    if is_apply and not ctx.request.query.get("fieldManager"):
        raise errors.bad_request(
            "PATCH, application/apply-patch+yaml requires the fieldManager parameter"
        )
    patch = await decoding.read_body(ctx.request)
    if is_apply:
        patch = decoding.decode_object(ctx, patch)
        if patch["metadata"].get("name", ctx.name) != ctx.name:
            raise errors.bad_request("the name of the object does not match the name on the URL")
    elif content_type != patching.JSON_PATCH and not isinstance(patch, dict):
        raise errors.bad_request(
            "the body of the request was in an unknown format: expected an object"
        )
    for _ in range(8):
        key = context.object_key(rt, namespace=ctx.namespace, name=ctx.name)
        entry = server.store.get(key)
        if entry is None:
            if is_apply and not ctx.sub:
                return await create_from_apply(server, ctx, body=patch)
            raise errors.not_found(rt, ctx.name)
        served = context.view(ctx, entry.obj)
        # A private copy to patch: parsed from the stored text when served as stored.
        current = jsontext.decode(entry.text) if served is entry.obj else jsontext.clone(served)
        try:
            if is_apply:
                patched = patching.server_side_apply(
                    current,
                    patch,
                    manager=ctx.request.query["fieldManager"],
                    api_version=rt.api_version(ctx.version),
                    time=context.now(),
                )
            elif content_type == patching.JSON_PATCH:
                patched = patching.json_patch(current, patch)
            elif content_type == patching.MERGE_PATCH:
                patched = patching.merge_patch(current, patch)
            else:
                patched = patching.strategic_merge(
                    current, patch, builtins.schema_for(rt.group, ctx.version, rt.kind)
                )
        except patching.PatchError as error:
            raise errors.ApiError(
                error.code, "Invalid" if error.code == 422 else "BadRequest", error.message
            ) from None
        if not isinstance(patched, dict) or not isinstance(patched.get("metadata"), dict):
            raise errors.bad_request("the patch produced an object that is not an object")
        patched = context.to_storage(ctx, patched)
        if is_apply:
            patched["metadata"]["resourceVersion"] = str(
                patch["metadata"].get("resourceVersion") or entry.obj["metadata"]["resourceVersion"]
            )
        precondition = str(patched["metadata"].get("resourceVersion") or "")
        if precondition != entry.obj["metadata"]["resourceVersion"]:
            raise errors.conflict(rt, ctx.name, errors.MODIFIED)
        patched["metadata"]["name"] = ctx.name
        try:
            return await write_existing(server, ctx, entry=entry, new=patched, precondition="")
        except errors.Retry:
            continue
    raise errors.conflict(rt, ctx.name, errors.MODIFIED)


async def create_from_apply(
    server: context.Server, ctx: context.Context, *, body: dict[str, Any]
) -> web.Response:
    body["metadata"]["name"] = ctx.name
    applied = patching.server_side_apply(
        {},
        body,
        manager=ctx.request.query["fieldManager"],
        api_version=ctx.rt.api_version(ctx.version),
        time=context.now(),
    )
    ctx.managed_fields = applied["metadata"]["managedFields"]
    return await create(server, ctx, body=applied)


async def write_existing(
    server: context.Server,
    ctx: context.Context,
    *,
    entry: storage.Entry,
    new: dict[str, Any],
    precondition: str,
) -> web.Response:
    rt = ctx.rt
    old = entry.obj
    old_version = old["metadata"]["resourceVersion"]
    if precondition and precondition != old_version:
        raise errors.conflict(rt, ctx.name, errors.MODIFIED)
    attributes = ctx.attributes
    webhook_warnings: list[str] = []
    mutated = await server.mutate(
        warnings=webhook_warnings,
        operation="UPDATE",
        attributes=attributes,
        kind=context.gvk(rt, ctx.version),
        obj=new,
        old_obj=old,
        user=ctx.user,
        dry_run=ctx.dry_run,
    )
    if mutated is not None:
        new = mutated
    new = strategy.apply_strategy(ctx, old=old, new=new, reader=server.reader)
    warnings = strategy.validate(server.registry, ctx, obj=new, creating=False)
    await server.admit(
        warnings=webhook_warnings,
        operation="UPDATE",
        attributes=attributes,
        kind=context.gvk(rt, ctx.version),
        obj=new,
        old_obj=old,
        user=ctx.user,
        dry_run=ctx.dry_run,
    )
    key = context.object_key(rt, namespace=ctx.namespace, name=ctx.name)
    latest = server.store.get(key)
    if latest is None:
        raise errors.not_found(rt, ctx.name)
    if latest.obj["metadata"]["resourceVersion"] != old_version:
        raise errors.Retry
    warnings += webhook_warnings
    new["metadata"]["resourceVersion"] = old_version
    if new == old:
        # A no-op write keeps its resourceVersion and notifies no one, like upstream.
        return responses.object_response(ctx, latest, warnings=warnings)
    if ctx.dry_run:
        return responses.object_response(ctx, new, warnings=warnings)
    if (
        new["metadata"].get("deletionTimestamp")
        and not new["metadata"].get("finalizers")
        and rt.plural != "namespaces"
    ):
        final = deletion.remove(server, rt, key=key, obj=new)
        return responses.object_response(ctx, final, warnings=warnings)
    stored = commits.commit(server, rt, key=key, obj=new, event_type="MODIFIED", deferred=True)
    return responses.object_response(ctx, stored, warnings=warnings)
