"""``meta/v1`` ``Status`` bodies, byte for byte as kube-apiserver writes them.

kube-apiserver encodes a ``Status`` with Go's ``encoding/json`` through a ``json.Encoder``, so
the body has the Go struct's field order (``kind``, ``apiVersion``, ``metadata``, ``status``,
``message``, ``reason``, ``details``, ``code``; inside ``details``: ``name``, ``group``,
``kind``, ``uid``, ``causes``, ``retryAfterSeconds``; inside a cause: ``reason``, ``message``,
``field``), empty fields left out (``omitempty``) except ``metadata``, HTML-sensitive characters
escaped as ``\\u003c``/``\\u003e``/``\\u0026``, non-ASCII text as UTF-8, and a trailing newline.
Clients compare these bodies byte for byte (the official Python client's own tests do), so every
error the embedded server answers is built and encoded here.

The constructors mirror ``k8s.io/apimachinery/pkg/api/errors`` (``NewNotFound``,
``NewAlreadyExists``, ``NewConflict``, ``NewInvalid``, ``NewForbidden``, ``NewInternalError``,
``NewGenericServerResponse`` ...), including which ones carry ``details`` and which do not.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

_DETAIL_ORDER = ("name", "group", "kind", "uid", "causes", "retryAfterSeconds")
_CAUSE_ORDER = ("reason", "message", "field")
_GO_ESCAPES = str.maketrans(
    {"<": "\\u003c", ">": "\\u003e", "&": "\\u0026", "\u2028": "\\u2028", "\u2029": "\\u2029"}
)

NOT_FOUND_MESSAGE = "the server could not find the requested resource"
METHOD_NOT_ALLOWED_MESSAGE = "the server does not allow this method on the requested resource"


def _cause(cause: Mapping[str, Any]) -> dict[str, Any]:
    ordered = {key: cause[key] for key in _CAUSE_ORDER if cause.get(key)}
    # Unknown keys (none upstream) keep their place after the known ones rather than vanish.
    ordered.update({k: v for k, v in cause.items() if k not in _CAUSE_ORDER and v})
    return ordered


def _details(details: Mapping[str, Any]) -> dict[str, Any]:
    ordered: dict[str, Any] = {}
    for key in _DETAIL_ORDER:
        value = details.get(key)
        if not value:
            continue
        ordered[key] = [_cause(c) for c in value] if key == "causes" else value
    ordered.update({k: v for k, v in details.items() if k not in _DETAIL_ORDER and v})
    return ordered


def failure(
    code: int, reason: str, message: str, *, details: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """A ``Failure`` Status; ``details=None`` leaves the field out, ``{}`` writes ``{}``.

    Upstream ``details`` is a pointer: errors built with a ``StatusDetails`` (even an empty one,
    as the generic 404 is) write it, the others (400, 401, 415, 410 ...) do not.
    """
    body: dict[str, Any] = {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
    }
    if message:
        body["message"] = message
    if reason:
        body["reason"] = reason
    if details is not None:
        body["details"] = _details(details)
    if code:
        body["code"] = code
    return body


def success(details: Mapping[str, Any]) -> dict[str, Any]:
    """The ``Success`` Status a delete answers for kinds whose strategy returns no object."""
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Success",
        "details": _details(details),
    }


def normalized(status: Mapping[str, Any]) -> dict[str, Any]:
    """Any Status-shaped mapping (say, a webhook's ``result``) in upstream field order."""
    body: dict[str, Any] = {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": dict(status.get("metadata") or {}),
        "status": status.get("status") or "Failure",
    }
    for key in ("message", "reason"):
        if status.get(key):
            body[key] = status[key]
    if status.get("details") is not None:
        body["details"] = _details(status["details"])
    if status.get("code"):
        body["code"] = status["code"]
    return body


def go_json(value: Any) -> str:
    """``encoding/json.Marshal`` text: compact, UTF-8, ``<>&`` and U+2028/9 escaped."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).translate(_GO_ESCAPES)


def encode(status: Mapping[str, Any]) -> bytes:
    """The response body: Go JSON plus the newline ``json.Encoder.Encode`` appends."""
    return (go_json(status) + "\n").encode()


# -- constructors named after k8s.io/apimachinery/pkg/api/errors ------------------------------


def resource_details(*, group: str, resource: str, name: str) -> dict[str, Any]:
    return {"name": name, "group": group, "kind": resource}


def not_found(*, group: str, resource: str, name: str) -> dict[str, Any]:
    qualified = f"{resource}.{group}" if group else resource
    return failure(
        404,
        "NotFound",
        f'{qualified} "{name}" not found',
        details=resource_details(group=group, resource=resource, name=name),
    )


def path_not_found() -> dict[str, Any]:
    """What kube-apiserver's ``NotFoundHandler`` answers for a path nothing serves."""
    return failure(404, "NotFound", NOT_FOUND_MESSAGE, details={})


def method_not_allowed() -> dict[str, Any]:
    """go-restful's 405 as kube-apiserver's ``serviceErrorHandler`` wraps it."""
    return failure(
        405,
        "MethodNotAllowed",
        METHOD_NOT_ALLOWED_MESSAGE,
        details={
            "causes": [{"reason": "UnexpectedServerResponse", "message": "405: Method Not Allowed"}]
        },
    )


def internal_error(cause: str) -> dict[str, Any]:
    """``NewInternalError(err)``: the message repeats the error as the only cause."""
    return failure(
        500,
        "InternalError",
        f"Internal error occurred: {cause}",
        details={"causes": [{"message": cause}]},
    )


def too_many_requests(message: str, *, retry_after_seconds: int) -> dict[str, Any]:
    """``NewTooManyRequests``: the Retry-After header repeats ``retryAfterSeconds``."""
    return failure(
        429,
        "TooManyRequests",
        f"Too many requests: {message}",
        details={"retryAfterSeconds": retry_after_seconds},
    )


def service_unavailable(message: str) -> dict[str, Any]:
    """``NewServiceUnavailable``: no details."""
    return failure(503, "ServiceUnavailable", message)


def expired(message: str) -> dict[str, Any]:
    """``NewResourceExpired`` (410), sent as a watch ``ERROR`` event or a list answer."""
    return failure(410, "Expired", message)


def invalid(
    *,
    group: str,
    kind: str,
    name: str,
    rendered: Sequence[str],
    causes: Sequence[Mapping[str, Any]],
) -> dict[str, Any]:
    """``NewInvalid``: one error is the summary itself, several are listed in brackets."""
    qualified = f"{kind}.{group}" if group else kind
    summary = rendered[0] if len(rendered) == 1 else "[" + ", ".join(rendered) + "]"
    return failure(
        422,
        "Invalid",
        f'{qualified} "{name}" is invalid: {summary}',
        details={"name": name, "group": group, "kind": kind, "causes": list(causes)},
    )


def watch_error(status: Mapping[str, Any]) -> bytes:
    """A watch ``ERROR`` event frame carrying ``status`` (one JSON line, as upstream streams)."""
    return ('{"type":"ERROR","object":' + go_json(status) + "}\n").encode()
