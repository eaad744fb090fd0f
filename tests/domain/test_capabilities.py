"""Effective capabilities: the one definition shared by the controller and the token service."""

from __future__ import annotations

import datetime
from typing import Any

from agentauth.domain import capabilities, models

NOW = datetime.datetime(2026, 11, 28, 12, 0, tzinfo=datetime.UTC)


def agent(name: str = "research", namespace: str = "demo", **labels: str) -> models.Agent:
    return models.Agent.model_validate(
        {"metadata": {"name": name, "namespace": namespace, "labels": labels}, "spec": {}}
    )


def grant(
    name: str, *caps: dict[str, Any], namespace: str = "demo", **spec: Any
) -> models.CapabilityGrant:
    body = {"agents": {"names": ["research"]}, "capabilities": list(caps)}
    body.update(spec)
    return models.CapabilityGrant.model_validate(
        {"metadata": {"name": name, "namespace": namespace}, "spec": body}
    )


def test_wildcards_cover_deeper_names_only() -> None:
    assert capabilities.pattern_matches("document.*", "document.read")
    assert capabilities.pattern_matches("document.*", "document.folder.read")
    assert not capabilities.pattern_matches("document.*", "document")
    assert not capabilities.pattern_matches("document.*", "documents.read")
    assert capabilities.pattern_matches("document.read", "document.read")
    assert not capabilities.pattern_matches("document.read", "document.readall")


def test_effective_capabilities_merge_grants() -> None:
    grants = [
        grant("b-docs", {"name": "document.read"}),
        grant(
            "a-pay", {"name": "payments.authorize", "approval": "Required", "maxDuration": "30m"}
        ),
        grant("c-pay-auto", {"name": "payments.authorize"}),
    ]
    held = capabilities.effective_capabilities(agent(), grants, now=NOW)
    assert [(c.name, c.grant, c.approval) for c in held] == [
        ("document.read", "b-docs", "Automatic"),
        ("payments.authorize", "c-pay-auto", "Automatic"),
    ]


def test_grants_apply_only_in_namespace_when_selected_and_unexpired() -> None:
    grants = [
        grant("other-ns", {"name": "a.read"}, namespace="elsewhere"),
        grant("expired", {"name": "b.read"}, expiresAt="2026-11-28T11:59:59Z"),
        grant("later", {"name": "c.read"}, expiresAt="2026-11-28T12:00:01Z"),
        grant("by-label", {"name": "d.read"}, agents={"selector": {"matchLabels": {"team": "x"}}}),
        grant("other-agent", {"name": "e.read"}, agents={"names": ["someone-else"]}),
    ]
    held = capabilities.effective_capabilities(agent(team="x"), grants, now=NOW)
    assert [c.name for c in held] == ["c.read", "d.read"]
    assert held[0].expires_at == datetime.datetime(2026, 11, 28, 12, 0, 1, tzinfo=datetime.UTC)
    assert capabilities.next_expiry(grants, now=NOW) == held[0].expires_at


def test_find_prefers_automatic() -> None:
    held = [
        models.EffectiveCapability(name="payments.*", grant="g1", approval="Automatic"),
        models.EffectiveCapability(
            name="payments.authorize", grant="g2", approval="Required", max_duration="1h"
        ),
    ]
    found = capabilities.find(held, "payments.authorize")
    assert found is not None
    assert found.grant == "g1"
    assert capabilities.find(held, "document.read") is None


def test_agent_id_form() -> None:
    assert (
        capabilities.agent_id(name="research", namespace="demo", trust_domain="cluster.local")
        == "aauth:research.demo@cluster.local"
    )
