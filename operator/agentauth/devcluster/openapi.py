"""OpenAPI v3 documents: what ``kubectl explain`` and kubectl's field-validation probe need.

``/openapi/v3`` lists one document per served group-version. Each document declares, for every
resource, the collection and item paths with a ``patch`` operation tagged with the kind's
``x-kubernetes-group-version-kind`` and the ``fieldValidation`` query parameter, so kubectl
delegates field validation to the server. Custom resources also get their full structural
schema under ``components.schemas`` (named like upstream, ``dev.agentauth.v1alpha1.Agent``), which
is what ``kubectl explain`` renders. Built-in kinds deliberately have no component schema, so
kubectl computes client-side-apply patches from its compiled-in types. ``/openapi/v2`` is 404.
"""

from __future__ import annotations

import copy
import hashlib
import json
from typing import Any

from agentauth.devcluster import resources

_PARAMETERS = [
    {"name": name, "in": "query", "schema": {"type": "string"}, "uniqueItems": True}
    for name in ("dryRun", "fieldManager", "fieldValidation", "force")
]


def _path_key(group: str, version: str) -> str:
    return f"apis/{group}/{version}" if group else f"api/{version}"


def schema_name(rt: resources.ResourceType, version: str) -> str:
    reversed_group = ".".join(reversed(rt.group.split("."))) if rt.group else "io.k8s.api.core"
    return f"{reversed_group}.{version}.{rt.kind}"


def document(registry: resources.Registry, group: str, version: str) -> dict[str, Any] | None:
    served = [rt for rt in registry.in_group_version(group, version) if not rt.virtual]
    if not served and not registry.in_group_version(group, version):
        return None
    paths: dict[str, Any] = {}
    schemas: dict[str, Any] = {}
    prefix = f"/apis/{group}/{version}" if group else f"/api/{version}"
    for rt in served:
        gvk = [{"group": rt.group, "version": version, "kind": rt.kind}]
        base = (
            f"{prefix}/namespaces/{{namespace}}/{rt.plural}"
            if rt.namespaced
            else (f"{prefix}/{rt.plural}")
        )
        operation = {
            "parameters": copy.deepcopy(_PARAMETERS),
            "x-kubernetes-group-version-kind": gvk[0],
            "responses": {"200": {"description": "OK"}},
        }
        paths[base] = {"post": operation, "get": {"responses": {"200": {"description": "OK"}}}}
        paths[f"{base}/{{name}}"] = {"patch": operation, "put": operation}
        if rt.custom:
            body = copy.deepcopy(rt.schema(version) or {"type": "object"})
            body.setdefault("type", "object")
            properties = body.setdefault("properties", {})
            properties["apiVersion"] = {
                "type": "string",
                "description": "APIVersion defines the versioned schema of this representation "
                "of an object.",
            }
            properties["kind"] = {
                "type": "string",
                "description": "Kind is a string value representing the REST resource this "
                "object represents.",
            }
            properties["metadata"] = {
                "type": "object",
                "description": "Standard object's metadata. More info: "
                "https://git.k8s.io/community/contributors/devel/sig-architecture/"
                "api-conventions.md#metadata",
            }
            body["x-kubernetes-group-version-kind"] = gvk
            schemas[schema_name(rt, version)] = body
    return {
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes", "version": "v1.37.0"},
        "paths": paths,
        "components": {"schemas": schemas},
    }


def encode(doc: dict[str, Any]) -> tuple[bytes, str]:
    text = json.dumps(doc, separators=(",", ":"), sort_keys=True).encode()
    return text, hashlib.sha512(text).hexdigest()[:64].upper()


def index(registry: resources.Registry) -> dict[str, Any]:
    """The ``/openapi/v3`` root; hashes make clients refetch after a CRD changes."""
    found: dict[str, Any] = {}
    versions: set[tuple[str, str]] = {("", "v1")}
    for rt in registry:
        for version in rt.versions:
            versions.add((rt.group, version))
    for group, version in sorted(versions):
        doc = document(registry, group, version)
        if doc is None:
            continue
        _, digest = encode(doc)
        key = _path_key(group, version)
        found[key] = {"serverRelativeURL": f"/openapi/v3/{key}?hash={digest}"}
    return {"paths": found}
