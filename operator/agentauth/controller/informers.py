"""List+watch mirrors of the collections the controller reconciles from: Agents, CapabilityGrants,
ServiceAccounts and AccessRequests.

Why not Kopf's watching and ``@kopf.index`` for these: Kopf runs one task per object and,
until every index has had its first listing, wakes every waiting object task each time one more
object is indexed, so a restart against N objects costs O(N²) wake-ups (a controller restarted
at 10,000 Agents and 10,000 grants did not finish its initial listing in minutes); and Kopf's
per-event bookkeeping (memories, body views, cause detection) costs about a millisecond per watch
event, at a few events per object. Here an event costs a dictionary update and a call. Kopf still
runs the controller (startup, login, probes, ToolServers).

Guarantees:
- ``synced`` is set once the first list has been stored and its events delivered; the
  controller's workers wait for every informer's ``synced`` before reconciling, so no status is
  computed from a half-filled mirror (no spurious ``ServiceAccountNotFound`` after a restart).
- Every listener (``listen(fn)``: ``fn(type, old, new)``) is called synchronously, after the
  mirror and its indices are updated, once per change: ``ADDED`` (old None), ``MODIFIED``,
  ``DELETED`` (new None, old the last state seen), in the order of the watch.
- A relist (at start, after ``410 Gone`` or any watch failure) replaces the contents and delivers
  the difference as events: objects that appeared, changed (another resourceVersion) or
  disappeared meanwhile. Nothing missed while disconnected is lost; nothing unchanged is
  re-delivered.
- Failures are retried forever with a capped backoff (at most :data:`RETRY_MAX` seconds); an
  exception in a listener is logged and never stops the informer or the other listeners.
- Lists are paginated (``limit``/``continue``); an expired continue token (410) lists again.
- Stored bodies drop ``metadata.managedFields`` (never read here; a large share of each object).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Hashable, Iterable, Mapping
from typing import Any

from agentauth.kube import client as kube

logger = logging.getLogger("agentauth.controller.informers")

Key = tuple[str, str]
"""(namespace, name)."""
Body = dict[str, Any]
OnChange = Callable[[str, Body | None, Body | None], None]
Indexer = Callable[[Body], Iterable[Hashable]]

RETRY_INITIAL = 0.2
RETRY_MAX = 5.0
WATCH_SECONDS = 300
PAGE = 500  # objects per list request: no single 20 MB response at 10,000 Agents


def object_key(body: Mapping[str, Any]) -> Key:
    meta = body.get("metadata") or {}
    return (str(meta.get("namespace") or ""), str(meta.get("name") or ""))


def _version(body: Mapping[str, Any]) -> str:
    return str((body.get("metadata") or {}).get("resourceVersion") or "")


def _trim(body: Body) -> Body:
    meta = body.get("metadata")
    if isinstance(meta, dict) and "managedFields" in meta:
        body["metadata"] = {k: v for k, v in meta.items() if k != "managedFields"}
    return body


class Informer:
    """An in-memory mirror of one collection with secondary indices (see module guarantees).

    ``indexers`` maps an index name to a function giving the index keys of a body; ``by(index,
    key)`` returns the bodies filed under that key. ``namespaces`` limits the mirror to those
    namespaces (one list+watch each); empty means the whole cluster.
    """

    def __init__(
        self,
        api: kube.KubeClient,
        resource: kube.Resource,
        *,
        indexers: Mapping[str, Indexer] | None = None,
        namespaces: Iterable[str] = (),
        page_size: int = PAGE,
    ) -> None:
        self.api = api
        self.resource = resource
        self.namespaces: tuple[str | None, ...] = tuple(namespaces) or (None,)
        self.page_size = page_size
        self._listeners: list[OnChange] = []
        self._indexers = dict(indexers or {})
        self._items: dict[Key, Body] = {}
        # index name -> index key -> the objects filed under it (bodies are read from _items).
        self._indices: dict[str, dict[Hashable, set[Key]]] = {name: {} for name in self._indexers}
        # The index keys each object is filed under, per indexer (in _indexers' order): a
        # change that leaves them as they were (a status write) touches no index.
        self._filed: dict[Key, tuple[tuple[Hashable, ...], ...]] = {}
        self.synced = asyncio.Event()
        self._listed: set[str | None] = set()
        self.relists = 0

    def listen(self, listener: OnChange) -> None:
        """Call ``listener(type, old, new)`` on every change from now on."""
        self._listeners.append(listener)

    # --- reads ------------------------------------------------------------------------------

    def get(self, namespace: str, name: str) -> Body | None:
        return self._items.get((namespace, name))

    def by(self, index: str, key: Hashable) -> list[Body]:
        found = self._indices[index].get(key)
        return [self._items[k] for k in found] if found else []

    def __len__(self) -> int:
        return len(self._items)

    # --- updates ----------------------------------------------------------------------------

    def _refile(self, key: Key, body: Body | None) -> None:
        """File ``key`` under the index keys of ``body`` (None: under none), moving it only
        in the indices whose keys changed."""
        old = self._filed.pop(key, None)
        new = (
            tuple(tuple(indexer(body)) for indexer in self._indexers.values())
            if body is not None
            else None
        )
        if old == new:
            if new is not None:
                self._filed[key] = new
            return
        for position, name in enumerate(self._indexers):
            before = old[position] if old is not None else ()
            after = new[position] if new is not None else ()
            if before == after:
                continue
            index = self._indices[name]
            for value in before:
                filed = index.get(value)
                if filed is not None:
                    filed.discard(key)
                    if not filed:
                        del index[value]
            for value in after:
                index.setdefault(value, set()).add(key)
        if new is not None:
            self._filed[key] = new

    def _put(self, body: Body) -> Body | None:
        key = object_key(body)
        old = self._items.get(key)
        self._items[key] = body
        self._refile(key, body)
        return old

    def _remove(self, key: Key) -> Body | None:
        old = self._items.pop(key, None)
        if old is not None:
            self._refile(key, None)
        return old

    def _emit(self, event_type: str, old: Body | None, new: Body | None) -> None:
        for listener in self._listeners:
            try:
                listener(event_type, old, new)
            except Exception:
                logger.exception("handling %s of %s failed", event_type, self.resource.plural)

    def apply(self, event_type: str, body: Body) -> None:
        """Take one watch event into the mirror and deliver it."""
        if event_type == "DELETED":
            old = self._remove(object_key(body))
            self._emit("DELETED", old if old is not None else body, None)
            return
        body = _trim(body)
        old = self._put(body)
        self._emit("ADDED" if old is None else "MODIFIED", old, body)

    def replace(self, items: Iterable[Body], *, namespace: str | None = None) -> None:
        """Replace the contents (of ``namespace``, or all) with a full listing, delivering the
        difference."""
        seen: set[Key] = set()
        for body in items:
            body = _trim(body)
            key = object_key(body)
            seen.add(key)
            old = self._items.get(key)
            if old is not None and _version(old) == _version(body):
                continue
            self._put(body)
            self._emit("ADDED" if old is None else "MODIFIED", old, body)
        gone = [k for k in self._items if k not in seen and namespace in (None, k[0])]
        for key in gone:
            old = self._remove(key)
            self._emit("DELETED", old, None)

    # --- the loop ---------------------------------------------------------------------------

    async def _relist(self, namespace: str | None) -> str:
        """List in pages of ``page_size`` (one consistent snapshot: every page is served at the
        first page's resourceVersion), then replace the contents; returns that version."""
        items: list[Body] = []
        params = {"limit": str(self.page_size)}
        version = ""
        while True:
            page = await self.api.request(
                "GET", self.resource.path(namespace=namespace), params=params
            )
            items += page.get("items") or []
            meta = page.get("metadata") or {}
            version = version or str(meta.get("resourceVersion", ""))
            if not meta.get("continue"):
                break
            params = {"limit": str(self.page_size), "continue": str(meta["continue"])}
        self.relists += 1
        self.replace(items, namespace=namespace)
        self._listed.add(namespace)
        if len(self._listed) == len(self.namespaces):
            self.synced.set()
        return version

    async def _watch(self, namespace: str | None, version: str) -> str:
        async for event in self.api.watch(
            self.resource,
            resource_version=version,
            namespace=namespace,
            timeout_seconds=WATCH_SECONDS,
        ):
            if event.type != "BOOKMARK":
                self.apply(event.type, event.object)
            version = _version(event.object) or version
        return version

    async def run(self) -> None:
        """Mirror every namespace (or the cluster) until cancelled."""
        await asyncio.gather(*(self._run_one(namespace) for namespace in self.namespaces))

    async def _run_one(self, namespace: str | None) -> None:
        """List, then watch forever; list again after ``410 Gone`` or a failure."""
        delay = RETRY_INITIAL
        need_list = True
        version = ""
        while True:
            try:
                if need_list:
                    version = await self._relist(namespace)
                    need_list = False
                    delay = RETRY_INITIAL
                # The server ends a watch after WATCH_SECONDS: resume from the last version.
                version = await self._watch(namespace, version)
            except asyncio.CancelledError:
                raise
            except kube.ResourceExpired:
                need_list = True
            except Exception as exc:
                logger.warning("watch of %s failed, listing again: %s", self.resource.plural, exc)
                need_list = True
                await asyncio.sleep(delay)
                delay = min(delay * 2, RETRY_MAX)
