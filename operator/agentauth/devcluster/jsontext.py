"""Compact JSON for the embedded API server's hot paths: stored objects, request bodies, copies.

Guarantees:
- :func:`encode` gives compact JSON text (no whitespace, non-ASCII kept as UTF-8, keys in
  insertion order), :func:`decode` parses JSON text, :func:`clone` deep-copies a JSON value;
  each is done by ``orjson`` (a dependency of the operator, several times faster than the
  standard library on every request) and falls back to the standard library for what ``orjson``
  refuses (integers beyond 64 bits, non-string keys, lone surrogates, ``NaN`` literals), so
  every value the standard library accepted is accepted exactly as before;
- a float is written as its shortest round-tripping form (``1e16``, where the standard library
  writes ``1e+16``): both are valid JSON and decode to the same value.
"""

from __future__ import annotations

import copy
import json
from typing import Any

import orjson


def encode(obj: Any) -> str:
    """``obj`` as compact JSON text."""
    try:
        return orjson.dumps(obj).decode()
    except TypeError:  # orjson.JSONEncodeError is a TypeError
        return json.dumps(obj, separators=(",", ":"), ensure_ascii=False)


def decode(text: str | bytes) -> Any:
    """The value of JSON ``text``; raises ``ValueError`` (``json.JSONDecodeError``) if invalid."""
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        # What orjson refuses and the standard library reads (NaN, huge integers), or an
        # error worded by the standard library.
        return json.loads(text)


def clone(value: Any) -> Any:
    """A deep copy of the JSON value ``value`` (a round trip through orjson, else deepcopy)."""
    if not isinstance(value, (dict, list)):
        return copy.deepcopy(value)  # immutable scalars come back as they are
    try:
        return orjson.loads(orjson.dumps(value))
    except (TypeError, orjson.JSONDecodeError):
        return copy.deepcopy(value)
