"""Notification planning and payloads (pure): which kinds a status implies, hostile text."""

from __future__ import annotations

import datetime
import json
from typing import Any

from agentauth.domain import notifications
from agentauth.domain.models import AccessRequest

NOW = datetime.datetime(2026, 1, 1, 12, 0, tzinfo=datetime.UTC)


def request(status: dict[str, Any], **spec: Any) -> AccessRequest:
    return AccessRequest.model_validate(
        {
            "metadata": {
                "name": "buyer-x1",
                "namespace": "shop",
                "uid": "u-1",
                "creationTimestamp": "2026-01-01T11:59:00Z",
            },
            "spec": {
                "agent": "buyer",
                "capabilities": ["payments.authorize"],
                "justification": "Pay INV-1",
                **spec,
            },
            "status": status,
        }
    )


def kinds(status: dict[str, Any], *, now: datetime.datetime = NOW) -> list[str]:
    return [n.key for n in notifications.planned(request(status), agent_id=None, now=now)]


def test_each_phase_implies_its_notifications() -> None:
    approval = {"user": "alice", "time": "2026-01-01T11:59:30Z"}
    assert kinds({}) == []
    assert kinds({"phase": "Pending", "expiresAt": "2026-01-01T12:09:00Z"}) == ["pending"]
    assert kinds(
        {"phase": "Approved", "approvals": [approval], "grantedUntil": "2026-01-01T12:14:00Z"}
    ) == ["approved"]
    assert kinds(
        {"phase": "Denied", "denials": [{**approval, "comment": "no"}]},
    ) == ["denied"]
    assert kinds({"phase": "Expired", "expiresAt": "2026-01-01T11:59:50Z"}) == ["expired"]
    assert kinds(
        {"phase": "Expired", "approvals": [approval], "grantedUntil": "2026-01-01T11:59:55Z"}
    ) == ["approved", "ended"]
    # Long after the fact (a controller back from a long outage) nothing is sent.
    assert (
        kinds({"phase": "Expired", "expiresAt": "2026-01-01T11:59:50Z"}, now=NOW.replace(hour=14))
        == []
    )


def test_untrusted_text_is_one_plain_line() -> None:
    hostile = "ok\u202e\u2066txt.exe\n\n*approved* \x1b[31m<!here>\u200b" + "x" * 2000
    cleaned = notifications.untrusted_text(hostile)
    assert cleaned.startswith("oktxt.exe *approved* [31m<!here>x")
    assert not any(c in cleaned for c in "\u202e\u2066\x1b\u200b\n")
    assert len(cleaned) == notifications.MAX_UNTRUSTED
    assert cleaned.endswith("\u2026")
    assert notifications.slack_escape("<!channel> & <a|b>") == "&lt;!channel&gt; &amp; &lt;a|b&gt;"


def test_payloads_carry_no_credential_and_keep_agent_text_out_of_parsed_slack_text() -> None:
    pending = request(
        {"phase": "Pending", "expiresAt": "2026-01-01T12:09:00Z"},
        justification="<!channel> `rm -rf` <https://evil.example|click>",
        context={"invoice": "<@U123>"},
    )
    planned = notifications.planned(pending, agent_id="aauth:buyer.shop@example.com", now=NOW)
    document = notifications.payload(planned[0], fmt="json")
    assert document["commands"]["approve"] == "kubectl agentauth approve buyer-x1 -n shop"
    assert document["agent"]["id"] == "aauth:buyer.shop@example.com"
    message = notifications.payload(planned[0], fmt="slack")
    parsed = [message["text"]] + [
        part["text"]
        for block in message["blocks"]
        for part in [block.get("text") or {}, *block.get("fields", [])]
        if part.get("type") == "mrkdwn"
    ]
    assert not any("<!channel>" in t or "<@U123>" in t or "evil" in t for t in parsed)
    assert "token" not in json.dumps(document).lower()
