"""Security review of the token service over real HTTP on loopback (real keys, real tokens).

Tests marked ``xfail(strict=True)`` demonstrate open findings: each asserts the intended (fail
closed) behaviour and fails today; the lead removes the mark with the fix. The unmarked tests pin
checks the review verified to be correct.
"""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from urllib.parse import urlencode

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519

from agentauth.domain import keys, signatures
from tests.domain import tokenkit
from tests.tokenservice import test_app as http_kit

TOOL_POD = {"service_account": "tool-sa", "pod": "tool-0", "pod_uid": "tool-pod-uid"}


@pytest.fixture(scope="module")
def cluster() -> tokenkit.ClusterIssuer:
    return tokenkit.ClusterIssuer()


@pytest.fixture(scope="module")
def idp() -> tokenkit.ClusterIssuer:
    return tokenkit.ClusterIssuer(issuer=http_kit.USER_ISSUER)


@pytest.fixture(scope="module")
def keyset() -> keys.KeySet:
    return keys.generate_keyset(now=datetime.now(UTC) - timedelta(minutes=1))


@pytest.fixture
async def service(
    keyset: keys.KeySet, cluster: tokenkit.ClusterIssuer, idp: tokenkit.ClusterIssuer
) -> AsyncIterator[http_kit.Service]:
    runner, svc = await http_kit.start(keyset=keyset, cluster=cluster, idp=idp)
    yield svc
    await svc.http.close()
    await runner.cleanup()


async def bound_token(
    service: http_kit.Service, cluster: tokenkit.ClusterIssuer, **pod: str
) -> str:
    """An agent token bound (``cnf``) to a key the test then 'loses' to an attacker."""
    key = ed25519.Ed25519PrivateKey.generate()
    status, _, body = await http_kit.signed_exchange(
        service, http_kit.sa_token(cluster, **pod), key
    )
    assert status == 200, body
    token: str = body["access_token"]
    assert "cnf" in jwt.decode(token, options={"verify_signature": False})
    return token


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def nested_json_token(depth: int = 5000) -> str:
    """A well-formed, small (< 16 KiB) JWS whose payload nests ``depth`` JSON arrays."""
    header = _b64(json.dumps({"alg": "RS256", "kid": "k"}).encode())
    payload = _b64(b"[" * depth + b"]" * depth)
    return f"{header}.{payload}.{_b64(b'sig')}"


# -- findings ----------------------------------------------------------------------------------


async def test_bound_token_is_refused_as_plain_bearer_at_ask(
    service: http_kit.Service, cluster: tokenkit.ClusterIssuer
) -> None:
    stolen = await bound_token(service, cluster)
    status, _, body = await service.post(
        "/v1/ask",
        json={"action": "document.read"},
        headers={"Authorization": f"Bearer {stolen}"},
    )
    assert status == 401, body
    assert body["error"] == "invalid_token"


async def test_bound_token_is_refused_as_plain_bearer_at_access_requests(
    service: http_kit.Service, cluster: tokenkit.ClusterIssuer
) -> None:
    stolen = await bound_token(service, cluster)
    status, _, body = await service.post(
        "/v1/access-requests",
        json={"capabilities": ["payments.authorize"], "justification": "close the quarter"},
        headers={"Authorization": f"Bearer {stolen}"},
    )
    # today: authentication passes and the request only fails later (503, no Kubernetes API here)
    assert status == 401, body
    assert body["error"] == "invalid_token"


async def test_bound_subject_token_cannot_be_laundered_through_delegation(
    service: http_kit.Service, cluster: tokenkit.ClusterIssuer
) -> None:
    stolen = await bound_token(service, cluster, **TOOL_POD)  # agent team-a/tool
    attacker = await http_kit.agent_token(service, cluster)  # team-a/research, may delegate
    status, _, body = await http_kit.delegate(service, stolen, attacker)
    assert (status, body) == (
        400,
        {
            "error": "invalid_grant",
            "error_description": "the subject token is bound to a key (cnf): it can be the "
            "subject of a delegation only when its may_act names the actor or the request is "
            "signed with that key",
        },
    )


async def test_bound_subject_token_naming_the_actor_in_may_act_can_be_delegated(
    service: http_kit.Service, cluster: tokenkit.ClusterIssuer
) -> None:
    """The holder of a bound token consents to one actor with ``may_act`` (tool -> agent)."""
    key = ed25519.Ed25519PrivateKey.generate()
    research = "aauth:research.team-a@agentauth.example.test"
    body = urlencode(
        {
            "grant_type": http_kit.EXCHANGE,
            "subject_token": http_kit.sa_token(cluster, **TOOL_POD),
            "subject_token_type": http_kit.JWT,
            "may_act": research,
        }
    ).encode()
    headers = {"Content-Type": "application/x-www-form-urlencoded"}
    headers.update(
        signatures.sign_request(
            method="POST",
            url=f"{http_kit.ISSUER}/oauth2/token",
            headers=headers,
            body=body,
            private_key=key,
            signature_key_header=signatures.signature_key_hwk(key),
        )
    )
    status, _, issued = await service.post("/oauth2/token", data=body, headers=headers)
    assert status == 200, issued
    consented = issued["access_token"]
    claims = jwt.decode(consented, options={"verify_signature": False})
    assert claims["may_act"] == {"sub": research}
    assert "cnf" in claims
    actor = await http_kit.agent_token(service, cluster)  # team-a/research
    status, _, delegated = await http_kit.delegate(service, consented, actor)
    assert status == 200, delegated
    result = jwt.decode(delegated["access_token"], options={"verify_signature": False})
    assert result["sub"] == "aauth:tool.team-a@agentauth.example.test"
    assert result["act"] == {"sub": research}


async def test_bound_actor_token_needs_proof_of_possession(
    service: http_kit.Service, cluster: tokenkit.ClusterIssuer, idp: tokenkit.ClusterIssuer
) -> None:
    stolen_actor = await bound_token(service, cluster)  # team-a/research, may delegate
    status, _, body = await http_kit.delegate(service, http_kit.user_token(idp), stolen_actor)
    assert status == 400, body
    assert body["error"] == "invalid_grant"


async def test_deeply_nested_subject_token_is_invalid_grant(service: http_kit.Service) -> None:
    token = nested_json_token()
    assert len(token) < 16 * 1024
    status, _, body = await service.exchange(token)
    assert status == 400, body
    assert body["error"] == "invalid_grant"


async def test_deeply_nested_delegation_subject_is_invalid_grant(
    service: http_kit.Service, cluster: tokenkit.ClusterIssuer
) -> None:
    actor = await http_kit.agent_token(service, cluster)
    status, _, body = await http_kit.delegate(service, nested_json_token(), actor)
    assert status == 400, body
    assert body["error"] == "invalid_grant"


async def test_deeply_nested_ask_body_is_invalid_request(
    service: http_kit.Service, cluster: tokenkit.ClusterIssuer
) -> None:
    token = await http_kit.agent_token(service, cluster)
    status, _, body = await service.post(
        "/v1/ask",
        data=b"[" * 5000 + b"]" * 5000,
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
    )
    assert (status, body) == (
        400,
        {"error": "invalid_request", "error_description": "the request body must be JSON"},
    )


async def test_expires_in_with_unicode_digits_is_invalid_request(
    service: http_kit.Service, cluster: tokenkit.ClusterIssuer
) -> None:
    status, _, body = await service.exchange(http_kit.sa_token(cluster), expires_in="²")
    assert (status, body) == (
        400,
        {
            "error": "invalid_request",
            "error_description": "expires_in must be a positive number of seconds",
        },
    )


async def test_huge_expires_in_is_not_a_server_error(
    service: http_kit.Service, cluster: tokenkit.ClusterIssuer
) -> None:
    status, _, body = await service.exchange(http_kit.sa_token(cluster), expires_in="9" * 30)
    # either clamped to the agent's TTL (200) or refused as invalid_request: never a 500
    assert status in (200, 400), body
    if status == 400:
        assert body["error"] == "invalid_request"


async def test_www_authenticate_challenge_cannot_be_injected_through_kid(
    service: http_kit.Service,
) -> None:
    header = _b64(
        json.dumps({"alg": "EdDSA", "kid": 'x", scope="admin", y="', "typ": "at+jwt"}).encode()
    )
    token = f"{header}.{_b64(b'{}')}.{_b64(b'sig')}"
    async with service.http.post(
        service.base + "/v1/ask",
        json={"action": "document.read"},
        headers={"Authorization": f"Bearer {token}"},
    ) as response:
        assert response.status == 401
        challenge = response.headers["WWW-Authenticate"]
    assert 'scope="admin"' not in challenge, challenge


# -- verified correct --------------------------------------------------------------------------


async def test_bound_token_exchange_needs_a_signature_over_the_body(
    service: http_kit.Service, cluster: tokenkit.ClusterIssuer
) -> None:
    key = ed25519.Ed25519PrivateKey.generate()
    status, _, body = await http_kit.signed_exchange(
        service, http_kit.sa_token(cluster), key, tamper=True
    )
    assert status == 400
    assert body["error"] == "invalid_request"


async def test_pod_labelled_as_another_agent_cannot_act_as_it(
    service: http_kit.Service, cluster: tokenkit.ClusterIssuer
) -> None:
    # pod wrong-0 runs as research-sa but is labelled agentauth.dev/agent=tool (tool-sa)
    token = http_kit.sa_token(cluster, pod="wrong-0", pod_uid="wrong-uid")
    status, _, body = await service.exchange(token)
    assert (status, body) == (
        400,
        {
            "error": "invalid_grant",
            "error_description": (
                "service account research-sa is not the service account of agent team-a/tool"
            ),
        },
    )


async def test_deleted_and_recreated_pod_is_refused(
    service: http_kit.Service, cluster: tokenkit.ClusterIssuer
) -> None:
    token = http_kit.sa_token(cluster, pod_uid="uid-of-the-deleted-pod")
    status, _, body = await service.exchange(token)
    assert (status, body) == (
        400,
        {
            "error": "invalid_grant",
            "error_description": "pod team-a/research-0 bound to the token no longer exists",
        },
    )


async def test_delegated_token_cannot_be_an_actor(
    service: http_kit.Service, cluster: tokenkit.ClusterIssuer, idp: tokenkit.ClusterIssuer
) -> None:
    actor = await http_kit.agent_token(service, cluster)
    status, _, body = await http_kit.delegate(service, http_kit.user_token(idp), actor)
    assert status == 200, body
    delegated = body["access_token"]
    status, _, body = await http_kit.delegate(service, http_kit.user_token(idp), delegated)
    assert (status, body) == (
        400,
        {
            "error": "invalid_grant",
            "error_description": ("actor_token must be the actor's own token, not a delegated one"),
        },
    )


async def test_scope_cannot_escalate_to_an_unapproved_required_capability(
    service: http_kit.Service, cluster: tokenkit.ClusterIssuer
) -> None:
    status, _, body = await service.exchange(http_kit.sa_token(cluster), scope="payments.authorize")
    assert (status, body["error"]) == (400, "invalid_scope")
    status, _, body = await service.exchange(http_kit.sa_token(cluster), scope="payments.*")
    assert (status, body["error"]) == (400, "invalid_scope")
