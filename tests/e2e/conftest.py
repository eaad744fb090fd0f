"""The shared end-to-end stack: ``agentauth dev`` (in process), for every test under tests/e2e.

``dev_stack`` (session-scoped) runs one :class:`agentauth.devstack.DevStack` on a background
thread: its own embedded control plane (not the session ``dev_cluster`` other suites share, whose
tests install their own webhooks and controllers), the chart's RBAC and webhook configurations,
the controller and the token service, each authenticated as its own ServiceAccount. Tests stay
independent by working in their own namespace (:meth:`Stack.new_namespace`).

What the fixture gives (an :class:`Stack`):

- ``stack`` (the DevStack), ``cluster`` (its DevCluster), ``kubeconfig_path``, ``ca_path``,
  ``issuer``, ``token_service_url``, ``token_url``;
- ``kubectl(*args, user="admin")`` (real kubectl, this virtualenv's bin first on PATH so
  ``kubectl agentauth`` is ours) and the shorthands ``admin(...)``, ``alice(...)``, ``bob(...)``;
- ``apply(objects_or_yaml, namespace=...)``, ``get(kind, name, namespace=...)``;
- ``create_agent(namespace, name, capabilities=...)``: ServiceAccount + Agent + grant, waits
  for Ready;
- ``create_pod(namespace, name, agent=...)``: a labelled pod, created through the real webhook,
  returned as stored (mutated);
- ``projected_token(namespace, pod)``: what the kubelet would write into the pod's projected
  volume (TokenRequest bound to the pod, with the projection's audience and expiry);
- ``exchange(subject_token, **form)``: ``POST /oauth2/token`` (RFC 8693) with httpx, verifying
  TLS against the dev CA; ``decode(token)``: verify an agent token against ``/jwks``.
"""

from __future__ import annotations

import json
import ssl
import subprocess
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
import yaml

from agentauth import devstack
from agentauth.devcluster import server
from tests import stack
from tests.e2e.devprocess import DevServer

# test_dev_stack imports these from here; tests.stack holds the one copy.
from tests.stack import BIN as BIN
from tests.stack import KUBECTL as KUBECTL
from tests.stack import wait_for as wait_for

USERS = ("admin", "alice", "bob")


class Stack:
    """Helpers over a running :class:`~agentauth.devstack.DevStack` (see the module docstring)."""

    def __init__(self, running: devstack.DevStack) -> None:
        self.stack = running
        self.cluster: server.DevCluster = running.cluster
        self.kubeconfig_path: Path = running.kubeconfig_path
        self.ca_path: Path = running.ca_path
        self.issuer = running.issuer
        self.token_service_url = running.token_service_url
        self.token_url = running.token_url
        self.env = stack.plugin_environment(self.kubeconfig_path)
        trust = ssl.create_default_context(cafile=str(self.ca_path))
        self.http = httpx.Client(verify=trust, timeout=30)
        self.kube_api = stack.user_api(self.cluster, self.cluster.admin_token)
        self.api = httpx.Client(
            base_url=self.cluster.url,
            verify=trust,
            headers={"Authorization": f"Bearer {self.cluster.admin_token}"},
            timeout=30,
        )

    def close(self) -> None:
        self.http.close()
        self.api.close()
        self.kube_api.close()

    # -- kubectl --------------------------------------------------------------------------------

    def kubectl(
        self,
        *args: str,
        user: str | None = "admin",
        check: bool = True,
        input: str | None = None,
        timeout: float = 60,
    ) -> subprocess.CompletedProcess[str]:
        """Real kubectl as ``user`` (a context of the dev kubeconfig: admin, alice, bob).

        ``user=None`` adds no ``--context``: kubectl refuses flags before a plugin's name, so
        ``kubectl agentauth ...`` takes ``--context`` among its own arguments."""
        if user is not None and user not in USERS:
            raise ValueError(f"unknown user {user!r}; the dev kubeconfig has {USERS}")
        return stack.run_kubectl(
            *args,
            kubeconfig=self.kubeconfig_path,
            context=user,
            check=check,
            input=input,
            timeout=timeout,
            env=self.env,
        )

    def admin(self, *args: str, **options: Any) -> subprocess.CompletedProcess[str]:
        return self.kubectl(*args, user="admin", **options)

    def alice(self, *args: str, **options: Any) -> subprocess.CompletedProcess[str]:
        return self.kubectl(*args, user="alice", **options)

    def bob(self, *args: str, **options: Any) -> subprocess.CompletedProcess[str]:
        return self.kubectl(*args, user="bob", **options)

    # -- objects --------------------------------------------------------------------------------

    def new_namespace(self, prefix: str = "e2e") -> str:
        name = f"{prefix}-{uuid.uuid4().hex[:8]}"
        self.admin("create", "namespace", name)
        return name

    def apply(self, objects: str | Sequence[dict[str, Any]], *, namespace: str) -> None:
        text = objects if isinstance(objects, str) else yaml.safe_dump_all(list(objects))
        self.admin("apply", "-n", namespace, "-f", "-", input=text)

    def get(self, kind: str, name: str, *, namespace: str) -> dict[str, Any]:
        result: dict[str, Any] = json.loads(
            self.admin("get", kind, name, "-n", namespace, "-o", "json").stdout
        )
        return result

    def create_agent(
        self,
        namespace: str,
        name: str,
        *,
        capabilities: Sequence[dict[str, Any]] = ({"name": "document.read"},),
        approvers: dict[str, Any] | None = None,
        delegation: dict[str, Any] | None = None,
    ) -> None:
        """ServiceAccount ``name``, Agent ``name`` and grant ``name``; waits until Ready."""
        grant: dict[str, Any] = {
            "agents": {"names": [name]},
            "capabilities": list(capabilities),
        }
        if approvers is not None:
            grant["approvers"] = approvers
        spec: dict[str, Any] = {"serviceAccountName": name}
        if delegation is not None:
            spec["delegation"] = delegation
        self.apply(
            [
                {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": name}},
                {
                    "apiVersion": "agentauth.dev/v1alpha1",
                    "kind": "Agent",
                    "metadata": {"name": name},
                    "spec": spec,
                },
                {
                    "apiVersion": "agentauth.dev/v1alpha1",
                    "kind": "CapabilityGrant",
                    "metadata": {"name": name},
                    "spec": grant,
                },
            ],
            namespace=namespace,
        )
        self.admin(
            "wait", "--for=condition=Ready", f"agent/{name}", "-n", namespace, "--timeout=30s"
        )

    def create_pod(
        self, namespace: str, name: str, *, agent: str, service_account: str | None = None
    ) -> dict[str, Any]:
        """A pod labelled as ``agent``, admitted by the real webhooks; returns it as stored."""
        pod = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": name, "labels": {"agentauth.dev/agent": agent}},
            "spec": {
                "serviceAccountName": service_account or agent,
                "containers": [{"name": "agent", "image": "example.test/agent:1"}],
            },
        }
        self.admin("create", "-n", namespace, "-f", "-", input=json.dumps(pod))
        return self.get("pod", name, namespace=namespace)

    def projected_token(self, namespace: str, pod: str) -> str:
        """The token the kubelet would project into ``pod`` (its serviceAccountToken source)."""
        stored = self.get("pod", pod, namespace=namespace)
        sources = [
            source["serviceAccountToken"]
            for volume in stored["spec"].get("volumes") or []
            for source in (volume.get("projected") or {}).get("sources") or []
            if "serviceAccountToken" in source
        ]
        if not sources:
            raise AssertionError(f"pod {namespace}/{pod} has no projected service-account token")
        projection = sources[0]
        return stack.request_token(
            self.kube_api,
            namespace=namespace,
            account=stored["spec"].get("serviceAccountName") or "default",
            audience=projection["audience"],
            pod=pod,
            expiration_seconds=projection.get("expirationSeconds", 3600),
        )

    def plugin(self, *args: str, user: str, **options: Any) -> subprocess.CompletedProcess[str]:
        """``kubectl agentauth ARGS --context USER`` (the plugin of this virtualenv)."""
        return self.kubectl("agentauth", *args, "--context", user, user=None, **options)

    # -- token service -------------------------------------------------------------------------

    def exchange(self, subject_token: str, **form: str) -> httpx.Response:
        """RFC 8693 exchange of a projected token at the token service."""
        return self.http.post(self.token_url, data=stack.exchange_form(subject_token, **form))

    def decode(self, token: str, *, audience: str | None = None) -> dict[str, Any]:
        """Verify an agent token (EdDSA, our issuer's JWKS, ``iss``/``aud``/``exp``)."""
        jwks = self.http.get(f"{self.token_service_url}/jwks").json()
        kid = jwt.get_unverified_header(token)["kid"]
        key = next(k for k in jwks["keys"] if k["kid"] == kid)
        claims: dict[str, Any] = jwt.decode(
            token,
            key=jwt.PyJWK(key).key,
            algorithms=["EdDSA"],
            audience=audience or self.issuer,
            issuer=self.issuer,
            options={"require": ["iss", "aud", "exp"]},
        )
        return claims


@pytest.fixture(scope="session")
def dev_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    directory = tmp_path_factory.mktemp("devstack")
    with devstack.running_stack(devstack.Options(directory=directory)) as running:
        helpers = Stack(running)
        try:
            yield helpers
        finally:
            helpers.close()


@pytest.fixture
def servers() -> Iterator[list[DevServer]]:
    """`agentauth dev` processes a test starts (tests/e2e/devprocess.py), closed after it."""
    started: list[DevServer] = []
    yield started
    for started_server in started:
        started_server.close()
