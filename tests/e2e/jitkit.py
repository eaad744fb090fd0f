"""Test kit for just-in-time approval: a real controller and token service on the dev cluster.

The controller and the token service run on their own threads and event loops
(:class:`tests.stack.ControllerThread`, :class:`tests.stack.TokenServiceThread`), so a test can
stop one and start a fresh one (a restart: new process state, same cluster). :class:`JitEnv`
wires the controller (with its admission webhooks registered in the API server) and the token
service together; :func:`setup_agent` creates an agent with a pod, a Required capability and
approver RBAC in a namespace; :class:`Agent` plays the agent over HTTP (exchange, file, poll).
"""

from __future__ import annotations

import base64
import datetime
import ssl
from dataclasses import dataclass
from typing import Any

import httpx
from kubernetes import client
from kubernetes.client import exceptions as k8s_exceptions

from agentauth.controller import settings as controller_settings
from agentauth.devcluster import server
from agentauth.tokenservice import settings as tokenservice_settings
from tests import stack

# The suites using this kit call these as jitkit.*; tests.stack holds the one copy.
from tests.stack import free_port as free_port
from tests.stack import user_api as user_api
from tests.stack import wait_for as wait_for

SYSTEM_NAMESPACE = "agentauth-system"
WEBHOOK_CONFIGURATION = "agentauth-jit-tests"
GROUP, VERSION = "agentauth.dev", "v1alpha1"


class JitEnv:
    """The controller and the token service, both restartable, on one dev cluster."""

    def __init__(self, cluster: server.DevCluster, api: client.ApiClient) -> None:
        self.cluster = cluster
        self.api = api
        self.token_port = free_port()
        self.webhook_port = free_port()
        # The token service serves HTTPS with the dev cluster's serving certificate (valid for
        # 127.0.0.1, signed by the dev CA), so clients verify it against the dev CA.
        self.issuer = f"https://127.0.0.1:{self.token_port}"
        self.ca = str(cluster.ca_path)
        self.tls = ssl.create_default_context(cafile=self.ca)
        self.access_request_expiry = 600.0
        self.controller: stack.ControllerThread | None = None
        self.token_service: stack.TokenServiceThread | None = None
        self.webhook_ca: bytes | None = None

    # -- components --------------------------------------------------------------------------

    def controller_settings(self) -> controller_settings.Settings:
        return controller_settings.Settings(
            issuer=self.issuer,
            token_service_url=self.issuer,
            trust_domain="example.test",
            namespace=SYSTEM_NAMESPACE,
            webhook_host="127.0.0.1",
            webhook_port=self.webhook_port,
            webhook_extra_hosts=("127.0.0.1",),
            mutating_webhook_configuration=WEBHOOK_CONFIGURATION,
            validating_webhook_configuration=WEBHOOK_CONFIGURATION,
            health_port=0,
            kubeconfig=str(self.cluster.kubeconfig_path),
            access_request_expiry=datetime.timedelta(seconds=self.access_request_expiry),
            workers=4,
        )

    def token_service_settings(self) -> tokenservice_settings.Settings:
        return tokenservice_settings.Settings(
            issuer=self.issuer,
            listen_host="127.0.0.1",
            listen_port=self.token_port,
            namespace=SYSTEM_NAMESPACE,
            kubeconfig=self.cluster.kubeconfig_path,
            cluster_issuer=self.cluster.issuer,
            log_format="text",
            tls_cert=self.cluster.directory / "server.crt",
            tls_key=self.cluster.directory / "server.key",
        )

    def start(self) -> None:
        self.ensure_namespace(SYSTEM_NAMESPACE)
        self.start_controller()
        self.start_token_service()

    def start_controller(self) -> None:
        self._run_controller()
        self.install_webhooks()

    def _run_controller(self) -> None:
        self.controller = stack.ControllerThread(self.controller_settings()).start(timeout=60)
        assert self.controller.controller is not None
        self.webhook_ca = self.controller.controller.webhook_ca

    def start_token_service(self) -> None:
        self.token_service = stack.TokenServiceThread(self.token_service_settings()).start(
            timeout=60
        )
        wait_for(self._ready, timeout=30, message="token service /readyz")

    def _ready(self) -> bool:
        try:
            return httpx.get(f"{self.issuer}/readyz", timeout=2, verify=self.tls).status_code == 200
        except httpx.HTTPError:
            return False

    def stop(self) -> None:
        try:
            if self.token_service is not None:
                self.token_service.stop()
            if self.controller is not None:
                self.controller.stop()
        finally:
            # Without its controller the webhook would refuse every AccessRequest write
            # (failurePolicy Fail): leave the cluster as we found it for other suites.
            admission = client.AdmissionregistrationV1Api(self.api)
            for delete in (
                admission.delete_mutating_webhook_configuration,
                admission.delete_validating_webhook_configuration,
            ):
                try:
                    delete(WEBHOOK_CONFIGURATION)
                except k8s_exceptions.ApiException as error:
                    if error.status != 404:
                        raise

    def restart_controller(self, *, access_request_expiry: float | None = None) -> None:
        assert self.controller is not None
        self.controller.stop()
        if access_request_expiry is not None:
            self.access_request_expiry = access_request_expiry
        self._run_controller()

    def restart_token_service(self) -> None:
        assert self.token_service is not None
        self.token_service.stop()
        self.start_token_service()

    # -- cluster objects ---------------------------------------------------------------------

    def ensure_namespace(self, name: str) -> None:
        try:
            client.CoreV1Api(self.api).create_namespace({"metadata": {"name": name}})
        except k8s_exceptions.ApiException as error:
            if error.status != 409:
                raise

    def install_webhooks(self) -> None:
        """The chart's AccessRequest webhooks, pointed at this controller's port."""
        assert self.webhook_ca is not None
        bundle = base64.b64encode(self.webhook_ca).decode()
        rules = [
            {
                "apiGroups": [GROUP],
                "apiVersions": [VERSION],
                "resources": ["accessrequests", "accessrequests/status"],
                "operations": ["CREATE", "UPDATE"],
                "scope": "Namespaced",
            }
        ]

        def webhook(path: str) -> dict[str, Any]:
            return {
                "name": "accessrequests.agentauth.dev",
                "admissionReviewVersions": ["v1"],
                "sideEffects": "None",
                "failurePolicy": "Fail",
                "timeoutSeconds": 10,
                "clientConfig": {
                    "url": f"https://127.0.0.1:{self.webhook_port}{path}",
                    "caBundle": bundle,
                },
                "rules": rules,
            }

        admission = client.AdmissionregistrationV1Api(self.api)
        mutating = {
            "metadata": {"name": WEBHOOK_CONFIGURATION},
            "webhooks": [{**webhook("/mutate/accessrequests"), "reinvocationPolicy": "Never"}],
        }
        validating = {
            "metadata": {"name": WEBHOOK_CONFIGURATION},
            "webhooks": [webhook("/validate/accessrequests")],
        }
        for create, replace, read, body in (
            (
                admission.create_mutating_webhook_configuration,
                admission.replace_mutating_webhook_configuration,
                admission.read_mutating_webhook_configuration,
                mutating,
            ),
            (
                admission.create_validating_webhook_configuration,
                admission.replace_validating_webhook_configuration,
                admission.read_validating_webhook_configuration,
                validating,
            ),
        ):
            try:
                create(body)
            except k8s_exceptions.ApiException as error:
                if error.status != 409:
                    raise
                current = read(WEBHOOK_CONFIGURATION)
                body["metadata"]["resourceVersion"] = current.metadata.resource_version
                replace(WEBHOOK_CONFIGURATION, body)


@dataclass
class AgentSetup:
    namespace: str
    agent: str
    service_account: str
    pod: str
    grant: str


def setup_agent(
    api: client.ApiClient,
    namespace: str,
    *,
    agent: str = "buyer",
    min_approvals: int = 1,
    approvers: list[str] | None = None,
    max_duration: str = "30m",
) -> AgentSetup:
    """An Agent with a ServiceAccount and a pod, a grant with a Required capability, approver RBAC.

    alice is listed as an approver; bob and the agent's own ServiceAccount get the same RBAC
    (they can reach the webhook) but are not approvers, so the webhook decides.
    """
    core = client.CoreV1Api(api)
    custom = client.CustomObjectsApi(api)
    rbac = client.RbacAuthorizationV1Api(api)
    service_account = f"{agent}-sa"
    core.create_namespaced_service_account(namespace, {"metadata": {"name": service_account}})
    custom.create_namespaced_custom_object(
        GROUP,
        VERSION,
        namespace,
        "agents",
        {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": "Agent",
            "metadata": {"name": agent},
            "spec": {"serviceAccountName": service_account, "description": "pays invoices"},
        },
    )
    grant = f"{agent}-payments"
    custom.create_namespaced_custom_object(
        GROUP,
        VERSION,
        namespace,
        "capabilitygrants",
        {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": "CapabilityGrant",
            "metadata": {"name": grant},
            "spec": {
                "agents": {"names": [agent]},
                "capabilities": [
                    {"name": "document.read"},
                    {
                        "name": "payments.authorize",
                        "approval": "Required",
                        "maxDuration": max_duration,
                    },
                ],
                "approvers": {
                    "users": approvers if approvers is not None else ["alice"],
                    "minApprovals": min_approvals,
                },
            },
        },
    )
    pod = f"{agent}-pod"
    core.create_namespaced_pod(
        namespace,
        {
            "metadata": {"name": pod, "labels": {"agentauth.dev/agent": agent}},
            "spec": {
                "serviceAccountName": service_account,
                "containers": [{"name": "agent", "image": "example.test/agent:1"}],
            },
        },
    )
    role = "agentauth-approver"
    try:
        rbac.create_namespaced_role(
            namespace,
            {
                "metadata": {"name": role},
                "rules": [
                    {
                        "apiGroups": [GROUP],
                        "resources": ["accessrequests", "agents", "capabilitygrants"],
                        "verbs": ["get", "list", "watch"],
                    },
                    {
                        "apiGroups": [GROUP],
                        "resources": ["accessrequests/status"],
                        "verbs": ["get", "update", "patch"],
                    },
                    {"apiGroups": [""], "resources": ["events"], "verbs": ["list", "watch"]},
                ],
            },
        )
        rbac.create_namespaced_role_binding(
            namespace,
            {
                "metadata": {"name": role},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": role},
                "subjects": [
                    {"kind": "User", "apiGroup": "rbac.authorization.k8s.io", "name": "alice"},
                    {"kind": "User", "apiGroup": "rbac.authorization.k8s.io", "name": "bob"},
                    {"kind": "ServiceAccount", "name": service_account, "namespace": namespace},
                ],
            },
        )
    except k8s_exceptions.ApiException as error:
        if error.status != 409:
            raise
    return AgentSetup(
        namespace=namespace, agent=agent, service_account=service_account, pod=pod, grant=grant
    )


def service_account_token(
    api: client.ApiClient,
    setup: AgentSetup,
    *,
    audience: str | None = None,
    bind_pod: bool = False,
) -> str:
    """A TokenRequest token for the agent's ServiceAccount (optionally pod-bound)."""
    return stack.request_token(
        api,
        namespace=setup.namespace,
        account=setup.service_account,
        audience=audience,
        pod=setup.pod if bind_pod else None,
    )


class AgentClient:
    """The agent's side over HTTP: exchange its pod token, file and poll access requests."""

    def __init__(self, env: JitEnv, setup: AgentSetup) -> None:
        self.env = env
        self.setup = setup
        self.pod_token = service_account_token(env.api, setup, audience=env.issuer, bind_pod=True)

    def exchange(self, *, scope: str | None = None) -> httpx.Response:
        form = stack.exchange_form(
            self.pod_token, **({"scope": scope} if scope is not None else {})
        )
        return httpx.post(
            f"{self.env.issuer}/oauth2/token", data=form, timeout=10, verify=self.env.tls
        )

    def token(self, *, scope: str | None = None) -> str:
        response = self.exchange(scope=scope)
        assert response.status_code == 200, response.text
        return str(response.json()["access_token"])

    def file(self, body: dict[str, Any], *, token: str | None = None) -> httpx.Response:
        return httpx.post(
            f"{self.env.issuer}/v1/access-requests",
            json=body,
            headers={"Authorization": f"Bearer {token or self.token(scope='document.read')}"},
            timeout=10,
            verify=self.env.tls,
        )

    # file/poll authenticate with a document.read-only token: a token carrying an approved
    # capability expires with its grant window, which would end the agent's polling with it.
    def poll(self, name: str, *, wait: float = 0, token: str | None = None) -> httpx.Response:
        return httpx.get(
            f"{self.env.issuer}/v1/access-requests/{name}",
            params={"wait": str(wait)},
            headers={"Authorization": f"Bearer {token or self.token(scope='document.read')}"},
            timeout=wait + 10,
            verify=self.env.tls,
        )

    def wait_ready(self) -> None:
        """Until the controller made the Agent Ready and the token service sees it."""
        wait_for(lambda: self.exchange().status_code == 200, timeout=20, message="agent token")
