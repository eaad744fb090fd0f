"""The exchange snapshot kept current one watch event at a time (``Snapshot.put_*``): every
change shows in the next decision, the memoised results survive writes that cannot change them
(an Agent's status), and the per-request indexes (grants of a namespace, ToolServers by resource
URI, Agents with federation) answer as a scan of everything would. Real models, real keys."""

from __future__ import annotations

import dataclasses
from datetime import timedelta

import pytest

from agentauth.domain import errors, exchanging, serviceaccounts
from agentauth.domain.models import Agent, CapabilityGrant
from tests.domain import tokenkit
from tests.domain.tokenkit import ISSUER, NOW, TRUST_DOMAIN

IDENTITY = serviceaccounts.ServiceAccountIdentity(
    namespace="team-a",
    service_account="research-sa",
    service_account_uid=tokenkit.SERVICE_ACCOUNT_UID,
    pod_name="research-0",
    pod_uid="pod-uid-1",
    expires_at=0,
    jti=None,
)
AGENT_KEY = ("team-a", "research")


def decide(snapshot: exchanging.Snapshot, **target: object) -> exchanging.Decision:
    return exchanging.decide_for_service_account(
        identity=IDENTITY,
        target=exchanging.Target(**target),  # type: ignore[arg-type]
        snapshot=snapshot,
        issuer=ISSUER,
        trust_domain=TRUST_DOMAIN,
        now=NOW,
    )


def by_selector(name: str, capability: str, **labels: str) -> CapabilityGrant:
    return CapabilityGrant.model_validate(
        {
            "metadata": {"name": name, "namespace": "team-a", "uid": f"uid-{name}"},
            "spec": {
                "agents": {"selector": {"matchLabels": labels}},
                "capabilities": [{"name": capability}],
            },
        }
    )


def relabelled(agent: Agent, **labels: str) -> Agent:
    return agent.model_copy(
        update={"metadata": agent.metadata.model_copy(update={"labels": labels})}
    )


def test_a_deleted_grant_is_gone_from_the_next_decision_and_back_when_created_again() -> None:
    snapshot = tokenkit.snapshot()
    assert decide(snapshot).scope == ("document.read", "document.write")
    (base,) = snapshot.grants_in("team-a")
    snapshot.put_grant(("team-a", "base"), None)
    assert decide(snapshot).scope == ()
    with pytest.raises(errors.InvalidScope):
        decide(snapshot, scope=("document.read",))
    snapshot.put_grant(("team-a", "base"), base)
    assert decide(snapshot).scope == ("document.read", "document.write")


def test_a_status_write_keeps_what_the_agent_holds_and_a_label_change_recomputes_it() -> None:
    snapshot = tokenkit.snapshot(
        grants=[
            tokenkit.grant("base", capabilities=tokenkit.STANDARD_CAPABILITIES),
            by_selector("gold", "reports.read", tier="gold"),
        ]
    )
    agent = snapshot.agents[AGENT_KEY]
    held = snapshot.held(agent, now=NOW)
    assert "reports.read" in decide(snapshot).scope
    status_write = agent.model_copy(update={"status": None})
    snapshot.put_agent(AGENT_KEY, status_write)
    assert snapshot.held(status_write, now=NOW) is held  # memo kept: grants select by labels
    snapshot.put_agent(AGENT_KEY, relabelled(agent, tier="silver"))
    assert decide(snapshot).scope == ("document.read", "document.write")
    snapshot.put_agent(AGENT_KEY, agent)
    assert "reports.read" in decide(snapshot).scope


def test_an_agent_created_again_under_its_name_inherits_no_approval() -> None:
    until = NOW + timedelta(minutes=2)
    approved = tokenkit.access_request(
        "ar-1", capabilities=["payments.authorize"], granted_until=until
    )
    snapshot = tokenkit.snapshot(access_requests=[approved])
    assert "payments.authorize" in decide(snapshot).scope
    successor = snapshot.agents[AGENT_KEY].model_copy(
        update={"metadata": snapshot.agents[AGENT_KEY].metadata.model_copy(update={"uid": "new"})}
    )
    snapshot.put_agent(AGENT_KEY, successor)
    assert decide(snapshot).scope == ("document.read", "document.write")


def test_access_requests_filed_updated_and_deleted_show_in_the_next_decision() -> None:
    snapshot = tokenkit.snapshot()
    assert decide(snapshot).scope == ("document.read", "document.write")
    until = NOW + timedelta(minutes=2)
    pending = tokenkit.access_request("ar-1", capabilities=["payments.authorize"], phase="Pending")
    snapshot.put_access_request(("team-a", "ar-1"), pending)
    assert decide(snapshot).scope == ("document.read", "document.write")
    approved = tokenkit.access_request(
        "ar-1", capabilities=["payments.authorize"], granted_until=until
    )
    snapshot.put_access_request(("team-a", "ar-1"), approved)
    decision = decide(snapshot)
    assert decision.scope == ("document.read", "document.write", "payments.authorize")
    assert decision.lifetime == timedelta(minutes=2)
    snapshot.put_access_request(("team-a", "ar-1"), None)
    assert decide(snapshot).scope == ("document.read", "document.write")
    assert snapshot.access_requests == []


def test_an_approval_ends_at_its_granted_until_though_nothing_changed() -> None:
    until = NOW + timedelta(minutes=2)
    approved = tokenkit.access_request(
        "ar-1", capabilities=["payments.authorize"], granted_until=until
    )
    snapshot = tokenkit.snapshot(access_requests=[approved])
    assert "payments.authorize" in decide(snapshot).scope
    later = exchanging.decide_for_service_account(
        identity=IDENTITY,
        target=exchanging.Target(),
        snapshot=snapshot,
        issuer=ISSUER,
        trust_domain=TRUST_DOMAIN,
        now=until,
    )
    assert later.scope == ("document.read", "document.write")


def test_a_deleted_pod_service_account_or_agent_refuses_the_next_exchange() -> None:
    snapshot = tokenkit.snapshot()
    decide(snapshot)
    pod = snapshot.pods[("team-a", "research-0")]
    snapshot.put_pod(("team-a", "research-0"), dataclasses.replace(pod, terminating=True))
    with pytest.raises(errors.InvalidGrant, match="is being deleted"):
        decide(snapshot)
    snapshot.put_pod(("team-a", "research-0"), pod)
    snapshot.put_service_account(("team-a", "research-sa"), None)
    with pytest.raises(errors.InvalidGrant, match="service account team-a/research-sa"):
        decide(snapshot)
    snapshot.put_service_account(("team-a", "research-sa"), tokenkit.SERVICE_ACCOUNT_UID)
    snapshot.put_agent(AGENT_KEY, None)
    with pytest.raises(errors.InvalidGrant, match="agent team-a/research does not exist"):
        decide(snapshot)


def test_grants_of_a_namespace_come_sorted_by_name_and_only_from_it() -> None:
    grants = [
        tokenkit.grant("zeta", capabilities=[{"name": "z.read"}]),
        tokenkit.grant("alpha", capabilities=[{"name": "a.read"}]),
        tokenkit.grant("other", "team-b", capabilities=[{"name": "b.read"}]),
    ]
    snapshot = tokenkit.snapshot(grants=grants)
    assert [g.metadata.name for g in snapshot.grants_in("team-a")] == ["alpha", "zeta"]
    snapshot.put_grant(("team-a", "beta"), tokenkit.grant("beta", capabilities=[{"name": "b.x"}]))
    assert [g.metadata.name for g in snapshot.grants_in("team-a")] == ["alpha", "beta", "zeta"]
    assert [g.metadata.name for g in snapshot.grants_in("team-b")] == ["other"]
    assert snapshot.grants_in("team-c") == ()
    assert snapshot.sizes()["capabilitygrants"] == 4


def test_toolservers_are_found_by_their_normalised_uri_and_forgotten_when_they_change() -> None:
    server = tokenkit.tool_server("docs", "https://docs.example.test/", {"read": "document.read"})
    snapshot = tokenkit.snapshot(tool_servers=[server])
    assert snapshot.tool_servers_claiming("https://DOCS.example.test") == [server]
    assert decide(snapshot, audience="https://docs.example.test").tool_server is server
    moved = tokenkit.tool_server("docs", "https://elsewhere.test", {"read": "document.read"})
    snapshot.put_tool_server(("team-a", "docs"), moved)
    assert snapshot.tool_servers_claiming("https://docs.example.test") == []
    with pytest.raises(errors.InvalidTarget):
        decide(snapshot, audience="https://docs.example.test")
    assert snapshot.tool_servers_claiming("not a uri") == []
    assert snapshot.tool_servers_claiming(None) == []


def test_only_agents_with_federation_are_candidates_for_a_cloud_identity() -> None:
    plain = tokenkit.agent("plain", uid="u-plain")
    cloud = tokenkit.agent(
        "cloud",
        uid="u-cloud",
        federation={"aws": {"roleArns": ["arn:aws:iam::123456789012:role/agent"]}},
    )
    snapshot = tokenkit.snapshot(agents=[plain, cloud])
    assert snapshot.federated_agents() == [cloud]
    snapshot.put_agent(("team-a", "cloud"), tokenkit.agent("cloud", uid="u-cloud"))
    assert snapshot.federated_agents() == []


def test_a_decision_made_again_ends_when_a_grant_of_it_expires_though_nothing_changed() -> None:
    """The same request from the same pod is answered from the memoised decision, until the
    next ``expiresAt`` of a grant of the namespace: then what the Agent holds is computed
    again, at once, without a watch event."""
    expiring = CapabilityGrant.model_validate(
        {
            "metadata": {"name": "for-a-while", "namespace": "team-a", "uid": "uid-while"},
            "spec": {
                "agents": {"names": ["research"]},
                "capabilities": [{"name": "report.read"}],
                "expiresAt": (NOW + timedelta(minutes=5)).strftime("%Y-%m-%dT%H:%M:%SZ"),
            },
        }
    )
    snapshot = tokenkit.snapshot()
    snapshot.put_grant(("team-a", "for-a-while"), expiring)

    def decided_at(offset: timedelta) -> exchanging.Decision:
        return exchanging.decide_for_service_account(
            identity=IDENTITY,
            target=exchanging.Target(),
            snapshot=snapshot,
            issuer=ISSUER,
            trust_domain=TRUST_DOMAIN,
            now=NOW + offset,
        )

    first = decided_at(timedelta(0))
    assert "report.read" in first.scope
    assert decided_at(timedelta(minutes=4)) is first
    after = decided_at(timedelta(minutes=6))
    assert "report.read" not in after.scope
    assert after.scope == ("document.read", "document.write")


def test_a_binding_is_made_again_when_anything_it_was_made_of_is_replaced() -> None:
    """A pod's binding and its Agent's decision are reused only while the snapshot holds the very
    pod, Agent and service-account uid they were made with: each replacement is checked afresh
    on the next exchange, whatever the previous exchange of the same pod found."""
    second = tokenkit.agent("second", uid="agent-uid-2")
    snapshot = tokenkit.snapshot(
        agents=[tokenkit.agent(), second],
        grants=[
            tokenkit.grant("base", capabilities=tokenkit.STANDARD_CAPABILITIES),
            tokenkit.grant("for-second", agents=["second"], capabilities=[{"name": "x.read"}]),
        ],
    )
    first = decide(snapshot)
    assert decide(snapshot) is first  # the memo is in use
    pod_key = ("team-a", "research-0")
    pod = snapshot.pods[pod_key]

    # the same pod written again (a new object, equal): bound again, the same answer
    snapshot.put_pod(pod_key, dataclasses.replace(pod))
    assert decide(snapshot).scope == first.scope

    # relabelled to act as another Agent of the same service account
    snapshot.put_pod(pod_key, dataclasses.replace(pod, labels={"agentauth.dev/agent": "second"}))
    assert decide(snapshot).agent is second
    assert "x.read" in decide(snapshot).scope
    snapshot.put_pod(pod_key, pod)
    assert decide(snapshot).agent is snapshot.agents[AGENT_KEY]

    # the service account deleted and created again (a new uid): the token's uid is the old one
    snapshot.put_service_account(("team-a", "research-sa"), "a-new-uid")
    with pytest.raises(errors.InvalidGrant) as caught:
        decide(snapshot)
    assert caught.value.description == (
        "service account team-a/research-sa of the token no longer exists (deleted, or created "
        "again under the same name)"
    )
    snapshot.put_service_account(("team-a", "research-sa"), tokenkit.SERVICE_ACCOUNT_UID)
    assert decide(snapshot).scope == first.scope

    # the Agent suspended, then its podSelector no longer matching the pod
    agent = snapshot.agents[AGENT_KEY]
    snapshot.put_agent(AGENT_KEY, tokenkit.agent(suspended=True))
    with pytest.raises(errors.InvalidGrant) as caught:
        decide(snapshot)
    assert caught.value.description == "agent team-a/research is suspended"
    snapshot.put_agent(AGENT_KEY, tokenkit.agent(podSelector={"matchLabels": {"app": "other"}}))
    with pytest.raises(errors.InvalidGrant) as caught:
        decide(snapshot)
    assert caught.value.description == (
        "pod team-a/research-0 does not match the podSelector of agent team-a/research"
    )
    snapshot.put_agent(AGENT_KEY, agent)

    # another token of the same pod (a new identity, e.g. the kubelet's rotation) binds too;
    # one naming another pod uid (the pod's predecessor) does not
    rotated = dataclasses.replace(IDENTITY, expires_at=123, jti="rotated")
    assert exchanging.bind_pod(rotated, snapshot) == (agent, pod)
    with pytest.raises(errors.InvalidGrant) as caught:
        exchanging.bind_pod(dataclasses.replace(IDENTITY, pod_uid="old-pod"), snapshot)
    assert caught.value.description == "pod team-a/research-0 bound to the token no longer exists"

    # the pod deleted: its binding goes with it
    snapshot.put_pod(pod_key, None)
    assert pod_key not in snapshot._bindings
    with pytest.raises(errors.InvalidGrant) as caught:
        decide(snapshot)
    assert caught.value.description == "pod team-a/research-0 bound to the token no longer exists"
