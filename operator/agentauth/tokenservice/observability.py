"""Prometheus metrics and the structured audit log of the token service.

Guarantees: every decision (issued, denied, asked, introspected) produces exactly one JSON line on
the ``agentauth.audit`` logger with a fresh ``audit_id``; audit lines never contain a presented
token or an issued token, only their ``jti`` or a short SHA-256 fingerprint. Metrics live in a
registry per application instance, so several services (tests, ``agentauth dev``) can coexist.
With several worker processes (``--workers``), a scrape of any worker reports every worker's
samples, each labelled ``worker`` (its own live, its siblings' as last published, at most
``app.METRICS_INTERVAL`` old): each worker's counters are one monotonic series whichever worker
the scrape reaches.
"""

from __future__ import annotations

import json
import logging
import secrets
import time
from collections.abc import Callable, Iterator, Mapping
from typing import IO, Any

import orjson
import prometheus_client

audit_log = logging.getLogger("agentauth.audit")
log = logging.getLogger(__name__)

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class Metrics:
    def __init__(self, cache_sizes: Callable[[], dict[str, int]]) -> None:
        self.registry = prometheus_client.CollectorRegistry()
        self.exchanges = prometheus_client.Counter(
            "agentauth_token_exchanges",
            "Token requests by result (issued or the OAuth error code) and subject token type.",
            ["result", "subject_type"],
            registry=self.registry,
        )
        self.latency = prometheus_client.Histogram(
            "agentauth_token_exchange_seconds",
            "Time to answer a token request.",
            ["subject_type"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.asks = prometheus_client.Counter(
            "agentauth_ask_answers",
            "Ask API answers by outcome.",
            ["outcome"],
            registry=self.registry,
        )
        self.introspections = prometheus_client.Counter(
            "agentauth_introspections",
            "Introspection answers by activity.",
            ["active"],
            registry=self.registry,
        )
        self.long_polls = prometheus_client.Gauge(
            "agentauth_access_request_long_polls",
            "Long-polls of access requests waiting for a decision now.",
            registry=self.registry,
        )
        cache_gauge = prometheus_client.Gauge(
            "agentauth_cache_objects",
            "Objects held by each list+watch cache.",
            ["cache"],
            registry=self.registry,
        )
        self._cache_gauge = cache_gauge
        self._children: dict[tuple[str, str], tuple[Any, Any]] = {}
        self._cache_sizes = cache_sizes

    def exchange_done(self, *, result: str, subject_type: str, seconds: float) -> None:
        """Count one token request and its latency (label children cached: hot path)."""
        key = (result, subject_type)
        children = self._children.get(key)
        if children is None:
            children = (
                self.exchanges.labels(result=result, subject_type=subject_type),
                self.latency.labels(subject_type=subject_type),
            )
            self._children[key] = children
        children[0].inc()
        children[1].observe(seconds)

    def _set_cache_sizes(self) -> None:
        for name, size in self._cache_sizes().items():
            self._cache_gauge.labels(cache=name).set(size)

    def _families(self) -> list[dict[str, Any]]:
        """This process's metric families as plain data: what :meth:`snapshot` publishes and
        :meth:`render` merges."""
        self._set_cache_sizes()
        return [
            {
                "name": metric.name,
                "documentation": metric.documentation,
                "type": metric.type,
                "unit": metric.unit,
                "samples": [[s.name, s.labels, s.value] for s in metric.samples],
            }
            for metric in self.registry.collect()
        ]

    def render(
        self, *, worker: int | None = None, siblings: Mapping[int, bytes] | None = None
    ) -> bytes:
        """The Prometheus text exposition of this process's metrics; as worker ``worker`` of a
        replica, merged with its ``siblings``' snapshots (:meth:`snapshot`, by worker index),
        every sample labelled with the ``worker`` it comes from (each worker's counters stay
        one monotonic series whichever worker answers a scrape: ``sum without (worker)`` is the
        replica's)."""
        if worker is None:
            self._set_cache_sizes()
            return prometheus_client.generate_latest(self.registry)
        merged = _Merged()
        for family in self._families():
            merged.add(worker, family)
        for index, snapshot in sorted((siblings or {}).items()):
            try:
                for family in json.loads(snapshot):
                    merged.add(index, family)
            except (ValueError, KeyError, TypeError) as exc:
                log.warning("metrics snapshot of worker %d is unreadable: %s", index, exc)
        registry = prometheus_client.CollectorRegistry(auto_describe=False)
        registry.register(merged)
        return prometheus_client.generate_latest(registry)

    def snapshot(self) -> bytes:
        """This process's samples as JSON, for the other workers of the replica to render."""
        return json.dumps(self._families()).encode()


class _Merged(prometheus_client.registry.Collector):
    """Metric families of several workers, each sample labelled with its worker's index."""

    def __init__(self) -> None:
        self._families: dict[str, prometheus_client.Metric] = {}

    def add(self, worker: int, family: Mapping[str, Any]) -> None:
        """One worker's ``family`` (as ``Metrics._families`` gives it)."""
        name = family["name"]
        merged = self._families.get(name)
        if merged is None:
            merged = prometheus_client.Metric(
                name, family["documentation"], family["type"], family["unit"]
            )
            self._families[name] = merged
        for sample_name, labels, value in family["samples"]:
            merged.add_sample(sample_name, {**labels, "worker": str(worker)}, float(value))

    def collect(self) -> Iterator[prometheus_client.Metric]:
        return iter(self._families.values())


def install_audit_sink(stream: IO[str]) -> None:
    """Write audit lines, one JSON document each, to ``stream`` (flushed per line, so a crash
    loses none that were answered)."""
    writer = logging.StreamHandler(stream)
    writer.setFormatter(logging.Formatter("%(message)s"))
    audit_log.addHandler(writer)
    audit_log.setLevel(logging.INFO)
    audit_log.propagate = False


_ORJSON_OPTIONS = (
    orjson.OPT_NON_STR_KEYS | orjson.OPT_PASSTHROUGH_DATETIME | orjson.OPT_PASSTHROUGH_DATACLASS
)
"""orjson writes what ``json.dumps(..., default=str)`` writes: datetimes and dataclasses through
``str`` (not orjson's own formats), keys that are not strings as strings."""


def audit_line(record: dict[str, Any]) -> str:
    """``record`` as one compact, ASCII JSON line, every value JSON has no type for through
    ``str``: by orjson, or by the standard library when orjson would write something else (text
    beyond ASCII, which ``json`` escapes) or refuses (integers beyond 64 bits)."""
    try:
        line = orjson.dumps(record, default=str, option=_ORJSON_OPTIONS)
    except TypeError:
        line = None
    if line is not None and line.isascii():
        return line.decode("ascii")
    return json.dumps(record, separators=(",", ":"), default=str)


def audit(decision: str, **fields: Any) -> str:
    """Write one audit line; returns its ``audit_id``."""
    audit_id = secrets.token_hex(16)
    if audit_log.isEnabledFor(logging.INFO):  # the id is returned even when nobody listens
        record = {"audit_id": audit_id, "ts": round(time.time(), 3), "decision": decision}
        for name, value in fields.items():
            if value is not None:
                record[name] = value
        # The record made directly: ``Logger.info`` would also walk the stack to find its caller
        # (``findCaller``), a third of the cost of an audit line, for a location nobody reads.
        # Handlers, filters and levels apply as for ``audit_log.info``.
        audit_log.handle(
            audit_log.makeRecord(
                audit_log.name, logging.INFO, __file__, 0, audit_line(record), (), None
            )
        )
    return audit_id
