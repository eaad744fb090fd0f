"""RBAC evaluation: a table of allow/deny cases over real Role/Binding objects, plus 403 wording."""

from __future__ import annotations

from typing import Any

import pytest

from agentauth.devcluster import rbac, types
from tests.devcluster.fixtures import security_store

RBAC_V1 = "rbac.authorization.k8s.io/v1"


def _role(
    kind: str, name: str, rules: list[dict[str, Any]], namespace: str | None = None, **extra: Any
) -> dict[str, Any]:
    metadata: dict[str, Any] = {"name": name, **extra.pop("metadata", {})}
    if namespace:
        metadata["namespace"] = namespace
    return {"apiVersion": RBAC_V1, "kind": kind, "metadata": metadata, "rules": rules, **extra}


def _binding(
    kind: str,
    name: str,
    role_kind: str,
    role: str,
    subjects: list[dict[str, Any]],
    namespace: str | None = None,
) -> dict[str, Any]:
    metadata: dict[str, Any] = {"name": name}
    if namespace:
        metadata["namespace"] = namespace
    return {
        "apiVersion": RBAC_V1,
        "kind": kind,
        "metadata": metadata,
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": role_kind, "name": role},
        "subjects": subjects,
    }


def _user(name: str) -> dict[str, Any]:
    return {"kind": "User", "apiGroup": "rbac.authorization.k8s.io", "name": name}


@pytest.fixture(scope="module")
def authorizer() -> rbac.RBACAuthorizer:
    store = security_store.MemoryStore()
    for obj in [
        _role(
            "Role",
            "pod-reader",
            [{"verbs": ["get", "list", "watch"], "apiGroups": [""], "resources": ["pods"]}],
            "team-a",
        ),
        _binding(
            "RoleBinding", "alice-reads-pods", "Role", "pod-reader", [_user("alice")], "team-a"
        ),
        # A ClusterRole referenced by a RoleBinding grants only inside that namespace.
        _role(
            "ClusterRole",
            "agentauth-admin",
            [{"verbs": ["*"], "apiGroups": ["agentauth.dev"], "resources": ["*"]}],
        ),
        _binding(
            "RoleBinding",
            "bob-agentauth",
            "ClusterRole",
            "agentauth-admin",
            [_user("bob")],
            "team-b",
        ),
        _role(
            "ClusterRole",
            "status-writer",
            [{"verbs": ["update", "patch"], "apiGroups": ["*"], "resources": ["*/status"]}],
        ),
        _binding(
            "ClusterRoleBinding", "carol-status", "ClusterRole", "status-writer", [_user("carol")]
        ),
        _role(
            "ClusterRole",
            "one-secret",
            [
                {
                    "verbs": ["get"],
                    "apiGroups": [""],
                    "resources": ["secrets"],
                    "resourceNames": ["config"],
                }
            ],
        ),
        _binding(
            "ClusterRoleBinding",
            "auditors-secret",
            "ClusterRole",
            "one-secret",
            [{"kind": "Group", "apiGroup": "rbac.authorization.k8s.io", "name": "auditors"}],
        ),
        _role(
            "ClusterRole",
            "metrics",
            [{"verbs": ["get"], "nonResourceURLs": ["/metrics", "/logs/*"]}],
        ),
        _binding("ClusterRoleBinding", "carol-metrics", "ClusterRole", "metrics", [_user("carol")]),
        # A service-account subject without a namespace means the binding's namespace.
        _binding(
            "RoleBinding",
            "robot-view",
            "ClusterRole",
            "view",
            [{"kind": "ServiceAccount", "name": "robot"}],
            "team-b",
        ),
        # Aggregated into the bootstrap "view" role by label, as a chart would do for our CRDs.
        _role(
            "ClusterRole",
            "agentauth-view",
            [
                {
                    "verbs": ["get", "list", "watch"],
                    "apiGroups": ["agentauth.dev"],
                    "resources": ["agents", "agents/status"],
                }
            ],
            metadata={"labels": {"rbac.authorization.k8s.io/aggregate-to-view": "true"}},
        ),
        # Malformed objects must grant nothing (and must not crash evaluation).
        _role("ClusterRole", "broken", "not-a-list"),  # type: ignore[arg-type]
        _role("ClusterRole", "broken-rule", [{"verbs": "*", "apiGroups": "*", "resources": "*"}]),
        _binding(
            "ClusterRoleBinding", "mallory-broken", "ClusterRole", "broken", [_user("mallory")]
        ),
        _binding(
            "ClusterRoleBinding",
            "mallory-broken-rule",
            "ClusterRole",
            "broken-rule",
            [_user("mallory")],
        ),
        _binding(
            "ClusterRoleBinding",
            "mallory-missing",
            "ClusterRole",
            "does-not-exist",
            [_user("mallory")],
        ),
        _binding(
            "RoleBinding",
            "mallory-wrong-kind",
            "Deployment",
            "pod-reader",
            [_user("mallory")],
            "team-a",
        ),
        _binding("ClusterRoleBinding", "subjectless", "ClusterRole", "cluster-admin", "oops"),  # type: ignore[arg-type]
    ]:
        store.put(obj)
    return rbac.RBACAuthorizer(store)


def _resource(
    verb: str,
    resource: str,
    *,
    namespace: str = "",
    group: str = "",
    subresource: str = "",
    name: str = "",
) -> types.RequestAttributes:
    return types.RequestAttributes(
        verb=verb,
        resource_request=True,
        api_group=group,
        api_version="v1",
        resource=resource,
        subresource=subresource,
        namespace=namespace,
        name=name,
    )


def _path(verb: str, path: str) -> types.RequestAttributes:
    return types.RequestAttributes(verb=verb, resource_request=False, path=path)


def _who(name: str, *groups: str) -> types.UserInfo:
    return types.UserInfo(username=name, groups=(*groups, "system:authenticated"))


ALICE = _who("alice")
BOB = _who("bob")
CAROL = _who("carol")
DAVE = _who("dave", "auditors")
MALLORY = _who("mallory")
ROBOT = types.UserInfo(
    username="system:serviceaccount:team-b:robot",
    groups=("system:serviceaccounts", "system:serviceaccounts:team-b", "system:authenticated"),
)
ROBOT_ELSEWHERE = types.UserInfo(
    username="system:serviceaccount:team-c:robot",
    groups=("system:serviceaccounts", "system:serviceaccounts:team-c", "system:authenticated"),
)
ANONYMOUS = types.UserInfo(username="system:anonymous", groups=("system:unauthenticated",))
ADMIN = types.UserInfo(username="admin", groups=("system:masters",))

CASES = [
    # user, attributes, allowed
    (ALICE, _resource("list", "pods", namespace="team-a"), True),
    (ALICE, _resource("get", "pods", namespace="team-a", name="x"), True),
    (ALICE, _resource("watch", "pods", namespace="team-a"), True),
    (ALICE, _resource("delete", "pods", namespace="team-a", name="x"), False),
    (ALICE, _resource("list", "pods", namespace="team-b"), False),
    (ALICE, _resource("list", "pods"), False),  # all namespaces needs a cluster-wide grant
    (ALICE, _resource("get", "pods", namespace="team-a", subresource="log", name="x"), False),
    (ALICE, _resource("list", "pods", namespace="team-a", group="apps"), False),
    (BOB, _resource("create", "agents", namespace="team-b", group="agentauth.dev"), True),
    (
        BOB,
        _resource(
            "patch",
            "agents",
            namespace="team-b",
            group="agentauth.dev",
            subresource="status",
            name="a",
        ),
        True,
    ),
    (BOB, _resource("create", "agents", namespace="team-a", group="agentauth.dev"), False),
    (BOB, _resource("list", "agents", group="agentauth.dev"), False),
    (BOB, _resource("create", "pods", namespace="team-b"), False),
    (CAROL, _resource("update", "pods", namespace="x", subresource="status", name="p"), True),
    (
        CAROL,
        _resource(
            "patch",
            "accessrequests",
            group="agentauth.dev",
            namespace="y",
            subresource="status",
            name="r",
        ),
        True,
    ),
    (CAROL, _resource("update", "pods", namespace="x", name="p"), False),
    (CAROL, _resource("update", "pods", namespace="x", subresource="exec", name="p"), False),
    (CAROL, _path("get", "/metrics"), True),
    (CAROL, _path("get", "/logs/kube-apiserver.log"), True),
    (CAROL, _path("get", "/logs"), False),  # "/logs/*" needs the slash
    (CAROL, _path("post", "/metrics"), False),
    (DAVE, _resource("get", "secrets", namespace="any", name="config"), True),
    (DAVE, _resource("get", "secrets", namespace="any", name="other"), False),
    (
        DAVE,
        _resource("list", "secrets", namespace="any"),
        False,
    ),  # resourceNames never match a list
    (ROBOT, _resource("list", "pods", namespace="team-b"), True),  # bootstrap aggregated "view"
    (
        ROBOT,
        _resource("get", "agents", namespace="team-b", group="agentauth.dev", name="a"),
        True,
    ),  # aggregated by label
    (
        ROBOT,
        _resource(
            "get",
            "agents",
            namespace="team-b",
            group="agentauth.dev",
            subresource="status",
            name="a",
        ),
        True,
    ),
    (
        ROBOT,
        _resource("delete", "agents", namespace="team-b", group="agentauth.dev", name="a"),
        False,
    ),
    (
        ROBOT,
        _resource("get", "secrets", namespace="team-b", name="s"),
        False,
    ),  # view excludes secrets
    (ROBOT, _resource("list", "pods", namespace="team-a"), False),
    (ROBOT_ELSEWHERE, _resource("list", "pods", namespace="team-b"), False),
    (MALLORY, _resource("get", "pods", namespace="team-a", name="x"), False),
    (MALLORY, _path("get", "/metrics"), False),
    (ADMIN, _resource("delete", "namespaces", name="kube-system"), True),
    (ADMIN, _path("get", "/anything"), True),
    # Bootstrap policy: every authenticated user may discover and ask "can I".
    (MALLORY, _path("get", "/apis"), True),
    (MALLORY, _path("get", "/apis/agentauth.dev/v1alpha1"), True),
    (MALLORY, _path("get", "/openapi/v3/apis/agentauth.dev/v1alpha1"), True),
    (MALLORY, _path("get", "/version"), True),
    (MALLORY, _resource("create", "selfsubjectaccessreviews", group="authorization.k8s.io"), True),
    (MALLORY, _resource("create", "subjectaccessreviews", group="authorization.k8s.io"), False),
    (ANONYMOUS, _path("get", "/healthz"), True),
    (ANONYMOUS, _path("get", "/apis"), False),
    (ROBOT, _path("get", "/.well-known/openid-configuration"), True),
    (ROBOT, _path("get", "/openid/v1/jwks"), True),
    (ALICE, _path("get", "/openid/v1/jwks"), False),
]


@pytest.mark.parametrize(("user", "attributes", "allowed"), CASES)
def test_rbac_table(
    authorizer: rbac.RBACAuthorizer,
    user: types.UserInfo,
    attributes: types.RequestAttributes,
    allowed: bool,
) -> None:
    assert authorizer.authorize(user, attributes).allowed is allowed


def test_allow_reasons_name_the_binding(authorizer: rbac.RBACAuthorizer) -> None:
    decision = authorizer.authorize(ALICE, _resource("list", "pods", namespace="team-a"))
    assert decision == types.Decision(
        allowed=True,
        reason='RBAC: allowed by RoleBinding "alice-reads-pods/team-a" of Role "pod-reader" '
        'to User "alice"',
    )
    decision = authorizer.authorize(DAVE, _resource("get", "secrets", namespace="n", name="config"))
    assert decision.reason == (
        'RBAC: allowed by ClusterRoleBinding "auditors-secret" of ClusterRole "one-secret" '
        'to Group "auditors"'
    )
    decision = authorizer.authorize(ROBOT, _resource("list", "pods", namespace="team-b"))
    assert decision.reason == (
        'RBAC: allowed by RoleBinding "robot-view/team-b" of ClusterRole "view" '
        'to ServiceAccount "team-b/robot"'
    )
    assert authorizer.authorize(
        ALICE, _resource("delete", "pods", namespace="team-a", name="x")
    ) == types.Decision(allowed=False, reason="")


@pytest.mark.parametrize(
    ("attributes", "message"),
    [
        (
            _resource("list", "pods", namespace="default"),
            'pods is forbidden: User "bob" cannot list resource "pods" in API group "" '
            'in the namespace "default"',
        ),
        (
            _resource("get", "agents", group="agentauth.dev", namespace="team-a", name="planner"),
            'agents.agentauth.dev "planner" is forbidden: User "bob" cannot get resource '
            '"agents" in API group "agentauth.dev" in the namespace "team-a"',
        ),
        (
            _resource("update", "pods", namespace="ns", subresource="status", name="p"),
            'pods "p" is forbidden: User "bob" cannot update resource "pods/status" '
            'in API group "" in the namespace "ns"',
        ),
        (
            _resource("list", "namespaces"),
            'namespaces is forbidden: User "bob" cannot list resource "namespaces" '
            'in API group "" at the cluster scope',
        ),
        (_path("get", "/metrics"), 'forbidden: User "bob" cannot get path "/metrics"'),
    ],
)
def test_forbidden_messages(
    authorizer: rbac.RBACAuthorizer, attributes: types.RequestAttributes, message: str
) -> None:
    assert authorizer.forbidden_message(BOB, attributes) == message


def test_forbidden_status_body(authorizer: rbac.RBACAuthorizer) -> None:
    attributes = _resource(
        "get", "agents", group="agentauth.dev", namespace="team-a", name="planner"
    )
    assert authorizer.forbidden_status(BOB, attributes) == {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": authorizer.forbidden_message(BOB, attributes),
        "reason": "Forbidden",
        "details": {"name": "planner", "group": "agentauth.dev", "kind": "agents"},
        "code": 403,
    }


def test_stored_bootstrap_objects_take_precedence() -> None:
    store = security_store.MemoryStore()
    # An admin who narrows system:discovery to /version takes discovery away from users.
    store.put(
        _role(
            "ClusterRole", "system:discovery", [{"verbs": ["get"], "nonResourceURLs": ["/version"]}]
        )
    )
    authorizer = rbac.RBACAuthorizer(store)
    assert not authorizer.authorize(MALLORY, _path("get", "/apis")).allowed
    assert authorizer.authorize(MALLORY, _path("get", "/version")).allowed


def test_bootstrap_policy_is_well_formed() -> None:
    policy = rbac.bootstrap_policy()
    names = {(obj["kind"], obj["metadata"]["name"]) for obj in policy}
    assert {
        ("ClusterRole", "cluster-admin"),
        ("ClusterRole", "system:discovery"),
        ("ClusterRole", "system:basic-user"),
        ("ClusterRole", "system:public-info-viewer"),
        ("ClusterRole", "view"),
        ("ClusterRoleBinding", "system:discovery"),
    } <= names
    roles = {obj["metadata"]["name"] for obj in policy if obj["kind"] == "ClusterRole"}
    for binding in (obj for obj in policy if obj["kind"] == "ClusterRoleBinding"):
        assert binding["roleRef"]["name"] in roles


LABELS = {"app": "web", "tier": "front", "agentauth.dev/agent": "planner"}


@pytest.mark.parametrize(
    ("selector", "matches"),
    [
        ({}, True),
        (None, False),
        ({"matchLabels": {"app": "web"}}, True),
        ({"matchLabels": {"app": "db"}}, False),
        ({"matchLabels": {"app": "web", "tier": "front"}}, True),
        ({"matchExpressions": [{"key": "app", "operator": "In", "values": ["web", "db"]}]}, True),
        ({"matchExpressions": [{"key": "app", "operator": "In", "values": ["db"]}]}, False),
        ({"matchExpressions": [{"key": "app", "operator": "NotIn", "values": ["db"]}]}, True),
        ({"matchExpressions": [{"key": "missing", "operator": "NotIn", "values": ["db"]}]}, True),
        ({"matchExpressions": [{"key": "app", "operator": "NotIn", "values": ["web"]}]}, False),
        ({"matchExpressions": [{"key": "agentauth.dev/agent", "operator": "Exists"}]}, True),
        ({"matchExpressions": [{"key": "missing", "operator": "Exists"}]}, False),
        ({"matchExpressions": [{"key": "missing", "operator": "DoesNotExist"}]}, True),
        ({"matchExpressions": [{"key": "app", "operator": "DoesNotExist"}]}, False),
        (
            {
                "matchLabels": {"app": "web"},
                "matchExpressions": [{"key": "tier", "operator": "In", "values": ["back"]}],
            },
            False,
        ),
        # Malformed selectors match nothing (fail closed).
        ({"matchExpressions": [{"key": "app", "operator": "Like", "values": ["web"]}]}, False),
        ({"matchExpressions": [{"key": "app", "operator": "In", "values": []}]}, False),
        ({"matchExpressions": [{"key": "app", "operator": "Exists", "values": ["web"]}]}, False),
        ({"matchLabels": ["app"]}, False),
    ],
)
def test_label_selector(selector: Any, matches: bool) -> None:
    assert rbac.label_selector_matches(selector, LABELS) is matches


# -- end to end: real kubectl against the embedded control plane ---------------------------------


def test_kubectl_auth_can_i_and_forbidden_requests(kubectl: Any, namespace: str) -> None:
    kubectl(
        "create", "rolebinding", "alice-view", "--clusterrole=view", "--user=alice", "-n", namespace
    )
    yes = kubectl("auth", "can-i", "list", "pods", "-n", namespace, context="alice")
    assert yes.stdout.strip() == "yes"
    no = kubectl("auth", "can-i", "delete", "pods", "-n", namespace, context="alice", check=False)
    assert (no.returncode, no.stdout.strip()) == (1, "no")
    bob = kubectl("auth", "can-i", "list", "pods", "-n", namespace, context="bob", check=False)
    assert (bob.returncode, bob.stdout.strip()) == (1, "no")
    # The same evaluator guards real requests, with kube-apiserver's 403 wording.
    allowed = kubectl("get", "pods", "-n", namespace, context="alice")
    assert allowed.returncode == 0
    forbidden = kubectl("get", "pods", "-n", namespace, context="bob", check=False)
    assert forbidden.returncode == 1
    assert forbidden.stderr.strip() == (
        'Error from server (Forbidden): pods is forbidden: User "bob" cannot list resource "pods" '
        f'in API group "" in the namespace "{namespace}"'
    )
    # Discovery works for every authenticated user (bootstrap system:discovery).
    assert "pods" in kubectl("api-resources", "--api-group=", context="bob").stdout
