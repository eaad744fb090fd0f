"""Generate the ``apiextensions.k8s.io/v1`` CRDs from the pydantic models.

Guarantees: the output is deterministic (same models, same bytes) and every schema is
*structural* as Kubernetes defines it: no ``$ref``, no ``anyOf``/``oneOf`` with ``null``, a
``type`` on every node, ``properties`` and ``additionalProperties`` never together, and only
``name``/``generateName`` constrained under ``metadata``. :func:`structural_violations` checks
those rules independently of how the schema was produced.
"""

from __future__ import annotations

import copy
import dataclasses
from typing import Any

import pydantic
import yaml

from agentauth.domain.models import accessrequests, agents, common, grants, toolservers

_READY = '.status.conditions[?(@.type=="Ready")].status'


@dataclasses.dataclass(frozen=True)
class Kind:
    """How one model is published as a custom resource."""

    model: type[pydantic.BaseModel]
    kind: str
    plural: str
    singular: str
    short_names: tuple[str, ...]
    printer_columns: tuple[dict[str, Any], ...]
    name_pattern: str = common.DNS1123_SUBDOMAIN_PATTERN
    name_max_length: int = 253


_AGE = {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"}

KINDS: tuple[Kind, ...] = (
    Kind(
        model=agents.Agent,
        kind="Agent",
        plural="agents",
        singular="agent",
        short_names=("ag",),
        name_pattern=common.DNS1123_LABEL_PATTERN,
        name_max_length=63,
        printer_columns=(
            {"name": "Service Account", "type": "string", "jsonPath": ".spec.serviceAccountName"},
            {"name": "Ready", "type": "string", "jsonPath": _READY},
            {
                "name": "Capabilities",
                "type": "string",
                "jsonPath": ".status.capabilities[*].name",
            },
            {"name": "Suspended", "type": "boolean", "jsonPath": ".spec.suspended", "priority": 1},
            {
                "name": "Agent ID",
                "type": "string",
                "jsonPath": ".status.agentID",
                "priority": 1,
            },
            {
                "name": "Reason",
                "type": "string",
                "jsonPath": '.status.conditions[?(@.type=="Ready")].reason',
                "priority": 1,
            },
            _AGE,
        ),
    ),
    Kind(
        model=grants.CapabilityGrant,
        kind="CapabilityGrant",
        plural="capabilitygrants",
        singular="capabilitygrant",
        short_names=("cg",),
        printer_columns=(
            {"name": "Agents", "type": "string", "jsonPath": ".status.matchedAgents[*]"},
            {"name": "Capabilities", "type": "string", "jsonPath": ".spec.capabilities[*].name"},
            {
                "name": "Active",
                "type": "string",
                "jsonPath": '.status.conditions[?(@.type=="Active")].status',
            },
            # Future instants are strings: a date column renders them "<invalid>" in kubectl.
            {"name": "Expires", "type": "string", "jsonPath": ".spec.expiresAt"},
            _AGE,
        ),
    ),
    Kind(
        model=accessrequests.AccessRequest,
        kind="AccessRequest",
        plural="accessrequests",
        singular="accessrequest",
        short_names=("ar",),
        printer_columns=(
            {"name": "Agent", "type": "string", "jsonPath": ".spec.agent"},
            {"name": "Capabilities", "type": "string", "jsonPath": ".spec.capabilities[*]"},
            {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
            {"name": "Approved By", "type": "string", "jsonPath": ".status.approvals[*].user"},
            # A pending request's deadline, and once approved when access actually ends: both
            # by default (a column cannot switch fields by phase).
            {"name": "Decide By", "type": "string", "jsonPath": ".status.expiresAt"},
            {"name": "Access Until", "type": "string", "jsonPath": ".status.grantedUntil"},
            _AGE,
        ),
    ),
    Kind(
        model=toolservers.ToolServer,
        kind="ToolServer",
        plural="toolservers",
        singular="toolserver",
        short_names=("ts",),
        printer_columns=(
            {"name": "Resource", "type": "string", "jsonPath": ".spec.resourceURI"},
            {"name": "Tools", "type": "string", "jsonPath": ".spec.tools[*].name"},
            {"name": "Ready", "type": "string", "jsonPath": _READY},
            _AGE,
        ),
    ),
)

_DROP_KEYS = frozenset({"title"})


def _resolve(node: Any, definitions: dict[str, Any]) -> Any:
    """Inline ``$ref``s and turn pydantic's JSON Schema into a structural OpenAPI v3 schema."""
    if isinstance(node, list):
        return [_resolve(item, definitions) for item in node]
    if not isinstance(node, dict):
        return node
    node = dict(node)
    if "$ref" in node:
        target = node.pop("$ref").rsplit("/", 1)[-1]
        merged = copy.deepcopy(definitions[target])
        # Sibling keys (the field's description, default) override the referenced model's.
        merged.update(node)
        node = merged
    if "anyOf" in node:
        options = [option for option in node.pop("anyOf") if option.get("type") != "null"]
        if len(options) != 1:
            raise ValueError(f"cannot express a union of {len(options)} types structurally")
        base = dict(options[0])
        base.update(node)
        if "$ref" in base:
            base = _resolve(base, definitions)
        node = base
    result: dict[str, Any] = {}
    for key, value in node.items():
        if key in _DROP_KEYS:
            continue
        if key == "default" and (value is None or value == [] or value == {}):
            continue
        if key == "additionalProperties" and value is False:
            continue
        if key in ("properties", "$defs"):
            result[key] = {name: _resolve(sub, definitions) for name, sub in value.items()}
        elif key in ("items", "additionalProperties"):
            result[key] = _resolve(value, definitions)
        else:
            result[key] = value
    if "const" in result:
        result["enum"] = [result.pop("const")]
    if "properties" in result and "type" not in result:
        result["type"] = "object"
    if "enum" in result and "type" not in result:
        result["type"] = "string"
    return result


def _model_schema(model: type[pydantic.BaseModel]) -> dict[str, Any]:
    raw = model.model_json_schema(by_alias=True, mode="validation")
    definitions = raw.pop("$defs", {})
    schema = _resolve(raw, definitions)
    return dict(schema)


def openapi_schema(kind: Kind) -> dict[str, Any]:
    """The structural ``openAPIV3Schema`` of ``kind``."""
    full = _model_schema(kind.model)
    properties = full["properties"]
    schema: dict[str, Any] = {
        "type": "object",
        "description": full.get("description", ""),
        "required": ["spec"],
        "properties": {
            "apiVersion": {
                "type": "string",
                "description": "APIVersion defines the versioned schema of this object.",
            },
            "kind": {"type": "string", "description": "Kind is the type of this object."},
            "metadata": {
                "type": "object",
                "properties": {
                    "name": {
                        "type": "string",
                        "maxLength": kind.name_max_length,
                        "pattern": kind.name_pattern,
                    }
                },
            },
            "spec": properties["spec"],
            "status": properties["status"],
        },
    }
    return schema


def crd_for(kind: Kind) -> dict[str, Any]:
    """The ``CustomResourceDefinition`` manifest for ``kind``."""
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": f"{kind.plural}.{common.GROUP}",
            "labels": {
                "app.kubernetes.io/name": "agentauth",
                "app.kubernetes.io/part-of": "agentauth",
            },
        },
        "spec": {
            "group": common.GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": kind.kind,
                "listKind": f"{kind.kind}List",
                "plural": kind.plural,
                "singular": kind.singular,
                "shortNames": list(kind.short_names),
                "categories": [common.CATEGORY],
            },
            "versions": [
                {
                    "name": common.VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": [dict(column) for column in kind.printer_columns],
                    "schema": {"openAPIV3Schema": openapi_schema(kind)},
                }
            ],
        },
    }


def generate_crds() -> list[dict[str, Any]]:
    """Every agentauth CRD, in a fixed order."""
    return [crd_for(kind) for kind in KINDS]


def file_name(crd: dict[str, Any]) -> str:
    """The file a CRD is written to, e.g. ``agentauth.dev_agents.yaml`` (cert-manager style)."""
    spec = crd["spec"]
    return f"{spec['group']}_{spec['names']['plural']}.yaml"


def render(crd: dict[str, Any]) -> str:
    """The YAML text of one CRD, with a header saying where it comes from."""
    header = (
        "# Generated by `agentauth crds` from the pydantic models in agentauth.domain.models.\n"
        "# Do not edit by hand: change the models and regenerate (make crds).\n"
    )
    return header + yaml.safe_dump(crd, sort_keys=False, width=100)


def structural_violations(schema: Any, path: str = "") -> list[str]:
    """Every way ``schema`` breaks Kubernetes' structural-schema rules (empty when it is fine)."""
    problems: list[str] = []
    if not isinstance(schema, dict):
        return [f"{path or '<root>'}: schema node is not an object"]
    where = path or "<root>"
    for forbidden in ("$ref", "oneOf", "not", "definitions", "$defs", "const"):
        if forbidden in schema:
            problems.append(f"{where}: {forbidden} is not allowed")
    if "anyOf" in schema:
        problems.append(f"{where}: anyOf is not allowed by this generator")
    preserve = schema.get("x-kubernetes-preserve-unknown-fields") is True
    if "type" not in schema and not preserve and not schema.get("x-kubernetes-int-or-string"):
        problems.append(f"{where}: missing type")
    if "properties" in schema and "additionalProperties" in schema:
        problems.append(f"{where}: properties and additionalProperties are mutually exclusive")
    if schema.get("nullable") is True and schema.get("type") == "null":
        problems.append(f"{where}: type null is not allowed")
    if schema.get("type") == "array" and "items" not in schema:
        problems.append(f"{where}: array without items")
    if schema.get("x-kubernetes-list-type") == "map":
        keys = schema.get("x-kubernetes-list-map-keys") or []
        item_required = set(schema.get("items", {}).get("required", []))
        missing = [key for key in keys if key not in item_required]
        if not keys or missing:
            problems.append(
                f"{where}: list-type map needs required list-map-keys, missing {missing}"
            )
    for name, sub in (schema.get("properties") or {}).items():
        problems.extend(structural_violations(sub, f"{path}.{name}" if path else name))
    if isinstance(schema.get("items"), dict):
        problems.extend(structural_violations(schema["items"], f"{where}[*]"))
    if isinstance(schema.get("additionalProperties"), dict):
        problems.extend(structural_violations(schema["additionalProperties"], f"{where}{{*}}"))
    return problems


def metadata_violations(schema: dict[str, Any]) -> list[str]:
    """The root rule: ``metadata`` may only constrain ``name`` and ``generateName``."""
    metadata = schema.get("properties", {}).get("metadata", {})
    allowed = {"name", "generateName"}
    extra = set(metadata.get("properties", {})) - allowed
    return [
        f"metadata.{name}: only name and generateName may be constrained" for name in sorted(extra)
    ]
