"""``agentauth dev``: the real command as a subprocess, and the in-process ``dev_stack`` fixture.

The subprocess tests hold the CLI to its contract (banner, one ready line, a kubeconfig real
kubectl uses as admin/alice/bob, SIGTERM -> exit 0 with every port closed, a restart with the
same directory keeping objects and the issuer). The fixture tests prove the production paths
are exercised: the chart's objects are installed, each component runs as its own ServiceAccount
under the chart's RBAC, a labelled pod is mutated by the real webhook and its projected token
exchanges for an agent token with the right scope.
"""

from __future__ import annotations

import base64
import json
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml

from agentauth import devstack
from tests import stack
from tests.e2e.conftest import BIN, Stack, wait_for

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]

READY = re.compile(r"^ready kubeconfig=(?P<path>\S+)$")


class DevProcess:
    """``agentauth dev`` as a subprocess, its stdout read line by line on a thread."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.process = subprocess.Popen(
            [str(BIN / "agentauth"), "dev", "--dir", str(directory)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.output: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.put(line.rstrip("\n"))
        self.lines.put(None)

    def wait_ready(self, timeout: float = 90.0) -> Path:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=max(0.05, deadline - time.monotonic()))
            except queue.Empty:
                break
            if line is None:
                stderr = self.process.stderr.read() if self.process.stderr else ""
                raise AssertionError(f"agentauth dev exited before ready:\n{self.output}\n{stderr}")
            self.output.append(line)
            match = READY.match(line)
            if match:
                # The lines printed with it (export KUBECONFIG=..., URLs) follow at once.
                while len(self.output) < 4 or not self.output[-1].startswith("  stop"):
                    rest = self.lines.get(timeout=10)
                    assert rest is not None
                    self.output.append(rest)
                return Path(match.group("path"))
        raise AssertionError(f"no ready line within {timeout}s: {self.output}")

    def terminate(self, timeout: float = 60.0) -> int:
        self.process.send_signal(signal.SIGTERM)
        code = self.process.wait(timeout=timeout)
        while (line := self.lines.get(timeout=10)) is not None:
            self.output.append(line)
        return code

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=30)


def run_kubectl(kubeconfig: Path, *args: str, user: str) -> subprocess.CompletedProcess[str]:
    return stack.run_kubectl(*args, kubeconfig=kubeconfig, context=user, check=False)


def port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(1)
        return sock.connect_ex(("127.0.0.1", port)) == 0


@pytest.fixture
def dev_process(tmp_path: Path) -> Iterator[DevProcess]:
    started = DevProcess(tmp_path / "dev")
    try:
        yield started
    finally:
        started.kill()


def test_dev_subprocess_serves_kubectl_and_stops_cleanly_on_sigterm(
    dev_process: DevProcess,
) -> None:
    kubeconfig = dev_process.wait_ready()

    assert "DEVELOPMENT AND TESTS ONLY" in dev_process.output[0]
    assert [line for line in dev_process.output if line.startswith("ready")] == [
        f"ready kubeconfig={kubeconfig}"
    ]
    assert kubeconfig == dev_process.directory.resolve() / "kubeconfig"
    assert any(
        line.strip().startswith(f"export KUBECONFIG={kubeconfig}") for line in dev_process.output
    )
    ports = json.loads((dev_process.directory / "ports.json").read_text())
    issuer = f"https://127.0.0.1:{ports['token_service']}"
    assert f"  issuer: {issuer}" in dev_process.output

    admin = run_kubectl(
        kubeconfig, "get", "crd", "agents.agentauth.dev", "-o", "name", user="admin"
    )
    assert admin.returncode == 0, admin.stderr
    assert (
        admin.stdout.strip() == "customresourcedefinition.apiextensions.k8s.io/agents.agentauth.dev"
    )
    for user in ("alice", "bob"):
        denied = run_kubectl(kubeconfig, "get", "secrets", "-n", "agentauth-system", user=user)
        assert denied.returncode == 1
        assert (
            f'User "{user}" cannot list resource "secrets" in API group "" in the namespace '
            '"agentauth-system"' in denied.stderr
        )
    assert run_kubectl(kubeconfig, "create", "namespace", "kept", user="admin").returncode == 0

    assert dev_process.terminate() == 0
    for port in ports.values():
        assert not port_open(port), f"port {port} still open after exit"

    # Same directory again: same ports (issuer, kubeconfig), every object kept.
    again = DevProcess(dev_process.directory)
    try:
        assert again.wait_ready() == kubeconfig
        assert f"  issuer: {issuer}" in again.output
        kept = run_kubectl(kubeconfig, "get", "namespace", "kept", "-o", "name", user="admin")
        assert kept.stdout.strip() == "namespace/kept", kept.stderr
        assert again.terminate() == 0
    finally:
        again.kill()


def test_dev_refuses_a_port_in_use(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        result = subprocess.run(
            [str(BIN / "agentauth"), "dev", "--dir", str(tmp_path), "--port", str(port)],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    assert result.returncode == 1
    assert result.stderr.strip().endswith(
        f"agentauth dev: error: port {port} on 127.0.0.1 (API server) is in use"
    )
    assert "ready" not in result.stdout


def test_dev_refuses_a_token_service_port_in_use(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        result = subprocess.run(
            [
                str(BIN / "agentauth"),
                "dev",
                "--dir",
                str(tmp_path),
                "--token-service-port",
                str(port),
            ],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    assert result.returncode == 1
    assert result.stderr.strip().endswith(
        f"agentauth dev: error: port {port} on 127.0.0.1 (token service) is in use"
    )


def test_stack_installs_the_charts_objects(dev_stack: Stack) -> None:
    rendered = {
        (o["kind"], o["metadata"]["name"])
        for o in dev_stack.stack.objects
        if o["kind"] != "Deployment"
    }
    assert ("ClusterRole", "agentauth-controller") in rendered
    assert ("MutatingWebhookConfiguration", "agentauth-webhook") in rendered
    for kind, name in rendered:
        namespace = [] if "Cluster" in kind or "Webhook" in kind else ["-n", "agentauth-system"]
        dev_stack.admin("get", kind.lower(), name, *namespace, "-o", "name")
    stored = json.loads(
        dev_stack.admin(
            "get", "mutatingwebhookconfiguration", "agentauth-webhook", "-o", "json"
        ).stdout
    )
    pods_hook = next(w for w in stored["webhooks"] if w["name"] == "pods.agentauth.dev")
    # The chart's Service reference, not a dev URL; the caBundle is the controller's own CA.
    assert pods_hook["clientConfig"]["service"] == {
        "name": "agentauth-controller",
        "namespace": "agentauth-system",
        "path": "/mutate/pods",
        "port": 443,
    }
    ca = base64.b64decode(pods_hook["clientConfig"]["caBundle"]).decode()
    assert "BEGIN CERTIFICATE" in ca
    assert ca != dev_stack.ca_path.read_text()


def test_components_run_as_their_service_accounts_under_chart_rbac(dev_stack: Stack) -> None:
    directory = dev_stack.stack.directory
    for account, allowed, forbidden in (
        ("agentauth-controller", ("list", "agents", "-A"), ("list", "pods", "-A")),
        ("agentauth-token-service", ("list", "pods", "-A"), ("patch", "agents/status", "-A")),
    ):
        kubeconfig = directory / f"{account}.kubeconfig"
        document = yaml.safe_load(kubeconfig.read_text())
        assert "tokenFile" in document["users"][0]["user"]
        verb, resource, scope = allowed
        yes = run_kubectl(kubeconfig, "auth", "can-i", verb, resource, scope, user=account)
        assert yes.stdout.strip() == "yes", (account, yes.stdout, yes.stderr)
        verb, resource, scope = forbidden
        no = run_kubectl(kubeconfig, "auth", "can-i", verb, resource, scope, user=account)
        assert no.stdout.strip() == "no", (account, no.stdout, no.stderr)
        secrets = run_kubectl(kubeconfig, "get", "secrets", "-A", user=account)
        assert secrets.returncode == 1
        assert (
            f'User "system:serviceaccount:agentauth-system:{account}" cannot list resource '
            '"secrets"' in secrets.stderr
        )


def test_labelled_pod_is_mutated_and_its_projected_token_exchanges(dev_stack: Stack) -> None:
    namespace = dev_stack.new_namespace()
    dev_stack.create_agent(
        namespace,
        "reader",
        capabilities=[
            {"name": "document.read"},
            {"name": "payments.authorize", "approval": "Required"},
        ],
    )
    pod = dev_stack.create_pod(namespace, "reader-1", agent="reader")

    container = pod["spec"]["containers"][0]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["AGENTAUTH_TOKEN_URL"] == dev_stack.token_url
    assert env["AGENTAUTH_ISSUER"] == dev_stack.issuer
    assert env["AGENTAUTH_AGENT"] == "reader"
    assert {
        "mountPath": "/var/run/secrets/agentauth.dev/serviceaccount",
        "name": "agentauth-token",
        "readOnly": True,
    } in container["volumeMounts"]

    response = dev_stack.exchange(dev_stack.projected_token(namespace, "reader-1"))
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["issued_token_type"] == "urn:ietf:params:oauth:token-type:access_token"
    claims = dev_stack.decode(body["access_token"])
    assert claims["sub"] == f"aauth:reader.{namespace}@{devstack.TRUST_DOMAIN}"
    # Required capabilities never ride along without an approval.
    assert claims["scope"] == "document.read"
    assert claims["agent"]["name"] == "reader"
    assert claims["pod"]["name"] == "reader-1"


def test_a_token_for_another_audience_is_refused(dev_stack: Stack) -> None:
    namespace = dev_stack.new_namespace()
    dev_stack.create_agent(namespace, "writer")
    pod = dev_stack.create_pod(namespace, "writer-1", agent="writer")
    response = dev_stack.api.post(
        f"/api/v1/namespaces/{namespace}/serviceaccounts/writer/token",
        json={
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenRequest",
            "spec": {
                "audiences": ["https://someone-else.example"],
                "boundObjectRef": {
                    "kind": "Pod",
                    "apiVersion": "v1",
                    "name": "writer-1",
                    "uid": pod["metadata"]["uid"],
                },
            },
        },
    )
    response.raise_for_status()
    refused = dev_stack.exchange(response.json()["status"]["token"])
    assert refused.status_code == 400
    assert refused.json()["error"] == "invalid_grant"


def test_unlabelled_namespace_pods_are_not_touched(dev_stack: Stack) -> None:
    namespace = dev_stack.new_namespace()
    dev_stack.admin("run", "plain", "-n", namespace, "--image=example.test/plain:1")
    plain = dev_stack.get("pod", "plain", namespace=namespace)
    assert "env" not in plain["spec"]["containers"][0]
    assert not [v for v in plain["spec"].get("volumes") or [] if v["name"] == "agentauth-token"]


def test_run_as_pod_gives_the_command_the_dev_ca(dev_stack: Stack, tmp_path: Path) -> None:
    namespace = dev_stack.new_namespace()
    dev_stack.create_agent(namespace, "runner")
    dev_stack.create_pod(namespace, "runner-1", agent="runner")
    script = (
        "import json, os; print(json.dumps({k: os.environ.get(k) for k in "
        "('AGENTAUTH_CA_FILE', 'AGENTAUTH_TOKEN_URL', 'AGENTAUTH_TOKEN_FILE')}))"
    )
    environment = {k: v for k, v in dev_stack.env.items() if k != "AGENTAUTH_CA_FILE"}
    result = subprocess.run(
        [
            str(BIN / "agentauth"),
            "dev",
            "run-as-pod",
            "runner-1",
            "-n",
            namespace,
            "--",
            sys.executable,
            "-c",
            script,
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env=environment,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    seen = json.loads(result.stdout)
    assert seen["AGENTAUTH_CA_FILE"] == str(dev_stack.ca_path)
    assert seen["AGENTAUTH_TOKEN_URL"] == dev_stack.token_url
    assert seen["AGENTAUTH_TOKEN_FILE"] and not seen["AGENTAUTH_TOKEN_FILE"].startswith("/var/run")


def test_approvals_run_under_the_chart_rbac(dev_stack: Stack) -> None:
    """bob is not an approver: the webhook, running as the controller's ServiceAccount, asks
    the API server (SubjectAccessReview, allowed by the chart's RBAC) and refuses him with a
    message he can act on; alice, listed in the grant, approves."""
    namespace = dev_stack.new_namespace()
    dev_stack.create_agent(
        namespace,
        "payer",
        capabilities=[{"name": "payments.authorize", "approval": "Required"}],
        approvers={"users": ["alice"]},
    )
    dev_stack.apply(
        (ROOT / "demo" / "approver-rbac.yaml").read_text().replace("namespace: demo", ""),
        namespace=namespace,
    )
    dev_stack.create_pod(namespace, "payer-1", agent="payer")
    exchanged = dev_stack.exchange(dev_stack.projected_token(namespace, "payer-1"))
    assert exchanged.status_code == 200, exchanged.text
    filed = dev_stack.http.post(
        f"{dev_stack.token_service_url}/v1/access-requests",
        json={"capabilities": ["payments.authorize"], "justification": "invoice INV-7"},
        headers={"Authorization": f"Bearer {exchanged.json()['access_token']}"},
    )
    assert filed.status_code in (200, 201), filed.text
    name = filed.json().get("name") or filed.json()["metadata"]["name"]

    refused = dev_stack.plugin("approve", name, "-n", namespace, user="bob", check=False)
    assert refused.returncode == 1
    assert refused.stderr.strip() == (
        f"error: user 'bob' may not approve access request '{name}': not listed in the "
        f"approvers of CapabilityGrant 'payer' and not allowed verb 'approve' on "
        f"capabilitygrants 'payer' in namespace '{namespace}'; ask an admin to add you to "
        "spec.approvers of that grant"
    )
    approved = dev_stack.plugin("approve", name, "-n", namespace, user="alice")
    assert approved.stdout.strip() == f"accessrequest {namespace}/{name} approved by alice"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def stop_with_sigterm(process: subprocess.Popen[str]) -> tuple[int, str]:
    process.send_signal(signal.SIGTERM)
    try:
        _, stderr = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
    return process.returncode, stderr


def test_token_service_command_serves_until_sigterm(dev_stack: Stack) -> None:
    """``agentauth token-service`` with flags only, as its ServiceAccount: ready, then exit 0."""
    directory = dev_stack.stack.directory
    port = free_port()
    process = subprocess.Popen(
        [
            str(BIN / "agentauth"),
            "token-service",
            f"--issuer=https://127.0.0.1:{port}",
            "--listen-host=127.0.0.1",
            f"--listen-port={port}",
            f"--tls-cert={directory / 'token-service.crt'}",
            f"--tls-key={directory / 'token-service.key'}",
            f"--kubeconfig={directory / 'agentauth-token-service.kubeconfig'}",
            f"--cluster-issuer={dev_stack.cluster.issuer}",
            "--controller-namespace=agentauth-system",
            "--log-format=text",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:

        def ready() -> bool:
            if process.poll() is not None:
                raise AssertionError(f"token-service exited: {process.communicate()}")
            try:
                url = f"https://127.0.0.1:{port}/readyz"
                return dev_stack.http.get(url, timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        wait_for(ready, timeout=60, message="agentauth token-service /readyz")
        metadata = dev_stack.http.get(
            f"https://127.0.0.1:{port}/.well-known/oauth-authorization-server"
        ).json()
        assert metadata["token_endpoint"] == f"https://127.0.0.1:{port}/oauth2/token"
    finally:
        code, stderr = stop_with_sigterm(process)
    assert code == 0, stderr
    assert not port_open(port)


def test_controller_command_runs_until_sigterm(dev_stack: Stack) -> None:
    """``agentauth controller`` from the environment (as in the chart), watching one namespace:
    it creates its issuer keys there, and SIGTERM (Kopf's own handler) stops it with exit 0."""
    namespace = dev_stack.new_namespace("ctl")
    environment = {
        **dev_stack.env,
        "AGENTAUTH_ISSUER": "https://issuer.agentauth.test",
        "AGENTAUTH_CONTROLLER_NAMESPACE": namespace,
        "AGENTAUTH_WATCH_NAMESPACES": namespace,
        "AGENTAUTH_WEBHOOK_HOST": "127.0.0.1",
        "AGENTAUTH_WEBHOOK_PORT": "0",
        "AGENTAUTH_HEALTH_PORT": "0",
        # Not the dev stack's configurations: this controller must not touch their caBundle.
        "AGENTAUTH_MUTATING_WEBHOOK_CONFIGURATION": f"{namespace}-absent",
        "AGENTAUTH_VALIDATING_WEBHOOK_CONFIGURATION": f"{namespace}-absent",
    }
    process = subprocess.Popen(
        [str(BIN / "agentauth"), "controller"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=environment,
    )
    try:

        def keys_created() -> bool:
            if process.poll() is not None:
                raise AssertionError(f"controller exited: {process.communicate()}")
            found = dev_stack.admin(
                "get", "secret", "agentauth-issuer-keys", "-n", namespace, check=False
            )
            return found.returncode == 0

        wait_for(keys_created, timeout=60, message="the controller's issuer keys")
    finally:
        code, stderr = stop_with_sigterm(process)
    assert code == 0, stderr
