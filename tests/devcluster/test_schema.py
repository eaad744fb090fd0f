"""Structural-schema pruning, defaulting and validation messages."""

from __future__ import annotations

from typing import Any

from agentauth.devcluster import schema

SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "spec": {
            "type": "object",
            "required": ["name"],
            "properties": {
                "name": {"type": "string", "pattern": "^[a-z]+$", "maxLength": 5},
                "mode": {"type": "string", "enum": ["A", "B"], "default": "A"},
                "count": {"type": "integer", "minimum": 1, "maximum": 3},
                "tags": {
                    "type": "array",
                    "items": {"type": "string"},
                    "maxItems": 2,
                    "x-kubernetes-list-type": "set",
                },
                "free": {"type": "object", "x-kubernetes-preserve-unknown-fields": True},
                "port": {"x-kubernetes-int-or-string": True},
                "labels": {"type": "object", "additionalProperties": {"type": "string"}},
            },
        },
    },
}


def _messages(obj: dict[str, Any]) -> list[str]:
    return [str(error) for error in schema.validate(obj, SCHEMA)]


def test_valid_object_with_defaults() -> None:
    obj: dict[str, Any] = {
        "apiVersion": "x/v1",
        "kind": "K",
        "metadata": {"name": "n"},
        "spec": {"name": "abc", "port": "http", "free": {"any": {"x": 1}}},
    }
    assert schema.prune(obj, SCHEMA) == []
    schema.apply_defaults(obj, SCHEMA)
    assert obj["spec"]["mode"] == "A"
    assert _messages(obj) == []


def test_unknown_fields_are_reported_and_pruned() -> None:
    obj: dict[str, Any] = {
        "metadata": {},
        "spec": {"name": "a", "extra": 1, "free": {"k": 1}},
        "top": True,
    }
    assert schema.prune(obj, SCHEMA) == ["spec.extra", "top"]
    assert obj == {"metadata": {}, "spec": {"name": "a", "free": {"k": 1}}}


def test_messages_like_the_real_server() -> None:
    messages = _messages(
        {
            "spec": {
                "name": "ABCDEFG",
                "mode": "C",
                "count": 9,
                "tags": ["a", "a", "b"],
                "port": 1.5,
                "labels": {"k": 1},
            }
        }
    )
    assert messages == [
        "spec.name: Invalid value: \"ABCDEFG\": spec.name in body should match '^[a-z]+$'",
        "spec.name: Too long: may not be more than 5 bytes",
        'spec.mode: Unsupported value: "C": supported values: "A", "B"',
        "spec.count: Invalid value: 9: spec.count in body should be less than or equal to 3",
        "spec.tags: Too many: 3: must have at most 2 items",
        'spec.tags[1]: Duplicate value: "a"',
        'spec.port: Invalid value: 1.5: spec.port in body must be of type integer,string: "number"',
        'spec.labels.k: Invalid value: 1: spec.labels.k in body must be of type string: "integer"',
    ]
    assert _messages({"spec": {}}) == ["spec.name: Required value"]
    required = schema.validate({"spec": {}}, SCHEMA)[0]
    assert required.cause() == {
        "reason": "FieldValueRequired",
        "message": "Required value",
        "field": "spec.name",
    }


def test_a_repeated_top_level_value_gives_the_same_errors_from_the_memo() -> None:
    """Top-level values are validated once per (schema node, value): the second object with the
    same spec (another name, another status) gets the same errors, and the memo never lends
    one schema's verdict to another schema with a different rule."""
    bad = {"name": "UPPER", "count": 9}
    first = schema.validate({"metadata": {"name": "a"}, "spec": dict(bad)}, SCHEMA)
    second = schema.validate(
        {"metadata": {"name": "b"}, "spec": dict(bad), "status": {"x": 1}}, SCHEMA
    )
    assert [str(e) for e in first] == [str(e) for e in second]
    assert [e.field for e in first] == ["spec.name", "spec.count"]
    first.clear()  # callers own the lists they get
    assert [e.field for e in schema.validate({"spec": dict(bad)}, SCHEMA)] == [
        "spec.name",
        "spec.count",
    ]
    stricter = {"type": "object", "properties": {"spec": {"type": "object", "maxProperties": 1}}}
    assert [str(e) for e in schema.validate({"spec": dict(bad)}, stricter)] == [
        "spec: Too many: 2: must have at most 1 items"
    ]
