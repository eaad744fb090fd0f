"""OpenAPI documents: ``/openapi/v3`` per group-version and the aggregated ``/openapi/v2``.

Both are generated from the registry and from the schemas the server validates with: custom
resources from their CRD's ``openAPIV3Schema`` (named like upstream,
``dev.agentauth.v1alpha1.Agent``), built-in kinds from the upstream definitions of
:mod:`definitions` (``io.k8s.api.batch.v1.Job`` and everything it references). So
``kubectl explain`` renders any served kind, kubectl validates client side against the same
schema the server prunes with, and kubectl computes client-side-apply patches from the real
``x-kubernetes-patch-merge-key``/``x-kubernetes-list-map-keys``.

Every resource has its collection and item paths; the write operations carry the kind's
``x-kubernetes-group-version-kind`` and the ``fieldValidation`` query parameter, which is how
kubectl decides to delegate field validation to the server. Kinds that are only created
(TokenReview, SubjectAccessReview, ...) have a ``post`` only, as upstream.

Documents are cached per registry state (a CRD change makes new ones, and new hashes in the
``/openapi/v3`` index so clients refetch).
"""

from __future__ import annotations

import copy
import hashlib
import json
from typing import Any

from agentauth.devcluster import definitions, openapiv2, resources

_PARAMETER_NAMES = ("dryRun", "fieldManager", "fieldValidation")
_V3_PARAMETERS = [
    {"name": name, "in": "query", "schema": {"type": "string"}, "uniqueItems": True}
    for name in _PARAMETER_NAMES
]
_V2_PARAMETERS = [
    {"name": name, "in": "query", "type": "string", "uniqueItems": True}
    for name in _PARAMETER_NAMES
]
_ROOT_PROPERTIES = {
    "apiVersion": {
        "type": "string",
        "description": "APIVersion defines the versioned schema of this representation of an "
        "object.",
    },
    "kind": {
        "type": "string",
        "description": "Kind is a string value representing the REST resource this object "
        "represents.",
    },
    "metadata": {
        "type": "object",
        "description": "Standard object's metadata. More info: https://git.k8s.io/community/"
        "contributors/devel/sig-architecture/api-conventions.md#metadata",
    },
}
_cache: dict[str, Any] = {"key": None, "docs": {}}


def _path_key(group: str, version: str) -> str:
    return f"apis/{group}/{version}" if group else f"api/{version}"


def schema_name(rt: resources.ResourceType, version: str) -> str:
    builtin = None if rt.custom else definitions.name_for(rt.group, version, rt.kind)
    if builtin is not None:
        return builtin
    reversed_group = ".".join(reversed(rt.group.split("."))) if rt.group else "io.k8s.api.core"
    return f"{reversed_group}.{version}.{rt.kind}"


def _custom_schema(rt: resources.ResourceType, version: str) -> dict[str, Any]:
    body = copy.deepcopy(rt.schema(version) or {"type": "object"})
    body.setdefault("type", "object")
    properties = body.setdefault("properties", {})
    properties.update(copy.deepcopy(_ROOT_PROPERTIES))
    body["x-kubernetes-group-version-kind"] = [
        {"group": rt.group, "version": version, "kind": rt.kind}
    ]
    return body


def _served(registry: resources.Registry, group: str, version: str) -> list[resources.ResourceType]:
    return registry.in_group_version(group, version)


def _operations(rt: resources.ResourceType, version: str, *, v2: bool) -> dict[str, dict[str, Any]]:
    """path -> {method: operation} for one resource, collection and item paths."""
    prefix = f"/apis/{rt.group}/{version}" if rt.group else f"/api/{version}"
    base = (
        f"{prefix}/namespaces/{{namespace}}/{rt.plural}"
        if rt.namespaced
        else f"{prefix}/{rt.plural}"
    )
    gvk = {"group": rt.group, "version": version, "kind": rt.kind}
    reference = ("#/definitions/" if v2 else "#/components/schemas/") + schema_name(rt, version)
    if v2:
        ok = {"200": {"description": "OK", "schema": {"$ref": reference}}}
    else:
        ok = {
            "200": {
                "description": "OK",
                "content": {"application/json": {"schema": {"$ref": reference}}},
            }
        }

    def operation(action: str, *, write: bool) -> dict[str, Any]:
        found: dict[str, Any] = {
            "operationId": f"{action}{rt.kind}",
            "responses": copy.deepcopy(ok),
            "x-kubernetes-action": action,
            "x-kubernetes-group-version-kind": gvk,
        }
        if write:
            found["parameters"] = copy.deepcopy(_V2_PARAMETERS if v2 else _V3_PARAMETERS)
        return found

    if rt.virtual:
        return {base: {"post": operation("post", write=True)}}
    return {
        base: {
            "get": operation("list", write=False),
            "post": operation("post", write=True),
            "delete": operation("deletecollection", write=False),
        },
        f"{base}/{{name}}": {
            "get": operation("get", write=False),
            "put": operation("put", write=True),
            "patch": operation("patch", write=True),
            "delete": operation("delete", write=False),
        },
    }


def _schemas(
    registry: resources.Registry, groups: list[tuple[str, str]], *, prefix: str
) -> dict[str, Any]:
    """Component schemas of every kind served in ``groups``, with their references."""
    builtin: list[str] = []
    custom: dict[str, Any] = {}
    for group, version in groups:
        for rt in _served(registry, group, version):
            if rt.custom:
                custom[schema_name(rt, version)] = _custom_schema(rt, version)
                continue
            for kind in (rt.kind, f"{rt.kind}List"):
                name = definitions.name_for(group, version, kind)
                if name is not None:
                    builtin.append(name)
    found: dict[str, Any] = {}
    if builtin:
        table = definitions.definitions()
        for name in definitions.closure(builtin):
            found[name] = definitions.rebased(table[name], prefix)
    found.update(custom)
    return found


def _key(registry: resources.Registry) -> tuple[int, ...]:
    return tuple(id(rt) for rt in registry)


def _cached(registry: resources.Registry, name: str, build: Any) -> Any:
    key = _key(registry)
    if _cache["key"] != key:
        # Holding the types keeps their ids from being reused while the key is current.
        _cache["key"], _cache["docs"], _cache["types"] = key, {}, list(registry)
    docs: dict[str, Any] = _cache["docs"]
    if name not in docs:
        docs[name] = build()
    return docs[name]


def _build_document(
    registry: resources.Registry, group: str, version: str
) -> tuple[bytes, str] | None:
    served = _served(registry, group, version)
    if not served:
        return None
    paths: dict[str, Any] = {}
    for rt in served:
        paths.update(_operations(rt, version, v2=False))
    doc = {
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes", "version": definitions.KUBERNETES_VERSION},
        "paths": paths,
        "components": {
            "schemas": _schemas(registry, [(group, version)], prefix=definitions.V3_REF)
        },
    }
    return encode(doc)


def document_bytes(registry: resources.Registry, group: str, version: str) -> bytes | None:
    """The encoded ``/openapi/v3/<group-version>`` document, or None if nothing is served."""
    found = _cached(
        registry, f"v3:{group}/{version}", lambda: _build_document(registry, group, version)
    )
    return None if found is None else found[0]


def document(registry: resources.Registry, group: str, version: str) -> dict[str, Any] | None:
    encoded = document_bytes(registry, group, version)
    return None if encoded is None else json.loads(encoded)


def encode(doc: dict[str, Any]) -> tuple[bytes, str]:
    text = json.dumps(doc, separators=(",", ":"), sort_keys=True).encode()
    return text, hashlib.sha512(text).hexdigest()[:64].upper()


def _group_versions(registry: resources.Registry) -> list[tuple[str, str]]:
    versions: set[tuple[str, str]] = {("", "v1")}
    for rt in registry:
        for version in rt.versions:
            versions.add((rt.group, version))
    return sorted(versions)


def index(registry: resources.Registry) -> dict[str, Any]:
    """The ``/openapi/v3`` root; hashes make clients refetch after a CRD changes."""

    def build() -> dict[str, Any]:
        found: dict[str, Any] = {}
        for group, version in _group_versions(registry):
            built = _cached(
                registry,
                f"v3:{group}/{version}",
                lambda g=group, v=version: _build_document(registry, g, v),
            )
            if built is None:
                continue
            key = _path_key(group, version)
            found[key] = {"serverRelativeURL": f"/openapi/v3/{key}?hash={built[1]}"}
        return {"paths": found}

    result: dict[str, Any] = _cached(registry, "v3-index", build)
    return result


def swagger(registry: resources.Registry) -> dict[str, Any]:
    """The aggregated ``/openapi/v2`` (Swagger 2.0) document of every served kind."""

    def build() -> dict[str, Any]:
        groups = _group_versions(registry)
        paths: dict[str, Any] = {}
        for group, version in groups:
            for rt in _served(registry, group, version):
                paths.update(_operations(rt, version, v2=True))
        return {
            "swagger": "2.0",
            "info": {"title": "Kubernetes", "version": definitions.KUBERNETES_VERSION},
            "paths": paths,
            "definitions": _schemas(registry, groups, prefix=definitions.V2_REF),
        }

    result: dict[str, Any] = _cached(registry, "v2", build)
    return result


def swagger_bytes(registry: resources.Registry, *, protobuf: bool) -> bytes:
    """``/openapi/v2`` as JSON, or as gnostic protobuf when the client asks for it."""
    if protobuf:
        encoded: bytes = _cached(registry, "v2:pb", lambda: openapiv2.document(swagger(registry)))
    else:
        encoded = _cached(
            registry,
            "v2:json",
            lambda: json.dumps(swagger(registry), separators=(",", ":")).encode(),
        )
    return encoded
