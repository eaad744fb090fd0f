"""GCP workload federation: the claim checks on a Google-signed ID token (pure).

The signature, ``exp``/``iat`` and ``aud`` are verified by google-auth's ``id_token.verify_token``
in the token-service adapter; this module adds what google-auth leaves to the caller and is
applied to the claims it returned (every failure raises ``errors.InvalidGrant``):

- ``iss`` is Google (``https://accounts.google.com`` or ``accounts.google.com``);
- ``aud`` is exactly :func:`bound_audience`: our issuer, ``#jkt=`` and the RFC 7638 thumbprint of
  the key that signs the token request (checked again here, so the domain never trusts the
  adapter's arguments), so an ID token is worth nothing to anyone without that key; ``exp`` is
  present;
- ``email`` is present and ``email_verified`` is the JSON ``true``;
- ``sub`` (the service account's unique ID) is present.

``check_token_shape`` runs first: bounded size, three base64url segments, ``alg`` in an explicit
allow-list (``RS256``, what Google signs with).

``describe_google_auth_error`` turns google-auth's exception text into a stable description.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import hmac
import re
from collections.abc import Mapping
from typing import Any

from agentauth.domain import errors, strictjson

SUBJECT_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:id_token"
GOOGLE_ISSUERS = frozenset({"https://accounts.google.com", "accounts.google.com"})
GOOGLE_CERTS_URL = "https://www.googleapis.com/oauth2/v1/certs"
MAX_ID_TOKEN_CHARS = 8 * 1024

# Google signs ID tokens with RS256 only; anything else is refused before any key is looked up.
ALLOWED_ALGORITHMS = frozenset({"RS256"})
UNKNOWN_KEY_DESCRIPTION = "the GCP ID token is signed by an unknown Google key"
AUDIENCE_KEY_MARK = "#jkt="
WRONG_AUDIENCE_DESCRIPTION = (
    "the GCP ID token's audience is not this issuer bound to the key that signs this request "
    "(<issuer>#jkt=<RFC 7638 thumbprint>)"
)
_JWT_SHAPE = re.compile(r"([A-Za-z0-9_-]+)\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+")

# google-auth's messages (google/auth/jwt.py, 2.x; PyJWT's when the certs URL serves a JWKS) by
# prefix, mapped to the descriptions our callers see. Their text echoes token contents, so it
# is never passed on. An unknown message still fails closed, as a generic verification failure.
_GOOGLE_AUTH_MESSAGES = (
    ("Token expired", "the GCP ID token has expired"),
    ("Signature has expired", "the GCP ID token has expired"),
    ("Token used too early", "the GCP ID token is not valid yet"),
    ("The token is not yet valid", "the GCP ID token is not valid yet"),
    ("Token has wrong audience", WRONG_AUDIENCE_DESCRIPTION),
    ("Audience doesn't match", WRONG_AUDIENCE_DESCRIPTION),
    ("Invalid audience", WRONG_AUDIENCE_DESCRIPTION),
    ("Could not verify token signature", "the GCP ID token's signature is invalid"),
    ("Signature verification failed", "the GCP ID token's signature is invalid"),
    ("Certificate for key id", UNKNOWN_KEY_DESCRIPTION),
    ("Unable to find a signing key", UNKNOWN_KEY_DESCRIPTION),
)


@dataclasses.dataclass(frozen=True)
class GoogleIdentity:
    """The service account a verified ID token speaks for."""

    email: str
    subject: str
    project_id: str | None


def check_token_shape(token: str) -> None:
    """Refuse oversized, non-JWT and non-RS256 tokens before google-auth sees them."""
    if len(token) > MAX_ID_TOKEN_CHARS:
        raise errors.InvalidRequest(
            f"the GCP ID token is larger than {MAX_ID_TOKEN_CHARS} characters"
        )
    shape = _JWT_SHAPE.fullmatch(token)
    if shape is None:
        raise errors.InvalidGrant("the GCP ID token is not a JWT")
    encoded_header = shape.group(1)
    try:
        header = strictjson.loads(
            base64.urlsafe_b64decode(encoded_header + "=" * (-len(encoded_header) % 4))
        )
    except (binascii.Error, ValueError):
        raise errors.InvalidGrant("the GCP ID token is not a JWT") from None
    algorithm = header.get("alg") if isinstance(header, dict) else None
    if algorithm not in ALLOWED_ALGORITHMS:
        raise errors.InvalidGrant(
            f"the GCP ID token's algorithm {algorithm!r} is not allowed; Google signs with RS256"
        )


def describe_google_auth_error(message: str) -> str:
    """A stable, caller-facing description for a google-auth verification error message."""
    for prefix, description in _GOOGLE_AUTH_MESSAGES:
        if message.startswith(prefix):
            return description
    return "the GCP ID token failed verification"


def bound_audience(issuer: str, key_thumbprint: str) -> str:
    """The audience a GCP ID token must carry to be exchanged in a request signed by the key
    with RFC 7638 thumbprint ``key_thumbprint``: ``<issuer>#jkt=<thumbprint>``."""
    return f"{issuer.rstrip('/')}{AUDIENCE_KEY_MARK}{key_thumbprint}"


def check_claims(claims: Mapping[str, Any], *, audience: str) -> GoogleIdentity:
    """Apply the checks google-auth leaves to us; return the identity the token speaks for.

    ``audience`` is :func:`bound_audience` for our issuer and the key that signed the request.
    """
    if claims.get("iss") not in GOOGLE_ISSUERS:
        raise errors.InvalidGrant("the GCP ID token is not issued by Google")
    aud = claims.get("aud")
    if not isinstance(aud, str) or not hmac.compare_digest(aud.encode(), audience.encode()):
        raise errors.InvalidGrant(WRONG_AUDIENCE_DESCRIPTION)
    expiry = claims.get("exp")
    if isinstance(expiry, bool) or not isinstance(expiry, int | float):
        raise errors.InvalidGrant("the GCP ID token has no expiry")
    email = claims.get("email")
    if not isinstance(email, str) or not email:
        raise errors.InvalidGrant(
            "the GCP ID token has no email claim; request it with format=full"
        )
    if claims.get("email_verified") is not True:
        raise errors.InvalidGrant("the GCP ID token's email is not verified")
    subject = claims.get("sub")
    if not isinstance(subject, str) or not subject:
        raise errors.InvalidGrant("the GCP ID token has no subject")
    project_id: str | None = None
    google_claim = claims.get("google")
    if isinstance(google_claim, Mapping):
        compute_engine = google_claim.get("compute_engine")
        if isinstance(compute_engine, Mapping) and isinstance(
            compute_engine.get("project_id"), str
        ):
            project_id = compute_engine["project_id"]
    return GoogleIdentity(email=email.lower(), subject=subject, project_id=project_id)
