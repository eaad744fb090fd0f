"""Test kit for the token domain and service: a real RS256 'cluster' issuer and object builders.

The cluster issuer signs with PyJWT (an implementation independent of ``agentauth.domain.jose``),
so verification is tested against tokens produced the way Kubernetes produces them.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from agentauth.domain import approvals, exchanging, jose, keys
from agentauth.domain.models import AccessRequest, Agent, CapabilityGrant, ToolServer
from agentauth.domain.models.grants import Approvers

CLUSTER_ISSUER = "https://kubernetes.default.svc.cluster.local"
ISSUER = "https://agentauth.example.test"
TRUST_DOMAIN = "example.test"
NOW = datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)
SERVICE_ACCOUNT_UID = "sa-uid-1"
"""The service-account uid ``ClusterIssuer`` tokens carry by default."""


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class ClusterIssuer:
    """Signs projected service-account tokens like kube-apiserver (RS256, kid = thumbprint)."""

    def __init__(self, issuer: str = CLUSTER_ISSUER) -> None:
        self.issuer = issuer
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        numbers = self.key.public_key().public_numbers()
        self.public_jwk = {
            "kty": "RSA",
            "n": b64(numbers.n.to_bytes((numbers.n.bit_length() + 7) // 8, "big")),
            "e": b64(numbers.e.to_bytes(3, "big")),
        }
        self.kid = jose.jwk_thumbprint(self.public_jwk)

    def jwks(self) -> dict[str, Any]:
        return {"keys": [{**self.public_jwk, "kid": self.kid, "use": "sig", "alg": "RS256"}]}

    def claims(
        self,
        *,
        namespace: str = "team-a",
        service_account: str = "research-sa",
        pod: str = "research-0",
        pod_uid: str = "pod-uid-1",
        audience: str | list[str] = ISSUER,
        now: datetime = NOW,
        lifetime: int = 600,
        service_account_uid: str = SERVICE_ACCOUNT_UID,
    ) -> dict[str, Any]:
        iat = int(now.timestamp())
        return {
            "iss": self.issuer,
            "sub": f"system:serviceaccount:{namespace}:{service_account}",
            "aud": [audience] if isinstance(audience, str) else audience,
            "exp": iat + lifetime,
            "iat": iat,
            "nbf": iat,
            "jti": str(uuid.uuid4()),
            "kubernetes.io": {
                "namespace": namespace,
                "serviceaccount": {"name": service_account, "uid": service_account_uid},
                "pod": {"name": pod, "uid": pod_uid},
            },
        }

    def sign(self, claims: dict[str, Any], *, kid: str | None = None) -> str:
        return jwt.encode(claims, self.key, algorithm="RS256", headers={"kid": kid or self.kid})

    def token(self, **overrides: Any) -> str:
        return self.sign(self.claims(**overrides))

    def public_pem(self) -> bytes:
        return self.key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    def hs256_with_public_key(self, claims: dict[str, Any]) -> str:
        """The classic confusion attack: HMAC keyed with the issuer's public key."""
        header = b64(json.dumps({"alg": "HS256", "kid": self.kid, "typ": "JWT"}).encode())
        payload = b64(json.dumps(claims).encode())
        mac = hmac.new(self.public_pem(), f"{header}.{payload}".encode(), hashlib.sha256)
        return f"{header}.{payload}.{b64(mac.digest())}"

    def alg_none(self, claims: dict[str, Any]) -> str:
        header = b64(json.dumps({"alg": "none", "kid": self.kid}).encode())
        return f"{header}.{b64(json.dumps(claims).encode())}."


def agent(
    name: str = "research",
    namespace: str = "team-a",
    *,
    uid: str = "agent-uid-1",
    service_account: str | None = "research-sa",
    ready: str | None = None,
    ready_reason: str = "Ready",
    **spec: Any,
) -> Agent:
    body: dict[str, Any] = {
        "metadata": {"name": name, "namespace": namespace, "uid": uid, "labels": {"tier": "gold"}},
        "spec": {"serviceAccountName": service_account, **spec},
    }
    if ready is not None:
        body["status"] = {
            "conditions": [
                {
                    "type": "Ready",
                    "status": ready,
                    "reason": ready_reason,
                    "lastTransitionTime": NOW.isoformat(),
                }
            ]
        }
    return Agent.model_validate(body)


def grant(
    name: str,
    namespace: str = "team-a",
    *,
    agents: list[str] | None = None,
    capabilities: list[dict[str, Any]],
    expires_at: datetime | None = None,
) -> CapabilityGrant:
    spec: dict[str, Any] = {
        "agents": {"names": agents if agents is not None else ["research"]},
        "capabilities": capabilities,
    }
    if expires_at is not None:
        spec["expiresAt"] = expires_at.isoformat()
    return CapabilityGrant.model_validate(
        {
            "metadata": {"name": name, "namespace": namespace, "uid": f"uid-{namespace}-{name}"},
            "spec": spec,
        }
    )


def approval_under(*grants: CapabilityGrant, user: str = "alice") -> dict[str, Any]:
    """An approval as the admission webhook stamps it, made under ``grants`` as they are."""
    return {
        "user": user,
        "time": (NOW - timedelta(minutes=1)).isoformat(),
        "grants": [
            {
                "name": g.metadata.name,
                "uid": g.metadata.uid,
                "policy": approvals.policy_fingerprint(g.spec.approvers or Approvers()),
            }
            for g in grants
        ],
    }


def access_request(
    name: str,
    *,
    capabilities: list[str],
    phase: str = "Approved",
    granted_until: datetime | None = None,
    agent_name: str = "research",
    namespace: str = "team-a",
    agent_uid: str = "agent-uid-1",
    under: list[CapabilityGrant] | None = None,
) -> AccessRequest:
    """A request filed for Agent ``agent_uid``; an Approved one carries an approval made under
    ``under`` (default: the grant ``base`` of :func:`snapshot`)."""
    status: dict[str, Any] = {"phase": phase}
    if granted_until is not None:
        status["grantedUntil"] = granted_until.isoformat()
    if phase == "Approved":
        made_under = (
            under if under is not None else [grant("base", capabilities=STANDARD_CAPABILITIES)]
        )
        status["approvals"] = [approval_under(*made_under)]
    return AccessRequest.model_validate(
        {
            "metadata": {"name": name, "namespace": namespace},
            "spec": {
                "agent": agent_name,
                "agentUID": agent_uid,
                "capabilities": capabilities,
                "justification": "quarter close",
            },
            "status": status,
        }
    )


def tool_server(
    name: str, uri: str, tools: dict[str, str], namespace: str = "team-a"
) -> ToolServer:
    return ToolServer.model_validate(
        {
            "metadata": {"name": name, "namespace": namespace},
            "spec": {
                "resourceURI": uri,
                "tools": [{"name": t, "capability": c} for t, c in tools.items()],
            },
        }
    )


def pod(
    name: str = "research-0",
    namespace: str = "team-a",
    *,
    uid: str = "pod-uid-1",
    agent_label: str | None = "research",
    service_account: str = "research-sa",
    labels: dict[str, str] | None = None,
) -> exchanging.Pod:
    all_labels = dict(labels or {})
    if agent_label is not None:
        all_labels["agentauth.dev/agent"] = agent_label
    return exchanging.Pod(
        namespace=namespace, name=name, uid=uid, labels=all_labels, service_account=service_account
    )


STANDARD_CAPABILITIES = [
    {"name": "document.read", "description": "Read documents", "examples": ["open the report"]},
    {"name": "document.write", "description": "Edit documents"},
    {"name": "payments.authorize", "description": "Pay invoices", "approval": "Required"},
]


def snapshot(
    *,
    agents: list[Agent] | None = None,
    grants: list[CapabilityGrant] | None = None,
    access_requests: list[AccessRequest] | None = None,
    tool_servers: list[ToolServer] | None = None,
    pods: list[exchanging.Pod] | None = None,
    service_accounts: dict[tuple[str, str], str] | None = None,
) -> exchanging.Snapshot:
    """A snapshot; ``service_accounts`` defaults to every pod's service account with the uid
    ``ClusterIssuer`` tokens carry (``SERVICE_ACCOUNT_UID``)."""
    agents = agents if agents is not None else [agent()]
    pods = pods if pods is not None else [pod()]
    if service_accounts is None:
        service_accounts = {(p.namespace, p.service_account): SERVICE_ACCOUNT_UID for p in pods}
    return exchanging.Snapshot(
        agents={(a.metadata.namespace or "", a.metadata.name or ""): a for a in agents},
        grants=grants
        if grants is not None
        else [grant("base", capabilities=STANDARD_CAPABILITIES)],
        access_requests=access_requests or [],
        tool_servers=tool_servers or [],
        pods={(p.namespace, p.name): p for p in pods},
        service_accounts=service_accounts,
    )


def issuer_keys(now: datetime = NOW - timedelta(minutes=1)) -> keys.KeySet:
    return keys.generate_keyset(now=now)
