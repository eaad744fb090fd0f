"""AWS subject token (extra ``agentauth-k8s[aws]``): a SigV4-signed ``sts:GetCallerIdentity``.

The agent never sends its AWS credentials anywhere: it signs a ``GetCallerIdentity`` POST with
them (botocore's SigV4 signer, credentials from the default chain: environment, web identity,
ECS/EKS container credentials, instance metadata, ...) and hands the *request* to the token
service, which forwards it to STS. The ``X-AgentAuth-Server-ID`` header carrying the token
service's issuer and the ``X-AgentAuth-Key-Thumbprint`` header carrying the thumbprint of the
key that signs the exchange request (``AgentClient``'s per-process key) are part of the signed
headers, so the request is useless at any other server and to anyone without that key, and STS
rejects it if anyone changes either header. The token service accepts it for one minute, once.

botocore is imported lazily so ``agentauth`` works without the ``aws`` extra.
"""

from __future__ import annotations

import dataclasses
import secrets
from typing import Any

from agentauth.domain.federation import aws as aws_federation
from agentauth.sdk import client

SUBJECT_TOKEN_TYPE = aws_federation.SUBJECT_TOKEN_TYPE
_BODY = f"Action=GetCallerIdentity&Version={aws_federation.STS_API_VERSION}"
_SIGNING_REGION_GLOBAL = "us-east-1"
NONCE_HEADER = "X-AgentAuth-Nonce"


class AwsCredentialsNotFoundError(RuntimeError):
    """The default credential chain found no AWS credentials."""


def sts_endpoint(region: str | None) -> str:
    """The STS endpoint URL for ``region`` (the global endpoint when ``None``)."""
    if region is None:
        return "https://sts.amazonaws.com/"
    suffix = ".amazonaws.com.cn" if region.startswith("cn-") else ".amazonaws.com"
    return f"https://sts.{region}{suffix}/"


def aws_subject_token(
    *,
    issuer: str,
    key_thumbprint: str,
    region: str | None = None,
    session: Any = None,
    endpoint_url: str | None = None,
) -> str:
    """A subject token for ``urn:agentauth:params:token-type:aws-signed-request``.

    ``issuer`` is the token service's issuer URL (``AGENTAUTH_ISSUER``); ``key_thumbprint`` the
    RFC 7638 thumbprint of the key that will sign the exchange request. ``region`` picks the
    regional STS endpoint (default: the session's configured region, else the global
    endpoint). ``session`` is a ``botocore.session.Session`` or ``boto3.Session`` (default: a
    new botocore session, i.e. the default credential chain). ``endpoint_url`` overrides the
    STS URL; the token service accepts it only if it is its configured test endpoint.
    """
    # Lazy: botocore is the optional "aws" extra.
    import botocore.auth
    import botocore.awsrequest
    import botocore.session

    # The token service canonicalises its issuer without a trailing slash; match it exactly.
    issuer = issuer.rstrip("/")
    if session is None:
        session = botocore.session.get_session()
    credentials = session.get_credentials()
    if credentials is None:
        raise AwsCredentialsNotFoundError(
            "no AWS credentials found by the default chain (environment, web identity, "
            "container or instance metadata); cannot sign sts:GetCallerIdentity"
        )
    if region is None:
        region = _session_region(session)
    url = endpoint_url if endpoint_url is not None else sts_endpoint(region)
    request = botocore.awsrequest.AWSRequest(
        method="POST",
        url=url,
        data=_BODY,
        headers={
            "Content-Type": "application/x-www-form-urlencoded; charset=utf-8",
            aws_federation.SERVER_ID_HEADER: issuer,
            aws_federation.KEY_THUMBPRINT_HEADER: key_thumbprint,
            # SigV4 timestamps have one-second resolution: without a signed nonce, two tokens
            # built in the same second would be identical and the second refused as a replay.
            NONCE_HEADER: secrets.token_hex(16),
        },
    )
    signer = botocore.auth.SigV4Auth(
        credentials.get_frozen_credentials(), "sts", region or _SIGNING_REGION_GLOBAL
    )
    signer.add_auth(request)
    return aws_federation.encode_subject_token(
        method="POST", url=url, headers=dict(request.headers.items()), body=_BODY
    )


def _session_region(session: Any) -> str | None:
    region = getattr(session, "region_name", None)  # boto3.Session
    if region is None and hasattr(session, "get_config_variable"):  # botocore Session
        region = session.get_config_variable("region")
    return str(region) if region else None


@dataclasses.dataclass(frozen=True)
class AwsSubjectTokenSource:
    """An ``AgentClient`` subject-token source (``client.SubjectTokenSource``): signs a fresh
    ``GetCallerIdentity`` request for every exchange.

    Use as ``AgentClient(..., subject_token_source=AwsSubjectTokenSource(issuer=ISSUER))``.
    """

    issuer: str
    region: str | None = None
    session: Any = None
    endpoint_url: str | None = None

    def __call__(self, key_thumbprint: str) -> client.SubjectToken:
        return client.SubjectToken(
            token=aws_subject_token(
                issuer=self.issuer,
                key_thumbprint=key_thumbprint,
                region=self.region,
                session=self.session,
                endpoint_url=self.endpoint_url,
            ),
            token_type=SUBJECT_TOKEN_TYPE,
        )
