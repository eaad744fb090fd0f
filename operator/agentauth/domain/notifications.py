"""What approvers are told about an AccessRequest, as a generic JSON or a Slack-compatible payload.

Guarantees:
- :func:`planned` derives the notifications a request's recorded state implies from its status
  alone (``pending`` while it waits for a decision, then ``approved``, ``denied``, ``expired``
  when nobody decided, ``ended`` when approved access ran out), each with a stable ``key``, so a
  restarted controller can tell what it already sent; ones older than the Event repost window are
  dropped, as for Events.
- Payloads carry the agent, its agent ID, the capabilities, duration, justification, context,
  deadlines, the decision and the exact ``kubectl agentauth`` commands; never a token, a
  credential or the webhook URL.
- The justification and context are written by the agent, so they are untrusted: control, format
  and bidirectional characters are removed, whitespace is collapsed to one line, the length is
  bounded, the JSON payload lists them under ``untrusted``, and the Slack payload shows them only
  in ``plain_text`` objects (Slack parses neither mrkdwn, links nor mentions there), escaped with
  Slack's ``&``/``<``/``>`` rules wherever text could be parsed.
"""

from __future__ import annotations

import dataclasses
import datetime
import unicodedata
from collections.abc import Mapping
from typing import Any, Literal

from agentauth.domain import approvals
from agentauth.domain.models import accessrequests

Kind = Literal["pending", "approved", "denied", "expired", "ended"]
Format = Literal["json", "slack"]
FORMATS: tuple[Format, ...] = ("json", "slack")
MAX_UNTRUSTED = 1000
SCHEMA_VERSION = "agentauth.dev/notification/v1"

_TITLES: dict[Kind, str] = {
    "pending": "Access request needs a decision",
    "approved": "Access request approved",
    "denied": "Access request denied",
    "expired": "Access request expired without a decision",
    "ended": "Approved access ended",
}


@dataclasses.dataclass(frozen=True)
class Notification:
    """One message to approvers; ``key`` is stable per request and kind."""

    key: Kind
    time: datetime.datetime
    request: accessrequests.AccessRequest
    agent_id: str | None


def untrusted_text(text: str, *, limit: int = MAX_UNTRUSTED) -> str:
    """``text`` made safe to show a person: one line, no control/format/bidi characters."""
    kept = "".join(
        " " if char.isspace() else char
        for char in text
        if char.isspace() or unicodedata.category(char) not in ("Cc", "Cf", "Co", "Cs", "Zl", "Zp")
    )
    line = " ".join(kept.split())
    return line if len(line) <= limit else line[: limit - 1] + "\u2026"


def slack_escape(text: str) -> str:
    """Slack's escaping for text it parses (``&``, ``<``, ``>``): no links, mentions or commands."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def planned(
    request: accessrequests.AccessRequest, *, agent_id: str | None, now: datetime.datetime
) -> list[Notification]:
    """The notifications ``request``'s recorded state implies, oldest first."""
    status = request.status
    if status is None or status.phase is None:
        return []
    created = request.metadata.creation_timestamp
    found: list[Notification] = []

    def add(key: Kind, moment: datetime.datetime | None) -> None:
        when = _aware(moment) if moment is not None else now
        if now - when <= approvals.EVENT_REPOST_WINDOW:
            found.append(Notification(key, when, request, agent_id))

    if status.phase == "Pending":
        add("pending", created)
    if status.phase == "Approved" or (status.phase == "Expired" and status.granted_until):
        add("approved", max((a.time for a in status.approvals), default=None))
    if status.phase == "Denied":
        add("denied", status.denials[0].time if status.denials else None)
    if status.phase == "Expired":
        if status.granted_until is not None:
            add("ended", status.granted_until)
        else:
            add("expired", status.expires_at)
    return found


def _aware(moment: datetime.datetime) -> datetime.datetime:
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=datetime.UTC)


def _stamp(moment: datetime.datetime | None) -> str | None:
    if moment is None:
        return None
    return _aware(moment).astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def payload(notification: Notification, *, fmt: Format) -> dict[str, Any]:
    """The request body to POST for ``notification`` in ``fmt``."""
    document = generic(notification)
    return document if fmt == "json" else slack(document)


def generic(notification: Notification) -> dict[str, Any]:
    """The generic JSON payload."""
    request = notification.request
    status = request.status or accessrequests.AccessRequestStatus()
    name = request.metadata.name or ""
    namespace = request.metadata.namespace or ""
    decision: dict[str, Any] | None = None
    if notification.key in ("approved", "ended"):
        decision = {
            "outcome": "Approved",
            "by": [a.user for a in status.approvals],
            "comments": [untrusted_text(a.comment) for a in status.approvals if a.comment],
        }
    elif notification.key == "denied" and status.denials:
        decision = {
            "outcome": "Denied",
            "by": [status.denials[0].user],
            "reason": untrusted_text(status.denials[0].comment),
        }
    commands = (
        {
            "approve": approvals.approve_command(name=name, namespace=namespace),
            "deny": approvals.deny_command(name=name, namespace=namespace),
        }
        if notification.key == "pending"
        else {}
    )
    return {
        "schema": SCHEMA_VERSION,
        "type": f"accessrequest.{notification.key}",
        "title": _TITLES[notification.key],
        "time": _stamp(notification.time),
        "request": {"name": name, "namespace": namespace, "uid": request.metadata.uid},
        "agent": {"name": request.spec.agent, "namespace": namespace, "id": notification.agent_id},
        "capabilities": list(request.spec.capabilities),
        "duration": request.spec.duration,
        "justification": untrusted_text(request.spec.justification),
        "context": {
            untrusted_text(key, limit=64): untrusted_text(value, limit=256)
            for key, value in sorted(request.spec.context.items())
        },
        "untrusted": ["justification", "context", "decision.comments", "decision.reason"],
        "phase": status.phase,
        "expiresAt": _stamp(status.expires_at),
        "grantedUntil": _stamp(status.granted_until),
        "decision": decision,
        "commands": commands,
    }


def _field(label: str, value: str) -> dict[str, Any]:
    return {"type": "mrkdwn", "text": f"*{label}*\n{value}"}


def slack(document: Mapping[str, Any]) -> dict[str, Any]:
    """A Slack incoming-webhook message built from the generic payload."""
    request, agent = document["request"], document["agent"]
    where = f"{request['namespace']}/{request['name']}"
    capabilities = ", ".join(document["capabilities"])
    # Names, namespaces and capabilities are validated formats, but escape them all the same.
    text = slack_escape(f"{document['title']}: {where} ({agent['name']} wants {capabilities})")
    fields = [
        _field("Agent", slack_escape(f"{agent['name']} ({agent.get('id') or 'no agent ID'})")),
        _field("Capabilities", slack_escape(capabilities)),
        _field("Duration", slack_escape(str(document["duration"]))),
        _field("Request", slack_escape(where)),
    ]
    if document.get("expiresAt") and document["type"] == "accessrequest.pending":
        fields.append(_field("Decide by", slack_escape(document["expiresAt"])))
    if document.get("grantedUntil"):
        fields.append(_field("Access until", slack_escape(document["grantedUntil"])))
    blocks: list[dict[str, Any]] = [
        {"type": "header", "text": {"type": "plain_text", "text": document["title"]}},
        {"type": "section", "fields": fields},
        {
            "type": "section",
            "text": {
                "type": "plain_text",
                "emoji": False,
                "text": "Justification (written by the agent, unverified): "
                + (document["justification"] or "-"),
            },
        },
    ]
    if document["context"]:
        context = "; ".join(f"{key}={value}" for key, value in document["context"].items())
        blocks.append(
            {
                "type": "section",
                "text": {
                    "type": "plain_text",
                    "emoji": False,
                    "text": f"Context (from the agent): {context}",
                },
            }
        )
    decision = document.get("decision")
    if decision:
        said = decision.get("reason") or "; ".join(decision.get("comments") or [])
        blocks.append(
            {
                "type": "section",
                "text": {
                    "type": "plain_text",
                    "emoji": False,
                    "text": f"{decision['outcome']} by {', '.join(decision['by'])}"
                    + (f": {said}" if said else ""),
                },
            }
        )
    commands = document.get("commands") or {}
    if commands:
        blocks.append(
            {
                "type": "section",
                "text": {
                    "type": "mrkdwn",
                    "text": f"Approve: `{slack_escape(commands['approve'])}`\n"
                    f"Deny: `{slack_escape(commands['deny'])}`",
                },
            }
        )
    return {"text": text, "blocks": blocks}
