"""Async Kubernetes API client over aiohttp.

Guarantees: every non-2xx answer raises ``ApiError`` carrying the API ``Status`` (code, reason,
message); ``watch`` yields typed events, surfaces ``410 Gone`` (from the HTTP status or an
``ERROR`` event) as ``ResourceExpired`` so callers relist, and passes ``BOOKMARK`` events through
so callers can advance their resourceVersion. Nothing here retries silently.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Literal
from urllib.parse import quote

import aiohttp

from agentauth.kube import config as kubeconfig


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


class ApiError(Exception):
    """A non-2xx answer from the API server."""

    def __init__(self, *, code: int, reason: str, message: str) -> None:
        super().__init__(f"{code} {reason}: {message}")
        self.code = code
        self.reason = reason
        self.message = message


class ResourceExpired(ApiError):
    """410 Gone: the resourceVersion is too old; list again."""


EventType = Literal["ADDED", "MODIFIED", "DELETED", "BOOKMARK"]


@dataclass(frozen=True, slots=True)
class WatchEvent:
    type: EventType
    object: dict[str, Any]


def _error_from(code: int, body: bytes) -> ApiError:
    try:
        status = json.loads(body)
        reason, message = str(status.get("reason", "")), str(status.get("message", ""))
    except ValueError:
        reason, message = "", body[:500].decode("utf-8", "replace")
    cls = ResourceExpired if code == 410 else ApiError
    return cls(code=code, reason=reason, message=message)


class KubeClient:
    """One aiohttp session to one API server. Use as an async context manager."""

    def __init__(self, cfg: kubeconfig.KubeConfig, *, timeout: float = 30.0) -> None:
        self.config = cfg
        self._ssl = cfg.ssl_context() if cfg.server.startswith("https") else None
        self._timeout = timeout
        self._session: aiohttp.ClientSession | None = None

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

    async def close(self) -> None:
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
        data = json.dumps(body).encode() if body is not None else None
        async with self.session.request(
            method,
            self.config.server + path,
            params=params,
            data=data,
            headers=self._headers(content_type if data is not None else None),
            timeout=aiohttp.ClientTimeout(total=timeout or self._timeout),
        ) as response:
            raw = await response.read()
            if response.status >= 300:
                raise _error_from(response.status, raw)
            result: dict[str, Any] = json.loads(raw) if raw else {}
            return result

    async def get(
        self, resource: Resource, name: str, *, namespace: str | None = None
    ) -> dict[str, Any]:
        return await self.request("GET", resource.path(namespace=namespace, name=name))

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
        async with self.session.get(
            self.config.server + resource.path(namespace=namespace),
            params=params,
            headers=self._headers(),
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=self._timeout),
        ) as response:
            if response.status >= 300:
                raise _error_from(response.status, await response.read())
            async for line in response.content:
                if not line.strip():
                    continue
                event = json.loads(line)
                kind, obj = event.get("type"), event.get("object") or {}
                if kind == "ERROR":
                    code = int(obj.get("code", 500))
                    raise _error_from(code, json.dumps(obj).encode())
                if kind in ("ADDED", "MODIFIED", "DELETED", "BOOKMARK"):
                    yield WatchEvent(type=kind, object=obj)
