"""AccessRequest lifecycle and admission, against the embedded control plane and a real controller.

The controller runs with its admission webhooks registered in the API server; writes are made as
admin, alice (a listed approver), bob (approver only through RBAC verb ``approve``, where a test
grants it) and the agent's own ServiceAccount, exactly as people and agents would make them.
"""

from __future__ import annotations

import datetime
import json
from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client import exceptions as k8s_exceptions

from agentauth.devcluster import server
from tests.e2e import jitkit

GROUP, VERSION, PLURAL = "agentauth.dev", "v1alpha1", "accessrequests"


@pytest.fixture(scope="module")
def env(dev_cluster: server.DevCluster, kube_api: client.ApiClient) -> Iterator[jitkit.JitEnv]:
    environment = jitkit.JitEnv(dev_cluster, kube_api)
    environment.ensure_namespace(jitkit.SYSTEM_NAMESPACE)
    environment.start_controller()
    yield environment
    environment.stop()


@pytest.fixture
def agent(env: jitkit.JitEnv, namespace: str) -> jitkit.AgentSetup:
    return jitkit.setup_agent(env.api, namespace)


@pytest.fixture(scope="module")
def users(dev_cluster: server.DevCluster) -> Iterator[dict[str, client.ApiClient]]:
    apis = {
        name: jitkit.user_api(dev_cluster, token) for name, token in dev_cluster.user_tokens.items()
    }
    yield apis
    for api in apis.values():
        api.close()


def custom(api: client.ApiClient) -> client.CustomObjectsApi:
    return client.CustomObjectsApi(api)


def create_request(api: client.ApiClient, setup: jitkit.AgentSetup, **spec: Any) -> dict[str, Any]:
    body = {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "AccessRequest",
        "metadata": {"generateName": f"{setup.agent}-"},
        "spec": {
            "agent": setup.agent,
            "capabilities": ["payments.authorize"],
            "justification": "Pay invoice INV-42",
            "duration": "10m",
            **spec,
        },
    }
    created: dict[str, Any] = custom(api).create_namespaced_custom_object(
        GROUP, VERSION, setup.namespace, PLURAL, body
    )
    return created


def read(api: client.ApiClient, setup: jitkit.AgentSetup, name: str) -> dict[str, Any]:
    obj: dict[str, Any] = custom(api).get_namespaced_custom_object(
        GROUP, VERSION, setup.namespace, PLURAL, name
    )
    return obj


def wait_phase(
    api: client.ApiClient, setup: jitkit.AgentSetup, name: str, phase: str
) -> dict[str, Any]:
    result: dict[str, Any] = jitkit.wait_for(
        lambda: (lambda obj: obj if (obj.get("status") or {}).get("phase") == phase else None)(
            read(api, setup, name)
        ),
        message=f"{name} {phase}",
    )
    return result


def decide(
    api: client.ApiClient,
    setup: jitkit.AgentSetup,
    name: str,
    *,
    field: str = "approvals",
    user: str = "",
    comment: str = "",
) -> dict[str, Any]:
    """Append one decision through the status subresource, as the plugin does (409: retry)."""
    for _attempt in range(10):
        obj = read(api, setup, name)
        status = obj.setdefault("status", {})
        status.setdefault(field, []).append(
            {"user": user, "time": "2020-01-01T00:00:00Z", "comment": comment}
        )
        try:
            result: dict[str, Any] = custom(api).replace_namespaced_custom_object_status(
                GROUP, VERSION, setup.namespace, PLURAL, name, obj
            )
        except k8s_exceptions.ApiException as error:
            if error.status == 409 and "modified" in (error.body or ""):
                continue  # the controller wrote meanwhile: re-read, as the plugin does
            raise
        return result
    raise AssertionError(f"{name} kept changing")


def refused(call: Any) -> tuple[int, str]:
    with pytest.raises(k8s_exceptions.ApiException) as caught:
        call()
    body = json.loads(caught.value.body)
    return int(caught.value.status), str(body["message"])


WEBHOOK = 'admission webhook "accessrequests.agentauth.dev" denied the request: '


def test_create_stamps_requester_goes_pending_and_posts_events(
    env: jitkit.JitEnv, agent: jitkit.AgentSetup
) -> None:
    created = create_request(
        env.api, agent, requester={"username": "alice"}, context={"invoice": "INV-42"}
    )
    name = created["metadata"]["name"]
    assert name.startswith("buyer-")
    assert created["spec"]["requester"]["username"] == "admin"
    pending = wait_phase(env.api, agent, name, "Pending")
    created_at = datetime.datetime.fromisoformat(
        created["metadata"]["creationTimestamp"].replace("Z", "+00:00")
    )
    expires = datetime.datetime.fromisoformat(pending["status"]["expiresAt"].replace("Z", "+00:00"))
    assert expires - created_at == datetime.timedelta(minutes=10)
    (condition,) = pending["status"]["conditions"]
    assert (condition["type"], condition["reason"]) == ("Granted", "AwaitingApproval")

    core = client.CoreV1Api(env.api)

    def events() -> list[Any]:
        found = core.list_namespaced_event(agent.namespace).items
        return [e for e in found if e.reason == "AccessRequested"] if len(found) >= 2 else []

    requested = jitkit.wait_for(events, message="AccessRequested events")
    by_kind = {event.involved_object.kind: event for event in requested}
    assert set(by_kind) == {"AccessRequest", "Agent"}
    message = by_kind["AccessRequest"].message
    assert message.endswith(
        '| context: invoice="INV-42" | justification from the requester: "Pay invoice INV-42"'
    )
    assert f"approve: kubectl agentauth approve {name} -n {agent.namespace}" in message
    assert by_kind["Agent"].involved_object.name == "buyer"
    assert by_kind["Agent"].message.startswith(f"{name}: Agent buyer requests payments.authorize")


def test_create_is_validated_like_the_token_service(
    env: jitkit.JitEnv, agent: jitkit.AgentSetup
) -> None:
    code, message = refused(lambda: create_request(env.api, agent, capabilities=["document.read"]))
    assert code == 400
    assert message == WEBHOOK + (
        "capability 'document.read' needs no approval: grant 'buyer-payments' gives it to agent "
        "'buyer' automatically; exchange for a token with it instead"
    )
    code, message = refused(lambda: create_request(env.api, agent, duration="2h"))
    assert message == WEBHOOK + (
        "duration 2h is longer than the 30m that grant 'buyer-payments' allows for "
        "'payments.authorize' (its maxDuration)"
    )
    code, message = refused(lambda: create_request(env.api, agent, agent="ghost"))
    assert message == WEBHOOK + f"agent 'ghost' does not exist in namespace '{agent.namespace}'"


def set_max_duration(api: client.ApiClient, setup: jitkit.AgentSetup, max_duration: str) -> None:
    grant = f"{setup.agent}-payments"
    body = custom(api).get_namespaced_custom_object(
        GROUP, VERSION, setup.namespace, "capabilitygrants", grant
    )
    body["spec"]["capabilities"][1]["maxDuration"] = max_duration
    custom(api).replace_namespaced_custom_object(
        GROUP, VERSION, setup.namespace, "capabilitygrants", grant, body
    )


def test_a_grant_changed_just_before_a_filing_counts_at_once(
    env: jitkit.JitEnv, agent: jitkit.AgentSetup
) -> None:
    """The webhook reads the grants live (parsed once per resourceVersion, through the
    controller's parse cache): each change of the same grant object counts for the next filing,
    with no wait for any cache."""
    too_long = WEBHOOK + (
        "duration 2h is longer than the 30m that grant 'buyer-payments' allows for "
        "'payments.authorize' (its maxDuration)"
    )
    assert refused(lambda: create_request(env.api, agent, duration="2h")) == (400, too_long)
    set_max_duration(env.api, agent, "3h")
    assert create_request(env.api, agent, duration="2h")["spec"]["duration"] == "2h"
    set_max_duration(env.api, agent, "30m")
    assert refused(lambda: create_request(env.api, agent, duration="2h")) == (400, too_long)


def test_spec_and_requester_are_immutable(env: jitkit.JitEnv, agent: jitkit.AgentSetup) -> None:
    name = create_request(env.api, agent)["metadata"]["name"]
    api = custom(env.api)
    code, message = refused(
        lambda: api.patch_namespaced_custom_object(
            GROUP,
            VERSION,
            agent.namespace,
            PLURAL,
            name,
            {"spec": {"requester": {"username": "alice"}}},
        )
    )
    assert (code, message) == (
        403,
        WEBHOOK
        + "spec.requester is set by agentauth from the authenticated caller and cannot be changed",
    )
    code, message = refused(
        lambda: api.patch_namespaced_custom_object(
            GROUP, VERSION, agent.namespace, PLURAL, name, {"spec": {"duration": "30m"}}
        )
    )
    assert message == WEBHOOK + (
        "an AccessRequest cannot be changed after it is filed (spec.duration); file a new request"
    )
    # Metadata (labels) may still change.
    api.patch_namespaced_custom_object(
        GROUP, VERSION, agent.namespace, PLURAL, name, {"metadata": {"labels": {"team": "a"}}}
    )


def test_approval_by_listed_user_records_authenticated_name(
    env: jitkit.JitEnv, agent: jitkit.AgentSetup, users: dict[str, client.ApiClient]
) -> None:
    name = create_request(env.api, agent)["metadata"]["name"]
    wait_phase(env.api, agent, name, "Pending")
    result = decide(users["alice"], agent, name, comment="ok")
    (approval,) = result["status"]["approvals"]
    assert approval["user"] == "alice"
    assert approval["time"] != "2020-01-01T00:00:00Z"
    approved = wait_phase(env.api, agent, name, "Approved")
    granted = datetime.datetime.fromisoformat(
        approved["status"]["grantedUntil"].replace("Z", "+00:00")
    )
    decided = datetime.datetime.fromisoformat(approval["time"].replace("Z", "+00:00"))
    assert granted - decided == datetime.timedelta(minutes=10)
    code, message = refused(lambda: decide(users["alice"], agent, name))
    assert (code, message) == (
        409,
        WEBHOOK + f"access request {name!r} is Approved; only Pending requests can be approved or "
        "denied",
    )


def test_forged_decisions_are_refused(
    env: jitkit.JitEnv, agent: jitkit.AgentSetup, users: dict[str, client.ApiClient]
) -> None:
    name = create_request(env.api, agent)["metadata"]["name"]
    wait_phase(env.api, agent, name, "Pending")
    # bob writes an approval in alice's name
    code, message = refused(lambda: decide(users["bob"], agent, name, user="alice"))
    assert (code, message) == (
        403,
        WEBHOOK + "an approval or denial is recorded in the caller's own name: 'bob' cannot "
        "record one for 'alice'",
    )
    # even the admin cannot
    code, message = refused(lambda: decide(env.api, agent, name, user="alice"))
    assert message == WEBHOOK + (
        "an approval or denial is recorded in the caller's own name: 'admin' cannot record one "
        "for 'alice'"
    )
    # nor flip the phase without approvals
    api = custom(env.api)
    code, message = refused(
        lambda: api.patch_namespaced_custom_object_status(
            GROUP,
            VERSION,
            agent.namespace,
            PLURAL,
            name,
            {"status": {"phase": "Approved", "grantedUntil": "2030-01-01T00:00:00Z"}},
        )
    )
    assert message == WEBHOOK + (
        f"access request {name!r} has 0 of the 1 distinct approvals it needs under its grants "
        "as they are now"
    )
    # bob in his own name: not an approver
    code, message = refused(lambda: decide(users["bob"], agent, name))
    assert message == WEBHOOK + (
        f"user 'bob' may not approve access request {name!r}: not listed in the approvers of "
        "CapabilityGrant 'buyer-payments' and not allowed verb 'approve' on capabilitygrants "
        f"'buyer-payments' in namespace '{agent.namespace}'; ask an admin to add you to "
        "spec.approvers of that grant"
    )
    # the agent's own service account, even though it is listed as an approver
    custom(env.api).patch_namespaced_custom_object(
        GROUP,
        VERSION,
        agent.namespace,
        "capabilitygrants",
        agent.grant,
        {
            "spec": {
                "approvers": {
                    "users": ["alice", f"system:serviceaccount:{agent.namespace}:buyer-sa"]
                }
            }
        },
    )
    sa_api = jitkit.user_api(env.cluster, jitkit.service_account_token(env.api, agent))
    try:
        code, message = refused(lambda: decide(sa_api, agent, name))
    finally:
        sa_api.close()
    assert message == WEBHOOK + (
        f"system:serviceaccount:{agent.namespace}:buyer-sa is the service account of agent "
        "'buyer' and may not approve its own access requests"
    )
    assert read(env.api, agent, name)["status"]["phase"] == "Pending"


def test_quorum_of_two_through_rbac_verb_approve(
    env: jitkit.JitEnv, namespace: str, users: dict[str, client.ApiClient]
) -> None:
    agent = jitkit.setup_agent(env.api, namespace, min_approvals=2)
    rbac = client.RbacAuthorizationV1Api(env.api)
    rbac.create_namespaced_role(
        namespace,
        {
            "metadata": {"name": "approve-payments"},
            "rules": [
                {
                    "apiGroups": [GROUP],
                    "resources": ["capabilitygrants"],
                    "resourceNames": [agent.grant],
                    "verbs": ["approve"],
                }
            ],
        },
    )
    rbac.create_namespaced_role_binding(
        namespace,
        {
            "metadata": {"name": "bob-approves"},
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "Role",
                "name": "approve-payments",
            },
            "subjects": [{"kind": "User", "apiGroup": "rbac.authorization.k8s.io", "name": "bob"}],
        },
    )
    name = create_request(env.api, agent)["metadata"]["name"]
    wait_phase(env.api, agent, name, "Pending")
    decide(users["alice"], agent, name)
    pending = jitkit.wait_for(
        lambda: (
            lambda obj: obj if "1 of 2" in obj["status"]["conditions"][0]["message"] else None
        )(read(env.api, agent, name)),
        message="1 of 2 approvals",
    )
    assert pending["status"]["phase"] == "Pending"
    code, message = refused(lambda: decide(users["alice"], agent, name))
    assert (code, message) == (409, WEBHOOK + f"alice has already approved access request {name!r}")
    decide(users["bob"], agent, name, comment="second pair of eyes")
    approved = wait_phase(env.api, agent, name, "Approved")
    assert [a["user"] for a in approved["status"]["approvals"]] == ["alice", "bob"]


def test_one_denial_wins_and_denied_cannot_be_reopened(
    env: jitkit.JitEnv, namespace: str, users: dict[str, client.ApiClient]
) -> None:
    agent = jitkit.setup_agent(env.api, namespace, min_approvals=2, approvers=["alice", "bob"])
    name = create_request(env.api, agent)["metadata"]["name"]
    wait_phase(env.api, agent, name, "Pending")
    decide(users["alice"], agent, name)
    code, message = refused(lambda: decide(users["bob"], agent, name, field="denials"))
    assert (code, message) == (
        400,
        WEBHOOK + "a denial needs a reason: say why the access is refused",
    )
    decide(users["bob"], agent, name, field="denials", comment="amount too high")
    denied = wait_phase(env.api, agent, name, "Denied")
    assert denied["status"]["conditions"][0]["message"] == (
        'denied by bob; reason: "amount too high"'
    )
    assert [a["user"] for a in denied["status"]["approvals"]] == ["alice"]
    api = custom(env.api)
    code, message = refused(
        lambda: api.patch_namespaced_custom_object_status(
            GROUP, VERSION, agent.namespace, PLURAL, name, {"status": {"phase": "Pending"}}
        )
    )
    assert (code, message) == (
        403,
        WEBHOOK + f"access request {name!r} is Denied and cannot be re-opened or changed to "
        "Pending; the agent must file a new request",
    )
    code, message = refused(
        lambda: api.patch_namespaced_custom_object_status(
            GROUP, VERSION, agent.namespace, PLURAL, name, {"status": {"denials": []}}
        )
    )
    assert message == WEBHOOK + "status.denials: recorded decisions cannot be edited or removed"
    code, message = refused(lambda: decide(users["alice"], agent, name, comment="again"))
    assert code == 409


def test_admin_who_filed_cannot_decide(env: jitkit.JitEnv, agent: jitkit.AgentSetup) -> None:
    name = create_request(env.api, agent)["metadata"]["name"]
    wait_phase(env.api, agent, name, "Pending")
    code, message = refused(lambda: decide(env.api, agent, name, field="denials", comment="no"))
    assert (code, message) == (
        403,
        WEBHOOK + f"admin filed access request {name!r} and may not deny it",
    )
