"""Object storage for the embedded API server: SQLite on disk, a hot index in memory.

Guarantees:
- every write gets the next value of one monotonic ``resourceVersion`` counter shared by all
  kinds, persisted with the object, so a restart keeps every object and never reuses a version;
- SQLite runs in WAL mode with ``synchronous=NORMAL`` and writes are group-committed (the owner
  schedules :meth:`Store.commit` a few milliseconds after a transaction opens): a crash may lose
  the last few milliseconds of writes but never corrupts the database;
- each object is serialised to JSON once per write; lists and watch events reuse that text;
- a bounded window of recent events supports watch resume; resuming from a version older than
  the window raises :class:`Gone` (the server answers ``410 Gone``).

The store is not thread-safe: it belongs to the server's event loop, and every method is
synchronous, so a read-check-write sequence without ``await`` in between is atomic.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

ObjectKey = tuple[str, str, str, str]
"""(group, plural resource, namespace or "", name)."""


class Gone(Exception):
    """The requested resourceVersion has left the event history window."""

    def __init__(self, requested: int, oldest: int) -> None:
        super().__init__(f"too old resource version: {requested} ({oldest})")
        self.requested = requested
        self.oldest = oldest


@dataclasses.dataclass
class Entry:
    """A stored object with its JSON text (the form it is served in)."""

    obj: dict[str, Any]
    text: str


@dataclasses.dataclass
class Event:
    """One change, as watchers see it. ``text`` is the object's JSON at that version."""

    type: str
    resource_version: int
    key: ObjectKey
    obj: dict[str, Any]
    text: str
    # The previous state, so watchers with selectors can turn a change into ADDED/DELETED.
    old: dict[str, Any] | None = None
    # Encoded watch frames by output format, filled lazily and shared by every watcher.
    frames: dict[str, bytes] = dataclasses.field(default_factory=dict)


def encode(obj: dict[str, Any]) -> str:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False)


class Store:
    """All objects, indexed in memory by (group, resource) then (namespace, name)."""

    def __init__(self, path: Path, *, history_window: int = 5000) -> None:
        self._db = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS objects (grp TEXT NOT NULL, resource TEXT NOT NULL,"
            " namespace TEXT NOT NULL, name TEXT NOT NULL, body TEXT NOT NULL,"
            " PRIMARY KEY (grp, resource, namespace, name))"
        )
        self._db.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT)")
        self._index: dict[tuple[str, str], dict[tuple[str, str], Entry]] = {}
        self._by_uid: dict[str, ObjectKey] = {}
        self._dependents: dict[str, set[ObjectKey]] = collections.defaultdict(set)
        self.resource_version = 0
        for grp, resource, namespace, name, body in self._db.execute(
            "SELECT grp, resource, namespace, name, body FROM objects"
        ):
            obj = json.loads(body)
            self._remember((grp, resource, namespace, name), Entry(obj, body))
            version = int(obj.get("metadata", {}).get("resourceVersion") or 0)
            self.resource_version = max(self.resource_version, version)
        row = self._db.execute("SELECT value FROM meta WHERE key = 'rv'").fetchone()
        if row is not None:
            self.resource_version = max(self.resource_version, int(row[0]))
        self._history: collections.deque[Event] = collections.deque(maxlen=history_window)
        # Every event up to and including this version is no longer in the history.
        self._evicted_up_to = self.resource_version
        self._listeners: list[Callable[[Event], None]] = []
        self._in_transaction = False
        # Called when a transaction opens; the owner arranges for commit() to run soon after.
        self.on_transaction: Callable[[], None] | None = None

    def close(self) -> None:
        self.commit()
        self._db.close()

    def commit(self) -> None:
        """Commit the open group transaction (writes are group-committed for throughput)."""
        if self._in_transaction:
            self._in_transaction = False
            self._db.execute("COMMIT")

    def _begin(self) -> None:
        if self.on_transaction is None or self._in_transaction:
            return  # no owner: every statement commits on its own (autocommit)
        self._db.execute("BEGIN")
        self._in_transaction = True
        self.on_transaction()

    # reads -------------------------------------------------------------------------------
    def get(self, key: ObjectKey) -> Entry | None:
        table = self._index.get((key[0], key[1]))
        return None if table is None else table.get((key[2], key[3]))

    def entries(self, group: str, resource: str, namespace: str | None = None) -> list[Entry]:
        """Entries sorted by (namespace, name); ``namespace=None`` means all namespaces."""
        table = self._index.get((group, resource))
        if not table:
            return []
        keys = sorted(table) if namespace is None else sorted(k for k in table if k[0] == namespace)
        return [table[k] for k in keys]

    def keys(self, group: str, resource: str) -> Iterator[tuple[str, str]]:
        yield from list(self._index.get((group, resource), {}))

    def by_uid(self, uid: str) -> ObjectKey | None:
        return self._by_uid.get(uid)

    def dependents(self, uid: str) -> set[ObjectKey]:
        return set(self._dependents.get(uid, ()))

    # writes ------------------------------------------------------------------------------
    def next_version(self) -> int:
        self.resource_version += 1
        return self.resource_version

    def put(self, key: ObjectKey, obj: dict[str, Any], *, event_type: str) -> Entry:
        """Store ``obj`` (its metadata.resourceVersion already set by the caller)."""
        text = encode(obj)
        version = int(obj["metadata"]["resourceVersion"])
        self._begin()
        self._db.execute("INSERT OR REPLACE INTO objects VALUES (?, ?, ?, ?, ?)", (*key, text))
        entry = Entry(obj, text)
        old = self.get(key)
        if old is not None:
            self._forget(key, old)
        self._remember(key, entry)
        self._emit(Event(event_type, version, key, obj, text, old.obj if old else None))
        return entry

    def remove(self, key: ObjectKey, obj: dict[str, Any]) -> None:
        """Delete ``key``; ``obj`` is its final state with a fresh resourceVersion."""
        self._begin()
        self._db.execute(
            "DELETE FROM objects WHERE grp = ? AND resource = ? AND namespace = ? AND name = ?",
            key,
        )
        old = self.get(key)
        if old is not None:
            self._forget(key, old)
        version = int(obj["metadata"]["resourceVersion"])
        self._db.execute("INSERT OR REPLACE INTO meta VALUES ('rv', ?)", (str(version),))
        self._emit(Event("DELETED", version, key, obj, encode(obj), old.obj if old else None))

    def _remember(self, key: ObjectKey, entry: Entry) -> None:
        self._index.setdefault((key[0], key[1]), {})[(key[2], key[3])] = entry
        metadata = entry.obj.get("metadata", {})
        uid = metadata.get("uid")
        if uid:
            self._by_uid[uid] = key
        for owner in metadata.get("ownerReferences") or ():
            if owner.get("uid"):
                self._dependents[owner["uid"]].add(key)

    def _forget(self, key: ObjectKey, entry: Entry) -> None:
        table = self._index.get((key[0], key[1]))
        if table is not None:
            table.pop((key[2], key[3]), None)
        metadata = entry.obj.get("metadata", {})
        uid = metadata.get("uid")
        if uid and self._by_uid.get(uid) == key:
            del self._by_uid[uid]
        for owner in metadata.get("ownerReferences") or ():
            dependents = self._dependents.get(owner.get("uid", ""))
            if dependents is not None:
                dependents.discard(key)
                if not dependents:
                    del self._dependents[owner["uid"]]

    # watch support -----------------------------------------------------------------------
    def subscribe(self, listener: Callable[[Event], None]) -> None:
        self._listeners.append(listener)

    def _emit(self, event: Event) -> None:
        if len(self._history) == self._history.maxlen and self._history:
            self._evicted_up_to = self._history[0].resource_version
        self._history.append(event)
        for listener in self._listeners:
            listener(event)

    def history_since(self, version: int) -> list[Event]:
        """Events after ``version``; raises :class:`Gone` when some have been evicted."""
        if version < self._evicted_up_to:
            raise Gone(version, self._evicted_up_to + 1)
        # Versions are increasing along the deque: walk back from the newest.
        found: list[Event] = []
        for event in reversed(self._history):
            if event.resource_version <= version:
                break
            found.append(event)
        found.reverse()
        return found
