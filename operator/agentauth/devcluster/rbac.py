"""RBAC authorization for the embedded control plane, evaluated like kube-apiserver's.

Guarantees:

- ``system:masters`` is always allowed (kube's privileged-group short-circuit). Everyone else is
  allowed only by a rule reachable through a ClusterRoleBinding (any namespace, non-resource
  URLs) or a RoleBinding in the request's namespace (resource requests in that namespace only).
  Anything not explicitly allowed is denied; malformed stored objects grant nothing.
- Rule matching follows ``k8s.io/kubernetes/pkg/apis/rbac/v1/evaluation_helpers.go``: verbs,
  apiGroups and resources match exactly or by ``*``; a request for a subresource is matched as
  ``resource/subresource`` (``*/status`` matches any resource's status); ``resourceNames`` narrows
  a rule to named objects (so it never matches list/create without a name); ``nonResourceURLs``
  match exactly, by ``*``, or by a trailing-``*`` prefix.
- Subjects: ``User``, ``Group`` and ``ServiceAccount`` (namespace defaulting to the RoleBinding's).
- ClusterRoles with an ``aggregationRule`` take the rules of every ClusterRole matching its
  ``clusterRoleSelectors`` at evaluation time (recursively), instead of waiting for a controller.
- The default policy the real server bootstraps is served by :func:`bootstrap_policy` (the dev
  server stores it at start-up so ``kubectl get clusterroles`` shows it) and is also consulted
  here when an object of that name is not stored, so discovery, ``auth can-i`` and ``explain``
  work for every authenticated user even on an empty store.
- :meth:`RBACAuthorizer.forbidden_message` reproduces kube-apiserver's 403 wording.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

from agentauth.devcluster import types

RBAC_GROUP = "rbac.authorization.k8s.io"
MASTERS_GROUP = "system:masters"
_READ = ["get", "list", "watch"]
_WRITE = ["create", "delete", "deletecollection", "patch", "update"]


def _cluster_role(
    name: str,
    rules: list[dict[str, Any]],
    *,
    labels: Mapping[str, str] | None = None,
    aggregate_from: str | None = None,
) -> dict[str, Any]:
    role: dict[str, Any] = {
        "apiVersion": f"{RBAC_GROUP}/v1",
        "kind": "ClusterRole",
        "metadata": {
            "name": name,
            "labels": {"kubernetes.io/bootstrapping": "rbac-defaults", **(labels or {})},
            "annotations": {"rbac.authorization.kubernetes.io/autoupdate": "true"},
        },
        "rules": rules,
    }
    if aggregate_from is not None:
        role["aggregationRule"] = {
            "clusterRoleSelectors": [
                {"matchLabels": {f"rbac.authorization.k8s.io/{aggregate_from}": "true"}}
            ]
        }
    return role


def _cluster_role_binding(name: str, role: str, groups: Sequence[str]) -> dict[str, Any]:
    return {
        "apiVersion": f"{RBAC_GROUP}/v1",
        "kind": "ClusterRoleBinding",
        "metadata": {
            "name": name,
            "labels": {"kubernetes.io/bootstrapping": "rbac-defaults"},
            "annotations": {"rbac.authorization.kubernetes.io/autoupdate": "true"},
        },
        "roleRef": {"apiGroup": RBAC_GROUP, "kind": "ClusterRole", "name": role},
        "subjects": [{"apiGroup": RBAC_GROUP, "kind": "Group", "name": group} for group in groups],
    }


def _rule(verbs: list[str], groups: list[str], resources: list[str]) -> dict[str, Any]:
    return {"verbs": verbs, "apiGroups": groups, "resources": resources}


def bootstrap_policy() -> list[dict[str, Any]]:
    """The default ClusterRoles and ClusterRoleBindings, a subset of kube's bootstrap policy."""
    health = ["/healthz", "/livez", "/readyz", "/version", "/version/"]
    roles = [
        _cluster_role(
            "cluster-admin",
            [
                _rule(["*"], ["*"], ["*"]),
                {"verbs": ["*"], "nonResourceURLs": ["*"]},
            ],
        ),
        _cluster_role(
            "system:discovery",
            [
                {
                    "verbs": ["get"],
                    "nonResourceURLs": [
                        "/api",
                        "/api/*",
                        "/apis",
                        "/apis/*",
                        "/healthz",
                        "/livez",
                        "/openapi",
                        "/openapi/*",
                        "/readyz",
                        "/version",
                        "/version/",
                    ],
                }
            ],
        ),
        _cluster_role("system:public-info-viewer", [{"verbs": ["get"], "nonResourceURLs": health}]),
        _cluster_role(
            "system:basic-user",
            [
                _rule(
                    ["create"],
                    ["authorization.k8s.io"],
                    ["selfsubjectaccessreviews", "selfsubjectrulesreviews"],
                ),
                _rule(["create"], ["authentication.k8s.io"], ["selfsubjectreviews"]),
            ],
        ),
        _cluster_role(
            "system:service-account-issuer-discovery",
            [
                {
                    "verbs": ["get"],
                    "nonResourceURLs": [
                        "/.well-known/openid-configuration",
                        "/.well-known/openid-configuration/",
                        "/openid/v1/jwks",
                        "/openid/v1/jwks/",
                    ],
                }
            ],
        ),
        _cluster_role(
            "system:auth-delegator",
            [
                _rule(["create"], ["authentication.k8s.io"], ["tokenreviews"]),
                _rule(["create"], ["authorization.k8s.io"], ["subjectaccessreviews"]),
            ],
        ),
        # The user-facing roles are aggregated, as on a real cluster, so a chart can extend
        # them for our CRDs with the aggregate-to-* labels.
        _cluster_role("admin", [], aggregate_from="aggregate-to-admin"),
        _cluster_role(
            "edit",
            [],
            aggregate_from="aggregate-to-edit",
            labels={"rbac.authorization.k8s.io/aggregate-to-admin": "true"},
        ),
        _cluster_role(
            "view",
            [],
            aggregate_from="aggregate-to-view",
            labels={"rbac.authorization.k8s.io/aggregate-to-edit": "true"},
        ),
        _cluster_role(
            "system:aggregate-to-admin",
            [
                _rule(["create"], ["authorization.k8s.io"], ["localsubjectaccessreviews"]),
                _rule([*_READ, *_WRITE], [RBAC_GROUP], ["rolebindings", "roles"]),
            ],
            labels={"rbac.authorization.k8s.io/aggregate-to-admin": "true"},
        ),
        _cluster_role(
            "system:aggregate-to-edit",
            [
                _rule(
                    _READ,
                    [""],
                    ["pods/attach", "pods/exec", "pods/portforward", "pods/proxy", "secrets"],
                ),
                _rule(["impersonate"], [""], ["serviceaccounts"]),
                _rule(
                    _WRITE,
                    [""],
                    ["pods", "pods/attach", "pods/exec", "pods/portforward", "pods/proxy"],
                ),
                _rule(["create"], [""], ["pods/eviction"]),
                _rule(
                    _WRITE,
                    [""],
                    [
                        "configmaps",
                        "events",
                        "persistentvolumeclaims",
                        "replicationcontrollers",
                        "secrets",
                        "serviceaccounts",
                        "services",
                        "endpoints",
                    ],
                ),
                _rule(["create"], [""], ["serviceaccounts/token"]),
                _rule(
                    _WRITE,
                    ["apps"],
                    [
                        "daemonsets",
                        "deployments",
                        "replicasets",
                        "statefulsets",
                        "deployments/scale",
                        "replicasets/scale",
                        "statefulsets/scale",
                    ],
                ),
                _rule(_WRITE, ["batch"], ["cronjobs", "jobs"]),
                _rule(_WRITE, ["coordination.k8s.io"], ["leases"]),
                _rule(_WRITE, ["events.k8s.io"], ["events"]),
            ],
            labels={"rbac.authorization.k8s.io/aggregate-to-edit": "true"},
        ),
        _cluster_role(
            "system:aggregate-to-view",
            [
                _rule(
                    _READ,
                    [""],
                    [
                        "configmaps",
                        "endpoints",
                        "persistentvolumeclaims",
                        "persistentvolumeclaims/status",
                        "pods",
                        "replicationcontrollers",
                        "serviceaccounts",
                        "services",
                        "services/status",
                        "bindings",
                        "events",
                        "limitranges",
                        "namespaces/status",
                        "pods/log",
                        "pods/status",
                        "resourcequotas",
                        "resourcequotas/status",
                        "namespaces",
                    ],
                ),
                _rule(
                    _READ,
                    ["apps"],
                    [
                        "daemonsets",
                        "deployments",
                        "replicasets",
                        "statefulsets",
                        "daemonsets/status",
                        "deployments/status",
                        "replicasets/status",
                        "statefulsets/status",
                    ],
                ),
                _rule(_READ, ["batch"], ["cronjobs", "jobs", "cronjobs/status", "jobs/status"]),
                _rule(_READ, ["coordination.k8s.io"], ["leases"]),
                _rule(_READ, ["events.k8s.io"], ["events"]),
            ],
            labels={"rbac.authorization.k8s.io/aggregate-to-view": "true"},
        ),
    ]
    bindings = [
        _cluster_role_binding("cluster-admin", "cluster-admin", [MASTERS_GROUP]),
        _cluster_role_binding("system:discovery", "system:discovery", ["system:authenticated"]),
        _cluster_role_binding("system:basic-user", "system:basic-user", ["system:authenticated"]),
        _cluster_role_binding(
            "system:public-info-viewer",
            "system:public-info-viewer",
            ["system:authenticated", "system:unauthenticated"],
        ),
        _cluster_role_binding(
            "system:service-account-issuer-discovery",
            "system:service-account-issuer-discovery",
            ["system:serviceaccounts"],
        ),
    ]
    return [*roles, *bindings]


def _names(value: Any) -> list[str]:
    """A list of strings from a stored field, or nothing: malformed rules grant nothing."""
    if not isinstance(value, list):
        return []
    return [item for item in value if isinstance(item, str)]


def _rule_allows(rule: Any, attributes: types.RequestAttributes) -> bool:
    if not isinstance(rule, dict):
        return False
    verbs = _names(rule.get("verbs"))
    if "*" not in verbs and attributes.verb not in verbs:
        return False
    if not attributes.resource_request:
        return any(
            _url_matches(pattern, attributes.path)
            for pattern in _names(rule.get("nonResourceURLs"))
        )
    groups = _names(rule.get("apiGroups"))
    if "*" not in groups and attributes.api_group not in groups:
        return False
    if not any(_resource_matches(pattern, attributes) for pattern in _names(rule.get("resources"))):
        return False
    resource_names = _names(rule.get("resourceNames"))
    return not resource_names or attributes.name in resource_names


def _resource_matches(pattern: str, attributes: types.RequestAttributes) -> bool:
    if pattern == "*":
        return True
    requested = attributes.resource
    if attributes.subresource:
        requested = f"{attributes.resource}/{attributes.subresource}"
        if pattern == f"*/{attributes.subresource}":
            return True
    return pattern == requested


def _url_matches(pattern: str, path: str) -> bool:
    if pattern == "*" or pattern == path:
        return True
    return pattern.endswith("*") and path.startswith(pattern[:-1])


def _subject_description(subject: Mapping[str, Any], namespace: str) -> str:
    kind = subject.get("kind")
    if kind == "ServiceAccount":
        return f'ServiceAccount "{subject.get("namespace") or namespace}/{subject.get("name")}"'
    return f'{kind} "{subject.get("name")}"'


def _applies_to(subject: Any, user: types.UserInfo, binding_namespace: str) -> bool:
    if not isinstance(subject, dict):
        return False
    kind = subject.get("kind")
    name = subject.get("name")
    if not isinstance(name, str) or not name:
        return False
    if kind == "User":
        return user.username == name
    if kind == "Group":
        return name in user.groups
    if kind == "ServiceAccount":
        namespace = subject.get("namespace") or binding_namespace
        return bool(namespace) and user.username == f"system:serviceaccount:{namespace}:{name}"
    return False


def label_selector_matches(selector: Any, labels: Mapping[str, str]) -> bool:
    """``metav1.LabelSelector`` semantics; ``None`` matches nothing, ``{}`` matches everything.

    A malformed selector (unknown operator, wrong types) matches nothing.
    """
    if not isinstance(selector, dict):
        return False
    match_labels = selector.get("matchLabels") or {}
    if not isinstance(match_labels, dict):
        return False
    for key, value in match_labels.items():
        if labels.get(key) != value:
            return False
    expressions = selector.get("matchExpressions") or []
    if not isinstance(expressions, list):
        return False
    for expression in expressions:
        if not isinstance(expression, dict):
            return False
        key = expression.get("key")
        operator = expression.get("operator")
        values = expression.get("values") or []
        if not isinstance(key, str) or not isinstance(values, list):
            return False
        if operator == "In":
            if not values or labels.get(key) not in values:
                return False
        elif operator == "NotIn":
            if not values or (key in labels and labels[key] in values):
                return False
        elif operator == "Exists":
            if values or key not in labels:
                return False
        elif operator == "DoesNotExist":
            if values or key in labels:
                return False
        else:
            return False
    return True


@dataclasses.dataclass(frozen=True)
class _Grant:
    binding_kind: str
    binding_name: str
    role_kind: str
    role_name: str
    subject: str


class RBACAuthorizer:
    """Decides requests from the Roles, ClusterRoles and bindings in the store."""

    def __init__(self, reader: types.ObjectReader) -> None:
        self._reader = reader
        policy = bootstrap_policy()
        self._bootstrap_roles = {
            item["metadata"]["name"]: item for item in policy if item["kind"] == "ClusterRole"
        }
        self._bootstrap_bindings = {
            item["metadata"]["name"]: item
            for item in policy
            if item["kind"] == "ClusterRoleBinding"
        }

    def authorize(
        self, user: types.UserInfo, attributes: types.RequestAttributes
    ) -> types.Decision:
        if MASTERS_GROUP in user.groups:
            return types.Decision(allowed=True, reason="")
        for grant in self._grants(user, attributes):
            binding = f'{grant.binding_kind} "{grant.binding_name}"'
            return types.Decision(
                allowed=True,
                reason=(
                    f'RBAC: allowed by {binding} of {grant.role_kind} "{grant.role_name}" '
                    f"to {grant.subject}"
                ),
            )
        return types.Decision(allowed=False, reason="")

    def forbidden_message(self, user: types.UserInfo, attributes: types.RequestAttributes) -> str:
        """kube-apiserver's 403 message (``forbiddenMessage`` wrapped by ``NewForbidden``)."""
        if not attributes.resource_request:
            return (
                f'forbidden: User "{user.username}" cannot {attributes.verb} '
                f'path "{attributes.path}"'
            )
        resource = attributes.resource
        if attributes.subresource:
            resource = f"{resource}/{attributes.subresource}"
        if attributes.namespace:
            where = f'in the namespace "{attributes.namespace}"'
        else:
            where = "at the cluster scope"
        reason = (
            f'User "{user.username}" cannot {attributes.verb} resource "{resource}" in API group '
            f'"{attributes.api_group}" {where}'
        )
        qualified = attributes.resource
        if attributes.api_group:
            qualified = f"{attributes.resource}.{attributes.api_group}"
        if attributes.name:
            return f'{qualified} "{attributes.name}" is forbidden: {reason}'
        return f"{qualified} is forbidden: {reason}"

    def forbidden_status(
        self, user: types.UserInfo, attributes: types.RequestAttributes
    ) -> dict[str, Any]:
        """The full ``Status`` body of the 403 response."""
        details: dict[str, Any] = {}
        if attributes.resource_request:
            if attributes.name:
                details["name"] = attributes.name
            if attributes.api_group:
                details["group"] = attributes.api_group
            details["kind"] = attributes.resource
        return {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.forbidden_message(user, attributes),
            "reason": "Forbidden",
            "details": details,
            "code": 403,
        }

    def rules_for(
        self, user: types.UserInfo, namespace: str
    ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """(resourceRules, nonResourceRules) granted to ``user`` in ``namespace``.

        What a ``SelfSubjectRulesReview`` reports (``kubectl auth can-i --list``): the rules of
        every ClusterRoleBinding that applies, plus those of the namespace's RoleBindings.
        """
        roles = self._cluster_roles()
        rules: list[Any] = []
        for binding in self._cluster_role_bindings():
            role_ref = binding.get("roleRef") or {}
            if (
                isinstance(role_ref, dict)
                and role_ref.get("kind") == "ClusterRole"
                and self._matching_subject(binding, user, "") is not None
            ):
                rules.extend(self._cluster_role_rules(str(role_ref.get("name", "")), roles))
        if namespace:
            for binding in self._reader.list(
                group=RBAC_GROUP, resource="rolebindings", namespace=namespace
            ):
                role_ref = binding.get("roleRef") or {}
                if not isinstance(role_ref, dict):
                    continue
                if self._matching_subject(binding, user, namespace) is None:
                    continue
                role_name = str(role_ref.get("name", ""))
                if role_ref.get("kind") == "ClusterRole":
                    granted = self._cluster_role_rules(role_name, roles)
                elif role_ref.get("kind") == "Role":
                    role = self._reader.get(
                        group=RBAC_GROUP, resource="roles", namespace=namespace, name=role_name
                    )
                    granted = _rules_of(role) if role is not None else []
                else:
                    continue
                # RoleBindings never grant non-resource URLs.
                rules.extend(r for r in granted if isinstance(r, dict) and r.get("resources"))
        resource_rules: list[dict[str, Any]] = []
        non_resource_rules: list[dict[str, Any]] = []
        for rule in rules:
            if not isinstance(rule, dict):
                continue
            verbs = _names(rule.get("verbs"))
            if _names(rule.get("resources")):
                entry: dict[str, Any] = {
                    "verbs": verbs,
                    "apiGroups": _names(rule.get("apiGroups")),
                    "resources": _names(rule.get("resources")),
                }
                if _names(rule.get("resourceNames")):
                    entry["resourceNames"] = _names(rule.get("resourceNames"))
                if entry not in resource_rules:
                    resource_rules.append(entry)
            if _names(rule.get("nonResourceURLs")):
                non_resource = {
                    "verbs": verbs,
                    "nonResourceURLs": _names(rule.get("nonResourceURLs")),
                }
                if non_resource not in non_resource_rules:
                    non_resource_rules.append(non_resource)
        return resource_rules, non_resource_rules

    # -- evaluation ---------------------------------------------------------------------------

    def _grants(
        self, user: types.UserInfo, attributes: types.RequestAttributes
    ) -> Iterator[_Grant]:
        # ClusterRoles are listed at most once per decision, and only if a binding applies.
        roles: dict[str, dict[str, Any]] | None = None

        def rules_of_cluster_role(name: str) -> list[Any]:
            nonlocal roles
            if roles is None:
                roles = self._cluster_roles()
            return self._cluster_role_rules(name, roles)

        for binding in self._cluster_role_bindings():
            role_ref = binding.get("roleRef") or {}
            if not isinstance(role_ref, dict) or role_ref.get("kind") != "ClusterRole":
                continue
            subject = self._matching_subject(binding, user, "")
            if subject is None:
                continue
            role_name = str(role_ref.get("name", ""))
            if any(_rule_allows(rule, attributes) for rule in rules_of_cluster_role(role_name)):
                yield _Grant(
                    "ClusterRoleBinding", _name_of(binding), "ClusterRole", role_name, subject
                )
        # RoleBindings only ever grant resource requests inside their own namespace.
        if not attributes.resource_request or not attributes.namespace:
            return
        namespace = attributes.namespace
        for binding in self._reader.list(
            group=RBAC_GROUP, resource="rolebindings", namespace=namespace
        ):
            if (binding.get("metadata") or {}).get("namespace", namespace) != namespace:
                continue
            subject = self._matching_subject(binding, user, namespace)
            if subject is None:
                continue
            role_ref = binding.get("roleRef") or {}
            if not isinstance(role_ref, dict):
                continue
            role_name = str(role_ref.get("name", ""))
            if role_ref.get("kind") == "Role":
                role = self._reader.get(
                    group=RBAC_GROUP, resource="roles", namespace=namespace, name=role_name
                )
                rules: Iterable[Any] = _rules_of(role) if role is not None else ()
            elif role_ref.get("kind") == "ClusterRole":
                rules = rules_of_cluster_role(role_name)
            else:
                continue
            if any(_rule_allows(rule, attributes) for rule in rules):
                yield _Grant(
                    "RoleBinding",
                    f"{_name_of(binding)}/{namespace}",
                    str(role_ref["kind"]),
                    role_name,
                    subject,
                )

    @staticmethod
    def _matching_subject(
        binding: dict[str, Any], user: types.UserInfo, namespace: str
    ) -> str | None:
        subjects = binding.get("subjects") or []
        if not isinstance(subjects, list):
            return None
        for subject in subjects:
            if _applies_to(subject, user, namespace):
                return _subject_description(subject, namespace)
        return None

    def _cluster_role_bindings(self) -> list[dict[str, Any]]:
        stored = list(self._reader.list(group=RBAC_GROUP, resource="clusterrolebindings"))
        stored_names = {_name_of(binding) for binding in stored}
        return stored + [
            b for name, b in self._bootstrap_bindings.items() if name not in stored_names
        ]

    def _cluster_roles(self) -> dict[str, dict[str, Any]]:
        roles = dict(self._bootstrap_roles)
        for role in self._reader.list(group=RBAC_GROUP, resource="clusterroles"):
            roles[_name_of(role)] = role
        return roles

    @staticmethod
    def _cluster_role_rules(name: str, roles: Mapping[str, dict[str, Any]]) -> list[Any]:
        rules: list[Any] = []
        seen: set[str] = set()
        pending = [name]
        while pending:
            current = pending.pop()
            if current in seen or current not in roles:
                continue
            seen.add(current)
            role = roles[current]
            aggregation = role.get("aggregationRule")
            if isinstance(aggregation, dict):
                selectors = aggregation.get("clusterRoleSelectors") or []
                for other_name, other in roles.items():
                    labels = (other.get("metadata") or {}).get("labels") or {}
                    if (
                        other_name != current
                        and isinstance(selectors, list)
                        and any(label_selector_matches(selector, labels) for selector in selectors)
                    ):
                        pending.append(other_name)
            rules.extend(_rules_of(role))
        return rules


def _name_of(obj: Mapping[str, Any]) -> str:
    return str((obj.get("metadata") or {}).get("name", ""))


def _rules_of(role: Mapping[str, Any]) -> list[Any]:
    rules = role.get("rules") or []
    return rules if isinstance(rules, list) else []
