"""What every verb handler shares: the request context, the server it runs on, the clock.

:class:`Context` is one resource request after routing (type, version, namespace, name,
subresource, user, attributes and the query's dry-run, table and apply options).
:class:`Server` is the narrow view of :class:`api.ApiServer` the handler modules use (store,
registry, watch hub, authentication, authorization, admission and background tasks), so that
they never import :mod:`api` and :mod:`api` stays a facade. The helpers here address objects:
where a type is stored (``events.k8s.io`` Events are core Events, as upstream), the store key of
an object and how a stored object is served at the request's group and version.
"""

from __future__ import annotations

import dataclasses
import datetime
import time
from collections.abc import Coroutine
from typing import Any, Protocol

from aiohttp import web

from agentauth.devcluster import (
    admission,
    authn,
    events,
    patching,
    rbac,
    resources,
    serviceaccounts,
    storage,
    types,
    watching,
)

_clock: list[Any] = [0, ""]


class Server(Protocol):
    """The state of :class:`api.ApiServer` the verb handlers read and write."""

    store: storage.Store
    registry: resources.Registry
    hub: watching.Hub
    reader: types.ObjectReader
    token_issuer: serviceaccounts.ServiceAccountTokenIssuer
    authenticator: authn.Authenticator
    authorizer: rbac.RBACAuthorizer
    admission: admission.AdmissionChain
    server_address: str
    bookmark_interval: float
    terminating: set[str]

    def spawn(self, coroutine: Coroutine[Any, Any, None]) -> None:
        """Run ``coroutine`` in the background until it ends or the server stops."""

    async def mutate(self, **arguments: Any) -> dict[str, Any] | None:
        """Mutating admission (the object unchanged when no webhook is configured)."""

    async def admit(self, **arguments: Any) -> None:
        """Validating admission (nothing to do when no webhook is configured)."""


def now() -> str:
    """RFC 3339 UTC time with second precision (formatted once per second: it is hot)."""
    second = int(time.time())
    if _clock[0] != second:
        _clock[0] = second
        _clock[1] = datetime.datetime.fromtimestamp(second, datetime.UTC).strftime(
            "%Y-%m-%dT%H:%M:%SZ"
        )
    return str(_clock[1])


class Context:
    """Per-request state shared by the verb handlers."""

    def __init__(
        self,
        *,
        rt: resources.ResourceType,
        version: str,
        namespace: str,
        name: str,
        sub: str,
        user: types.UserInfo,
        attributes: types.RequestAttributes,
        request: web.Request,
    ) -> None:
        self.rt = rt
        self.version = version
        self.namespace = namespace
        self.name = name
        self.sub = sub
        self.user = user
        self.attributes = attributes
        self.request = request
        self.dry_run = "All" in request.query.getall("dryRun", [])
        self.include_object = request.query.get("includeObject", "PartialObjectMetadata")
        self.is_apply = request.content_type == patching.APPLY_PATCH_YAML
        self.managed_fields: list[dict[str, Any]] = []


_STORED_AS = {("events.k8s.io", "events"): ("", "events")}


def stored_as(rt: resources.ResourceType) -> tuple[str, str]:
    """Where objects of ``rt`` live: events.k8s.io Events are core Events, as upstream."""
    return _STORED_AS.get((rt.group, rt.plural), (rt.group, rt.plural))


def object_key(rt: resources.ResourceType, *, namespace: str, name: str) -> storage.ObjectKey:
    group, plural = stored_as(rt)
    return (group, plural, namespace if rt.namespaced else "", name)


def storage_type(
    registry: resources.Registry, rt: resources.ResourceType
) -> resources.ResourceType:
    """The type objects of ``rt`` are stored as (itself, except for views)."""
    group, plural = stored_as(rt)
    return registry.by_group_resource(group, plural) or rt


def view(ctx: Context, obj: dict[str, Any]) -> dict[str, Any]:
    """A stored object as the request's group and version serve it."""
    if stored_as(ctx.rt) != (ctx.rt.group, ctx.rt.plural):
        view = events.to_view(obj)
    elif ctx.version == ctx.rt.storage_version:
        return obj
    else:
        view = dict(obj)
    view["apiVersion"] = ctx.rt.api_version(ctx.version)
    return view


def to_storage(ctx: Context, obj: dict[str, Any]) -> dict[str, Any]:
    if stored_as(ctx.rt) != (ctx.rt.group, ctx.rt.plural):
        return events.to_core(obj)
    return obj


def gvk(rt: resources.ResourceType, version: str) -> dict[str, Any]:
    return {"group": rt.group, "version": version, "kind": rt.kind}


def with_name(attributes: types.RequestAttributes, name: str) -> types.RequestAttributes:
    if attributes.name == name:
        return attributes
    return dataclasses.replace(attributes, name=name)
