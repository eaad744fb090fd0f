"""Object storage for the embedded API server: SQLite on disk, a hot index in memory.

Guarantees:
- a write is committed to SQLite before :meth:`Store.put` or :meth:`Store.remove` returns, and
  only then does it reach the in-memory index (what reads serve) and the watchers: whatever the
  server acknowledged, or any client saw, survives the process being killed (``kill -9``, OOM).
  The exception is the group commit, ``put(..., deferred=True)``, which request handlers use:
  the write is applied to the index at once (so the next request's read-check-write sees it)
  and joins the transaction that commits, once per turn of the event loop, every write deferred
  meanwhile (one commit for many writes: a fraction of the cost of one each). Until it commits
  nobody is shown it: every answer awaits :meth:`Store.synced` (the router does this for every
  request), its event reaches the history and the watchers only after the commit, and
  :attr:`Store.resource_version` stays at the last committed version. A batch that fails to
  commit is undone in the index, newest write first, and each waiting request gets
  :class:`StorageError`;
  SQLite runs in WAL mode with ``synchronous=NORMAL``: a commit is one append to the WAL, no
  fsync, so an operating-system crash or power loss may still lose the last writes (the price of
  thousands of writes per second on one core; this is a development cluster);
- a write that cannot be committed (disk full, file-size limit, read-only store) raises
  :class:`StorageError` and changes nothing in memory: no read and no watcher ever sees it. The
  next write tries the disk again (reopening the database), so the store recovers by itself when
  storage works again; reads keep being served from memory meanwhile;
- every write gets the next value of one monotonic ``resourceVersion`` counter shared by all
  kinds, persisted with the write in the same transaction. Only committed versions are ever shown
  (objects, lists, bookmarks, events), and a restart starts after the highest committed one, so
  versions strictly increase across crashes and restarts and none shown is ever reused;
- every event is persisted with its write, and the last ``history_window`` events are reloaded at
  start-up: a watch resumed from a version acknowledged before a restart delivers every change
  after it; resuming from a version older than the window raises :class:`Gone` (``410 Gone``);
- no memory-mapped I/O: ``mmap_size=0`` and ``locking_mode=EXCLUSIVE`` (the WAL index lives on
  the heap, not in a mapped ``-shm`` file), so a full disk or a read-only directory can never
  raise SIGBUS; the exclusive lock also keeps a second process off the same database;
- each object is serialised to JSON once per write; lists and watch events reuse that text.

The store is not thread-safe: it belongs to the server's event loop, and every method but
:meth:`Store.synced` is synchronous, so a read-check-write sequence without ``await`` in between
is atomic.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import json
import logging
import shutil
import sqlite3
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from agentauth.kube import jsontext

log = logging.getLogger(__name__)

ObjectKey = tuple[str, str, str, str]
"""(group, plural resource, namespace or "", name)."""

# How many evicted events may linger on disk before they are deleted (one DELETE per batch).
_PRUNE_EVERY = 64
_CHECKPOINT_PAGES = 10_000
_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS objects (grp TEXT NOT NULL, resource TEXT NOT NULL,"
    " namespace TEXT NOT NULL, name TEXT NOT NULL, body TEXT NOT NULL,"
    " PRIMARY KEY (grp, resource, namespace, name))",
    "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT)",
    # The watch history: one row per change, the object as the event carries it and its
    # previous state (selectors turn a change into ADDED or DELETED by comparing the two).
    "CREATE TABLE IF NOT EXISTS events (rv INTEGER PRIMARY KEY, type TEXT NOT NULL,"
    " grp TEXT NOT NULL, resource TEXT NOT NULL, namespace TEXT NOT NULL, name TEXT NOT NULL,"
    " body TEXT NOT NULL, old TEXT)",
)
_INSERT_EVENT = "INSERT OR REPLACE INTO events VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
# An update in place: a third less work per write than INSERT OR REPLACE (delete, then insert).
_UPSERT_OBJECT = (
    "INSERT INTO objects VALUES (?, ?, ?, ?, ?)"
    " ON CONFLICT (grp, resource, namespace, name) DO UPDATE SET body = excluded.body"
)


class Gone(Exception):
    """The requested resourceVersion has left the event history window."""

    def __init__(self, requested: int, oldest: int) -> None:
        super().__init__(f"too old resource version: {requested} ({oldest})")
        self.requested = requested
        self.oldest = oldest


class StorageError(Exception):
    """A write could not be made durable; it was not applied and nothing of it is visible."""


@dataclasses.dataclass
class Entry:
    """A stored object with its JSON text (the form it is served in)."""

    obj: dict[str, Any]
    text: str


_Statements = tuple[tuple[str, tuple[Any, ...]], ...]


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


@dataclasses.dataclass
class _Pending:
    """A write of the group commit: in memory already, on disk once its batch commits."""

    version: int
    statements: _Statements
    key: ObjectKey
    old: Entry | None
    entry: Entry | None
    event: Event


def encode(obj: dict[str, Any]) -> str:
    return jsontext.encode(obj)


def connect(path: Path) -> sqlite3.Connection:
    """Open (creating if needed) the database at ``path`` the one way this module uses it."""
    db = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
    try:
        # Before anything touches the file: no shared-memory WAL index, no mapped pages.
        db.execute("PRAGMA locking_mode=EXCLUSIVE")
        db.execute("PRAGMA mmap_size=0")
        mode = db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            raise sqlite3.OperationalError(f"cannot switch the store to WAL mode ({mode})")
        db.execute("PRAGMA synchronous=NORMAL")
        # Checkpoints (which fsync) run inside a commit, on the event loop: every 10,000 WAL
        # pages (~40 MB) rather than SQLite's 1,000, since one write commits ~3 pages.
        db.execute(f"PRAGMA wal_autocheckpoint={_CHECKPOINT_PAGES}")
        for statement in _SCHEMA:
            db.execute(statement)
    except BaseException:
        db.close()
        raise
    return db


@dataclasses.dataclass
class _Loaded:
    objects: list[tuple[ObjectKey, str]]
    events: list[tuple[Any, ...]]
    meta: dict[str, str]
    more_events: bool


def _load(db: sqlite3.Connection, window: int) -> _Loaded:
    objects = [
        ((grp, resource, namespace, name), body)
        for grp, resource, namespace, name, body in db.execute(
            "SELECT grp, resource, namespace, name, body FROM objects"
        )
    ]
    # One more than the window: if it exists, its version is where the history starts.
    events = db.execute(
        "SELECT rv, type, grp, resource, namespace, name, body, old FROM events"
        " ORDER BY rv DESC LIMIT ?",
        (window + 1,),
    ).fetchall()
    meta = {str(k): str(v) for k, v in db.execute("SELECT key, value FROM meta")}
    return _Loaded(objects, events[::-1], meta, more_events=len(events) > window)


def _load_copy(path: Path, window: int) -> _Loaded:
    """Read a store that cannot be opened for writing, from a private copy of its files."""
    with tempfile.TemporaryDirectory(prefix="agentauth-store-") as scratch:
        copy = Path(scratch) / "store.db"
        shutil.copyfile(path, copy)
        wal = path.with_name(path.name + "-wal")
        if wal.exists():
            shutil.copyfile(wal, Path(scratch) / "store.db-wal")
        db = connect(copy)
        try:
            return _load(db, window)
        finally:
            db.close()


class Store:
    """All objects, indexed in memory by (group, resource) then (namespace, name).

    ``resource_version`` is the highest committed version: the one lists and bookmarks show.
    ``failure`` says why the last write failed, or is ``None`` while storage works.
    """

    def __init__(self, path: Path, *, history_window: int = 5000) -> None:
        self.path = Path(path)
        self._window = max(1, history_window)
        self._index: dict[tuple[str, str], dict[tuple[str, str], Entry]] = {}
        self._by_uid: dict[str, ObjectKey] = {}
        self._dependents: dict[str, set[ObjectKey]] = collections.defaultdict(set)
        self._history: collections.deque[Event] = collections.deque(maxlen=self._window)
        self._listeners: list[Callable[[Event], None]] = []
        self._db: sqlite3.Connection | None = None
        self.failure: str | None = None
        # The group commit: writes in memory awaiting their transaction, and the future their
        # requests wait on (created by the first to wait).
        self._batch: list[_Pending] = []
        self._batch_done: asyncio.Future[None] | None = None
        self._commit_scheduled = False
        try:
            self._db = connect(self.path)
            loaded = _load(self._db, self._window)
        except sqlite3.Error as error:
            if self._db is not None:
                with contextlib.suppress(sqlite3.Error):
                    self._db.close()
                self._db = None
            if not self.path.exists():
                raise StorageError(f"cannot create the store {self.path}: {error}") from error
            # Serve what is committed and refuse writes until the store can be opened.
            try:
                loaded = _load_copy(self.path, self._window)
            except (OSError, sqlite3.Error) as copy_error:
                raise StorageError(f"cannot read the store {self.path}: {error}") from copy_error
            self.failure = _describe(error, self.path)
            log.error("store %s is not writable (%s): serving reads only", self.path, error)
        self.resource_version = 0
        for key, body in loaded.objects:
            obj = jsontext.decode(body)
            self._remember(key, Entry(obj, body))
            version = int(obj.get("metadata", {}).get("resourceVersion") or 0)
            self.resource_version = max(self.resource_version, version)
        self.resource_version = max(self.resource_version, int(loaded.meta.get("rv", 0)))
        events = loaded.events
        if loaded.more_events:
            # Every event up to and including this version is no longer in the history.
            self._evicted_up_to = int(events[0][0])
            events = events[1:]
        elif "evicted" in loaded.meta:
            self._evicted_up_to = int(loaded.meta["evicted"])
        elif events:
            # A store written before events were kept: its history starts with its first event.
            self._evicted_up_to = int(events[0][0]) - 1
        else:
            self._evicted_up_to = self.resource_version
        for rv, event_type, grp, resource, namespace, name, body, old in events:
            self._history.append(
                Event(
                    event_type,
                    int(rv),
                    (grp, resource, namespace, name),
                    jsontext.decode(body),
                    body,
                    jsontext.decode(old) if old is not None else None,
                )
            )
            self.resource_version = max(self.resource_version, int(rv))
        self._pruned_up_to = self._evicted_up_to
        # The last version handed out; above resource_version only after a failed write.
        self._allocated = self.resource_version

    def close(self) -> None:
        if self._batch and self._db is not None:
            with contextlib.suppress(StorageError):
                self._commit_batch()
        if self._db is not None:
            with contextlib.suppress(sqlite3.Error):
                self._db.close()
            self._db = None

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
        """The version for the next write (a failed write's version is never handed out again)."""
        self._allocated = max(self._allocated, self.resource_version) + 1
        return self._allocated

    @property
    def latest_version(self) -> int:
        """The highest version in memory: :attr:`resource_version`, or above it while writes
        of a group commit are pending (shown only once :meth:`synced` has returned)."""
        return self._batch[-1].version if self._batch else self.resource_version

    def put(
        self, key: ObjectKey, obj: dict[str, Any], *, event_type: str, deferred: bool = False
    ) -> Entry:
        """Store ``obj`` (its metadata.resourceVersion already set by the caller).

        Raises :class:`StorageError`, changing nothing, when the write cannot be committed.
        ``deferred``: join the group commit instead (see :meth:`synced`); the caller must await
        :meth:`synced` before showing anything of it.
        """
        text = encode(obj)
        version = int(obj["metadata"]["resourceVersion"])
        old = self.get(key)
        old_text = old.text if old is not None else None
        statements = (
            (_UPSERT_OBJECT, (*key, text)),
            (_INSERT_EVENT, (version, event_type, *key, text, old_text)),
        )
        event = Event(event_type, version, key, obj, text, old.obj if old else None)
        entry = Entry(obj, text)
        if deferred:
            self._defer(_Pending(version, statements, key, old, entry, event))
            return entry
        self._commit_batch()
        self._write([(version, statements)])
        if old is not None:
            self._forget(key, old)
        self._remember(key, entry)
        self._emit(event)
        return entry

    # group commit --------------------------------------------------------------------------
    def _defer(self, pending: _Pending) -> None:
        if pending.version <= self.latest_version:
            raise ValueError(
                f"resourceVersion {pending.version} is not after {self.latest_version}"
            )
        if pending.old is not None:
            self._forget(pending.key, pending.old)
        if pending.entry is not None:
            self._remember(pending.key, pending.entry)
        self._batch.append(pending)
        if not self._commit_scheduled:
            self._commit_scheduled = True
            # Runs after every callback already queued: the writes of all the requests this
            # turn of the event loop serves share one transaction.
            asyncio.get_running_loop().call_soon(self._commit_batch)

    async def synced(self) -> None:
        """Return once every write made so far is committed (at once when none is pending);
        raises :class:`StorageError` when the group commit holding them failed (their writes
        are then undone in memory: nobody ever saw them)."""
        if not self._batch:
            return
        if self._batch_done is None:
            self._batch_done = asyncio.get_running_loop().create_future()
        done = self._batch_done
        await asyncio.shield(done)

    def _commit_batch(self) -> None:
        """Commit the pending writes in one transaction, then publish their events in order; on
        failure undo them in memory, newest first, and fail the requests waiting on them."""
        self._commit_scheduled = False
        batch, self._batch = self._batch, []
        done, self._batch_done = self._batch_done, None
        if not batch:
            return
        try:
            self._write([(p.version, p.statements) for p in batch])
        except StorageError as error:
            for pending in reversed(batch):
                if pending.entry is not None:
                    self._forget(pending.key, pending.entry)
                if pending.old is not None:
                    self._remember(pending.key, pending.old)
            if done is not None:
                done.set_exception(StorageError(str(error)))
                done.exception()  # retrieved: a batch nobody awaited logs nothing
            return
        for pending in batch:
            self._emit(pending.event)
        if done is not None:
            done.set_result(None)

    def remove(self, key: ObjectKey, obj: dict[str, Any]) -> None:
        """Delete ``key``; ``obj`` is its final state with a fresh resourceVersion.

        Raises :class:`StorageError`, changing nothing, when the delete cannot be committed.
        """
        self._commit_batch()
        version = int(obj["metadata"]["resourceVersion"])
        text = encode(obj)
        old = self.get(key)
        old_text = old.text if old is not None else None
        self._write(
            [
                (
                    version,
                    (
                        (
                            "DELETE FROM objects WHERE grp = ? AND resource = ? AND namespace = ?"
                            " AND name = ?",
                            key,
                        ),
                        (_INSERT_EVENT, (version, "DELETED", *key, text, old_text)),
                        ("INSERT OR REPLACE INTO meta VALUES ('rv', ?)", (str(version),)),
                    ),
                )
            ]
        )
        if old is not None:
            self._forget(key, old)
        self._emit(Event("DELETED", version, key, obj, text, old.obj if old else None))

    def _write(self, writes: list[tuple[int, _Statements]]) -> None:
        """Commit ``writes`` (each a version and its statements, versions increasing) as one
        transaction, or raise :class:`StorageError`."""
        first, version = writes[0][0], writes[-1][0]
        if first <= self.resource_version:
            raise ValueError(f"resourceVersion {first} is not after {self.resource_version}")
        db = self._db if self._db is not None else self._reopen()
        prune = self._evicted_up_to - self._pruned_up_to >= _PRUNE_EVERY
        try:
            db.execute("BEGIN IMMEDIATE")
            for _, statements in writes:
                for sql, parameters in statements:
                    db.execute(sql, parameters)
            if prune:
                db.execute("DELETE FROM events WHERE rv <= ?", (self._evicted_up_to,))
                db.execute(
                    "INSERT OR REPLACE INTO meta VALUES ('evicted', ?)", (str(self._evicted_up_to),)
                )
            db.execute("COMMIT")
        except sqlite3.Error as error:
            if self._landed(db, version):
                # The commit reached the WAL and only what followed it failed.
                log.warning("store: write %d committed despite an error: %s", version, error)
            else:
                self.close()
                self.failure = _describe(error, self.path)
                log.error("store: write %d not committed: %s", version, error)
                raise StorageError(self.failure) from error
        if prune:
            self._pruned_up_to = self._evicted_up_to
        if self.failure is not None:
            log.warning("store: writes reach the disk again")
            self.failure = None
        self.resource_version = version

    @staticmethod
    def _landed(db: sqlite3.Connection, version: int) -> bool:
        try:
            if db.in_transaction:
                db.execute("ROLLBACK")
                return False
            return (
                db.execute("SELECT 1 FROM events WHERE rv = ?", (version,)).fetchone() is not None
            )
        except sqlite3.Error:
            return False

    def _reopen(self) -> sqlite3.Connection:
        """Open the database again after a failure; :class:`StorageError` if it still fails."""
        try:
            db = connect(self.path)
            # A write reported as failed whose commit did reach the disk after all (its error
            # came late and the check could not read the disk): apply it, so that memory never
            # disagrees with the disk.
            ahead = db.execute(
                "SELECT rv, type, grp, resource, namespace, name, body FROM events"
                " WHERE rv > ? ORDER BY rv",
                (self.resource_version,),
            ).fetchall()
        except sqlite3.Error as error:
            self.failure = _describe(error, self.path)
            raise StorageError(self.failure) from error
        for rv, event_type, grp, resource, namespace, name, body in ahead:
            key = (grp, resource, namespace, name)
            log.warning("store: applying write %d found on disk after a failure", rv)
            obj = json.loads(body)
            old = self.get(key)
            if old is not None:
                self._forget(key, old)
            if event_type != "DELETED":
                self._remember(key, Entry(obj, body))
            self.resource_version = max(self.resource_version, int(rv))
            self._emit(
                Event(
                    event_type,
                    int(rv),
                    key,
                    obj,
                    body,
                    old.obj if old is not None else None,
                )
            )
        self._db = db
        return db

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


def _describe(error: sqlite3.Error, path: Path) -> str:
    """What went wrong, in the words an operator acts on."""
    text = str(error)
    name = getattr(error, "sqlite_errorname", "") or ""
    if name.startswith("SQLITE_FULL") or "disk is full" in text:
        return f"the disk holding the store {path} is full"
    with contextlib.suppress(OSError):
        if not path.parent.stat().st_mode & 0o222:
            return f"the store's directory {path.parent} is read-only ({text})"
        if not path.stat().st_mode & 0o222:
            return f"the store {path} is read-only ({text})"
    return f"the store {path} cannot be written ({text}{', ' + name if name else ''})"
