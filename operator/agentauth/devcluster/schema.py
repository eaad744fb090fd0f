"""CRD structural-schema handling: unknown fields, pruning, defaulting and validation.

Follows what kube-apiserver does for custom resources, in the same order: fields the schema
does not know are reported (``fieldValidation=Strict`` rejects them, otherwise they are pruned
with a warning), ``default`` values are applied, then the object is validated. Validation
errors are :class:`FieldError` values worded like the real server's ``field.Error`` strings
(``spec.x: Invalid value: "y": spec.x in body should match '^a$'``), so clients and humans see
the same messages they would on a real cluster.

Validating a top-level value (``spec``, ``status``) is memoised by (schema node, value): a
status write re-validates an unchanged spec, and many objects share one, at no cost.
"""

from __future__ import annotations

import collections
import copy
import dataclasses
import datetime
import json
import re
from typing import Any

from agentauth.kube import jsontext

_ROOT_KEYS = ("apiVersion", "kind", "metadata")


@dataclasses.dataclass(frozen=True)
class FieldError:
    """One validation failure; ``reason`` is the ``StatusCause`` reason."""

    reason: str
    field: str
    detail: str

    def __str__(self) -> str:
        return f"{self.field}: {self.detail}" if self.field else self.detail

    def cause(self) -> dict[str, str]:
        return {"reason": self.reason, "message": self.detail, "field": self.field}


def _quote(value: Any) -> str:
    """Render a value as Kubernetes' field errors do: strings quoted, numbers bare."""
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    if value is None:
        return "null"
    return json.dumps(_type_name(value))


def invalid(field: str, value: Any, message: str) -> FieldError:
    return FieldError("FieldValueInvalid", field, f"Invalid value: {_quote(value)}: {message}")


def required(field: str) -> FieldError:
    return FieldError("FieldValueRequired", field, "Required value")


def _type_name(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


def _child(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def prune(obj: Any, schema: dict[str, Any], *, path: str = "", root: bool = True) -> list[str]:
    """Remove fields the schema does not declare, in place; returns their paths."""
    unknown: list[str] = []
    if isinstance(obj, dict):
        if schema.get("x-kubernetes-preserve-unknown-fields") and not schema.get("properties"):
            return unknown
        properties = schema.get("properties") or {}
        additional = schema.get("additionalProperties")
        embedded = root or schema.get("x-kubernetes-embedded-resource")
        for key in list(obj):
            if embedded and key in _ROOT_KEYS:
                continue
            if key in properties:
                unknown += prune(obj[key], properties[key], path=_child(path, key), root=False)
            elif isinstance(additional, dict):
                unknown += prune(obj[key], additional, path=_child(path, key), root=False)
            elif additional is True or schema.get("x-kubernetes-preserve-unknown-fields"):
                continue
            else:
                unknown.append(_child(path, key))
                del obj[key]
    elif isinstance(obj, list) and isinstance(schema.get("items"), dict):
        for index, item in enumerate(obj):
            unknown += prune(item, schema["items"], path=f"{path}[{index}]", root=False)
    return unknown


def apply_defaults(obj: Any, schema: dict[str, Any]) -> None:
    """Fill in ``default`` values for absent properties, in place, recursively."""
    if isinstance(obj, dict):
        properties = schema.get("properties") or {}
        for key, child in properties.items():
            if key not in obj and "default" in child:
                obj[key] = copy.deepcopy(child["default"])
            if key in obj:
                apply_defaults(obj[key], child)
        additional = schema.get("additionalProperties")
        if isinstance(additional, dict):
            for key, value in obj.items():
                if key not in properties:
                    apply_defaults(value, additional)
    elif isinstance(obj, list) and isinstance(schema.get("items"), dict):
        for item in obj:
            apply_defaults(item, schema["items"])


def validate(obj: Any, schema: dict[str, Any], *, path: str = "") -> list[FieldError]:
    """Every violation of ``schema`` by ``obj`` (metadata is validated elsewhere)."""
    errors: list[FieldError] = []
    _validate(obj, schema, path, errors, root=True)
    return errors


_FORMATS: dict[str, Any] = {
    "date-time": lambda v: bool(
        re.fullmatch(r"\d{4}-\d{2}-\d{2}[Tt]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2})", v)
    ),
    "date": lambda v: bool(re.fullmatch(r"\d{4}-\d{2}-\d{2}", v)),
    "uri": lambda v: bool(re.match(r"^[A-Za-z][A-Za-z0-9+.-]*:", v)),
    "email": lambda v: bool(re.fullmatch(r"[^@\s]+@[^@\s]+", v)),
}


def _validate(
    value: Any, schema: dict[str, Any], path: str, errors: list[FieldError], *, root: bool = False
) -> None:
    shown = path or "<root>"
    if value is None:
        if not schema.get("nullable") and schema.get("type"):
            errors.append(
                invalid(path, value, f'{shown} in body must be of type {schema["type"]}: "null"')
            )
        return
    expected = schema.get("type")
    actual = _type_name(value)
    if schema.get("x-kubernetes-int-or-string"):
        if actual not in ("integer", "string"):
            errors.append(
                invalid(path, value, f'{shown} in body must be of type integer,string: "{actual}"')
            )
            return
    elif expected:
        matches = actual == expected or (expected == "number" and actual == "integer")
        if not matches:
            errors.append(
                invalid(path, value, f'{shown} in body must be of type {expected}: "{actual}"')
            )
            return

    if "enum" in schema and value not in schema["enum"]:
        supported = ", ".join(_quote(item) for item in schema["enum"])
        errors.append(
            FieldError(
                "FieldValueNotSupported",
                path,
                f"Unsupported value: {_quote(value)}: supported values: {supported}",
            )
        )
    if isinstance(value, str):
        if "pattern" in schema and not re.search(schema["pattern"], value):
            errors.append(
                invalid(path, value, f"{shown} in body should match '{schema['pattern']}'")
            )
        if "maxLength" in schema and len(value) > schema["maxLength"]:
            errors.append(
                FieldError(
                    "FieldValueTooLong",
                    path,
                    f"Too long: may not be more than {schema['maxLength']} bytes",
                )
            )
        if "minLength" in schema and len(value) < schema["minLength"]:
            errors.append(
                invalid(
                    path,
                    value,
                    f"{shown} in body should be at least {schema['minLength']} chars long",
                )
            )
        checker = _FORMATS.get(str(schema.get("format", "")))
        if checker is not None and not checker(value):
            errors.append(
                invalid(
                    path,
                    value,
                    f"{shown} in body must be of type {schema['format']}: {_quote(value)}",
                )
            )
    if isinstance(value, int | float) and not isinstance(value, bool):
        if "maximum" in schema and value > schema["maximum"]:
            errors.append(
                invalid(
                    path,
                    value,
                    f"{shown} in body should be less than or equal to {schema['maximum']}",
                )
            )
        if "minimum" in schema and value < schema["minimum"]:
            errors.append(
                invalid(
                    path,
                    value,
                    f"{shown} in body should be greater than or equal to {schema['minimum']}",
                )
            )
    if isinstance(value, list):
        if "maxItems" in schema and len(value) > schema["maxItems"]:
            errors.append(
                FieldError(
                    "FieldValueTooMany",
                    path,
                    f"Too many: {len(value)}: must have at most {schema['maxItems']} items",
                )
            )
        if "minItems" in schema and len(value) < schema["minItems"]:
            errors.append(
                invalid(
                    path, value, f"{shown} in body should have at least {schema['minItems']} items"
                )
            )
        items = schema.get("items")
        if isinstance(items, dict):
            for index, item in enumerate(value):
                _validate(item, items, f"{path}[{index}]", errors)
        if schema.get("x-kubernetes-list-type") == "set":
            seen: list[Any] = []
            for index, item in enumerate(value):
                if item in seen:
                    errors.append(
                        FieldError(
                            "FieldValueDuplicate",
                            f"{path}[{index}]",
                            f"Duplicate value: {_quote(item)}",
                        )
                    )
                seen.append(item)
        if schema.get("x-kubernetes-list-type") == "map":
            keys = list(schema.get("x-kubernetes-list-map-keys") or ())
            seen_keys: list[dict[str, Any]] = []
            for index, item in enumerate(value):
                if not isinstance(item, dict):
                    continue
                key = {k: item.get(k) for k in keys}
                if key in seen_keys:
                    # kube-apiserver prints the key as Go's %#v of map[string]interface{}.
                    shown = ", ".join(f"{json.dumps(k)}:{json.dumps(v)}" for k, v in key.items())
                    errors.append(
                        FieldError(
                            "FieldValueDuplicate",
                            f"{path}[{index}]",
                            f"Duplicate value: map[string]interface {{}}{{{shown}}}",
                        )
                    )
                seen_keys.append(key)
    if isinstance(value, dict):
        properties = schema.get("properties") or {}
        for key in schema.get("required") or ():
            if key not in value:
                errors.append(required(_child(path, key)))
        for key, item in value.items():
            if root and key in _ROOT_KEYS:
                continue
            if root and key in properties:
                _validate_top_level(item, properties[key], _child(path, key), errors)
            elif key in properties:
                _validate(item, properties[key], _child(path, key), errors)
            elif isinstance(schema.get("additionalProperties"), dict):
                _validate(item, schema["additionalProperties"], _child(path, key), errors)
        if "maxProperties" in schema and len(value) > schema["maxProperties"]:
            errors.append(
                FieldError(
                    "FieldValueTooMany",
                    path,
                    f"Too many: {len(value)}: must have at most {schema['maxProperties']} items",
                )
            )
    for sub in schema.get("allOf") or ():
        _validate(value, sub, path, errors)
    if schema.get("anyOf"):
        attempts = [_collect(value, sub, path) for sub in schema["anyOf"]]
        if all(attempts):
            errors.extend(attempts[0])
    if schema.get("oneOf"):
        passing = [sub for sub in schema["oneOf"] if not _collect(value, sub, path)]
        if len(passing) != 1:
            errors.append(
                invalid(
                    path, value, f"{shown} in body must validate one and only one schema (oneOf)"
                )
            )


# (id(schema node), path, value as JSON) -> (node, errors). Validation is a pure function of
# these, and a top-level value (spec, status) repeats: every status write re-validates the
# unchanged spec, and many objects share a spec. The node is kept to tell a reused id apart.
_TOP_LEVEL: collections.OrderedDict[tuple[int, str, str], tuple[Any, list[FieldError]]] = (
    collections.OrderedDict()
)
_TOP_LEVEL_MAX = 4096


def _validate_top_level(
    value: Any, schema: dict[str, Any], path: str, errors: list[FieldError]
) -> None:
    try:
        key = (id(schema), path, jsontext.encode(value))
    except (TypeError, ValueError):  # not JSON (cannot come from a request body): no memo
        _validate(value, schema, path, errors)
        return
    known = _TOP_LEVEL.get(key)
    if known is not None and known[0] is schema:
        _TOP_LEVEL.move_to_end(key)
        errors.extend(known[1])
        return
    found: list[FieldError] = []
    _validate(value, schema, path, found)
    _TOP_LEVEL[key] = (schema, found)
    if len(_TOP_LEVEL) > _TOP_LEVEL_MAX:
        _TOP_LEVEL.popitem(last=False)
    errors.extend(found)


def _collect(value: Any, schema: dict[str, Any], path: str) -> list[FieldError]:
    found: list[FieldError] = []
    _validate(value, schema, path, found)
    return found


def now_rfc3339() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
