"""Agent and CapabilityGrant status computation (pure; no cluster)."""

from __future__ import annotations

import datetime

from agentauth.domain import agents
from agentauth.domain.models import Agent, CapabilityGrant

NOW = datetime.datetime(2026, 1, 1, 12, 0, tzinfo=datetime.UTC)
LATER = NOW + datetime.timedelta(minutes=5)


def make_agent(name: str = "research", **spec: object) -> Agent:
    body = {
        "metadata": {"name": name, "namespace": "team", "generation": 3, "labels": {"tier": "a"}},
        "spec": {"serviceAccountName": "research-sa", **spec},
    }
    return Agent.model_validate(body)


def make_grant(name: str, *, caps: list[dict[str, object]], **spec: object) -> CapabilityGrant:
    body = {
        "metadata": {"name": name, "namespace": "team", "generation": 1},
        "spec": {"agents": {"names": ["research"]}, "capabilities": caps, **spec},
    }
    return CapabilityGrant.model_validate(body)


def ready(status: object) -> tuple[str, str, str]:
    condition = next(c for c in status.conditions if c.type == "Ready")  # type: ignore[attr-defined]
    return condition.status, condition.reason, condition.message


READ = make_grant("read", caps=[{"name": "document.read"}])


def test_ready_agent_has_id_capabilities_and_generation() -> None:
    status = agents.agent_status(
        make_agent(), [READ], service_account_exists=True, trust_domain="example.com", now=NOW
    )
    assert status.agent_id == "aauth:research.team@example.com"
    assert [(c.name, c.grant, c.approval) for c in status.capabilities] == [
        ("document.read", "read", "Automatic")
    ]
    assert ready(status) == ("True", "Ready", "Agent holds 1 capability: document.read")
    assert status.observed_generation == 3


def test_reasons_in_priority_order() -> None:
    sus = agents.agent_status(
        make_agent(suspended=True),
        [READ],
        service_account_exists=False,
        trust_domain="d",
        now=NOW,
    )
    assert ready(sus)[:2] == ("False", "Suspended")
    missing = agents.agent_status(
        make_agent(), [READ], service_account_exists=False, trust_domain="d", now=NOW
    )
    assert ready(missing) == (
        "False",
        "ServiceAccountNotFound",
        'ServiceAccount "research-sa" not found in namespace "team". Create it with: '
        "kubectl create serviceaccount research-sa -n team",
    )
    nocaps = agents.agent_status(
        make_agent(), [], service_account_exists=True, trust_domain="d", now=NOW
    )
    assert ready(nocaps)[:2] == ("False", "NoCapabilities")
    body = {"metadata": {"name": "x", "namespace": "team"}, "spec": {}}
    nosource = agents.agent_status(
        Agent.model_validate(body),
        [READ],
        service_account_exists=False,
        trust_domain="d",
        now=NOW,
    )
    assert ready(nosource)[:2] == ("False", "NoCredentialSource")


def test_expired_grant_gives_nothing_and_transition_time_is_kept() -> None:
    expiring = make_grant("temp", caps=[{"name": "payments.refund"}], expiresAt=LATER.isoformat())
    first = agents.agent_status(
        make_agent(), [READ, expiring], service_account_exists=True, trust_domain="d", now=NOW
    )
    assert [c.name for c in first.capabilities] == ["document.read", "payments.refund"]
    agent = make_agent()
    agent.status = first
    after = agents.agent_status(
        agent,
        [READ, expiring],
        service_account_exists=True,
        trust_domain="d",
        now=LATER + datetime.timedelta(seconds=1),
    )
    assert [c.name for c in after.capabilities] == ["document.read"]
    # Still Ready: the transition time is the first one, not now.
    assert after.conditions[0].last_transition_time == NOW


def test_recomputing_same_inputs_gives_equal_status_and_no_events() -> None:
    first = agents.agent_status(
        make_agent(), [READ], service_account_exists=True, trust_domain="d", now=NOW
    )
    agent = make_agent()
    agent.status = first
    second = agents.agent_status(
        agent, [READ], service_account_exists=True, trust_domain="d", now=LATER
    )
    assert second.to_api() == first.to_api()
    assert agents.agent_events(first, second) == []


def test_events_on_transitions() -> None:
    registered = agents.agent_status(
        make_agent(), [], service_account_exists=False, trust_domain="d", now=NOW
    )
    assert agents.agent_events(None, registered) == [
        agents.Event(
            "Normal", "Registered", "Registered as aauth:research.team@d; capabilities: none"
        ),
        agents.Event(
            "Warning",
            "ServiceAccountNotFound",
            'ServiceAccount "research-sa" not found in namespace "team". Create it with: '
            "kubectl create serviceaccount research-sa -n team",
        ),
    ]
    granted = agents.agent_status(
        make_agent(), [READ], service_account_exists=True, trust_domain="d", now=NOW
    )
    assert agents.agent_events(registered, granted) == [
        agents.Event(
            "Normal", "CapabilitiesChanged", "Granted document.read (Automatic, grant read)"
        ),
        agents.Event("Normal", "Ready", "Agent holds 1 capability: document.read"),
    ]
    suspended = agents.agent_status(
        make_agent(suspended=True),
        [READ],
        service_account_exists=True,
        trust_domain="d",
        now=NOW,
    )
    assert agents.agent_events(granted, suspended) == [
        agents.Event("Normal", "Suspended", "Agent suspended: no tokens are issued")
    ]
    assert agents.agent_events(suspended, granted) == [
        agents.Event("Normal", "Resumed", "Agent resumed"),
        agents.Event("Normal", "Ready", "Agent holds 1 capability: document.read"),
    ]
    first = agents.agent_events(None, granted)
    assert first == [
        agents.Event(
            "Normal",
            "Registered",
            "Registered as aauth:research.team@d; capabilities: document.read (Automatic, "
            "grant read)",
        ),
        agents.Event("Normal", "Ready", "Agent holds 1 capability: document.read"),
    ]
    revoked = agents.agent_status(
        make_agent(), [], service_account_exists=True, trust_domain="d", now=NOW
    )
    events = agents.agent_events(granted, revoked)
    assert events[0] == agents.Event(
        "Normal", "CapabilitiesChanged", "Removed document.read (Automatic, grant read)"
    )
    assert events[1].reason == "NoCapabilities"
    assert events[1].type == "Warning"


def test_grant_status_matches_expires_and_reports() -> None:
    by_selector = make_grant(
        "sel", caps=[{"name": "document.*"}], agents={"selector": {"matchLabels": {"tier": "a"}}}
    )
    other = Agent.model_validate(
        {"metadata": {"name": "other", "namespace": "team", "labels": {"tier": "b"}}, "spec": {}}
    )
    elsewhere = Agent.model_validate(
        {"metadata": {"name": "far", "namespace": "x", "labels": {"tier": "a"}}, "spec": {}}
    )
    status = agents.grant_status(by_selector, [make_agent(), other, elsewhere], now=NOW)
    assert status.matched_agents == ["research"]
    assert (status.conditions[0].status, status.conditions[0].reason) == ("True", "Active")
    assert status.conditions[0].message == "Applies to 1 agent"
    assert agents.grant_events(None, status) == []
    both = agents.grant_status(by_selector, [make_agent(), make_agent("second")], now=NOW)
    assert both.matched_agents == ["research", "second"]
    assert both.conditions[0].message == "Applies to 2 agents"

    expiring = make_grant("temp", caps=[{"name": "a.b"}], expiresAt=LATER.isoformat())
    live = agents.grant_status(expiring, [make_agent()], now=NOW)
    expired = agents.grant_status(
        expiring, [make_agent()], now=LATER + datetime.timedelta(seconds=1)
    )
    assert expired.conditions[0].reason == "Expired"
    assert agents.grant_events(live, expired) == [
        agents.Event("Normal", "Expired", "Grant expired at 2026-01-01T12:05:00Z; it gives nothing")
    ]
    assert agents.grant_events(expired, expired) == []
    nomatch = agents.grant_status(READ, [other], now=NOW)
    assert nomatch.conditions[0].reason == "NoMatchingAgents"


def test_invalid_statuses() -> None:
    status = agents.invalid_agent_status(generation=2, previous=[], message="bad", now=NOW)
    assert ready(status) == ("False", "Invalid", "bad")
    assert status.capabilities == []
    grant = agents.invalid_grant_status(generation=2, previous=[], message="bad", now=NOW)
    assert agents.grant_events(None, grant) == [agents.Event("Warning", "Invalid", "bad")]


def test_federation_claims_the_policy_does_not_allow_are_reported_once() -> None:
    import json

    from agentauth.domain import claimpolicy

    policy = claimpolicy.parse(
        json.dumps(
            [{"namespaces": ["team"], "aws": {"roleArns": ["arn:aws:iam::111122223333:role/a-*"]}}]
        )
    )
    federation = {
        "aws": {"roleArns": ["arn:aws:iam::111122223333:role/a-x", "arn:aws:iam::*:role/*"]}
    }
    agent = make_agent(federation=federation)

    def status_of(agent: Agent, previous: object = None) -> object:
        if previous is not None:
            agent = agent.model_copy(update={"status": previous})
        return agents.agent_status(
            agent,
            [READ],
            service_account_exists=True,
            trust_domain="example.com",
            now=NOW,
            claim_policy=policy,
        )

    first = status_of(agent)
    condition = next(c for c in first.conditions if c.type == "Federation")  # type: ignore[attr-defined]
    assert (condition.status, condition.reason, condition.message) == (
        "False",
        "ClaimNotAllowed",
        'ignored: AWS role "arn:aws:iam::*:role/*". The cluster admin\'s claim policy (chart '
        "value claimPolicy) does not allow namespace 'team' to claim it",
    )
    events = agents.agent_events(None, first)  # type: ignore[arg-type]
    assert [(e.type, e.reason) for e in events if e.reason == "ClaimNotAllowed"] == [
        ("Warning", "ClaimNotAllowed")
    ]
    again = status_of(agent, first)
    assert agents.agent_events(first, again) == []  # type: ignore[arg-type]
    fixed = status_of(
        make_agent(federation={"aws": {"roleArns": ["arn:aws:iam::111122223333:role/a-x"]}}),
        first,
    )
    condition = next(c for c in fixed.conditions if c.type == "Federation")  # type: ignore[attr-defined]
    assert (condition.status, condition.reason) == ("True", "ClaimsAllowed")
    assert [e.reason for e in agents.agent_events(first, fixed)] == ["ClaimsAllowed"]  # type: ignore[arg-type]
    dropped = status_of(make_agent(), fixed)
    assert [c.type for c in dropped.conditions] == ["Ready"]  # type: ignore[attr-defined]


def test_a_grant_naming_a_missing_agent_names_it_and_warns() -> None:
    typo = make_grant("typo", caps=[{"name": "document.read"}], agents={"names": ["reserch"]})
    status = agents.grant_status(typo, [make_agent()], now=NOW)
    active = status.conditions[0]
    assert (active.status, active.reason, active.message) == (
        "False",
        "NoMatchingAgents",
        "No Agent in this namespace matches spec.agents: spec.agents.names lists 'reserch', "
        "which does not exist in this namespace",
    )
    assert agents.grant_events(None, status) == [
        agents.Event("Warning", "NoMatchingAgents", active.message)
    ]
    assert agents.grant_events(status, status) == []

    partly = make_grant(
        "partly", caps=[{"name": "document.read"}], agents={"names": ["research", "a", "b"]}
    )
    found = agents.grant_status(partly, [make_agent()], now=NOW).conditions[0]
    assert (found.status, found.message) == (
        "True",
        "Applies to 1 agent; spec.agents.names lists 'a', 'b', which do not exist in this "
        "namespace",
    )
