"""ToolServer status: RFC 9728 metadata URL, Ready/Invalid, Events only on transitions."""

from __future__ import annotations

import datetime

import pytest

from agentauth.domain import toolservers
from agentauth.domain.models import ToolServer

NOW = datetime.datetime(2026, 11, 28, 12, 0, tzinfo=datetime.UTC)


@pytest.mark.parametrize(
    ("resource", "expected"),
    [
        (
            "https://tools.example/mcp",
            "https://tools.example/.well-known/oauth-protected-resource/mcp",
        ),
        (
            "https://tools.example/mcp/",
            "https://tools.example/.well-known/oauth-protected-resource/mcp",
        ),
        ("https://tools.example", "https://tools.example/.well-known/oauth-protected-resource"),
        (
            "https://tools.example:8443/a/b?x=1",
            "https://tools.example:8443/.well-known/oauth-protected-resource/a/b",
        ),
    ],
)
def test_metadata_url(resource: str, expected: str) -> None:
    assert toolservers.metadata_url(resource) == expected


def server(generation: int = 1) -> ToolServer:
    return ToolServer.model_validate(
        {
            "metadata": {"name": "finance", "namespace": "demo", "generation": generation},
            "spec": {
                "resourceURI": "https://finance.example/mcp",
                "tools": [
                    {"name": "read", "capability": "document.read"},
                    {"name": "pay", "capability": "payments.authorize"},
                ],
            },
        }
    )


def test_status_and_events_follow_transitions_only() -> None:
    first = toolservers.status(server(), previous=[], now=NOW)
    assert first.metadata_url == "https://finance.example/.well-known/oauth-protected-resource/mcp"
    assert first.observed_generation == 1
    ready = first.conditions[0]
    assert (ready.type, ready.status, ready.reason) == ("Ready", "True", "MetadataPublished")
    assert (
        ready.message
        == "2 tools; tokens for this server carry audience https://finance.example/mcp and name "
        "ToolServer demo/finance in their tool_server claim"
    )
    assert [e.reason for e in toolservers.events(None, first)] == ["MetadataPublished"]
    later = NOW + datetime.timedelta(minutes=5)
    again = toolservers.status(server(generation=2), previous=first.conditions, now=later)
    assert toolservers.events(first, again) == []
    assert again.conditions[0].last_transition_time == NOW
    broken = toolservers.invalid_status(
        generation=3, previous=again.conditions, message="bad", now=later
    )
    assert broken.metadata_url is None
    assert [(e.type, e.reason, e.message) for e in toolservers.events(again, broken)] == [
        ("Warning", "Invalid", "bad")
    ]
    assert broken.conditions[0].last_transition_time == later


def named(name: str, namespace: str, uri: str, *, uid: str = "") -> ToolServer:
    return ToolServer.model_validate(
        {
            "metadata": {"name": name, "namespace": namespace, "uid": uid or f"uid-{name}"},
            "spec": {"resourceURI": uri},
        }
    )


def test_a_uri_named_twice_is_contested_on_both_sides_whatever_its_spelling() -> None:
    from agentauth.domain import claimpolicy

    owner = named("docs", "team-a", "https://docs.example/mcp")
    squat = named("docs", "bob", "https://DOCS.example:443/mcp/")
    other = named("other", "team-c", "https://docs.example/mcp2")
    servers = [owner, squat, other]
    policy = claimpolicy.NO_CLAIMS
    assert toolservers.claimants("https://docs.example/mcp", servers, policy=policy) == [
        squat,
        owner,
    ]
    for server, rival in ((owner, "bob/docs"), (squat, "team-a/docs")):
        claim = toolservers.claim_of(server, servers, policy=policy, issuer="https://issuer.test")
        assert (claim.reason, claim.holds) == ("ResourceURIContested", False)
        assert claim.message.startswith(
            f"resourceURI {server.spec.resource_uri} is also claimed by ToolServer {rival}; no "
            "tokens are issued for it while more than one ToolServer claims it"
        )
    alone = toolservers.claim_of(other, servers, policy=policy, issuer="https://issuer.test")
    assert (alone.reason, alone.holds) == ("MetadataPublished", True)
    status = toolservers.status(
        squat,
        previous=[],
        now=NOW,
        claim=toolservers.claim_of(squat, servers, policy=policy, issuer="https://issuer.test"),
    )
    assert (status.conditions[0].status, status.conditions[0].reason) == (
        "False",
        "ResourceURIContested",
    )
    (event,) = toolservers.events(None, status)
    assert (event.type, event.reason) == ("Warning", "ResourceURIContested")


def test_a_toolserver_outside_the_policy_claims_nothing_and_contests_nothing() -> None:
    import json

    from agentauth.domain import claimpolicy

    policy = claimpolicy.parse(
        json.dumps(
            {
                "restrictResourceURIs": True,
                "rules": [{"namespaces": ["team-a"], "resourceURIs": ["https://docs.example/"]}],
            }
        )
    )
    owner = named("docs", "team-a", "https://docs.example/mcp")
    squat = named("docs", "bob", "https://docs.example/mcp")
    servers = [owner, squat]
    refused = toolservers.claim_of(squat, servers, policy=policy, issuer="https://issuer.test")
    assert (refused.reason, refused.message) == (
        "ResourceURINotAllowed",
        "the cluster admin's claim policy (chart value claimPolicy) does not allow namespace "
        "'bob' to claim resourceURI https://docs.example/mcp; no tokens are issued for it",
    )
    held = toolservers.claim_of(owner, servers, policy=policy, issuer="https://issuer.test")
    assert held.holds
    reserved = toolservers.claim_of(
        named("me", "bob", "https://Issuer.test/"),
        servers,
        policy=claimpolicy.NO_CLAIMS,
        issuer="https://issuer.test",
    )
    assert reserved.reason == "ResourceURIReserved"
