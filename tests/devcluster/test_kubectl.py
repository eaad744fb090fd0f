"""Real kubectl 1.37 against the embedded control plane.

Every command here is one a developer or our docs run; the assertions are on kubectl's own
output, so a difference from a real API server that kubectl notices fails a test.
"""

from __future__ import annotations

import json
import queue
import subprocess
import threading
import time
from typing import Any

import jwt

from agentauth.devcluster import server
from tests.conftest import KUBECTL, Kubectl

AGENT = """
apiVersion: agentauth.dev/v1alpha1
kind: Agent
metadata:
  name: {name}
spec:
  serviceAccountName: bot
  description: {description}
"""


def _agent(name: str, description: str = "first") -> str:
    return AGENT.format(name=name, description=description)


def test_discovery_and_version(kubectl: Kubectl) -> None:
    resources = kubectl("api-resources").stdout
    for line in (
        "agents",
        "ag",
        "agentauth.dev/v1alpha1",
        "serviceaccounts",
        "customresourcedefinitions",
        "clusterrolebindings",
    ):
        assert line in resources
    assert "Server Version: v1.37.0" in kubectl("version").stdout


def test_create_apply_get_in_every_output(kubectl: Kubectl, namespace: str) -> None:
    created = kubectl("create", "-n", namespace, "-f", "-", input=_agent("one"))
    assert created.stdout.strip() == "agent.agentauth.dev/one created"
    unchanged = kubectl("apply", "-n", namespace, "-f", "-", input=_agent("one"))
    assert "agent.agentauth.dev/one" in unchanged.stdout
    configured = kubectl("apply", "-n", namespace, "-f", "-", input=_agent("one", "second"))
    assert configured.stdout.strip() == "agent.agentauth.dev/one configured"

    table = kubectl("get", "agents", "-n", namespace).stdout.splitlines()
    assert table[0].split() == ["NAME", "SERVICE", "ACCOUNT", "READY", "CAPABILITIES", "AGE"]
    assert table[1].split()[:2] == ["one", "bot"]

    as_json = json.loads(kubectl("get", "agent", "one", "-n", namespace, "-o", "json").stdout)
    assert as_json["spec"]["description"] == "second"
    assert as_json["metadata"]["generation"] == 2
    assert as_json["metadata"]["uid"]
    as_yaml = kubectl("get", "agent", "one", "-n", namespace, "-o", "yaml").stdout
    assert "description: second" in as_yaml
    name = kubectl("get", "ag", "-n", namespace, "-o", "jsonpath={.items[0].metadata.name}")
    assert name.stdout == "one"
    described = kubectl("describe", "agent", "one", "-n", namespace).stdout
    assert "Name:         one" in described
    assert "Description:           second" in described


def test_server_side_apply(kubectl: Kubectl, namespace: str) -> None:
    first = kubectl("apply", "--server-side", "-n", namespace, "-f", "-", input=_agent("ssa"))
    assert first.stdout.strip() == "agent.agentauth.dev/ssa serverside-applied"
    kubectl("apply", "--server-side", "-n", namespace, "-f", "-", input=_agent("ssa", "changed"))
    description = kubectl(
        "get", "agent", "ssa", "-n", namespace, "-o", "jsonpath={.spec.description}"
    ).stdout
    assert description == "changed"
    # A field the manager applied before and omits now is removed, as real SSA does.
    kubectl(
        "apply",
        "--server-side",
        "-n",
        namespace,
        "-f",
        "-",
        input="""
apiVersion: agentauth.dev/v1alpha1
kind: Agent
metadata: {name: ssa}
spec: {serviceAccountName: bot}
""",
    )
    spec = json.loads(
        kubectl("get", "agent", "ssa", "-n", namespace, "-o", "jsonpath={.spec}").stdout
    )
    # (the schema's default, "", comes back once the applied value is gone)
    assert spec.get("description", "") == ""
    assert spec["serviceAccountName"] == "bot"


def test_patch_each_type_and_status_subresource(kubectl: Kubectl, namespace: str) -> None:
    kubectl("create", "-n", namespace, "-f", "-", input=_agent("p"))
    kubectl(
        "patch",
        "agent",
        "p",
        "-n",
        namespace,
        "--type=merge",
        "-p",
        '{"spec":{"description":"merged"}}',
    )
    kubectl(
        "patch",
        "agent",
        "p",
        "-n",
        namespace,
        "--type=json",
        "-p",
        '[{"op":"replace","path":"/spec/description","value":"json"}]',
    )
    kubectl(
        "patch",
        "agent",
        "p",
        "-n",
        namespace,
        "--subresource=status",
        "--type=merge",
        "-p",
        '{"status":{"agentID":"aauth:p"},"spec":{"description":"ignored"}}',
    )
    obj = json.loads(kubectl("get", "agent", "p", "-n", namespace, "-o", "json").stdout)
    assert obj["spec"]["description"] == "json"
    assert obj["status"]["agentID"] == "aauth:p"
    # Spec changes bumped generation twice; the status write did not.
    assert obj["metadata"]["generation"] == 3
    # Strategic merge is refused for custom resources, as upstream.
    refused = kubectl(
        "patch",
        "agent",
        "p",
        "-n",
        namespace,
        "--type=strategic",
        "-p",
        '{"spec":{"description":"x"}}',
        check=False,
    )
    assert refused.returncode == 1
    assert "strategic merge patch is not supported for custom resources" in refused.stderr

    kubectl("create", "configmap", "cm", "-n", namespace, "--from-literal=a=1")
    kubectl(
        "patch", "configmap", "cm", "-n", namespace, "--type=strategic", "-p", '{"data":{"b":"2"}}'
    )
    data = kubectl("get", "cm", "cm", "-n", namespace, "-o", "jsonpath={.data}").stdout
    assert json.loads(data) == {"a": "1", "b": "2"}


def test_delete_waits_for_finalizers(kubectl: Kubectl, namespace: str) -> None:
    kubectl(
        "create",
        "-n",
        namespace,
        "-f",
        "-",
        input="""
apiVersion: v1
kind: ConfigMap
metadata:
  name: held
  finalizers: [example.com/hold]
""",
    )
    kubectl("delete", "configmap", "held", "-n", namespace, "--wait=false")
    held = json.loads(kubectl("get", "cm", "held", "-n", namespace, "-o", "json").stdout)
    assert held["metadata"]["deletionTimestamp"]
    kubectl(
        "patch",
        "configmap",
        "held",
        "-n",
        namespace,
        "--type=merge",
        "-p",
        '{"metadata":{"finalizers":null}}',
    )
    gone = kubectl("get", "cm", "held", "-n", namespace, check=False)
    assert gone.returncode == 1
    assert 'configmaps "held" not found' in gone.stderr


def test_wait_for_condition(
    kubectl: Kubectl, namespace: str, dev_cluster: server.DevCluster
) -> None:
    kubectl("create", "-n", namespace, "-f", "-", input=_agent("w"))
    waiter = subprocess.Popen(
        [
            str(KUBECTL),
            "--kubeconfig",
            str(dev_cluster.kubeconfig_path),
            "wait",
            "--for=condition=Ready",
            "agent/w",
            "-n",
            namespace,
            "--timeout=60s",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        kubectl(
            "patch",
            "agent",
            "w",
            "-n",
            namespace,
            "--subresource=status",
            "--type=merge",
            "-p",
            json.dumps(
                {
                    "status": {
                        "conditions": [
                            {
                                "type": "Ready",
                                "status": "True",
                                "reason": "Reconciled",
                                "message": "ok",
                                "lastTransitionTime": "2026-01-01T00:00:00Z",
                            }
                        ]
                    }
                }
            ),
        )
        stdout, stderr = waiter.communicate(timeout=60)
    finally:
        waiter.kill()
    assert waiter.returncode == 0, stderr
    assert stdout.strip() == "agent.agentauth.dev/w condition met"


def test_get_watch_prints_changes(
    kubectl: Kubectl, namespace: str, dev_cluster: server.DevCluster
) -> None:
    kubectl("create", "configmap", "first", "-n", namespace)
    watcher = subprocess.Popen(
        [
            str(KUBECTL),
            "--kubeconfig",
            str(dev_cluster.kubeconfig_path),
            "get",
            "configmaps",
            "-n",
            namespace,
            "--watch",
            "--output-watch-events",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    lines: queue.Queue[str] = queue.Queue()

    def pump() -> None:
        for line in watcher.stdout or ():
            lines.put(line)

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    seen: list[list[str]] = []

    def next_line(deadline: float) -> list[str]:
        line = lines.get(timeout=max(0.1, deadline - time.monotonic()))
        return line.split()

    try:
        deadline = time.monotonic() + 30
        seen.append(next_line(deadline))  # header
        seen.append(next_line(deadline))  # the existing object
        kubectl("create", "configmap", "second", "-n", namespace)
        seen.append(next_line(deadline))
        kubectl("delete", "configmap", "second", "-n", namespace)
        while seen[-1][:2] != ["DELETED", "second"]:
            seen.append(next_line(deadline))
    finally:
        watcher.kill()
        watcher.communicate()
    assert seen[0][:2] == ["EVENT", "NAME"]
    assert seen[1][:2] == ["ADDED", "first"]
    assert seen[2][:2] == ["ADDED", "second"]
    assert seen[-1][:2] == ["DELETED", "second"]


def test_auth_can_i_as_each_user(kubectl: Kubectl, namespace: str) -> None:
    assert kubectl("auth", "can-i", "delete", "agents", "-n", namespace).stdout.strip() == "yes"
    denied = kubectl(
        "auth", "can-i", "list", "agents", "-n", namespace, context="alice", check=False
    )
    assert denied.stdout.strip() == "no"
    forbidden = kubectl("get", "agents", "-n", namespace, context="bob", check=False)
    assert forbidden.returncode == 1
    assert (
        f'agents.agentauth.dev is forbidden: User "bob" cannot list resource "agents" in '
        f'API group "agentauth.dev" in the namespace "{namespace}"'
    ) in forbidden.stderr
    kubectl(
        "create",
        "role",
        "agent-reader",
        "-n",
        namespace,
        "--verb=get,list",
        "--resource=agents.agentauth.dev",
    )
    kubectl(
        "create",
        "rolebinding",
        "alice-reads",
        "-n",
        namespace,
        "--role=agent-reader",
        "--user=alice",
    )
    allowed = kubectl("auth", "can-i", "list", "agents", "-n", namespace, context="alice")
    assert allowed.stdout.strip() == "yes"
    assert kubectl("get", "agents", "-n", namespace, context="alice").returncode == 0
    still_denied = kubectl(
        "auth", "can-i", "list", "agents", "-n", namespace, context="bob", check=False
    )
    assert still_denied.stdout.strip() == "no"
    whoami = kubectl("auth", "whoami", context="alice").stdout
    assert "alice" in whoami and "system:authenticated" in whoami
    listed = kubectl("auth", "can-i", "--list", "-n", namespace, context="alice").stdout
    assert any(
        line.split()[:1] == ["agents.agentauth.dev"] and "[get list]" in line
        for line in listed.splitlines()
    ), listed


def test_local_subject_access_review(kube_api: Any, namespace: str) -> None:
    from kubernetes import client

    review = client.AuthorizationV1Api(kube_api).create_namespaced_local_subject_access_review(
        namespace,
        {
            "apiVersion": "authorization.k8s.io/v1",
            "kind": "LocalSubjectAccessReview",
            "metadata": {"namespace": namespace},
            "spec": {
                "user": "bob",
                "resourceAttributes": {"namespace": namespace, "verb": "get", "resource": "pods"},
            },
        },
    )
    assert review.status.allowed is False


def test_create_token_bound_to_pod(
    kubectl: Kubectl, namespace: str, dev_cluster: server.DevCluster, kube_api: Any
) -> None:
    kubectl("create", "serviceaccount", "bot", "-n", namespace)
    kubectl(
        "create",
        "-n",
        namespace,
        "-f",
        "-",
        input="""
apiVersion: v1
kind: Pod
metadata:
  name: runner
spec:
  serviceAccountName: bot
  containers: [{name: main, image: busybox}]
""",
    )
    pod_uid = kubectl(
        "get", "pod", "runner", "-n", namespace, "-o", "jsonpath={.metadata.uid}"
    ).stdout
    token = kubectl(
        "create",
        "token",
        "bot",
        "-n",
        namespace,
        "--audience=agentauth",
        "--bound-object-kind",
        "Pod",
        "--bound-object-name",
        "runner",
        "--bound-object-uid",
        pod_uid,
    ).stdout.strip()
    claims = jwt.decode(token, options={"verify_signature": False})
    assert claims["iss"] == dev_cluster.issuer
    assert claims["aud"] == ["agentauth"]
    assert claims["sub"] == f"system:serviceaccount:{namespace}:bot"
    assert claims["kubernetes.io"]["pod"] == {"name": "runner", "uid": pod_uid}
    assert jwt.get_unverified_header(token)["kid"]

    from kubernetes import client

    authentication = client.AuthenticationV1Api(kube_api)

    def review() -> Any:
        return authentication.create_token_review(
            {"spec": {"token": token, "audiences": ["agentauth"]}}
        ).status

    live = review()
    assert live.authenticated is True
    assert live.user.username == f"system:serviceaccount:{namespace}:bot"
    kubectl("delete", "pod", "runner", "-n", namespace)
    revoked = review()
    assert revoked.authenticated is not True


def test_explain_our_crds(kubectl: Kubectl) -> None:
    explained = kubectl("explain", "agents.spec").stdout
    assert "KIND:       Agent" in explained
    assert "serviceAccountName" in explained
    assert "tokenTTL" in explained


def test_bad_input_errors(kubectl: Kubectl, namespace: str) -> None:
    invalid = kubectl(
        "create",
        "-n",
        namespace,
        "-f",
        "-",
        check=False,
        input="""
apiVersion: agentauth.dev/v1alpha1
kind: Agent
metadata: {name: bad}
spec: {serviceAccountName: 7}
""",
    )
    assert invalid.returncode == 1
    # A type error blocks the CRD's CEL rules, which the server says (as kube-apiserver does).
    assert invalid.stderr.splitlines()[:3] == [
        'The Agent "bad" is invalid: ',
        "* spec.serviceAccountName: Invalid value: 7: spec.serviceAccountName in body must be of "
        'type string: "integer"',
        '* <nil>: Invalid value: "null": some validation rules were not checked because the '
        "object was invalid; correct the existing errors to complete validation",
    ]
    unknown = kubectl(
        "create",
        "-n",
        namespace,
        "-f",
        "-",
        check=False,
        input="""
apiVersion: agentauth.dev/v1alpha1
kind: Agent
metadata: {name: strict}
spec: {serviceAccountName: bot, colour: blue}
""",
    )
    assert unknown.returncode == 1
    assert 'unknown field "spec.colour"' in unknown.stderr
    missing = kubectl("get", "widgets.nowhere.example", check=False)
    assert missing.returncode == 1
    assert 'the server doesn\'t have a resource type "widgets"' in missing.stderr


def test_impersonation_is_authorized_and_applied(kubectl: Kubectl, namespace: str) -> None:
    as_alice = kubectl("auth", "whoami", "--as", "alice", "-o", "jsonpath={.status.userInfo}")
    assert '"username":"alice"' in as_alice.stdout
    assert '"system:authenticated"' in as_alice.stdout
    denied = kubectl("get", "agents", "-n", namespace, "--as", "alice", check=False)
    assert denied.returncode == 1
    assert 'User "alice" cannot list resource "agents"' in denied.stderr
    refused = kubectl("get", "pods", "-n", namespace, "--as", "alice", context="bob", check=False)
    assert refused.returncode == 1
    assert (
        'users "alice" is forbidden: User "bob" cannot impersonate resource "users" '
        'in API group "" at the cluster scope'
    ) in refused.stderr
