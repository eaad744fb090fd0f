"""Fan-out of store events to open watch streams.

Guarantees: each watcher sees the events of its resource in resourceVersion order, filtered by
its namespace and selectors; an object that starts or stops matching a selector is delivered as
ADDED or DELETED, like upstream. Frames are encoded once per (event, type, format) and shared by
every watcher. A watcher that falls more than ``MAX_BACKLOG`` events behind is closed (the client
re-watches from its last version), so one stuck client cannot exhaust memory.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
from collections.abc import Callable

from agentauth.devcluster import selectors, storage

MAX_BACKLOG = 50_000


@dataclasses.dataclass(eq=False)
class Watcher:
    group: str
    resource: str
    filter: selectors.Filter
    queue: asyncio.Queue[tuple[str, storage.Event] | None] = dataclasses.field(
        default_factory=asyncio.Queue
    )
    closed: bool = False


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
        self._watchers: dict[tuple[str, str], set[Watcher]] = collections.defaultdict(set)
        self._on_close: list[Callable[[Watcher], None]] = []

    def add(self, watcher: Watcher) -> None:
        self._watchers[(watcher.group, watcher.resource)].add(watcher)

    def remove(self, watcher: Watcher) -> None:
        watchers = self._watchers.get((watcher.group, watcher.resource))
        if watchers is not None:
            watchers.discard(watcher)

    def count(self) -> int:
        return sum(len(w) for w in self._watchers.values())

    def publish(self, event: storage.Event) -> None:
        for watcher in tuple(self._watchers.get((event.key[0], event.key[1]), ())):
            event_type = effective_type(watcher.filter, event)
            if event_type is None:
                continue
            if watcher.queue.qsize() > MAX_BACKLOG:
                watcher.closed = True
                self.remove(watcher)
                watcher.queue.put_nowait(None)
                continue
            watcher.queue.put_nowait((event_type, event))

    def close_all(self) -> None:
        for watchers in self._watchers.values():
            for watcher in watchers:
                watcher.closed = True
                watcher.queue.put_nowait(None)
        self._watchers.clear()
