"""Several worker processes of one token-service replica on one port (``--workers N``).

Python runs one thread of Python code at a time, so one process uses one core. With
``workers > 1`` the process started as ``agentauth token-service`` becomes a supervisor that
forks the workers and serves nothing itself.

Guarantees:
- Every worker binds the same address with ``SO_REUSEPORT``: the kernel spreads new connections
  over the listening workers, with no accept lock and no thundering herd. A port of 0 is chosen
  once, by the supervisor, so every worker listens on the same one.
- The workers share their replay caches (request signatures, assertion ``jti``s, AWS signed
  requests) and rate limits (``agentauth.tokenservice.shared``): a credential accepted by one
  worker is refused as a replay by every other, and each budget is the replica's.
- ``/readyz`` of any worker is the replica's: ready only while every worker is.
- SIGTERM or SIGINT to the supervisor reaches every worker, which drains as a single process does
  (``app.serve``: readiness fails, the listener closes, long-polls are answered, in-flight
  requests get ``--shutdown-timeout``); the supervisor exits 0 once all have exited.
- A worker that exits on its own (a crash) stops the others and the supervisor exits 1, so the
  container is restarted whole rather than left serving with fewer workers than configured.
- Each worker keeps its own list+watch caches: memory and API watches grow with the workers
  (docs/operations.md, "Worker processes").
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import multiprocessing
import multiprocessing.connection
import os
import signal
import socket
from collections.abc import Callable
from typing import Any

from agentauth.tokenservice import settings as settings_module
from agentauth.tokenservice import shared as shared_module

log = logging.getLogger(__name__)

_FORK = multiprocessing.get_context("fork")


def _reserve_port(settings: settings_module.Settings) -> tuple[settings_module.Settings, Any]:
    """With ``listen_port`` 0, bind (without listening) a ``SO_REUSEPORT`` socket to learn a free
    port and hold it for the workers; returns the settings with that port and the socket."""
    if settings.listen_port != 0:
        return settings, None
    family = socket.AF_INET6 if ":" in settings.listen_host else socket.AF_INET
    holder = socket.socket(family, socket.SOCK_STREAM)
    holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    holder.bind((settings.listen_host, 0))
    return dataclasses.replace(settings, listen_port=holder.getsockname()[1]), holder


def _worker(
    settings: settings_module.Settings,
    shared: shared_module.WorkerShared,
    index: int,
    serve: Callable[..., Any],
    mask: set[signal.Signals],
) -> None:
    """One worker: ``serve`` until SIGTERM/SIGINT. It starts with both signals blocked (as the
    supervisor forked it) and unblocks them once its event loop handles them, so a signal that
    arrives during start-up stops it cleanly instead of killing it."""
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_DFL)

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        await serve(
            settings,
            stop=stop,
            shared=shared,
            worker=index,
            started=lambda url: log.info("token service worker %d on %s", index, url),
        )

    asyncio.run(main())


def supervise(settings: settings_module.Settings, *, serve: Callable[..., Any]) -> int:
    """Fork ``settings.workers`` workers running ``serve`` (``app.serve``) and wait for them;
    the exit code of ``agentauth token-service`` (see the module docstring)."""
    settings, holder = _reserve_port(settings)
    shared = shared_module.WorkerShared(workers=settings.workers, settings=settings)
    stopping = False
    processes: list[multiprocessing.process.BaseProcess] = []

    def forward(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True
        for process in processes:
            if process.pid is not None and process.exitcode is None:
                os.kill(process.pid, signal.SIGTERM)

    # Blocked until the handlers are in place, so a signal during the forks is not lost; the
    # workers set their own handlers (asyncio) before unblocking.
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT})
    try:
        for index in range(settings.workers):
            process = _FORK.Process(
                target=_worker,
                args=(settings, shared, index, serve, previous),
                name=f"agentauth-token-service-worker-{index}",
            )
            process.start()
            processes.append(process)
        signal.signal(signal.SIGTERM, forward)
        signal.signal(signal.SIGINT, forward)
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)
    log.info("token service: %d workers on port %d", settings.workers, settings.listen_port)
    failed = False
    try:
        running: dict[int, multiprocessing.process.BaseProcess] = {
            process.sentinel: process for process in processes
        }
        while running:
            for sentinel in multiprocessing.connection.wait(list(running)):
                assert isinstance(sentinel, int)  # noqa: S101 - process sentinels are fds
                ended = running.pop(sentinel)
                ended.join()
                if not stopping:
                    log.error(
                        "token service worker %s exited (code %s): stopping the others",
                        ended.name,
                        ended.exitcode,
                    )
                    failed = True
                    forward(signal.SIGTERM, None)
                elif ended.exitcode != 0:
                    failed = True
    finally:
        if holder is not None:
            holder.close()
    return 1 if failed else 0
