"""``/openapi/v2`` in protobuf: the Swagger document as gnostic's ``openapi.v2.Document``.

client-go fetches ``/openapi/v2`` with ``Accept: application/com.github.proto-openapi.spec.v2@
v1.0+protobuf`` and decodes the body with ``proto.Unmarshal`` into gnostic's
``openapi_v2.Document`` (no JSON fallback), which is what older kubectl versions, kubectl's
validation fallback and Helm's ``--validate`` read. Field numbers are those of gnostic's
``openapiv2/OpenAPIv2.proto``. Vendor extensions, enums and defaults are ``Any`` messages
carrying their value as YAML text (JSON, which is YAML), as gnostic writes them.

Only what the documents of :mod:`openapi` contain is encoded: schemas (``$ref``, type, format,
description, required, enum, default, numeric and length bounds, items, properties,
additionalProperties, allOf, readOnly, ``x-`` extensions), paths with get/put/post/delete/patch
operations, query and body parameters, and responses.
"""

from __future__ import annotations

import json
import struct
from typing import Any

PROTOBUF_ACCEPTED = (
    "application/com.github.proto-openapi.spec.v2@v1.0+protobuf",
    "application/com.github.proto-openapi.spec.v2.v1.0+protobuf",
)
# kube-openapi answers either Accept form with this Content-Type: the "@" form is not a valid
# media type for Go's mime.ParseMediaType, which client-go runs on the response.
PROTOBUF_MEDIA_TYPE = "application/com.github.proto-openapi.spec.v2.v1.0+protobuf"


def wants_protobuf(accept: str) -> bool:
    return any(media in accept for media in PROTOBUF_ACCEPTED)


_VARINT, _FIXED64, _BYTES = 0, 1, 2


def _varint(value: int) -> bytes:
    out = bytearray()
    value &= (1 << 64) - 1
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _tag(field: int, wire: int) -> bytes:
    return _varint((field << 3) | wire)


def _message(field: int, payload: bytes) -> bytes:
    return _tag(field, _BYTES) + _varint(len(payload)) + payload


def _string(field: int, value: str) -> bytes:
    return _message(field, value.encode()) if value else b""


def _bool(field: int, value: Any) -> bytes:
    return _tag(field, _VARINT) + b"\x01" if value else b""


def _int(field: int, value: Any) -> bytes:
    return _tag(field, _VARINT) + _varint(int(value)) if value is not None else b""


def _double(field: int, value: Any) -> bytes:
    return _tag(field, _FIXED64) + struct.pack("<d", float(value)) if value is not None else b""


def _any(value: Any) -> bytes:
    """gnostic ``Any``: field 2 holds the value as YAML."""
    return _string(2, json.dumps(value, separators=(",", ":")))


def _vendor_extensions(node: dict[str, Any], field: int) -> bytes:
    return b"".join(
        _message(field, _string(1, key) + _message(2, _any(value)))
        for key, value in node.items()
        if key.startswith("x-") and not key.startswith("x-agentauth-")
    )


def schema(node: dict[str, Any]) -> bytes:
    out = bytearray()
    out += _string(1, node.get("$ref", ""))
    out += _string(2, node.get("format", ""))
    out += _string(3, node.get("title", ""))
    out += _string(4, node.get("description", ""))
    if "default" in node:
        out += _message(5, _any(node["default"]))
    out += _double(6, node.get("multipleOf"))
    out += _double(7, node.get("maximum"))
    out += _bool(8, node.get("exclusiveMaximum"))
    out += _double(9, node.get("minimum"))
    out += _bool(10, node.get("exclusiveMinimum"))
    out += _int(11, node.get("maxLength"))
    out += _int(12, node.get("minLength"))
    out += _string(13, node.get("pattern", ""))
    out += _int(14, node.get("maxItems"))
    out += _int(15, node.get("minItems"))
    out += _bool(16, node.get("uniqueItems"))
    out += _int(17, node.get("maxProperties"))
    out += _int(18, node.get("minProperties"))
    for name in node.get("required") or ():
        out += _string(19, str(name))
    for value in node.get("enum") or ():
        out += _message(20, _any(value))
    additional = node.get("additionalProperties")
    if isinstance(additional, dict):
        out += _message(21, _message(1, schema(additional)))
    elif isinstance(additional, bool):
        out += _message(21, _tag(2, _VARINT) + (b"\x01" if additional else b"\x00"))
    kind = node.get("type")
    if isinstance(kind, str):
        out += _message(22, _string(1, kind))
    items = node.get("items")
    if isinstance(items, dict):
        out += _message(23, _message(1, schema(items)))
    for sub in node.get("allOf") or ():
        out += _message(24, schema(sub))
    properties = node.get("properties")
    if isinstance(properties, dict):
        named = b"".join(
            _message(1, _string(1, key) + _message(2, schema(value)))
            for key, value in properties.items()
        )
        out += _message(25, named)
    out += _bool(27, node.get("readOnly"))
    out += _vendor_extensions(node, 31)
    return bytes(out)


def _parameter(parameter: dict[str, Any]) -> bytes:
    if parameter.get("in") == "body":
        body = (
            _string(1, parameter.get("description", ""))
            + _string(2, parameter.get("name", ""))
            + _string(3, "body")
            + _bool(4, parameter.get("required"))
            + _message(5, schema(parameter.get("schema") or {}))
        )
        return _message(1, _message(1, body))
    location = parameter.get("in", "query")
    common = (
        _bool(1, parameter.get("required"))
        + _string(2, location)
        + _string(3, parameter.get("description", ""))
        + _string(4, parameter.get("name", ""))
    )
    if location == "path":
        sub = (
            common + _string(5, parameter.get("type", "")) + _bool(19, parameter.get("uniqueItems"))
        )
        return _message(1, _message(2, _message(4, sub)))
    sub = common + _string(6, parameter.get("type", "")) + _bool(20, parameter.get("uniqueItems"))
    return _message(1, _message(2, _message(3, sub)))


def _operation(operation: dict[str, Any]) -> bytes:
    out = bytearray()
    for tag in operation.get("tags") or ():
        out += _string(1, tag)
    out += _string(3, operation.get("description", ""))
    out += _string(5, operation.get("operationId", ""))
    for media in operation.get("produces") or ():
        out += _string(6, media)
    for media in operation.get("consumes") or ():
        out += _string(7, media)
    for parameter in operation.get("parameters") or ():
        out += _message(8, _parameter(parameter))
    responses = b""
    for code, response in (operation.get("responses") or {}).items():
        body = _string(1, response.get("description", ""))
        if isinstance(response.get("schema"), dict):
            body += _message(2, _message(1, schema(response["schema"])))
        responses += _message(1, _string(1, code) + _message(2, _message(1, body)))
    out += _message(9, responses)
    out += _vendor_extensions(operation, 13)
    return bytes(out)


_METHOD_FIELDS = {"get": 2, "put": 3, "post": 4, "delete": 5, "options": 6, "head": 7, "patch": 8}


def _path_item(item: dict[str, Any]) -> bytes:
    out = bytearray()
    for method, field in _METHOD_FIELDS.items():
        if isinstance(item.get(method), dict):
            out += _message(field, _operation(item[method]))
    for parameter in item.get("parameters") or ():
        out += _message(9, _parameter(parameter))
    return bytes(out)


def document(doc: dict[str, Any]) -> bytes:
    """The ``openapi.v2.Document`` wire bytes of a Swagger 2.0 document."""
    info = doc.get("info") or {}
    out = bytearray()
    out += _string(1, doc.get("swagger", "2.0"))
    out += _message(2, _string(1, info.get("title", "")) + _string(2, info.get("version", "")))
    paths = b"".join(
        _message(2, _string(1, path) + _message(2, _path_item(item)))
        for path, item in (doc.get("paths") or {}).items()
    )
    out += _message(8, paths)
    definitions = b"".join(
        _message(1, _string(1, name) + _message(2, schema(value)))
        for name, value in (doc.get("definitions") or {}).items()
    )
    out += _message(9, definitions)
    return bytes(out)
