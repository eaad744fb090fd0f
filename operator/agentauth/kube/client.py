"""Async Kubernetes API client over aiohttp.

Guarantees:
- Every call has a deadline: ``request`` (and the verbs built on it) the client's ``timeout``
  (or the call's own) for the whole exchange; ``watch`` the same for the response headers, then
  at most :data:`WATCH_IDLE_SECONDS` without a byte (the API server sends bookmarks and ends the
  watch after ``timeoutSeconds``) and ``timeoutSeconds`` + :data:`WATCH_GRACE_SECONDS` in all.
- Every non-2xx answer raises ``ApiError`` carrying the API ``Status`` (code, reason, message),
  as the subclass callers act on: ``NotFound`` (404), ``Conflict`` (409: already exists, or a
  stale resourceVersion), ``ResourceExpired`` (410, from the HTTP status or an ``ERROR`` event,
  so callers relist), ``Unauthorized`` (401) and ``ApiUnavailable`` (429, 5xx, and a server that
  cannot be reached (code 503) or does not answer in time (504); ``failure`` says which). So a
  caller that catches
  ``ApiError`` sees every failure of the API server, never a bare transport exception.
- ``watch`` yields typed events and passes ``BOOKMARK`` events through so callers can advance
  their resourceVersion.
- The only retry: a request refused with 401 is sent once more if the credentials changed
  meanwhile (a rotated token file, see ``KubeConfig.refresh_token``). Nothing else retries
  silently.
"""

from __future__ import annotations

import asyncio
import collections
import urllib.parse
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Literal
from urllib.parse import quote

import aiohttp

from agentauth.kube import config as kubeconfig
from agentauth.kube import http, jsontext


@dataclass(frozen=True, slots=True)
class Resource:
    """A REST resource: ``group`` "" is the core API."""

    group: str
    version: str
    plural: str
    namespaced: bool = True

    def path(self, *, namespace: str | None = None, name: str | None = None) -> str:
        base = f"/api/{self.version}" if not self.group else f"/apis/{self.group}/{self.version}"
        if self.namespaced and namespace is not None:
            base += f"/namespaces/{quote(namespace, safe='')}"
        base += f"/{self.plural}"
        if name is not None:
            base += f"/{quote(name, safe='')}"
        return base


PODS = Resource("", "v1", "pods")
SECRETS = Resource("", "v1", "secrets")
EVENTS = Resource("", "v1", "events")
SERVICE_ACCOUNTS = Resource("", "v1", "serviceaccounts")
NAMESPACES = Resource("", "v1", "namespaces", namespaced=False)
TOKEN_REVIEWS = Resource("authentication.k8s.io", "v1", "tokenreviews", namespaced=False)
AGENTS = Resource("agentauth.dev", "v1alpha1", "agents")
CAPABILITY_GRANTS = Resource("agentauth.dev", "v1alpha1", "capabilitygrants")
ACCESS_REQUESTS = Resource("agentauth.dev", "v1alpha1", "accessrequests")
TOOL_SERVERS = Resource("agentauth.dev", "v1alpha1", "toolservers")
LEASES = Resource("coordination.k8s.io", "v1", "leases")


WATCH_IDLE_SECONDS = 120.0
"""A watch that delivers nothing (not even a bookmark) for this long is given up as dead."""
WATCH_GRACE_SECONDS = 30.0
"""How long past its ``timeoutSeconds`` a watch may run before the client ends it."""
UNAVAILABLE_CODES = frozenset({429, 500, 502, 503, 504})


class ApiError(Exception):
    """A non-2xx answer from the API server (or none at all: see ``ApiUnavailable``)."""

    def __init__(self, *, code: int, reason: str, message: str) -> None:
        super().__init__(f"{code} {reason}: {message}")
        self.code = code
        self.reason = reason
        self.message = message


class NotFound(ApiError):
    """404: no such object (or collection)."""


class Conflict(ApiError):
    """409: the name is taken (``AlreadyExists``) or the resourceVersion precondition failed."""


class Unauthorized(ApiError):
    """401: the API server did not accept the credentials."""


class ResourceExpired(ApiError):
    """410 Gone: the resourceVersion is too old; list again."""


class ApiUnavailable(ApiError):
    """The API server is overloaded (429), failing (5xx), unreachable (code 503) or did not
    answer before the deadline (code 504). ``failure`` says which: ``answer`` (it answered
    429/5xx), ``unreachable`` or ``timeout``. The call may or may not have taken effect."""

    def __init__(
        self,
        *,
        code: int,
        reason: str,
        message: str,
        failure: Literal["answer", "unreachable", "timeout"] = "answer",
    ) -> None:
        super().__init__(code=code, reason=reason, message=message)
        self.failure = failure


_BY_CODE: dict[int, type[ApiError]] = {
    401: Unauthorized,
    404: NotFound,
    409: Conflict,
    410: ResourceExpired,
}


EventType = Literal["ADDED", "MODIFIED", "DELETED", "BOOKMARK"]


@dataclass(frozen=True, slots=True)
class WatchEvent:
    type: EventType
    object: dict[str, Any]


def _error_from(code: int, body: bytes) -> ApiError:
    try:
        status = jsontext.decode(body)
        reason, message = str(status.get("reason", "")), str(status.get("message", ""))
    except (ValueError, AttributeError):
        reason, message = "", body[:500].decode("utf-8", "replace")
    cls = ApiUnavailable if code in UNAVAILABLE_CODES else _BY_CODE.get(code, ApiError)
    return cls(code=code, reason=reason, message=message)


def _unavailable(what: str, error: BaseException, *, deadline: float) -> ApiUnavailable:
    if isinstance(error, TimeoutError):
        return ApiUnavailable(
            code=504,
            reason="Timeout",
            message=f"{what}: no answer from the API server within {deadline:g}s",
            failure="timeout",
        )
    return ApiUnavailable(
        code=503,
        reason="ServiceUnavailable",
        message=f"{what}: cannot reach the API server: {error!r}",
        failure="unreachable",
    )


class KubeClient:
    """One API server's client: kept-alive connections (``http.Pool``) for requests, an aiohttp
    session for watches. Use as an async context manager."""

    def __init__(self, cfg: kubeconfig.KubeConfig, *, timeout: float = 30.0) -> None:
        """``timeout``: the deadline, in seconds, of each call (see the module guarantees)."""
        self.config = cfg
        self._ssl = cfg.ssl_context() if cfg.server.startswith("https") else None
        self._timeout = timeout
        self._session: aiohttp.ClientSession | None = None
        self._pool: http.Pool | None = None
        # Requests sent, by method ("WATCH" for watches): what this client costs the API server.
        self.requests: collections.Counter[str] = collections.Counter()

    async def __aenter__(self) -> KubeClient:
        return self

    async def __aexit__(
        self, _t: type[BaseException] | None, _e: BaseException | None, _tb: TracebackType | None
    ) -> None:
        await self.close()

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(ssl=self._ssl if self._ssl else False),
            )
        return self._session

    @property
    def pool(self) -> http.Pool:
        if self._pool is None:
            self._pool = http.Pool(self.config.server, ssl_context=self._ssl)
        return self._pool

    async def close(self) -> None:
        if self._pool is not None:
            self._pool.close()
            self._pool = None
        if self._session is not None:
            await self._session.close()

    def _headers(self, content_type: str | None = None) -> dict[str, str]:
        headers = {"Accept": "application/json"}
        token = self.config.bearer_token()
        if token:
            headers["Authorization"] = f"Bearer {token}"
        if content_type:
            headers["Content-Type"] = content_type
        return headers

    @property
    def timeout(self) -> float:
        return self._timeout

    async def request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, str] | None = None,
        body: Any = None,
        content_type: str = "application/json",
        timeout: float | None = None,
    ) -> dict[str, Any]:
        data = jsontext.encode_bytes(body) if body is not None else None
        deadline = timeout or self._timeout
        query = urllib.parse.urlencode(params) if params else ""
        for attempt in (1, 2):
            self.requests[method] += 1
            try:
                async with asyncio.timeout(deadline):
                    status, raw = await self.pool.request(
                        method,
                        path,
                        query=query,
                        headers=self._headers(content_type if data is not None else None),
                        body=data,
                    )
            except (OSError, TimeoutError) as exc:
                raise _unavailable(f"{method} {path}", exc, deadline=deadline) from exc
            if status == 401 and attempt == 1 and self.config.refresh_token():
                continue  # the token file changed: the new credentials get one try
            if status >= 300:
                raise _error_from(status, raw)
            result: dict[str, Any] = jsontext.decode(raw) if raw else {}
            return result
        raise AssertionError("unreachable")  # pragma: no cover - the loop returns or raises

    async def get(
        self, resource: Resource, name: str, *, namespace: str | None = None
    ) -> dict[str, Any]:
        return await self.request("GET", resource.path(namespace=namespace, name=name))

    async def get_or_none(
        self, resource: Resource, name: str, *, namespace: str | None = None
    ) -> dict[str, Any] | None:
        """The object, or None when the API server answers 404 (every other error raises)."""
        try:
            return await self.get(resource, name, namespace=namespace)
        except ApiError as exc:
            if exc.code == 404:
                return None
            raise

    async def list(
        self,
        resource: Resource,
        *,
        namespace: str | None = None,
        label_selector: str | None = None,
        field_selector: str | None = None,
    ) -> dict[str, Any]:
        params = {}
        if label_selector:
            params["labelSelector"] = label_selector
        if field_selector:
            params["fieldSelector"] = field_selector
        return await self.request("GET", resource.path(namespace=namespace), params=params)

    async def create(
        self, resource: Resource, body: Mapping[str, Any], *, namespace: str | None = None
    ) -> dict[str, Any]:
        return await self.request("POST", resource.path(namespace=namespace), body=dict(body))

    async def replace(
        self, resource: Resource, body: Mapping[str, Any], *, namespace: str | None = None
    ) -> dict[str, Any]:
        name = body["metadata"]["name"]
        return await self.request(
            "PUT", resource.path(namespace=namespace, name=name), body=dict(body)
        )

    async def patch(
        self,
        resource: Resource,
        name: str,
        patch: Mapping[str, Any],
        *,
        namespace: str | None = None,
        subresource: str | None = None,
        patch_type: Literal["merge", "json"] = "merge",
    ) -> dict[str, Any]:
        path = resource.path(namespace=namespace, name=name)
        if subresource:
            path += f"/{subresource}"
        content_type = f"application/{'merge' if patch_type == 'merge' else 'json'}-patch+json"
        return await self.request("PATCH", path, body=patch, content_type=content_type)

    async def delete(
        self, resource: Resource, name: str, *, namespace: str | None = None
    ) -> dict[str, Any]:
        return await self.request("DELETE", resource.path(namespace=namespace, name=name))

    async def watch(
        self,
        resource: Resource,
        *,
        resource_version: str,
        namespace: str | None = None,
        label_selector: str | None = None,
        field_selector: str | None = None,
        timeout_seconds: int = 300,
    ) -> AsyncIterator[WatchEvent]:
        """Stream events after ``resource_version`` until the server ends the watch."""
        params = {
            "watch": "1",
            "resourceVersion": resource_version,
            "allowWatchBookmarks": "true",
            "timeoutSeconds": str(timeout_seconds),
        }
        if label_selector:
            params["labelSelector"] = label_selector
        if field_selector:
            params["fieldSelector"] = field_selector
        what = f"watch {resource.path(namespace=namespace)}"
        self.requests["WATCH"] += 1
        try:
            async with asyncio.timeout(self._timeout):
                response = await self.session.get(
                    self.config.server + resource.path(namespace=namespace),
                    params=params,
                    headers=self._headers(),
                    timeout=aiohttp.ClientTimeout(
                        total=timeout_seconds + WATCH_GRACE_SECONDS,
                        sock_connect=self._timeout,
                        sock_read=WATCH_IDLE_SECONDS,
                    ),
                )
                if response.status >= 300:
                    raw = await response.read()
                    response.release()
                    if response.status == 401:
                        self.config.refresh_token()  # the caller's next attempt uses new ones
                    raise _error_from(response.status, raw)
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise _unavailable(what, exc, deadline=self._timeout) from exc
        async with response:
            try:
                async for line in response.content:
                    if not line.strip():
                        continue
                    event = jsontext.decode(line)
                    kind, obj = event.get("type"), event.get("object") or {}
                    if kind == "ERROR":
                        code = int(obj.get("code", 500))
                        raise _error_from(code, jsontext.encode_bytes(obj))
                    if kind in ("ADDED", "MODIFIED", "DELETED", "BOOKMARK"):
                        yield WatchEvent(type=kind, object=obj)
            except (aiohttp.ClientError, TimeoutError) as exc:
                raise _unavailable(what, exc, deadline=WATCH_IDLE_SECONDS) from exc
