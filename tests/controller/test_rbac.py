"""The chart's RBAC is sufficient (the controller runs with nothing else) and not padded."""

from __future__ import annotations

import json

import yaml

from tests.conftest import Kubectl
from tests.controller.conftest import (
    ControllerThread,
    Install,
    events_for,
    get_json,
    ready_condition,
    wait_for,
)


def test_controller_runs_as_the_chart_service_account_only(
    kubectl: Kubectl, install: Install, controller: ControllerThread
) -> None:
    account = f"system:serviceaccount:{install.system_namespace}:{install.release}-controller"
    result = kubectl(
        "--kubeconfig",
        str(install.kubeconfig),
        "--context",
        f"{install.release}-controller",
        "get",
        "secrets",
        "-n",
        "default",
        check=False,
    )
    assert result.returncode != 0
    assert f'User "{account}" cannot list resource "secrets"' in result.stderr
    # What it made with that identity: issuer keys, webhook TLS, caBundle, reconciled agents.
    assert get_json(kubectl, "secret", "agentauth-issuer-keys", "-n", install.system_namespace)
    assert get_json(kubectl, "secret", "agentauth-webhook-tls", "-n", install.system_namespace)
    validating = get_json(kubectl, "validatingwebhookconfiguration", f"{install.release}-webhook")
    assert all(w["clientConfig"].get("caBundle") for w in validating["webhooks"])
    ns = install.namespace
    kubectl("create", "serviceaccount", "ok-sa", "-n", ns)
    kubectl(
        "apply",
        "-f",
        "-",
        input=yaml.safe_dump_all(
            [
                {
                    "apiVersion": "agentauth.dev/v1alpha1",
                    "kind": "CapabilityGrant",
                    "metadata": {"name": "ok", "namespace": ns},
                    "spec": {"agents": {"names": ["ok"]}, "capabilities": [{"name": "a.b"}]},
                },
                {
                    "apiVersion": "agentauth.dev/v1alpha1",
                    "kind": "Agent",
                    "metadata": {"name": "ok", "namespace": ns},
                    "spec": {"serviceAccountName": "ok-sa"},
                },
            ]
        ),
    )
    wait_for(
        lambda: ready_condition(get_json(kubectl, "agent", "ok", "-n", ns)) == ("True", "Ready"),
        message="Ready",
    )
    assert controller.failures == []


def test_without_the_status_rule_the_status_write_is_forbidden(
    kubectl: Kubectl, install: Install, controller: ControllerThread
) -> None:
    role_name = f"{install.release}-controller"
    role = get_json(kubectl, "clusterrole", role_name)
    rule = role["rules"][1]
    assert rule["resources"][0] == "agents/status"
    removal = [
        {"op": "test", "path": "/rules/1", "value": rule},
        {"op": "remove", "path": "/rules/1"},
    ]
    kubectl("patch", "clusterrole", role_name, "--type", "json", "-p", json.dumps(removal))
    ns = install.namespace
    account = f"system:serviceaccount:{install.system_namespace}:{install.release}-controller"
    try:
        kubectl(
            "apply",
            "-f",
            "-",
            input=yaml.safe_dump(
                {
                    "apiVersion": "agentauth.dev/v1alpha1",
                    "kind": "Agent",
                    "metadata": {"name": "denied", "namespace": ns},
                    "spec": {"serviceAccountName": "ok-sa"},
                }
            ),
        )
        wait_for(
            lambda: events_for(kubectl, namespace=ns, name="denied", kind="Agent"),
            message="failure event",
        )
        assert events_for(kubectl, namespace=ns, name="denied", kind="Agent") == [
            (
                "Warning",
                "StatusUpdateFailed",
                f'Cannot write status: 403 Forbidden: agents.agentauth.dev "denied" is forbidden: '
                f'User "{account}" cannot patch resource "agents/status" in API group '
                f'"agentauth.dev" in the namespace "{ns}"',
            )
        ]
        assert (get_json(kubectl, "agent", "denied", "-n", ns) or {}).get("status") is None
    finally:
        restore = [{"op": "add", "path": "/rules/1", "value": rule}]
        kubectl("patch", "clusterrole", role_name, "--type", "json", "-p", json.dumps(restore))
    # With the rule back, the retry succeeds: the rule was what was missing.
    wait_for(
        lambda: (
            ready_condition(get_json(kubectl, "agent", "denied", "-n", ns))
            == ("False", "NoCapabilities")
        ),
        timeout=20,
        message="status after restore",
    )
    controller.controller.failures.clear()  # type: ignore[union-attr]
