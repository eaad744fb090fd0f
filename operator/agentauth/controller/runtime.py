"""Per-run state of the controller: the API client, the work queue, the status writer, Events.

Guarantees:
- One :class:`Controller` per ``main.run`` call, reachable from every Kopf handler as
  ``memo.controller``; nothing lives in module globals, so two controllers can run in one process
  (the key-race test does).
- The work queue holds each key at most once and never hands the same key to two workers at a
  time; a key re-added while being worked on is worked on again afterwards, so the last change
  always gets a reconcile (level-based, nothing lost).
- ``write_status`` compares against the newest status known (the object's, or the one this
  controller wrote last if the watch has not delivered it yet) and writes, and posts Events, only
  when the computed status differs; a replay of the same state posts nothing.
- The Events of a status write are posted in the background, after the write and in order per
  object (each object's Events wait for its earlier ones), so a worker's reconcile costs one
  round trip, not three; ``flush_events`` waits for those still being posted (``main.run`` calls
  it at shutdown, so a stopped controller has posted the Events of every status it wrote).
- A failed write is retried with backoff and reported once per distinct error as a Warning Event
  ``StatusUpdateFailed`` on the object, so a missing RBAC rule is visible in ``kubectl describe``.
- Workers reconcile nothing until every registered informer (``informers``) has stored its first
  listing, so no status is computed from a half-filled mirror.
- ``parse`` keeps one parsed model per object (by uid), replaced when its resourceVersion changes
  and dropped with ``forget_parsed``: memory follows the number of objects, not of writes.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import datetime
import logging
from collections.abc import Awaitable, Callable, Hashable, Mapping
from typing import Any, cast

import pydantic

from agentauth.controller import informers as controller_informers
from agentauth.controller import settings as controller_settings
from agentauth.domain import agents as domain_agents
from agentauth.kube import client as kube

logger = logging.getLogger("agentauth.controller")

COMPONENT = "agentauth-controller"
# A namespace's changes are reconciled once it has been quiet this long (see Controller.soon),
# and never later than MAX_SETTLE_SECONDS after the first; both well inside the 2 s in which a
# grant deletion must reach its agents when changes are not streaming in.
SETTLE_SECONDS = 0.3
MAX_SETTLE_SECONDS = 5.0
# A bound for the parse cache (one entry per live object; this only guards against leaks).
_MAX_PARSED = 200_000


def utcnow() -> datetime.datetime:
    """Now, to the second: Kubernetes timestamps have whole seconds, so equal states compare
    equal after a round trip through the API."""
    return datetime.datetime.now(datetime.UTC).replace(microsecond=0)


class WorkQueue:
    """A deduplicating queue of keys (see module guarantees)."""

    def __init__(self) -> None:
        self._queue: asyncio.Queue[Hashable] = asyncio.Queue()
        self._queued: set[Hashable] = set()
        self._active: set[Hashable] = set()
        self._dirty: set[Hashable] = set()

    def add(self, key: Hashable) -> None:
        if key in self._active:
            self._dirty.add(key)
        elif key not in self._queued:
            self._queued.add(key)
            self._queue.put_nowait(key)

    async def get(self) -> Hashable:
        key = await self._queue.get()
        self._queued.discard(key)
        self._active.add(key)
        return key

    def done(self, key: Hashable) -> None:
        self._active.discard(key)
        if key in self._dirty:
            self._dirty.discard(key)
            self.add(key)

    def idle(self) -> bool:
        return not self._queued and not self._active


@dataclasses.dataclass
class _Written:
    uid: str
    resource_version: int
    status: dict[str, Any]


def _rv(body: Mapping[str, Any]) -> int:
    try:
        return int((body.get("metadata") or {}).get("resourceVersion") or 0)
    except ValueError:  # opaque on some servers: then the watched body is always taken
        return 0


class Controller:
    """Everything one controller run shares between its handlers and tasks."""

    def __init__(self, *, settings: controller_settings.Settings, api: kube.KubeClient) -> None:
        self.settings = settings
        self.api = api
        self.queue = WorkQueue()
        # Kopf's in-memory indices, bound from handler kwargs (Kopf passes them to handlers only).
        self.indices: dict[str, Any] = {}
        # List+watch mirrors by name (agents.py, grants.py register theirs); main.run runs them.
        self.informers: dict[str, controller_informers.Informer] = {}
        self._written: dict[tuple[str, str, str], _Written] = {}
        self._reported_failures: dict[tuple[str, str, str], str] = {}
        self._parsed: collections.OrderedDict[tuple[str, str], tuple[str, Any]] = (
            collections.OrderedDict()
        )
        self._timers: dict[Hashable, asyncio.TimerHandle] = {}
        # The last Event-posting task per object (the next one waits for it: order is kept).
        self._event_tails: dict[tuple[str, str, str], asyncio.Task[None]] = {}
        self._event_tasks: set[asyncio.Task[None]] = set()
        self._flushers: dict[str, asyncio.TimerHandle] = {}
        self._pending: dict[str, set[Hashable]] = {}
        self._last_change: dict[str, float] = {}
        self._first_change: dict[str, float] = {}
        self.reconcilers: dict[str, Callable[..., Awaitable[None]]] = {}
        self.failures: collections.deque[str] = collections.deque(maxlen=100)
        # Reconciles completed per kind (observability for tests and debugging).
        self.reconciled: collections.Counter[str] = collections.Counter()
        self.webhook_port: int | None = None
        self.webhook_ca: bytes | None = None

    def bind(self, kwargs: Mapping[str, Any]) -> None:
        """Remember Kopf's index objects (live views) from a handler's kwargs."""
        for name, value in kwargs.items():
            if name.startswith("agentauth_"):
                self.indices[name] = value

    def index(self, name: str) -> Any:
        return self.indices.get(name)

    def informer(self, name: str) -> controller_informers.Informer:
        return self.informers[name]

    async def wait_synced(self) -> None:
        """Return once every informer has stored its first listing."""
        for informer in list(self.informers.values()):
            await informer.synced.wait()

    # --- parsing with a cache: one entry per object, valid for one resourceVersion -----------

    def parse(self, model: type[pydantic.BaseModel], body: Mapping[str, Any]) -> Any:
        """``model`` parsed from ``body``, or the ``pydantic.ValidationError`` it raised."""
        meta = body.get("metadata") or {}
        key = (model.__name__, str(meta.get("uid")))
        version = str(meta.get("resourceVersion"))
        cached = self._parsed.get(key)
        if cached is not None and cached[0] == version:
            return cached[1]
        try:
            parsed: Any = model.model_validate(dict(body))
        except pydantic.ValidationError as exc:
            parsed = exc
        self._parsed[key] = (version, parsed)
        self._parsed.move_to_end(key)
        if len(self._parsed) > _MAX_PARSED:
            self._parsed.popitem(last=False)
        return parsed

    def forget_parsed(self, model: type[pydantic.BaseModel], body: Mapping[str, Any]) -> None:
        """Drop the parsed ``body`` (deleted, or superseded by a newer version: an entry for an
        old resourceVersion is never read again)."""
        meta = body.get("metadata") or {}
        self._parsed.pop((model.__name__, str(meta.get("uid"))), None)

    # --- timers -----------------------------------------------------------------------------

    def wake_at(self, key: Hashable, moment: datetime.datetime) -> None:
        """Enqueue ``key`` at ``moment`` (once per key; an earlier moment replaces a later one)."""
        loop = asyncio.get_running_loop()
        delay = max(0.0, (moment - datetime.datetime.now(datetime.UTC)).total_seconds())
        when = loop.time() + delay + 0.05
        existing = self._timers.get(key)
        if existing is not None and not existing.cancelled() and existing.when() <= when:
            return
        if existing is not None:
            existing.cancel()
        self._timers[key] = loop.call_at(when, self._fire, key)

    def _fire(self, key: Hashable) -> None:
        self._timers.pop(key, None)
        self.queue.add(key)

    def cancel_timers(self) -> None:
        for handle in self._timers.values():
            handle.cancel()
        self._timers.clear()
        for handle in self._flushers.values():
            handle.cancel()
        self._flushers.clear()

    # --- debouncing per namespace ---------------------------------------------------------

    def soon(self, namespace: str, key: Hashable) -> None:
        """Queue ``key`` once its namespace has been quiet for ``SETTLE_SECONDS`` (at most
        ``MAX_SETTLE_SECONDS`` after the first pending change).

        Objects applied together (an Agent and its grants, or a thousand of each) are then
        reconciled once, with all of them in the indices, instead of once per arrival: fewer
        status writes, fewer Events, and no backlog feeding on its own echoes.
        """
        loop = asyncio.get_running_loop()
        now = loop.time()
        self._pending.setdefault(namespace, set()).add(key)
        self._last_change[namespace] = now
        self._first_change.setdefault(namespace, now)
        if namespace not in self._flushers:
            self._flushers[namespace] = loop.call_at(now + SETTLE_SECONDS, self._flush, namespace)

    def _flush(self, namespace: str) -> None:
        loop = asyncio.get_running_loop()
        now = loop.time()
        quiet_at = self._last_change.get(namespace, now) + SETTLE_SECONDS
        deadline = self._first_change.get(namespace, now) + MAX_SETTLE_SECONDS
        if now < quiet_at and now < deadline:
            self._flushers[namespace] = loop.call_at(
                min(quiet_at, deadline), self._flush, namespace
            )
            return
        self._flushers.pop(namespace, None)
        self._first_change.pop(namespace, None)
        for key in self._pending.pop(namespace, set()):
            self.queue.add(key)

    # --- status and events ------------------------------------------------------------------

    def stored_status(self, kind: str, body: Mapping[str, Any]) -> dict[str, Any] | None:
        """The newest status we know for ``body``: its own, or ours if written after it."""
        meta = body.get("metadata") or {}
        written = self._written.get((kind, meta.get("namespace", ""), meta.get("name", "")))
        if (
            written is not None
            and written.uid == meta.get("uid")
            and (written.resource_version > _rv(body))
        ):
            return written.status
        status = body.get("status")
        return dict(status) if isinstance(status, Mapping) else None

    def is_own_write(self, kind: str, body: Mapping[str, Any]) -> bool:
        """Whether ``body`` is exactly the version our last status write produced. Once it is
        seen, the copy of the written status is dropped: the mirror holds it now (at 10,000
        Agents and grants the copies were a tenth of the controller's memory)."""
        meta = body.get("metadata") or {}
        written = self._written.get((kind, meta.get("namespace", ""), meta.get("name", "")))
        own = (
            written is not None
            and written.uid == meta.get("uid")
            and written.resource_version == _rv(body) != 0
        )
        if own and written is not None:
            written.status = {}  # stored_status only reads it while the watch lags behind
        return own

    def forget(self, kind: str, namespace: str, name: str) -> None:
        self._written.pop((kind, namespace, name), None)
        self._reported_failures.pop((kind, namespace, name), None)

    async def write_status(
        self,
        *,
        resource: kube.Resource,
        kind: str,
        body: Mapping[str, Any],
        status: dict[str, Any],
        events: list[domain_agents.Event],
    ) -> bool:
        """Patch ``status`` onto the object and post ``events``; False if it no longer exists."""
        meta = body.get("metadata") or {}
        namespace, name = str(meta.get("namespace", "")), str(meta.get("name", ""))
        key = (kind, namespace, name)
        # A merge patch replaces lists wholesale; null removes fields we no longer set.
        stored = self.stored_status(kind, body) or {}
        patch_status: dict[str, Any] = {k: None for k in stored if k not in status}
        patch_status.update(status)
        patch = {"status": patch_status}
        try:
            result = await self.api.patch(
                resource, name, patch, namespace=namespace, subresource="status"
            )
        except kube.ApiError as exc:
            if exc.code == 404:  # deleted meanwhile: nothing to write
                return False
            await self._report_failure(key, body=body, kind=kind, error=exc)
            raise
        self._reported_failures.pop(key, None)
        self._written[key] = _Written(
            uid=str(meta.get("uid")), resource_version=_rv(result), status=status
        )
        if events:
            self._post_in_background(key, body=body, kind=kind, events=events)
        return True

    def _post_in_background(
        self,
        key: tuple[str, str, str],
        *,
        body: Mapping[str, Any],
        kind: str,
        events: list[domain_agents.Event],
    ) -> None:
        previous = self._event_tails.get(key)

        async def post() -> None:
            if previous is not None:
                await asyncio.wait([previous])  # its outcome is its own (post_event never raises)
            try:
                for event in events:
                    await self.post_event(body=body, kind=kind, event=event)
            except Exception:  # post_event logs API failures; anything else is logged here
                logger.exception("cannot post Events on %s %s/%s", *key)

        task = asyncio.create_task(post())
        self._event_tails[key] = task
        self._event_tasks.add(task)

        def done(finished: asyncio.Task[None]) -> None:
            self._event_tasks.discard(finished)
            if self._event_tails.get(key) is finished:
                del self._event_tails[key]

        task.add_done_callback(done)

    async def flush_events(self, timeout: float) -> None:
        """Wait (at most ``timeout`` seconds) for the Events still being posted, then cancel
        any left (nothing keeps running after the controller stops)."""
        pending = list(self._event_tasks)
        if not pending:
            return
        _, left = await asyncio.wait(pending, timeout=timeout)
        for task in left:
            task.cancel()
        await asyncio.gather(*left, return_exceptions=True)

    async def _report_failure(
        self,
        key: tuple[str, str, str],
        *,
        body: Mapping[str, Any],
        kind: str,
        error: kube.ApiError,
    ) -> None:
        text = f"{error.code} {error.reason}: {error.message}"
        self.failures.append(f"{kind} {key[1]}/{key[2]}: {text}")
        if self._reported_failures.get(key) == text:
            return
        self._reported_failures[key] = text
        await self.post_event(
            body=body,
            kind=kind,
            event=domain_agents.Event(
                "Warning", "StatusUpdateFailed", f"Cannot write status: {text}"
            ),
        )

    async def post_event(
        self, *, body: Mapping[str, Any], kind: str, event: domain_agents.Event
    ) -> None:
        """Post a core/v1 Event on ``body`` (best effort: an Event never blocks a reconcile)."""
        meta = body.get("metadata") or {}
        namespace = str(meta.get("namespace") or self.settings.namespace)
        now = utcnow().strftime("%Y-%m-%dT%H:%M:%SZ")
        document = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {
                "generateName": f"{meta.get('name', 'agentauth')}.",
                "namespace": namespace,
            },
            "involvedObject": {
                "apiVersion": str(body.get("apiVersion", "")),
                "kind": kind,
                "name": meta.get("name"),
                "namespace": namespace,
                "uid": meta.get("uid"),
            },
            "type": event.type,
            "reason": event.reason,
            "message": event.message[:1024],
            "source": {"component": COMPONENT},
            "reportingComponent": COMPONENT,
            "reportingInstance": COMPONENT,
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
        }
        try:
            await self.api.create(kube.EVENTS, document, namespace=namespace)
        except kube.ApiError as exc:
            logger.warning(
                "cannot post Event %s on %s %s: %s", event.reason, kind, meta.get("name"), exc
            )

    # --- workers ----------------------------------------------------------------------------

    async def work(self) -> None:
        """One worker: take keys and run their reconciler, retrying failures with backoff."""
        backoff: dict[Hashable, float] = {}
        await self.wait_synced()
        while True:
            key = await self.queue.get()
            try:
                kind, namespace, name = cast(tuple[str, str, str], key)
                await self.reconcilers[kind](self, namespace=namespace, name=name)
                self.reconciled[kind] += 1
                backoff.pop(key, None)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                delay = min(backoff.get(key, 0.5) * 2, 60.0)
                backoff[key] = delay
                logger.warning("reconcile of %s failed (retry in %.0fs): %s", key, delay, exc)
                self.wake_at(
                    key,
                    datetime.datetime.now(datetime.UTC) + datetime.timedelta(seconds=delay),
                )
            finally:
                self.queue.done(key)
