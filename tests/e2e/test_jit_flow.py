"""Just-in-time approval end to end: real kubectl, the plugin on PATH, controller, token service.

People act through ``kubectl agentauth`` (a real kubectl finding the ``kubectl-agentauth`` console
script of this virtualenv on PATH): ``alice`` is an approver, ``bob`` is not, and the agent's own
ServiceAccount may never approve itself. The agent acts over HTTP with its pod's projected
service-account token, exactly as in a cluster.
"""

from __future__ import annotations

import base64
import datetime
import json
import ssl
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
import yaml
from kubernetes import client

from agentauth.devcluster import server
from tests import stack
from tests.e2e import jitkit

PAYMENT = {
    "capabilities": ["payments.authorize"],
    "justification": "Pay invoice INV-42 (120 EUR) to ACME",
    "duration": "10m",
    "context": {"invoice": "INV-42", "amount": "120 EUR"},
}

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def env(dev_cluster: server.DevCluster, kube_api: client.ApiClient) -> Iterator[jitkit.JitEnv]:
    environment = jitkit.JitEnv(dev_cluster, kube_api)
    environment.start()
    yield environment
    environment.stop()


Kubectl = Callable[..., subprocess.CompletedProcess[str]]


@pytest.fixture(scope="module")
def kubectl(dev_cluster: server.DevCluster) -> Kubectl:
    """Real kubectl (``kubectl agentauth`` is this virtualenv's plugin) as ``context``; tests
    check the exit status themselves (``ok``/``refused``)."""

    def run(
        *args: str, context: str | None = "admin", stdin: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        return stack.run_kubectl(
            *args,
            kubeconfig=dev_cluster.kubeconfig_path,
            context=context,
            check=False,
            input=stdin,
            env=stack.plugin_environment(dev_cluster.kubeconfig_path),
        )

    return run


def ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, f"{result.args}\n{result.stdout}\n{result.stderr}"
    return result.stdout


def refused(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 1, f"{result.args}\n{result.stdout}\n{result.stderr}"
    return result.stderr


def file_request(agent: jitkit.AgentClient, **overrides: Any) -> str:
    response = agent.file({**PAYMENT, **overrides})
    assert response.status_code == 201, response.text
    name = str(response.json()["name"])
    jitkit.wait_for(lambda: agent.poll(name).json().get("expiresAt"), message=f"{name} Pending")
    return name


def phase_of(agent: jitkit.AgentClient, name: str, wait: float = 0) -> dict[str, Any]:
    response = agent.poll(name, wait=wait)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def claims_of(token: str) -> dict[str, Any]:
    payload = token.split(".")[1]
    decoded: dict[str, Any] = json.loads(
        base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))
    )
    return decoded


def events_of(api: client.ApiClient, namespace: str, name: str) -> list[Any]:
    items = client.CoreV1Api(api).list_namespaced_event(namespace).items
    return [e for e in items if e.metadata.name.startswith(f"{name}.")]


def rfc3339(text: str) -> datetime.datetime:
    return datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))


def test_approval_flow_with_people_agent_and_events(
    env: jitkit.JitEnv, kubectl: Kubectl, namespace: str
) -> None:
    setup = jitkit.setup_agent(env.api, namespace)
    agent = jitkit.AgentClient(env, setup)
    agent.wait_ready()
    name = file_request(agent)

    # The request is visible to people: Events (with the justification and the exact command),
    # kubectl describe, and the plugin's list.
    command = f"kubectl agentauth approve {name} -n {namespace}"
    listed = jitkit.wait_for(
        lambda: (lambda out: out if out.count("AccessRequested") >= 2 else None)(
            ok(kubectl("get", "events", "-n", namespace))
        ),
        message="AccessRequested events",
    )
    assert "Pay invoice INV-42 (120 EUR) to ACME" in listed
    assert command in ok(kubectl("get", "events", "-n", namespace, "-o", "json"))
    described = ok(kubectl("describe", "accessrequest", name, "-n", namespace))
    assert "AccessRequested" in described
    table = ok(kubectl("agentauth", "requests", "-n", namespace, context="alice"))
    header, row = table.splitlines()
    assert header.split()[:4] == ["NAME", "AGENT", "PHASE", "CAPABILITIES"]
    assert row.split()[:4] == [name, "buyer", "Pending", "payments.authorize"]

    # bob is not an approver; the agent's own ServiceAccount may not approve itself.
    assert refused(kubectl("agentauth", "approve", name, "-n", namespace, context="bob")) == (
        f"error: user 'bob' may not approve access request {name!r}: not listed in the "
        f"approvers of CapabilityGrant 'buyer-payments' and not allowed verb 'approve' on "
        f"capabilitygrants 'buyer-payments' in namespace {namespace!r}; ask an admin to add you "
        "to spec.approvers of that grant\n"
    )
    sa_token = jitkit.service_account_token(env.api, setup)
    result = kubectl(
        "agentauth",
        "approve",
        name,
        "-n",
        namespace,
        "--token",
        sa_token,
        "--server",
        env.cluster.url,
        "--certificate-authority",
        str(env.cluster.ca_path),
    )
    assert refused(result) == (
        f"error: system:serviceaccount:{namespace}:buyer-sa is the service account of agent "
        "'buyer' and may not approve its own access requests\n"
    )

    # Without approval the capability is not in the agent's token.
    response = agent.exchange(scope="payments.authorize")
    assert response.status_code == 400
    assert response.json()["error"] == "invalid_scope"

    # The agent long-polls; alice approves; the agent sees it within a second.
    token = agent.token()
    seen: dict[str, Any] = {}

    def long_poll() -> None:
        body = phase_of_token(agent, name, token)
        seen["at"] = time.monotonic()
        seen["body"] = body

    poller = threading.Thread(target=long_poll)
    poller.start()
    approved = kubectl(
        "agentauth",
        "approve",
        name,
        "-n",
        namespace,
        "--comment",
        "INV-42 checked",
        context="alice",
    )
    decided_at = time.monotonic()
    assert ok(approved) == f"accessrequest {namespace}/{name} approved by alice\n"
    poller.join(30)
    assert seen["body"]["phase"] == "Approved"
    assert seen["at"] - decided_at < 1.0
    granted_until = rfc3339(seen["body"]["grantedUntil"])

    # The exchange now includes the capability, never beyond grantedUntil.
    paid = agent.token(scope="payments.authorize document.read")
    claims = claims_of(paid)
    assert claims["scope"].split() == ["payments.authorize", "document.read"]
    assert claims["exp"] <= granted_until.timestamp()
    verified = ok(
        kubectl(
            "agentauth",
            "token",
            "verify",
            paid,
            "--issuer",
            env.issuer,
            "--issuer-ca",
            str(env.cluster.ca_path),
            context=None,
        )
    )
    assert "  scope:    payments.authorize document.read" in verified
    described = json.loads(
        ok(kubectl("agentauth", "describe", name, "-n", namespace, "-o", "json", context="alice"))
    )
    (approval,) = described["status"]["approvals"]
    assert (approval["user"], approval["comment"]) == ("alice", "INV-42 checked")
    agents = ok(kubectl("agentauth", "agents", "-n", namespace, context="alice"))
    header, row = agents.splitlines()
    assert header.split() == ["NAME", "READY", "REASON", "SERVICEACCOUNT", "AGE", "CAPABILITIES"]
    assert (row.split()[0], row.split()[3]) == ("buyer", "buyer-sa")
    # Missing RBAC reads as a sentence naming the user, verb, resource and namespace.
    assert refused(kubectl("agentauth", "requests", "-n", "default", context="bob")) == (
        "error: cannot list accessrequests: user 'bob' is not allowed to list "
        "accessrequests.agentauth.dev in namespace 'default'; ask a cluster admin for a Role "
        "that grants it (for approvers: bind the ClusterRole 'agentauth-approver')\n"
    )
    version = ok(kubectl("agentauth", "version", context="alice"))
    assert version.splitlines()[1].startswith("Kubernetes API server v")
    listed = yaml.safe_load(
        ok(
            kubectl(
                "agentauth", "requests", "-n", namespace, "--all", "-o", "yaml", context="alice"
            )
        )
    )
    assert [item["metadata"]["name"] for item in listed["items"]] == [name]
    reasons = {e.reason for e in events_of(env.api, namespace, name)}
    assert {"AccessRequested", "ApprovalRecorded", "AccessApproved"} <= reasons


def phase_of_token(agent: jitkit.AgentClient, name: str, token: str) -> dict[str, Any]:
    response = agent.poll(name, wait=20, token=token)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def test_forged_approvals_are_refused(env: jitkit.JitEnv, kubectl: Kubectl, namespace: str) -> None:
    setup = jitkit.setup_agent(env.api, namespace)
    agent = jitkit.AgentClient(env, setup)
    agent.wait_ready()
    name = file_request(agent)
    forged = json.dumps(
        [
            {
                "op": "add",
                "path": "/status/approvals",
                "value": [{"user": "alice", "time": "2026-01-01T00:00:00Z", "comment": ""}],
            }
        ]
    )
    result = kubectl(
        "patch",
        "accessrequest",
        name,
        "-n",
        namespace,
        "--subresource=status",
        "--type=json",
        "-p",
        forged,
        context="bob",
    )
    assert result.returncode != 0
    assert "'bob' cannot record one for 'alice'" in result.stderr
    result = kubectl(
        "patch",
        "accessrequest",
        name,
        "-n",
        namespace,
        "--type=merge",
        "-p",
        '{"spec":{"requester":{"username":"alice"}}}',
    )
    assert result.returncode != 0
    assert "spec.requester is set by agentauth from the authenticated caller" in result.stderr

    assert (
        ok(
            kubectl(
                "agentauth",
                "deny",
                name,
                "-n",
                namespace,
                "--reason",
                "not this vendor",
                context="alice",
            )
        )
        == f"accessrequest {namespace}/{name} denied by alice\n"
    )
    assert phase_of(agent, name, wait=10)["phase"] == "Denied"
    result = kubectl(
        "patch",
        "accessrequest",
        name,
        "-n",
        namespace,
        "--subresource=status",
        "--type=merge",
        "-p",
        '{"status":{"phase":"Pending"}}',
    )
    assert result.returncode != 0
    assert f"access request {name!r} is Denied and cannot be re-opened" in result.stderr
    assert refused(kubectl("agentauth", "approve", name, "-n", namespace, context="alice")) == (
        f"error: cannot approve access request {name!r}: it is Denied; only Pending requests "
        "can be approved or denied\n"
    )


def test_quorum_of_two_and_one_denial_wins(
    env: jitkit.JitEnv, kubectl: Kubectl, namespace: str
) -> None:
    setup = jitkit.setup_agent(env.api, namespace, min_approvals=2, approvers=["alice", "bob"])
    agent = jitkit.AgentClient(env, setup)
    agent.wait_ready()
    first, second = file_request(agent), file_request(agent)
    for name in (first, second):
        ok(kubectl("agentauth", "approve", name, "-n", namespace, context="alice"))
    assert phase_of(agent, first, wait=1)["phase"] == "Pending"  # 1 of 2
    ok(kubectl("agentauth", "approve", first, "-n", namespace, context="bob"))
    ok(kubectl("agentauth", "deny", second, "-n", namespace, "--reason", "no", context="bob"))
    assert phase_of(agent, first, wait=10)["phase"] == "Approved"
    denied = phase_of(agent, second, wait=10)
    assert (denied["phase"], [a["user"] for a in denied["approvals"]]) == ("Denied", ["alice"])
    listing = ok(kubectl("agentauth", "requests", "-n", namespace, "--all", context="alice"))
    assert [line.split()[2] for line in listing.splitlines()[1:]] == ["Approved", "Denied"]


def test_grant_window_ends(env: jitkit.JitEnv, kubectl: Kubectl, namespace: str) -> None:
    setup = jitkit.setup_agent(env.api, namespace)
    agent = jitkit.AgentClient(env, setup)
    agent.wait_ready()
    # Long enough that a loaded CI machine still exchanges and introspects inside the window,
    # short enough that the test waits for its end.
    name = file_request(agent, duration="10s")
    ok(kubectl("agentauth", "approve", name, "-n", namespace, context="alice"))
    approved = phase_of(agent, name, wait=10)
    granted_until = rfc3339(approved["grantedUntil"])
    token = agent.token(scope="payments.authorize")
    assert claims_of(token)["exp"] <= granted_until.timestamp()

    def introspect() -> bool:
        response = httpx.post(
            f"{env.issuer}/oauth2/introspect",
            data={"token": token},
            # A caller authenticates to introspect (RFC 7662 section 2.1): the pod's own token.
            headers={"Authorization": f"Bearer {agent.pod_token}"},
            verify=ssl.create_default_context(cafile=env.ca),
            timeout=10,
        )
        return bool(response.json()["active"])

    assert introspect()
    ended = jitkit.wait_for(
        lambda: (lambda body: body if body["phase"] == "Expired" else None)(phase_of(agent, name)),
        message="end of the grant window",
    )
    assert ended["grantedUntil"] == approved["grantedUntil"]
    response = agent.exchange(scope="payments.authorize")
    assert (response.status_code, response.json()["error"]) == (400, "invalid_scope")
    assert "payments.authorize" not in claims_of(agent.token())["scope"].split()
    jitkit.wait_for(lambda: not introspect(), message="token inactive after exp")
    assert "AccessEnded" in {e.reason for e in events_of(env.api, namespace, name)}


def test_controller_restart_while_pending_loses_and_repeats_nothing(
    env: jitkit.JitEnv, kubectl: Kubectl, namespace: str
) -> None:
    setup = jitkit.setup_agent(env.api, namespace)
    agent = jitkit.AgentClient(env, setup)
    agent.wait_ready()
    name = file_request(agent)
    jitkit.wait_for(lambda: len(events_of(env.api, namespace, name)) >= 2, message="events")
    before = phase_of(agent, name)
    env.restart_controller()
    ok(kubectl("agentauth", "approve", name, "-n", namespace, context="alice"))
    after = phase_of(agent, name, wait=10)
    assert after["phase"] == "Approved"
    assert after["expiresAt"] == before["expiresAt"]
    jitkit.wait_for(
        lambda: sum(e.reason == "AccessApproved" for e in events_of(env.api, namespace, name)) == 2,
        message="AccessApproved events",
    )
    reasons = sorted(e.reason for e in events_of(env.api, namespace, name))
    assert reasons == [
        "AccessApproved",
        "AccessApproved",
        "AccessRequested",
        "AccessRequested",
        "ApprovalRecorded",
    ]


def test_pending_request_expires(env: jitkit.JitEnv, kubectl: Kubectl, namespace: str) -> None:
    setup = jitkit.setup_agent(env.api, namespace)
    agent = jitkit.AgentClient(env, setup)
    agent.wait_ready()
    env.restart_controller(access_request_expiry=3)
    try:
        name = file_request(agent)
        pending = phase_of(agent, name)
        expired = phase_of(agent, name, wait=15)
    finally:
        env.restart_controller(access_request_expiry=600)
    assert expired["phase"] == "Expired"
    assert expired["expiresAt"] == pending["expiresAt"]
    assert "AccessRequestExpired" in {e.reason for e in events_of(env.api, namespace, name)}
    assert refused(kubectl("agentauth", "approve", name, "-n", namespace, context="alice")) == (
        f"error: cannot approve access request {name!r}: it is Expired; only Pending requests "
        "can be approved or denied\n"
    )


def test_token_service_restart_while_the_agent_long_polls(
    env: jitkit.JitEnv, kubectl: Kubectl, namespace: str
) -> None:
    setup = jitkit.setup_agent(env.api, namespace)
    agent = jitkit.AgentClient(env, setup)
    agent.wait_ready()
    name = file_request(agent)
    token = agent.token()
    outcome: dict[str, Any] = {"errors": 0}
    polling = threading.Event()

    def long_poll_with_retries() -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            polling.set()
            try:
                response = agent.poll(name, wait=20, token=token)
            except httpx.HTTPError:
                outcome["errors"] += 1  # the service went away mid-poll: ask again
                continue
            if response.status_code == 200 and response.json()["phase"] != "Pending":
                outcome["body"] = response.json()
                return
            if response.status_code != 200:
                outcome["errors"] += 1

    poller = threading.Thread(target=long_poll_with_retries)
    poller.start()
    polling.wait(10)
    env.restart_token_service()
    ok(kubectl("agentauth", "approve", name, "-n", namespace, context="alice"))
    poller.join(60)
    assert outcome["body"]["phase"] == "Approved"
