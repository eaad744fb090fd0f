"""Where the token service's state comes from: the Kubernetes API (list+watch caches) or memory.

``ServiceState`` is the one seam between the HTTP handlers and their data. ``KubeState`` is the
production source (caches of Agents, CapabilityGrants, AccessRequests, ToolServers, pods with the
``agentauth.dev/agent`` label, service accounts (uid by name) and the issuer-key Secret);
``MemoryState`` holds the same data in memory for tests, benchmarks and embedding.

Guarantees:
- ``snapshot()`` is one ``exchanging.Snapshot`` kept current by the caches' watch events, one
  object at a time (``Cache.listen``): a change costs what the changed object costs and a
  request costs nothing to get its snapshot, however large the cluster. Changes are applied on
  the event loop and every decision is a synchronous function of the snapshot, so each decision
  sees one consistent state.
- ``is_ready()`` is true only once every cache has synced and a usable signing key exists, and
  until ``drain()`` (shutdown) is called. ``readiness()`` says the same with what is degraded:
  once synced, an API server that stops answering does not make the service unready (exchanges,
  introspection, Ask and access-request reads are served from the caches), it is reported as
  ``apiServer: unreachable`` with what cannot be served (filing access requests, TokenReview).
- ``KubeState`` watches the namespaces in ``settings.watch_namespaces`` (one list+watch per
  namespace and resource, merged into one snapshot), or the whole cluster when there are none:
  the same scope as the controller, which the chart configures from the same value.
- ``confirm_identity`` confirms that the pod and service account a verified service-account
  token names still exist with the token's uids (introspection callers, who need not be agent
  pods in a watched namespace): ``KubeState`` reads both from the API server and believes a
  confirmation for ``CONFIRMATION_SECONDS``; API failures are ``temporarily_unavailable``.
- Remote JWKS (cluster, trusted issuers) are cached; an unknown ``kid`` triggers a refetch at most
  once per ``MIN_REFETCH_INTERVAL`` seconds per source, so a stream of forged ``kid``s cannot turn
  the service into a fetch amplifier.
"""

from __future__ import annotations

import asyncio
import json
import logging
import ssl
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Protocol

import aiohttp

from agentauth.domain import errors, exchanging, jose, keys, serviceaccounts
from agentauth.domain.models import (
    AGENT_LABEL,
    AccessRequest,
    Agent,
    CapabilityGrant,
    ToolServer,
)
from agentauth.kube import caches, health
from agentauth.kube import client as kubeclient
from agentauth.tokenservice import settings as settings_module

log = logging.getLogger(__name__)

MIN_REFETCH_INTERVAL = 10.0
JWKS_MAX_AGE = 300.0
MAX_JWKS_BYTES = 256 * 1024
CONFIRMATION_SECONDS = 2.0
"""How long a confirmed introspection caller (its pod and service account exist) is believed."""
MAX_CONFIRMATIONS = 10_000


class ServiceState(Protocol):
    """What the handlers read. See the module docstring."""

    changed: asyncio.Condition

    def snapshot(self) -> exchanging.Snapshot: ...

    def keyset(self) -> keys.KeySet | None: ...

    def is_ready(self) -> bool: ...

    def readiness(self) -> dict[str, Any]: ...

    def drain(self) -> None: ...

    def cache_sizes(self) -> dict[str, int]: ...

    def on_access_request(self, listener: Callable[[tuple[str, str] | None], None]) -> None:
        """Call ``listener((namespace, name))`` whenever that AccessRequest changes in the caches
        (``None``: anything may have changed), on the event loop."""
        ...

    async def cluster_keys(self, *, refresh: bool) -> jose.PublicKeySet: ...

    async def trusted_keys(self, issuer: str, *, refresh: bool) -> jose.PublicKeySet | None: ...

    async def review_token(self, token: str) -> serviceaccounts.ServiceAccountIdentity: ...

    async def confirm_identity(self, identity: serviceaccounts.ServiceAccountIdentity) -> None:
        """Raise ``InvalidGrant`` unless the pod and the service account a verified token is
        bound to still exist with the token's uids (the pod not being deleted)."""
        ...


def _confirm_objects(
    identity: serviceaccounts.ServiceAccountIdentity,
    *,
    pod_uid: str | None,
    pod_terminating: bool,
    service_account_uid: str | None,
) -> None:
    where = f"{identity.namespace}/{identity.pod_name}"
    if pod_uid != identity.pod_uid:
        raise errors.InvalidGrant(f"pod {where} bound to the token no longer exists")
    if pod_terminating:
        raise errors.InvalidGrant(f"pod {where} bound to the token is being deleted")
    if service_account_uid is None or service_account_uid != identity.service_account_uid:
        raise errors.InvalidGrant(
            f"service account {identity.namespace}/{identity.service_account} of the token no "
            "longer exists (deleted, or created again under the same name)"
        )


class RemoteKeys:
    """A JWKS fetched on demand, cached for ``JWKS_MAX_AGE``, refetched on an unknown ``kid`` at
    most every ``MIN_REFETCH_INTERVAL`` seconds."""

    def __init__(
        self,
        fetch: Callable[[], Awaitable[Mapping[str, Any]]],
        *,
        name: str,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._fetch = fetch
        self._clock = clock
        self._name = name
        self._keys: jose.PublicKeySet | None = None
        self._fetched_at = 0.0
        self._lock = asyncio.Lock()

    async def get(self, *, refresh: bool) -> jose.PublicKeySet:
        now = self._clock()
        stale = self._keys is None or now - self._fetched_at > JWKS_MAX_AGE
        if not stale and not (refresh and now - self._fetched_at >= MIN_REFETCH_INTERVAL):
            assert self._keys is not None  # noqa: S101 - narrowed by ``stale``
            return self._keys
        async with self._lock:
            if (
                self._keys is not None
                and time.monotonic() - self._fetched_at < MIN_REFETCH_INTERVAL
            ):
                return self._keys  # another request refreshed while we waited
            try:
                document = await self._fetch()
            except Exception as exc:
                if self._keys is not None:
                    log.warning(
                        "refreshing %s JWKS failed, keeping the cached one: %r", self._name, exc
                    )
                    return self._keys
                raise errors.TemporarilyUnavailable(
                    f"cannot fetch the {self._name} signing keys"
                ) from exc
            self._keys = jose.PublicKeySet.from_jwks(document)
            self._fetched_at = self._clock()
            return self._keys


class MemoryState:
    """In-memory ``ServiceState``: data is set by the owner (tests, benchmarks, embedding)."""

    def __init__(
        self,
        *,
        snapshot: exchanging.Snapshot | None = None,
        keyset: keys.KeySet | None = None,
        cluster_jwks: Mapping[str, Any] | None = None,
        trusted_jwks: Mapping[str, Mapping[str, Any]] | None = None,
    ) -> None:
        self._snapshot = snapshot or exchanging.Snapshot()
        self._keyset = keyset
        self._cluster = jose.PublicKeySet.from_jwks(cluster_jwks or {"keys": []})
        self._trusted = {k: jose.PublicKeySet.from_jwks(v) for k, v in (trusted_jwks or {}).items()}
        self.changed = asyncio.Condition()
        self.draining = False
        self._request_listeners: list[Callable[[tuple[str, str] | None], None]] = []

    async def update(
        self, *, snapshot: exchanging.Snapshot | None = None, keyset: keys.KeySet | None = None
    ) -> None:
        if snapshot is not None:
            self._snapshot = snapshot
        if keyset is not None:
            self._keyset = keyset
        for listener in self._request_listeners:
            listener(None)
        async with self.changed:
            self.changed.notify_all()

    def on_access_request(self, listener: Callable[[tuple[str, str] | None], None]) -> None:
        self._request_listeners.append(listener)

    def snapshot(self) -> exchanging.Snapshot:
        return self._snapshot

    def keyset(self) -> keys.KeySet | None:
        return self._keyset

    def is_ready(self) -> bool:
        return self._keyset is not None and not self.draining

    def readiness(self) -> dict[str, Any]:
        if self.draining:
            return {"ready": False, "reason": "shutting down"}
        if self._keyset is None:
            return {"ready": False, "reason": "no signing key"}
        return {"ready": True}

    def drain(self) -> None:
        self.draining = True

    def cache_sizes(self) -> dict[str, int]:
        return self._snapshot.sizes()

    async def cluster_keys(self, *, refresh: bool) -> jose.PublicKeySet:
        return self._cluster

    async def trusted_keys(self, issuer: str, *, refresh: bool) -> jose.PublicKeySet | None:
        return self._trusted.get(issuer)

    async def review_token(self, token: str) -> serviceaccounts.ServiceAccountIdentity:
        raise errors.TemporarilyUnavailable("TokenReview needs a Kubernetes API")

    async def confirm_identity(self, identity: serviceaccounts.ServiceAccountIdentity) -> None:
        pod = self._snapshot.pods.get((identity.namespace, identity.pod_name))
        _confirm_objects(
            identity,
            pod_uid=pod.uid if pod is not None else None,
            pod_terminating=pod is not None and pod.terminating,
            service_account_uid=self._snapshot.service_accounts.get(
                (identity.namespace, identity.service_account)
            ),
        )


def _service_account_uid(obj: dict[str, Any]) -> tuple[str, str, str]:
    meta = obj.get("metadata") or {}
    return str(meta.get("namespace", "")), str(meta.get("name", "")), str(meta.get("uid", ""))


def _service_account_listener(
    snapshot: exchanging.Snapshot,
) -> Callable[[caches.Key, tuple[str, str, str] | None], None]:
    def put(key: caches.Key, account: tuple[str, str, str] | None) -> None:
        snapshot.put_service_account(key, account[2] if account is not None else None)

    return put


def _parse_secret(obj: dict[str, Any]) -> keys.KeySet:
    return keys.KeySet.from_secret_data(obj.get("data") or {})


class KubeState:
    """``ServiceState`` backed by list+watch caches of the Kubernetes API."""

    def __init__(self, api: kubeclient.KubeClient, settings: settings_module.Settings) -> None:
        self.api = api
        self.settings = settings
        scopes: tuple[str | None, ...] = settings.watch_namespaces or (None,)
        self.agents = [
            caches.Cache(api, kubeclient.AGENTS, parse=Agent.model_validate, namespace=ns)
            for ns in scopes
        ]
        self.grants = [
            caches.Cache(
                api,
                kubeclient.CAPABILITY_GRANTS,
                parse=CapabilityGrant.model_validate,
                namespace=ns,
            )
            for ns in scopes
        ]
        self.access_requests = [
            caches.Cache(
                api, kubeclient.ACCESS_REQUESTS, parse=AccessRequest.model_validate, namespace=ns
            )
            for ns in scopes
        ]
        self.tool_servers = [
            caches.Cache(
                api, kubeclient.TOOL_SERVERS, parse=ToolServer.model_validate, namespace=ns
            )
            for ns in scopes
        ]
        self.pods = [
            caches.Cache(
                api,
                kubeclient.PODS,
                parse=exchanging.Pod.from_api,
                namespace=ns,
                label_selector=AGENT_LABEL,
            )
            for ns in scopes
        ]
        self.service_accounts = [
            caches.Cache(api, kubeclient.SERVICE_ACCOUNTS, parse=_service_account_uid, namespace=ns)
            for ns in scopes
        ]
        secret_ns, secret_name = settings.key_secret
        self.secret = caches.Cache(
            api,
            kubeclient.SECRETS,
            parse=_parse_secret,
            namespace=secret_ns,
            field_selector=f"metadata.name={secret_name}",
        )
        self._all: list[caches.Cache[Any]] = [
            *self.agents,
            *self.grants,
            *self.access_requests,
            *self.tool_servers,
            *self.pods,
            *self.service_accounts,
            self.secret,
        ]
        self.changed = asyncio.Condition()
        self._snapshot = exchanging.Snapshot(claim_policy=settings.claim_policy)
        snapshot = self._snapshot
        for agents in self.agents:
            agents.listen(snapshot.put_agent)
        for grants in self.grants:
            grants.listen(snapshot.put_grant)
        for requests in self.access_requests:
            requests.listen(snapshot.put_access_request)
        for servers in self.tool_servers:
            servers.listen(snapshot.put_tool_server)
        for pods in self.pods:
            pods.listen(snapshot.put_pod)
        for accounts in self.service_accounts:
            accounts.listen(_service_account_listener(snapshot))
        self._cluster_keys = RemoteKeys(self._fetch_cluster_jwks, name="cluster")
        self._trusted = {
            t.issuer: RemoteKeys(self._fetcher(t.jwks_url), name=t.issuer)
            for t in settings.trusted_issuers
        }
        self._http: aiohttp.ClientSession | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._confirmed: dict[tuple[str, ...], float] = {}
        self.health = health.ApiHealth(api)
        # A server that answers again after a freeze or partition: relist now, do not wait for
        # each watch's idle deadline.
        self.health.on_recovered.extend(c.reconnect for c in self._all)
        self.draining = False

    async def start(self) -> None:
        self._tasks = [asyncio.create_task(c.run()) for c in self._all]
        self._tasks.append(asyncio.create_task(self._relay_changes()))
        self._tasks.append(asyncio.create_task(self.health.run()))

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._http is not None:
            await self._http.close()

    async def wait_synced(self, timeout: float) -> None:
        await asyncio.wait_for(asyncio.gather(*(c.synced.wait() for c in self._all)), timeout)

    async def _relay_changes(self) -> None:
        """Forward every cache change to ``self.changed`` (long-polls wait on it)."""

        async def relay(cache: caches.Cache[Any]) -> None:
            seen = cache.revision
            while True:
                # waiting on the revision, not on a bare notify, so a change that lands while
                # this relay is busy notifying is not lost
                async with cache.changed:
                    while cache.revision == seen:
                        await cache.changed.wait()
                seen = cache.revision
                async with self.changed:
                    self.changed.notify_all()

        await asyncio.gather(*(relay(c) for c in self._all))

    def snapshot(self) -> exchanging.Snapshot:
        return self._snapshot

    def keyset(self) -> keys.KeySet | None:
        found = self.secret.items()
        return found[0] if found else None

    def is_ready(self) -> bool:
        return bool(self.readiness()["ready"])

    def readiness(self) -> dict[str, Any]:
        if self.draining:
            return {"ready": False, "reason": "shutting down"}
        unsynced = sorted({c.resource.plural for c in self._all if not c.synced.is_set()})
        if unsynced:
            return {"ready": False, "reason": "caches not synced: " + ", ".join(unsynced)}
        if self.keyset() is None:
            return {"ready": False, "reason": "no signing key"}
        reachable = self.health.reachable
        report: dict[str, Any] = {
            "ready": True,
            "apiServer": "reachable" if reachable else "unreachable",
        }
        failing = sorted({c.resource.plural for c in self._all if not c.healthy})
        if failing:
            report["watchesFailing"] = failing
        if not reachable:
            report["unreachableSeconds"] = round(self.health.unreachable_for(), 1)
            report["notServing"] = ["filing access requests"] + (
                ["service-account token exchanges (TokenReview)"]
                if self.settings.token_review
                else []
            )
        return report

    def drain(self) -> None:
        self.draining = True

    def on_access_request(self, listener: Callable[[tuple[str, str] | None], None]) -> None:
        for requests in self.access_requests:
            requests.listen(lambda key, _request: listener(key))

    def cache_sizes(self) -> dict[str, int]:
        sizes: dict[str, int] = {}
        for cache in self._all:
            sizes[cache.resource.plural] = sizes.get(cache.resource.plural, 0) + len(cache)
        return sizes

    @property
    def http(self) -> aiohttp.ClientSession:
        if self._http is None or self._http.closed:
            context = ssl.create_default_context()
            if self.settings.trusted_ca_file is not None:
                context.load_verify_locations(cafile=str(self.settings.trusted_ca_file))
            self._http = aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=context))
        return self._http

    def _fetcher(self, url: str) -> Callable[[], Awaitable[Mapping[str, Any]]]:
        async def fetch() -> Mapping[str, Any]:
            async with self.http.get(url, timeout=aiohttp.ClientTimeout(total=10)) as response:
                response.raise_for_status()
                body = await response.content.read(MAX_JWKS_BYTES + 1)
                if len(body) > MAX_JWKS_BYTES:
                    raise ValueError(f"JWKS at {url} is larger than {MAX_JWKS_BYTES} bytes")
                document: Mapping[str, Any] = json.loads(body)
                return document

        return fetch

    async def _fetch_cluster_jwks(self) -> Mapping[str, Any]:
        url = self.settings.cluster_jwks_url
        server = self.api.config.server
        if url and not url.startswith(server + "/"):
            return await self._fetcher(url)()  # a public OIDC endpoint (EKS, GKE, ...)
        # the API server's own endpoint, authenticated and TLS-verified like any API call
        path = url[len(server) :] if url else "/openid/v1/jwks"
        return await self.api.request("GET", path)

    async def cluster_keys(self, *, refresh: bool) -> jose.PublicKeySet:
        return await self._cluster_keys.get(refresh=refresh)

    async def trusted_keys(self, issuer: str, *, refresh: bool) -> jose.PublicKeySet | None:
        remote = self._trusted.get(issuer)
        return await remote.get(refresh=refresh) if remote is not None else None

    async def review_token(self, token: str) -> serviceaccounts.ServiceAccountIdentity:
        try:
            review = await self.api.create(
                kubeclient.TOKEN_REVIEWS,
                {
                    "apiVersion": "authentication.k8s.io/v1",
                    "kind": "TokenReview",
                    "spec": {"token": token, "audiences": [self.settings.issuer]},
                },
            )
        except kubeclient.ApiError as exc:
            raise errors.TemporarilyUnavailable("the TokenReview API call failed") from exc
        return serviceaccounts.identity_from_token_review(
            review.get("status") or {}, audience=self.settings.issuer
        )

    async def confirm_identity(self, identity: serviceaccounts.ServiceAccountIdentity) -> None:
        """Read the pod and the service account from the API server (for callers outside the
        watched namespaces and pods without the agent label); a confirmation is remembered for
        ``CONFIRMATION_SECONDS``, so deleting either takes effect within that time."""
        key = (
            identity.namespace,
            identity.pod_name,
            identity.pod_uid,
            identity.service_account,
            identity.service_account_uid,
        )
        now = time.monotonic()
        if self._confirmed.get(key, 0.0) > now:
            return
        try:
            pod = await self.api.get_or_none(
                kubeclient.PODS, identity.pod_name, namespace=identity.namespace
            )
            account = await self.api.get_or_none(
                kubeclient.SERVICE_ACCOUNTS, identity.service_account, namespace=identity.namespace
            )
        except (kubeclient.ApiError, aiohttp.ClientError, TimeoutError) as exc:
            raise errors.TemporarilyUnavailable(
                "cannot confirm the caller's pod with the Kubernetes API"
            ) from exc
        pod_meta = (pod or {}).get("metadata") or {}
        _confirm_objects(
            identity,
            pod_uid=pod_meta.get("uid") if pod is not None else None,
            pod_terminating=pod_meta.get("deletionTimestamp") is not None,
            service_account_uid=((account or {}).get("metadata") or {}).get("uid")
            if account is not None
            else None,
        )
        if len(self._confirmed) >= MAX_CONFIRMATIONS:
            self._confirmed = {k: v for k, v in self._confirmed.items() if v > now}
            if len(self._confirmed) >= MAX_CONFIRMATIONS:
                self._confirmed.clear()
        self._confirmed[key] = now + CONFIRMATION_SECONDS
