"""The upstream OpenAPI definitions of the Kubernetes built-in types, from a shipped package.

The source is the ``_definitions.json`` of Kubernetes v1.37.0 that the ``kubernetes-validate``
package ships (generated from kube-apiserver's own ``swagger.json``: every type's properties,
``required``, formats, enums, descriptions and ``x-kubernetes-*`` extensions such as
``x-kubernetes-group-version-kind``, ``x-kubernetes-patch-merge-key`` and
``x-kubernetes-list-map-keys``). That file is JSON Schema (draft 2020-12); this module turns it
back into OpenAPI schemas:

- ``"type": ["string", "null"]`` becomes ``"type": "string"`` (OpenAPI has no null type);
- references become ``#/definitions/NAME`` (``/openapi/v2``) or ``#/components/schemas/NAME``
  (``/openapi/v3``), with the upstream names (``io.k8s.api.batch.v1.Job``);
- ``IntOrString`` and ``Quantity``, written as ``oneOf`` there, get their upstream form
  (``type: string`` with ``format: int-or-string``, and ``type: string``);
- the ``enum`` the JSON Schema generator adds to every kind's ``apiVersion`` and ``kind`` is
  dropped (upstream has none).

The same converted schemas are what :mod:`openapi` serves and what the API server prunes and
validates built-in objects with (:func:`resolved`), so ``kubectl explain``, kubectl's client-side
validation and the server cannot disagree.
"""

from __future__ import annotations

import functools
import importlib.resources
import json
from typing import Any

KUBERNETES_VERSION = "v1.37.0"
_PACKAGE = "kubernetes_validate"
_DIRECTORY = f"{KUBERNETES_VERSION}-local"
_LOCAL_REF = "#/$defs/"
V2_REF = "#/definitions/"
V3_REF = "#/components/schemas/"
INT_OR_STRING = "io.k8s.apimachinery.pkg.util.intstr.IntOrString"
QUANTITY = "io.k8s.apimachinery.pkg.api.resource.Quantity"
DEFINITION_KEY = "x-agentauth-definition"
"""Set on :func:`resolved` schemas only (never served): the definition a node came from."""

_UPSTREAM_SHAPES: dict[str, dict[str, Any]] = {
    INT_OR_STRING: {
        "description": "IntOrString is a type that can hold an int32 or a string.  When used in "
        "JSON or YAML marshalling and unmarshalling, it produces or consumes the inner type.  "
        "This allows you to have, for example, a JSON field that can accept a name or number.",
        "type": "string",
        "format": "int-or-string",
    },
    QUANTITY: {
        "description": "Quantity is a fixed-point representation of a number. It provides "
        "convenient marshaling/unmarshaling in JSON and YAML, in addition to String() and "
        "AsInt64() accessors.",
        "type": "string",
    },
}


class DefinitionsUnavailable(RuntimeError):
    """The ``kubernetes-validate`` package (the ``dev`` extra) is not installed."""


def _convert(node: Any) -> Any:
    if isinstance(node, list):
        return [_convert(item) for item in node]
    if not isinstance(node, dict):
        return node
    converted: dict[str, Any] = {}
    for key, value in node.items():
        if key == "$ref" and isinstance(value, str):
            converted[key] = V2_REF + value.rsplit("/", 1)[-1]
        elif key == "type" and isinstance(value, list):
            types = [t for t in value if t != "null"]
            if len(types) == 1:
                converted[key] = types[0]
        elif key in ("properties", "patternProperties") and isinstance(value, dict):
            converted[key] = {name: _convert(child) for name, child in value.items()}
        else:
            converted[key] = _convert(value)
    return converted


@functools.cache
def definitions() -> dict[str, dict[str, Any]]:
    """Definition name -> OpenAPI v2 schema (references as ``#/definitions/NAME``)."""
    try:
        source = importlib.resources.files(_PACKAGE) / "kubernetes-json-schema" / _DIRECTORY
        raw = json.loads((source / "_definitions.json").read_text())["$defs"]
    except (ModuleNotFoundError, FileNotFoundError) as error:
        raise DefinitionsUnavailable(
            "the built-in kinds' schemas come from the kubernetes-validate package: "
            "install agentauth-k8s[dev]"
        ) from error
    found: dict[str, dict[str, Any]] = {}
    for name, schema in raw.items():
        if name in _UPSTREAM_SHAPES:
            found[name] = dict(_UPSTREAM_SHAPES[name])
            continue
        converted = _convert(schema)
        if converted.get("x-kubernetes-group-version-kind"):
            for field in ("apiVersion", "kind"):
                prop = (converted.get("properties") or {}).get(field)
                if isinstance(prop, dict):
                    prop.pop("enum", None)
        found[name] = converted
    return found


@functools.cache
def by_kind() -> dict[tuple[str, str, str], str]:
    """(group, version, kind) -> definition name, from ``x-kubernetes-group-version-kind``."""
    found: dict[tuple[str, str, str], str] = {}
    for name, schema in definitions().items():
        for gvk in schema.get("x-kubernetes-group-version-kind") or ():
            key = (str(gvk.get("group", "")), str(gvk["version"]), str(gvk["kind"]))
            # Several definitions share DeleteOptions/WatchEvent GVKs; the type itself wins.
            if key not in found or name.endswith("." + key[2]):
                found[key] = name
    return found


def name_for(group: str, version: str, kind: str) -> str | None:
    try:
        return by_kind().get((group, version, kind))
    except DefinitionsUnavailable:
        return None


def closure(names: list[str]) -> list[str]:
    """``names`` and every definition they reference, transitively, sorted."""
    table = definitions()
    seen: set[str] = set()
    pending = list(names)
    while pending:
        name = pending.pop()
        if name in seen or name not in table:
            continue
        seen.add(name)
        pending.extend(_references(table[name]))
    return sorted(seen)


def _references(node: Any) -> list[str]:
    found: list[str] = []
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "$ref" and isinstance(value, str):
                found.append(value.rsplit("/", 1)[-1])
            else:
                found.extend(_references(value))
    elif isinstance(node, list):
        for item in node:
            found.extend(_references(item))
    return found


def rebased(node: Any, prefix: str) -> Any:
    """A copy of ``node`` with its references under ``prefix`` (``V3_REF`` for OpenAPI v3)."""
    if isinstance(node, list):
        return [rebased(item, prefix) for item in node]
    if not isinstance(node, dict):
        return node
    return {
        key: (
            prefix + value.rsplit("/", 1)[-1]
            if key == "$ref" and isinstance(value, str)
            else rebased(value, prefix)
        )
        for key, value in node.items()
    }


@functools.cache
def resolved(name: str) -> dict[str, Any]:
    """Definition ``name`` with every reference inlined, for pruning and validation.

    Subtrees are shared, never copied: callers must not mutate the result. A reference back
    into a definition being expanded (only ``JSONSchemaProps`` is recursive) becomes
    ``x-kubernetes-preserve-unknown-fields``, and so do the opaque types that declare no
    properties (``RawExtension``, ``FieldsV1``, apiextensions ``JSON``). IntOrString and
    Quantity fields carry ``x-kubernetes-int-or-string`` so a number or a string passes, as
    upstream decodes them.
    """
    table = definitions()
    cache: dict[str, dict[str, Any]] = {}

    def expand(node: Any, stack: tuple[str, ...]) -> Any:
        if isinstance(node, list):
            return [expand(item, stack) for item in node]
        if not isinstance(node, dict):
            return node
        ref = node.get("$ref")
        if isinstance(ref, str):
            target = ref.rsplit("/", 1)[-1]
            if target in stack:
                return {"x-kubernetes-preserve-unknown-fields": True}
            if target not in cache:
                cache[target] = definition(target, stack)
            return cache[target]
        return {key: expand(value, stack) for key, value in node.items()}

    def definition(target: str, stack: tuple[str, ...]) -> dict[str, Any]:
        schema = table.get(target) or {"x-kubernetes-preserve-unknown-fields": True}
        expanded: dict[str, Any] = expand(schema, (*stack, target))
        expanded[DEFINITION_KEY] = target
        if target in (INT_OR_STRING, QUANTITY):
            expanded = {DEFINITION_KEY: target, "x-kubernetes-int-or-string": True}
        elif "properties" not in expanded and "additionalProperties" not in expanded:
            # Opaque types (RawExtension, FieldsV1, apiextensions JSON ...) decode anything.
            expanded["x-kubernetes-preserve-unknown-fields"] = True
        return expanded

    return definition(name, ())
