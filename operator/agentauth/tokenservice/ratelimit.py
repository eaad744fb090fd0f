"""Per-key token buckets. The token service keeps two sets: one per client address, taken before a
token request is even parsed (so a flood of garbage is limited as well as a flood of valid
requests), and one per agent, taken once the request names an agent.

Guarantees: each key may spend ``burst`` requests at once and ``rate`` per second sustained;
``take`` raises ``errors.RateLimited`` (429, RFC 6749-shaped body) with a whole-second
``Retry-After`` when the bucket is empty. Memory stays bounded: idle, full buckets are dropped
once there are ``max_keys``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from agentauth.domain import errors


@dataclass(frozen=True, slots=True)
class Budget:
    """One rate limit of the token service: its rate, burst and the refusal it answers with."""

    rate: float
    burst: int
    refusal: str


def budgets(settings: Any) -> dict[str, Budget]:
    """The token service's rate limits by name, read from its settings: the one definition both
    a single process (:class:`TokenBuckets`) and the workers' shared memory build them from."""
    return {
        "agent": Budget(
            rate=settings.rate_limit_per_second,
            burst=settings.rate_limit_burst,
            refusal="too many token requests for {key}",
        ),
        "client": Budget(
            rate=settings.client_rate_limit_per_second,
            burst=settings.client_rate_limit_burst,
            refusal="too many token requests from {key}",
        ),
        # Ask answers come out of their own per-agent budget (same rate as token requests), so a
        # looping agent can neither flood a replica nor starve its own token refreshes.
        "ask": Budget(
            rate=settings.rate_limit_per_second,
            burst=settings.rate_limit_burst,
            refusal="too many Ask requests for {key}",
        ),
        "introspection": Budget(
            rate=settings.introspection_rate_limit_per_second,
            burst=settings.introspection_rate_limit_burst,
            refusal="too many introspection requests from {key}",
        ),
    }


class Buckets(Protocol):
    """Token buckets by key: :class:`TokenBuckets` in one process, ``shared.SharedTokenBuckets``
    across the workers of a replica."""

    def take(self, key: str) -> None:
        """Spend one token of ``key``'s bucket or raise ``errors.RateLimited``."""


class TokenBuckets:
    def __init__(
        self,
        *,
        rate: float,
        burst: int,
        max_keys: int = 100_000,
        clock: Callable[[], float] = time.monotonic,
        refusal: str = "too many token requests for {key}",
    ) -> None:
        """``refusal`` is the ``error_description`` of a 429, formatted with ``key``."""
        self.rate = rate
        self.refusal = refusal
        self.burst = float(burst)
        self.max_keys = max_keys
        self._clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}  # key -> (tokens, updated)

    def take(self, key: str) -> None:
        now = self._clock()
        tokens, updated = self._buckets.get(key, (self.burst, now))
        tokens = min(self.burst, tokens + (now - updated) * self.rate)
        if tokens < 1.0:
            retry_after = max(1, math.ceil((1.0 - tokens) / self.rate))
            self._buckets[key] = (tokens, now)
            raise errors.RateLimited(
                f"{self.refusal.format(key=key)}; retry in {retry_after} s",
                retry_after=retry_after,
            )
        self._buckets[key] = (tokens - 1.0, now)
        if len(self._buckets) > self.max_keys:
            self._evict(now)

    def _evict(self, now: float) -> None:
        full_after = self.burst / self.rate
        self._buckets = {k: v for k, v in self._buckets.items() if now - v[1] < full_after}
