"""JSON parsing for untrusted input: every malformed document is a ``ValueError``.

Guarantees: :func:`loads` accepts exactly the JSON of RFC 8259. Python's ``json`` module also
accepts ``NaN``, ``Infinity`` and numbers that overflow to infinity, which compare false with
everything and so slip through time checks such as ``exp``; here they are refused. Nesting deep
enough to exhaust the interpreter's stack raises ``ValueError`` too, never ``RecursionError``, so
callers that map ``ValueError`` to a client error cover every bad document.
"""

from __future__ import annotations

import json
import math
from typing import Any


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"number {text[:32]} is out of range")
    return value


def loads(document: str | bytes) -> Any:
    """``json.loads`` restricted to RFC 8259 JSON with finite numbers."""
    try:
        return json.loads(document, parse_constant=_refuse_constant, parse_float=_finite)
    except RecursionError:
        raise ValueError("JSON is nested too deeply") from None
