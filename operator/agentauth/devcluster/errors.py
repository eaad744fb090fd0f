"""The errors the embedded API server answers, each rendered as a ``Status`` body.

:class:`ApiError` carries the code, reason, message and details kube-apiserver uses; the
constructors here (``not_found``, ``conflict``, ``invalid``, ...) word them as upstream does, and
:func:`error_response` is the only place they become an HTTP response (encoded by
:mod:`statuses`, byte for byte). :class:`Retry` never reaches a client: it tells a write to
recompute from the latest version.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from aiohttp import web

from agentauth.devcluster import resources, schema, statuses, storage

STORAGE_RETRY_AFTER_SECONDS = 1
MODIFIED = (
    "the object has been modified; please apply your changes to the latest version and try again"
)


class ApiError(Exception):
    """An error answered as a ``Status`` body."""

    def __init__(
        self,
        code: int,
        reason: str,
        message: str,
        *,
        details: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.reason = reason
        self.message = message
        self.details = details

    def status(self) -> dict[str, Any]:
        return statuses.failure(self.code, self.reason, self.message, details=self.details)

    @classmethod
    def of(cls, status: dict[str, Any]) -> ApiError:
        """The error that answers a Status built by :mod:`statuses`."""
        return cls(
            status["code"], status["reason"], status["message"], details=status.get("details")
        )


class Retry(Exception):
    """The object changed while admission ran; recompute from the latest version."""


def error_response(error: ApiError) -> web.Response:
    return web.Response(
        body=statuses.encode(error.status()), status=error.code, content_type="application/json"
    )


def storage_unavailable(error: storage.StorageError) -> web.Response:
    """A write the store could not commit: 503 with ``Retry-After``, as kube-apiserver answers
    while its storage is unavailable. Nothing was applied, so retrying is safe."""
    response = error_response(
        ApiError(
            503,
            "ServiceUnavailable",
            f"storage is unavailable, the write was not applied: {error}",
            details={"retryAfterSeconds": STORAGE_RETRY_AFTER_SECONDS},
        )
    )
    response.headers["Retry-After"] = str(STORAGE_RETRY_AFTER_SECONDS)
    return response


def details(rt: resources.ResourceType, name: str) -> dict[str, Any]:
    details: dict[str, Any] = {"name": name, "kind": rt.plural}
    if rt.group:
        details["group"] = rt.group
    return details


def not_found(rt: resources.ResourceType, name: str) -> ApiError:
    return ApiError(
        404, "NotFound", f'{rt.group_resource} "{name}" not found', details=details(rt, name)
    )


def conflict(rt: resources.ResourceType, name: str, why: str) -> ApiError:
    return ApiError(
        409,
        "Conflict",
        f'Operation cannot be fulfilled on {rt.group_resource} "{name}": {why}',
        details=details(rt, name),
    )


def invalid(rt: resources.ResourceType, name: str, errors: Sequence[schema.FieldError]) -> ApiError:
    qualified = f"{rt.kind}.{rt.group}" if rt.group else rt.kind
    rendered = [str(error) for error in errors]
    summary = rendered[0] if len(rendered) == 1 else "[" + ", ".join(rendered) + "]"
    details: dict[str, Any] = {
        "name": name,
        "kind": rt.kind,
        "causes": [error.cause() for error in errors],
    }
    if rt.group:
        details["group"] = rt.group
    return ApiError(422, "Invalid", f'{qualified} "{name}" is invalid: {summary}', details=details)


def bad_request(message: str) -> ApiError:
    return ApiError(400, "BadRequest", message)


def already_exists(rt: resources.ResourceType, name: str) -> ApiError:
    return ApiError(
        409,
        "AlreadyExists",
        f'{rt.group_resource} "{name}" already exists',
        details=details(rt, name),
    )
