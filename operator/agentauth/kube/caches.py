"""List+watch caches of Kubernetes collections.

Guarantees:
- ``synced`` is set once the first full list has been loaded; until then ``items()`` may be
  incomplete and readiness probes must stay red.
- Watches resume from the last seen resourceVersion (including ``BOOKMARK`` events); ``410 Gone``
  or any stream error triggers a full relist that replaces the contents, so a deletion missed
  while disconnected cannot survive in the cache.
- ``revision`` increases on every change, so consumers can rebuild derived snapshots only when
  something changed; ``parse`` turns the raw object into a typed value, and objects that fail to
  parse are left out (logged), never half-used.
- ``changed`` (an ``asyncio.Condition``) is notified on every change, for long-polls.
- Every listener added with ``listen`` is called synchronously with ``(key, item)`` for each
  object stored and ``(key, None)`` for each removed, before ``revision`` moves, so consumers
  keep derived indexes current at the cost of the changed object (a relist reports every
  object it loads and every one it no longer holds).
- Failures are retried forever with a capped, jittered backoff (at most :data:`RETRY_MAX`
  seconds apart), so a watch recovers within seconds of the API server coming back; every call
  has the client's deadline, so a frozen API server cannot hang the loop. ``reconnect()`` drops
  the current watch and relists at once (used when an API health check sees the server return).
- ``healthy`` says whether the last list or watch attempt succeeded, ``last_error`` why not.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Callable
from typing import Any, Generic, TypeVar

from agentauth.kube import client as kubeclient

log = logging.getLogger(__name__)

T = TypeVar("T")
Key = tuple[str, str]
RETRY_INITIAL = 0.2
RETRY_MAX = 2.0


def object_key(obj: dict[str, Any]) -> Key:
    meta = obj.get("metadata") or {}
    return (str(meta.get("namespace") or ""), str(meta.get("name") or ""))


class Cache(Generic[T]):
    """An in-memory mirror of one collection, kept current by list+watch."""

    def __init__(
        self,
        api: kubeclient.KubeClient,
        resource: kubeclient.Resource,
        *,
        parse: Callable[[dict[str, Any]], T],
        namespace: str | None = None,
        label_selector: str | None = None,
        field_selector: str | None = None,
        watch_timeout: int = 240,
    ) -> None:
        self.api = api
        self.resource = resource
        self.namespace = namespace
        self.label_selector = label_selector
        self.field_selector = field_selector
        self._parse = parse
        self._watch_timeout = watch_timeout
        self._items: dict[Key, T] = {}
        self.synced = asyncio.Event()
        self.changed = asyncio.Condition()
        self.revision = 0
        self.resource_version = ""
        self.healthy = False
        self.last_error: str | None = None
        self._reconnect = asyncio.Event()
        self._listeners: list[Callable[[Key, T | None], None]] = []

    def listen(self, listener: Callable[[Key, T | None], None]) -> None:
        """Call ``listener(key, item)`` on every store and ``(key, None)`` on every removal,
        starting with what the cache holds now."""
        self._listeners.append(listener)
        for key, item in self._items.items():
            listener(key, item)

    def _report(self, key: Key, item: T | None) -> None:
        for listener in self._listeners:
            listener(key, item)

    def items(self) -> list[T]:
        return list(self._items.values())

    def get(self, namespace: str, name: str) -> T | None:
        return self._items.get((namespace, name))

    def __len__(self) -> int:
        return len(self._items)

    def _store(self, obj: dict[str, Any]) -> None:
        key = object_key(obj)
        try:
            item = self._parse(obj)
        except Exception as exc:  # a malformed object must not poison the cache
            log.warning("skipping unparseable %s %s: %s", self.resource.plural, key, exc)
            self._remove(key)
            return
        self._items[key] = item
        self._report(key, item)

    def _remove(self, key: Key) -> None:
        if self._items.pop(key, None) is not None:
            self._report(key, None)

    async def _notify(self) -> None:
        self.revision += 1
        async with self.changed:
            self.changed.notify_all()

    async def _relist(self) -> None:
        listing = await self.api.list(
            self.resource,
            namespace=self.namespace,
            label_selector=self.label_selector,
            field_selector=self.field_selector,
        )
        listed = {object_key(obj) for obj in listing.get("items", [])}
        for key in [key for key in self._items if key not in listed]:
            self._remove(key)  # deleted while we were not watching
        for obj in listing.get("items", []):
            self._store(obj)
        self.resource_version = str(listing.get("metadata", {}).get("resourceVersion", ""))
        await self._notify()
        self.synced.set()

    async def _watch_once(self) -> None:
        async for event in self.api.watch(
            self.resource,
            resource_version=self.resource_version,
            namespace=self.namespace,
            label_selector=self.label_selector,
            field_selector=self.field_selector,
            timeout_seconds=self._watch_timeout,
        ):
            version = (event.object.get("metadata") or {}).get("resourceVersion")
            if event.type != "BOOKMARK":
                if event.type == "DELETED":
                    self._remove(object_key(event.object))
                else:
                    self._store(event.object)
                await self._notify()
            if version:
                self.resource_version = str(version)

    def reconnect(self) -> None:
        """Drop the current watch (if any) and relist now."""
        self._reconnect.set()

    async def _watch_or_reconnect(self) -> None:
        """``_watch_once`` unless ``reconnect()`` is called first (then ``_Reconnect``)."""
        watch = asyncio.ensure_future(self._watch_once())
        interrupt = asyncio.ensure_future(self._reconnect.wait())
        try:
            await asyncio.wait({watch, interrupt}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (watch, interrupt):
                if not task.done():
                    task.cancel()
            await asyncio.gather(watch, interrupt, return_exceptions=True)
        if interrupt.done() and not interrupt.cancelled():
            raise _Reconnect
        watch.result()  # the server ended the watch (None), or its failure is raised here

    async def run(self) -> None:
        """List, then watch forever; relist on 410 or errors (with capped backoff)."""
        delay = RETRY_INITIAL
        need_list = True
        while True:
            try:
                self._reconnect.clear()
                if need_list:
                    await self._relist()
                    need_list = False
                    self.healthy, self.last_error = True, None
                    delay = RETRY_INITIAL
                await self._watch_or_reconnect()
            except asyncio.CancelledError:
                raise
            except _Reconnect:
                need_list = True
            except kubeclient.ResourceExpired:
                need_list = True
            except Exception as exc:
                log.warning("watch of %s failed, relisting: %r", self.resource.plural, exc)
                self.healthy, self.last_error = False, str(exc)
                need_list = True
                # back off between reconnects (jittered so caches do not retry in lockstep), or
                # less if reconnect() says the API server is back
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(
                        self._reconnect.wait(),
                        timeout=delay * random.uniform(0.5, 1.0),  # noqa: S311
                    )
                delay = min(delay * 2, RETRY_MAX)


class _Reconnect(Exception):
    """``Cache.reconnect()`` interrupted the watch."""
