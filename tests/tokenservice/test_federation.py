"""The federation adapter end to end: SDK-built subject tokens -> adapter -> loopback clouds.

AWS: requests are signed by botocore (through ``agentauth.sdk.aws``) and forwarded by the
adapter to a loopback STS that recomputes SigV4 with botocore's signer, so tampering is caught
by the same check AWS makes. GCP: ID tokens come from a loopback metadata server (through
``agentauth.sdk.gcp``) signed with a test RSA key, and are verified by google-auth's real
``id_token.verify_token`` against a loopback certs endpoint.
"""

from __future__ import annotations

import asyncio
import base64
import datetime
import hashlib
import hmac
import json
import socket
import time
import urllib.parse
from collections.abc import AsyncIterator, Iterator
from typing import Any

import aiohttp
import aiohttp.test_utils
import botocore.session
import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519

from agentauth.domain import errors, exchanging, keys, signatures, tokens
from agentauth.domain.federation import aws, gcp, matching
from agentauth.domain.models import Agent, CapabilityGrant
from agentauth.sdk import aws as sdk_aws
from agentauth.sdk import gcp as sdk_gcp
from agentauth.tokenservice import app as ts_app
from agentauth.tokenservice import federation
from agentauth.tokenservice import settings as ts_settings
from agentauth.tokenservice import state as ts_state
from tests.domain.federation import policies
from tests.domain.federation.loopback_clouds import (
    KEY_THUMBPRINT,
    AwsPrincipal,
    LoopbackGoogle,
    LoopbackSts,
    google_id_token,
    make_google_key,
    serving,
    signed_sts_token,
)

ISSUER = "https://agentauth.example.com"
BOUND_AUDIENCE = f"{ISSUER}#jkt={KEY_THUMBPRINT}"
"""The audience a GCP ID token for a request signed with the ``KEY_THUMBPRINT`` key carries."""
ROLE_PRINCIPAL = AwsPrincipal(
    access_key_id="ASIATESTROLE0000001",
    secret_access_key="role-secret-key-for-tests-only",
    arn="arn:aws:sts::123456789012:assumed-role/research-agent/i-0abc",
    account="123456789012",
)
USER_PRINCIPAL = AwsPrincipal(
    access_key_id="AKIATESTUSER0000001",
    secret_access_key="user-secret-key-for-tests-only",
    arn="arn:aws:iam::123456789012:user/alice",
    account="123456789012",
)
REDIRECTING = AwsPrincipal(
    "ASIATESTREDIRECT001", "s", ROLE_PRINCIPAL.arn, "123456789012", "redirect"
)
HUGE = AwsPrincipal("ASIATESTHUGEANSWER1", "s", ROLE_PRINCIPAL.arn, "123456789012", "huge")
FAILING = AwsPrincipal("ASIATESTSTSFAILS001", "s", ROLE_PRINCIPAL.arn, "123456789012", "error500")


@pytest.fixture(scope="module")
def sts() -> Iterator[LoopbackSts]:
    server = LoopbackSts()
    for principal in (ROLE_PRINCIPAL, USER_PRINCIPAL, REDIRECTING, HUGE, FAILING):
        server.add(principal)
    with serving(server.server):
        yield server


@pytest.fixture(scope="module")
def attacker() -> Iterator[LoopbackSts]:
    """A second server standing in for an attacker's host: it must never be contacted."""
    server = LoopbackSts()
    with serving(server.server):
        yield server


@pytest.fixture
def settings(sts: LoopbackSts) -> federation.FederationSettings:
    return federation.FederationSettings(
        issuer=ISSUER, aws_sts_test_endpoint=sts.url, aws_sts_timeout_seconds=5
    )


def botocore_session(principal: AwsPrincipal) -> Any:
    session = botocore.session.Session()
    session.set_credentials(principal.access_key_id, principal.secret_access_key)
    return session


def sdk_token(
    principal: AwsPrincipal,
    sts: LoopbackSts,
    issuer: str = ISSUER,
    key_thumbprint: str = KEY_THUMBPRINT,
) -> str:
    return sdk_aws.aws_subject_token(
        issuer=issuer,
        key_thumbprint=key_thumbprint,
        session=botocore_session(principal),
        endpoint_url=sts.url,
    )


async def exchange_aws(token: str, settings: federation.FederationSettings) -> Any:
    return await federation.verify_aws_subject_token(
        token,
        settings=settings,
        replay_cache=aws.InMemoryReplayCache(),
        signer_jkt=KEY_THUMBPRINT,
    )


async def assert_aws_error(
    token: str,
    settings: federation.FederationSettings,
    error: type[errors.OAuthError],
    description: str,
) -> None:
    with pytest.raises(error) as caught:
        await exchange_aws(token, settings)
    assert caught.value.description == description


def encoded(envelope: dict[str, Any]) -> str:
    return aws.encode_subject_token(**envelope)


# --- AWS -------------------------------------------------------------------------------------


async def test_sdk_token_is_verified_by_sts_and_matched_to_its_agent(
    sts: LoopbackSts, settings: federation.FederationSettings
) -> None:
    identity = await exchange_aws(sdk_token(ROLE_PRINCIPAL, sts), settings)
    assert identity == matching.FederatedIdentity(
        provider="aws",
        principal="arn:aws:iam::123456789012:role/research-agent",
        account="123456789012",
        subject=ROLE_PRINCIPAL.arn,
    )
    agents = [
        Agent.model_validate(
            {
                "metadata": {"name": "researcher", "namespace": "agents"},
                "spec": {"federation": {"aws": {"roleArns": [identity.principal]}}},
            }
        )
    ]
    assert (
        matching.match_agent(
            identity, agents, policy=policies.allowing("agents", "n")
        ).metadata.name
        == "researcher"
    )


async def test_the_same_signed_request_cannot_be_used_twice(
    sts: LoopbackSts, settings: federation.FederationSettings
) -> None:
    token = sdk_token(ROLE_PRINCIPAL, sts)
    cache = aws.InMemoryReplayCache()
    await federation.verify_aws_subject_token(
        token, settings=settings, replay_cache=cache, signer_jkt=KEY_THUMBPRINT
    )
    before = sts.requests_received
    with pytest.raises(errors.InvalidGrant) as caught:
        await federation.verify_aws_subject_token(
            token, settings=settings, replay_cache=cache, signer_jkt=KEY_THUMBPRINT
        )
    assert caught.value.description == "the AWS signed request has already been used"
    assert sts.requests_received == before  # refused before forwarding


async def test_concurrent_replays_admit_exactly_one(
    sts: LoopbackSts, settings: federation.FederationSettings
) -> None:
    token = sdk_token(ROLE_PRINCIPAL, sts)
    cache = aws.InMemoryReplayCache()
    results = await asyncio.gather(
        *(
            federation.verify_aws_subject_token(
                token, settings=settings, replay_cache=cache, signer_jkt=KEY_THUMBPRINT
            )
            for _ in range(5)
        ),
        return_exceptions=True,
    )
    assert sum(isinstance(r, matching.FederatedIdentity) for r in results) == 1
    assert sum(isinstance(r, errors.InvalidGrant) for r in results) == 4


async def test_tampered_body_is_caught_by_the_sigv4_check(
    sts: LoopbackSts, settings: federation.FederationSettings
) -> None:
    envelope = aws.decode_subject_token(sdk_token(ROLE_PRINCIPAL, sts))
    # Still a valid GetCallerIdentity for the domain, but not the bytes that were signed.
    envelope["body"] = "Version=2011-06-15&Action=GetCallerIdentity"
    await assert_aws_error(
        encoded(envelope),
        settings,
        errors.InvalidGrant,
        "AWS STS rejected the signed request: SignatureDoesNotMatch (HTTP 403)",
    )


async def test_server_id_rewritten_after_signing_is_caught_by_the_sigv4_check(
    sts: LoopbackSts, settings: federation.FederationSettings
) -> None:
    envelope = aws.decode_subject_token(
        sdk_token(ROLE_PRINCIPAL, sts, issuer="https://other.example")
    )
    envelope["headers"]["X-AgentAuth-Server-ID"] = ISSUER
    await assert_aws_error(
        encoded(envelope),
        settings,
        errors.InvalidGrant,
        "AWS STS rejected the signed request: SignatureDoesNotMatch (HTTP 403)",
    )


async def test_wrong_secret_key_is_caught_by_the_sigv4_check(
    sts: LoopbackSts, settings: federation.FederationSettings
) -> None:
    forged = AwsPrincipal(ROLE_PRINCIPAL.access_key_id, "guessed", ROLE_PRINCIPAL.arn, "1")
    await assert_aws_error(
        sdk_token(forged, sts),
        settings,
        errors.InvalidGrant,
        "AWS STS rejected the signed request: SignatureDoesNotMatch (HTTP 403)",
    )


async def test_requests_sts_refuses_are_not_remembered(
    sts: LoopbackSts, settings: federation.FederationSettings
) -> None:
    """Made-up signatures cost nothing to produce: they must not fill the replay cache."""
    forged = AwsPrincipal(ROLE_PRINCIPAL.access_key_id, "guessed", ROLE_PRINCIPAL.arn, "1")
    cache = aws.InMemoryReplayCache()
    for _ in range(3):
        with pytest.raises(errors.InvalidGrant):
            await federation.verify_aws_subject_token(
                sdk_token(forged, sts),
                settings=settings,
                replay_cache=cache,
                signer_jkt=KEY_THUMBPRINT,
            )
    assert len(cache) == 0
    await federation.verify_aws_subject_token(
        sdk_token(ROLE_PRINCIPAL, sts),
        settings=settings,
        replay_cache=cache,
        signer_jkt=KEY_THUMBPRINT,
    )
    assert len(cache) == 1


async def test_token_for_another_server(
    sts: LoopbackSts, settings: federation.FederationSettings
) -> None:
    await assert_aws_error(
        sdk_token(ROLE_PRINCIPAL, sts, issuer="https://other.example"),
        settings,
        errors.InvalidGrant,
        "the AWS signed request's X-AgentAuth-Server-ID header does not name this issuer",
    )


async def test_unsigned_server_id_header(
    sts: LoopbackSts, settings: federation.FederationSettings
) -> None:
    envelope = signed_sts_token(ROLE_PRINCIPAL, url=sts.url, issuer=None)
    envelope["headers"]["X-AgentAuth-Server-ID"] = ISSUER
    await assert_aws_error(
        encoded(envelope),
        settings,
        errors.InvalidGrant,
        "the AWS signed request does not sign the 'x-agentauth-server-id' header",
    )


async def test_other_sts_actions_are_refused_before_forwarding(
    sts: LoopbackSts, settings: federation.FederationSettings
) -> None:
    envelope = signed_sts_token(
        ROLE_PRINCIPAL,
        url=sts.url,
        issuer=ISSUER,
        body="Action=AssumeRole&Version=2011-06-15&RoleArn=arn%3Aaws%3Aiam%3A%3A1%3Arole%2Fadmin",
    )
    before = sts.requests_received
    await assert_aws_error(
        encoded(envelope),
        settings,
        errors.InvalidGrant,
        "only the AWS STS action GetCallerIdentity is accepted",
    )
    assert sts.requests_received == before


async def test_stale_date(sts: LoopbackSts, settings: federation.FederationSettings) -> None:
    at = datetime.datetime.now(datetime.UTC) - datetime.timedelta(minutes=2)
    envelope = signed_sts_token(ROLE_PRINCIPAL, url=sts.url, issuer=ISSUER, at=at)
    await assert_aws_error(
        encoded(envelope),
        settings,
        errors.InvalidGrant,
        "the AWS signed request's X-Amz-Date is more than 60 seconds old; sign a fresh request "
        "for each exchange",
    )


async def test_thumbprint_rewritten_after_signing_is_caught_by_the_sigv4_check(
    sts: LoopbackSts,
) -> None:
    """An attacker cannot re-point a captured request at its own key: STS refuses the edit."""
    envelope = aws.decode_subject_token(sdk_token(ROLE_PRINCIPAL, sts))
    envelope["headers"]["X-AgentAuth-Key-Thumbprint"] = "an-attackers-key-thumbprint"
    with pytest.raises(errors.InvalidGrant) as caught:
        await federation.verify_aws_subject_token(
            encoded(envelope),
            settings=federation.FederationSettings(issuer=ISSUER, aws_sts_test_endpoint=sts.url),
            replay_cache=aws.InMemoryReplayCache(),
            signer_jkt="an-attackers-key-thumbprint",
        )
    assert caught.value.description == (
        "AWS STS rejected the signed request: SignatureDoesNotMatch (HTTP 403)"
    )


@pytest.mark.parametrize(
    ("url_template", "description"),
    [
        (
            "http://169.254.169.254/",
            "the AWS signed request's URL host '169.254.169.254' is not an allowed AWS STS "
            "endpoint",
        ),
        (
            "{attacker}",
            "the AWS signed request's URL host '127.0.0.1' is not an allowed AWS STS endpoint",
        ),
        ("http://u@{sts_netloc}/", "the AWS signed request's URL must not contain userinfo"),
        ("http://sts.amazonaws.com/", "the AWS signed request's URL must use https"),
        ("{sts}other", "the AWS signed request's URL path must be '/'"),
    ],
)
async def test_ssrf_urls_are_refused_and_nothing_is_contacted(
    sts: LoopbackSts,
    attacker: LoopbackSts,
    settings: federation.FederationSettings,
    url_template: str,
    description: str,
) -> None:
    url = url_template.format(attacker=attacker.url, sts=sts.url, sts_netloc=sts.url.split("/")[2])
    envelope = signed_sts_token(ROLE_PRINCIPAL, url=url, issuer=ISSUER)
    before = sts.requests_received
    await assert_aws_error(encoded(envelope), settings, errors.InvalidGrant, description)
    assert attacker.requests_received == 0
    assert sts.requests_received == before


async def test_iam_user_credentials_are_refused(
    sts: LoopbackSts, settings: federation.FederationSettings
) -> None:
    await assert_aws_error(
        sdk_token(USER_PRINCIPAL, sts),
        settings,
        errors.InvalidGrant,
        "the AWS caller 'arn:aws:iam::123456789012:user/alice' is not an assumed IAM role; "
        "only IAM roles can be federated",
    )


async def test_sts_redirects_are_not_followed(
    sts: LoopbackSts, settings: federation.FederationSettings
) -> None:
    await assert_aws_error(
        sdk_token(REDIRECTING, sts),
        settings,
        errors.InvalidGrant,
        "AWS STS answered a redirect, which is never followed",
    )


async def test_sts_answers_are_size_bounded(
    sts: LoopbackSts, settings: federation.FederationSettings
) -> None:
    await assert_aws_error(
        sdk_token(HUGE, sts),
        settings,
        errors.InvalidGrant,
        "AWS STS answered more than 65536 bytes; refusing to read it",
    )


async def test_sts_failure_is_temporarily_unavailable(
    sts: LoopbackSts, settings: federation.FederationSettings
) -> None:
    await assert_aws_error(
        sdk_token(FAILING, sts),
        settings,
        errors.TemporarilyUnavailable,
        "AWS STS failed with HTTP 500; retry later",
    )


async def test_unreachable_sts_is_temporarily_unavailable(sts: LoopbackSts) -> None:
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{probe.getsockname()[1]}/"
    settings = federation.FederationSettings(issuer=ISSUER, aws_sts_test_endpoint=dead)
    token = sdk_aws.aws_subject_token(
        issuer=ISSUER,
        key_thumbprint=KEY_THUMBPRINT,
        session=botocore_session(ROLE_PRINCIPAL),
        endpoint_url=dead,
    )
    await assert_aws_error(
        token,
        settings,
        errors.TemporarilyUnavailable,
        "AWS STS is unreachable (ClientConnectorError); retry later",
    )


async def test_garbage_subject_token_is_invalid_request(
    settings: federation.FederationSettings,
) -> None:
    await assert_aws_error(
        "%%%", settings, errors.InvalidRequest, "the AWS signed request is not base64url"
    )


# --- GCP -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def google() -> Iterator[LoopbackGoogle]:
    server = LoopbackGoogle(make_google_key("key-1"))
    with serving(server.server):
        yield server


@pytest.fixture
def gcp_settings(google: LoopbackGoogle) -> federation.FederationSettings:
    return federation.FederationSettings(issuer=ISSUER, gcp_certs_url=google.certs_url)


@pytest.fixture(scope="module")
def other_key() -> Any:
    return make_google_key("key-1")  # same kid, different key: a forgery


async def assert_gcp_error(
    token: str,
    settings: federation.FederationSettings,
    error: type[errors.OAuthError],
    description: str,
) -> None:
    with pytest.raises(error) as caught:
        await federation.verify_gcp_subject_token(
            token, settings=settings, signer_jkt=KEY_THUMBPRINT
        )
    assert caught.value.description == description


async def test_metadata_server_token_verifies_and_matches(
    google: LoopbackGoogle, gcp_settings: federation.FederationSettings
) -> None:
    token = await asyncio.to_thread(
        sdk_gcp.gcp_subject_token,
        issuer=ISSUER,
        key_thumbprint=KEY_THUMBPRINT,
        metadata_host=google.host,
    )
    identity = await federation.verify_gcp_subject_token(
        token, settings=gcp_settings, signer_jkt=KEY_THUMBPRINT
    )
    assert identity == matching.FederatedIdentity(
        provider="gcp",
        principal="agent@research-prod.iam.gserviceaccount.com",
        account="research-prod",
        subject="113374962155467358263",
    )
    agents = [
        Agent.model_validate(
            {
                "metadata": {"name": "vm-agent", "namespace": "agents"},
                "spec": {
                    "federation": {
                        "gcp": {
                            "serviceAccounts": ["agent@research-prod.iam.gserviceaccount.com"],
                            "projectIds": ["research-prod"],
                        }
                    }
                },
            }
        )
    ]
    assert (
        matching.match_agent(
            identity, agents, policy=policies.allowing("agents", "n")
        ).metadata.name
        == "vm-agent"
    )


async def test_certs_are_cached_across_verifications(google: LoopbackGoogle) -> None:
    # A certs URL no other test uses, so this test owns its cache entry.
    settings = federation.FederationSettings(
        issuer=ISSUER, gcp_certs_url=google.certs_url + "?cache-test"
    )
    before = google.certs_fetches
    for _ in range(5):
        await federation.verify_gcp_subject_token(
            google_id_token(google.signing_key, aud=BOUND_AUDIENCE),
            settings=settings,
            signer_jkt=KEY_THUMBPRINT,
        )
    assert google.certs_fetches - before == 1


async def test_a_rotated_google_key_is_fetched_once_on_an_unknown_kid(
    google: LoopbackGoogle,
) -> None:
    settings = federation.FederationSettings(
        issuer=ISSUER,
        gcp_certs_url=google.certs_url + "?rotation-test",
        gcp_certs_min_refetch_seconds=0,
    )
    await federation.verify_gcp_subject_token(
        google_id_token(google.signing_key, aud=BOUND_AUDIENCE),
        settings=settings,
        signer_jkt=KEY_THUMBPRINT,
    )
    rotated = make_google_key("key-2")
    google.published_keys.append(rotated)
    before = google.certs_fetches
    try:
        identity = await federation.verify_gcp_subject_token(
            google_id_token(rotated, aud=BOUND_AUDIENCE),
            settings=settings,
            signer_jkt=KEY_THUMBPRINT,
        )
    finally:
        google.published_keys.remove(rotated)
    assert identity.principal == "agent@research-prod.iam.gserviceaccount.com"
    assert google.certs_fetches - before == 1


async def test_unknown_kids_do_not_refetch_within_the_minimum_interval(
    google: LoopbackGoogle,
) -> None:
    settings = federation.FederationSettings(
        issuer=ISSUER, gcp_certs_url=google.certs_url + "?refetch-limit-test"
    )
    await federation.verify_gcp_subject_token(
        google_id_token(google.signing_key, aud=BOUND_AUDIENCE),
        settings=settings,
        signer_jkt=KEY_THUMBPRINT,
    )
    before = google.certs_fetches
    for kid in ("made-up-1", "made-up-2"):
        await assert_gcp_error(
            google_id_token(make_google_key(kid), aud=BOUND_AUDIENCE),
            settings,
            errors.InvalidGrant,
            "the GCP ID token is signed by an unknown Google key",
        )
    assert google.certs_fetches == before


async def test_wrong_audience(
    google: LoopbackGoogle, gcp_settings: federation.FederationSettings
) -> None:
    token = await asyncio.to_thread(
        sdk_gcp.gcp_subject_token,
        issuer="https://other.example",
        key_thumbprint=KEY_THUMBPRINT,
        metadata_host=google.host,
    )
    await assert_gcp_error(token, gcp_settings, errors.InvalidGrant, gcp.WRONG_AUDIENCE_DESCRIPTION)


async def test_id_token_is_bound_to_the_key_that_signs_the_request(
    google: LoopbackGoogle, gcp_settings: federation.FederationSettings
) -> None:
    """A captured ID token is useless with another key (issue 14, replay across replicas)."""
    token = google_id_token(google.signing_key, aud=BOUND_AUDIENCE)
    with pytest.raises(errors.InvalidGrant) as caught:
        await federation.verify_gcp_subject_token(
            token, settings=gcp_settings, signer_jkt="an-attackers-key-thumbprint"
        )
    assert caught.value.description == gcp.WRONG_AUDIENCE_DESCRIPTION
    with pytest.raises(errors.InvalidGrant) as caught:
        await federation.verify_gcp_subject_token(token, settings=gcp_settings, signer_jkt=None)
    assert caught.value.description == (
        "the token request must be signed (RFC 9421) by the key the GCP ID token's audience names"
    )
    unbound = google_id_token(google.signing_key, aud=ISSUER)  # the pre-binding audience
    await assert_gcp_error(
        unbound, gcp_settings, errors.InvalidGrant, gcp.WRONG_AUDIENCE_DESCRIPTION
    )


async def test_expired(google: LoopbackGoogle, gcp_settings: federation.FederationSettings) -> None:
    now = int(time.time())
    token = google_id_token(google.signing_key, aud=BOUND_AUDIENCE, iat=now - 7200, exp=now - 3600)
    await assert_gcp_error(token, gcp_settings, errors.InvalidGrant, "the GCP ID token has expired")


async def test_not_yet_valid(
    google: LoopbackGoogle, gcp_settings: federation.FederationSettings
) -> None:
    now = int(time.time())
    token = google_id_token(google.signing_key, aud=BOUND_AUDIENCE, iat=now + 600, exp=now + 3600)
    await assert_gcp_error(
        token, gcp_settings, errors.InvalidGrant, "the GCP ID token is not valid yet"
    )


async def test_forged_signature(
    google: LoopbackGoogle, gcp_settings: federation.FederationSettings, other_key: Any
) -> None:
    token = google_id_token(other_key, aud=BOUND_AUDIENCE)
    await assert_gcp_error(
        token, gcp_settings, errors.InvalidGrant, "the GCP ID token's signature is invalid"
    )


async def test_tampered_payload(
    google: LoopbackGoogle, gcp_settings: federation.FederationSettings
) -> None:
    header, payload, signature = google_id_token(google.signing_key, aud=BOUND_AUDIENCE).split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=="))
    claims["email"] = "admin@research-prod.iam.gserviceaccount.com"
    forged = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    await assert_gcp_error(
        f"{header}.{forged}.{signature}",
        gcp_settings,
        errors.InvalidGrant,
        "the GCP ID token's signature is invalid",
    )


async def test_unknown_key_id(
    google: LoopbackGoogle, gcp_settings: federation.FederationSettings
) -> None:
    token = google_id_token(make_google_key("key-unknown"), aud=BOUND_AUDIENCE)
    await assert_gcp_error(
        token,
        gcp_settings,
        errors.InvalidGrant,
        "the GCP ID token is signed by an unknown Google key",
    )


async def test_unverified_email(
    google: LoopbackGoogle, gcp_settings: federation.FederationSettings
) -> None:
    token = google_id_token(google.signing_key, aud=BOUND_AUDIENCE, email_verified=False)
    await assert_gcp_error(
        token, gcp_settings, errors.InvalidGrant, "the GCP ID token's email is not verified"
    )


async def test_not_issued_by_google(
    google: LoopbackGoogle, gcp_settings: federation.FederationSettings
) -> None:
    token = google_id_token(google.signing_key, aud=BOUND_AUDIENCE, iss="https://evil.example")
    await assert_gcp_error(
        token, gcp_settings, errors.InvalidGrant, "the GCP ID token is not issued by Google"
    )


async def test_hs256_with_the_certificate_as_secret(
    google: LoopbackGoogle, gcp_settings: federation.FederationSettings
) -> None:
    # Built by hand: PyJWT itself refuses a certificate as an HMAC secret.
    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    header = b64(json.dumps({"alg": "HS256", "kid": "key-1"}).encode())
    claims = {
        "iss": "https://accounts.google.com",
        "aud": BOUND_AUDIENCE,
        "exp": int(time.time()) + 60,
    }
    signing_input = f"{header}.{b64(json.dumps(claims).encode())}"
    secret = google.signing_key.certificate_pem.encode()
    mac = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    token = f"{signing_input}.{b64(mac)}"
    await assert_gcp_error(
        token,
        gcp_settings,
        errors.InvalidGrant,
        "the GCP ID token's algorithm 'HS256' is not allowed; Google signs with RS256",
    )


@pytest.mark.parametrize(
    ("rules", "description"),
    [
        (
            {"serviceAccounts": ["someone-else@research-prod.iam.gserviceaccount.com"]},
            "no Agent's spec.federation admits GCP service account "
            "agent@research-prod.iam.gserviceaccount.com in project research-prod (that the "
            "cluster's claim policy allows its namespace to claim)",
        ),
        (
            {
                "serviceAccounts": ["agent@research-prod.iam.gserviceaccount.com"],
                "projectIds": ["research-dev"],
            },
            "no Agent's spec.federation admits GCP service account "
            "agent@research-prod.iam.gserviceaccount.com in project research-prod (that the "
            "cluster's claim policy allows its namespace to claim)",
        ),
    ],
)
async def test_unlisted_service_account_or_project(
    google: LoopbackGoogle,
    gcp_settings: federation.FederationSettings,
    rules: dict[str, Any],
    description: str,
) -> None:
    token = google_id_token(google.signing_key, aud=BOUND_AUDIENCE)
    identity = await federation.verify_gcp_subject_token(
        token, settings=gcp_settings, signer_jkt=KEY_THUMBPRINT
    )
    agents = [
        Agent.model_validate(
            {"metadata": {"name": "a", "namespace": "n"}, "spec": {"federation": {"gcp": rules}}}
        )
    ]
    with pytest.raises(errors.InvalidGrant) as caught:
        matching.match_agent(identity, agents, policy=policies.allowing("agents", "n"))
    assert caught.value.description == description


async def test_unreachable_certs_endpoint_is_temporarily_unavailable() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{probe.getsockname()[1]}/oauth2/v1/certs"
    settings = federation.FederationSettings(
        issuer=ISSUER, gcp_certs_url=dead, gcp_certs_timeout_seconds=2
    )
    token = google_id_token(make_google_key("k"), aud=BOUND_AUDIENCE)
    await assert_gcp_error(
        token,
        settings,
        errors.TemporarilyUnavailable,
        "cannot fetch Google's ID-token certificates; retry later",
    )


def test_a_malformed_test_endpoint_fails_at_settings_construction() -> None:
    with pytest.raises(ValueError, match="the AWS STS test endpoint must be an http"):
        federation.FederationSettings(issuer=ISSUER, aws_sts_test_endpoint="http://a/b")


# --- through the token endpoint ---------------------------------------------------------------


def _agent(name: str, federation_spec: dict[str, Any], suspended: bool = False) -> Agent:
    return Agent.model_validate(
        {
            "metadata": {"name": name, "namespace": "agents", "uid": f"uid-{name}"},
            "spec": {"federation": federation_spec, "suspended": suspended},
        }
    )


@pytest.fixture
async def token_endpoint(
    sts: LoopbackSts, google: LoopbackGoogle
) -> AsyncIterator[tuple[aiohttp.ClientSession, Any]]:
    """The real token-service app over in-memory state, on loopback."""
    now = datetime.datetime.now(datetime.UTC)
    agents = {
        ("agents", "researcher"): _agent(
            "researcher",
            {"aws": {"roleArns": ["arn:aws:iam::123456789012:role/research-*"]}},
        ),
        ("agents", "vm-agent"): _agent(
            "vm-agent",
            {"gcp": {"serviceAccounts": ["agent@research-prod.iam.gserviceaccount.com"]}},
        ),
    }
    grant = CapabilityGrant.model_validate(
        {
            "metadata": {"name": "reading", "namespace": "agents"},
            "spec": {
                "agents": {"names": ["researcher", "vm-agent"]},
                "capabilities": [{"name": "document.read"}],
            },
        }
    )
    state = ts_state.MemoryState(
        snapshot=exchanging.Snapshot(agents=agents, grants=[grant]),
        keyset=keys.generate_keyset(now=now),
    )
    app = ts_app.build_app(
        settings=ts_settings.Settings(
            issuer=ISSUER,
            aws_sts_test_endpoint=sts.url,
            gcp_certs_url=google.certs_url,
            claim_policy=policies.allowing("agents"),
        ),
        state=state,
    )
    server = aiohttp.test_utils.TestServer(app, host="127.0.0.1")
    await server.start_server()
    async with aiohttp.ClientSession(base_url=str(server.make_url("/"))) as http:
        yield http, state
    await server.close()


HTTP_KEY = ed25519.Ed25519PrivateKey.generate()
"""The key the HTTP tests sign their token requests with (RFC 9421, as the SDK does)."""
HTTP_JKT = signatures.jwk_thumbprint(signatures.public_jwk(HTTP_KEY))


async def _exchange(
    http: aiohttp.ClientSession,
    token: str,
    token_type: str,
    key: ed25519.Ed25519PrivateKey | None = HTTP_KEY,
) -> Any:
    body = urllib.parse.urlencode(
        {
            "grant_type": "urn:ietf:params:oauth:grant-type:token-exchange",
            "subject_token": token,
            "subject_token_type": token_type,
        }
    ).encode()
    headers = {"Content-Type": "application/x-www-form-urlencoded"}
    if key is not None:
        headers.update(
            signatures.sign_request(
                method="POST",
                url=f"{ISSUER}/oauth2/token",
                headers=headers,
                body=body,
                private_key=key,
                signature_key_header=signatures.signature_key_hwk(key),
            )
        )
    async with http.post("/oauth2/token", data=body, headers=headers) as response:
        return response.status, await response.json()


async def test_aws_exchange_over_http_issues_an_agent_token(
    sts: LoopbackSts, token_endpoint: tuple[aiohttp.ClientSession, Any]
) -> None:
    http, state = token_endpoint
    token = sdk_token(ROLE_PRINCIPAL, sts, key_thumbprint=HTTP_JKT)
    status, body = await _exchange(http, token, aws.SUBJECT_TOKEN_TYPE)
    assert status == 200, body
    claims = tokens.verify(
        body["access_token"],
        public_keys=state.keyset().public_keys(),
        issuer=ISSUER,
        now=datetime.datetime.now(datetime.UTC),
    )
    assert claims.claims["agent"]["name"] == "researcher"
    assert claims.subject == "aauth:researcher.agents@agentauth.example.com"
    assert claims.claims["cnf"]["jkt"] == HTTP_JKT  # bound to the key it names
    assert body["scope"] == "document.read"
    # Presented by another key, or unsigned: refused before STS is asked.
    before = sts.requests_received
    status, body = await _exchange(
        http, token, aws.SUBJECT_TOKEN_TYPE, key=ed25519.Ed25519PrivateKey.generate()
    )
    assert (status, body["error_description"]) == (
        400,
        "the token request is not signed by the key the AWS signed request names in "
        "X-AgentAuth-Key-Thumbprint",
    )
    status, body = await _exchange(http, token, aws.SUBJECT_TOKEN_TYPE, key=None)
    assert (status, body["error_description"]) == (
        400,
        "the token request must be signed (RFC 9421) by the key the AWS signed request names "
        "in X-AgentAuth-Key-Thumbprint",
    )
    assert sts.requests_received == before
    # The same signed request again, in a fresh signature: refused by the replay cache.
    status, body = await _exchange(http, token, aws.SUBJECT_TOKEN_TYPE)
    assert (status, body) == (
        400,
        {
            "error": "invalid_grant",
            "error_description": "the AWS signed request has already been used",
        },
    )


async def test_gcp_exchange_over_http_issues_an_agent_token(
    google: LoopbackGoogle, token_endpoint: tuple[aiohttp.ClientSession, Any]
) -> None:
    http, _ = token_endpoint
    token = await asyncio.to_thread(
        sdk_gcp.gcp_subject_token,
        issuer=ISSUER,
        key_thumbprint=HTTP_JKT,
        metadata_host=google.host,
    )
    status, body = await _exchange(http, token, "urn:ietf:params:oauth:token-type:id_token")
    assert status == 200, body
    assert body["scope"] == "document.read"
    status, body = await _exchange(
        http,
        token,
        "urn:ietf:params:oauth:token-type:id_token",
        key=ed25519.Ed25519PrivateKey.generate(),
    )
    assert (status, body["error_description"]) == (400, gcp.WRONG_AUDIENCE_DESCRIPTION)


async def test_unclaimed_identity_over_http_is_invalid_grant(
    google: LoopbackGoogle, token_endpoint: tuple[aiohttp.ClientSession, Any]
) -> None:
    http, _ = token_endpoint
    token = google_id_token(
        google.signing_key,
        aud=f"{ISSUER}#jkt={HTTP_JKT}",
        email="stranger@elsewhere.iam.gserviceaccount.com",
    )
    status, body = await _exchange(http, token, "urn:ietf:params:oauth:token-type:id_token")
    assert (status, body) == (
        400,
        {
            "error": "invalid_grant",
            "error_description": "no Agent's spec.federation admits GCP service account "
            "stranger@elsewhere.iam.gserviceaccount.com in project research-prod (that the "
            "cluster's claim policy allows its namespace to claim)",
        },
    )
