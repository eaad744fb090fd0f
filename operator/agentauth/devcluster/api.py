"""The embedded API server: its state and wiring; each part of a request lives in its own module.

Every request goes through the same steps as on kube-apiserver: authenticate -> authorize
(403 worded like upstream) -> decode -> mutating admission -> defaults, schema validation and
the kind's strategy (uid, generation, status-subresource split, finalizers) -> validating
admission -> store -> notify watchers. Webhook calls are awaited without holding anything: the
commit re-reads the object and compares resourceVersions, so a concurrent write turns into a
retry (patch, unconditional update) or a 409 Conflict (update with a resourceVersion).

Where each part is: :mod:`routing` (authentication, impersonation, authorization, non-resource
paths, dispatch by verb), :mod:`reads` (get, list), :mod:`watch` (watch streams; fan-out in
:mod:`watching`), :mod:`writes` (create, update, patch, apply), :mod:`strategy` (what happens to
an object before it is stored), :mod:`commits` (storing it), :mod:`deletion` (delete verbs,
finalizers, namespace termination, garbage collection), :mod:`subresources` (reviews and
``serviceaccounts/token``), :mod:`decoding`, :mod:`responses`, :mod:`errors` and
:mod:`context` (the request context and the :class:`context.Server` view of this class).

Every error is a ``Status`` body with the code, reason and message the real server uses; no
input makes a handler raise past :meth:`ApiServer.handle`.
"""

from __future__ import annotations

import asyncio
import copy
from collections.abc import Coroutine, Sequence
from typing import Any

from aiohttp import web

from agentauth.devcluster import (
    admission,
    authn,
    commits,
    context,
    decoding,
    deletion,
    errors,
    rbac,
    resources,
    routing,
    serviceaccounts,
    storage,
    strategy,
    types,
    watching,
)

# Names callers import from here (server.py), kept where they were.
ApiError = errors.ApiError
error_response = errors.error_response
MAX_BODY_BYTES = decoding.MAX_BODY_BYTES


class StoreReader:
    """:class:`types.ObjectReader` over the store. Returned objects are shared: never mutate."""

    def __init__(self, store: storage.Store) -> None:
        self._store = store

    def get(
        self, *, group: str, resource: str, namespace: str | None, name: str
    ) -> dict[str, Any] | None:
        entry = self._store.get((group, resource, namespace or "", name))
        return None if entry is None else entry.obj

    def list(
        self, *, group: str, resource: str, namespace: str | None = None
    ) -> Sequence[dict[str, Any]]:
        return [entry.obj for entry in self._store.entries(group, resource, namespace)]


class ApiServer:
    """Owns the registry, the store, the watch hub and the security chain; routes requests.

    It is the :class:`context.Server` every handler module is given.
    """

    def __init__(
        self,
        *,
        store: storage.Store,
        token_issuer: serviceaccounts.ServiceAccountTokenIssuer,
        static_tokens: dict[str, types.UserInfo],
        server_address: str,
        bookmark_interval: float = 5.0,
    ) -> None:
        self.store = store
        self.registry = resources.Registry()
        self.hub = watching.Hub()
        self.reader: types.ObjectReader = StoreReader(store)
        self.token_issuer = token_issuer
        self.authenticator = authn.Authenticator(
            static_tokens=static_tokens, token_issuer=token_issuer, reader=self.reader
        )
        self.authorizer = rbac.RBACAuthorizer(self.reader)
        self.admission = admission.AdmissionChain(reader=self.reader)
        self.server_address = server_address
        self.bookmark_interval = bookmark_interval
        self._background: set[asyncio.Task[None]] = set()
        self.terminating: set[str] = set()
        store.subscribe(self.hub.publish)
        for entry in store.entries("apiextensions.k8s.io", "customresourcedefinitions"):
            commits.register_crd(self.registry, entry.obj)

    def _has_webhooks(self, resource: str) -> bool:
        # Fast path: with no webhook configuration at all, admission has nothing to do.
        return bool(self.store.entries("admissionregistration.k8s.io", resource))

    async def mutate(self, **arguments: Any) -> dict[str, Any] | None:
        if not self._has_webhooks("mutatingwebhookconfigurations"):
            obj: dict[str, Any] | None = arguments["obj"]
            return obj
        return await self.admission.mutate(**arguments)

    async def admit(self, **arguments: Any) -> None:
        if self._has_webhooks("validatingwebhookconfigurations"):
            await self.admission.validate(**arguments)

    def spawn(self, coroutine: Coroutine[Any, Any, None]) -> None:
        task: asyncio.Task[None] = asyncio.get_running_loop().create_task(coroutine)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # -- bootstrap ----------------------------------------------------------------------------
    def ensure(self, obj: dict[str, Any]) -> None:
        """Create ``obj`` unless it exists (used at start-up for defaults and CRDs)."""
        group, _, version = str(obj["apiVersion"]).rpartition("/")
        rt = next((r for r in self.registry if r.group == group and r.kind == obj["kind"]), None)
        if rt is None:
            raise ValueError(f"unknown kind {obj['apiVersion']} {obj['kind']}")
        metadata = obj.setdefault("metadata", {})
        key = context.object_key(rt, namespace=metadata.get("namespace", ""), name=metadata["name"])
        existing = self.store.get(key)
        if existing is not None:
            if rt.plural == "customresourcedefinitions" and existing.obj.get("spec") != obj.get(
                "spec"
            ):
                updated = copy.deepcopy(existing.obj)
                updated["spec"] = copy.deepcopy(obj["spec"])
                updated["metadata"]["generation"] = (
                    int(updated["metadata"].get("generation", 1)) + 1
                )
                commits.commit(self, rt, key=key, obj=updated, event_type="MODIFIED")
            return
        prepared = strategy.prepare_create(
            self.reader,
            rt,
            version=version or rt.storage_version,
            obj=copy.deepcopy(obj),
            namespace=metadata.get("namespace", ""),
        )
        commits.commit(self, rt, key=key, obj=prepared, event_type="ADDED")

    def resume(self) -> None:
        """Restart work a previous run left unfinished (terminating namespaces)."""
        for entry in self.store.entries("", "namespaces"):
            if entry.obj["metadata"].get("deletionTimestamp"):
                self.spawn(deletion.terminate_namespace(self, entry.obj["metadata"]["name"]))

    async def stop(self) -> None:
        self.hub.close_all()
        for task in list(self._background):
            task.cancel()
        if self._background:
            await asyncio.gather(*self._background, return_exceptions=True)

    # -- entry point --------------------------------------------------------------------------
    async def handle(self, request: web.Request) -> web.StreamResponse:
        """Answer one request (:func:`routing.handle`)."""
        return await routing.handle(self, request)
