"""``kubectl agentauth`` for operators and approvers: real kubectl against ``agentauth dev``.

Real here: the kubectl binary dispatching to this virtualenv's plugin, the dev stack's embedded
control plane with the chart's RBAC and webhooks, its controller and token service, the dev CA.
Covered: ``check`` (healthy, a broken webhook, an untrusted issuer, ``--wait``), ``suspend`` /
``resume``, ``capabilities``, ``requests --watch``, ``describe`` naming the asking Agent and its
ID, the ``-n`` hint, ``token verify`` with and without the CA, and ``kubectl get`` columns.
"""

from __future__ import annotations

import base64
import json
import queue
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests import stack
from tests.e2e.conftest import Stack

ROOT = Path(__file__).resolve().parents[2]
GRANT = [
    {"name": "document.read"},
    {"name": "payments.authorize", "approval": "Required", "maxDuration": "30m"},
]


def _plugin(
    dev_stack: Stack, *args: str, user: str | None = "admin", env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return stack.run_kubectl(
        "agentauth",
        *args,
        kubeconfig=dev_stack.kubeconfig_path,
        context=user,
        check=False,
        env=env if env is not None else _env(dev_stack, ca=True),
        timeout=120,
    )


def _env(dev_stack: Stack, *, ca: bool) -> dict[str, str]:
    env = {k: v for k, v in dev_stack.env.items() if k != "AGENTAUTH_CA_FILE"}
    if ca:
        env["AGENTAUTH_CA_FILE"] = str(dev_stack.ca_path)
    return env


def _lines(text: str) -> dict[str, str]:
    """``check`` output: check name -> the rest of its line (state and detail)."""
    found = {}
    for line in text.splitlines():
        if line.startswith(" "):
            continue
        name, _, rest = line.partition("  ")
        found[name.strip()] = rest.strip()
    return found


@pytest.fixture(scope="module")
def payer(dev_stack: Stack) -> Iterator[dict[str, Any]]:
    """An agent with an automatic and a Required capability, alice as approver, one pending
    request filed through the token service."""
    namespace = dev_stack.new_namespace("plugin")
    dev_stack.create_agent(namespace, "payer", capabilities=GRANT, approvers={"users": ["alice"]})
    dev_stack.apply(
        (ROOT / "demo" / "approver-rbac.yaml").read_text().replace("namespace: demo", ""),
        namespace=namespace,
    )
    dev_stack.create_pod(namespace, "payer-0", agent="payer")
    exchanged = dev_stack.exchange(dev_stack.projected_token(namespace, "payer-0"))
    assert exchanged.status_code == 200, exchanged.text
    token = exchanged.json()["access_token"]
    yield {"namespace": namespace, "token": token}


def _file(dev_stack: Stack, payer: dict[str, Any], justification: str) -> str:
    filed = dev_stack.http.post(
        f"{dev_stack.token_service_url}/v1/access-requests",
        json={"capabilities": ["payments.authorize"], "justification": justification},
        headers={"Authorization": f"Bearer {payer['token']}"},
    )
    assert filed.status_code in (200, 201), filed.text
    name: str = filed.json().get("name") or filed.json()["metadata"]["name"]
    namespace = payer["namespace"]
    stack.wait_for(
        lambda: (
            (dev_stack.get("accessrequest", name, namespace=namespace).get("status") or {}).get(
                "phase"
            )
            == "Pending"
        ),
        timeout=30,
        message="request pending",
    )
    return name


# -- check ------------------------------------------------------------------------------------


def test_check_reports_a_healthy_dev_install(dev_stack: Stack) -> None:
    result = _plugin(dev_stack, "check")
    assert result.returncode == 0, result.stdout + result.stderr
    lines = _lines(result.stdout)
    assert lines["CRDs served"].startswith("ok")
    assert lines["Webhook CA bundles"].startswith("ok")
    assert lines["Webhooks reachable"].startswith("ok")
    assert lines["Controller ready"].startswith("skip")
    assert lines["Token service /readyz"] == f"ok    {dev_stack.issuer}/readyz 200"
    assert lines["Issuer keys"].startswith("ok")


def test_check_against_an_untrusted_issuer_says_to_pass_issuer_ca(dev_stack: Stack) -> None:
    result = _plugin(dev_stack, "check", env=_env(dev_stack, ca=False))
    assert result.returncode == 1
    assert "fix:  the issuer's certificate is not trusted here: pass --issuer-ca FILE (or set " in (
        result.stdout
    )
    assert result.stderr.strip().endswith("1 check(s) failed")
    with_flag = _plugin(
        dev_stack, "check", "--issuer-ca", str(dev_stack.ca_path), env=_env(dev_stack, ca=False)
    )
    assert with_flag.returncode == 0, with_flag.stdout


def test_check_finds_a_broken_webhook_and_waits_before_failing(dev_stack: Stack) -> None:
    namespace = dev_stack.new_namespace("broken")
    closed = stack.free_port()
    broken = {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "MutatingWebhookConfiguration",
        "metadata": {
            "name": f"agentauth-broken-{namespace}",
            "labels": {"app.kubernetes.io/part-of": "agentauth"},
        },
        "webhooks": [
            {
                "name": "pods.broken.agentauth.dev",
                "admissionReviewVersions": ["v1"],
                "sideEffects": "None",
                "failurePolicy": "Fail",
                "clientConfig": {"url": f"https://127.0.0.1:{closed}/mutate/pods"},
                "rules": [
                    {
                        "apiGroups": [""],
                        "apiVersions": ["v1"],
                        "resources": ["pods"],
                        "operations": ["CREATE"],
                    }
                ],
                "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": namespace}},
            }
        ],
    }
    dev_stack.admin("apply", "-f", "-", input=json.dumps(broken))
    try:
        started = time.monotonic()
        result = _plugin(dev_stack, "check", "-n", namespace, "--wait", "3s")
        elapsed = time.monotonic() - started
    finally:
        dev_stack.admin("delete", "mutatingwebhookconfiguration", broken["metadata"]["name"])
    assert result.returncode == 1
    assert elapsed >= 3
    assert "checking again" in result.stderr
    lines = _lines(result.stdout)
    assert lines["Webhook CA bundles"].startswith(
        f"FAIL  agentauth-broken-{namespace}/pods.broken.agentauth.dev has no caBundle"
    )
    assert lines["Webhooks reachable"].startswith("FAIL")
    assert 'failed calling webhook "pods.broken.agentauth.dev"' in lines["Webhooks reachable"]
    assert "fix:  the API server cannot call the controller's webhook" in result.stdout


def test_check_rejects_a_bad_wait(dev_stack: Stack) -> None:
    result = _plugin(dev_stack, "check", "--wait", "soon")
    assert result.returncode == 1
    assert result.stderr.strip() == (
        "error: --wait: invalid duration 'soon': expected a duration such as '300s', '5m', '1h' "
        "or '1h30m' (whole hours, minutes, seconds)"
    )


# -- suspend, resume, capabilities --------------------------------------------------------------


def test_suspend_stops_exchanges_and_resume_restores_them(dev_stack: Stack) -> None:
    namespace = dev_stack.new_namespace("suspend")
    dev_stack.create_agent(namespace, "worker")
    dev_stack.create_pod(namespace, "worker-0", agent="worker")
    subject = dev_stack.projected_token(namespace, "worker-0")
    assert dev_stack.exchange(subject).status_code == 200

    done = _plugin(dev_stack, "suspend", "worker", "-n", namespace)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"agent {namespace}/worker suspended"
    assert f"undo with: kubectl agentauth resume worker -n {namespace}" in done.stderr
    assert dev_stack.get("agent", "worker", namespace=namespace)["spec"]["suspended"] is True
    stack.wait_for(
        lambda: dev_stack.exchange(subject).status_code == 400,
        timeout=30,
        message="exchange refused while suspended",
    )
    again = _plugin(dev_stack, "suspend", "worker", "-n", namespace)
    assert again.stdout.strip() == f"agent {namespace}/worker is already suspended"

    resumed = _plugin(dev_stack, "resume", "worker", "-n", namespace)
    assert (
        resumed.stdout.strip() == f"agent {namespace}/worker resumed: it can exchange tokens again"
    )
    stack.wait_for(
        lambda: dev_stack.exchange(subject).status_code == 200,
        timeout=30,
        message="exchange accepted after resume",
    )


def test_suspend_of_a_missing_agent_says_so(dev_stack: Stack) -> None:
    namespace = dev_stack.new_namespace("suspend")
    result = _plugin(dev_stack, "suspend", "nobody", "-n", namespace)
    assert result.returncode == 1
    assert result.stderr.startswith(f"error: agent 'nobody' not found in namespace '{namespace}'")


def test_capabilities_show_grant_approval_and_what_applies_now(
    dev_stack: Stack, payer: dict[str, Any]
) -> None:
    namespace = payer["namespace"]
    name = _file(dev_stack, payer, "invoice INV-9")
    before = json.loads(
        _plugin(dev_stack, "capabilities", "payer", "-n", namespace, "-o", "json").stdout
    )
    by_name = {c["name"]: c for c in before["capabilities"]}
    assert before["agentID"].startswith(f"aauth:payer.{namespace}@")
    assert by_name["document.read"]["approval"] == "Automatic"
    assert by_name["document.read"]["grant"] == "payer"
    assert by_name["payments.authorize"]["pending"] == [name]
    assert by_name["payments.authorize"]["approvers"]["users"] == ["alice"]
    assert by_name["payments.authorize"]["maxDuration"] == "30m"

    table = _plugin(dev_stack, "capabilities", "payer", "-n", namespace).stdout
    assert "document.read" in table and "in every token" in table
    assert f"pending: {name} (needs 1 approval(s) from alice)" in table

    _plugin(dev_stack, "approve", name, "-n", namespace, user="alice")
    stack.wait_for(
        lambda: (
            dev_stack.get("accessrequest", name, namespace=namespace)["status"]["phase"]
            == "Approved"
        ),
        timeout=30,
        message="approved",
    )
    after = json.loads(
        _plugin(dev_stack, "capabilities", "payer", "-n", namespace, "-o", "json").stdout
    )
    approved = {c["name"]: c for c in after["capabilities"]}["payments.authorize"]["approved"]
    assert [a["request"] for a in approved] == [name]
    until = dev_stack.get("accessrequest", name, namespace=namespace)["status"]["grantedUntil"]
    assert approved[0]["until"] == until
    text = _plugin(dev_stack, "capabilities", "payer", "-n", namespace).stdout
    assert f"approved until {until}" in text


# -- requests --watch, describe, -n hint, kubectl get columns ---------------------------------


def _reader(process: subprocess.Popen[str]) -> queue.Queue[str]:
    lines: queue.Queue[str] = queue.Queue()

    def pump() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            lines.put(line.rstrip("\n"))

    threading.Thread(target=pump, daemon=True).start()
    return lines


def _next_matching(lines: queue.Queue[str], needle: str, *, timeout: float) -> str:
    deadline = time.monotonic() + timeout
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise AssertionError(f"no line with {needle!r} within {timeout}s")
        try:
            line = lines.get(timeout=remaining)
        except queue.Empty as error:
            raise AssertionError(f"no line with {needle!r} within {timeout}s") from error
        if needle in line:
            return line


def test_requests_watch_prints_the_pending_request_then_its_approval(
    dev_stack: Stack, payer: dict[str, Any]
) -> None:
    namespace = payer["namespace"]
    name = _file(dev_stack, payer, "invoice INV-10 for the watch")
    command = [
        str(stack.KUBECTL),
        "agentauth",
        "requests",
        "--watch",
        "-n",
        namespace,
        "--watch-timeout",
        "90",
        "--context",
        "alice",
    ]
    process = subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_env(dev_stack, ca=True),
    )
    try:
        lines = _reader(process)
        header = _next_matching(lines, "NAME", timeout=30)
        assert header.split() == [
            "NAME", "AGENT", "PHASE", "CAPABILITIES", "APPROVALS", "EXPIRES", "AGE", "JUSTIFICATION"
        ]  # fmt: skip
        pending = _next_matching(lines, name, timeout=30)
        assert pending.split()[:5] == [name, "payer", "Pending", "payments.authorize", "0"]
        _plugin(dev_stack, "approve", name, "-n", namespace, user="alice")
        approved = _next_matching(lines, "Approved", timeout=30)
        assert approved.split()[:5] == [name, "payer", "Approved", "payments.authorize", "1"]
        assert "until" in approved
    finally:
        process.terminate()
        process.wait(timeout=30)


def test_describe_names_the_asking_agent_and_its_id(
    dev_stack: Stack, payer: dict[str, Any]
) -> None:
    namespace = payer["namespace"]
    name = _file(dev_stack, payer, "invoice INV-11")
    agent_id = dev_stack.get("agent", "payer", namespace=namespace)["status"]["agentID"]
    described = _plugin(dev_stack, "describe", name, "-n", namespace, user="alice")
    assert described.returncode == 0, described.stderr
    assert f"Agent:          payer ({agent_id})" in described.stdout.splitlines()
    assert any(
        line.startswith("Filed by:       system:serviceaccount:")
        for line in (described.stdout.splitlines())
    )


def test_forgetting_the_namespace_suggests_where_the_request_is(
    dev_stack: Stack, payer: dict[str, Any]
) -> None:
    namespace = payer["namespace"]
    name = _file(dev_stack, payer, "invoice INV-12")
    for command in ("describe", "approve"):
        result = _plugin(dev_stack, command, name)
        assert result.returncode == 1
        assert result.stderr.strip() == (
            f"error: access request '{name}' not found in namespace 'default'; it exists in "
            f"namespace '{namespace}': pass -n, e.g. 'kubectl agentauth {command} {name} -n "
            f"{namespace}'"
        )


def test_kubectl_get_shows_when_approved_access_ends(
    dev_stack: Stack, payer: dict[str, Any]
) -> None:
    namespace = payer["namespace"]
    name = _file(dev_stack, payer, "invoice INV-13")
    _plugin(dev_stack, "approve", name, "-n", namespace, user="alice")
    stack.wait_for(
        lambda: (
            dev_stack.get("accessrequest", name, namespace=namespace)["status"]["phase"]
            == "Approved"
        ),
        timeout=30,
        message="approved",
    )
    shown = dev_stack.admin("get", "accessrequest", name, "-n", namespace).stdout.splitlines()
    assert shown[0].split() == [
        "NAME", "AGENT", "CAPABILITIES", "PHASE", "APPROVED", "BY", "DECIDE", "BY", "ACCESS",
        "UNTIL", "AGE",
    ]  # fmt: skip
    until = dev_stack.get("accessrequest", name, namespace=namespace)["status"]["grantedUntil"]
    assert until in shown[1]


# -- token verify and the CA ------------------------------------------------------------------


def test_token_verify_uses_agentauth_ca_file_and_explains_an_unknown_ca(
    dev_stack: Stack, payer: dict[str, Any]
) -> None:
    args = ("token", "verify", payer["token"], "--issuer", dev_stack.issuer)
    trusted = _plugin(dev_stack, *args, user=None)
    assert trusted.returncode == 0, trusted.stderr
    assert trusted.stdout.startswith("token is valid")
    untrusted = _plugin(dev_stack, *args, user=None, env=_env(dev_stack, ca=False))
    assert untrusted.returncode == 1
    assert untrusted.stderr.strip() == (
        f"error: cannot fetch the issuer's metadata from {dev_stack.issuer}"
        "/.well-known/oauth-authorization-server: its HTTPS certificate is not signed by a CA "
        "trusted here; pass --issuer-ca FILE (or set AGENTAUTH_CA_FILE) with the CA that "
        "signed it"
    )
    decoded = base64.b64decode(payer["token"].split(".")[1] + "==")
    assert json.loads(decoded)["iss"] == dev_stack.issuer


# -- validation where users make mistakes -----------------------------------------------------


def test_a_grant_naming_a_missing_agent_names_it_and_posts_an_event(dev_stack: Stack) -> None:
    namespace = dev_stack.new_namespace("typo")
    dev_stack.create_agent(namespace, "research")
    dev_stack.apply(
        [
            {
                "apiVersion": "agentauth.dev/v1alpha1",
                "kind": "CapabilityGrant",
                "metadata": {"name": "typo"},
                "spec": {
                    "agents": {"names": ["reserch"]},
                    "capabilities": [{"name": "document.write"}],
                },
            }
        ],
        namespace=namespace,
    )
    message = (
        "No Agent in this namespace matches spec.agents: spec.agents.names lists 'reserch', "
        "which does not exist in this namespace"
    )

    def active() -> dict[str, Any] | None:
        status = dev_stack.get("capabilitygrant", "typo", namespace=namespace).get("status") or {}
        return next((c for c in status.get("conditions", []) if c["type"] == "Active"), None)

    condition = stack.wait_for(active, timeout=30, message="grant status")
    assert (condition["status"], condition["reason"], condition["message"]) == (
        "False",
        "NoMatchingAgents",
        message,
    )

    def warning() -> dict[str, Any] | None:
        events = json.loads(dev_stack.admin("get", "events", "-n", namespace, "-o", "json").stdout)[
            "items"
        ]
        return next(
            (
                e
                for e in events
                if e["involvedObject"]["name"] == "typo" and e["reason"] == "NoMatchingAgents"
            ),
            None,
        )

    event = stack.wait_for(warning, timeout=30, message="NoMatchingAgents event")
    assert (event["type"], event["message"]) == ("Warning", message)


def test_a_two_hour_token_ttl_is_refused_by_the_api_server_with_the_rule(dev_stack: Stack) -> None:
    namespace = dev_stack.new_namespace("ttl")
    refused = dev_stack.kubectl(
        "apply",
        "-n",
        namespace,
        "-f",
        "-",
        check=False,
        input=json.dumps(
            {
                "apiVersion": "agentauth.dev/v1alpha1",
                "kind": "Agent",
                "metadata": {"name": "slow"},
                "spec": {"tokenTTL": "2h"},
            }
        ),
    )
    assert refused.returncode == 1
    assert refused.stderr.strip() == (
        'The Agent "slow" is invalid: spec.tokenTTL: Invalid value: "string": tokenTTL must be at '
        "most 1h"
    )
