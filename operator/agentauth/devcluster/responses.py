"""How objects are answered: compact JSON, server-side tables and ``Warning`` headers.

A stored object is served as the text the store already encoded whenever the request's group
and version are the stored ones (no re-encoding on the hot read path); otherwise it is
converted by :func:`context.view` first. ``Accept: ...;as=Table`` answers a ``meta/v1`` Table
(:mod:`tables`). Warnings are ``299`` headers with quotes escaped, as kube-apiserver writes them.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from aiohttp import web

from agentauth.devcluster import context, storage, tables


def json_response(body: Any, *, status: int = 200) -> web.Response:
    return web.Response(
        body=json.dumps(body, separators=(",", ":")).encode(),
        status=status,
        content_type="application/json",
    )


def text_json_response(text: str, *, status: int = 200) -> web.Response:
    return web.Response(body=text.encode(), status=status, content_type="application/json")


def served(ctx: context.Context, entry: storage.Entry) -> str:
    """The object's JSON as served at the request's group and version."""
    view = context.view(ctx, entry.obj)
    return entry.text if view is entry.obj else storage.encode(view)


def object_response(
    ctx: context.Context,
    entry_or_obj: storage.Entry | dict[str, Any],
    *,
    status: int = 200,
    warnings: Sequence[str] = (),
) -> web.Response:
    if isinstance(entry_or_obj, storage.Entry):
        obj = context.view(ctx, entry_or_obj.obj)
        text = entry_or_obj.text if obj is entry_or_obj.obj else storage.encode(obj)
    else:
        obj = dict(context.view(ctx, entry_or_obj))
        obj["apiVersion"] = ctx.rt.api_version(ctx.version)
        text = storage.encode(obj)
    if tables.wants_table(ctx.request.headers.get("Accept", "")):
        columns = tables.columns_for(ctx.rt, ctx.version)
        body = tables.table([obj], columns, include_object=ctx.include_object)
        response = json_response(body, status=status)
    else:
        response = text_json_response(text, status=status)
    for warning in warnings:
        escaped = warning.replace("\\", "\\\\").replace('"', '\\"')
        response.headers.add("Warning", f'299 - "{escaped}"')
    return response
