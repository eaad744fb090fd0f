"""Service-account token minting, verification, JWKS/OIDC documents and the TokenRequest API."""

from __future__ import annotations

import base64
import hashlib
import json
import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization

from agentauth.devcluster import serviceaccounts
from tests.devcluster.fixtures import security_store

ISSUER = "https://127.0.0.1:6443"


@pytest.fixture(scope="module")
def key_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("sa-keys")


@pytest.fixture(scope="module")
def issuer(key_dir: Path) -> serviceaccounts.ServiceAccountTokenIssuer:
    return serviceaccounts.ServiceAccountTokenIssuer(issuer=ISSUER, directory=key_dir)


@pytest.fixture
def store() -> security_store.MemoryStore:
    store = security_store.MemoryStore()
    store.put(security_store.service_account("robot", "team-a"))
    store.put(security_store.pod("worker", namespace="team-a", service_account_name="robot"))
    store.put(security_store.pod("other", namespace="team-a", service_account_name="default"))
    return store


def _sa(store: security_store.MemoryStore) -> dict[str, Any]:
    found = store.get(group="", resource="serviceaccounts", namespace="team-a", name="robot")
    assert found is not None
    return found


def _sign_with_issuer_key(key_dir: Path, claims: dict[str, Any], **headers: Any) -> str:
    key = serialization.load_pem_private_key((key_dir / "sa.key").read_bytes(), password=None)
    return jwt.encode(claims, key, algorithm="RS256", headers=headers)  # type: ignore[arg-type]


def _valid_claims(**overrides: Any) -> dict[str, Any]:
    now = int(datetime.now(UTC).timestamp())
    claims: dict[str, Any] = {
        "iss": ISSUER,
        "sub": "system:serviceaccount:team-a:robot",
        "aud": [ISSUER],
        "exp": now + 600,
        "iat": now,
        "nbf": now,
        "jti": "x",
        "kubernetes.io": {"namespace": "team-a", "serviceaccount": {"name": "robot", "uid": "u"}},
    }
    claims.update(overrides)
    return {k: v for k, v in claims.items() if v is not None}


def test_mint_produces_real_kubernetes_claims(
    issuer: serviceaccounts.ServiceAccountTokenIssuer, store: security_store.MemoryStore
) -> None:
    sa = _sa(store)
    worker = store.get(group="", resource="pods", namespace="team-a", name="worker")
    assert worker is not None
    token, expires = issuer.mint(
        namespace="team-a",
        service_account=sa,
        audiences=["agentauth"],
        expiration_seconds=900,
        bound_object=worker,
    )
    header = jwt.get_unverified_header(token)
    assert header["alg"] == "RS256"
    assert header["kid"] == issuer.kid
    claims = issuer.verify(token, audiences=["agentauth"])
    assert claims["iss"] == ISSUER
    assert claims["sub"] == "system:serviceaccount:team-a:robot"
    assert claims["aud"] == ["agentauth"]
    assert claims["exp"] - claims["iat"] == 900
    assert claims["nbf"] == claims["iat"]
    assert claims["exp"] == int(expires.timestamp())
    assert claims["kubernetes.io"] == {
        "namespace": "team-a",
        "serviceaccount": {"name": "robot", "uid": sa["metadata"]["uid"]},
        "pod": {"name": "worker", "uid": worker["metadata"]["uid"]},
    }
    second, _ = issuer.mint(
        namespace="team-a",
        service_account=sa,
        audiences=["agentauth"],
        expiration_seconds=900,
        bound_object=None,
    )
    assert issuer.verify(second, audiences=["agentauth"])["jti"] != claims["jti"]


def test_key_is_persisted_private_and_reused(
    issuer: serviceaccounts.ServiceAccountTokenIssuer,
    key_dir: Path,
    store: security_store.MemoryStore,
) -> None:
    assert stat.S_IMODE((key_dir / "sa.key").stat().st_mode) == 0o600
    token, _ = issuer.mint(
        namespace="team-a",
        service_account=_sa(store),
        audiences=[ISSUER],
        expiration_seconds=600,
        bound_object=None,
    )
    restarted = serviceaccounts.ServiceAccountTokenIssuer(issuer=ISSUER, directory=key_dir)
    assert restarted.kid == issuer.kid
    assert restarted.verify(token)["sub"] == "system:serviceaccount:team-a:robot"


def test_kid_is_the_rfc7638_thumbprint_and_jwks_verifies_tokens(
    issuer: serviceaccounts.ServiceAccountTokenIssuer, store: security_store.MemoryStore
) -> None:
    (jwk,) = issuer.jwks()["keys"]
    assert jwk["kty"] == "RSA" and jwk["alg"] == "RS256" and jwk["use"] == "sig"
    canonical = json.dumps(
        {"e": jwk["e"], "kty": "RSA", "n": jwk["n"]}, separators=(",", ":"), sort_keys=True
    )
    expected = (
        base64.urlsafe_b64encode(hashlib.sha256(canonical.encode()).digest()).rstrip(b"=").decode()
    )
    assert jwk["kid"] == expected == issuer.kid
    token, _ = issuer.mint(
        namespace="team-a",
        service_account=_sa(store),
        audiences=["x"],
        expiration_seconds=600,
        bound_object=None,
    )
    # An outside verifier that knows only the JWKS accepts the token.
    claims = jwt.decode(
        token, jwt.PyJWK(jwk).key, algorithms=["RS256"], audience="x", issuer=ISSUER
    )
    assert claims["sub"] == "system:serviceaccount:team-a:robot"


def test_openid_configuration(issuer: serviceaccounts.ServiceAccountTokenIssuer) -> None:
    assert issuer.openid_configuration() == {
        "issuer": ISSUER,
        "jwks_uri": ISSUER + "/openid/v1/jwks",
        "response_types_supported": ["id_token"],
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": ["RS256"],
    }


def test_tampered_payload_is_rejected(
    issuer: serviceaccounts.ServiceAccountTokenIssuer, store: security_store.MemoryStore
) -> None:
    token, _ = issuer.mint(
        namespace="team-a",
        service_account=_sa(store),
        audiences=[ISSUER],
        expiration_seconds=600,
        bound_object=None,
    )
    header, payload, signature = token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    claims["sub"] = "system:serviceaccount:kube-system:admin"
    forged = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    with pytest.raises(serviceaccounts.InvalidToken, match=r"^Signature verification failed$"):
        issuer.verify(f"{header}.{forged}.{signature}")


def test_algorithm_confusion_is_rejected(issuer: serviceaccounts.ServiceAccountTokenIssuer) -> None:
    # HS256 keyed with the (public) JWKS modulus: the classic RS/HS confusion attack.
    forged = jwt.encode(
        _valid_claims(),
        "public-material-used-as-hmac-secret-0123456789",
        algorithm="HS256",
        headers={"kid": issuer.kid},
    )
    with pytest.raises(
        serviceaccounts.InvalidToken, match=r"^unexpected signing algorithm 'HS256'$"
    ):
        issuer.verify(forged)
    unsigned = jwt.encode(_valid_claims(), None, algorithm="none", headers={"kid": issuer.kid})  # type: ignore[arg-type]
    with pytest.raises(
        serviceaccounts.InvalidToken, match=r"^unexpected signing algorithm 'none'$"
    ):
        issuer.verify(unsigned)


def test_unknown_kid_and_garbage_are_rejected(
    issuer: serviceaccounts.ServiceAccountTokenIssuer, key_dir: Path
) -> None:
    with pytest.raises(serviceaccounts.InvalidToken, match=r"^token signed by an unknown key$"):
        issuer.verify(_sign_with_issuer_key(key_dir, _valid_claims(), kid="someone-else"))
    with pytest.raises(serviceaccounts.InvalidToken, match=r"^malformed token: "):
        issuer.verify("not-a-jwt")


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"exp": int(datetime.now(UTC).timestamp()) - 120}, "^Signature has expired$"),
        (
            {"nbf": int(datetime.now(UTC).timestamp()) + 3600},
            "^The token is not yet valid \\(nbf\\)$",
        ),
        ({"iss": "https://evil.example"}, "^Invalid issuer$"),
        ({"aud": ["someone-else"]}, "^Audience doesn't match$"),
        ({"aud": None}, '^Token is missing the "aud" claim$'),
        ({"exp": None}, '^Token is missing the "exp" claim$'),
        ({"iss": None}, '^Token is missing the "iss" claim$'),
        ({"aud": ISSUER}, "^aud must be a list$"),
        ({"kubernetes.io": None}, "^token has no kubernetes.io service-account claims$"),
    ],
)
def test_claim_checks(
    issuer: serviceaccounts.ServiceAccountTokenIssuer,
    key_dir: Path,
    overrides: dict[str, Any],
    message: str,
) -> None:
    token = _sign_with_issuer_key(key_dir, _valid_claims(**overrides), kid=issuer.kid)
    with pytest.raises(serviceaccounts.InvalidToken, match=message):
        issuer.verify(token)


def test_token_from_another_issuer_is_rejected(
    tmp_path: Path,
    issuer: serviceaccounts.ServiceAccountTokenIssuer,
    store: security_store.MemoryStore,
) -> None:
    stranger = serviceaccounts.ServiceAccountTokenIssuer(issuer=ISSUER, directory=tmp_path)
    token, _ = stranger.mint(
        namespace="team-a",
        service_account=_sa(store),
        audiences=[ISSUER],
        expiration_seconds=600,
        bound_object=None,
    )
    with pytest.raises(serviceaccounts.InvalidToken, match=r"^token signed by an unknown key$"):
        issuer.verify(token)


# -- TokenRequest ----------------------------------------------------------------------------


def _request(
    issuer: serviceaccounts.ServiceAccountTokenIssuer,
    store: security_store.MemoryStore,
    body: dict[str, Any],
    *,
    name: str = "robot",
) -> dict[str, Any]:
    return serviceaccounts.token_request(
        issuer=issuer, reader=store, namespace="team-a", service_account_name=name, body=body
    )


def test_token_request_defaults(
    issuer: serviceaccounts.ServiceAccountTokenIssuer, store: security_store.MemoryStore
) -> None:
    before = datetime.now(UTC).replace(microsecond=0)
    out = _request(
        issuer,
        store,
        {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": {}},
    )
    assert out["kind"] == "TokenRequest"
    assert out["metadata"]["name"] == "robot" and out["metadata"]["namespace"] == "team-a"
    assert out["spec"] == {"audiences": [ISSUER], "expirationSeconds": 3600}
    expires = datetime.fromisoformat(out["status"]["expirationTimestamp"].replace("Z", "+00:00"))
    assert (
        before + timedelta(seconds=3600) <= expires <= datetime.now(UTC) + timedelta(seconds=3600)
    )
    claims = issuer.verify(out["status"]["token"])
    assert claims["exp"] == int(expires.timestamp())
    assert "pod" not in claims["kubernetes.io"]


def test_token_request_bound_to_pod(
    issuer: serviceaccounts.ServiceAccountTokenIssuer, store: security_store.MemoryStore
) -> None:
    worker = store.get(group="", resource="pods", namespace="team-a", name="worker")
    assert worker is not None
    uid = worker["metadata"]["uid"]
    ref = {"kind": "Pod", "apiVersion": "v1", "name": "worker", "uid": uid}
    out = _request(
        issuer,
        store,
        {"spec": {"audiences": ["agentauth"], "expirationSeconds": 600, "boundObjectRef": ref}},
    )
    assert out["spec"] == {
        "audiences": ["agentauth"],
        "expirationSeconds": 600,
        "boundObjectRef": ref,
    }
    claims = issuer.verify(out["status"]["token"], audiences=["agentauth"])
    assert claims["kubernetes.io"]["pod"] == {"name": "worker", "uid": uid}
    # Without a uid in the reference the server fills in the stored one.
    out = _request(issuer, store, {"spec": {"boundObjectRef": {"kind": "Pod", "name": "worker"}}})
    assert issuer.verify(out["status"]["token"])["kubernetes.io"]["pod"]["uid"] == uid


@pytest.mark.parametrize(
    ("body", "name", "code", "reason", "message"),
    [
        ({}, "ghost", 404, "NotFound", 'serviceaccounts "ghost" not found'),
        (
            {"spec": {"expirationSeconds": 599}},
            "robot",
            422,
            "Invalid",
            'TokenRequest.authentication.k8s.io "" is invalid: '
            "spec.expirationSeconds: Invalid value: 599: "
            "may not specify a duration less than 10 minutes",
        ),
        (
            {"spec": {"expirationSeconds": (1 << 32) + 1}},
            "robot",
            422,
            "Invalid",
            'TokenRequest.authentication.k8s.io "" is invalid: '
            "spec.expirationSeconds: Invalid value: 4294967297: "
            "may not specify a duration larger than 2^32 seconds",
        ),
        (
            {"spec": {"expirationSeconds": True}},
            "robot",
            422,
            "Invalid",
            'TokenRequest.authentication.k8s.io "" is invalid: '
            "spec.expirationSeconds: Invalid value: True: "
            "must be an integer",
        ),
        (
            {"spec": {"audiences": "agentauth"}},
            "robot",
            422,
            "Invalid",
            'TokenRequest.authentication.k8s.io "" is invalid: spec.audiences: Invalid value: '
            "must be a list of non-empty strings",
        ),
        (
            {"metadata": {"name": "someone"}},
            "robot",
            422,
            "Invalid",
            'TokenRequest.authentication.k8s.io "robot" is invalid: '
            'metadata.name: Invalid value: "someone": '
            "must match the service account name if specified",
        ),
        (
            {"kind": "Pod", "apiVersion": "v1"},
            "robot",
            400,
            "BadRequest",
            "expected kind TokenRequest in authentication.k8s.io/v1, got kind 'Pod' in 'v1'",
        ),
        (
            {"spec": {"boundObjectRef": {"kind": "Pod", "name": "gone"}}},
            "robot",
            404,
            "NotFound",
            'pods "gone" not found',
        ),
        (
            {"spec": {"boundObjectRef": {"kind": "Pod", "name": "worker", "uid": "stale"}}},
            "robot",
            409,
            "Conflict",
            'Operation cannot be fulfilled on Pod "worker": the UID in the bound object '
            "reference (stale) does not match the UID in record. The object might have been "
            "deleted and then recreated",
        ),
        (
            {"spec": {"boundObjectRef": {"kind": "Pod", "name": "other"}}},
            "robot",
            400,
            "BadRequest",
            'cannot bind token for serviceaccount "robot" to pod running with different '
            "serviceaccount name.",
        ),
        (
            {
                "spec": {
                    "boundObjectRef": {"kind": "Deployment", "apiVersion": "apps/v1", "name": "x"}
                }
            },
            "robot",
            400,
            "BadRequest",
            "cannot bind token to object of type apps/v1, Kind=Deployment",
        ),
        (
            {"spec": {"boundObjectRef": {"kind": "Pod"}}},
            "robot",
            422,
            "Invalid",
            'TokenRequest.authentication.k8s.io "" is invalid: '
            "spec.boundObjectRef.name: Required value",
        ),
    ],
)
def test_token_request_errors(
    issuer: serviceaccounts.ServiceAccountTokenIssuer,
    store: security_store.MemoryStore,
    body: dict[str, Any],
    name: str,
    code: int,
    reason: str,
    message: str,
) -> None:
    with pytest.raises(serviceaccounts.TokenRequestError) as caught:
        _request(issuer, store, body, name=name)
    assert (caught.value.code, caught.value.reason, caught.value.message) == (code, reason, message)


def test_token_request_invalid_carries_causes(
    issuer: serviceaccounts.ServiceAccountTokenIssuer, store: security_store.MemoryStore
) -> None:
    with pytest.raises(serviceaccounts.TokenRequestError) as caught:
        _request(issuer, store, {"spec": {"expirationSeconds": 10}})
    assert caught.value.causes == [
        {
            "reason": "FieldValueInvalid",
            "message": "Invalid value: 10: may not specify a duration less than 10 minutes",
            "field": "spec.expirationSeconds",
        }
    ]


# -- end to end: kubectl create token against the embedded control plane -------------------------


def test_kubectl_create_token_bound_to_a_pod(
    dev_cluster: Any, kubectl: Any, kube_api: Any, namespace: str
) -> None:
    import ssl
    import urllib.request

    from kubernetes import client

    core = client.CoreV1Api(kube_api)
    core.create_namespaced_service_account(namespace, {"metadata": {"name": "agent-sa"}})
    pod = core.create_namespaced_pod(
        namespace,
        {
            "metadata": {"name": "agent"},
            "spec": {"serviceAccountName": "agent-sa", "containers": [{"name": "c", "image": "x"}]},
        },
    )
    out = kubectl(
        "create",
        "token",
        "agent-sa",
        "-n",
        namespace,
        "--audience",
        "agentauth",
        "--bound-object-kind",
        "Pod",
        "--bound-object-name",
        "agent",
        "--duration",
        "10m",
    )
    token = out.stdout.strip()

    # Verify it as an outside relying party would: OIDC discovery, then the JWKS.
    context = ssl.create_default_context(cafile=str(dev_cluster.ca_path))
    headers = {"Authorization": f"Bearer {dev_cluster.admin_token}"}

    def fetch(url: str) -> dict[str, Any]:
        request = urllib.request.Request(url, headers=headers)  # noqa: S310 - https, test cluster
        with urllib.request.urlopen(request, context=context) as response:  # noqa: S310
            document: dict[str, Any] = json.load(response)
            return document

    discovery = fetch(dev_cluster.url + "/.well-known/openid-configuration")
    jwks = fetch(discovery["jwks_uri"])
    header = jwt.get_unverified_header(token)
    (key,) = [k for k in jwks["keys"] if k["kid"] == header["kid"]]
    claims = jwt.decode(
        token,
        jwt.PyJWK(key).key,
        algorithms=["RS256"],
        audience="agentauth",
        issuer=discovery["issuer"],
    )
    assert claims["sub"] == f"system:serviceaccount:{namespace}:agent-sa"
    assert claims["exp"] - claims["iat"] == 600
    assert claims["kubernetes.io"]["pod"] == {"name": "agent", "uid": pod.metadata.uid}

    refused = kubectl(
        "create",
        "token",
        "agent-sa",
        "-n",
        namespace,
        "--bound-object-kind",
        "Pod",
        "--bound-object-name",
        "ghost",
        check=False,
    )
    assert refused.returncode == 1
    assert refused.stderr.strip() == 'error: failed to create token: pods "ghost" not found'
