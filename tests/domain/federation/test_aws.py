"""Validation of AWS signed GetCallerIdentity requests before anything is forwarded (pure).

Requests are signed by botocore's real SigV4 signer; each bad input asserts the exact error.
The STS round trip (signature checking, tampering) is in tests/tokenservice/test_federation.py.
"""

from __future__ import annotations

import base64
import datetime
import json
from typing import Any

import pytest

from agentauth.domain import clockskew, errors
from agentauth.domain.federation import aws
from tests.domain.federation.loopback_clouds import (
    KEY_THUMBPRINT,
    AwsPrincipal,
    signed_sts_token,
)

ISSUER = "https://agentauth.example.com"
GLOBAL_STS = "https://sts.amazonaws.com/"
TEST_ENDPOINT = "http://127.0.0.1:4566/"
PRINCIPAL = AwsPrincipal(
    access_key_id="AKIAIOSFODNN7EXAMPLE",
    secret_access_key="wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
    arn="arn:aws:sts::123456789012:assumed-role/research-agent/i-0abc",
    account="123456789012",
)


def now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def validate(envelope: dict[str, Any], **kwargs: Any) -> aws.SignedStsRequest:
    kwargs.setdefault("test_endpoint", TEST_ENDPOINT)
    kwargs.setdefault("signer_jkt", KEY_THUMBPRINT)
    return aws.validate_signed_request(envelope, issuer=ISSUER, now=now(), **kwargs)


def assert_grant_error(envelope: dict[str, Any], description: str) -> None:
    with pytest.raises(errors.InvalidGrant) as caught:
        validate(envelope)
    assert caught.value.error == "invalid_grant"
    assert caught.value.status == 400
    assert caught.value.description == description


def test_a_botocore_signed_request_validates_and_is_rebuilt_from_validated_parts() -> None:
    envelope = signed_sts_token(PRINCIPAL, url=GLOBAL_STS, issuer=ISSUER)
    request = validate(envelope)
    assert request.url == GLOBAL_STS
    assert request.body == b"Action=GetCallerIdentity&Version=2011-06-15"
    assert request.access_key_id == PRINCIPAL.access_key_id
    assert request.replay_key == envelope["headers"]["Authorization"].rsplit("=", 1)[1]
    assert request.replay_expires_at - request.signed_at == datetime.timedelta(
        seconds=60 + clockskew.LEEWAY_SECONDS
    )
    forwarded = dict(request.headers)
    assert forwarded["X-AgentAuth-Server-ID"] == ISSUER
    assert "Authorization" in forwarded and "X-Amz-Date" in forwarded


@pytest.mark.parametrize(
    "url",
    [
        "https://sts.amazonaws.com/",
        "https://sts.us-east-1.amazonaws.com/",
        "https://sts.eu-west-2.amazonaws.com/",
        "https://sts.us-gov-west-1.amazonaws.com/",
        "https://sts.cn-north-1.amazonaws.com.cn/",
        "https://STS.AMAZONAWS.COM/",
    ],
)
def test_global_and_regional_sts_hosts_are_allowed(url: str) -> None:
    request = validate(signed_sts_token(PRINCIPAL, url=url, issuer=ISSUER))
    assert request.url == url.lower()


def test_the_configured_test_endpoint_is_allowed_over_http() -> None:
    request = validate(signed_sts_token(PRINCIPAL, url=TEST_ENDPOINT, issuer=ISSUER))
    assert request.url == TEST_ENDPOINT


@pytest.mark.parametrize(
    ("url", "description"),
    [
        # SSRF: the link-local instance metadata address.
        (
            "http://169.254.169.254/",
            "the AWS signed request's URL host '169.254.169.254' is not an allowed AWS STS "
            "endpoint",
        ),
        (
            "http://169.254.169.254/latest/meta-data/iam/security-credentials/",
            "the AWS signed request's URL path must be '/'",
        ),
        # SSRF: an attacker's host, including look-alikes of STS.
        (
            "https://attacker.example/",
            "the AWS signed request's URL host 'attacker.example' is not an allowed AWS STS "
            "endpoint",
        ),
        (
            "https://sts.amazonaws.com.attacker.example/",
            "the AWS signed request's URL host 'sts.amazonaws.com.attacker.example' is not an "
            "allowed AWS STS endpoint",
        ),
        (
            "https://evilsts.amazonaws.com/",
            "the AWS signed request's URL host 'evilsts.amazonaws.com' is not an allowed AWS "
            "STS endpoint",
        ),
        (
            "https://sts.amazonaws.com./",
            "the AWS signed request's URL host 'sts.amazonaws.com.' is not an allowed AWS STS "
            "endpoint",
        ),
        (
            "https://s3.amazonaws.com/",
            "the AWS signed request's URL host 's3.amazonaws.com' is not an allowed AWS STS "
            "endpoint",
        ),
        (
            "http://127.0.0.1:4567/",
            "the AWS signed request's URL host '127.0.0.1' is not an allowed AWS STS endpoint",
        ),
        # userinfo, in both directions of the classic parser confusion.
        (
            "https://sts.amazonaws.com@attacker.example/",
            "the AWS signed request's URL must not contain userinfo",
        ),
        (
            "https://user:pw@sts.amazonaws.com/",
            "the AWS signed request's URL must not contain userinfo",
        ),
        (
            "https://sts.amazonaws.com\\@attacker.example/",
            "the AWS signed request's URL is malformed",
        ),
        ("http://sts.amazonaws.com/", "the AWS signed request's URL must use https"),
        ("https://sts.amazonaws.com:8443/", "the AWS signed request's URL must not name a port"),
        ("https://sts.amazonaws.com/other", "the AWS signed request's URL path must be '/'"),
        ("https://sts.amazonaws.com", "the AWS signed request's URL path must be '/'"),
        ("https://sts.amazonaws.com//", "the AWS signed request's URL path must be '/'"),
        (
            "https://sts.amazonaws.com/?Action=AssumeRole",
            "the AWS signed request's URL must not have a query or fragment",
        ),
        (
            "https://sts.amazonaws.com/#x",
            "the AWS signed request's URL must not have a query or fragment",
        ),
        ("https://sts.amazonaws.com/ x", "the AWS signed request's URL is malformed"),
        ("https://[::1/", "the AWS signed request's URL is malformed"),
        ("ftp://sts.amazonaws.com/", "the AWS signed request's URL must use https"),
    ],
)
def test_urls_outside_the_allow_list_are_refused(url: str, description: str) -> None:
    envelope = signed_sts_token(PRINCIPAL, url=GLOBAL_STS, issuer=ISSUER)
    envelope["url"] = url
    assert_grant_error(envelope, description)


def test_the_test_endpoint_is_not_allowed_when_none_is_configured() -> None:
    envelope = signed_sts_token(PRINCIPAL, url=TEST_ENDPOINT, issuer=ISSUER)
    with pytest.raises(errors.InvalidGrant) as caught:
        validate(envelope, test_endpoint=None)
    assert caught.value.description == (
        "the AWS signed request's URL host '127.0.0.1' is not an allowed AWS STS endpoint"
    )


def test_method_must_be_post() -> None:
    envelope = signed_sts_token(PRINCIPAL, url=GLOBAL_STS, issuer=ISSUER, method="GET")
    assert_grant_error(envelope, "the AWS signed request's method must be POST")


@pytest.mark.parametrize(
    ("body", "description"),
    [
        (
            "Action=AssumeRole&Version=2011-06-15&RoleArn=arn%3Aaws%3Aiam%3A%3A1%3Arole%2Fx",
            "only the AWS STS action GetCallerIdentity is accepted",
        ),
        (
            "Action=GetSessionToken&Version=2011-06-15",
            "only the AWS STS action GetCallerIdentity is accepted",
        ),
        ("Version=2011-06-15", "only the AWS STS action GetCallerIdentity is accepted"),
        (
            "Action=GetCallerIdentity&Version=2011-06-15&Action=AssumeRole",
            "the AWS signed request's body repeats a parameter",
        ),
        (
            "Action=GetCallerIdentity&Version=2011-06-15&DurationSeconds=3600",
            "the AWS signed request's body must be exactly Action=GetCallerIdentity and "
            "Version=2011-06-15",
        ),
        (
            "Action=GetCallerIdentity",
            "the AWS signed request's body must be exactly Action=GetCallerIdentity and "
            "Version=2011-06-15",
        ),
        (
            "Action=GetCallerIdentity&&Version=2011-06-15",
            "the AWS signed request's body is not a well-formed form body",
        ),
        (
            "Action=GetCallerIdentity;Version=2011-06-15",
            "the AWS signed request's body is not a well-formed form body",
        ),
        ("A=" + "x" * 2000, "the AWS signed request's body is too large"),
    ],
)
def test_only_a_strict_get_caller_identity_body_is_accepted(body: str, description: str) -> None:
    envelope = signed_sts_token(PRINCIPAL, url=GLOBAL_STS, issuer=ISSUER, body=body)
    assert_grant_error(envelope, description)


def test_parameter_order_is_not_significant_to_the_domain() -> None:
    body = "Version=2011-06-15&Action=GetCallerIdentity"
    request = validate(signed_sts_token(PRINCIPAL, url=GLOBAL_STS, issuer=ISSUER, body=body))
    assert request.body == body.encode()


def test_server_id_header_missing() -> None:
    envelope = signed_sts_token(PRINCIPAL, url=GLOBAL_STS, issuer=None)
    assert_grant_error(envelope, "the AWS signed request has no X-AgentAuth-Server-ID header")


def test_server_id_header_added_after_signing_is_unsigned() -> None:
    envelope = signed_sts_token(PRINCIPAL, url=GLOBAL_STS, issuer=None)
    envelope["headers"]["X-AgentAuth-Server-ID"] = ISSUER
    assert_grant_error(
        envelope, "the AWS signed request does not sign the 'x-agentauth-server-id' header"
    )


def test_server_id_header_for_another_server() -> None:
    envelope = signed_sts_token(PRINCIPAL, url=GLOBAL_STS, issuer="https://other.example.com")
    assert_grant_error(
        envelope, "the AWS signed request's X-AgentAuth-Server-ID header does not name this issuer"
    )


def test_server_id_header_prefix_of_our_issuer_is_not_ours() -> None:
    envelope = signed_sts_token(PRINCIPAL, url=GLOBAL_STS, issuer=ISSUER + ".evil")
    assert_grant_error(
        envelope, "the AWS signed request's X-AgentAuth-Server-ID header does not name this issuer"
    )


def test_x_amz_date_older_than_a_minute_and_the_leeway_is_stale() -> None:
    at = now() - datetime.timedelta(seconds=60 + clockskew.LEEWAY_SECONDS + 2)
    envelope = signed_sts_token(PRINCIPAL, url=GLOBAL_STS, issuer=ISSUER, at=at)
    assert_grant_error(
        envelope,
        "the AWS signed request's X-Amz-Date is more than 60 seconds old; sign a fresh "
        "request for each exchange",
    )


def test_x_amz_date_beyond_the_leeway_in_the_future() -> None:
    at = now() + datetime.timedelta(seconds=clockskew.LEEWAY_SECONDS + 2)
    envelope = signed_sts_token(PRINCIPAL, url=GLOBAL_STS, issuer=ISSUER, at=at)
    assert_grant_error(envelope, "the AWS signed request's X-Amz-Date is in the future")


def test_x_amz_date_within_a_minute_is_fresh() -> None:
    at = now() - datetime.timedelta(seconds=58)
    validate(signed_sts_token(PRINCIPAL, url=GLOBAL_STS, issuer=ISSUER, at=at))


def test_key_thumbprint_header_missing_or_unsigned() -> None:
    envelope = signed_sts_token(PRINCIPAL, url=GLOBAL_STS, issuer=ISSUER, key_thumbprint=None)
    assert_grant_error(envelope, "the AWS signed request has no X-AgentAuth-Key-Thumbprint header")
    envelope["headers"]["X-AgentAuth-Key-Thumbprint"] = KEY_THUMBPRINT
    assert_grant_error(
        envelope, "the AWS signed request does not sign the 'x-agentauth-key-thumbprint' header"
    )


def test_request_is_bound_to_the_key_that_signs_the_token_request() -> None:
    """A captured signed request is useless with another key (issue 14, replay across replicas)."""
    envelope = signed_sts_token(PRINCIPAL, url=GLOBAL_STS, issuer=ISSUER)
    with pytest.raises(errors.InvalidGrant) as caught:
        validate(envelope, signer_jkt="an-attackers-key-thumbprint")
    assert caught.value.description == (
        "the token request is not signed by the key the AWS signed request names in "
        "X-AgentAuth-Key-Thumbprint"
    )
    with pytest.raises(errors.InvalidGrant) as caught:
        validate(envelope, signer_jkt=None)
    assert caught.value.description == (
        "the token request must be signed (RFC 9421) by the key the AWS signed request names "
        "in X-AgentAuth-Key-Thumbprint"
    )


def test_x_amz_date_not_matching_the_credential_scope() -> None:
    envelope = signed_sts_token(PRINCIPAL, url=GLOBAL_STS, issuer=ISSUER)
    authorization = envelope["headers"]["Authorization"]
    envelope["headers"]["Authorization"] = authorization.replace("/20", "/19", 1)
    assert_grant_error(
        envelope, "the AWS signed request's X-Amz-Date does not match its credential scope"
    )


def test_malformed_x_amz_date() -> None:
    envelope = signed_sts_token(PRINCIPAL, url=GLOBAL_STS, issuer=ISSUER)
    envelope["headers"]["X-Amz-Date"] = "20261399T250000Z"
    assert_grant_error(envelope, "the AWS signed request's X-Amz-Date is malformed")


def test_missing_authorization() -> None:
    envelope = signed_sts_token(PRINCIPAL, url=GLOBAL_STS, issuer=ISSUER)
    del envelope["headers"]["Authorization"]
    assert_grant_error(envelope, "the AWS signed request has no Authorization header")


@pytest.mark.parametrize(
    "authorization",
    [
        "AWS4-HMAC-SHA256 Credential=AKIA/2026/us-east-1/sts/aws4_request",
        "Bearer abc",
        "AWS4-HMAC-SHA512 Credential=AKIAIOSFODNN7EXAMPLE/20261128/us-east-1/sts/aws4_request, "
        "SignedHeaders=host;x-amz-date;x-agentauth-server-id, Signature=" + "a" * 64,
    ],
)
def test_authorization_not_sigv4(authorization: str) -> None:
    envelope = signed_sts_token(PRINCIPAL, url=GLOBAL_STS, issuer=ISSUER)
    envelope["headers"]["Authorization"] = authorization
    assert_grant_error(
        envelope, "the AWS signed request's Authorization header is not a SigV4 signature"
    )


def test_signed_for_another_service() -> None:
    envelope = signed_sts_token(PRINCIPAL, url=GLOBAL_STS, issuer=ISSUER)
    authorization = envelope["headers"]["Authorization"]
    envelope["headers"]["Authorization"] = authorization.replace("/sts/", "/iam/")
    assert_grant_error(envelope, "the AWS signed request is not signed for the sts service")


def test_signed_header_not_sent() -> None:
    envelope = signed_sts_token(
        PRINCIPAL, url=GLOBAL_STS, issuer=ISSUER, extra_headers={"X-Extra": "1"}
    )
    del envelope["headers"]["X-Extra"]
    assert_grant_error(
        envelope, "the AWS signed request signs the header 'x-extra' but does not send it"
    )


def test_host_header_must_match_url() -> None:
    envelope = signed_sts_token(PRINCIPAL, url=GLOBAL_STS, issuer=ISSUER)
    envelope["headers"]["Host"] = "attacker.example"
    assert_grant_error(envelope, "the AWS signed request's Host header does not match its URL")


@pytest.mark.parametrize(
    ("name", "value", "description"),
    [
        (
            "Transfer-Encoding",
            "chunked",
            "the AWS signed request must not set the header 'Transfer-Encoding'",
        ),
        ("Connection", "keep-alive", "the AWS signed request must not set the header 'Connection'"),
        ("X-Injected", "a\r\nHost: attacker", "the AWS signed request has a malformed header"),
        ("Bad Name", "x", "the AWS signed request has a malformed header"),
        (
            "x-amz-date",
            "20260101T000000Z",
            "the AWS signed request repeats the header 'x-amz-date'",
        ),
        (
            "Content-Length",
            "999",
            "the AWS signed request's Content-Length does not match its body",
        ),
    ],
)
def test_header_smuggling_is_refused(name: str, value: str, description: str) -> None:
    envelope = signed_sts_token(PRINCIPAL, url=GLOBAL_STS, issuer=ISSUER)
    envelope["headers"][name] = value
    assert_grant_error(envelope, description)


def test_too_many_headers() -> None:
    envelope = signed_sts_token(PRINCIPAL, url=GLOBAL_STS, issuer=ISSUER)
    envelope["headers"].update({f"X-H{i}": "1" for i in range(40)})
    assert_grant_error(envelope, "the AWS signed request has too many headers")


# --- decoding the subject token -------------------------------------------------------------


def encode(envelope: Any) -> str:
    return base64.urlsafe_b64encode(json.dumps(envelope).encode()).rstrip(b"=").decode()


def test_encode_then_decode_round_trips() -> None:
    envelope = signed_sts_token(PRINCIPAL, url=GLOBAL_STS, issuer=ISSUER)
    assert aws.decode_subject_token(aws.encode_subject_token(**envelope)) == envelope


@pytest.mark.parametrize(
    ("token", "description"),
    [
        ("x" * 20_000, "the AWS signed request is larger than 16384 characters"),
        ("not base64!", "the AWS signed request is not base64url"),
        ("abc+/==", "the AWS signed request is not base64url"),
        ("a", "the AWS signed request is not base64url-encoded JSON"),
        (
            encode("just a string")[:-1] + "x",
            "the AWS signed request is not base64url-encoded JSON",
        ),
        (
            encode(["method", "url"]),
            "the AWS signed request must be a JSON object with exactly the keys method, url, "
            "headers and body",
        ),
        (
            encode({"method": "POST", "url": GLOBAL_STS, "headers": {}}),
            "the AWS signed request must be a JSON object with exactly the keys method, url, "
            "headers and body",
        ),
        (
            encode({"method": "POST", "url": GLOBAL_STS, "headers": {}, "body": "", "x": 1}),
            "the AWS signed request must be a JSON object with exactly the keys method, url, "
            "headers and body",
        ),
        (
            encode({"method": "POST", "url": 1, "headers": {}, "body": ""}),
            "the AWS signed request's method, url and body must be strings",
        ),
        (
            encode({"method": "POST", "url": GLOBAL_STS, "headers": {"a": ["b"]}, "body": ""}),
            "the AWS signed request's headers must be an object of string values",
        ),
        (
            encode({"method": "POST", "url": GLOBAL_STS, "headers": [], "body": ""}),
            "the AWS signed request's headers must be an object of string values",
        ),
    ],
)
def test_malformed_subject_tokens(token: str, description: str) -> None:
    with pytest.raises(errors.InvalidRequest) as caught:
        aws.decode_subject_token(token)
    assert (caught.value.error, caught.value.description) == ("invalid_request", description)


@pytest.mark.parametrize(
    "endpoint",
    ["ftp://127.0.0.1/", "http://u:p@127.0.0.1/", "http://127.0.0.1/x", "http://127.0.0.1/?a", "x"],
)
def test_a_malformed_test_endpoint_fails_at_configuration(endpoint: str) -> None:
    with pytest.raises(ValueError, match="the AWS STS test endpoint must be an http"):
        aws.normalize_test_endpoint(endpoint)


def test_test_endpoint_normalisation() -> None:
    assert aws.normalize_test_endpoint("http://LOCALHOST:4566") == "http://localhost:4566/"


# --- replay cache ----------------------------------------------------------------------------


def test_replay_cache_refuses_a_second_use_within_the_window() -> None:
    cache = aws.InMemoryReplayCache()
    t0 = now()
    cache.remember("sig", expires_at=t0 + datetime.timedelta(minutes=15), now=t0)
    with pytest.raises(errors.InvalidGrant) as caught:
        cache.remember("sig", expires_at=t0 + datetime.timedelta(minutes=15), now=t0)
    assert caught.value.description == "the AWS signed request has already been used"


def test_replay_cache_forgets_expired_entries_and_fails_closed_when_full() -> None:
    cache = aws.InMemoryReplayCache(max_entries=2)
    t0 = now()
    soon, later = t0 + datetime.timedelta(minutes=1), t0 + datetime.timedelta(minutes=15)
    cache.remember("a", expires_at=soon, now=t0)
    cache.remember("b", expires_at=later, now=t0)
    with pytest.raises(errors.TemporarilyUnavailable) as caught:
        cache.remember("c", expires_at=later, now=t0)
    assert caught.value.status == 503
    assert caught.value.description == (
        "too many AWS signed requests in the last minute; retry later"
    )
    t2 = t0 + datetime.timedelta(minutes=2)
    cache.remember("c", expires_at=later, now=t2)  # "a" expired and was pruned
    assert len(cache) == 2
    with pytest.raises(errors.InvalidGrant):
        cache.remember("b", expires_at=later, now=t2)


# --- STS answers and ARN mapping -------------------------------------------------------------

XML = (
    '<GetCallerIdentityResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/">'
    "<GetCallerIdentityResult><Arn>{arn}</Arn><UserId>AROAX:s</UserId>"
    "<Account>{account}</Account></GetCallerIdentityResult></GetCallerIdentityResponse>"
)


def test_parse_xml_answer_maps_assumed_role_to_role() -> None:
    body = XML.format(arn=PRINCIPAL.arn, account="123456789012").encode()
    caller = aws.parse_caller_identity(body, content_type="text/xml")
    assert caller == aws.CallerIdentity(
        arn=PRINCIPAL.arn,
        account_id="123456789012",
        user_id="AROAX:s",
        role_arn="arn:aws:iam::123456789012:role/research-agent",
    )


def test_parse_json_answer() -> None:
    body = json.dumps(
        {
            "GetCallerIdentityResponse": {
                "GetCallerIdentityResult": {
                    "Arn": "arn:aws-cn:sts::123456789012:assumed-role/r/s1",
                    "Account": "123456789012",
                    "UserId": "AROAX:s1",
                }
            }
        }
    ).encode()
    caller = aws.parse_caller_identity(body, content_type="application/json")
    assert caller.role_arn == "arn:aws-cn:iam::123456789012:role/r"


@pytest.mark.parametrize(
    ("arn", "description"),
    [
        (
            "arn:aws:iam::123456789012:user/alice",
            "the AWS caller 'arn:aws:iam::123456789012:user/alice' is not an assumed IAM role; "
            "only IAM roles can be federated",
        ),
        (
            "arn:aws:iam::123456789012:root",
            "the AWS caller 'arn:aws:iam::123456789012:root' is not an assumed IAM role; only "
            "IAM roles can be federated",
        ),
        (
            "arn:aws:sts::123456789012:federated-user/bob",
            "the AWS caller 'arn:aws:sts::123456789012:federated-user/bob' is not an assumed IAM "
            "role; only IAM roles can be federated",
        ),
        (
            "arn:aws:sts::999999999999:assumed-role/r/s1",
            "AWS STS answered an ARN outside the caller's account",
        ),
    ],
)
def test_non_role_callers_are_refused(arn: str, description: str) -> None:
    body = XML.format(arn=arn, account="123456789012").encode()
    with pytest.raises(errors.InvalidGrant) as caught:
        aws.parse_caller_identity(body, content_type="text/xml")
    assert caught.value.description == description


@pytest.mark.parametrize(
    "body",
    [
        b"not xml",
        b'<?xml version="1.0"?><!DOCTYPE x [<!ENTITY a "b">]><x>&a;</x>',
        b"<Other/>",
        XML.format(arn="", account="123456789012").encode(),
        XML.format(arn=PRINCIPAL.arn, account="12").encode(),
    ],
)
def test_unreadable_sts_answers(body: bytes) -> None:
    with pytest.raises(errors.InvalidGrant) as caught:
        aws.parse_caller_identity(body, content_type="text/xml")
    assert caught.value.description in {
        "AWS STS answered an unreadable GetCallerIdentity response",
        "AWS STS answered without a caller ARN and account",
    }


@pytest.mark.parametrize(
    ("pattern", "matches"),
    [
        ("arn:aws:iam::123456789012:role/research-agent", True),
        ("arn:aws:iam::123456789012:role/agents/research-agent", True),  # path: by name
        ("arn:aws:iam::123456789012:role/research-agen", False),
        ("arn:aws:iam::123456789012:role/research-agent-2", False),
        ("arn:aws:iam::210987654321:role/research-agent", False),
        ("arn:aws:iam::123456789012:role/research-*", True),
        ("arn:aws:iam::123456789012:role/*", True),
        ("arn:aws:iam::*:role/research-agent", True),
        ("arn:aws:iam::123456789012:role/agents/*", False),  # unverifiable path: fail closed
        ("arn:aws:iam::123456789012:*", False),  # '*' stops at ':' and '/'
        ("*", False),
        ("arn:aws:iam::123456789012:user/research-agent", False),
        ("not an arn", False),
    ],
)
def test_role_arn_patterns(pattern: str, matches: bool) -> None:
    role = "arn:aws:iam::123456789012:role/research-agent"
    assert aws.role_arn_matches(role, pattern) is matches
