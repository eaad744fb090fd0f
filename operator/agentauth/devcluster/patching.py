"""Patch application: JSON merge (RFC 7386), JSON patch (RFC 6902), strategic merge, apply.

Strategic merge patch merges lists where the kind's upstream schema says so
(``x-kubernetes-patch-strategy``/``x-kubernetes-patch-merge-key`` of :mod:`definitions`: a
Service's ports by ``port``, a container's by ``containerPort``, ``finalizers`` as a set ...) and
honours ``$patch: delete|replace``, ``$retainKeys``, ``$deleteFromPrimitiveList`` and
``$setElementOrder``; every other list is replaced. Without a schema it falls back to the common
core merge keys of :data:`MERGE_KEYS`. Server-side apply is approximated as a strategic
merge of the applied configuration into the live object (fields are never removed by omission).
Every failure raises :class:`PatchError` with the message the server returns as 422/400.
"""

from __future__ import annotations

import copy
from typing import Any

from agentauth.kube import jsontext

MERGE_PATCH = "application/merge-patch+json"
JSON_PATCH = "application/json-patch+json"
STRATEGIC_PATCH = "application/strategic-merge-patch+json"
APPLY_PATCH_YAML = "application/apply-patch+yaml"
APPLY_PATCH_CBOR = "application/apply-patch+cbor"

# list field name -> merge key, for the core types that declare patchMergeKey.
MERGE_KEYS: dict[str, str] = {
    "containers": "name",
    "initContainers": "name",
    "ephemeralContainers": "name",
    "volumes": "name",
    "volumeMounts": "mountPath",
    "volumeDevices": "devicePath",
    "env": "name",
    "ports": "containerPort",
    "imagePullSecrets": "name",
    "conditions": "type",
    "hostAliases": "ip",
    "tolerations": "key",
    "ownerReferences": "uid",
}


class PatchError(Exception):
    """A patch that cannot be applied; ``code`` is the HTTP status to answer with."""

    def __init__(self, message: str, *, code: int = 422) -> None:
        super().__init__(message)
        self.message = message
        self.code = code


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386: objects merge recursively, ``null`` deletes, everything else replaces."""
    if not isinstance(patch, dict):
        return jsontext.clone(patch)
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def _pointer(path: str) -> list[str]:
    if path == "":
        return []
    if not path.startswith("/"):
        raise PatchError(f'invalid JSON pointer "{path}"', code=422)
    return [part.replace("~1", "/").replace("~0", "~") for part in path[1:].split("/")]


def _walk(doc: Any, parts: list[str], path: str) -> Any:
    for part in parts:
        if isinstance(doc, dict):
            if part not in doc:
                raise PatchError(f'doc is missing path: "{path}": missing value')
            doc = doc[part]
        elif isinstance(doc, list):
            index = _index(part, len(doc), path)
            doc = doc[index]
        else:
            raise PatchError(f'doc is missing path: "{path}": missing value')
    return doc


def _index(part: str, length: int, path: str, *, allow_end: bool = False) -> int:
    if part == "-" and allow_end:
        return length
    if not part.isdigit():
        raise PatchError(f"unable to access invalid index: {part}")
    index = int(part)
    if index > length or (index == length and not allow_end):
        raise PatchError(f"unable to access invalid index: {index}")
    return index


def json_patch(document: Any, operations: Any) -> Any:
    """RFC 6902 over a deep copy of ``document``."""
    if not isinstance(operations, list):
        raise PatchError(
            "json: cannot unmarshal object into Go value of type jsonpatch.Patch", code=400
        )
    doc = copy.deepcopy(document)
    for operation in operations:
        if not isinstance(operation, dict) or "op" not in operation:
            raise PatchError("Unexpected kind: missing op", code=400)
        op = operation["op"]
        path = str(operation.get("path", ""))
        parts = _pointer(path)
        if op == "test":
            if _walk(doc, parts, path) != operation.get("value"):
                raise PatchError(f"testing value {path} failed: test failed")
            continue
        if op in ("move", "copy"):
            source = str(operation.get("from", ""))
            value = copy.deepcopy(_walk(doc, _pointer(source), source))
            if op == "move":
                doc = _remove(doc, _pointer(source), source)
            doc = _add(doc, parts, path, value)
        elif op == "add":
            doc = _add(doc, parts, path, copy.deepcopy(operation.get("value")))
        elif op == "remove":
            doc = _remove(doc, parts, path)
        elif op == "replace":
            _walk(doc, parts, path)
            doc = _remove(doc, parts, path)
            doc = _add(doc, parts, path, copy.deepcopy(operation.get("value")))
        else:
            raise PatchError(f"Unexpected kind: {op}", code=400)
    return doc


def _add(doc: Any, parts: list[str], path: str, value: Any) -> Any:
    if not parts:
        return value
    parent = _walk(doc, parts[:-1], path)
    last = parts[-1]
    if isinstance(parent, dict):
        parent[last] = value
    elif isinstance(parent, list):
        parent.insert(_index(last, len(parent), path, allow_end=True), value)
    else:
        raise PatchError(f'doc is missing path: "{path}": missing value')
    return doc


def _remove(doc: Any, parts: list[str], path: str) -> Any:
    if not parts:
        return None
    parent = _walk(doc, parts[:-1], path)
    last = parts[-1]
    if isinstance(parent, dict):
        if last not in parent:
            raise PatchError(f"Unable to remove nonexistent key: {last}: missing value")
        del parent[last]
    elif isinstance(parent, list):
        del parent[_index(last, len(parent), path)]
    else:
        raise PatchError(f'doc is missing path: "{path}": missing value')
    return doc


def strategic_merge(target: Any, patch: Any, schema: dict[str, Any] | None = None) -> Any:
    """Strategic merge patch of ``patch`` into ``target`` (neither is modified).

    With ``schema`` (the kind's upstream definition, references inlined), lists are merged
    exactly where upstream merges them: ``x-kubernetes-patch-strategy: merge`` with the
    ``x-kubernetes-patch-merge-key`` (a Service's ports by ``port``, a container's by
    ``containerPort``), primitive lists such as ``finalizers`` as sets, every other list replaced;
    ``$retainKeys`` drops the keys it does not list. Without a schema, :data:`MERGE_KEYS`.
    """
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    if patch.get("$patch") == "replace":
        return {k: copy.deepcopy(v) for k, v in patch.items() if k != "$patch"}
    if patch.get("$patch") == "delete":
        return None
    properties = (schema or {}).get("properties") or {}
    additional = (schema or {}).get("additionalProperties")
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if key.startswith("$setElementOrder/") or key in ("$retainKeys", "$patch"):
            continue
        if key.startswith("$deleteFromPrimitiveList/"):
            field = key.split("/", 1)[1]
            current = result.get(field)
            if isinstance(current, list) and isinstance(value, list):
                result[field] = [item for item in current if item not in value]
            continue
        child: dict[str, Any] | None = None
        if schema is not None:
            found = properties.get(key, additional if isinstance(additional, dict) else None)
            child = found if isinstance(found, dict) else {}
        if value is None:
            result.pop(key, None)
        elif isinstance(value, list):
            result[key] = _patch_list(result.get(key), value, key=key, schema=child)
        elif isinstance(value, dict):
            merged = strategic_merge(result.get(key), value, child)
            if merged is None:
                result.pop(key, None)
            else:
                result[key] = merged
        else:
            result[key] = copy.deepcopy(value)
    retained = patch.get("$retainKeys")
    if isinstance(retained, list):
        result = {k: v for k, v in result.items() if k in retained}
    return result


def _patch_list(
    current: Any, patch: list[Any], *, key: str, schema: dict[str, Any] | None
) -> list[Any]:
    if schema is None:
        if key in MERGE_KEYS:
            return _merge_list(current, patch, MERGE_KEYS[key], None)
        return copy.deepcopy(patch)
    strategy = str(schema.get("x-kubernetes-patch-strategy", ""))
    if "merge" not in strategy.split(","):
        return copy.deepcopy(patch)
    merge_key = schema.get("x-kubernetes-patch-merge-key")
    items = schema.get("items")
    if isinstance(merge_key, str):
        return _merge_list(current, patch, merge_key, items if isinstance(items, dict) else {})
    # A primitive list merged as a set (finalizers): new values appended, existing kept.
    merged = list(current) if isinstance(current, list) else []
    merged.extend(copy.deepcopy(item) for item in patch if item not in merged)
    return merged


def _merge_list(
    current: Any, patch: list[Any], merge_key: str, item_schema: dict[str, Any] | None
) -> list[Any]:
    items = list(current) if isinstance(current, list) else []
    if any(isinstance(item, dict) and item.get("$patch") == "replace" for item in patch):
        return [copy.deepcopy(i) for i in patch if not (isinstance(i, dict) and "$patch" in i)]
    for item in patch:
        if not isinstance(item, dict) or merge_key not in item:
            items.append(copy.deepcopy(item))
            continue
        position = next(
            (
                index
                for index, existing in enumerate(items)
                if isinstance(existing, dict) and existing.get(merge_key) == item[merge_key]
            ),
            None,
        )
        if item.get("$patch") == "delete":
            if position is not None:
                del items[position]
        elif position is None:
            items.append(strategic_merge({}, item, item_schema))
        else:
            items[position] = strategic_merge(items[position], item, item_schema)
    return items


# Server-side apply ------------------------------------------------------------------------
_IDENTITY_PATHS = {
    ("apiVersion",),
    ("kind",),
    ("metadata", "name"),
    ("metadata", "namespace"),
    ("metadata", "resourceVersion"),
    ("metadata", "managedFields"),
    ("metadata", "uid"),
    ("metadata", "creationTimestamp"),
    ("metadata", "generation"),
}


def field_paths(obj: Any, prefix: tuple[str, ...] = ()) -> set[tuple[str, ...]]:
    """Leaf paths of an applied configuration; lists are owned as a whole (atomic)."""
    if isinstance(obj, dict) and obj:
        found: set[tuple[str, ...]] = set()
        for key, value in obj.items():
            path = (*prefix, str(key))
            if path not in _IDENTITY_PATHS:
                found |= field_paths(value, path)
        return found
    return {prefix} if prefix else set()


def fields_v1(paths: set[tuple[str, ...]]) -> dict[str, Any]:
    """Paths in the ``FieldsV1`` shape (``{"f:spec": {"f:x": {}}}``)."""
    root: dict[str, Any] = {}
    for path in sorted(paths):
        node = root
        for part in path:
            node = node.setdefault(f"f:{part}", {})
    return root


def paths_from_fields_v1(fields: Any, prefix: tuple[str, ...] = ()) -> set[tuple[str, ...]]:
    if not isinstance(fields, dict) or not fields:
        return {prefix} if prefix else set()
    found: set[tuple[str, ...]] = set()
    for key, value in fields.items():
        if isinstance(key, str) and key.startswith("f:"):
            found |= paths_from_fields_v1(value, (*prefix, key[2:]))
    return found


def _remove_path(obj: Any, path: tuple[str, ...]) -> None:
    for part in path[:-1]:
        if not isinstance(obj, dict) or part not in obj:
            return
        obj = obj[part]
    if isinstance(obj, dict):
        obj.pop(path[-1], None)


def server_side_apply(
    live: dict[str, Any], applied: dict[str, Any], *, manager: str, api_version: str, time: str
) -> dict[str, Any]:
    """Apply ``applied`` for ``manager``: set what it lists, drop what it listed last time.

    Fields the manager applied before and omits now are removed; fields set by anyone else are
    kept. Ownership conflicts between managers are not detected (every apply is forced).
    """
    entries = [
        e for e in (live.get("metadata") or {}).get("managedFields") or () if isinstance(e, dict)
    ]
    mine = [e for e in entries if e.get("manager") == manager and e.get("operation") == "Apply"]
    previous = paths_from_fields_v1(mine[0].get("fieldsV1")) if mine else set()
    current = field_paths(applied)
    result = strategic_merge(live, applied)
    for path in previous - current:
        related = any(p[: len(path)] == path or path[: len(p)] == p for p in current)
        if not related:
            _remove_path(result, path)
    others = [e for e in entries if e not in mine]
    result.setdefault("metadata", {})["managedFields"] = [
        *others,
        {
            "manager": manager,
            "operation": "Apply",
            "apiVersion": api_version,
            "time": time,
            "fieldsType": "FieldsV1",
            "fieldsV1": fields_v1(current),
        },
    ]
    return dict(result)
