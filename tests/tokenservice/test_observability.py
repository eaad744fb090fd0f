"""Metrics of one token-service process, and of a replica's workers merged into one scrape."""

from __future__ import annotations

import logging

import pytest
from prometheus_client import parser

from agentauth.tokenservice import observability


def exchanges_by_worker(text: bytes) -> dict[tuple[str, str], float]:
    """``agentauth_token_exchanges_total`` of an exposition, by (worker, result)."""
    found: dict[tuple[str, str], float] = {}
    for family in parser.text_string_to_metric_families(text.decode()):
        for sample in family.samples:
            if sample.name == "agentauth_token_exchanges_total":
                found[(sample.labels.get("worker", "-"), sample.labels["result"])] = sample.value
    return found


def metrics_with(*results: str) -> observability.Metrics:
    metrics = observability.Metrics(lambda: {"agents": 3})
    for result in results:
        metrics.exchange_done(result=result, subject_type="jwt", seconds=0.001)
    return metrics


def test_one_process_renders_its_own_samples_without_a_worker_label() -> None:
    text = metrics_with("issued", "issued").render()
    assert exchanges_by_worker(text) == {("-", "issued"): 2.0}
    assert b'agentauth_cache_objects{cache="agents"} 3.0' in text


def test_a_worker_renders_its_siblings_snapshots_each_sample_labelled_with_its_worker() -> None:
    first = metrics_with("issued")
    second = metrics_with("issued", "issued", "invalid_grant")
    text = first.render(worker=0, siblings={1: second.snapshot()})
    assert exchanges_by_worker(text) == {
        ("0", "issued"): 1.0,
        ("1", "issued"): 2.0,
        ("1", "invalid_grant"): 1.0,
    }
    families = {f.name: f for f in parser.text_string_to_metric_families(text.decode())}
    assert families["agentauth_token_exchange_seconds"].type == "histogram"
    counts = {
        s.labels["worker"]: s.value
        for s in families["agentauth_token_exchange_seconds"].samples
        if s.name == "agentauth_token_exchange_seconds_count"
    }
    assert counts == {"0": 1.0, "1": 3.0}
    caches = {s.labels["worker"]: s.value for s in families["agentauth_cache_objects"].samples}
    assert caches == {"0": 3.0, "1": 3.0}


def test_an_unreadable_sibling_snapshot_is_logged_and_the_others_still_rendered(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.WARNING, logger="agentauth.tokenservice.observability"):
        text = metrics_with("issued").render(
            worker=0, siblings={1: b"not json", 2: metrics_with("invalid_grant").snapshot()}
        )
    assert exchanges_by_worker(text) == {("0", "issued"): 1.0, ("2", "invalid_grant"): 1.0}
    assert [r.getMessage().split(":")[0] for r in caplog.records] == [
        "metrics snapshot of worker 1 is unreadable"
    ]
