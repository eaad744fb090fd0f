"""The read verbs: get and list, with selectors, pagination and tables.

A list is a consistent snapshot at one ``resourceVersion``; ``limit`` pages carry a ``continue``
token that resumes after the last object at that same version, with ``remainingItemCount``.
Label and field selectors are parsed and refused (400) as upstream; for ``events.k8s.io``
Events, field paths are translated to the core Event's fields they are stored as.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import json
from typing import Any

from aiohttp import web

from agentauth.devcluster import context, errors, events, responses, selectors, storage, tables


def get_object(server: context.Server, ctx: context.Context) -> web.Response:
    entry = server.store.get(context.object_key(ctx.rt, namespace=ctx.namespace, name=ctx.name))
    if entry is None:
        raise errors.not_found(ctx.rt, ctx.name)
    return responses.object_response(ctx, entry)


def request_filter(ctx: context.Context) -> selectors.Filter:
    query = ctx.request.query
    try:
        found = selectors.make_filter(
            ctx.namespace if ctx.rt.namespaced and ctx.namespace else None,
            query.get("labelSelector", ""),
            query.get("fieldSelector", ""),
        )
    except selectors.SelectorError as error:
        raise errors.bad_request(str(error)) from None
    if context.stored_as(ctx.rt) == (ctx.rt.group, ctx.rt.plural):
        return found
    fields = tuple(
        dataclasses.replace(requirement, path=events.core_field_path(requirement.path))
        for requirement in found.fields
    )
    return dataclasses.replace(found, fields=fields)


def list_objects(server: context.Server, ctx: context.Context) -> web.Response:
    rt = ctx.rt
    query = ctx.request.query
    selection = request_filter(ctx)
    entries = server.store.entries(
        *context.stored_as(rt), ctx.namespace if rt.namespaced and ctx.namespace else None
    )
    list_version = server.store.latest_version
    start: tuple[str, str] | None = None
    token = query.get("continue", "")
    if token:
        try:
            decoded = json.loads(base64.urlsafe_b64decode(token.encode()))
            start = (str(decoded["start"][0]), str(decoded["start"][1]))
            list_version = int(decoded["rv"])
        except (ValueError, KeyError, TypeError, IndexError, binascii.Error):
            raise errors.bad_request("continue key is not valid: illegal base64 data") from None
    limit_text = query.get("limit", "")
    try:
        limit = int(limit_text) if limit_text else 0
    except ValueError:
        raise errors.bad_request(f'invalid limit "{limit_text}"') from None
    selected: list[storage.Entry] = []
    continue_token = ""
    remaining = 0
    for entry in entries:
        metadata = entry.obj["metadata"]
        position = (metadata.get("namespace", ""), metadata["name"])
        if start is not None and position <= start:
            continue
        if (selection.labels or selection.fields) and not selection.matches(entry.obj):
            continue
        if limit and len(selected) >= limit:
            remaining += 1
            continue
        selected.append(entry)
    if limit and remaining:
        last = selected[-1].obj["metadata"]
        continue_token = base64.urlsafe_b64encode(
            json.dumps(
                {"rv": list_version, "start": [last.get("namespace", ""), last["name"]]}
            ).encode()
        ).decode()
    list_metadata: dict[str, Any] = {"resourceVersion": str(list_version)}
    if continue_token:
        list_metadata["continue"] = continue_token
        list_metadata["remainingItemCount"] = remaining
    if tables.wants_table(ctx.request.headers.get("Accept", "")):
        columns = tables.columns_for(rt, ctx.version)
        body = tables.table(
            [context.view(ctx, e.obj) for e in selected],
            columns,
            include_object=ctx.include_object,
            list_metadata=list_metadata,
        )
        return responses.json_response(body)
    head = json.dumps(
        {
            "kind": f"{rt.kind}List",
            "apiVersion": rt.api_version(ctx.version),
            "metadata": list_metadata,
        },
        separators=(",", ":"),
    )
    items = ",".join(responses.served(ctx, entry) for entry in selected)
    return responses.text_json_response(f'{head[:-1]},"items":[{items}]}}')
