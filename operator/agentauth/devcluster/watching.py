"""Fan-out of store events to open watch streams.

Guarantees: each watcher sees the events of its resource in resourceVersion order, filtered by
its namespace and selectors; an object that starts or stops matching a selector is delivered as
ADDED or DELETED, like upstream. Frames are encoded once per (event, type, format) and shared by
every watcher, queued without waking any task, and flushed to each socket at most once per
``FLUSH_WINDOW`` seconds, so a burst of writes costs one socket write per watcher. A watcher
whose socket buffer exceeds ``MAX_BUFFERED`` bytes is closed (the client re-watches from its
last version), so one stuck client cannot exhaust memory.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
from collections.abc import Callable

from agentauth.devcluster import selectors, storage

MAX_BUFFERED = 64 * 1024 * 1024
FLUSH_WINDOW = 0.015

Encoder = Callable[[str, storage.Event], bytes]


@dataclasses.dataclass(eq=False)
class Watcher:
    """One open watch stream: its selection, its encoder and the socket it writes to."""

    group: str
    resource: str
    filter: selectors.Filter
    encoder: Encoder
    transport: asyncio.Transport
    pending: list[bytes] = dataclasses.field(default_factory=list)
    # Events up to this version are in the replay this watcher was started with.
    after: int = 0
    closed: asyncio.Event = dataclasses.field(default_factory=asyncio.Event)

    def send(self, frame: bytes) -> None:
        """Write one frame as an HTTP/1.1 chunk, now (used before the watcher is registered)."""
        self._write([frame])

    def flush(self) -> None:
        if self.pending:
            frames, self.pending = self.pending, []
            self._write(frames)

    def _write(self, frames: list[bytes]) -> None:
        if self.closed.is_set() or self.transport.is_closing():
            self.closed.set()
            return
        if self.transport.get_write_buffer_size() > MAX_BUFFERED:
            self.closed.set()
            return
        body = b"".join(frames)
        # The response was prepared with chunked transfer encoding; frames go out as chunks.
        self.transport.write(b"%x\r\n%s\r\n" % (len(body), body))


def effective_type(watch_filter: selectors.Filter, event: storage.Event) -> str | None:
    """The event type this filter sees for ``event``, or None when it sees nothing."""
    now = watch_filter.matches(event.obj)
    if event.type != "MODIFIED" or event.old is None:
        return event.type if now else None
    before = watch_filter.matches(event.old)
    if now and before:
        return "MODIFIED"
    if now:
        return "ADDED"
    if before:
        return "DELETED"
    return None


class Hub:
    """Routes each store event to the watchers of its (group, resource)."""

    def __init__(self) -> None:
        # (group, resource) -> filter -> watchers: a filter is evaluated once per event.
        self._watchers: dict[tuple[str, str], dict[selectors.Filter, set[Watcher]]] = (
            collections.defaultdict(dict)
        )
        self._dirty: set[Watcher] = set()
        self._flush_scheduled = False
        self._last_flush = 0.0

    def add(self, watcher: Watcher) -> None:
        by_filter = self._watchers[(watcher.group, watcher.resource)]
        by_filter.setdefault(watcher.filter, set()).add(watcher)

    def remove(self, watcher: Watcher) -> None:
        by_filter = self._watchers.get((watcher.group, watcher.resource))
        if by_filter is not None:
            group = by_filter.get(watcher.filter)
            if group is not None:
                group.discard(watcher)
                if not group:
                    del by_filter[watcher.filter]
        self._dirty.discard(watcher)

    def count(self) -> int:
        return sum(len(g) for by_filter in self._watchers.values() for g in by_filter.values())

    def publish(self, event: storage.Event) -> None:
        by_filter = self._watchers.get((event.key[0], event.key[1]))
        if not by_filter:
            return
        for watch_filter, watchers in by_filter.items():
            event_type = effective_type(watch_filter, event)
            if event_type is None:
                continue
            for watcher in watchers:
                if event.resource_version > watcher.after:
                    watcher.pending.append(watcher.encoder(event_type, event))
                    self._dirty.add(watcher)
        if self._dirty and not self._flush_scheduled:
            self._flush_scheduled = True
            # Flushes are rate-limited to one per FLUSH_WINDOW: an isolated write goes out at
            # once, a burst is batched into one TLS record per watcher (what makes 50 watchers
            # affordable) at the cost of at most FLUSH_WINDOW of latency.
            loop = asyncio.get_running_loop()
            delay = self._last_flush + FLUSH_WINDOW - loop.time()
            if delay > 0:
                loop.call_later(delay, self._flush)
            else:
                loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        self._last_flush = asyncio.get_running_loop().time()
        dirty, self._dirty = self._dirty, set()
        for watcher in dirty:
            watcher.flush()

    def close_all(self) -> None:
        for by_filter in self._watchers.values():
            for watchers in by_filter.values():
                for watcher in watchers:
                    watcher.closed.set()
        self._watchers.clear()
