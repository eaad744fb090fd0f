"""The watch verb: one request's event stream (the fan-out to many streams is :mod:`watching`).

A watch from ``resourceVersion`` ``""``/``"0"`` (or with ``sendInitialEvents``) first replays
the current objects as ``ADDED``; one from a later version replays the store's event history
after it (``410 Expired`` when it is older than the history kept). Nothing awaits between the
replay and registering with the hub, so no event falls between them. Frames are encoded once per
event and format and shared by every stream; bookmarks are sent every ``bookmark_interval``
when asked for, and the stream ends at ``timeoutSeconds`` or when the client leaves.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import Any

from aiohttp import web

from agentauth.devcluster import (
    context,
    errors,
    reads,
    requestinfo,
    selectors,
    statuses,
    storage,
    tables,
    watching,
)


async def watch(server: context.Server, ctx: context.Context) -> web.StreamResponse:
    rt = ctx.rt
    request = ctx.request
    query = request.query
    selection = reads.request_filter(ctx)
    if ctx.name and not selection.fields:
        selection = selectors.Filter(
            selection.namespace,
            selection.labels,
            selectors.parse_fields(f"metadata.name={ctx.name}"),
        )
    try:
        timeout = float(query.get("timeoutSeconds", "1800") or "1800")
    except ValueError:
        raise errors.bad_request("invalid timeoutSeconds") from None
    bookmarks = requestinfo.parse_bool(query.get("allowWatchBookmarks", ""))
    initial_events = requestinfo.parse_bool(query.get("sendInitialEvents", ""))
    version_text = query.get("resourceVersion", "")
    if version_text and not version_text.isdigit():
        raise errors.bad_request(f'invalid resource version "{version_text}"')
    as_table = tables.wants_table(request.headers.get("Accept", ""))
    columns = tables.columns_for(rt, ctx.version) if as_table else []
    include_object = ctx.include_object
    served_version = rt.api_version(ctx.version)
    rewrite = ctx.version != rt.storage_version or context.stored_as(rt) != (rt.group, rt.plural)
    stored_group, stored_plural = context.stored_as(rt)
    definitions_sent = [False]

    def encode_event(event_type: str, event: storage.Event) -> bytes:
        if as_table:
            first = not definitions_sent[0]
            definitions_sent[0] = True
            cache_key = f"table:{include_object}:{ctx.version}:{event_type}:{first}"
        else:
            first = False
            cache_key = f"json:{ctx.version}:{event_type}"
        frame = event.frames.get(cache_key)
        if frame is None:
            if as_table:
                table = tables.table(
                    [context.view(ctx, event.obj)],
                    columns,
                    include_object=include_object,
                    list_metadata={"resourceVersion": str(event.resource_version)},
                    with_definitions=first,
                )
                text = storage.encode(table)
            elif rewrite:
                text = storage.encode(
                    {**context.view(ctx, event.obj), "apiVersion": served_version}
                )
            else:
                text = event.text
            frame = f'{{"type":"{event_type}","object":{text}}}\n'.encode()
            event.frames[cache_key] = frame
        return frame

    def bookmark_frame(
        annotations: dict[str, str] | None = None, *, version: int | None = None
    ) -> bytes:
        shown = server.store.resource_version if version is None else version
        metadata: dict[str, Any] = {"resourceVersion": str(shown)}
        if annotations:
            metadata["annotations"] = annotations
        obj = {"kind": rt.kind, "apiVersion": served_version, "metadata": metadata}
        return (
            json.dumps({"type": "BOOKMARK", "object": obj}, separators=(",", ":")) + "\n"
        ).encode()

    response = web.StreamResponse(status=200)
    response.content_type = "application/json"
    response.enable_chunked_encoding()
    await response.prepare(request)
    transport = request.transport
    if transport is None:
        return response
    watcher = watching.Watcher(
        group=stored_group,
        resource=stored_plural,
        filter=selection,
        encoder=encode_event,
        transport=transport,
    )
    # From here to hub.add nothing awaits, so no event can fall between replay and live; the
    # replay is queued, not sent, until it is committed.
    try:
        if initial_events or version_text in ("", "0"):
            namespace = ctx.namespace if rt.namespaced and ctx.namespace else None
            frames = [
                encode_event(
                    "ADDED",
                    storage.Event("ADDED", 0, (stored_group, stored_plural, "", ""), e.obj, e.text),
                )
                for e in server.store.entries(stored_group, stored_plural, namespace)
                if selection.matches(e.obj)
            ]
            # The objects may include writes of the pending group commit: their events are
            # not delivered again when they commit.
            watcher.after = server.store.latest_version
            if initial_events and bookmarks:
                # The version of the replayed state (sent once it is committed).
                frames.append(
                    bookmark_frame({"k8s.io/initial-events-end": "true"}, version=watcher.after)
                )
            for start in range(0, len(frames), 500):
                watcher.pending.append(b"".join(frames[start : start + 500]))
        else:
            try:
                requested = int(version_text)
            except ValueError:
                raise errors.bad_request(f'invalid resource version "{version_text}"') from None
            try:
                history = server.store.history_since(requested)
            except storage.Gone as gone:
                status = statuses.expired(str(gone))
                watcher.send(statuses.watch_error(status))
                await response.write_eof()
                return response
            # History holds committed events only; pending writes are delivered as they commit.
            watcher.after = server.store.resource_version
            frames = []
            for event in history:
                if event.key[0] != stored_group or event.key[1] != stored_plural:
                    continue
                event_type = watching.effective_type(selection, event)
                if event_type is not None:
                    frames.append(encode_event(event_type, event))
            if frames:
                watcher.pending.append(b"".join(frames))
    except errors.ApiError as error:
        watcher.send(statuses.watch_error(error.status()))
        await response.write_eof()
        return response
    server.hub.add(watcher)
    try:
        # The replay goes out once what it shows is committed (group commit).
        await server.store.synced()
    except storage.StorageError as error:
        server.hub.remove(watcher)
        watcher.pending.clear()
        unavailable = errors.ApiError(503, "ServiceUnavailable", f"storage is unavailable: {error}")
        watcher.send(statuses.watch_error(unavailable.status()))
        await response.write_eof()
        return response
    watcher.flush()
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    try:
        while not watcher.closed.is_set():
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            # Wake up now and then even without bookmarks, to notice a client that left.
            wait = min(remaining, server.bookmark_interval if bookmarks else 5.0)
            try:
                await asyncio.wait_for(watcher.closed.wait(), timeout=wait)
            except TimeoutError:
                if bookmarks and loop.time() < deadline:
                    watcher.flush()
                    watcher.send(bookmark_frame())
            if transport.is_closing():
                break
    finally:
        server.hub.remove(watcher)
    watcher.flush()
    if not transport.is_closing():
        with contextlib.suppress(ConnectionResetError):
            await response.write_eof()
    return response
