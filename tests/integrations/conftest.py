"""The real agentauth stack for the framework-adapter tests, started once per test session.

``agentauth_stack`` brings up, on the shared embedded control plane (``dev_cluster``):

* the chart (:func:`tests.stack.install_chart`: real Helm render, applied with real kubectl),
  with the AccessRequest admission webhooks on (requester stamping, approver checks) but limited
  to this suite's namespace;
* the controller (``agentauth.controller.main.run``) as the chart's ServiceAccount;
* the token service (``agentauth.tokenservice.app.serve``, JIT routes included) on loopback, as
  the chart's token-service ServiceAccount, with the settings the chart's Deployment gives it;
* a CapabilityGrant for every Agent labelled ``role: clerk``: ``document.read`` (Automatic) and
  ``payments.authorize`` (Required, ``maxDuration`` 15m, approver ``alice``, who gets a Role to
  read and decide AccessRequests). ``db.delete`` is granted to nobody.

``Stack.enroll(name)`` adds an Agent with its own ServiceAccount, a pod object labelled as the
agent, and a pod-bound service-account token (TokenRequest, audience = the issuer); it returns
once the token service exchanges that token. Each test module enrolls its own agent, so an
approval (which lasts its window) never leaks into another test. ``EnrolledAgent.client()`` is a
real :class:`agentauth.sdk.AgentClient`. ``EnrolledAgent.decide_when_filed(capability)`` is the
test's human: a thread that waits for the agent's AccessRequest to be Pending and approves (or
denies) it with ``kubectl agentauth approve`` as ``alice``, through the plugin's own entry point:
the status write goes through admission, which records ``alice`` as the approver, and the
controller then decides the phase.

Importing this module sets the variables that keep every framework offline (telemetry and
tracing off).
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import os
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agentauth import kubectl_plugin
from agentauth.devcluster import server
from agentauth.sdk import AgentClient, ServiceAccountTokenFile
from agentauth.tokenservice import settings as token_settings
from tests import stack
from tests.conftest import Kubectl
from tests.stack import ISSUER, ControllerThread, TokenServiceThread, free_port, wait_for

# No framework may phone home from a test (no network here anyway): telemetry and tracing off,
# and CrewAI's first-run "view your traces?" prompt (a 20 s stdin wait) disabled.
OFFLINE_ENVIRONMENT = {
    "OTEL_SDK_DISABLED": "true",
    "CREWAI_DISABLE_TELEMETRY": "true",
    "CREWAI_DISABLE_TRACKING": "true",
    "CREWAI_TRACING_ENABLED": "false",
    "CREWAI_TESTING": "true",
    "AGNO_TELEMETRY": "false",
    "OPENAI_AGENTS_DISABLE_TRACING": "1",
    "LANGSMITH_TRACING": "false",
    "LANGCHAIN_TRACING_V2": "false",
    "ANONYMIZED_TELEMETRY": "false",
    "GOOGLE_CLOUD_DISABLE_TELEMETRY": "true",
}
for _name, _value in OFFLINE_ENVIRONMENT.items():
    os.environ.setdefault(_name, _value)

APPROVER = "alice"


@dataclasses.dataclass
class Stack:
    namespace: str
    system_namespace: str
    token_url: str
    kubectl: Kubectl
    kube_api: Any
    kubeconfig: Path
    directory: Path

    def enroll(self, name: str) -> EnrolledAgent:
        """A new Agent ``name`` (own ServiceAccount, pod and pod-bound token) that the shared
        grant selects; each test module enrolls its own, so approvals never leak between them."""
        account = f"{name}-sa"
        stack.apply(
            self.kubectl, _agent_manifests(name=name, account=account, namespace=self.namespace)
        )
        pod = f"{name}-0"
        token_file = self.directory / f"{name}.token"
        token_file.write_text(
            stack.request_token(
                self.kube_api,
                namespace=self.namespace,
                account=account,
                audience=ISSUER,
                pod=pod,
                expiration_seconds=7200,
            )
        )
        agent = EnrolledAgent(name=name, stack=self, token_file=token_file)
        probe = agent.client()
        failures: list[str] = []
        try:
            # Ready when the token service's caches hold the Agent, the grant and the pod.
            wait_for(lambda: _exchanges(probe, failures), timeout=30, interval=0.1)
        except AssertionError as exc:
            raise AssertionError(f"agent {name} never got a token: {failures}") from exc
        finally:
            probe.close()
        return agent

    def approve(self, name: str) -> subprocess.CompletedProcess[str]:
        """``kubectl agentauth approve NAME -n NS --context alice``, as a person runs it."""
        return self._decide("approve", name, "--comment", "approved by the integration test")

    def deny(self, name: str) -> subprocess.CompletedProcess[str]:
        """``kubectl agentauth deny NAME --reason ...`` as the approver."""
        return self._decide("deny", name, "--reason", "not this week")

    def _decide(self, verb: str, name: str, *extra: str) -> subprocess.CompletedProcess[str]:
        # The plugin's own entry point, in-process: the same code path as the console script
        # (argument parsing, kubeconfig, the status write through admission) without paying
        # ~1.5 s of interpreter start-up per approval on a loaded CI machine.
        argv = [
            verb, name, "-n", self.namespace,
            "--kubeconfig", str(self.kubeconfig), "--context", APPROVER, *extra,
        ]  # fmt: skip
        stdout, stderr = io.StringIO(), io.StringIO()
        status = kubectl_plugin.run(argv, stdout=stdout, stderr=stderr)
        return subprocess.CompletedProcess(
            ["kubectl-agentauth", *argv], status, stdout.getvalue(), stderr.getvalue()
        )


@dataclasses.dataclass
class EnrolledAgent:
    name: str
    stack: Stack
    token_file: Path

    def client(self) -> AgentClient:
        """A fresh SDK client for this agent (its own token cache)."""
        return AgentClient(
            issuer=ISSUER,
            token_url=self.stack.token_url,
            subject_token_source=ServiceAccountTokenFile(self.token_file),
        )

    def access_requests(self) -> list[dict[str, Any]]:
        """This agent's AccessRequests, read as the admin (in-process: the approver polls)."""
        from kubernetes import client

        listing = client.CustomObjectsApi(self.stack.kube_api).list_namespaced_custom_object(
            "agentauth.dev", "v1alpha1", self.stack.namespace, "accessrequests"
        )
        return [item for item in listing["items"] if item["spec"].get("agent") == self.name]

    def wait_pending(self, name: str) -> None:
        """Wait until the controller has put ``name`` in phase Pending (approvable)."""

        def pending() -> bool:
            return any(
                r["metadata"]["name"] == name and (r.get("status") or {}).get("phase") == "Pending"
                for r in self.access_requests()
            )

        wait_for(pending, timeout=20, interval=0.05, message=f"{name} to be Pending")

    @contextlib.contextmanager
    def decide_when_filed(
        self, capability: str, *, approve: bool = True, timeout: float = 30.0
    ) -> Iterator[Approver]:
        """The test's human: approve (or deny) the first new AccessRequest of this agent for
        ``capability`` as soon as it appears."""
        known = {item["metadata"]["name"] for item in self.access_requests()}
        approver = Approver(
            agent=self, capability=capability, known=known, timeout=timeout, approve=approve
        )
        approver.start()
        try:
            yield approver
        finally:
            approver.join()


class Approver(threading.Thread):
    """The test's human: waits for the agent's AccessRequest, then approves it."""

    def __init__(
        self,
        *,
        agent: EnrolledAgent,
        capability: str,
        known: set[str],
        timeout: float,
        approve: bool,
    ) -> None:
        super().__init__(daemon=True, name="approver")
        self.agent = agent
        self.approve = approve
        self.capability = capability
        self.known = known
        self.timeout = timeout
        self.request: dict[str, Any] | None = None
        self.result: subprocess.CompletedProcess[str] | None = None
        self.error: BaseException | None = None

    def _filed(self) -> dict[str, Any] | None:
        for item in self.agent.access_requests():
            if (
                item["metadata"]["name"] not in self.known
                and self.capability in item["spec"]["capabilities"]
                # A person approves what `kubectl agentauth requests` lists: Pending requests.
                and (item.get("status") or {}).get("phase") == "Pending"
            ):
                return item
        return None

    def run(self) -> None:
        try:
            self.request = wait_for(
                self._filed, timeout=self.timeout, interval=0.05, message="an AccessRequest"
            )
            name = self.request["metadata"]["name"]
            stack = self.agent.stack
            self.result = stack.approve(name) if self.approve else stack.deny(name)
        except BaseException as exc:
            self.error = exc

    def join(self, timeout: float | None = None) -> None:
        super().join(self.timeout + 60 if timeout is None else timeout)


def _grant(namespace: str) -> dict[str, Any]:
    return {
        "apiVersion": "agentauth.dev/v1alpha1",
        "kind": "CapabilityGrant",
        "metadata": {"name": "clerks", "namespace": namespace},
        "spec": {
            "agents": {"selector": {"matchLabels": {"role": "clerk"}}},
            "capabilities": [
                {
                    "name": "document.read",
                    "description": "read documents",
                    "examples": ["read the quarterly report"],
                    "approval": "Automatic",
                },
                {
                    "name": "payments.authorize",
                    "description": "authorize a payment",
                    "examples": ["pay the invoice"],
                    "approval": "Required",
                    "maxDuration": "15m",
                },
            ],
            "approvers": {"users": [APPROVER]},
        },
    }


def _approver_rbac(namespace: str) -> list[dict[str, Any]]:
    """What an approver needs in the namespace to run ``kubectl agentauth approve``."""
    return [
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "Role",
            "metadata": {"name": "approver", "namespace": namespace},
            "rules": [
                {
                    "apiGroups": ["agentauth.dev"],
                    "resources": ["accessrequests", "capabilitygrants", "agents"],
                    "verbs": ["get", "list", "watch"],
                },
                {
                    "apiGroups": ["agentauth.dev"],
                    "resources": ["accessrequests/status"],
                    "verbs": ["get", "update", "patch"],
                },
                {"apiGroups": [""], "resources": ["events"], "verbs": ["get", "list"]},
            ],
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "RoleBinding",
            "metadata": {"name": "approver", "namespace": namespace},
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "Role",
                "name": "approver",
            },
            "subjects": [
                {"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": APPROVER}
            ],
        },
    ]


def _agent_manifests(*, name: str, account: str, namespace: str) -> list[dict[str, Any]]:
    return [
        {
            "apiVersion": "v1",
            "kind": "ServiceAccount",
            "metadata": {"name": account, "namespace": namespace},
        },
        {
            "apiVersion": "agentauth.dev/v1alpha1",
            "kind": "Agent",
            "metadata": {"name": name, "namespace": namespace, "labels": {"role": "clerk"}},
            "spec": {
                "serviceAccountName": account,
                "description": "books invoices (framework-adapter tests)",
                "owner": "integrations@example.com",
            },
        },
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": f"{name}-0",
                "namespace": namespace,
                "labels": {"agentauth.dev/agent": name},
            },
            "spec": {
                "serviceAccountName": account,
                "containers": [{"name": "agent", "image": "example.invalid/agent:1"}],
            },
        },
    ]


@pytest.fixture(scope="session")
def agentauth_stack(
    kubectl: Kubectl,
    kube_api: Any,
    dev_cluster: server.DevCluster,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Stack]:
    directory = tmp_path_factory.mktemp("integrations")
    with stack.install_chart(
        kubectl, dev_cluster, directory, access_request_webhooks=True, prefix="i"
    ) as install:
        token_kubeconfig = stack.service_account_kubeconfig(
            kubectl,
            dev_cluster,
            namespace=install.system_namespace,
            account=f"{install.release}-token-service",
            path=directory / "token-service.kubeconfig",
        )
        controller = ControllerThread(install.settings).start()
        tokens: TokenServiceThread | None = None
        try:
            environ = stack.deployment_environment(
                install.objects, f"{install.release}-token-service"
            )
            token_port = free_port()
            settings = dataclasses.replace(
                token_settings.from_sources(environ=environ),
                # Clients sign @authority: the public URL must be the one they really call.
                public_url=f"http://127.0.0.1:{token_port}",
                listen_host="127.0.0.1",
                listen_port=token_port,
                kubeconfig=token_kubeconfig,
                cluster_issuer=dev_cluster.issuer,
                log_format="text",
            )
            tokens = TokenServiceThread(settings).start()
            stack.apply(kubectl, [_grant(install.namespace), *_approver_rbac(install.namespace)])
            yield Stack(
                namespace=install.namespace,
                system_namespace=install.system_namespace,
                token_url=tokens.url,
                kubectl=kubectl,
                kube_api=kube_api,
                kubeconfig=dev_cluster.kubeconfig_path,
                directory=directory,
            )
        finally:
            if tokens is not None:
                tokens.stop()
            controller.stop()


def _exchanges(client: AgentClient, failures: list[str]) -> bool:
    """One exchange attempt; the last failure is kept for the timeout message."""
    from agentauth.sdk import errors

    try:
        scope = client.token_info(force_refresh=True).scope
    except errors.AgentAuthError as exc:
        failures[:] = [str(exc)]
        return False
    failures[:] = [f"scope {scope}"]
    return "document.read" in scope
