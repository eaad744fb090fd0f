"""The CRD models: samples parse, invalid manifests fail with the exact field path and message."""

from __future__ import annotations

import datetime
import pathlib
from typing import Any

import pydantic
import pytest
import yaml

from agentauth.domain import durations, models
from agentauth.domain.models import common

SAMPLES = pathlib.Path(__file__).parents[2] / "samples"
MODEL_BY_KIND: dict[str, type[pydantic.BaseModel]] = {
    "Agent": models.Agent,
    "CapabilityGrant": models.CapabilityGrant,
    "AccessRequest": models.AccessRequest,
    "ToolServer": models.ToolServer,
}


def sample_documents() -> list[dict[str, Any]]:
    documents = []
    for path in sorted(SAMPLES.rglob("*.yaml")):
        documents.extend(doc for doc in yaml.safe_load_all(path.read_text()) if doc)
    return documents


def agentauth_samples() -> list[dict[str, Any]]:
    return [doc for doc in sample_documents() if doc["apiVersion"] == models.API_VERSION]


def test_samples_cover_every_kind() -> None:
    kinds = {doc["kind"] for doc in agentauth_samples()}
    assert kinds == set(MODEL_BY_KIND)
    assert any(doc["kind"] == "Pod" for doc in sample_documents())


@pytest.mark.parametrize(
    "document", agentauth_samples(), ids=lambda doc: f"{doc['kind']}-{doc['metadata']}"
)
def test_every_sample_parses_into_its_model(document: dict[str, Any]) -> None:
    parsed = MODEL_BY_KIND[document["kind"]].model_validate(document)
    assert parsed.model_dump(by_alias=True)["spec"]


def test_agent_defaults() -> None:
    agent = models.Agent.model_validate({"metadata": {"name": "a"}, "spec": {}})
    assert agent.spec.token_ttl == "2m"
    assert agent.spec.delegation == models.Delegation(allowed=False, max_depth=3)
    assert agent.spec.suspended is False
    assert agent.to_api()["spec"]["tokenTTL"] == "2m"


def test_required_capability_defaults_max_duration() -> None:
    grant = models.CapabilityGrant.model_validate(
        {
            "metadata": {"name": "g"},
            "spec": {
                "agents": {"names": ["a"]},
                "capabilities": [{"name": "payments.authorize", "approval": "Required"}],
            },
        }
    )
    assert grant.spec.capabilities[0].max_duration == "1h"


def _agent(**spec: Any) -> dict[str, Any]:
    return {"metadata": {"name": "agent"}, "spec": spec}


def _grant(**capability: Any) -> dict[str, Any]:
    return {
        "metadata": {"name": "grant"},
        "spec": {"agents": {"names": ["agent"]}, "capabilities": [capability]},
    }


INVALID: list[tuple[str, type[pydantic.BaseModel], dict[str, Any], str, str]] = [
    (
        "capability without action",
        models.CapabilityGrant,
        _grant(name="document"),
        "spec.capabilities[0].name",
        "'document' is not a capability name: expected '<resource>.<action>' in lower case, "
        "such as 'document.read', or a trailing wildcard such as 'document.*'",
    ),
    (
        "capability in upper case",
        models.CapabilityGrant,
        _grant(name="Document.Read"),
        "spec.capabilities[0].name",
        "'Document.Read' is not a capability name: expected '<resource>.<action>' in lower case, "
        "such as 'document.read', or a trailing wildcard such as 'document.*'",
    ),
    (
        "wildcard in the middle",
        models.CapabilityGrant,
        _grant(name="document.*.read"),
        "spec.capabilities[0].name",
        "'document.*.read' is not a capability name: expected '<resource>.<action>' in lower "
        "case, such as 'document.read', or a trailing wildcard such as 'document.*'",
    ),
    (
        "wildcard in an access request",
        models.AccessRequest,
        {
            "metadata": {"name": "r"},
            "spec": {"agent": "agent", "capabilities": ["payments.*"], "justification": "x"},
        },
        "spec.capabilities[0]",
        "'payments.*' is not a capability name: expected '<resource>.<action>' in lower case, "
        "such as 'document.read'",
    ),
    (
        "duration in days",
        models.Agent,
        _agent(tokenTTL="1d"),
        "spec.tokenTTL",
        "invalid duration '1d': expected " + durations.HELP,
    ),
    (
        "duration without unit",
        models.Agent,
        _agent(tokenTTL="300"),
        "spec.tokenTTL",
        "invalid duration '300': expected " + durations.HELP,
    ),
    (
        "zero duration",
        models.Agent,
        _agent(tokenTTL="0s"),
        "spec.tokenTTL",
        "invalid duration '0s': must be greater than zero",
    ),
    (
        "token TTL over one hour",
        models.Agent,
        _agent(tokenTTL="61m"),
        "spec.tokenTTL",
        "tokenTTL '61m' exceeds the maximum of 1h",
    ),
    (
        "unknown approval mode",
        models.CapabilityGrant,
        _grant(name="payments.authorize", approval="Sometimes"),
        "spec.capabilities[0].approval",
        "Input should be 'Automatic' or 'Required'",
    ),
    (
        "maxDuration on an automatic capability",
        models.CapabilityGrant,
        _grant(name="document.read", maxDuration="5m"),
        "spec.capabilities[0]",
        "maxDuration applies only to capabilities with approval Required",
    ),
    (
        "agent name not a DNS-1123 label",
        models.Agent,
        {"metadata": {"name": "Research_Agent"}, "spec": {}},
        "metadata",
        "'Research_Agent' is not a DNS-1123 label: at most 63 lower-case alphanumeric characters "
        "or '-', starting and ending with an alphanumeric character",
    ),
    (
        "agent name too long",
        models.Agent,
        {"metadata": {"name": "a" * 64}, "spec": {}},
        "metadata",
        f"'{'a' * 64}' is not a DNS-1123 label: at most 63 lower-case alphanumeric characters "
        "or '-', starting and ending with an alphanumeric character",
    ),
    (
        "grant naming a non-label agent",
        models.CapabilityGrant,
        {
            "metadata": {"name": "g"},
            "spec": {
                "agents": {"names": ["-bad"]},
                "capabilities": [{"name": "document.read"}],
            },
        },
        "spec.agents.names[0]",
        "'-bad' is not a DNS-1123 label: at most 63 lower-case alphanumeric characters or '-', "
        "starting and ending with an alphanumeric character",
    ),
    (
        "grant selecting nothing",
        models.CapabilityGrant,
        {"metadata": {"name": "g"}, "spec": {"agents": {}, "capabilities": [{"name": "a.b"}]}},
        "spec.agents",
        "set agents.names or agents.selector",
    ),
    (
        "access request phase unknown",
        models.AccessRequest,
        {
            "metadata": {"name": "r"},
            "spec": {"agent": "agent", "capabilities": ["a.b"], "justification": "x"},
            "status": {"phase": "Maybe"},
        },
        "status.phase",
        "Input should be 'Pending', 'Approved', 'Denied' or 'Expired'",
    ),
    (
        "blank justification",
        models.AccessRequest,
        {
            "metadata": {"name": "r"},
            "spec": {"agent": "agent", "capabilities": ["a.b"], "justification": "   "},
        },
        "spec.justification",
        "justification must not be blank",
    ),
    (
        "RSA public key",
        models.Agent,
        _agent(publicKeys={"keys": [{"kty": "RSA", "crv": "Ed25519", "x": "A" * 43, "kid": "k"}]}),
        "spec.publicKeys.keys[0].kty",
        "Input should be 'OKP'",
    ),
    (
        "tool server over http",
        models.ToolServer,
        {"metadata": {"name": "t"}, "spec": {"resourceURI": "http://tools.example/mcp"}},
        "spec.resourceURI",
        "resourceURI 'http://tools.example/mcp' must be an absolute https URL of URI characters "
        "(no userinfo, fragment, spaces, quotes or control characters)",
    ),
    (
        "tool server URI with a terminal escape",
        models.ToolServer,
        {"metadata": {"name": "t"}, "spec": {"resourceURI": "https://t.example/\x1b[2J"}},
        "spec.resourceURI",
        "resourceURI 'https://t.example/\\x1b[2J' must be an absolute https URL of URI characters "
        "(no userinfo, fragment, spaces, quotes or control characters)",
    ),
    (
        "unknown field in spec",
        models.Agent,
        _agent(serviceAccount="typo"),
        "spec.serviceAccount",
        "Extra inputs are not permitted",
    ),
]


@pytest.mark.parametrize(
    ("model", "document", "path", "message"),
    [case[1:] for case in INVALID],
    ids=[case[0] for case in INVALID],
)
def test_invalid_manifest_is_rejected_with_field_and_message(
    model: type[pydantic.BaseModel], document: dict[str, Any], path: str, message: str
) -> None:
    with pytest.raises(pydantic.ValidationError) as caught:
        model.model_validate(document)
    assert common.describe_errors(caught.value) == [(path, message)]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("300s", datetime.timedelta(seconds=300)),
        ("5m", datetime.timedelta(minutes=5)),
        ("1h", datetime.timedelta(hours=1)),
        ("1h30m", datetime.timedelta(minutes=90)),
        ("2h0m5s", datetime.timedelta(hours=2, seconds=5)),
    ],
)
def test_durations_parse(text: str, expected: datetime.timedelta) -> None:
    assert durations.parse_duration(text) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "invalid duration '': expected " + durations.HELP),
        ("5", "invalid duration '5': expected " + durations.HELP),
        ("5 m", "invalid duration '5 m': expected " + durations.HELP),
        ("1.5h", "invalid duration '1.5h': expected " + durations.HELP),
        ("5m1h", "invalid duration '5m1h': expected " + durations.HELP),
        ("-5m", "invalid duration '-5m': expected " + durations.HELP),
        ("P1D", "invalid duration 'P1D': expected " + durations.HELP),
        ("0m", "invalid duration '0m': must be greater than zero"),
        ("99999999s", "invalid duration '99999999s': number too large"),
    ],
)
def test_bad_durations_are_refused(text: str, message: str) -> None:
    with pytest.raises(ValueError) as caught:
        durations.parse_duration(text)
    assert str(caught.value) == message


def test_duration_round_trip() -> None:
    for text in ("5m", "1h", "1h30m", "45s", "2h5s"):
        assert durations.format_duration(durations.parse_duration(text)) == text


def test_set_condition_keeps_transition_time_when_status_is_unchanged() -> None:
    earlier = datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)
    later = earlier + datetime.timedelta(hours=1)
    first = models.Condition(type="Ready", status="True", reason="A", last_transition_time=earlier)
    again = models.Condition(type="Ready", status="True", reason="B", last_transition_time=later)
    flipped = models.Condition(type="Ready", status="False", reason="C", last_transition_time=later)
    kept = models.set_condition([first], again)
    assert kept[0].last_transition_time == earlier
    assert kept[0].reason == "B"
    changed = models.set_condition(kept, flipped)
    assert changed[0].last_transition_time == later


def test_label_selector_semantics() -> None:
    selector = models.LabelSelector.model_validate(
        {
            "matchLabels": {"team": "finance"},
            "matchExpressions": [
                {"key": "tier", "operator": "In", "values": ["gold", "silver"]},
                {"key": "frozen", "operator": "DoesNotExist"},
            ],
        }
    )
    assert selector.matches({"team": "finance", "tier": "gold"})
    assert not selector.matches({"team": "finance", "tier": "bronze"})
    assert not selector.matches({"team": "finance", "tier": "gold", "frozen": "yes"})
    assert not selector.matches({"tier": "gold"})
    assert models.LabelSelector().matches({})
