"""The chart's ClusterRoles for approvers: exact rules, opt-in aggregation, and what they let a
real user do on the embedded control plane (``kubectl auth can-i`` answered from real RBAC)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import helm_python as helm
import pytest
import yaml

from tests.charts import chart
from tests.conftest import Kubectl

PLUGIN_RULES = [
    {
        "apiGroups": ["agentauth.dev"],
        "resources": ["accessrequests", "agents", "capabilitygrants"],
        "verbs": ["get", "list", "watch"],
    },
    {
        "apiGroups": ["agentauth.dev"],
        "resources": ["accessrequests/status"],
        "verbs": ["get", "update", "patch"],
    },
    {"apiGroups": [""], "resources": ["events"], "verbs": ["list", "watch"]},
]
APPROVE_RULES = [
    {"apiGroups": ["agentauth.dev"], "resources": ["capabilitygrants"], "verbs": ["approve"]}
]
AGGREGATE = "rbac.authorization.k8s.io/aggregate-to-"


def _aggregations(role: dict[str, Any]) -> list[str]:
    return sorted(k for k in role["metadata"]["labels"] if k.startswith(AGGREGATE))


def test_default_render_has_both_roles_unbound_and_unaggregated() -> None:
    objects = chart.render()
    plugin = chart.one(objects, "ClusterRole", "agentauth-approver")
    approve = chart.one(objects, "ClusterRole", "agentauth-grant-approver")
    assert plugin["rules"] == PLUGIN_RULES
    assert approve["rules"] == APPROVE_RULES
    assert _aggregations(plugin) == [] and _aggregations(approve) == []
    bound = {
        b["roleRef"]["name"]
        for b in chart.by_kind(objects, "ClusterRoleBinding")
        + chart.by_kind(objects, "RoleBinding")
    }
    assert not bound & {"agentauth-approver", "agentauth-grant-approver"}


def test_aggregation_is_opt_in_per_role() -> None:
    objects = chart.render({"global": {"rbac": {"approvers": {"aggregateTo": ["admin", "edit"]}}}})
    plugin = chart.one(objects, "ClusterRole", "agentauth-approver")
    assert _aggregations(plugin) == [AGGREGATE + "admin", AGGREGATE + "edit"]
    assert plugin["metadata"]["labels"][AGGREGATE + "admin"] == "true"
    assert _aggregations(chart.one(objects, "ClusterRole", "agentauth-grant-approver")) == []
    both = chart.render(
        {"global": {"rbac": {"approvers": {"grantApproverAggregateTo": ["admin"]}}}}
    )
    assert _aggregations(chart.one(both, "ClusterRole", "agentauth-grant-approver")) == [
        AGGREGATE + "admin"
    ]


@pytest.mark.parametrize(
    "values",
    [
        {"global": {"rbac": {"approvers": {"create": False}}}},
        {"global": {"rbac": {"create": False}}},
    ],
)
def test_roles_can_be_left_out(values: dict[str, Any]) -> None:
    names = {o["metadata"]["name"] for o in chart.by_kind(chart.render(values), "ClusterRole")}
    assert not names & {"agentauth-approver", "agentauth-grant-approver"}


def test_schema_refuses_aggregating_into_view() -> None:
    with pytest.raises(helm.HelmValuesError) as caught:
        chart.render({"global": {"rbac": {"approvers": {"aggregateTo": ["view"]}}}})
    assert "aggregateTo" in str(caught.value)


@pytest.fixture(scope="module")
def approver_roles(kubectl: Kubectl) -> Iterator[tuple[str, str]]:
    """The two ClusterRoles of a unique release applied to the cluster, and a namespace."""
    release = f"ap{uuid.uuid4().hex[:8]}"
    objects = [
        o
        for o in chart.render({"fullnameOverride": release}, release=release)
        if o["kind"] == "ClusterRole" and o["metadata"]["name"].endswith("approver")
    ]
    assert len(objects) == 2
    namespace = f"{release}-team"
    kubectl("apply", "-f", "-", input=yaml.safe_dump_all(objects))
    kubectl("create", "namespace", namespace)
    yield release, namespace
    kubectl("delete", "--ignore-not-found", "-f", "-", input=yaml.safe_dump_all(objects))
    kubectl("delete", "namespace", namespace, "--wait=false")


def _can(kubectl: Kubectl, user: str, namespace: str, *what: str) -> str:
    result = kubectl("auth", "can-i", *what, "-n", namespace, context=user, check=False)
    return result.stdout.strip()


def test_roles_grant_plugin_use_and_approval_separately(
    kubectl: Kubectl, approver_roles: tuple[str, str]
) -> None:
    release, ns = approver_roles
    plugin_use = [
        ("get", "accessrequests"),
        ("list", "accessrequests"),
        ("watch", "agents"),
        ("get", "capabilitygrants"),
        ("update", "accessrequests", "--subresource=status"),
        ("patch", "accessrequests", "--subresource=status"),
        ("list", "events"),
    ]
    approve = ("approve", "capabilitygrants/payments")
    assert _can(kubectl, "alice", ns, "get", "accessrequests") == "no"

    kubectl(
        "create",
        "rolebinding",
        "alice-plugin",
        f"--clusterrole={release}-approver",
        "--user=alice",
        "-n",
        ns,
    )
    for what in plugin_use:
        assert _can(kubectl, "alice", ns, *what) == "yes", what
    # Using the plugin is not approving: no approve verb, and nothing beyond the decision path.
    assert _can(kubectl, "alice", ns, *approve) == "no"
    assert _can(kubectl, "alice", ns, "update", "accessrequests") == "no"
    assert _can(kubectl, "alice", ns, "create", "accessrequests") == "no"
    assert _can(kubectl, "alice", ns, "delete", "accessrequests") == "no"
    assert _can(kubectl, "alice", ns, "update", "capabilitygrants") == "no"

    kubectl(
        "create",
        "rolebinding",
        "alice-approve",
        f"--clusterrole={release}-grant-approver",
        "--user=alice",
        "-n",
        ns,
    )
    assert _can(kubectl, "alice", ns, *approve) == "yes"
    assert _can(kubectl, "alice", ns, "approve", "capabilitygrants/anything-else") == "yes"
    assert _can(kubectl, "alice", "default", *approve) == "no"  # only where it is bound
    assert _can(kubectl, "bob", ns, *approve) == "no"
