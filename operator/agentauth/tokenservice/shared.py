"""State the worker processes of one token-service replica share (``--workers``).

A replica with several workers must behave as one process: a request signature, an assertion
``jti`` or an AWS signed request accepted by one worker is refused as a replay by every other
one, and a rate limit is the replica's budget, not one per worker. So these live in shared memory
created before the workers are forked (anonymous ``MAP_SHARED`` pages and a process-shared lock
each), not in each worker's heap.

Guarantees:
- :class:`SharedTable` maps a key (hashed with BLAKE2b to 128 bits) to two floats, atomically
  across processes (one lock per table, held for one lookup-and-write, a few microseconds).
  Entries are never deleted, only made *reusable* (expired, or an idle full bucket), so its
  probe chains stay intact; a table whose probe window (:data:`MAX_PROBE` slots) holds only live
  entries refuses new keys (fail closed: ``temporarily_unavailable``) rather than forgetting a
  live one. A lock not obtained within :data:`LOCK_TIMEOUT` seconds (a worker killed while
  holding it) is ``temporarily_unavailable`` too, never a hang.
- :class:`SharedReplayCache` and :class:`SharedAwsReplayCache` keep the contracts of
  ``assertions.InMemoryReplayCache`` and ``aws.InMemoryReplayCache`` (same errors, same messages);
  :class:`SharedTokenBuckets` those of ``ratelimit.TokenBuckets``.
- :class:`ReadyBoard` holds one readiness flag per worker: the replica answers ``/readyz`` ready
  only when every worker has synced its caches and none is draining.
- :class:`MetricsBoard` holds each worker's latest metrics snapshot, so ``/metrics`` of any worker
  reports every worker's counters (each series labelled with its ``worker``).
- Nothing here is used with one worker: a single process keeps the in-process structures.
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import math
import mmap
import multiprocessing
import struct
import time
from collections.abc import Callable, Iterator
from typing import Any

from agentauth.domain import assertions, errors
from agentauth.tokenservice import ratelimit

_SLOT = struct.Struct("=16sdd")
"""One entry: the key's 128-bit digest and two values."""
_EMPTY = bytes(16)
MAX_PROBE = 64
"""Slots looked at for one key; with at most half the slots live this is never the limit."""
LOCK_TIMEOUT = 1.0
DEFAULT_SLOTS = 1 << 18
"""Per table: 262,144 slots of 32 bytes (8 MiB of address space, touched only as used), room for
the 100,000 live entries each in-process structure allows at under 40 % load."""


@contextlib.contextmanager
def _holding(lock: Any, what: str) -> Iterator[None]:
    """``lock`` held for the block; ``temporarily_unavailable`` (``what`` is busy) when it is not
    obtained within :data:`LOCK_TIMEOUT` seconds (a worker killed while holding it)."""
    if not lock.acquire(timeout=LOCK_TIMEOUT):
        raise errors.TemporarilyUnavailable(f"{what} is busy; retry shortly")
    try:
        yield
    finally:
        lock.release()


class SharedTable:
    """Key -> (a, b) in shared memory; see the module docstring."""

    def __init__(self, *, slots: int = DEFAULT_SLOTS, name: str) -> None:
        if slots & (slots - 1):
            raise ValueError("slots must be a power of two")
        self.name = name
        self._mask = slots - 1
        self._memory = mmap.mmap(-1, slots * _SLOT.size)  # anonymous, shared with forked children
        self._lock = multiprocessing.get_context("fork").Lock()
        self._salt = name.encode() + b"\x00"

    def digest(self, key: str) -> bytes:
        found = hashlib.blake2b(self._salt + key.encode(), digest_size=16).digest()
        return found if found != _EMPTY else b"\x01" + found[1:]

    def locked(self) -> contextlib.AbstractContextManager[None]:
        return _holding(self._lock, f"the {self.name} table")

    def locate(
        self, digest: bytes, *, reusable: Callable[[float, float], bool]
    ) -> tuple[int | None, tuple[float, float] | None]:
        """(slot of ``digest``, its values), or (the slot a new entry goes to, ``None``); the
        slot is ``None`` when the probe window is full of live entries. Call under ``locked``."""
        start = int.from_bytes(digest[:8], "little") & self._mask
        free: int | None = None
        for step in range(MAX_PROBE):
            index = (start + step) & self._mask
            stored, a, b = _SLOT.unpack_from(self._memory, index * _SLOT.size)
            if stored == digest:
                return index, (a, b)
            if stored == _EMPTY:
                return (free if free is not None else index), None
            if free is None and reusable(a, b):
                free = index
        return free, None

    def write(self, index: int, digest: bytes, a: float, b: float) -> None:
        _SLOT.pack_into(self._memory, index * _SLOT.size, digest, a, b)

    def values(self) -> Iterator[tuple[float, float]]:
        """Every entry's values (tests and sizes: a scan of the whole table)."""
        for index in range(self._mask + 1):
            stored, a, b = _SLOT.unpack_from(self._memory, index * _SLOT.size)
            if stored != _EMPTY:
                yield a, b


class SharedReplayCache:
    """``assertions.ReplayCache`` shared by the workers (request signatures, assertion jtis)."""

    def __init__(self, *, name: str, slots: int = DEFAULT_SLOTS) -> None:
        self.table = SharedTable(slots=slots, name=name)

    def remember(self, key: str, *, expires_at: float, now: float) -> None:
        digest = self.table.digest(key)
        with self.table.locked():
            index, seen = self.table.locate(digest, reusable=lambda until, _: until <= now)
            if seen is not None and seen[0] > now:
                raise assertions.Replayed(key)
            if index is None:
                raise errors.TemporarilyUnavailable("replay cache is full; retry shortly")
            self.table.write(index, digest, expires_at, 0.0)

    def forget(self, key: str) -> None:
        digest = self.table.digest(key)
        with self.table.locked():
            index, seen = self.table.locate(digest, reusable=lambda until, _: False)
            if seen is not None and index is not None:
                self.table.write(index, digest, 0.0, 0.0)

    def __len__(self) -> int:
        now = time.time()
        return sum(1 for until, _ in self.table.values() if until > now)


class SharedAwsReplayCache:
    """``aws.ReplayCache`` shared by the workers (AWS signed ``GetCallerIdentity`` requests)."""

    def __init__(self, *, slots: int = DEFAULT_SLOTS) -> None:
        self._cache = SharedReplayCache(name="aws-replay", slots=slots)

    def remember(self, key: str, *, expires_at: datetime.datetime, now: datetime.datetime) -> None:
        try:
            self._cache.remember(key, expires_at=expires_at.timestamp(), now=now.timestamp())
        except assertions.Replayed:
            raise errors.InvalidGrant("the AWS signed request has already been used") from None
        except errors.TemporarilyUnavailable:
            raise errors.TemporarilyUnavailable(
                "too many AWS signed requests in the last minute; retry later"
            ) from None

    def forget(self, key: str) -> None:
        self._cache.forget(key)


class SharedTokenBuckets:
    """``ratelimit.TokenBuckets`` shared by the workers: the replica's budget per key."""

    def __init__(
        self,
        *,
        name: str,
        rate: float,
        burst: int,
        refusal: str = "too many token requests for {key}",
        clock: Callable[[], float] = time.monotonic,
        slots: int = DEFAULT_SLOTS,
    ) -> None:
        self.table = SharedTable(slots=slots, name=name)
        self.rate = rate
        self.burst = float(burst)
        self.refusal = refusal
        self._clock = clock  # CLOCK_MONOTONIC: one clock for every process of the machine
        self._full_after = self.burst / rate if rate > 0 else math.inf

    def take(self, key: str) -> None:
        digest = self.table.digest(key)
        with self.table.locked():
            now = self._clock()
            index, stored = self.table.locate(
                digest, reusable=lambda _, updated: now - updated >= self._full_after
            )
            tokens, updated = stored if stored is not None else (self.burst, now)
            tokens = min(self.burst, tokens + (now - updated) * self.rate)
            if index is None:
                raise errors.TemporarilyUnavailable("rate-limit table is full; retry shortly")
            if tokens < 1.0:
                self.table.write(index, digest, tokens, now)
                retry_after = max(1, math.ceil((1.0 - tokens) / self.rate))
                raise errors.RateLimited(
                    f"{self.refusal.format(key=key)}; retry in {retry_after} s",
                    retry_after=retry_after,
                )
            self.table.write(index, digest, tokens - 1.0, now)


class ReadyBoard:
    """One readiness byte per worker, in shared memory."""

    def __init__(self, workers: int) -> None:
        self.workers = workers
        self._flags = mmap.mmap(-1, max(1, workers))

    def set(self, worker: int, ready: bool) -> None:
        self._flags[worker] = 1 if ready else 0

    def not_ready(self) -> list[int]:
        """The workers that are not ready (by index)."""
        return [index for index in range(self.workers) if self._flags[index] != 1]


METRICS_SLOT_BYTES = 1 << 20
"""Per worker: room for its metrics snapshot (address space, touched only as used; a
snapshot of this service's metrics is a few KiB)."""
_METRICS_HEADER = struct.Struct("=Q")


class MetricsBoard:
    """Each worker's latest metrics snapshot, one slot per worker, in shared memory.

    A worker publishes its own snapshot (``Metrics.snapshot``) and whichever worker takes a
    scrape reads its siblings', so ``/metrics`` of any worker answers for the whole replica. A
    slot holds a length and the bytes, written and read under one process-shared lock (a memory
    copy of a few KiB); a worker that never published reads as ``None``.
    """

    def __init__(self, workers: int, *, slot_bytes: int = METRICS_SLOT_BYTES) -> None:
        self.workers = workers
        self.slot_bytes = slot_bytes
        self._memory = mmap.mmap(-1, max(1, workers) * slot_bytes)
        self._lock = multiprocessing.get_context("fork").Lock()

    def _locked(self) -> contextlib.AbstractContextManager[None]:
        return _holding(self._lock, "the metrics board")

    def publish(self, worker: int, snapshot: bytes) -> None:
        room = self.slot_bytes - _METRICS_HEADER.size
        if len(snapshot) > room:
            raise ValueError(
                f"metrics snapshot of {len(snapshot)} bytes does not fit a slot of {room} bytes"
            )
        start = worker * self.slot_bytes + _METRICS_HEADER.size
        with self._locked():
            self._memory[start : start + len(snapshot)] = snapshot
            _METRICS_HEADER.pack_into(self._memory, worker * self.slot_bytes, len(snapshot))

    def read(self, worker: int) -> bytes | None:
        """``worker``'s last snapshot, or ``None`` if it has published none."""
        with self._locked():
            (length,) = _METRICS_HEADER.unpack_from(self._memory, worker * self.slot_bytes)
            start = worker * self.slot_bytes + _METRICS_HEADER.size
            return bytes(self._memory[start : start + length]) if length else None


class WorkerShared:
    """Everything the workers of one replica share; created by the supervisor before forking."""

    def __init__(self, *, workers: int, settings: Any) -> None:
        self.workers = workers
        self.board = ReadyBoard(workers)
        self.metrics = MetricsBoard(workers)
        self.signature_replay = SharedReplayCache(name="signature-replay")
        self.assertion_replay = SharedReplayCache(name="assertion-replay")
        self.aws_replay = SharedAwsReplayCache()
        budgets = ratelimit.budgets(settings)

        def buckets(name: str) -> SharedTokenBuckets:
            budget = budgets[name]
            return SharedTokenBuckets(
                name=f"{name}-buckets",
                rate=budget.rate,
                burst=budget.burst,
                refusal=budget.refusal,
            )

        self.buckets = buckets("agent")
        self.client_buckets = buckets("client")
        self.ask_buckets = buckets("ask")
        self.introspection_buckets = buckets("introspection")
