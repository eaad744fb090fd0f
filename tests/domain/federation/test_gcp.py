"""The claim checks google-auth leaves to us, and the token-shape gate before it (pure).

google-auth's own verification (signature, exp, aud) against a loopback certs endpoint is in
tests/tokenservice/test_federation.py.
"""

from __future__ import annotations

import base64
import json
import time
from typing import Any

import pytest

from agentauth.domain import errors
from agentauth.domain.federation import gcp

ISSUER = "https://agentauth.example.com"
SIGNER_JKT = "kbNlbH3cDLIq2fwSn1xOZq2hbnzvB9qoNeoXjAhKxw8"
AUDIENCE = f"{ISSUER}#jkt={SIGNER_JKT}"


def claims(**overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    base: dict[str, Any] = {
        "iss": "https://accounts.google.com",
        "aud": AUDIENCE,
        "sub": "1133",
        "email": "Agent@research-prod.iam.gserviceaccount.com",
        "email_verified": True,
        "iat": now,
        "exp": now + 3600,
        "google": {"compute_engine": {"project_id": "research-prod"}},
    }
    base.update(overrides)
    return {k: v for k, v in base.items() if v is not None}


def test_good_claims_give_the_lower_cased_email_and_project() -> None:
    identity = gcp.check_claims(claims(), audience=AUDIENCE)
    assert identity == gcp.GoogleIdentity(
        email="agent@research-prod.iam.gserviceaccount.com",
        subject="1133",
        project_id="research-prod",
    )


def test_the_short_issuer_form_is_google_too() -> None:
    gcp.check_claims(claims(iss="accounts.google.com"), audience=AUDIENCE)


def test_a_token_without_compute_engine_claims_has_no_project() -> None:
    assert gcp.check_claims(claims(google=None), audience=AUDIENCE).project_id is None


@pytest.mark.parametrize(
    ("overrides", "description"),
    [
        ({"iss": "https://evil.example"}, "the GCP ID token is not issued by Google"),
        ({"iss": None}, "the GCP ID token is not issued by Google"),
        ({"aud": "https://other.example"}, gcp.WRONG_AUDIENCE_DESCRIPTION),
        ({"aud": ISSUER}, gcp.WRONG_AUDIENCE_DESCRIPTION),  # not bound to a key
        ({"aud": f"{ISSUER}#jkt=another-key"}, gcp.WRONG_AUDIENCE_DESCRIPTION),
        ({"aud": [AUDIENCE]}, gcp.WRONG_AUDIENCE_DESCRIPTION),
        ({"exp": None}, "the GCP ID token has no expiry"),
        ({"exp": True}, "the GCP ID token has no expiry"),
        ({"email": None}, "the GCP ID token has no email claim; request it with format=full"),
        ({"email_verified": False}, "the GCP ID token's email is not verified"),
        ({"email_verified": "true"}, "the GCP ID token's email is not verified"),
        ({"email_verified": None}, "the GCP ID token's email is not verified"),
        ({"sub": None}, "the GCP ID token has no subject"),
    ],
)
def test_bad_claims(overrides: dict[str, Any], description: str) -> None:
    with pytest.raises(errors.InvalidGrant) as caught:
        gcp.check_claims(claims(**overrides), audience=AUDIENCE)
    assert (caught.value.error, caught.value.description) == ("invalid_grant", description)


def b64(value: Any) -> str:
    return base64.urlsafe_b64encode(json.dumps(value).encode()).rstrip(b"=").decode()


@pytest.mark.parametrize(
    ("token", "error", "description"),
    [
        ("x" * 9000, errors.InvalidRequest, "the GCP ID token is larger than 8192 characters"),
        ("abc", errors.InvalidGrant, "the GCP ID token is not a JWT"),
        ("a.b", errors.InvalidGrant, "the GCP ID token is not a JWT"),
        ("a+b.c.d", errors.InvalidGrant, "the GCP ID token is not a JWT"),
        ("a.b.c", errors.InvalidGrant, "the GCP ID token is not a JWT"),
        (
            f"{b64({'alg': 'none'})}.{b64({})}.x",
            errors.InvalidGrant,
            "the GCP ID token's algorithm 'none' is not allowed; Google signs with RS256",
        ),
        (
            f"{b64({'alg': 'HS256', 'kid': 'k'})}.{b64({})}.x",
            errors.InvalidGrant,
            "the GCP ID token's algorithm 'HS256' is not allowed; Google signs with RS256",
        ),
        (
            f"{b64({'alg': 'ES256', 'kid': 'k'})}.{b64({})}.x",
            errors.InvalidGrant,
            "the GCP ID token's algorithm 'ES256' is not allowed; Google signs with RS256",
        ),
        (
            f"{b64(['alg'])}.{b64({})}.x",
            errors.InvalidGrant,
            "the GCP ID token's algorithm None is not allowed; Google signs with RS256",
        ),
    ],
)
def test_token_shape_gate(token: str, error: type[errors.OAuthError], description: str) -> None:
    with pytest.raises(error) as caught:
        gcp.check_token_shape(token)
    assert caught.value.description == description


def test_rs256_passes_the_shape_gate() -> None:
    gcp.check_token_shape(f"{b64({'alg': 'RS256', 'kid': 'k'})}.{b64({})}.sig")


@pytest.mark.parametrize(
    ("message", "description"),
    [
        ("Token expired, 1 < 2", "the GCP ID token has expired"),
        ("Token used too early, 3 < 4. Check ...", "the GCP ID token is not valid yet"),
        (
            "Token has wrong audience x, expected one of [y]",
            gcp.WRONG_AUDIENCE_DESCRIPTION,
        ),
        ("Could not verify token signature.", "the GCP ID token's signature is invalid"),
        ("Certificate for key id k not found.", gcp.UNKNOWN_KEY_DESCRIPTION),
        ("something new", "the GCP ID token failed verification"),
    ],
)
def test_google_auth_messages_become_stable_descriptions(message: str, description: str) -> None:
    assert gcp.describe_google_auth_error(message) == description


def test_bound_audience_is_the_issuer_and_the_key_thumbprint() -> None:
    assert gcp.bound_audience(ISSUER + "/", SIGNER_JKT) == AUDIENCE
