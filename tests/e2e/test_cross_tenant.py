"""Cross-tenant attacks from a namespace admin, through the real stack (issue 14, findings 1, 2,
3, 9 and 14, and what an attacker would try next to them).

The foothold is ``bob``, who administers only his own namespace (a Role there with every verb
but ``approve`` on agentauth's kinds, ServiceAccounts and pods). He acts with real kubectl; the
agents act over HTTPS against the real token service; the controller and its admission webhooks
run as in a cluster (:class:`tests.e2e.jitkit.JitEnv`), here with a cluster-admin claim policy
and loopback AWS STS / Google endpoints. ``alice`` approves with ``kubectl agentauth``.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import subprocess
import time
import urllib.parse
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import botocore.session
import httpx
import pytest
import yaml
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric import ed25519
from kubernetes import client

from agentauth.devcluster import server
from agentauth.domain import claimpolicy, signatures
from agentauth.domain.federation import gcp as gcp_federation
from agentauth.sdk import aws as sdk_aws
from agentauth.verify import JwksCache, ResourceVerifier
from agentauth.verify import aiohttp as verify_aiohttp
from tests import stack
from tests.domain.federation.loopback_clouds import (
    AwsPrincipal,
    LoopbackGoogle,
    LoopbackSts,
    google_id_token,
    make_google_key,
    serving,
)
from tests.e2e import jitkit
from tests.sdk.loopback import ServerThread

pytestmark = pytest.mark.slow

GROUP, VERSION = jitkit.GROUP, jitkit.VERSION
AWS_ACCOUNT = "111122223333"
VICTIM_ROLE = f"arn:aws:iam::{AWS_ACCOUNT}:role/team-a-reader"
VICTIM_PRINCIPAL = AwsPrincipal(
    access_key_id="ASIAVICTIMROLE00001",
    secret_access_key="victim-secret-for-tests-only",
    arn=f"arn:aws:sts::{AWS_ACCOUNT}:assumed-role/team-a-reader/i-0abc",
    account=AWS_ACCOUNT,
)
VICTIM_SERVICE_ACCOUNT = "reader@team-a-prod.iam.gserviceaccount.com"
Kubectl = Callable[..., subprocess.CompletedProcess[str]]


class Tenants:
    """The victim's namespace (created by the admin) and bob's, with their names."""

    def __init__(self) -> None:
        suffix = uuid.uuid4().hex[:6]
        self.victim = f"team-a-{suffix}"
        self.bob = f"bob-{suffix}"

    def policy(self) -> claimpolicy.ClaimPolicy:
        """The cluster admin's decision: team-a may claim its roles and service accounts; bob's
        namespace may claim its own (none of team-a's)."""
        return claimpolicy.parse(
            json.dumps(
                [
                    {
                        "namespaces": [self.victim],
                        "aws": {"roleArns": [f"arn:aws:iam::{AWS_ACCOUNT}:role/team-a-*"]},
                        "gcp": {"serviceAccounts": ["*@team-a-prod.iam.gserviceaccount.com"]},
                    },
                    {
                        "namespaces": [self.bob],
                        "aws": {"roleArns": ["arn:aws:iam::999999999999:role/bob-*"]},
                    },
                ]
            )
        )


class CrossTenantEnv(jitkit.JitEnv):
    """The controller and token service with the claim policy and loopback clouds."""

    def __init__(
        self,
        cluster: server.DevCluster,
        api: client.ApiClient,
        *,
        policy: claimpolicy.ClaimPolicy,
        sts_url: str,
        certs_url: str,
    ) -> None:
        super().__init__(cluster, api)
        self.policy, self.sts_url, self.certs_url = policy, sts_url, certs_url

    def controller_settings(self) -> Any:
        return dataclasses.replace(super().controller_settings(), claim_policy=self.policy)

    def token_service_settings(self) -> Any:
        return dataclasses.replace(
            super().token_service_settings(),
            claim_policy=self.policy,
            aws_sts_test_endpoint=self.sts_url,
            gcp_certs_url=self.certs_url,
        )


@pytest.fixture(scope="module")
def tenants() -> Tenants:
    return Tenants()


@pytest.fixture(scope="module")
def sts() -> Iterator[LoopbackSts]:
    loopback = LoopbackSts()
    loopback.add(VICTIM_PRINCIPAL)
    with serving(loopback.server):
        yield loopback


@pytest.fixture(scope="module")
def google() -> Iterator[LoopbackGoogle]:
    loopback = LoopbackGoogle(make_google_key("k1"))
    with serving(loopback.server):
        yield loopback


@pytest.fixture(scope="module")
def env(
    dev_cluster: server.DevCluster,
    kube_api: client.ApiClient,
    tenants: Tenants,
    sts: LoopbackSts,
    google: LoopbackGoogle,
) -> Iterator[CrossTenantEnv]:
    environment = CrossTenantEnv(
        dev_cluster,
        kube_api,
        policy=tenants.policy(),
        sts_url=sts.url,
        certs_url=google.certs_url,
    )
    environment.start()
    for namespace in (tenants.victim, tenants.bob):
        environment.ensure_namespace(namespace)
    make_namespace_admin(kube_api, tenants.bob, user="bob")
    yield environment
    environment.stop()


@pytest.fixture(scope="module")
def kubectl(dev_cluster: server.DevCluster) -> Kubectl:
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


@pytest.fixture(scope="module")
def resources() -> Iterator[ServerThread]:
    thread = ServerThread()
    yield thread
    thread.close()


def make_namespace_admin(api: client.ApiClient, namespace: str, *, user: str) -> None:
    """What a namespace admin holds: everything in the namespace but the custom verb approve."""
    verbs = ["get", "list", "watch", "create", "update", "patch", "delete", "deletecollection"]
    rbac = client.RbacAuthorizationV1Api(api)
    rbac.create_namespaced_role(
        namespace,
        {
            "metadata": {"name": "namespace-admin"},
            "rules": [
                {"apiGroups": [GROUP], "resources": ["*"], "verbs": verbs},
                {
                    "apiGroups": [""],
                    "resources": ["serviceaccounts", "pods", "events"],
                    "verbs": verbs,
                },
            ],
        },
    )
    rbac.create_namespaced_role_binding(
        namespace,
        {
            "metadata": {"name": "namespace-admin"},
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "Role",
                "name": "namespace-admin",
            },
            "subjects": [{"kind": "User", "apiGroup": "rbac.authorization.k8s.io", "name": user}],
        },
    )


def ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, f"{result.args}\n{result.stdout}\n{result.stderr}"
    return result.stdout


def refused(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode != 0, f"{result.args}\n{result.stdout}\n{result.stderr}"
    return result.stderr


def apply_as(kubectl: Kubectl, user: str, namespace: str, *objects: dict[str, Any]) -> None:
    ok(
        kubectl(
            "apply", "-n", namespace, "-f", "-", context=user, stdin=yaml.safe_dump_all(objects)
        )
    )


def get(kubectl: Kubectl, kind: str, name: str, namespace: str) -> dict[str, Any]:
    found: dict[str, Any] = json.loads(
        ok(kubectl("get", kind, name, "-n", namespace, "-o", "json"))
    )
    return found


def condition(obj: dict[str, Any], kind: str) -> tuple[str, str, str] | None:
    for item in (obj.get("status") or {}).get("conditions") or []:
        if item["type"] == kind:
            return item["status"], item["reason"], item["message"]
    return None


def ready(kubectl: Kubectl, name: str, namespace: str) -> tuple[str, str, str]:
    """The Ready condition of ToolServer ``name`` (empty strings while there is none)."""
    return condition(get(kubectl, "toolserver", name, namespace), "Ready") or ("", "", "")


def events(kubectl: Kubectl, namespace: str, *, kind: str, name: str) -> list[dict[str, Any]]:
    listed = json.loads(ok(kubectl("get", "events", "-n", namespace, "-o", "json")))["items"]
    return [
        e
        for e in listed
        if e["involvedObject"]["kind"] == kind and e["involvedObject"]["name"] == name
    ]


def agent_with_pod(
    kubectl: Kubectl,
    *,
    user: str,
    namespace: str,
    name: str,
    capabilities: list[dict[str, Any]],
    approvers: dict[str, Any] | None = None,
) -> None:
    """ServiceAccount, Agent, grant and a labelled pod, created by ``user`` with kubectl."""
    grant: dict[str, Any] = {"agents": {"names": [name]}, "capabilities": capabilities}
    if approvers is not None:
        grant["approvers"] = approvers
    apply_as(
        kubectl,
        user,
        namespace,
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": name}},
        agent_manifest(name),
        grant_manifest(name, grant),
    )
    ok(
        kubectl(
            "create",
            "-n",
            namespace,
            "-f",
            "-",
            context=user,
            stdin=json.dumps(
                {
                    "apiVersion": "v1",
                    "kind": "Pod",
                    "metadata": {"name": f"{name}-0", "labels": {"agentauth.dev/agent": name}},
                    "spec": {
                        "serviceAccountName": name,
                        "containers": [{"name": "agent", "image": "example.test/agent:1"}],
                    },
                }
            ),
        )
    )


def agent_manifest(name: str, **spec: Any) -> dict[str, Any]:
    """An Agent acting through ServiceAccount ``name`` unless ``spec`` says otherwise (a
    ``None`` value leaves the field out)."""
    merged = {"serviceAccountName": name, **spec}
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "Agent",
        "metadata": {"name": name},
        "spec": {key: value for key, value in merged.items() if value is not None},
    }


def grant_manifest(name: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "CapabilityGrant",
        "metadata": {"name": name},
        "spec": spec,
    }


def tool_server_manifest(name: str, uri: str) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "ToolServer",
        "metadata": {"name": name},
        "spec": {"resourceURI": uri, "tools": [{"name": "read", "capability": "document.read"}]},
    }


class Pod:
    """An agent pod's side: its projected token, exchanged at the token service over HTTPS."""

    def __init__(self, env: jitkit.JitEnv, namespace: str, agent: str) -> None:
        self.env = env
        self.token = stack.request_token(
            env.api, namespace=namespace, account=agent, audience=env.issuer, pod=f"{agent}-0"
        )

    def exchange(self, **form: str) -> httpx.Response:
        return httpx.post(
            f"{self.env.issuer}/oauth2/token",
            data=stack.exchange_form(self.token, **form),
            timeout=10,
            verify=self.env.tls,
        )

    def file(self, body: dict[str, Any]) -> httpx.Response:
        token = self.exchange(scope="document.read").json()["access_token"]
        return httpx.post(
            f"{self.env.issuer}/v1/access-requests",
            json=body,
            headers={"Authorization": f"Bearer {token}"},
            timeout=10,
            verify=self.env.tls,
        )


def error_of(response: httpx.Response) -> tuple[int, str, str]:
    body = response.json()
    return response.status_code, body.get("error", ""), body.get("error_description", "")


# -- finding 1: resource URIs belong to one ToolServer -----------------------------------------


def serve_resource(
    resources: ServerThread, env: jitkit.JitEnv, *, audience: str, tool_server: str
) -> str:
    """A resource server as its owner runs it: agentauth.verify with its own ToolServer."""
    verifier = ResourceVerifier(
        issuer=env.issuer,
        audience=audience,
        tool_server=tool_server,
        jwks=JwksCache(jwks_url=f"{env.issuer}/jwks", ca_file=env.ca),
    )

    async def document(request: web.Request) -> web.Response:
        principal = verify_aiohttp.principal_of(request)
        return web.json_response({"agent": f"{principal.agent.namespace}/{principal.agent.name}"})

    app = web.Application(
        middlewares=[verify_aiohttp.middleware(verifier, requirements=lambda _: ["document.read"])]
    )
    app.router.add_get("/documents/{id}", document)
    return resources.serve_aiohttp(app)


def test_a_squatter_first_gets_a_token_the_owner_s_resource_server_refuses(
    env: jitkit.JitEnv, kubectl: Kubectl, tenants: Tenants, resources: ServerThread
) -> None:
    """bob creates a ToolServer with team-a's URI *before* team-a does: the token he obtains
    names his ToolServer, and team-a's resource server refuses it. Once team-a's ToolServer
    exists the URI is contested: both report it and nobody gets tokens for it; when bob's is
    deleted team-a's works."""
    uri = f"https://docs.{tenants.victim}.example/mcp"
    # The owner writes the same URI differently; it is the same resource all the same.
    read = [{"name": "document.read"}]
    agent_with_pod(kubectl, user="bob", namespace=tenants.bob, name="squat", capabilities=read)
    apply_as(kubectl, "bob", tenants.bob, tool_server_manifest("docs", uri))
    squatter = Pod(env, tenants.bob, "squat")
    jitkit.wait_for(
        lambda: squatter.exchange(audience=uri).status_code == 200,
        timeout=30,
        message="the squatter's token for the (not yet owned) URI",
    )
    stolen = squatter.exchange(audience=uri).json()["access_token"]
    owner_server = serve_resource(
        resources, env, audience=uri, tool_server=f"{tenants.victim}/docs"
    )
    answer = httpx.get(
        f"{owner_server}/documents/1", headers={"Authorization": f"Bearer {stolen}"}, timeout=10
    )
    assert (answer.status_code, answer.json()) == (
        401,
        {
            "error": "invalid_token",
            "error_description": f"the token was issued for ToolServer {tenants.bob}/docs, not "
            f"for this resource's ToolServer {tenants.victim}/docs",
        },
    )

    # The owner arrives: contested on both sides. bob then writes the URI differently (host
    # case, default port, trailing slash): the same resource, still contested.
    agent_with_pod(
        kubectl, user="admin", namespace=tenants.victim, name="reader", capabilities=read
    )
    apply_as(kubectl, "admin", tenants.victim, tool_server_manifest("docs", uri))
    jitkit.wait_for(
        lambda: ready(kubectl, "docs", tenants.bob)[1] == "ResourceURIContested",
        timeout=30,
        message="bob's ToolServer contested",
    )
    variant = f"https://DOCS.{tenants.victim}.example:443/mcp/"
    apply_as(kubectl, "bob", tenants.bob, tool_server_manifest("docs", variant))
    for namespace, other in ((tenants.victim, tenants.bob), (tenants.bob, tenants.victim)):
        jitkit.wait_for(
            lambda namespace=namespace: (
                ready(kubectl, "docs", namespace)[1] == "ResourceURIContested"
            ),
            timeout=30,
            message=f"the ToolServer in {namespace} reports the contest",
        )
        status, _, message = ready(kubectl, "docs", namespace)
        assert status == "False"
        assert f"is also claimed by ToolServer {other}/docs; no tokens are issued" in message
        warnings = [
            e
            for e in events(kubectl, namespace, kind="ToolServer", name="docs")
            if e["reason"] == "ResourceURIContested"
        ]
        assert [e["type"] for e in warnings] == ["Warning"]
    owner = Pod(env, tenants.victim, "reader")
    jitkit.wait_for(
        lambda: owner.exchange().status_code == 200, timeout=30, message="the owner's agent token"
    )
    for pod, namespace in ((squatter, tenants.bob), (owner, tenants.victim)):
        assert error_of(pod.exchange(audience=uri)) == (
            400,
            "invalid_target",
            f"resource URI {uri} is claimed by 2 ToolServers; no token is issued for it while it "
            f"is contested (see the Ready condition of the ToolServers in namespace {namespace})",
        )

    # bob's squat goes away: the contest ends on the owner's side and its token works there.
    ok(kubectl("delete", "toolserver", "docs", "-n", tenants.bob, context="bob"))
    jitkit.wait_for(
        lambda: ready(kubectl, "docs", tenants.victim)[0] == "True",
        timeout=30,
        message="the owner's ToolServer Ready again",
    )
    response = owner.exchange(audience=uri)
    assert response.status_code == 200, response.text
    token = response.json()["access_token"]
    claims = claims_of(token)
    owned = get(kubectl, "toolserver", "docs", tenants.victim)
    assert claims["tool_server"] == {
        "namespace": tenants.victim,
        "name": "docs",
        "uid": owned["metadata"]["uid"],
    }
    answer = httpx.get(
        f"{owner_server}/documents/1", headers={"Authorization": f"Bearer {token}"}, timeout=10
    )
    assert (answer.status_code, answer.json()) == (200, {"agent": f"{tenants.victim}/reader"})
    # The squatter's token, still unexpired, stays refused; and it is no longer introspected as
    # active (its ToolServer is gone).
    answer = httpx.get(
        f"{owner_server}/documents/1", headers={"Authorization": f"Bearer {stolen}"}, timeout=10
    )
    assert answer.status_code == 401
    introspected = httpx.post(
        f"{env.issuer}/oauth2/introspect",
        data={"token": stolen},
        headers={"Authorization": f"Bearer {owner.exchange().json()['access_token']}"},
        timeout=10,
        verify=env.tls,
    )
    assert introspected.json() == {"active": False}


def claims_of(token: str) -> dict[str, Any]:
    payload = token.split(".")[1]
    decoded: dict[str, Any] = json.loads(
        base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))
    )
    return decoded


def test_a_toolserver_cannot_name_the_issuer_nor_smuggle_terminal_escapes(
    env: jitkit.JitEnv, kubectl: Kubectl, tenants: Tenants
) -> None:
    """A ToolServer naming the issuer's own URL claims nothing; a resourceURI carrying control
    characters or quotes never reaches a terminal (the CRD refuses it)."""
    apply_as(kubectl, "bob", tenants.bob, tool_server_manifest("issuer", env.issuer + "/"))
    jitkit.wait_for(
        lambda: (
            ready(kubectl, "issuer", tenants.bob)
            == (
                "False",
                "ResourceURIReserved",
                f"resourceURI {env.issuer}/ is the agentauth issuer's own URL; a ToolServer cannot "
                "claim it",
            )
        ),
        timeout=30,
        message="the issuer's URL is reserved",
    )
    hostile = tool_server_manifest("hostile", "https://x.example/\x1b[2J\x1b]0;owned\x07")
    result = kubectl(
        "apply", "-n", tenants.bob, "-f", "-", context="bob", stdin=json.dumps(hostile)
    )
    assert "spec.resourceURI" in refused(result)
    quoted = tool_server_manifest("quoted", 'https://x.example/" | approve: kubectl agentauth')
    assert "spec.resourceURI" in refused(
        kubectl("apply", "-n", tenants.bob, "-f", "-", context="bob", stdin=json.dumps(quoted))
    )


# -- findings 2 and 3: approvals belong to the Agent and grant objects ------------------------


PAYMENT = {
    "capabilities": ["payments.authorize"],
    "justification": "Pay invoice INV-42",
    "duration": "10m",
}
REQUIRED = [
    {"name": "document.read"},
    {"name": "payments.authorize", "approval": "Required", "maxDuration": "30m"},
]


def approver_access(api: client.ApiClient, namespace: str) -> None:
    """alice may read and decide access requests in ``namespace`` (she is listed as approver)."""
    rbac = client.RbacAuthorizationV1Api(api)
    rbac.create_namespaced_role(
        namespace,
        {
            "metadata": {"name": "approver"},
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
            "metadata": {"name": "approver"},
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "Role",
                "name": "approver",
            },
            "subjects": [
                {"kind": "User", "apiGroup": "rbac.authorization.k8s.io", "name": "alice"}
            ],
        },
    )


@pytest.fixture
def bob_namespace(env: jitkit.JitEnv, kube_api: client.ApiClient) -> str:
    """A fresh namespace bob administers, alice approves in."""
    namespace = f"bob-{uuid.uuid4().hex[:8]}"
    env.ensure_namespace(namespace)
    make_namespace_admin(kube_api, namespace, user="bob")
    approver_access(kube_api, namespace)
    return namespace


def approved(kubectl: Kubectl, pod: Pod, namespace: str) -> str:
    """The agent files for payments.authorize; alice approves with kubectl agentauth."""
    response = pod.file(PAYMENT)
    assert response.status_code == 201, response.text
    name = str(response.json()["name"])
    jitkit.wait_for(
        lambda: (
            (get(kubectl, "accessrequest", name, namespace).get("status") or {}).get("phase")
            == "Pending"
        ),
        message=f"{name} Pending",
    )
    ok(kubectl("agentauth", "approve", name, "-n", namespace, "--context", "alice", context=None))
    jitkit.wait_for(
        lambda: get(kubectl, "accessrequest", name, namespace)["status"]["phase"] == "Approved",
        message=f"{name} Approved",
    )
    jitkit.wait_for(
        lambda: pod.exchange(scope="payments.authorize").status_code == 200,
        message="the approved capability in a token",
    )
    return name


def test_an_agent_re_created_under_its_name_inherits_no_approval(
    env: jitkit.JitEnv, kubectl: Kubectl, kube_api: client.ApiClient, bob_namespace: str
) -> None:
    """Approve, then bob orphan-deletes the Agent and creates it again at once (``kubectl replace
    --force --cascade=orphan``, the same second): the new Agent holds no approved capability."""
    namespace = bob_namespace
    agent_with_pod(
        kubectl,
        user="bob",
        namespace=namespace,
        name="buyer",
        capabilities=REQUIRED,
        approvers={"users": ["alice"]},
    )
    pod = Pod(env, namespace, "buyer")
    jitkit.wait_for(lambda: pod.exchange().status_code == 200, message="agent token")
    name = approved(kubectl, pod, namespace)
    old_uid = get(kubectl, "agent", "buyer", namespace)["metadata"]["uid"]
    ok(
        kubectl(
            "replace",
            "--force",
            "--cascade=orphan",
            "-n",
            namespace,
            "-f",
            "-",
            context="bob",
            stdin=json.dumps(agent_manifest("buyer")),
        )
    )
    new = get(kubectl, "agent", "buyer", namespace)
    assert new["metadata"]["uid"] != old_uid
    jitkit.wait_for(
        lambda: (
            claims_of(pod.exchange().json()["access_token"])["agent"]["uid"]
            == new["metadata"]["uid"]
        ),
        message="the token service sees the new Agent",
    )
    assert error_of(pod.exchange(scope="payments.authorize")) == (
        400,
        "invalid_scope",
        f"capability payments.authorize requires approval: file an AccessRequest for agent "
        f"{namespace}/buyer",
    )
    assert "payments.authorize" not in pod.exchange().json()["scope"].split()
    request = get(kubectl, "accessrequest", name, namespace)
    assert "ownerReferences" not in request["metadata"]  # orphaned: no owner left to go by
    assert request["spec"]["agentUID"] == old_uid
    # The controller ends the request for good, and says why.
    until = request["status"]["grantedUntil"]
    withdrawn = (
        "False",
        "ApprovalWithdrawn",
        f"access withdrawn before {until}: the approvals no longer hold (the Agent or a "
        "CapabilityGrant was deleted or re-created, or the grant's approvers changed)",
    )
    jitkit.wait_for(
        lambda: condition(get(kubectl, "accessrequest", name, namespace), "Granted") == withdrawn,
        timeout=30,
        message="the request withdrawn",
    )
    assert get(kubectl, "accessrequest", name, namespace)["status"]["phase"] == "Expired"


def test_a_request_of_the_predecessor_cannot_be_approved_for_the_successor(
    env: jitkit.JitEnv, kubectl: Kubectl, bob_namespace: str
) -> None:
    """File, re-create the Agent within the same second, then approve: the approval is refused
    (the request belongs to the Agent object it was filed for), and nothing is granted."""
    namespace = bob_namespace
    agent_with_pod(
        kubectl,
        user="bob",
        namespace=namespace,
        name="buyer",
        capabilities=REQUIRED,
        approvers={"users": ["alice"]},
    )
    pod = Pod(env, namespace, "buyer")
    jitkit.wait_for(lambda: pod.exchange().status_code == 200, message="agent token")
    token = pod.exchange(scope="document.read").json()["access_token"]
    # Start at the beginning of a second: filing and re-creating then share their timestamp.
    jitkit.wait_for(
        lambda: time.time() % 1 < 0.05, timeout=2, interval=0.005, message="a new second"
    )
    filed = httpx.post(
        f"{env.issuer}/v1/access-requests",
        json=PAYMENT,
        headers={"Authorization": f"Bearer {token}"},
        timeout=10,
        verify=env.tls,
    )
    assert filed.status_code == 201, filed.text
    ok(
        kubectl(
            "replace",
            "--force",
            "--cascade=orphan",
            "-n",
            namespace,
            "-f",
            "-",
            context="bob",
            stdin=json.dumps(agent_manifest("buyer")),
        )
    )
    name = filed.json()["name"]
    result = kubectl(
        "agentauth", "approve", name, "-n", namespace, "--context", "alice", context=None
    )
    assert "was filed for an earlier Agent 'buyer'" in refused(result)
    request = get(kubectl, "accessrequest", name, namespace)
    agent = get(kubectl, "agent", "buyer", namespace)
    assert request["spec"]["agentUID"] != agent["metadata"]["uid"]
    jitkit.wait_for(
        lambda: (
            (condition(get(kubectl, "accessrequest", name, namespace), "Granted") or ("", ""))[1]
            == "NoLongerGrantable"
        ),
        timeout=30,
        message="the request says it can no longer be granted",
    )
    assert error_of(pod.exchange(scope="payments.authorize"))[:2] == (400, "invalid_scope")
    # Nor can bob file one by hand for the predecessor, or for someone else's Agent object.
    for forged in (request["spec"]["agentUID"], "uid-of-anything"):
        by_hand = {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": "AccessRequest",
            "metadata": {"generateName": "hand-"},
            "spec": {"agent": "buyer", "agentUID": forged, **PAYMENT},
        }
        message = refused(
            kubectl("create", "-n", namespace, "-f", "-", context="bob", stdin=json.dumps(by_hand))
        )
        assert (
            f"spec.agentUID names the Agent object the request is filed for; it must be "
            f"'{agent['metadata']['uid']}', the UID of agent 'buyer' now"
        ) in message


@pytest.mark.parametrize("change", ["re-created", "approvers-changed"])
def test_a_grant_deleted_or_changed_voids_the_approvals_given_under_it(
    env: jitkit.JitEnv, kubectl: Kubectl, bob_namespace: str, change: str
) -> None:
    """Approve; then the grant is deleted and created again with stricter approvers and a
    higher quorum (or its approvers are edited in place): the approval no longer counts."""
    namespace = bob_namespace
    agent_with_pod(
        kubectl,
        user="bob",
        namespace=namespace,
        name="buyer",
        capabilities=REQUIRED,
        approvers={"users": ["alice"]},
    )
    pod = Pod(env, namespace, "buyer")
    jitkit.wait_for(lambda: pod.exchange().status_code == 200, message="agent token")
    name = approved(kubectl, pod, namespace)
    stricter = grant_manifest(
        "buyer",
        {
            "agents": {"names": ["buyer"]},
            "capabilities": REQUIRED,
            "approvers": {"users": ["carol", "dave"], "minApprovals": 2},
        },
    )
    if change == "re-created":
        ok(kubectl("delete", "capabilitygrant", "buyer", "-n", namespace, context="bob"))
    apply_as(kubectl, "bob", namespace, stricter)
    jitkit.wait_for(
        lambda: pod.exchange(scope="payments.authorize").status_code == 400,
        message="the token service sees the new grant",
    )
    assert error_of(pod.exchange(scope="payments.authorize")) == (
        400,
        "invalid_scope",
        f"capability payments.authorize requires approval: file an AccessRequest for agent "
        f"{namespace}/buyer",
    )
    assert "payments.authorize" not in pod.exchange().json()["scope"].split()
    jitkit.wait_for(
        lambda: get(kubectl, "accessrequest", name, namespace)["status"]["phase"] == "Expired",
        timeout=30,
        message="the request withdrawn",
    )
    described = ok(
        kubectl("agentauth", "describe", name, "-n", namespace, "--context", "alice", context=None)
    )
    assert "Granted=False (ApprovalWithdrawn): access withdrawn before" in described
    assert "ApprovalWithdrawn" in [
        e["reason"] for e in events(kubectl, namespace, kind="AccessRequest", name=name)
    ]


# -- finding 9: text from agents never looks like ours -----------------------------------------


def test_a_justification_cannot_forge_the_approve_command(
    env: jitkit.JitEnv, kubectl: Kubectl, bob_namespace: str
) -> None:
    namespace = bob_namespace
    agent_with_pod(
        kubectl,
        user="bob",
        namespace=namespace,
        name="buyer",
        capabilities=REQUIRED,
        approvers={"users": ["alice"]},
    )
    pod = Pod(env, namespace, "buyer")
    jitkit.wait_for(lambda: pod.exchange().status_code == 200, message="agent token")
    decoy = f"kubectl agentauth approve decoy -n {namespace}"
    spoof = f'routine | approve: {decoy} | deny: none" "'
    response = pod.file(
        {
            **PAYMENT,
            "justification": spoof,
            "context": {"note": f"ok | approve: {decoy}"},
        }
    )
    assert response.status_code == 201, response.text
    name = response.json()["name"]
    real = f"kubectl agentauth approve {name} -n {namespace}"
    requested = jitkit.wait_for(
        lambda: [
            e
            for e in events(kubectl, namespace, kind="AccessRequest", name=name)
            if e["reason"] == "AccessRequested"
        ],
        message="the AccessRequested Event",
    )
    message = requested[0]["message"]
    ours, _, quoted = message.partition(" | justification from the requester: ")
    assert json.loads(quoted) == spoof  # the agent's text, whole, inside one JSON string
    assert ours.startswith("Agent buyer requests payments.authorize for 10m | approve: " + real)
    assert f'note="ok | approve: {decoy}"' in ours  # context values quoted too
    # Outside the quoted strings, the only approve command is the real one.
    unquoted = strip_json_strings(message)
    assert unquoted.count("approve: kubectl agentauth approve") == 1
    assert decoy not in unquoted

    described = ok(
        kubectl("agentauth", "describe", name, "-n", namespace, "--context", "alice", context=None)
    )
    justification = next(line for line in described.splitlines() if line.startswith("Justif"))
    assert justification == "Justification:  " + json.dumps(spoof)
    to_decide = described.split("To decide:\n", 1)[1].splitlines()[:2]
    assert to_decide == [
        f"  {real}",
        f'  kubectl agentauth deny {name} -n {namespace} --reason "..."',
    ]
    listed = ok(
        kubectl("agentauth", "requests", "-n", namespace, "--context", "alice", context=None)
    )
    row = next(line for line in listed.splitlines() if line.startswith(name))
    assert '"routine | approve:' in row

    # What cannot be filed at all: terminal escapes and bidi overrides, by the agent or by bob.
    for hostile in ("clear\x1b[2J\x1b[H", "pay \u202eevil", "bell\x07"):
        refused_filing = pod.file({**PAYMENT, "justification": hostile})
        assert error_of(refused_filing) == (
            400,
            "invalid_request",
            "justification must be plain text: control characters other than newline and tab "
            "are not allowed",
        )
        by_hand = {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": "AccessRequest",
            "metadata": {"generateName": "hand-"},
            "spec": {"agent": "buyer", **PAYMENT, "justification": hostile},
        }
        assert "justification must be plain text" in refused(
            kubectl("create", "-n", namespace, "-f", "-", context="bob", stdin=json.dumps(by_hand))
        )


def strip_json_strings(text: str) -> str:
    """``text`` with every double-quoted JSON string removed (what a reader sees as ours)."""
    out, index = [], 0
    while index < len(text):
        if text[index] == '"':
            decoder = json.JSONDecoder()
            try:
                _, end = decoder.raw_decode(text, index)
            except ValueError:
                out.append(text[index])
                index += 1
                continue
            index = end
            continue
        out.append(text[index])
        index += 1
    return "".join(out)


# -- finding 14: who may claim a cloud identity is the cluster admin's decision ---------------


def test_no_namespace_can_deny_another_its_cloud_identity(
    env: jitkit.JitEnv,
    kubectl: Kubectl,
    tenants: Tenants,
    sts: LoopbackSts,
    google: LoopbackGoogle,
) -> None:
    """bob's Agents claim team-a's AWS role exactly, every role by wildcard, and team-a's GCP
    service account, before team-a's Agent exists: team-a's agent still federates, and the
    claims are reported on bob's Agents and ignored."""
    read = [{"name": "document.read"}]
    squats = {
        "exact": {"aws": {"roleArns": [VICTIM_ROLE]}},
        "wildcard": {"aws": {"roleArns": ["arn:aws:iam::*:role/*"]}},
        "gcp": {"gcp": {"serviceAccounts": [VICTIM_SERVICE_ACCOUNT]}},
        "mixed": {
            "aws": {
                "roleArns": [
                    "arn:aws:iam::999999999999:role/bob-*",
                    f"arn:aws:iam::{AWS_ACCOUNT}:role/*",
                ]
            }
        },
    }
    for name, federation in squats.items():
        apply_as(
            kubectl,
            "bob",
            tenants.bob,
            agent_manifest(f"claims-{name}", serviceAccountName=None, federation=federation),
            grant_manifest(
                f"claims-{name}", {"agents": {"names": [f"claims-{name}"]}, "capabilities": read}
            ),
        )
    # team-a's Agent comes after bob's in the token service's Agent watch, so once it can
    # federate, bob's claims were there to get in the way.
    apply_as(
        kubectl,
        "admin",
        tenants.victim,
        agent_manifest(
            "cloud-reader",
            serviceAccountName=None,
            federation={
                "aws": {"roleArns": [VICTIM_ROLE]},
                "gcp": {"serviceAccounts": [VICTIM_SERVICE_ACCOUNT]},
            },
        ),
        grant_manifest(
            "cloud-reader", {"agents": {"names": ["cloud-reader"]}, "capabilities": read}
        ),
    )
    session = botocore.session.Session()
    session.set_credentials(VICTIM_PRINCIPAL.access_key_id, VICTIM_PRINCIPAL.secret_access_key)

    # Every cloud credential names the key that signs its exchange (the replay binding).
    key = ed25519.Ed25519PrivateKey.generate()
    jkt = signatures.jwk_thumbprint(signatures.public_jwk(key))

    def federate(token: str, token_type: str) -> httpx.Response:
        body = urllib.parse.urlencode(
            {
                "grant_type": stack.TOKEN_EXCHANGE,
                "subject_token": token,
                "subject_token_type": token_type,
            }
        ).encode()
        headers = {"Content-Type": "application/x-www-form-urlencoded"}
        headers.update(
            signatures.sign_request(
                method="POST",
                url=f"{env.issuer}/oauth2/token",
                headers=headers,
                body=body,
                private_key=key,
                signature_key_header=signatures.signature_key_hwk(key),
            )
        )
        return httpx.post(
            f"{env.issuer}/oauth2/token", content=body, headers=headers, timeout=15, verify=env.tls
        )

    def federate_aws() -> httpx.Response:
        signed = sdk_aws.aws_subject_token(
            issuer=env.issuer, key_thumbprint=jkt, session=session, endpoint_url=sts.url
        )
        return federate(signed, sdk_aws.SUBJECT_TOKEN_TYPE)

    last: list[str] = []

    def aws_works() -> bool:
        response = federate_aws()
        last[:] = [response.text]
        return response.status_code == 200

    jitkit.wait_for(aws_works, timeout=30, message="team-a's agent federates with AWS")
    response = federate_aws()
    assert response.status_code == 200, (response.text, last)
    assert claims_of(response.json()["access_token"])["agent"]["name"] == "cloud-reader"
    id_token = google_id_token(
        google.signing_key,
        aud=gcp_federation.bound_audience(env.issuer, jkt),
        email=VICTIM_SERVICE_ACCOUNT,
    )
    response = federate(id_token, "urn:ietf:params:oauth:token-type:id_token")
    assert response.status_code == 200, response.text
    assert claims_of(response.json()["access_token"])["agent"]["name"] == "cloud-reader"

    expected = {
        "exact": f'AWS role "{VICTIM_ROLE}"',
        "wildcard": 'AWS role "arn:aws:iam::*:role/*"',
        "gcp": f'GCP service account "{VICTIM_SERVICE_ACCOUNT}"',
        "mixed": f'AWS role "arn:aws:iam::{AWS_ACCOUNT}:role/*"',
    }
    for name, ignored in expected.items():
        agent = f"claims-{name}"
        want = (
            "False",
            "ClaimNotAllowed",
            f"ignored: {ignored}. The cluster admin's claim policy (chart value claimPolicy) does "
            f"not allow namespace {tenants.bob!r} to claim it",
        )
        jitkit.wait_for(
            lambda agent=agent, want=want: (
                condition(get(kubectl, "agent", agent, tenants.bob), "Federation") == want
            ),
            timeout=30,
            message=f"{agent} reports the refused claim",
        )
        warnings = [
            e["type"]
            for e in events(kubectl, tenants.bob, kind="Agent", name=agent)
            if e["reason"] == "ClaimNotAllowed"
        ]
        assert warnings == ["Warning"]
    jitkit.wait_for(
        lambda: (
            condition(get(kubectl, "agent", "cloud-reader", tenants.victim), "Federation")
            == (
                "True",
                "ClaimsAllowed",
                "the claim policy allows every cloud identity in spec.federation",
            )
        ),
        timeout=30,
        message="team-a's Agent is allowed its claims",
    )


def test_the_claim_policy_is_validated_before_anything_runs() -> None:
    """A malformed policy stops both components with the entry named, never half-applied."""
    from agentauth.controller import settings as controller_settings
    from agentauth.tokenservice import settings as token_settings

    bad = json.dumps([{"namespaces": ["team-a"], "aws": {"roleArns": ["role/*"]}}])
    message = (
        "the claim policy is invalid at rules[0].aws.roleArns: 'role/*' is not an IAM role ARN "
        "pattern such as arn:aws:iam::123456789012:role/team-a-*"
    )
    with pytest.raises(token_settings.SettingsError) as caught:
        token_settings.from_sources(
            environ={"AGENTAUTH_ISSUER": "https://i.test", "AGENTAUTH_CLAIM_POLICY": bad}
        )
    assert str(caught.value) == f"--claim-policy / AGENTAUTH_CLAIM_POLICY: {message}"
    with pytest.raises(controller_settings.SettingsError) as refused_controller:
        controller_settings.from_sources(
            None, environ={"AGENTAUTH_ISSUER": "https://i.test", "AGENTAUTH_CLAIM_POLICY": bad}
        )
    assert str(refused_controller.value) == f"--claim-policy / AGENTAUTH_CLAIM_POLICY: {message}"
