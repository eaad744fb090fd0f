"""Bearer-token authentication: static kubeconfig tokens and live-checked service-account tokens."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from agentauth.devcluster import authn, serviceaccounts, types
from tests.devcluster.fixtures import security_store

ISSUER = "https://127.0.0.1:6443"
ALICE = types.UserInfo(username="alice", uid="alice-uid", groups=("approvers",))


@pytest.fixture(scope="module")
def issuer(tmp_path_factory: pytest.TempPathFactory) -> serviceaccounts.ServiceAccountTokenIssuer:
    return serviceaccounts.ServiceAccountTokenIssuer(
        issuer=ISSUER, directory=tmp_path_factory.mktemp("authn-keys")
    )


@pytest.fixture
def store() -> security_store.MemoryStore:
    store = security_store.MemoryStore()
    store.put(security_store.service_account("robot", "team-a"))
    store.put(security_store.pod("worker", namespace="team-a", service_account_name="robot"))
    return store


@pytest.fixture
def authenticator(
    issuer: serviceaccounts.ServiceAccountTokenIssuer, store: security_store.MemoryStore
) -> authn.Authenticator:
    return authn.Authenticator(
        static_tokens={"alice-secret-token": ALICE}, token_issuer=issuer, reader=store
    )


def _get(store: security_store.MemoryStore, resource: str, name: str) -> dict[str, Any]:
    found = store.get(group="", resource=resource, namespace="team-a", name=name)
    assert found is not None
    return found


def _sa_token(
    issuer: serviceaccounts.ServiceAccountTokenIssuer,
    store: security_store.MemoryStore,
    *,
    bound: bool = True,
    audiences: list[str] | None = None,
) -> str:
    ref = {"kind": "Pod", "name": "worker"} if bound else None
    body: dict[str, Any] = {"spec": {"boundObjectRef": ref, "audiences": audiences}}
    out = serviceaccounts.token_request(
        issuer=issuer, reader=store, namespace="team-a", service_account_name="robot", body=body
    )
    token: str = out["status"]["token"]
    return token


def _fails(authenticator: authn.Authenticator, header: str | None, message: str) -> None:
    with pytest.raises(authn.Unauthenticated) as caught:
        authenticator.authenticate(header)
    assert caught.value.message == message


def test_static_token_adds_authenticated_group(authenticator: authn.Authenticator) -> None:
    user = authenticator.authenticate("Bearer alice-secret-token")
    assert user == types.UserInfo(
        username="alice", uid="alice-uid", groups=("approvers", "system:authenticated")
    )
    # kube-apiserver accepts the scheme in any case.
    assert authenticator.authenticate("bearer alice-secret-token").username == "alice"


@pytest.mark.parametrize(
    ("header", "message"),
    [
        (None, "no credentials provided"),
        ("", "no credentials provided"),
        ("Basic YWxpY2U6cGFzcw==", "unsupported authorization scheme"),
        ("Bearer", "invalid bearer token"),
        ("Bearer alice-secret-toke", "invalid bearer token"),
        ("Bearer alice-secret-token-and-more", "invalid bearer token"),
        ("Bearer a.b.c", "invalid bearer token, malformed token: Invalid header padding"),
    ],
)
def test_bad_headers(authenticator: authn.Authenticator, header: str | None, message: str) -> None:
    _fails(authenticator, header, message)


def test_bound_service_account_token(
    authenticator: authn.Authenticator,
    issuer: serviceaccounts.ServiceAccountTokenIssuer,
    store: security_store.MemoryStore,
) -> None:
    token = _sa_token(issuer, store)
    user = authenticator.authenticate(f"Bearer {token}")
    sa, pod = _get(store, "serviceaccounts", "robot"), _get(store, "pods", "worker")
    jti = issuer.verify(token)["jti"]
    assert user == types.UserInfo(
        username="system:serviceaccount:team-a:robot",
        uid=sa["metadata"]["uid"],
        groups=("system:serviceaccounts", "system:serviceaccounts:team-a", "system:authenticated"),
        extra={
            "authentication.kubernetes.io/pod-name": ("worker",),
            "authentication.kubernetes.io/pod-uid": (pod["metadata"]["uid"],),
            "authentication.kubernetes.io/credential-id": (f"JTI={jti}",),
        },
    )


def test_token_for_another_audience_does_not_authenticate_to_the_api(
    authenticator: authn.Authenticator,
    issuer: serviceaccounts.ServiceAccountTokenIssuer,
    store: security_store.MemoryStore,
) -> None:
    token = _sa_token(issuer, store, audiences=["agentauth"])
    _fails(authenticator, f"Bearer {token}", "invalid bearer token, Audience doesn't match")
    user, audiences = authenticator.authenticate_token(token, audiences=["agentauth", "other"])
    assert user.username == "system:serviceaccount:team-a:robot"
    assert audiences == ["agentauth"]


def test_static_tokens_are_only_valid_for_the_api_audience(
    authenticator: authn.Authenticator,
) -> None:
    with pytest.raises(authn.Unauthenticated) as caught:
        authenticator.authenticate_token("alice-secret-token", audiences=["agentauth"])
    assert caught.value.message == "token audiences is invalid for the target audiences"
    user, audiences = authenticator.authenticate_token("alice-secret-token", audiences=None)
    assert (user.username, audiences) == ("alice", [ISSUER])


def test_deleting_the_pod_revokes_bound_tokens(
    authenticator: authn.Authenticator,
    issuer: serviceaccounts.ServiceAccountTokenIssuer,
    store: security_store.MemoryStore,
) -> None:
    token = _sa_token(issuer, store)
    unbound = _sa_token(issuer, store, bound=False)
    store.delete("Pod", "worker", "team-a")
    _fails(
        authenticator,
        f"Bearer {token}",
        "invalid bearer token, service account token has been invalidated",
    )
    # A token that was never bound to the pod survives it.
    assert authenticator.authenticate(f"Bearer {unbound}").username.endswith(":robot")


def test_recreated_pod_does_not_revive_tokens(
    authenticator: authn.Authenticator,
    issuer: serviceaccounts.ServiceAccountTokenIssuer,
    store: security_store.MemoryStore,
) -> None:
    token = _sa_token(issuer, store)
    old_uid = _get(store, "pods", "worker")["metadata"]["uid"]
    store.put(security_store.pod("worker", namespace="team-a", service_account_name="robot"))
    new_uid = _get(store, "pods", "worker")["metadata"]["uid"]
    _fails(
        authenticator,
        f"Bearer {token}",
        f"invalid bearer token, pod UID ({new_uid}) does not match claim ({old_uid})",
    )


def test_terminating_pod_revokes_bound_tokens(
    authenticator: authn.Authenticator,
    issuer: serviceaccounts.ServiceAccountTokenIssuer,
    store: security_store.MemoryStore,
) -> None:
    token = _sa_token(issuer, store)
    pod = _get(store, "pods", "worker")
    pod["metadata"]["deletionTimestamp"] = serviceaccounts.format_timestamp(
        datetime.now(UTC) + timedelta(seconds=30)
    )
    # Inside its grace period the pod still runs, so its token still works.
    assert authenticator.authenticate(f"Bearer {token}").username.endswith(":robot")
    pod["metadata"]["deletionTimestamp"] = serviceaccounts.format_timestamp(
        datetime.now(UTC) - timedelta(seconds=1)
    )
    _fails(
        authenticator,
        f"Bearer {token}",
        "invalid bearer token, service account token has been invalidated",
    )


def test_deleted_or_recreated_service_account_revokes_tokens(
    authenticator: authn.Authenticator,
    issuer: serviceaccounts.ServiceAccountTokenIssuer,
    store: security_store.MemoryStore,
) -> None:
    token = _sa_token(issuer, store, bound=False)
    old_uid = _get(store, "serviceaccounts", "robot")["metadata"]["uid"]
    store.delete("ServiceAccount", "robot", "team-a")
    _fails(
        authenticator, f"Bearer {token}", 'invalid bearer token, serviceaccounts "robot" not found'
    )
    store.put(security_store.service_account("robot", "team-a"))
    new_uid = _get(store, "serviceaccounts", "robot")["metadata"]["uid"]
    _fails(
        authenticator,
        f"Bearer {token}",
        f"invalid bearer token, service account UID ({new_uid}) does not match claim ({old_uid})",
    )


def test_token_from_a_foreign_key_is_rejected(
    authenticator: authn.Authenticator, store: security_store.MemoryStore, tmp_path: Path
) -> None:
    stranger = serviceaccounts.ServiceAccountTokenIssuer(issuer=ISSUER, directory=tmp_path)
    token = _sa_token(stranger, store)
    _fails(authenticator, f"Bearer {token}", "invalid bearer token, token signed by an unknown key")


def test_token_bound_to_a_secret_dies_with_the_secret(
    authenticator: authn.Authenticator,
    issuer: serviceaccounts.ServiceAccountTokenIssuer,
    store: security_store.MemoryStore,
) -> None:
    secret = store.put({"kind": "Secret", "metadata": {"name": "s", "namespace": "team-a"}})
    out = serviceaccounts.token_request(
        issuer=issuer,
        reader=store,
        namespace="team-a",
        service_account_name="robot",
        body={"spec": {"boundObjectRef": {"kind": "Secret", "apiVersion": "v1", "name": "s"}}},
    )
    token = out["status"]["token"]
    assert issuer.verify(token)["kubernetes.io"]["secret"] == {
        "name": "s",
        "uid": secret["metadata"]["uid"],
    }
    user = authenticator.authenticate(f"Bearer {token}")
    assert "authentication.kubernetes.io/pod-name" not in user.extra
    store.delete("Secret", "s", "team-a")
    _fails(
        authenticator,
        f"Bearer {token}",
        "invalid bearer token, service account token has been invalidated",
    )
