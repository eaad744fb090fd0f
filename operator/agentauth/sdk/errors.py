"""Typed SDK exceptions carrying the server's RFC 6749 / RFC 6750 error code and description.

Every failed call raises an :class:`AgentAuthError` subclass chosen by the server's ``error``
code (``invalid_grant`` -> :class:`InvalidGrantError`, ...); ``error``, ``description`` and
``status`` are always set, so callers can log or branch on them without parsing text.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar


class AgentAuthError(Exception):
    """Base class: ``error`` is the RFC error code, ``description`` the server's text."""

    code: ClassVar[str] = "error"

    def __init__(self, error: str, description: str = "", *, status: int | None = None) -> None:
        super().__init__(f"{error}: {description}" if description else error)
        self.error = error
        self.description = description
        self.status = status


class ConfigurationError(AgentAuthError):
    """The SDK is missing configuration (environment variables, key files, ...)."""

    code = "configuration_error"

    def __init__(self, description: str) -> None:
        super().__init__(self.code, description)


class TransportError(AgentAuthError):
    """The token service could not be reached or answered something that is not JSON."""

    code = "transport_error"


class InvalidRequestError(AgentAuthError):
    code = "invalid_request"


class InvalidClientError(AgentAuthError):
    code = "invalid_client"


class InvalidGrantError(AgentAuthError):
    code = "invalid_grant"


class UnauthorizedClientError(AgentAuthError):
    code = "unauthorized_client"


class UnsupportedGrantTypeError(AgentAuthError):
    code = "unsupported_grant_type"


class UnsupportedTokenTypeError(AgentAuthError):
    code = "unsupported_token_type"


class InvalidScopeError(AgentAuthError):
    code = "invalid_scope"


class InvalidTargetError(AgentAuthError):
    code = "invalid_target"


class InvalidTokenError(AgentAuthError):
    code = "invalid_token"


class InsufficientScopeError(AgentAuthError):
    """A resource server refused for a missing capability (RFC 6750 ``insufficient_scope``);
    ``capability`` is the scope it named."""

    code = "insufficient_scope"

    def __init__(
        self,
        error: str,
        description: str = "",
        *,
        status: int | None = None,
        capability: str | None = None,
    ) -> None:
        super().__init__(error, description, status=status)
        self.capability = capability


class AccessDeniedError(AgentAuthError):
    code = "access_denied"


class NotFoundError(AgentAuthError):
    code = "not_found"


class RateLimitedError(AgentAuthError):
    """HTTP 429; ``retry_after`` is the server's ``Retry-After`` in seconds, when given."""

    code = "rate_limited"

    def __init__(
        self,
        error: str,
        description: str = "",
        *,
        status: int | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(error, description, status=status)
        self.retry_after = retry_after


class TemporarilyUnavailableError(AgentAuthError):
    code = "temporarily_unavailable"


class ServerError(AgentAuthError):
    code = "server_error"


class AccessRequestDeniedError(AgentAuthError):
    """A just-in-time access request ended ``Denied`` or ``Expired`` while the SDK waited."""

    code = "access_request_denied"

    def __init__(self, description: str, *, name: str, phase: str) -> None:
        super().__init__(self.code, description)
        self.name = name
        self.phase = phase


_BY_CODE: dict[str, type[AgentAuthError]] = {
    cls.code: cls
    for cls in (
        InvalidRequestError,
        InvalidClientError,
        InvalidGrantError,
        UnauthorizedClientError,
        UnsupportedGrantTypeError,
        UnsupportedTokenTypeError,
        InvalidScopeError,
        InvalidTargetError,
        InvalidTokenError,
        InsufficientScopeError,
        AccessDeniedError,
        NotFoundError,
        RateLimitedError,
        TemporarilyUnavailableError,
        ServerError,
    )
}


def from_response(
    *, status: int, body: Mapping[str, Any] | None, headers: Mapping[str, str]
) -> AgentAuthError:
    """The typed exception for an error response (RFC 6749 section 5.2 JSON body)."""
    error = str(body.get("error")) if body and body.get("error") else f"http_{status}"
    description = str(body.get("error_description", "")) if body else ""
    cls = _BY_CODE.get(error)
    if cls is RateLimitedError or (cls is None and status == 429):
        retry_after: float | None
        try:
            retry_after = float(headers.get("retry-after", ""))
        except ValueError:
            retry_after = None
        return RateLimitedError(error, description, status=status, retry_after=retry_after)
    if cls is None:
        cls = ServerError if status >= 500 else AgentAuthError
    return cls(error, description, status=status)
