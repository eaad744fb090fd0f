"""The request pipeline of the embedded API server.

Every request goes through the same steps as on kube-apiserver: authenticate -> authorize
(403 worded like upstream) -> decode -> mutating admission -> defaults, schema validation and
the kind's strategy (uid, generation, status-subresource split, finalizers) -> validating
admission -> store -> notify watchers. Webhook calls are awaited without holding anything: the
commit re-reads the object and compares resourceVersions, so a concurrent write turns into a
retry (patch, unconditional update) or a 409 Conflict (update with a resourceVersion).

Every error is a ``Status`` body with the code, reason and message the real server uses; no
input makes a handler raise past :meth:`ApiServer.handle`.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import copy
import dataclasses
import datetime
import json
import logging
import re
import secrets
import time
import uuid
from collections.abc import Sequence
from typing import Any

import yaml
from aiohttp import web

from agentauth.devcluster import (
    admission,
    authn,
    builtins,
    cel,
    discovery,
    events,
    openapi,
    openapiv2,
    patching,
    protobuf,
    rbac,
    requestinfo,
    resources,
    reviews,
    schema,
    selectors,
    serviceaccounts,
    statuses,
    storage,
    tables,
    types,
    watching,
)

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 3 * 1024 * 1024
STORAGE_RETRY_AFTER_SECONDS = 1
VERSION_INFO = {
    "major": "1",
    "minor": "37",
    "emulationMajor": "1",
    "emulationMinor": "37",
    "gitVersion": "v1.37.0-agentauth-dev",
    "gitCommit": "0000000000000000000000000000000000000000",
    "gitTreeState": "clean",
    "buildDate": "2026-01-01T00:00:00Z",
    "goVersion": "go1.25.0",
    "compiler": "gc",
    "platform": "linux/amd64",
}
_PUBLIC_PATHS = {
    "/healthz",
    "/livez",
    "/readyz",
    "/version",
    "/.well-known/openid-configuration",
    "/openid/v1/jwks",
}
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_GENERATE_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"
_RBAC_GROUP = "rbac.authorization.k8s.io"


class ApiError(Exception):
    """An error answered as a ``Status`` body."""

    def __init__(
        self,
        code: int,
        reason: str,
        message: str,
        *,
        details: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.reason = reason
        self.message = message
        self.details = details

    def status(self) -> dict[str, Any]:
        return statuses.failure(self.code, self.reason, self.message, details=self.details)

    @classmethod
    def of(cls, status: dict[str, Any]) -> ApiError:
        """The error that answers a Status built by :mod:`statuses`."""
        return cls(
            status["code"], status["reason"], status["message"], details=status.get("details")
        )


class _Retry(Exception):
    """The object changed while admission ran; recompute from the latest version."""


_clock: list[Any] = [0, ""]


def now() -> str:
    """RFC 3339 UTC time with second precision (formatted once per second: it is hot)."""
    second = int(time.time())
    if _clock[0] != second:
        _clock[0] = second
        _clock[1] = datetime.datetime.fromtimestamp(second, datetime.UTC).strftime(
            "%Y-%m-%dT%H:%M:%SZ"
        )
    return str(_clock[1])


def json_response(body: Any, *, status: int = 200) -> web.Response:
    return web.Response(
        body=json.dumps(body, separators=(",", ":")).encode(),
        status=status,
        content_type="application/json",
    )


def text_json_response(text: str, *, status: int = 200) -> web.Response:
    return web.Response(body=text.encode(), status=status, content_type="application/json")


def error_response(error: ApiError) -> web.Response:
    return web.Response(
        body=statuses.encode(error.status()), status=error.code, content_type="application/json"
    )


def storage_unavailable(error: storage.StorageError) -> web.Response:
    """A write the store could not commit: 503 with ``Retry-After``, as kube-apiserver answers
    while its storage is unavailable. Nothing was applied, so retrying is safe."""
    response = error_response(
        ApiError(
            503,
            "ServiceUnavailable",
            f"storage is unavailable, the write was not applied: {error}",
            details={"retryAfterSeconds": STORAGE_RETRY_AFTER_SECONDS},
        )
    )
    response.headers["Retry-After"] = str(STORAGE_RETRY_AFTER_SECONDS)
    return response


def _details(rt: resources.ResourceType, name: str) -> dict[str, Any]:
    details: dict[str, Any] = {"name": name, "kind": rt.plural}
    if rt.group:
        details["group"] = rt.group
    return details


def not_found(rt: resources.ResourceType, name: str) -> ApiError:
    return ApiError(
        404, "NotFound", f'{rt.group_resource} "{name}" not found', details=_details(rt, name)
    )


def conflict(rt: resources.ResourceType, name: str, why: str) -> ApiError:
    return ApiError(
        409,
        "Conflict",
        f'Operation cannot be fulfilled on {rt.group_resource} "{name}": {why}',
        details=_details(rt, name),
    )


_MODIFIED = (
    "the object has been modified; please apply your changes to the latest version and try again"
)


def invalid(rt: resources.ResourceType, name: str, errors: Sequence[schema.FieldError]) -> ApiError:
    qualified = f"{rt.kind}.{rt.group}" if rt.group else rt.kind
    rendered = [str(error) for error in errors]
    summary = rendered[0] if len(rendered) == 1 else "[" + ", ".join(rendered) + "]"
    details: dict[str, Any] = {
        "name": name,
        "kind": rt.kind,
        "causes": [error.cause() for error in errors],
    }
    if rt.group:
        details["group"] = rt.group
    return ApiError(422, "Invalid", f'{qualified} "{name}" is invalid: {summary}', details=details)


def bad_request(message: str) -> ApiError:
    return ApiError(400, "BadRequest", message)


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
    """Routes requests to resource handlers; owns the registry, the store and the watch hub."""

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
        self.reader = StoreReader(store)
        self.token_issuer = token_issuer
        self.authenticator = authn.Authenticator(
            static_tokens=static_tokens, token_issuer=token_issuer, reader=self.reader
        )
        self.authorizer = rbac.RBACAuthorizer(self.reader)
        self.admission = admission.AdmissionChain(reader=self.reader)
        self.server_address = server_address
        self.bookmark_interval = bookmark_interval
        self._background: set[asyncio.Task[None]] = set()
        self._terminating: set[str] = set()
        store.subscribe(self.hub.publish)
        for entry in store.entries("apiextensions.k8s.io", "customresourcedefinitions"):
            self._register_crd(entry.obj)

    def _has_webhooks(self, resource: str) -> bool:
        # Fast path: with no webhook configuration at all, admission has nothing to do.
        return bool(self.store.entries("admissionregistration.k8s.io", resource))

    async def _mutate(self, **arguments: Any) -> dict[str, Any] | None:
        if not self._has_webhooks("mutatingwebhookconfigurations"):
            obj: dict[str, Any] | None = arguments["obj"]
            return obj
        return await self.admission.mutate(**arguments)

    async def _admit(self, **arguments: Any) -> None:
        if self._has_webhooks("validatingwebhookconfigurations"):
            await self.admission.validate(**arguments)

    # -- bootstrap ----------------------------------------------------------------------------
    def ensure(self, obj: dict[str, Any]) -> None:
        """Create ``obj`` unless it exists (used at start-up for defaults and CRDs)."""
        group, _, version = str(obj["apiVersion"]).rpartition("/")
        rt = next((r for r in self.registry if r.group == group and r.kind == obj["kind"]), None)
        if rt is None:
            raise ValueError(f"unknown kind {obj['apiVersion']} {obj['kind']}")
        metadata = obj.setdefault("metadata", {})
        key = self._key(rt, metadata.get("namespace", ""), metadata["name"])
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
                self._commit(rt, key, updated, "MODIFIED")
            return
        prepared = self._prepare_create(
            rt, version or rt.storage_version, copy.deepcopy(obj), metadata.get("namespace", "")
        )
        self._commit(rt, key, prepared, "ADDED")

    def resume(self) -> None:
        """Restart work a previous run left unfinished (terminating namespaces)."""
        for entry in self.store.entries("", "namespaces"):
            if entry.obj["metadata"].get("deletionTimestamp"):
                self._spawn(self._terminate_namespace(entry.obj["metadata"]["name"]))

    async def stop(self) -> None:
        self.hub.close_all()
        for task in list(self._background):
            task.cancel()
        if self._background:
            await asyncio.gather(*self._background, return_exceptions=True)

    # -- entry point --------------------------------------------------------------------------
    async def handle(self, request: web.Request) -> web.StreamResponse:
        try:
            return await self._handle(request)
        except ApiError as error:
            return error_response(error)
        except storage.StorageError as error:
            return storage_unavailable(error)
        except admission.AdmissionDenied as denied:
            return error_response(
                ApiError(denied.code, denied.reason, denied.message, details=denied.details)
            )
        except web.HTTPRequestEntityTooLarge:
            return error_response(
                ApiError(
                    413,
                    "RequestEntityTooLarge",
                    f"Request entity too large: limit is {MAX_BODY_BYTES}",
                )
            )
        except (ConnectionResetError, asyncio.CancelledError):
            raise
        except Exception:
            log.exception("internal error serving %s %s", request.method, request.path)
            return error_response(ApiError.of(statuses.internal_error("unexpected server error")))

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        path = request.path
        if path in _PUBLIC_PATHS:
            return self._public(path)
        try:
            user = self.authenticator.authenticate(request.headers.get("Authorization"))
        except authn.Unauthenticated:
            raise ApiError(401, "Unauthorized", "Unauthorized") from None
        user = self._impersonated(user, request)
        query = request.query
        attributes = requestinfo.parse(request.method, path, query)
        decision = self.authorizer.authorize(user, attributes)
        if not decision.allowed:
            raise ApiError(
                403,
                "Forbidden",
                self.authorizer.forbidden_message(user, attributes),
                details=self._forbidden_details(attributes),
            )
        if not attributes.resource_request:
            return self._non_resource(path, request)
        return await self._resource(request, attributes, user)

    def _impersonated(self, user: types.UserInfo, request: web.Request) -> types.UserInfo:
        """Apply ``Impersonate-*`` headers as kube-apiserver does, each one authorized by RBAC.

        The caller needs verb ``impersonate`` on ``users`` (or ``serviceaccounts`` in the
        account's namespace), on ``groups`` for each group and on ``uids`` for a uid; anything
        less is a 403 naming what was refused, so ``kubectl --as`` never silently runs as the
        caller.
        """
        name = request.headers.get("Impersonate-User")
        groups = tuple(request.headers.getall("Impersonate-Group", []))
        uid = request.headers.get("Impersonate-Uid", "")
        if name is None:
            if groups or uid:
                raise ApiError(
                    400, "BadRequest", "requested impersonation without a user (Impersonate-User)"
                )
            return user
        wanted: list[types.RequestAttributes] = []
        if name.startswith("system:serviceaccount:") and name.count(":") == 3:
            _, _, sa_namespace, sa_name = name.split(":")
            wanted.append(
                types.RequestAttributes(
                    verb="impersonate",
                    resource_request=True,
                    resource="serviceaccounts",
                    namespace=sa_namespace,
                    name=sa_name,
                )
            )
            default_groups: tuple[str, ...] = (
                "system:serviceaccounts",
                f"system:serviceaccounts:{sa_namespace}",
            )
        else:
            wanted.append(
                types.RequestAttributes(
                    verb="impersonate", resource_request=True, resource="users", name=name
                )
            )
            default_groups = ()
        wanted.extend(
            types.RequestAttributes(
                verb="impersonate", resource_request=True, resource="groups", name=group
            )
            for group in groups
        )
        if uid:
            wanted.append(
                types.RequestAttributes(
                    verb="impersonate",
                    resource_request=True,
                    api_group="authentication.k8s.io",
                    resource="uids",
                    name=uid,
                )
            )
        for attributes in wanted:
            if not self.authorizer.authorize(user, attributes).allowed:
                raise ApiError(
                    403,
                    "Forbidden",
                    self.authorizer.forbidden_message(user, attributes),
                    details=self._forbidden_details(attributes),
                )
        effective = groups or default_groups
        if "system:authenticated" not in effective:
            effective = (*effective, "system:authenticated")
        return types.UserInfo(username=name, uid=uid, groups=effective)

    @staticmethod
    def _forbidden_details(attributes: types.RequestAttributes) -> dict[str, Any]:
        if not attributes.resource_request:
            return {}
        details: dict[str, Any] = {"kind": attributes.resource}
        if attributes.name:
            details["name"] = attributes.name
        if attributes.api_group:
            details["group"] = attributes.api_group
        return details

    def _public(self, path: str) -> web.Response:
        if path == "/version":
            return json_response(VERSION_INFO)
        if path == "/.well-known/openid-configuration":
            return json_response(self.token_issuer.openid_configuration())
        if path == "/openid/v1/jwks":
            return web.Response(
                body=json.dumps(self.token_issuer.jwks()).encode(),
                content_type="application/jwk-set+json",
            )
        return web.Response(text="ok", content_type="text/plain")

    def _non_resource(self, path: str, request: web.Request) -> web.Response:
        parts = [part for part in path.strip("/").split("/") if part]
        found: dict[str, Any] | None = None
        if parts == ["api"]:
            found = discovery.core_versions(self.server_address)
        elif parts == ["apis"]:
            found = discovery.group_list(self.registry)
        elif len(parts) == 2 and parts[0] == "api":
            found = discovery.resource_list(self.registry, "", parts[1])
        elif len(parts) == 2 and parts[0] == "apis":
            found = discovery.group(self.registry, parts[1])
        elif len(parts) == 3 and parts[0] == "apis":
            found = discovery.resource_list(self.registry, parts[1], parts[2])
        elif parts == ["openapi", "v3"]:
            found = openapi.index(self.registry)
        elif len(parts) >= 4 and parts[:2] == ["openapi", "v3"]:
            group, version = (
                ("", parts[3])
                if parts[2] == "api"
                else (parts[3], parts[4] if len(parts) > 4 else "")
            )
            body = openapi.document_bytes(self.registry, group, version)
            if body is not None:
                return web.Response(body=body, content_type="application/json")
        elif parts == ["openapi", "v2"]:
            wants_protobuf = openapiv2.wants_protobuf(request.headers.get("Accept", ""))
            return web.Response(
                body=openapi.swagger_bytes(self.registry, protobuf=wants_protobuf),
                content_type=openapiv2.PROTOBUF_MEDIA_TYPE
                if wants_protobuf
                else "application/json",
            )
        elif path in ("/healthz", "/livez", "/readyz"):
            return web.Response(text="ok", content_type="text/plain")
        if found is None:
            raise ApiError.of(statuses.path_not_found())
        return json_response(found)

    # -- resources ----------------------------------------------------------------------------
    def _key(self, rt: resources.ResourceType, namespace: str, name: str) -> storage.ObjectKey:
        group, plural = _stored_as(rt)
        return (group, plural, namespace if rt.namespaced else "", name)

    def _storage_type(self, rt: resources.ResourceType) -> resources.ResourceType:
        """The type objects of ``rt`` are stored as (itself, except for views)."""
        group, plural = _stored_as(rt)
        return self.registry.by_group_resource(group, plural) or rt

    def _view(self, ctx: _Context, obj: dict[str, Any]) -> dict[str, Any]:
        """A stored object as the request's group and version serve it."""
        if _stored_as(ctx.rt) != (ctx.rt.group, ctx.rt.plural):
            view = events.to_view(obj)
        elif ctx.version == ctx.rt.storage_version:
            return obj
        else:
            view = dict(obj)
        view["apiVersion"] = ctx.rt.api_version(ctx.version)
        return view

    def _to_storage(self, ctx: _Context, obj: dict[str, Any]) -> dict[str, Any]:
        if _stored_as(ctx.rt) != (ctx.rt.group, ctx.rt.plural):
            return events.to_core(obj)
        return obj

    async def _resource(
        self, request: web.Request, attributes: types.RequestAttributes, user: types.UserInfo
    ) -> web.StreamResponse:
        rt = self.registry.lookup(attributes.api_group, attributes.api_version, attributes.resource)
        if rt is None:
            raise ApiError.of(statuses.path_not_found())
        version = attributes.api_version
        namespace = attributes.namespace if rt.namespaced else ""
        if (
            rt.namespaced
            and not namespace
            and attributes.verb not in ("list", "watch", "deletecollection")
        ):
            raise ApiError.of(statuses.path_not_found())
        name = attributes.name
        if rt.plural == "namespaces" and attributes.verb in ("list", "watch", "deletecollection"):
            namespace = ""
        verb = attributes.verb
        sub = attributes.subresource
        if sub and sub not in rt.subresources:
            raise ApiError.of(statuses.path_not_found())
        if verb not in rt.verbs and not (sub and verb in ("get", "update", "patch", "create")):
            raise ApiError.of(statuses.method_not_allowed())
        if rt.virtual:
            return await self._virtual(rt, request, user, namespace=namespace)
        if sub == "token":
            return await self._token_request(request, namespace, name)
        ctx = _Context(
            rt=rt,
            version=version,
            namespace=namespace,
            name=name,
            sub=sub,
            user=user,
            attributes=attributes,
            request=request,
        )
        if verb == "get":
            return self._get(ctx)
        if verb == "list":
            return self._list(ctx)
        if verb == "watch":
            return await self._watch(ctx)
        if verb == "create":
            return await self._create(ctx)
        if verb == "update":
            return await self._update(ctx)
        if verb == "patch":
            return await self._patch(ctx)
        if verb == "delete":
            return await self._delete(ctx)
        if verb == "deletecollection":
            return await self._delete_collection(ctx)
        raise ApiError.of(statuses.method_not_allowed())

    # decode --------------------------------------------------------------------------------
    async def _body(self, request: web.Request) -> Any:
        raw = await request.read()
        if len(raw) > MAX_BODY_BYTES:
            raise ApiError(
                413, "RequestEntityTooLarge", f"Request entity too large: limit is {MAX_BODY_BYTES}"
            )
        content_type = request.content_type
        if content_type == "application/vnd.kubernetes.protobuf":
            try:
                return protobuf.decode(raw)
            except protobuf.ProtobufError as error:
                raise ApiError(415, "UnsupportedMediaType", str(error)) from None
        if "protobuf" in content_type or "cbor" in content_type:
            raise ApiError(
                415,
                "UnsupportedMediaType",
                "the body of the request was in an unknown format - accepted media types "
                "include: application/json, application/yaml",
            )
        try:
            if "yaml" in content_type:
                return yaml.safe_load(raw.decode("utf-8"))
            return json.loads(raw)
        except (ValueError, yaml.YAMLError, UnicodeDecodeError) as error:
            detail = str(error).splitlines()[0] if str(error) else type(error).__name__
            raise bad_request(f"error decoding request body: {detail}") from None

    def _decode_object(self, ctx: _Context, body: Any) -> dict[str, Any]:
        rt = ctx.rt
        if not isinstance(body, dict):
            raise bad_request(
                "the body of the request was in an unknown format: expected an object"
            )
        api_version = body.setdefault("apiVersion", rt.api_version(ctx.version))
        kind = body.setdefault("kind", rt.kind)
        if api_version != rt.api_version(ctx.version):
            raise bad_request(
                f"the API version in the data ({api_version}) does not match the expected API "
                f"version ({rt.api_version(ctx.version)})"
            )
        if kind != rt.kind:
            raise bad_request(
                f"the kind in the data ({kind}) does not match the expected kind ({rt.kind})"
            )
        metadata = body.get("metadata")
        if metadata is None:
            metadata = body["metadata"] = {}
        if not isinstance(metadata, dict):
            raise bad_request("metadata must be an object")
        object_namespace = metadata.get("namespace")
        if rt.namespaced:
            if object_namespace and object_namespace != ctx.namespace:
                raise bad_request(
                    "the namespace of the provided object does not match the "
                    "namespace sent on the request"
                )
            metadata["namespace"] = ctx.namespace
        else:
            metadata.pop("namespace", None)
        return body

    # strategy ------------------------------------------------------------------------------
    def _check_namespace(self, ctx: _Context, name: str) -> None:
        if not ctx.rt.namespaced:
            return
        entry = self.store.get(("", "namespaces", "", ctx.namespace))
        if entry is None:
            raise ApiError(
                404,
                "NotFound",
                f'namespaces "{ctx.namespace}" not found',
                details={"name": ctx.namespace, "kind": "namespaces"},
            )
        if entry.obj["metadata"].get("deletionTimestamp"):
            raise ApiError(
                403,
                "Forbidden",
                f'{ctx.rt.group_resource} "{name}" is forbidden: unable to create new content in '
                f"namespace {ctx.namespace} because it is being terminated",
                details={
                    "name": name,
                    "kind": ctx.rt.plural,
                    "causes": [
                        {
                            "reason": "NamespaceTerminating",
                            "message": f"namespace {ctx.namespace} is being terminated",
                            "field": "metadata.namespace",
                        }
                    ],
                },
            )

    def _prepare_create(
        self, rt: resources.ResourceType, version: str, obj: dict[str, Any], namespace: str
    ) -> dict[str, Any]:
        metadata = obj["metadata"]
        for field in (
            "resourceVersion",
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
            "managedFields",
            "selfLink",
        ):
            metadata.pop(field, None)
        metadata["uid"] = str(uuid.uuid4())
        metadata["creationTimestamp"] = now()
        if rt.namespaced:
            metadata["namespace"] = namespace
        if rt.tracks_generation:
            metadata["generation"] = 1
        else:
            metadata.pop("generation", None)
        obj["apiVersion"] = rt.api_version(rt.storage_version)
        if rt.status_subresource and rt.custom:
            obj.pop("status", None)
        self._builtin_defaults(rt, obj, None)
        return obj

    def _builtin_defaults(
        self, rt: resources.ResourceType, obj: dict[str, Any], old: dict[str, Any] | None
    ) -> None:
        if rt.group == "" and rt.plural == "namespaces":
            name = obj["metadata"]["name"]
            obj["metadata"].setdefault("labels", {})["kubernetes.io/metadata.name"] = name
            if old is None:
                obj["spec"] = {"finalizers": ["kubernetes"]}
                obj["status"] = {"phase": "Active"}
            else:
                obj["spec"] = old.get("spec", {})
                obj["status"] = old.get("status", {})
        elif rt.group == "" and rt.plural == "secrets":
            obj.setdefault("type", "Opaque")
            string_data = obj.pop("stringData", None)
            if isinstance(string_data, dict):
                data = obj.setdefault("data", {})
                for key, value in string_data.items():
                    data[key] = base64.b64encode(str(value).encode()).decode()
        elif rt.group == "" and rt.plural == "pods":
            spec = obj.setdefault("spec", {})
            if isinstance(spec, dict):
                spec.setdefault("serviceAccountName", "default")
                spec.setdefault("restartPolicy", "Always")
                spec.setdefault("dnsPolicy", "ClusterFirst")
                spec.setdefault("schedulerName", "default-scheduler")
                for container in spec.get("containers") or ():
                    if isinstance(container, dict):
                        container.setdefault("imagePullPolicy", "IfNotPresent")
                        container.setdefault("terminationMessagePath", "/dev/termination-log")
            if old is None:
                obj["status"] = {"phase": "Pending", "qosClass": "BestEffort"}
        elif rt.group == "" and rt.plural == "services":
            builtins.service(obj, old, reader=self.reader)
            builtins.service_status(obj, old)
        elif rt.group == "batch" and rt.plural == "jobs":
            builtins.job_defaults(obj)
            if old is None:
                builtins.job_selector(obj)
        elif rt.group == "apiextensions.k8s.io":
            spec = obj.get("spec") or {}
            names = dict(spec.get("names") or {})
            names.setdefault("singular", str(names.get("kind", "")).lower())
            names.setdefault("listKind", f"{names.get('kind', '')}List")
            status = obj.setdefault("status", {})
            status["acceptedNames"] = names
            status["storedVersions"] = [
                v["name"] for v in spec.get("versions") or () if v.get("storage")
            ]
            status["conditions"] = [
                {
                    "type": "NamesAccepted",
                    "status": "True",
                    "reason": "NoConflicts",
                    "message": "no conflicts found",
                    "lastTransitionTime": now(),
                },
                {
                    "type": "Established",
                    "status": "True",
                    "reason": "InitialNamesAccepted",
                    "message": "the initial names have been accepted",
                    "lastTransitionTime": now(),
                },
            ]

        if not rt.custom and isinstance(obj.get("metadata"), dict):
            builtins.apply_defaults(rt.group, rt.storage_version, rt.kind, obj)

    def _validate(self, ctx: _Context, obj: dict[str, Any], *, creating: bool) -> list[str]:
        """Schema and built-in validation; returns warnings, raises 400/422."""
        rt = ctx.rt
        name = str(obj["metadata"].get("name", ""))
        errors: list[schema.FieldError] = []
        warnings: list[str] = []
        if creating:
            errors += _name_errors(rt, name)
        for key in ("labels", "annotations"):
            values = obj["metadata"].get(key)
            if values is not None and (
                not isinstance(values, dict) or not all(isinstance(v, str) for v in values.values())
            ):
                errors.append(
                    schema.invalid(f"metadata.{key}", values, "must be a map of string to string")
                )
        if rt.custom:
            found = rt.schema(ctx.version) or {}
            if found:
                unknown = schema.prune(obj, found)
                if unknown:
                    mode = ctx.request.query.get("fieldValidation", "Warn")
                    if mode == "Strict":
                        listed = ", ".join(f'unknown field "{u}"' for u in unknown)
                        raise bad_request(
                            f'{rt.kind} in version "{ctx.version}" cannot be handled as a '
                            f"{rt.kind}: strict decoding error: {listed}"
                        )
                    if mode != "Ignore":
                        warnings += [f'unknown field "{u}"' for u in unknown]
                schema.apply_defaults(obj, found)
                errors += schema.validate(obj, found)
                errors += cel.validate(obj, found, schema_errors=errors)
        else:
            upstream = builtins.schema_for(rt.group, ctx.version, rt.kind)
            if upstream is not None and self._storage_type(rt) is rt:
                warnings += self._decode_builtin(ctx, obj, upstream)
            if rt.group == "" and rt.plural == "pods":
                errors += _pod_errors(obj)
            elif rt.group == "apiextensions.k8s.io":
                errors += _crd_errors(obj)
        if errors:
            raise invalid(rt, name, errors)
        return warnings

    @staticmethod
    def _decode_builtin(ctx: _Context, obj: dict[str, Any], found: dict[str, Any]) -> list[str]:
        """What decoding into the Go type does upstream: type errors (400), unknown fields
        dropped with a warning or, with ``fieldValidation=Strict``, refused (400)."""
        rt = ctx.rt
        cannot = f'{rt.kind} in version "{ctx.version}" cannot be handled as a {rt.kind}'
        mismatch = builtins.type_error(obj, found)
        if mismatch:
            raise bad_request(f"{cannot}: {mismatch}")
        unknown = schema.prune(obj, found)
        metadata = (found.get("properties") or {}).get("metadata")
        meta = obj.get("metadata")
        if (
            isinstance(metadata, dict)
            and isinstance(meta, dict)
            and not meta.keys() <= (metadata.get("properties") or {}).keys()
        ):
            unknown += schema.prune(meta, metadata, path="metadata", root=False)
        if not unknown:
            return []
        mode = ctx.request.query.get("fieldValidation", "Warn")
        if mode == "Strict":
            listed = ", ".join(f'unknown field "{u}"' for u in unknown)
            raise bad_request(f"{cannot}: strict decoding error: {listed}")
        return [] if mode == "Ignore" else [f'unknown field "{u}"' for u in unknown]

    def _apply_strategy(
        self, ctx: _Context, old: dict[str, Any], new: dict[str, Any]
    ) -> dict[str, Any]:
        """Update strategy: immutable metadata, status split, generation, finalizer rules."""
        rt = ctx.rt
        if rt.status_subresource and ctx.sub == "status":
            result = copy.deepcopy(old)
            if "status" in new:
                result["status"] = new["status"]
            else:
                result.pop("status", None)
            return result
        if rt.status_subresource:
            if "status" in old:
                new["status"] = copy.deepcopy(old["status"])
            else:
                new.pop("status", None)
        metadata = new.setdefault("metadata", {})
        old_metadata = old["metadata"]
        for field in (
            "uid",
            "creationTimestamp",
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
            "generation",
            "namespace",
            "name",
        ):
            if field in old_metadata:
                metadata[field] = old_metadata[field]
            else:
                metadata.pop(field, None)
        if not ctx.is_apply:
            # Only server-side apply records managers here; other writes keep what was there.
            if "managedFields" in old_metadata:
                metadata["managedFields"] = old_metadata["managedFields"]
            else:
                metadata.pop("managedFields", None)
        new["apiVersion"] = old["apiVersion"]
        self._builtin_defaults(rt, new, old)
        if old_metadata.get("deletionTimestamp"):
            added = set(metadata.get("finalizers") or ()) - set(
                old_metadata.get("finalizers") or ()
            )
            if added:
                raise invalid(
                    rt,
                    metadata["name"],
                    [
                        schema.FieldError(
                            "FieldValueForbidden",
                            "metadata.finalizers",
                            "Forbidden: no new finalizers can be added if the object is being "
                            f"deleted, found new finalizers {json.dumps(sorted(added))}",
                        )
                    ],
                )
        if rt.tracks_generation:
            ignored = {"metadata", "status"} if rt.status_subresource else {"metadata"}
            if not rt.custom:
                ignored = {"metadata", "status"}
            before = {k: v for k, v in old.items() if k not in ignored}
            after = {k: v for k, v in new.items() if k not in ignored}
            if before != after:
                metadata["generation"] = int(old_metadata.get("generation") or 1) + 1
        return new

    # commit --------------------------------------------------------------------------------
    def _commit(
        self,
        rt: resources.ResourceType,
        key: storage.ObjectKey,
        obj: dict[str, Any],
        event_type: str,
    ) -> storage.Entry:
        obj["metadata"]["resourceVersion"] = str(self.store.next_version())
        entry = self.store.put(key, obj, event_type=event_type)
        if rt.group == "apiextensions.k8s.io":
            self._register_crd(obj)
        elif rt.group == "" and rt.plural == "namespaces" and event_type == "ADDED":
            self._ensure_default_service_account(obj["metadata"]["name"])
        return entry

    def _remove(
        self,
        rt: resources.ResourceType,
        key: storage.ObjectKey,
        obj: dict[str, Any],
        *,
        orphan: bool = False,
    ) -> dict[str, Any]:
        final = copy.deepcopy(obj)
        final["metadata"]["resourceVersion"] = str(self.store.next_version())
        self.store.remove(key, final)
        uid = final["metadata"].get("uid", "")
        if rt.group == "apiextensions.k8s.io":
            self._unregister_crd(final)
        if uid:
            if orphan:
                self._orphan(uid)
            else:
                self._spawn(self._collect_dependents(uid))
        return final

    def _ensure_default_service_account(self, namespace: str) -> None:
        key = ("", "serviceaccounts", namespace, "default")
        if self.store.get(key) is not None:
            return
        rt = self.registry.by_group_resource("", "serviceaccounts")
        if rt is None:  # pragma: no cover - serviceaccounts is a built-in kind
            return
        obj = {
            "apiVersion": "v1",
            "kind": "ServiceAccount",
            "metadata": {"name": "default", "namespace": namespace},
        }
        self._commit(rt, key, self._prepare_create(rt, "v1", obj, namespace), "ADDED")

    def _register_crd(self, crd: dict[str, Any]) -> None:
        spec = crd.get("spec") or {}
        names = spec.get("names") or {}
        group, plural = str(spec.get("group", "")), str(names.get("plural", ""))
        if group and plural:
            self.registry.set_custom(group, plural, resources.from_crd(crd))

    def _unregister_crd(self, crd: dict[str, Any]) -> None:
        spec = crd.get("spec") or {}
        group, plural = str(spec.get("group", "")), str((spec.get("names") or {}).get("plural"))
        served = self.registry.by_group_resource(group, plural)
        self.registry.set_custom(group, plural, None)
        if served is None:
            return
        for namespace, name in self.store.keys(group, plural):
            key = (group, plural, namespace, name)
            found = self.store.get(key)
            if found is not None:
                self._remove(served, key, found.obj)

    def _spawn(self, coroutine: Any) -> None:
        task: asyncio.Task[None] = asyncio.get_running_loop().create_task(coroutine)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _collect_dependents(self, owner_uid: str) -> None:
        """Background cascade: delete dependents whose owners are all gone."""
        for key in self.store.dependents(owner_uid):
            entry = self.store.get(key)
            rt = self.registry.by_group_resource(key[0], key[1])
            if entry is None or rt is None:
                continue
            owners = entry.obj["metadata"].get("ownerReferences") or []
            if any(self.store.by_uid(o.get("uid", "")) for o in owners):
                continue
            self._delete_object(rt, key, entry.obj)

    def _orphan(self, owner_uid: str) -> None:
        for key in self.store.dependents(owner_uid):
            entry = self.store.get(key)
            rt = self.registry.by_group_resource(key[0], key[1])
            if entry is None or rt is None:
                continue
            updated = copy.deepcopy(entry.obj)
            updated["metadata"]["ownerReferences"] = [
                o
                for o in updated["metadata"].get("ownerReferences") or ()
                if o.get("uid") != owner_uid
            ]
            if not updated["metadata"]["ownerReferences"]:
                del updated["metadata"]["ownerReferences"]
            self._commit(rt, key, updated, "MODIFIED")

    def _delete_object(
        self,
        rt: resources.ResourceType,
        key: storage.ObjectKey,
        obj: dict[str, Any],
        *,
        orphan: bool = False,
    ) -> tuple[dict[str, Any], bool]:
        """Delete now, or mark for deletion while finalizers remain. Returns (obj, deleted)."""
        metadata = obj["metadata"]
        if rt.group == "" and rt.plural == "namespaces":
            if not metadata.get("deletionTimestamp"):
                updated = copy.deepcopy(obj)
                updated["metadata"]["deletionTimestamp"] = now()
                updated["status"] = {"phase": "Terminating"}
                entry = self._commit(rt, key, updated, "MODIFIED")
                self._spawn(self._terminate_namespace(key[3]))
                return entry.obj, False
            return obj, False
        if metadata.get("finalizers"):
            if metadata.get("deletionTimestamp"):
                return obj, False
            updated = copy.deepcopy(obj)
            updated["metadata"]["deletionTimestamp"] = now()
            updated["metadata"]["deletionGracePeriodSeconds"] = 0
            if rt.tracks_generation:
                updated["metadata"]["generation"] = int(metadata.get("generation") or 1) + 1
            entry = self._commit(rt, key, updated, "MODIFIED")
            return entry.obj, False
        return self._remove(rt, key, obj, orphan=orphan), True

    async def _terminate_namespace(self, namespace: str) -> None:
        """Namespace lifecycle: delete everything inside, then the namespace itself."""
        if namespace in self._terminating:
            return
        self._terminating.add(namespace)
        pause = 0.02
        try:
            while True:
                remaining = 0
                for rt in list(self.registry):
                    if not rt.namespaced or rt.virtual:
                        continue
                    for entry in self.store.entries(rt.group, rt.plural, namespace):
                        remaining += 1
                        key = self._key(rt, namespace, entry.obj["metadata"]["name"])
                        if not entry.obj["metadata"].get("deletionTimestamp"):
                            self._delete_object(rt, key, entry.obj)
                if remaining == 0:
                    break
                # Objects with finalizers wait for their controllers; check again shortly, less
                # often the longer it takes (a finalizer nobody removes must not cost CPU).
                await asyncio.sleep(pause)
                pause = min(pause * 2, 1.0)
            namespace_key = ("", "namespaces", "", namespace)
            namespace_entry = self.store.get(namespace_key)
            namespaces = self.registry.by_group_resource("", "namespaces")
            if namespace_entry is not None and namespaces is not None:
                self._remove(namespaces, namespace_key, namespace_entry.obj)
        except storage.StorageError:
            # The store is failing: the namespace stays Terminating; try again in a while.
            asyncio.get_running_loop().call_later(
                1.0, lambda: self._spawn(self._terminate_namespace(namespace))
            )
        finally:
            self._terminating.discard(namespace)

    # verbs ---------------------------------------------------------------------------------
    def _served(self, ctx: _Context, entry: storage.Entry) -> str:
        """The object's JSON as served at the request's group and version."""
        view = self._view(ctx, entry.obj)
        return entry.text if view is entry.obj else storage.encode(view)

    def _object_response(
        self,
        ctx: _Context,
        entry_or_obj: storage.Entry | dict[str, Any],
        *,
        status: int = 200,
        warnings: Sequence[str] = (),
    ) -> web.Response:
        if isinstance(entry_or_obj, storage.Entry):
            obj = self._view(ctx, entry_or_obj.obj)
            text = entry_or_obj.text if obj is entry_or_obj.obj else storage.encode(obj)
        else:
            obj = dict(self._view(ctx, entry_or_obj))
            obj["apiVersion"] = ctx.rt.api_version(ctx.version)
            text = storage.encode(obj)
        if tables.wants_table(ctx.request.headers.get("Accept", "")):
            columns = tables.columns_for(ctx.rt, ctx.version)
            body = tables.table([obj], columns, include_object=ctx.include_object)
            response = json_response(body, status=status)
        else:
            response = text_json_response(text, status=status)
        for warning in warnings:
            escaped = warning.replace("\\", "\\\\").replace('"', '\\"')
            response.headers.add("Warning", f'299 - "{escaped}"')
        return response

    def _get(self, ctx: _Context) -> web.Response:
        entry = self.store.get(self._key(ctx.rt, ctx.namespace, ctx.name))
        if entry is None:
            raise not_found(ctx.rt, ctx.name)
        return self._object_response(ctx, entry)

    def _filter(self, ctx: _Context) -> selectors.Filter:
        query = ctx.request.query
        try:
            found = selectors.make_filter(
                ctx.namespace if ctx.rt.namespaced and ctx.namespace else None,
                query.get("labelSelector", ""),
                query.get("fieldSelector", ""),
            )
        except selectors.SelectorError as error:
            raise bad_request(str(error)) from None
        if _stored_as(ctx.rt) == (ctx.rt.group, ctx.rt.plural):
            return found
        fields = tuple(
            dataclasses.replace(requirement, path=events.core_field_path(requirement.path))
            for requirement in found.fields
        )
        return dataclasses.replace(found, fields=fields)

    def _list(self, ctx: _Context) -> web.Response:
        rt = ctx.rt
        query = ctx.request.query
        selection = self._filter(ctx)
        entries = self.store.entries(
            *_stored_as(rt), ctx.namespace if rt.namespaced and ctx.namespace else None
        )
        list_version = self.store.resource_version
        start: tuple[str, str] | None = None
        token = query.get("continue", "")
        if token:
            try:
                decoded = json.loads(base64.urlsafe_b64decode(token.encode()))
                start = (str(decoded["start"][0]), str(decoded["start"][1]))
                list_version = int(decoded["rv"])
            except (ValueError, KeyError, TypeError, IndexError, binascii.Error):
                raise bad_request("continue key is not valid: illegal base64 data") from None
        limit_text = query.get("limit", "")
        try:
            limit = int(limit_text) if limit_text else 0
        except ValueError:
            raise bad_request(f'invalid limit "{limit_text}"') from None
        selected: list[storage.Entry] = []
        continue_token = ""
        remaining = 0
        for entry in entries:
            metadata = entry.obj["metadata"]
            position = (metadata.get("namespace", ""), metadata["name"])
            if start is not None and position <= start:
                continue
            if (selection.labels or selection.fields) and not selection.matches(entry.obj):
                continue
            if limit and len(selected) >= limit:
                remaining += 1
                continue
            selected.append(entry)
        if limit and remaining:
            last = selected[-1].obj["metadata"]
            continue_token = base64.urlsafe_b64encode(
                json.dumps(
                    {"rv": list_version, "start": [last.get("namespace", ""), last["name"]]}
                ).encode()
            ).decode()
        list_metadata: dict[str, Any] = {"resourceVersion": str(list_version)}
        if continue_token:
            list_metadata["continue"] = continue_token
            list_metadata["remainingItemCount"] = remaining
        if tables.wants_table(ctx.request.headers.get("Accept", "")):
            columns = tables.columns_for(rt, ctx.version)
            body = tables.table(
                [self._view(ctx, e.obj) for e in selected],
                columns,
                include_object=ctx.include_object,
                list_metadata=list_metadata,
            )
            return json_response(body)
        head = json.dumps(
            {
                "kind": f"{rt.kind}List",
                "apiVersion": rt.api_version(ctx.version),
                "metadata": list_metadata,
            },
            separators=(",", ":"),
        )
        items = ",".join(self._served(ctx, entry) for entry in selected)
        return text_json_response(f'{head[:-1]},"items":[{items}]}}')

    async def _watch(self, ctx: _Context) -> web.StreamResponse:
        rt = ctx.rt
        request = ctx.request
        query = request.query
        selection = self._filter(ctx)
        if ctx.name and not selection.fields:
            selection = selectors.Filter(
                selection.namespace,
                selection.labels,
                selectors.parse_fields(f"metadata.name={ctx.name}"),
            )
        try:
            timeout = float(query.get("timeoutSeconds", "1800") or "1800")
        except ValueError:
            raise bad_request("invalid timeoutSeconds") from None
        bookmarks = requestinfo.parse_bool(query.get("allowWatchBookmarks", ""))
        initial_events = requestinfo.parse_bool(query.get("sendInitialEvents", ""))
        version_text = query.get("resourceVersion", "")
        if version_text and not version_text.isdigit():
            raise bad_request(f'invalid resource version "{version_text}"')
        as_table = tables.wants_table(request.headers.get("Accept", ""))
        columns = tables.columns_for(rt, ctx.version) if as_table else []
        include_object = ctx.include_object
        served_version = rt.api_version(ctx.version)
        rewrite = ctx.version != rt.storage_version or _stored_as(rt) != (rt.group, rt.plural)
        stored_group, stored_plural = _stored_as(rt)
        definitions_sent = [False]

        def encode_event(event_type: str, event: storage.Event) -> bytes:
            if as_table:
                first = not definitions_sent[0]
                definitions_sent[0] = True
                cache_key = f"table:{include_object}:{ctx.version}:{event_type}:{first}"
            else:
                first = False
                cache_key = f"json:{ctx.version}:{event_type}"
            frame = event.frames.get(cache_key)
            if frame is None:
                if as_table:
                    table = tables.table(
                        [self._view(ctx, event.obj)],
                        columns,
                        include_object=include_object,
                        list_metadata={"resourceVersion": str(event.resource_version)},
                        with_definitions=first,
                    )
                    text = storage.encode(table)
                elif rewrite:
                    text = storage.encode(
                        {**self._view(ctx, event.obj), "apiVersion": served_version}
                    )
                else:
                    text = event.text
                frame = f'{{"type":"{event_type}","object":{text}}}\n'.encode()
                event.frames[cache_key] = frame
            return frame

        def bookmark_frame(annotations: dict[str, str] | None = None) -> bytes:
            metadata: dict[str, Any] = {"resourceVersion": str(self.store.resource_version)}
            if annotations:
                metadata["annotations"] = annotations
            obj = {"kind": rt.kind, "apiVersion": served_version, "metadata": metadata}
            return (
                json.dumps({"type": "BOOKMARK", "object": obj}, separators=(",", ":")) + "\n"
            ).encode()

        response = web.StreamResponse(status=200)
        response.content_type = "application/json"
        response.enable_chunked_encoding()
        await response.prepare(request)
        transport = request.transport
        if transport is None:
            return response
        watcher = watching.Watcher(
            group=stored_group,
            resource=stored_plural,
            filter=selection,
            encoder=encode_event,
            transport=transport,
        )
        # From here to hub.add nothing awaits, so no event can fall between replay and live.
        try:
            if initial_events or version_text in ("", "0"):
                namespace = ctx.namespace if rt.namespaced and ctx.namespace else None
                frames = [
                    encode_event(
                        "ADDED",
                        storage.Event(
                            "ADDED", 0, (stored_group, stored_plural, "", ""), e.obj, e.text
                        ),
                    )
                    for e in self.store.entries(stored_group, stored_plural, namespace)
                    if selection.matches(e.obj)
                ]
                if initial_events and bookmarks:
                    frames.append(bookmark_frame({"k8s.io/initial-events-end": "true"}))
                for start in range(0, len(frames), 500):
                    watcher.send(b"".join(frames[start : start + 500]))
            else:
                try:
                    requested = int(version_text)
                except ValueError:
                    raise bad_request(f'invalid resource version "{version_text}"') from None
                try:
                    history = self.store.history_since(requested)
                except storage.Gone as gone:
                    status = statuses.expired(str(gone))
                    watcher.send(statuses.watch_error(status))
                    await response.write_eof()
                    return response
                frames = []
                for event in history:
                    if event.key[0] != stored_group or event.key[1] != stored_plural:
                        continue
                    event_type = watching.effective_type(selection, event)
                    if event_type is not None:
                        frames.append(encode_event(event_type, event))
                if frames:
                    watcher.send(b"".join(frames))
        except ApiError as error:
            watcher.send(statuses.watch_error(error.status()))
            await response.write_eof()
            return response
        self.hub.add(watcher)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        try:
            while not watcher.closed.is_set():
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                # Wake up now and then even without bookmarks, to notice a client that left.
                wait = min(remaining, self.bookmark_interval if bookmarks else 5.0)
                try:
                    await asyncio.wait_for(watcher.closed.wait(), timeout=wait)
                except TimeoutError:
                    if bookmarks and loop.time() < deadline:
                        watcher.flush()
                        watcher.send(bookmark_frame())
                if transport.is_closing():
                    break
        finally:
            self.hub.remove(watcher)
        watcher.flush()
        if not transport.is_closing():
            with contextlib.suppress(ConnectionResetError):
                await response.write_eof()
        return response

    async def _create(self, ctx: _Context, body: dict[str, Any] | None = None) -> web.Response:
        if body is None:
            body = self._decode_object(ctx, await self._body(ctx.request))
        rt = ctx.rt
        metadata = body["metadata"]
        if not metadata.get("name"):
            prefix = metadata.get("generateName")
            if prefix:
                metadata["name"] = prefix + "".join(
                    secrets.choice(_GENERATE_ALPHABET) for _ in range(5)
                )
            else:
                raise invalid(
                    rt,
                    "",
                    [
                        schema.FieldError(
                            "FieldValueRequired",
                            "metadata.name",
                            "Required value: name or generateName is required",
                        )
                    ],
                )
        name = str(metadata["name"])
        ctx.name = name
        self._check_namespace(ctx, name)
        key = self._key(rt, ctx.namespace, name)
        if self.store.get(key) is not None:
            raise _already_exists(rt, name)
        store_rt = self._storage_type(rt)
        obj = self._prepare_create(
            store_rt, store_rt.storage_version, self._to_storage(ctx, body), ctx.namespace
        )
        if ctx.managed_fields:
            obj["metadata"]["managedFields"] = ctx.managed_fields
        attributes = _with_name(ctx.attributes, name)
        webhook_warnings: list[str] = []
        mutated = await self._mutate(
            warnings=webhook_warnings,
            operation="CREATE",
            attributes=attributes,
            kind=_gvk(rt, ctx.version),
            obj=obj,
            old_obj=None,
            user=ctx.user,
            dry_run=ctx.dry_run,
        )
        if mutated is not None:
            obj = mutated
        # Webhooks may not change identity fields the server owns.
        obj["metadata"]["name"] = name
        if rt.namespaced:
            obj["metadata"]["namespace"] = ctx.namespace
        warnings = self._validate(ctx, obj, creating=True)
        await self._admit(
            warnings=webhook_warnings,
            operation="CREATE",
            attributes=attributes,
            kind=_gvk(rt, ctx.version),
            obj=obj,
            old_obj=None,
            user=ctx.user,
            dry_run=ctx.dry_run,
        )
        if self.store.get(key) is not None:
            raise _already_exists(rt, name)
        self._check_namespace(ctx, name)
        warnings += webhook_warnings
        if ctx.dry_run:
            return self._object_response(ctx, obj, status=201, warnings=warnings)
        entry = self._commit(store_rt, key, obj, "ADDED")
        return self._object_response(ctx, entry, status=201, warnings=warnings)

    async def _update(self, ctx: _Context) -> web.Response:
        body = self._decode_object(ctx, await self._body(ctx.request))
        rt = ctx.rt
        if body["metadata"].get("name", ctx.name) != ctx.name:
            raise bad_request(
                "the name of the object "
                f"({body['metadata'].get('name')}) does not match the name on the "
                f"URL ({ctx.name})"
            )
        body["metadata"]["name"] = ctx.name
        precondition = str(body["metadata"].get("resourceVersion") or "")
        if not precondition and rt.custom:
            raise invalid(
                rt,
                ctx.name,
                [
                    schema.FieldError(
                        "FieldValueInvalid",
                        "metadata.resourceVersion",
                        "Invalid value: 0x0: must be specified for an update",
                    )
                ],
            )
        for _ in range(8):
            entry = self.store.get(self._key(rt, ctx.namespace, ctx.name))
            if entry is None:
                raise not_found(rt, ctx.name)
            try:
                return await self._write_existing(
                    ctx,
                    entry,
                    self._to_storage(ctx, copy.deepcopy(body)),
                    precondition=precondition,
                )
            except _Retry:
                if precondition:
                    raise conflict(rt, ctx.name, _MODIFIED) from None
        raise conflict(rt, ctx.name, _MODIFIED)

    async def _patch(self, ctx: _Context) -> web.Response:
        rt = ctx.rt
        content_type = ctx.request.content_type
        is_apply = content_type in (patching.APPLY_PATCH_YAML, patching.APPLY_PATCH_CBOR)
        if content_type not in (
            patching.MERGE_PATCH,
            patching.JSON_PATCH,
            patching.STRATEGIC_PATCH,
            patching.APPLY_PATCH_YAML,
        ):
            raise ApiError(
                415,
                "UnsupportedMediaType",
                f"the body of the request was in an unknown format - accepted media "
                f"types include: {patching.JSON_PATCH}, {patching.MERGE_PATCH}, "
                f"{patching.APPLY_PATCH_YAML}, {patching.STRATEGIC_PATCH}",
            )
        if content_type == patching.STRATEGIC_PATCH and rt.custom:
            raise ApiError(
                415,
                "UnsupportedMediaType",
                "strategic merge patch is not supported for custom resources",
            )
        if is_apply and not ctx.request.query.get("fieldManager"):
            raise bad_request(
                "PATCH, application/apply-patch+yaml requires the fieldManager parameter"
            )
        patch = await self._body(ctx.request)
        if is_apply:
            patch = self._decode_object(ctx, patch)
            if patch["metadata"].get("name", ctx.name) != ctx.name:
                raise bad_request("the name of the object does not match the name on the URL")
        elif content_type != patching.JSON_PATCH and not isinstance(patch, dict):
            raise bad_request(
                "the body of the request was in an unknown format: expected an object"
            )
        for _ in range(8):
            key = self._key(rt, ctx.namespace, ctx.name)
            entry = self.store.get(key)
            if entry is None:
                if is_apply and not ctx.sub:
                    return await self._create_from_apply(ctx, patch)
                raise not_found(rt, ctx.name)
            current = copy.deepcopy(self._view(ctx, entry.obj))
            try:
                if is_apply:
                    patched = patching.server_side_apply(
                        current,
                        patch,
                        manager=ctx.request.query["fieldManager"],
                        api_version=rt.api_version(ctx.version),
                        time=now(),
                    )
                elif content_type == patching.JSON_PATCH:
                    patched = patching.json_patch(current, patch)
                elif content_type == patching.MERGE_PATCH:
                    patched = patching.merge_patch(current, patch)
                else:
                    patched = patching.strategic_merge(
                        current, patch, builtins.schema_for(rt.group, ctx.version, rt.kind)
                    )
            except patching.PatchError as error:
                raise ApiError(
                    error.code, "Invalid" if error.code == 422 else "BadRequest", error.message
                ) from None
            if not isinstance(patched, dict) or not isinstance(patched.get("metadata"), dict):
                raise bad_request("the patch produced an object that is not an object")
            patched = self._to_storage(ctx, patched)
            if is_apply:
                patched["metadata"]["resourceVersion"] = str(
                    patch["metadata"].get("resourceVersion")
                    or entry.obj["metadata"]["resourceVersion"]
                )
            precondition = str(patched["metadata"].get("resourceVersion") or "")
            if precondition != entry.obj["metadata"]["resourceVersion"]:
                raise conflict(rt, ctx.name, _MODIFIED)
            patched["metadata"]["name"] = ctx.name
            try:
                return await self._write_existing(ctx, entry, patched, precondition="")
            except _Retry:
                continue
        raise conflict(rt, ctx.name, _MODIFIED)

    async def _create_from_apply(self, ctx: _Context, body: dict[str, Any]) -> web.Response:
        body["metadata"]["name"] = ctx.name
        applied = patching.server_side_apply(
            {},
            body,
            manager=ctx.request.query["fieldManager"],
            api_version=ctx.rt.api_version(ctx.version),
            time=now(),
        )
        ctx.managed_fields = applied["metadata"]["managedFields"]
        return await self._create(ctx, applied)

    async def _write_existing(
        self, ctx: _Context, entry: storage.Entry, new: dict[str, Any], *, precondition: str
    ) -> web.Response:
        rt = ctx.rt
        old = entry.obj
        old_version = old["metadata"]["resourceVersion"]
        if precondition and precondition != old_version:
            raise conflict(rt, ctx.name, _MODIFIED)
        attributes = ctx.attributes
        webhook_warnings: list[str] = []
        mutated = await self._mutate(
            warnings=webhook_warnings,
            operation="UPDATE",
            attributes=attributes,
            kind=_gvk(rt, ctx.version),
            obj=new,
            old_obj=old,
            user=ctx.user,
            dry_run=ctx.dry_run,
        )
        if mutated is not None:
            new = mutated
        new = self._apply_strategy(ctx, old, new)
        warnings = self._validate(ctx, new, creating=False)
        await self._admit(
            warnings=webhook_warnings,
            operation="UPDATE",
            attributes=attributes,
            kind=_gvk(rt, ctx.version),
            obj=new,
            old_obj=old,
            user=ctx.user,
            dry_run=ctx.dry_run,
        )
        key = self._key(rt, ctx.namespace, ctx.name)
        latest = self.store.get(key)
        if latest is None:
            raise not_found(rt, ctx.name)
        if latest.obj["metadata"]["resourceVersion"] != old_version:
            raise _Retry
        warnings += webhook_warnings
        new["metadata"]["resourceVersion"] = old_version
        if new == old:
            # A no-op write keeps its resourceVersion and notifies no one, like upstream.
            return self._object_response(ctx, latest, warnings=warnings)
        if ctx.dry_run:
            return self._object_response(ctx, new, warnings=warnings)
        if (
            new["metadata"].get("deletionTimestamp")
            and not new["metadata"].get("finalizers")
            and rt.plural != "namespaces"
        ):
            final = self._remove(rt, key, new)
            return self._object_response(ctx, final, warnings=warnings)
        stored = self._commit(rt, key, new, "MODIFIED")
        return self._object_response(ctx, stored, warnings=warnings)

    def _delete_options(self, body: Any) -> dict[str, Any]:
        return body if isinstance(body, dict) else {}

    async def _delete(self, ctx: _Context) -> web.Response:
        rt = ctx.rt
        raw = await ctx.request.read()
        options: dict[str, Any] = {}
        if raw.strip():
            try:
                if ctx.request.content_type == "application/vnd.kubernetes.protobuf":
                    options = protobuf.decode(raw)
                else:
                    options = self._delete_options(json.loads(raw))
            except ValueError:  # ProtobufError included
                raise bad_request("error decoding DeleteOptions") from None
        policy = (
            ctx.request.query.get("propagationPolicy") or options.get("propagationPolicy") or ""
        )
        if options.get("orphanDependents") is True:
            policy = "Orphan"
        key = self._key(rt, ctx.namespace, ctx.name)
        entry = self.store.get(key)
        if entry is None:
            raise not_found(rt, ctx.name)
        preconditions = options.get("preconditions") or {}
        metadata = entry.obj["metadata"]
        if preconditions.get("uid") and preconditions["uid"] != metadata.get("uid"):
            raise conflict(
                rt,
                ctx.name,
                f"Precondition failed: UID in precondition: "
                f"{preconditions['uid']}, UID in object meta: {metadata.get('uid')}",
            )
        if (
            preconditions.get("resourceVersion")
            and preconditions["resourceVersion"] != metadata["resourceVersion"]
        ):
            raise conflict(
                rt,
                ctx.name,
                "Precondition failed: ResourceVersion in precondition: "
                f"{preconditions['resourceVersion']}, ResourceVersion in object meta: "
                f"{metadata['resourceVersion']}",
            )
        await self._admit(
            operation="DELETE",
            attributes=ctx.attributes,
            kind=_gvk(rt, ctx.version),
            obj=None,
            old_obj=entry.obj,
            user=ctx.user,
            dry_run=ctx.dry_run,
        )
        entry = self.store.get(key)
        if entry is None:
            raise not_found(rt, ctx.name)
        if ctx.dry_run:
            return self._object_response(ctx, entry)
        obj, deleted = self._delete_object(rt, key, entry.obj, orphan=policy == "Orphan")
        if deleted and not rt.custom and rt.plural != "pods":
            success = statuses.success(
                {**_details(rt, ctx.name), "uid": obj["metadata"].get("uid", "")}
            )
            return web.Response(body=statuses.encode(success), content_type="application/json")
        return self._object_response(ctx, obj, status=200 if deleted else 202)

    async def _delete_collection(self, ctx: _Context) -> web.Response:
        rt = ctx.rt
        selection = self._filter(ctx)
        namespace = ctx.namespace if rt.namespaced and ctx.namespace else None
        deleted: list[dict[str, Any]] = []
        for entry in self.store.entries(*_stored_as(rt), namespace):
            if not selection.matches(entry.obj):
                continue
            metadata = entry.obj["metadata"]
            key = self._key(rt, metadata.get("namespace", ""), metadata["name"])
            await self._admit(
                operation="DELETE",
                attributes=_with_name(ctx.attributes, metadata["name"]),
                kind=_gvk(rt, ctx.version),
                obj=None,
                old_obj=entry.obj,
                user=ctx.user,
                dry_run=ctx.dry_run,
            )
            latest = self.store.get(key)
            if latest is None or ctx.dry_run:
                continue
            obj, _ = self._delete_object(rt, key, latest.obj)
            deleted.append(obj)
        return json_response(
            {
                "kind": f"{rt.kind}List",
                "apiVersion": rt.api_version(ctx.version),
                "metadata": {"resourceVersion": str(self.store.resource_version)},
                "items": deleted,
            }
        )

    # virtual kinds ---------------------------------------------------------------------------
    async def _virtual(
        self,
        rt: resources.ResourceType,
        request: web.Request,
        user: types.UserInfo,
        *,
        namespace: str,
    ) -> web.Response:
        body = await self._body(request)
        if not isinstance(body, dict):
            raise bad_request(
                "the body of the request was in an unknown format: expected an object"
            )
        try:
            if rt.plural == "tokenreviews":
                result = reviews.token_review(body, authenticator=self.authenticator)
            elif rt.plural == "subjectaccessreviews":
                result = reviews.subject_access_review(body, authorizer=self.authorizer)
            elif rt.plural == "localsubjectaccessreviews":
                result = reviews.local_subject_access_review(
                    body, namespace=namespace, authorizer=self.authorizer
                )
            elif rt.plural == "selfsubjectrulesreviews":
                result = reviews.self_subject_rules_review(
                    body, user=user, authorizer=self.authorizer
                )
            elif rt.plural == "selfsubjectaccessreviews":
                result = reviews.self_subject_access_review(
                    body, user=user, authorizer=self.authorizer
                )
            else:
                result = {
                    "kind": "SelfSubjectReview",
                    "apiVersion": "authentication.k8s.io/v1",
                    "metadata": {"creationTimestamp": now()},
                    "status": {"userInfo": user.to_api()},
                }
        except reviews.ReviewError as error:
            details = {"causes": error.causes} if error.causes else None
            raise ApiError(error.code, error.reason, error.message, details=details) from None
        return json_response(result, status=201)

    async def _token_request(self, request: web.Request, namespace: str, name: str) -> web.Response:
        body = await self._body(request)
        if not isinstance(body, dict):
            raise bad_request(
                "the body of the request was in an unknown format: expected an object"
            )
        try:
            result = serviceaccounts.token_request(
                issuer=self.token_issuer,
                reader=self.reader,
                namespace=namespace,
                service_account_name=name,
                body=body,
            )
        except serviceaccounts.TokenRequestError as error:
            details = {"causes": error.causes} if error.causes else None
            raise ApiError(error.code, error.reason, error.message, details=details) from None
        return json_response(result, status=201)


class _Context:
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


def _stored_as(rt: resources.ResourceType) -> tuple[str, str]:
    """Where objects of ``rt`` live: events.k8s.io Events are core Events, as upstream."""
    return _STORED_AS.get((rt.group, rt.plural), (rt.group, rt.plural))


def _already_exists(rt: resources.ResourceType, name: str) -> ApiError:
    return ApiError(
        409,
        "AlreadyExists",
        f'{rt.group_resource} "{name}" already exists',
        details=_details(rt, name),
    )


def _gvk(rt: resources.ResourceType, version: str) -> dict[str, Any]:
    return {"group": rt.group, "version": version, "kind": rt.kind}


def _with_name(attributes: types.RequestAttributes, name: str) -> types.RequestAttributes:
    if attributes.name == name:
        return attributes
    return dataclasses.replace(attributes, name=name)


def _name_errors(rt: resources.ResourceType, name: str) -> list[schema.FieldError]:
    if rt.group == _RBAC_GROUP:
        if "/" in name or "%" in name or name in (".", ".."):
            return [schema.invalid("metadata.name", name, "may not contain '/' or '%'")]
        return []
    if rt.group == "" and rt.plural == "namespaces":
        if len(name) > 63 or not _DNS_LABEL.match(name):
            return [
                schema.invalid(
                    "metadata.name",
                    name,
                    "a lowercase RFC 1123 label must consist of lower case alphanumeric "
                    "characters or '-', and must start and end with an alphanumeric character "
                    "(e.g. 'my-name',  or '123-abc', regex used for validation is "
                    "'[a-z0-9]([-a-z0-9]*[a-z0-9])?')",
                )
            ]
        return []
    if len(name) > 253 or not _DNS_SUBDOMAIN.match(name):
        return [
            schema.invalid(
                "metadata.name",
                name,
                "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric "
                "characters, '-' or '.', and must start and end with an alphanumeric character "
                "(e.g. 'example.com', regex used for validation is "
                "'[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')",
            )
        ]
    return []


def _pod_errors(pod: dict[str, Any]) -> list[schema.FieldError]:
    spec = pod.get("spec")
    if not isinstance(spec, dict):
        return [schema.required("spec")]
    containers = spec.get("containers")
    if not isinstance(containers, list) or not containers:
        return [schema.required("spec.containers")]
    errors: list[schema.FieldError] = []
    seen: set[str] = set()
    for index, container in enumerate(containers):
        path = f"spec.containers[{index}]"
        if not isinstance(container, dict):
            errors.append(schema.invalid(path, container, "must be an object"))
            continue
        name = container.get("name")
        if not name:
            errors.append(schema.required(f"{path}.name"))
        elif name in seen:
            errors.append(
                schema.FieldError(
                    "FieldValueDuplicate", f"{path}.name", f"Duplicate value: {json.dumps(name)}"
                )
            )
        else:
            seen.add(str(name))
        if not container.get("image"):
            errors.append(schema.required(f"{path}.image"))
    return errors


def _crd_errors(crd: dict[str, Any]) -> list[schema.FieldError]:
    spec = crd.get("spec") or {}
    names = spec.get("names") or {}
    errors: list[schema.FieldError] = []
    if not spec.get("group"):
        errors.append(schema.required("spec.group"))
    if not names.get("plural"):
        errors.append(schema.required("spec.names.plural"))
    if not names.get("kind"):
        errors.append(schema.required("spec.names.kind"))
    if not spec.get("versions"):
        errors.append(schema.required("spec.versions"))
    expected = f"{names.get('plural')}.{spec.get('group')}"
    name = crd.get("metadata", {}).get("name")
    if not errors and name != expected:
        errors.append(
            schema.invalid("metadata.name", name, 'must be spec.names.plural+"."+spec.group')
        )
    return errors
