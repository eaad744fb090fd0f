"""Shared value types between the API server core and its security modules.

The server core (routing, storage, watch) and the security modules (authentication, RBAC,
admission, service-account tokens) meet only through these types, so either side can change its
internals without touching the other.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any, Protocol


@dataclasses.dataclass(frozen=True)
class UserInfo:
    """An authenticated caller, shaped like ``authentication.k8s.io/v1`` ``UserInfo``."""

    username: str
    uid: str = ""
    groups: tuple[str, ...] = ()
    extra: Mapping[str, tuple[str, ...]] = dataclasses.field(default_factory=dict)

    def to_api(self) -> dict[str, Any]:
        body: dict[str, Any] = {"username": self.username, "groups": list(self.groups)}
        if self.uid:
            body["uid"] = self.uid
        if self.extra:
            body["extra"] = {key: list(values) for key, values in self.extra.items()}
        return body


@dataclasses.dataclass(frozen=True)
class RequestAttributes:
    """What an authorizer decides on, as Kubernetes' ``RequestInfo`` describes a request.

    For resource requests ``verb`` is the Kubernetes verb (get, list, watch, create, update,
    patch, delete, deletecollection); for non-resource requests it is the lower-cased HTTP method.
    """

    verb: str
    resource_request: bool
    path: str = ""
    api_group: str = ""
    api_version: str = ""
    resource: str = ""
    subresource: str = ""
    namespace: str = ""
    name: str = ""


@dataclasses.dataclass(frozen=True)
class Decision:
    allowed: bool
    reason: str = ""


class ObjectReader(Protocol):
    """Read access to stored objects, for the security modules.

    ``group`` is "" for the core API; ``resource`` is the plural name ("pods", "roles").
    """

    def get(
        self, *, group: str, resource: str, namespace: str | None, name: str
    ) -> dict[str, Any] | None: ...

    def list(
        self, *, group: str, resource: str, namespace: str | None = None
    ) -> Sequence[dict[str, Any]]: ...


class StatusError(Exception):
    """A refused request that becomes a ``Status`` body: ``code``, ``reason``, ``message``,
    and ``causes`` (the ``details.causes`` of a 422)."""

    def __init__(
        self, code: int, reason: str, message: str, *, causes: Sequence[dict[str, str]] = ()
    ) -> None:
        super().__init__(message)
        self.code = code
        self.reason = reason
        self.message = message
        self.causes = list(causes)
