"""Replay caches and token buckets shared by the worker processes of a replica: the contracts of
the in-process ones, across real forked processes, failing closed when full."""

from __future__ import annotations

import datetime
import multiprocessing
from typing import Any

import pytest

from agentauth.domain import assertions, errors
from agentauth.tokenservice import shared

FORK = multiprocessing.get_context("fork")


def _remember_in_child(cache: shared.SharedReplayCache, key: str, outcome: Any) -> None:
    try:
        cache.remember(key, expires_at=2_000_000_000.0, now=1_000_000_000.0)
    except assertions.Replayed:
        outcome.put("replayed")
    else:
        outcome.put("remembered")


def test_a_key_remembered_in_one_process_is_a_replay_in_another() -> None:
    cache = shared.SharedReplayCache(name="test", slots=1024)
    cache.remember("jti-1", expires_at=2_000_000_000.0, now=1_000_000_000.0)
    outcome = FORK.Queue()
    for key in ("jti-1", "jti-2"):
        child = FORK.Process(target=_remember_in_child, args=(cache, key, outcome))
        child.start()
        child.join(timeout=10)
        assert child.exitcode == 0
    assert [outcome.get(timeout=5), outcome.get(timeout=5)] == ["replayed", "remembered"]
    with pytest.raises(assertions.Replayed):  # what the child remembered, the parent sees
        cache.remember("jti-2", expires_at=2_000_000_000.0, now=1_000_000_000.0)


def test_an_expired_or_forgotten_key_may_be_used_again() -> None:
    cache = shared.SharedReplayCache(name="test", slots=1024)
    cache.remember("a", expires_at=100.0, now=50.0)
    with pytest.raises(assertions.Replayed):
        cache.remember("a", expires_at=200.0, now=99.0)
    cache.remember("a", expires_at=200.0, now=100.0)  # expired at 100
    cache.forget("a")
    cache.remember("a", expires_at=300.0, now=150.0)
    assert len(cache) == 0  # expires_at is in the past of the wall clock: nothing live


def test_a_full_table_refuses_new_keys_and_keeps_the_live_ones() -> None:
    cache = shared.SharedReplayCache(name="test", slots=64)
    for index in range(64):
        cache.remember(f"k{index}", expires_at=200.0, now=100.0)
    with pytest.raises(errors.TemporarilyUnavailable) as full:
        cache.remember("one-more", expires_at=200.0, now=100.0)
    assert full.value.description == "replay cache is full; retry shortly"
    with pytest.raises(assertions.Replayed):
        cache.remember("k7", expires_at=200.0, now=100.0)
    cache.remember("one-more", expires_at=300.0, now=200.0)  # once they expired, room again


def test_aws_replays_keep_their_own_errors() -> None:
    cache = shared.SharedAwsReplayCache(slots=1024)
    now = datetime.datetime(2026, 3, 1, tzinfo=datetime.UTC)
    later = now + datetime.timedelta(minutes=1)
    cache.remember("sig", expires_at=later, now=now)
    with pytest.raises(errors.InvalidGrant) as replayed:
        cache.remember("sig", expires_at=later, now=now)
    assert replayed.value.description == "the AWS signed request has already been used"
    cache.forget("sig")
    cache.remember("sig", expires_at=later, now=now)


def test_buckets_spend_the_burst_then_refuse_with_retry_after() -> None:
    clock = [1000.0]
    buckets = shared.SharedTokenBuckets(
        name="test",
        rate=0.5,
        burst=2,
        refusal="too many token requests from {key}",
        clock=lambda: clock[0],
        slots=1024,
    )
    buckets.take("10.0.0.1")
    buckets.take("10.0.0.1")
    with pytest.raises(errors.RateLimited) as limited:
        buckets.take("10.0.0.1")
    assert limited.value.description == "too many token requests from 10.0.0.1; retry in 2 s"
    assert limited.value.headers["Retry-After"] == "2"
    buckets.take("10.0.0.2")  # another key, its own bucket
    clock[0] += 2.0
    buckets.take("10.0.0.1")
    with pytest.raises(errors.RateLimited):
        buckets.take("10.0.0.1")


def _take_in_child(buckets: shared.SharedTokenBuckets, outcome: Any) -> None:
    try:
        buckets.take("agent")
    except errors.RateLimited:
        outcome.put("limited")
    else:
        outcome.put("taken")


def test_a_bucket_is_one_budget_for_every_process() -> None:
    buckets = shared.SharedTokenBuckets(name="test", rate=0.001, burst=2, slots=1024)
    outcome = FORK.Queue()
    for _ in range(3):
        child = FORK.Process(target=_take_in_child, args=(buckets, outcome))
        child.start()
        child.join(timeout=10)
    assert [outcome.get(timeout=5) for _ in range(3)] == ["taken", "taken", "limited"]


def test_the_board_is_ready_only_when_every_worker_is() -> None:
    board = shared.ReadyBoard(3)
    assert board.not_ready() == [0, 1, 2]
    board.set(0, True)
    board.set(2, True)
    assert board.not_ready() == [1]
    board.set(1, True)
    assert board.not_ready() == []
    board.set(2, False)
    assert board.not_ready() == [2]


def _publish_in_child(board: shared.MetricsBoard, worker: int, snapshot: bytes) -> None:
    board.publish(worker, snapshot)


def test_a_metrics_snapshot_published_by_one_process_is_read_by_another() -> None:
    board = shared.MetricsBoard(2, slot_bytes=4096)
    assert (board.read(0), board.read(1)) == (None, None)  # nothing published yet
    child = FORK.Process(target=_publish_in_child, args=(board, 1, b'[{"name": "x"}]'))
    child.start()
    child.join(timeout=10)
    assert child.exitcode == 0
    assert (board.read(0), board.read(1)) == (None, b'[{"name": "x"}]')
    board.publish(1, b"[]")  # a shorter snapshot replaces the longer one whole
    assert board.read(1) == b"[]"


def test_a_metrics_snapshot_larger_than_its_slot_is_refused_and_the_last_one_kept() -> None:
    board = shared.MetricsBoard(1, slot_bytes=64)
    board.publish(0, b"[1]")
    with pytest.raises(ValueError) as refused:
        board.publish(0, b"x" * 57)
    assert str(refused.value) == "metrics snapshot of 57 bytes does not fit a slot of 56 bytes"
    assert board.read(0) == b"[1]"
