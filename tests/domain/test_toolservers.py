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
