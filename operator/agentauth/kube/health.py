"""Is the API server answering? A small periodic probe, for readiness reports and for
reconnecting watches as soon as the server is back.

A watch on a frozen API server (a stopped process, a partition that drops packets) sees nothing:
no error, no event, until its idle deadline. This probe notices within seconds.

Guarantees:
- One ``GET /version`` every ``interval`` seconds (every ``interval_down`` while the server is
  unreachable), each with the client's deadline; a frozen or gone server is noticed within
  ``interval`` + the deadline.
- Any HTTP answer but 429/5xx counts as reachable (a 401 or 403 is an answer: credentials are
  the callers' business); ``reachable`` starts true (nothing is known to be wrong before the
  first probe).
- ``on_recovered`` callbacks run, in order, each time the server answers after having failed.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from agentauth.kube import client as kubeclient

log = logging.getLogger(__name__)

PROBE_PATH = "/version"


class ApiHealth:
    """Probe state of one API server (see the module guarantees)."""

    def __init__(
        self,
        api: kubeclient.KubeClient,
        *,
        interval: float = 5.0,
        interval_down: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.api = api
        self.interval = interval
        self.interval_down = interval_down
        self._clock = clock
        self.reachable = True
        self.since = clock()
        self.last_error: str | None = None
        self.on_recovered: list[Callable[[], None]] = []

    def unreachable_for(self) -> float:
        """Seconds since the server stopped answering (0 while it answers)."""
        return 0.0 if self.reachable else self._clock() - self.since

    async def check(self) -> bool:
        """Probe once; update the state; run ``on_recovered`` on a recovery."""
        try:
            await self.api.request("GET", PROBE_PATH)
            answered, error = True, None
        except kubeclient.ApiUnavailable as exc:
            answered, error = False, exc.message
        except kubeclient.ApiError:
            answered, error = True, None
        if answered != self.reachable:
            self.reachable, self.since = answered, self._clock()
            if answered:
                log.info("the API server answers again")
                for callback in self.on_recovered:
                    callback()
            else:
                log.warning("the API server does not answer: %s", error)
        self.last_error = error
        return answered

    async def run(self) -> None:
        """Probe forever."""
        while True:
            reachable = await self.check()
            # the probe's period, not synchronisation
            await asyncio.sleep(self.interval if reachable else self.interval_down)
