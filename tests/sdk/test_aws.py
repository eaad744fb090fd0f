"""``agentauth.sdk.aws.aws_subject_token``: botocore's default chain and SigV4, really.

The token it builds is checked three ways: its envelope and headers, the domain validation the
token service applies, and the signature, recomputed by the loopback STS with botocore's signer.
"""

from __future__ import annotations

import datetime
from collections.abc import Iterator
from pathlib import Path

import boto3
import botocore.session
import pytest

from agentauth.domain.federation import aws as aws_federation
from agentauth.sdk import aws as sdk_aws
from tests.domain.federation.loopback_clouds import (
    KEY_THUMBPRINT,
    AwsPrincipal,
    LoopbackSts,
    serving,
)

ISSUER = "https://agentauth.example.com"
PRINCIPAL = AwsPrincipal(
    access_key_id="ASIASDKTEST00000001",
    secret_access_key="sdk-secret-for-tests-only",
    arn="arn:aws:sts::123456789012:assumed-role/research-agent/sdk",
    account="123456789012",
)


@pytest.fixture(scope="module")
def sts() -> Iterator[LoopbackSts]:
    server = LoopbackSts()
    server.add(PRINCIPAL)
    with serving(server.server):
        yield server


@pytest.fixture
def isolated_aws_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No ambient AWS configuration: only what a test sets is seen by the default chain."""
    for name in (
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_SESSION_TOKEN",
        "AWS_PROFILE",
        "AWS_DEFAULT_REGION",
        "AWS_REGION",
        "AWS_WEB_IDENTITY_TOKEN_FILE",
        "AWS_ROLE_ARN",
        "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
        "AWS_CONTAINER_CREDENTIALS_FULL_URI",
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")


def forward(sts: LoopbackSts, token: str) -> tuple[int, bytes]:
    """Validate as the token service does, then let the loopback STS check the signature."""
    request = aws_federation.validate_signed_request(
        aws_federation.decode_subject_token(token),
        issuer=ISSUER,
        now=datetime.datetime.now(datetime.UTC),
        signer_jkt=KEY_THUMBPRINT,
        test_endpoint=aws_federation.normalize_test_endpoint(sts.url),
    )
    headers = {name.lower(): value for name, value in request.headers}
    headers["host"] = sts.url.split("/")[2]
    status, body, _ = sts.verify(headers=headers, body=request.body, path="/")
    return status, body


@pytest.mark.usefixtures("isolated_aws_env")
def test_default_chain_credentials_from_the_environment(
    sts: LoopbackSts, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", PRINCIPAL.access_key_id)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", PRINCIPAL.secret_access_key)
    token = sdk_aws.aws_subject_token(
        key_thumbprint=KEY_THUMBPRINT, issuer=ISSUER, endpoint_url=sts.url
    )
    envelope = aws_federation.decode_subject_token(token)
    assert envelope["method"] == "POST"
    assert envelope["url"] == sts.url
    assert envelope["body"] == "Action=GetCallerIdentity&Version=2011-06-15"
    assert envelope["headers"]["X-AgentAuth-Server-ID"] == ISSUER
    authorization = envelope["headers"]["Authorization"]
    assert f"Credential={PRINCIPAL.access_key_id}/" in authorization
    assert "/us-east-1/sts/aws4_request" in authorization  # global endpoint signs us-east-1
    signed_headers = authorization.split("SignedHeaders=")[1].split(",")[0].split(";")
    assert "x-agentauth-server-id" in signed_headers
    assert "x-agentauth-key-thumbprint" in signed_headers  # bound to the request-signing key
    assert envelope["headers"]["X-AgentAuth-Key-Thumbprint"] == KEY_THUMBPRINT
    status, body = forward(sts, token)
    assert status == 200, body
    assert PRINCIPAL.arn.encode() in body


@pytest.mark.usefixtures("isolated_aws_env")
def test_session_token_is_sent_and_signed(
    sts: LoopbackSts, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", PRINCIPAL.access_key_id)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", PRINCIPAL.secret_access_key)
    monkeypatch.setenv("AWS_SESSION_TOKEN", "FwoGZXIvYXdzEXAMPLE")
    envelope = aws_federation.decode_subject_token(
        sdk_aws.aws_subject_token(
            key_thumbprint=KEY_THUMBPRINT, issuer=ISSUER, endpoint_url=sts.url
        )
    )
    assert envelope["headers"]["X-Amz-Security-Token"] == "FwoGZXIvYXdzEXAMPLE"
    assert "x-amz-security-token" in envelope["headers"]["Authorization"]


def test_boto3_session_and_region_pick_the_regional_endpoint() -> None:
    session = boto3.Session(
        aws_access_key_id=PRINCIPAL.access_key_id,
        aws_secret_access_key=PRINCIPAL.secret_access_key,
        region_name="eu-west-2",
    )
    envelope = aws_federation.decode_subject_token(
        sdk_aws.aws_subject_token(key_thumbprint=KEY_THUMBPRINT, issuer=ISSUER, session=session)
    )
    assert envelope["url"] == "https://sts.eu-west-2.amazonaws.com/"
    assert "/eu-west-2/sts/aws4_request" in envelope["headers"]["Authorization"]
    # The token service accepts the regional URL as is.
    aws_federation.validate_signed_request(
        envelope, issuer=ISSUER, now=datetime.datetime.now(datetime.UTC), signer_jkt=KEY_THUMBPRINT
    )


def test_issuer_is_canonicalised_without_trailing_slash() -> None:
    session = botocore.session.Session()
    session.set_credentials(PRINCIPAL.access_key_id, PRINCIPAL.secret_access_key)
    envelope = aws_federation.decode_subject_token(
        sdk_aws.aws_subject_token(
            key_thumbprint=KEY_THUMBPRINT, issuer=ISSUER + "/", session=session
        )
    )
    assert envelope["headers"]["X-AgentAuth-Server-ID"] == ISSUER


def test_explicit_region_on_a_botocore_session() -> None:
    session = botocore.session.Session()
    session.set_credentials(PRINCIPAL.access_key_id, PRINCIPAL.secret_access_key)
    envelope = aws_federation.decode_subject_token(
        sdk_aws.aws_subject_token(
            key_thumbprint=KEY_THUMBPRINT, issuer=ISSUER, session=session, region="cn-north-1"
        )
    )
    assert envelope["url"] == "https://sts.cn-north-1.amazonaws.com.cn/"


def test_a_tampered_sdk_token_fails_the_signature_check(sts: LoopbackSts) -> None:
    session = botocore.session.Session()
    session.set_credentials(PRINCIPAL.access_key_id, PRINCIPAL.secret_access_key)
    envelope = aws_federation.decode_subject_token(
        sdk_aws.aws_subject_token(
            key_thumbprint=KEY_THUMBPRINT, issuer=ISSUER, session=session, endpoint_url=sts.url
        )
    )
    envelope["headers"]["Content-Type"] = "application/x-www-form-urlencoded"
    status, body = forward(sts, aws_federation.encode_subject_token(**envelope))
    assert status == 403
    assert b"<Code>SignatureDoesNotMatch</Code>" in body


@pytest.mark.usefixtures("isolated_aws_env")
def test_no_credentials_is_a_clear_error() -> None:
    with pytest.raises(sdk_aws.AwsCredentialsNotFoundError) as caught:
        sdk_aws.aws_subject_token(key_thumbprint=KEY_THUMBPRINT, issuer=ISSUER)
    assert str(caught.value) == (
        "no AWS credentials found by the default chain (environment, web identity, container "
        "or instance metadata); cannot sign sts:GetCallerIdentity"
    )


def test_token_source_for_agent_client_gives_distinct_tokens_in_the_same_second(
    sts: LoopbackSts,
) -> None:
    session = botocore.session.Session()
    session.set_credentials(PRINCIPAL.access_key_id, PRINCIPAL.secret_access_key)
    source = sdk_aws.AwsSubjectTokenSource(issuer=ISSUER, session=session, endpoint_url=sts.url)
    first, second = source(KEY_THUMBPRINT), source(KEY_THUMBPRINT)
    assert first.token_type == "urn:agentauth:params:token-type:aws-signed-request"
    signatures = {
        aws_federation.decode_subject_token(t.token)["headers"]["Authorization"]
        for t in (first, second)
    }
    assert len(signatures) == 2  # the signed nonce makes each request unique
    for subject in (first, second):
        status, body = forward(sts, subject.token)
        assert status == 200, body
