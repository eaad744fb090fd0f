"""Verification for resource servers: agent tokens, bound-token signatures, capabilities.

``ResourceVerifier`` is framework-neutral; ``agentauth.verify.asgi`` and
``agentauth.verify.aiohttp`` wrap it as middleware.  See docs/aauth.md.
"""

from agentauth.verify.verifier import (
    JwksCache,
    MissingCapability,
    MissingToken,
    Principal,
    ResourceVerifier,
    ToolServerRef,
    request_url,
    scope_allows,
    www_authenticate,
)

__all__ = [
    "JwksCache",
    "MissingCapability",
    "MissingToken",
    "Principal",
    "ResourceVerifier",
    "ToolServerRef",
    "request_url",
    "scope_allows",
    "www_authenticate",
]
