"""TokenReview, SubjectAccessReview and SelfSubjectAccessReview answered from live objects."""

from __future__ import annotations

from typing import Any

import pytest

from agentauth.devcluster import authn, rbac, reviews, serviceaccounts, types
from tests.devcluster.fixtures import security_store

ISSUER = "https://127.0.0.1:6443"


@pytest.fixture(scope="module")
def issuer(tmp_path_factory: pytest.TempPathFactory) -> serviceaccounts.ServiceAccountTokenIssuer:
    return serviceaccounts.ServiceAccountTokenIssuer(
        issuer=ISSUER, directory=tmp_path_factory.mktemp("review-keys")
    )


@pytest.fixture
def store() -> security_store.MemoryStore:
    store = security_store.MemoryStore()
    store.put(security_store.service_account("robot", "team-a"))
    store.put(security_store.pod("worker", namespace="team-a", service_account_name="robot"))
    store.put(
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "RoleBinding",
            "metadata": {"name": "alice-view", "namespace": "team-a"},
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "ClusterRole",
                "name": "view",
            },
            "subjects": [{"kind": "User", "name": "alice"}],
        }
    )
    return store


@pytest.fixture
def authenticator(
    issuer: serviceaccounts.ServiceAccountTokenIssuer, store: security_store.MemoryStore
) -> authn.Authenticator:
    alice = types.UserInfo(username="alice")
    return authn.Authenticator(
        static_tokens={"alice-token": alice}, token_issuer=issuer, reader=store
    )


def _bound_token(
    issuer: serviceaccounts.ServiceAccountTokenIssuer,
    store: security_store.MemoryStore,
    audience: str,
) -> str:
    out = serviceaccounts.token_request(
        issuer=issuer,
        reader=store,
        namespace="team-a",
        service_account_name="robot",
        body={
            "spec": {"audiences": [audience], "boundObjectRef": {"kind": "Pod", "name": "worker"}}
        },
    )
    token: str = out["status"]["token"]
    return token


def _token_review(token: str, audiences: list[str] | None = None) -> dict[str, Any]:
    spec: dict[str, Any] = {"token": token}
    if audiences is not None:
        spec["audiences"] = audiences
    return {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview", "spec": spec}


def test_token_review_of_live_then_revoked_token(
    authenticator: authn.Authenticator,
    issuer: serviceaccounts.ServiceAccountTokenIssuer,
    store: security_store.MemoryStore,
) -> None:
    token = _bound_token(issuer, store, "agentauth")
    live = reviews.token_review(_token_review(token, ["agentauth"]), authenticator=authenticator)
    pod = store.get(group="", resource="pods", namespace="team-a", name="worker")
    assert pod is not None
    assert live["kind"] == "TokenReview" and live["apiVersion"] == "authentication.k8s.io/v1"
    assert live["spec"] == {"token": token, "audiences": ["agentauth"]}
    status = live["status"]
    assert status["authenticated"] is True
    assert status["audiences"] == ["agentauth"]
    assert status["user"]["username"] == "system:serviceaccount:team-a:robot"
    assert status["user"]["groups"] == [
        "system:serviceaccounts",
        "system:serviceaccounts:team-a",
        "system:authenticated",
    ]
    assert status["user"]["extra"]["authentication.kubernetes.io/pod-uid"] == [
        pod["metadata"]["uid"]
    ]

    store.delete("Pod", "worker", "team-a")
    revoked = reviews.token_review(_token_review(token, ["agentauth"]), authenticator=authenticator)
    assert revoked["status"] == {
        "user": {},
        "error": "[invalid bearer token, service account token has been invalidated]",
    }


def test_token_review_audiences(
    authenticator: authn.Authenticator,
    issuer: serviceaccounts.ServiceAccountTokenIssuer,
    store: security_store.MemoryStore,
) -> None:
    token = _bound_token(issuer, store, "agentauth")
    # Without spec.audiences the API server's own audience applies, which this token lacks.
    review = reviews.token_review(_token_review(token), authenticator=authenticator)
    assert review["status"] == {
        "user": {},
        "error": "[invalid bearer token, Audience doesn't match]",
    }
    static = reviews.token_review(_token_review("alice-token"), authenticator=authenticator)
    assert static["status"] == {
        "authenticated": True,
        "user": {"username": "alice", "groups": ["system:authenticated"]},
        "audiences": [ISSUER],
    }
    foreign = reviews.token_review(
        _token_review("alice-token", ["agentauth"]), authenticator=authenticator
    )
    assert foreign["status"] == {
        "user": {},
        "error": "[token audiences is invalid for the target audiences]",
    }


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"kind": "TokenReview", "spec": {}}, "token is required for TokenReview"),
        ({"spec": {"token": ""}}, "token is required for TokenReview"),
        ({"spec": {"token": "t", "audiences": "x"}}, "spec.audiences must be a list of strings"),
        ([], "the body of a TokenReview must be an object"),
        (
            {"kind": "SubjectAccessReview", "apiVersion": "authorization.k8s.io/v1"},
            "expected kind TokenReview in authentication.k8s.io/v1, got kind "
            "'SubjectAccessReview' in 'authorization.k8s.io/v1'",
        ),
    ],
)
def test_token_review_bad_bodies(
    authenticator: authn.Authenticator, body: Any, message: str
) -> None:
    with pytest.raises(reviews.ReviewError) as caught:
        reviews.token_review(body, authenticator=authenticator)
    assert (caught.value.code, caught.value.reason, caught.value.message) == (
        400,
        "BadRequest",
        message,
    )


def _sar(spec: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview", "spec": spec}


def test_subject_access_review(store: security_store.MemoryStore) -> None:
    authorizer = rbac.RBACAuthorizer(store)
    allowed = reviews.subject_access_review(
        _sar(
            {
                "user": "alice",
                "resourceAttributes": {"namespace": "team-a", "verb": "list", "resource": "pods"},
            }
        ),
        authorizer=authorizer,
    )
    assert allowed["kind"] == "SubjectAccessReview"
    assert allowed["status"] == {
        "allowed": True,
        "reason": 'RBAC: allowed by RoleBinding "alice-view/team-a" of ClusterRole "view" '
        'to User "alice"',
    }
    denied = reviews.subject_access_review(
        _sar(
            {
                "user": "alice",
                "resourceAttributes": {
                    "namespace": "team-a",
                    "verb": "get",
                    "resource": "secrets",
                    "name": "s",
                },
            }
        ),
        authorizer=authorizer,
    )
    assert denied["status"] == {"allowed": False}
    by_group = reviews.subject_access_review(
        _sar(
            {
                "groups": ["system:masters"],
                "nonResourceAttributes": {"path": "/metrics", "verb": "get"},
            }
        ),
        authorizer=authorizer,
    )
    assert by_group["status"] == {"allowed": True}
    discovery = reviews.subject_access_review(
        _sar(
            {
                "user": "x",
                "groups": ["system:authenticated"],
                "nonResourceAttributes": {"path": "/apis", "verb": "get"},
            }
        ),
        authorizer=authorizer,
    )
    assert discovery["status"]["allowed"] is True


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (
            {"resourceAttributes": {"verb": "get", "resource": "pods"}},
            'SubjectAccessReview.authorization.k8s.io "" is invalid: spec.user: Invalid value: "": '
            "at least one of user or group must be specified",
        ),
        (
            {"user": "alice"},
            'SubjectAccessReview.authorization.k8s.io "" is invalid: '
            'spec.resourceAttributes: Invalid value: "null": exactly one of '
            "nonResourceAttributes or resourceAttributes must be specified",
        ),
        (
            {"user": "alice", "resourceAttributes": {}, "nonResourceAttributes": {}},
            'SubjectAccessReview.authorization.k8s.io "" is invalid: '
            "spec.nonResourceAttributes: Invalid value: "
            "cannot be specified in combination with resourceAttributes",
        ),
    ],
)
def test_subject_access_review_validation(
    store: security_store.MemoryStore, spec: dict[str, Any], message: str
) -> None:
    with pytest.raises(reviews.ReviewError) as caught:
        reviews.subject_access_review(_sar(spec), authorizer=rbac.RBACAuthorizer(store))
    assert (caught.value.code, caught.value.reason, caught.value.message) == (
        422,
        "Invalid",
        message,
    )


def test_self_subject_access_review(store: security_store.MemoryStore) -> None:
    authorizer = rbac.RBACAuthorizer(store)
    alice = types.UserInfo(username="alice", groups=("system:authenticated",))
    body = {
        "apiVersion": "authorization.k8s.io/v1",
        "kind": "SelfSubjectAccessReview",
        "spec": {
            "resourceAttributes": {"namespace": "team-a", "verb": "watch", "resource": "pods"}
        },
    }
    assert reviews.self_subject_access_review(body, user=alice, authorizer=authorizer)["status"][
        "allowed"
    ]
    body["spec"]["resourceAttributes"]["namespace"] = "team-b"  # type: ignore[index]
    assert reviews.self_subject_access_review(body, user=alice, authorizer=authorizer)[
        "status"
    ] == {"allowed": False}
    with pytest.raises(reviews.ReviewError) as caught:
        reviews.self_subject_access_review(
            {"kind": "SelfSubjectAccessReview", "spec": {}}, user=alice, authorizer=authorizer
        )
    assert caught.value.message == (
        'SelfSubjectAccessReview.authorization.k8s.io "" is invalid: spec.resourceAttributes: '
        'Invalid value: "null": exactly one of nonResourceAttributes or resourceAttributes '
        "must be specified"
    )


def test_local_subject_access_review(store: security_store.MemoryStore) -> None:
    authorizer = rbac.RBACAuthorizer(store)
    body = {
        "apiVersion": "authorization.k8s.io/v1",
        "kind": "LocalSubjectAccessReview",
        "spec": {
            "user": "alice",
            "resourceAttributes": {"namespace": "team-a", "verb": "get", "resource": "pods"},
        },
    }
    out = reviews.local_subject_access_review(body, namespace="team-a", authorizer=authorizer)
    assert out["kind"] == "LocalSubjectAccessReview"
    assert out["metadata"] == {"namespace": "team-a", "creationTimestamp": None}
    assert out["status"]["allowed"] is True
    with pytest.raises(reviews.ReviewError) as caught:
        reviews.local_subject_access_review(body, namespace="team-b", authorizer=authorizer)
    assert (caught.value.code, caught.value.message) == (
        400,
        "spec.resourceAttributes.namespace must match namespace: team-b",
    )
    non_resource = {
        "kind": "LocalSubjectAccessReview",
        "spec": {"user": "alice", "nonResourceAttributes": {"path": "/x", "verb": "get"}},
    }
    with pytest.raises(reviews.ReviewError) as caught:
        reviews.local_subject_access_review(non_resource, namespace="team-a", authorizer=authorizer)
    assert (caught.value.code, caught.value.message) == (
        422,
        'LocalSubjectAccessReview.authorization.k8s.io "" is invalid: '
        "spec.nonResourceAttributes: Invalid value: disallowed on this kind of request",
    )


def test_self_subject_rules_review(store: security_store.MemoryStore) -> None:
    authorizer = rbac.RBACAuthorizer(store)
    alice = types.UserInfo(username="alice", groups=("system:authenticated",))
    body = {"kind": "SelfSubjectRulesReview", "spec": {"namespace": "team-a"}}
    status = reviews.self_subject_rules_review(body, user=alice, authorizer=authorizer)["status"]
    assert status["incomplete"] is False
    # Through the namespace's RoleBinding to the aggregated "view" role...
    assert any(
        "pods" in rule["resources"]
        and rule["apiGroups"] == [""]
        and rule["verbs"] == ["get", "list", "watch"]
        for rule in status["resourceRules"]
    )
    # ...and the bootstrap policy every authenticated user has.
    assert {
        "verbs": ["create"],
        "apiGroups": ["authorization.k8s.io"],
        "resources": ["selfsubjectaccessreviews", "selfsubjectrulesreviews"],
    } in status["resourceRules"]
    assert any("/apis" in rule["nonResourceURLs"] for rule in status["nonResourceRules"])
    elsewhere = reviews.self_subject_rules_review(
        {"kind": "SelfSubjectRulesReview", "spec": {"namespace": "team-b"}},
        user=alice,
        authorizer=authorizer,
    )["status"]
    assert not any("pods" in rule["resources"] for rule in elsewhere["resourceRules"])
    admin = types.UserInfo(username="admin", groups=("system:masters",))
    admin_status = reviews.self_subject_rules_review(body, user=admin, authorizer=authorizer)
    assert {"verbs": ["*"], "apiGroups": ["*"], "resources": ["*"]} in admin_status["status"][
        "resourceRules"
    ]


# -- end to end: the official client against the embedded control plane ------------------------


def test_token_review_of_live_and_revoked_token_through_the_server(
    kube_api: Any, namespace: str
) -> None:
    from kubernetes import client

    core = client.CoreV1Api(kube_api)
    auth = client.AuthenticationV1Api(kube_api)
    core.create_namespaced_service_account(namespace, {"metadata": {"name": "agent-sa"}})
    pod = core.create_namespaced_pod(
        namespace,
        {
            "metadata": {"name": "agent"},
            "spec": {"serviceAccountName": "agent-sa", "containers": [{"name": "c", "image": "x"}]},
        },
    )
    issued = core.create_namespaced_service_account_token(
        "agent-sa",
        namespace,
        {
            "spec": {
                "audiences": ["agentauth"],
                "expirationSeconds": 600,
                "boundObjectRef": {
                    "kind": "Pod",
                    "apiVersion": "v1",
                    "name": "agent",
                    "uid": pod.metadata.uid,
                },
            }
        },
    )
    token = issued.status.token
    live = auth.create_token_review({"spec": {"token": token, "audiences": ["agentauth"]}})
    assert live.status.authenticated is True
    assert live.status.audiences == ["agentauth"]
    assert live.status.user.username == f"system:serviceaccount:{namespace}:agent-sa"
    assert live.status.user.extra["authentication.kubernetes.io/pod-uid"] == [pod.metadata.uid]

    core.delete_namespaced_pod("agent", namespace, grace_period_seconds=0)
    revoked = auth.create_token_review({"spec": {"token": token, "audiences": ["agentauth"]}})
    assert not revoked.status.authenticated
    assert (
        revoked.status.error == "[invalid bearer token, service account token has been invalidated]"
    )


def test_subject_access_review_through_the_server(
    kube_api: Any, kubectl: Any, namespace: str
) -> None:
    from kubernetes import client

    kubectl(
        "create", "rolebinding", "bob-edit", "--clusterrole=edit", "--user=bob", "-n", namespace
    )
    authz = client.AuthorizationV1Api(kube_api)

    def can(user: str, verb: str, resource: str, subresource: str = "") -> bool:
        attributes = {"namespace": namespace, "verb": verb, "resource": resource}
        if subresource:
            attributes["subresource"] = subresource
        review = authz.create_subject_access_review(
            {"spec": {"user": user, "resourceAttributes": attributes}}
        )
        allowed: bool = review.status.allowed
        return allowed

    assert can("bob", "create", "configmaps")
    assert can("bob", "create", "serviceaccounts", "token")
    assert not can("bob", "update", "pods", "status")
    assert not can("bob", "create", "rolebindings")
    assert not can("alice", "get", "configmaps")
