"""Typed OAuth 2.0 errors (RFC 6749 section 5.2, RFC 8693 section 2.2.2, RFC 6750, RFC 8707).

Every security check in the domain layer fails by raising one of these, never by returning a
bool. The HTTP layer turns an ``OAuthError`` into the RFC 6749 JSON body
``{"error": ..., "error_description": ...}`` with ``status`` as the HTTP status code, so the
``error`` string and the status are fixed per class and the description is the only free text.
Descriptions never echo secrets (token contents) back to the caller.
"""

from __future__ import annotations

from typing import Any, ClassVar

DEFAULT_RETRY_AFTER_SECONDS = 2
"""What a 503 answer's ``Retry-After`` says unless the raiser knows better."""


class OAuthError(Exception):
    """An error answered to an OAuth client as RFC 6749 JSON.

    ``error`` is the registered error code, ``description`` a human-readable explanation
    (``error_description``), ``status`` the HTTP status code.
    """

    default_error: ClassVar[str] = "server_error"
    default_status: ClassVar[int] = 500

    def __init__(
        self,
        error: str | None = None,
        description: str = "",
        status: int | None = None,
        *,
        headers: dict[str, str] | None = None,
    ) -> None:
        self.error = error if error is not None else self.default_error
        self.description = description
        self.status = status if status is not None else self.default_status
        self.headers: dict[str, str] = dict(headers or {})
        super().__init__(f"{self.error}: {description}" if description else self.error)

    def about(self, parameter: str) -> OAuthError:
        """The same error (code, status, headers), its description naming the request
        ``parameter`` it concerns. A plain ``OAuthError``: subclasses may take other
        constructor arguments, so none is rebuilt from its type."""
        return OAuthError(
            self.error, f"{parameter}: {self.description}", self.status, headers=self.headers
        )

    def to_json(self) -> dict[str, Any]:
        """The RFC 6749 section 5.2 response body."""
        body: dict[str, Any] = {"error": self.error}
        if self.description:
            body["error_description"] = self.description
        return body


class _Fixed(OAuthError):
    """An OAuthError whose code and status are fixed by the class."""

    def __init__(self, description: str = "", *, headers: dict[str, str] | None = None) -> None:
        super().__init__(self.default_error, description, self.default_status, headers=headers)


class InvalidRequest(_Fixed):
    """Missing or malformed parameter (RFC 6749 section 5.2)."""

    default_error = "invalid_request"
    default_status = 400


class InvalidClient(_Fixed):
    """Client authentication failed (RFC 6749 section 5.2)."""

    default_error = "invalid_client"
    default_status = 401


class InvalidGrant(_Fixed):
    """The presented grant / subject or actor token is invalid, expired or not bound."""

    default_error = "invalid_grant"
    default_status = 400


class UnauthorizedClient(_Fixed):
    """The authenticated client may not use this grant."""

    default_error = "unauthorized_client"
    default_status = 400


class UnsupportedGrantType(_Fixed):
    default_error = "unsupported_grant_type"
    default_status = 400


class InvalidScope(_Fixed):
    """Requested scope is unknown, malformed or exceeds what is held (RFC 6749 section 5.2)."""

    default_error = "invalid_scope"
    default_status = 400


class InvalidTarget(_Fixed):
    """Requested audience/resource is unknown or not acceptable (RFC 8693, RFC 8707)."""

    default_error = "invalid_target"
    default_status = 400


class UnsupportedTokenType(_Fixed):
    """The subject/actor token type is not supported (RFC 8693 section 2.2.2)."""

    default_error = "unsupported_token_type"
    default_status = 400


class InvalidToken(_Fixed):
    """A bearer token presented to a protected endpoint is invalid (RFC 6750 section 3.1)."""

    default_error = "invalid_token"
    default_status = 401


class InsufficientScope(_Fixed):
    """The bearer token lacks the scope the endpoint needs (RFC 6750 section 3.1)."""

    default_error = "insufficient_scope"
    default_status = 403


class AccessDenied(_Fixed):
    """The resource owner or policy denied the request."""

    default_error = "access_denied"
    default_status = 403


class NotFound(_Fixed):
    """The addressed object does not exist (non-OAuth endpoints such as access requests)."""

    default_error = "not_found"
    default_status = 404


class RateLimited(_Fixed):
    """Too many requests; ``retry_after`` seconds tells the client when to come back."""

    default_error = "rate_limited"
    default_status = 429

    def __init__(self, description: str = "", *, retry_after: int) -> None:
        super().__init__(description, headers={"Retry-After": str(retry_after)})
        self.retry_after = retry_after


class TemporarilyUnavailable(_Fixed):
    """The service cannot answer now (caches not synced, no signing key, the Kubernetes API
    not answering); ``Retry-After`` (RFC 9110 section 10.2.3) tells the client when to retry."""

    default_error = "temporarily_unavailable"
    default_status = 503

    def __init__(
        self,
        description: str = "",
        *,
        retry_after: int = DEFAULT_RETRY_AFTER_SECONDS,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(description, headers={"Retry-After": str(retry_after), **(headers or {})})
        self.retry_after = retry_after


class ServerError(_Fixed):
    default_error = "server_error"
    default_status = 500
