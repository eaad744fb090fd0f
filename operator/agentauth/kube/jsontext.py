"""Compact JSON for hot paths: the embedded API server's stored objects, request bodies and
copies, the kube client's requests and answers, the token service's responses.

Guarantees:
- :func:`encode_bytes` / :func:`encode` give compact JSON (no whitespace, non-ASCII kept as UTF-8,
  keys in insertion order), :func:`decode` parses JSON text, :func:`clone` deep-copies a JSON
  value; each is done by ``orjson`` when it is installed (the operator's dependencies: several
  times faster than the standard library on every request) and falls back to the standard library
  for what ``orjson`` refuses (integers beyond 64 bits, non-string keys, lone surrogates, ``NaN``
  literals), so every value the standard library accepted is accepted exactly as before;
- without ``orjson`` (an install without the operator extra, such as the kubectl plugin's) the
  standard library does all of it, with the same results;
- a float is written as its shortest round-tripping form (``1e16``, where the standard library
  writes ``1e+16``): both are valid JSON and decode to the same value.
"""

from __future__ import annotations

import copy
import json
from typing import Any

try:
    import orjson
except ImportError:  # pragma: no cover - an install without the operator extra
    orjson = None  # type: ignore[assignment]


def encode_bytes(obj: Any) -> bytes:
    """``obj`` as compact UTF-8 JSON."""
    if orjson is not None:
        try:
            return orjson.dumps(obj)
        except TypeError:  # orjson.JSONEncodeError is a TypeError
            pass
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()


def encode(obj: Any) -> str:
    """``obj`` as compact JSON text."""
    return encode_bytes(obj).decode()


def decode(text: str | bytes) -> Any:
    """The value of JSON ``text``; raises ``ValueError`` (``json.JSONDecodeError``) if invalid."""
    if orjson is not None:
        try:
            return orjson.loads(text)
        except orjson.JSONDecodeError:
            # What orjson refuses and the standard library reads (NaN, huge integers), or an
            # error worded by the standard library.
            pass
    return json.loads(text)


def clone(value: Any) -> Any:
    """A deep copy of the JSON value ``value`` (a round trip through orjson, else deepcopy)."""
    if orjson is None or not isinstance(value, (dict, list)):
        return copy.deepcopy(value)  # immutable scalars come back as they are
    try:
        return orjson.loads(orjson.dumps(value))
    except (TypeError, orjson.JSONDecodeError):
        return copy.deepcopy(value)
