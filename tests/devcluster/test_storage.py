"""The store: persistence, one resourceVersion counter, bounded history."""

from __future__ import annotations

import contextlib
import resource
import signal
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from agentauth.devcluster import storage


def _put(store: storage.Store, name: str, event_type: str = "ADDED") -> dict[str, Any]:
    obj = {
        "metadata": {"name": name, "namespace": "ns", "resourceVersion": str(store.next_version())}
    }
    store.put(("", "configmaps", "ns", name), obj, event_type=event_type)
    return obj


def test_versions_persist_and_never_repeat(tmp_path: Path) -> None:
    store = storage.Store(tmp_path / "db", history_window=10)
    _put(store, "a")
    _put(store, "b")
    final = {
        "metadata": {"name": "b", "namespace": "ns", "resourceVersion": str(store.next_version())}
    }
    # The highest version belongs to a deleted object; it must survive the restart anyway.
    store.remove(("", "configmaps", "ns", "b"), final)
    store.close()
    reopened = storage.Store(tmp_path / "db", history_window=10)
    assert reopened.resource_version == 3
    assert [e.obj["metadata"]["name"] for e in reopened.entries("", "configmaps")] == ["a"]
    # History survives the restart: a watch resumed from any acknowledged version continues.
    assert [(e.type, e.resource_version) for e in reopened.history_since(1)] == [
        ("ADDED", 2),
        ("DELETED", 3),
    ]
    assert reopened.history_since(3) == []
    assert reopened.next_version() == 4


def test_history_window_evicts_oldest(tmp_path: Path) -> None:
    store = storage.Store(tmp_path / "db", history_window=3)
    for index in range(5):
        _put(store, f"o{index}")
    assert [e.resource_version for e in store.history_since(2)] == [3, 4, 5]
    with pytest.raises(storage.Gone) as raised:
        store.history_since(1)
    assert str(raised.value) == "too old resource version: 1 (3)"


def test_history_window_survives_restart_and_old_events_are_pruned(tmp_path: Path) -> None:
    store = storage.Store(tmp_path / "db", history_window=3)
    for index in range(100):
        _put(store, f"o{index}")
    store.close()
    reopened = storage.Store(tmp_path / "db", history_window=3)
    assert [e.resource_version for e in reopened.history_since(97)] == [98, 99, 100]
    with pytest.raises(storage.Gone) as raised:
        reopened.history_since(96)
    assert str(raised.value) == "too old resource version: 96 (98)"
    reopened.close()
    # Evicted events do not pile up on disk (they are deleted in batches).

    with contextlib.closing(sqlite3.connect(tmp_path / "db")) as db:
        (kept,) = db.execute("SELECT COUNT(*) FROM events").fetchone()
    assert kept < 3 + 64


def _defer(store: storage.Store, name: str) -> storage.ObjectKey:
    key = ("", "configmaps", "ns", name)
    obj = {
        "metadata": {"name": name, "namespace": "ns", "resourceVersion": str(store.next_version())}
    }
    store.put(key, obj, event_type="ADDED", deferred=True)
    return key


async def test_group_commit_publishes_only_after_one_commit(tmp_path: Path) -> None:
    store = storage.Store(tmp_path / "db")
    published: list[int] = []
    store.subscribe(lambda event: published.append(event.resource_version))
    keys = [_defer(store, name) for name in ("a", "b", "c")]
    # In memory at once (a later write's read-check-write sees them), shown to no one yet: not
    # in the committed version, the history or any watcher.
    assert all(store.get(key) is not None for key in keys)
    assert store.latest_version == 3
    assert store.resource_version == 0
    assert published == []
    assert store.history_since(0) == []
    await store.synced()
    assert store.resource_version == 3
    assert published == [1, 2, 3]
    store.close()
    reopened = storage.Store(tmp_path / "db")
    assert [e.obj["metadata"]["name"] for e in reopened.entries("", "configmaps")] == [
        "a",
        "b",
        "c",
    ]


async def test_group_commit_that_fails_is_undone_before_anyone_sees_it(tmp_path: Path) -> None:
    store = storage.Store(tmp_path / "db")
    published: list[int] = []
    store.subscribe(lambda event: published.append(event.resource_version))
    _put(store, "before")
    key = _defer(store, "during")
    assert store.get(key) is not None
    # A real fault: while the batch commits, no file of this process may grow (EFBIG, as on a
    # full disk).
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    previous = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (1, hard))
    try:
        with pytest.raises(storage.StorageError):
            await store.synced()
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, previous)
    assert store.get(key) is None
    assert published == [1]
    assert store.resource_version == 1
    # Storage works again: the next write commits, at a version never shown before.
    _defer(store, "after")
    await store.synced()
    assert published == [1, 3]
    store.close()
    reopened = storage.Store(tmp_path / "db")
    assert [e.obj["metadata"]["name"] for e in reopened.entries("", "configmaps")] == [
        "after",
        "before",
    ]
