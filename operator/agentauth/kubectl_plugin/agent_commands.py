"""``kubectl agentauth suspend|resume|capabilities AGENT``.

Guarantees:
- ``suspend``/``resume`` change only ``spec.suspended`` (a JSON merge patch), print what it means
  for the agent's tokens, and say so when the agent already was in that state (exit 0).
- ``capabilities`` shows what the agent would get now and why: each effective capability from the
  Agent's status with its source grant, approval mode and grant expiry, and for capabilities that
  need approval the approved requests still in force (with their end) and the pending ones. It
  reads only what ``kubectl get`` could (agents, capabilitygrants, accessrequests), and works out
  nothing the controller did not already decide: a suspended or not-Ready agent is reported as
  getting nothing.
"""

from __future__ import annotations

import argparse
import datetime
from collections.abc import Callable
from typing import Any

from agentauth.domain import capabilities as domain_capabilities
from agentauth.domain.models import common
from agentauth.kubectl_plugin import commands, output
from agentauth.kubectl_plugin.errors import PluginError

Command = Callable[..., argparse.ArgumentParser]


def add_commands(command: Command) -> None:
    suspend = command(
        "suspend",
        cmd_suspend,
        "stop issuing tokens to an agent (spec.suspended=true)",
    )
    suspend.add_argument("agent", help="the Agent name")
    resume = command("resume", cmd_resume, "issue tokens to a suspended agent again")
    resume.add_argument("agent", help="the Agent name")
    capabilities = command(
        "capabilities",
        cmd_capabilities,
        "what an agent would get now, and why (grants, approvals, expiry)",
    )
    capabilities.add_argument("agent", help="the Agent name")
    capabilities.add_argument("-o", "--output", choices=["json", "yaml"], help="print JSON or YAML")


def get_agent(ctx: commands.Context, name: str) -> dict[str, Any]:
    agent: dict[str, Any] = ctx.call(
        ctx.custom().get_namespaced_custom_object,
        common.GROUP,
        common.VERSION,
        ctx.namespace,
        "agents",
        name,
        action="read",
        what=f"agent {name!r}",
        namespace=ctx.namespace,
    )
    return agent


def _set_suspended(ctx: commands.Context, *, suspended: bool) -> int:
    name = ctx.options.agent
    agent = get_agent(ctx, name)
    where = f"agent {ctx.namespace}/{name}"
    if bool((agent.get("spec") or {}).get("suspended")) == suspended:
        ctx.print(f"{where} is already {'suspended' if suspended else 'active (not suspended)'}")
        return 0
    ctx.call(
        ctx.custom().patch_namespaced_custom_object,
        common.GROUP,
        common.VERSION,
        ctx.namespace,
        "agents",
        name,
        {"spec": {"suspended": suspended}},
        action="suspend" if suspended else "resume",
        what=f"agent {name!r}",
        namespace=ctx.namespace,
    )
    if suspended:
        ctx.print(f"{where} suspended")
        ctx.note(
            "the token service now refuses its exchanges and introspection reports its tokens "
            f"inactive; undo with: kubectl agentauth resume {name} -n {ctx.namespace}"
        )
    else:
        ctx.print(f"{where} resumed: it can exchange tokens again")
    return 0


def cmd_suspend(ctx: commands.Context) -> int:
    return _set_suspended(ctx, suspended=True)


def cmd_resume(ctx: commands.Context) -> int:
    return _set_suspended(ctx, suspended=False)


def _list(ctx: commands.Context, plural: str) -> list[dict[str, Any]]:
    result = ctx.call(
        ctx.custom().list_namespaced_custom_object,
        common.GROUP,
        common.VERSION,
        ctx.namespace,
        plural,
        action="list",
        what=plural,
        namespace=ctx.namespace,
    )
    items: list[dict[str, Any]] = result.get("items", [])
    return items


def _in_force(request: dict[str, Any], *, now: datetime.datetime) -> bool:
    status = request.get("status") or {}
    until = output.parse_time(status.get("grantedUntil"))
    return status.get("phase") == "Approved" and until is not None and until > now


def capability_report(
    agent: dict[str, Any],
    *,
    grants: list[dict[str, Any]],
    requests: list[dict[str, Any]],
    now: datetime.datetime,
) -> dict[str, Any]:
    """What ``agent`` would get now, one entry per effective capability (pure; for tests too)."""
    meta, spec, status = agent["metadata"], agent.get("spec") or {}, agent.get("status") or {}
    name = meta["name"]
    ready: dict[str, Any] = next(
        (c for c in status.get("conditions") or [] if c.get("type") == "Ready"), {}
    )
    by_grant = {g["metadata"]["name"]: g for g in grants}
    mine = [r for r in requests if (r.get("spec") or {}).get("agent") == name]
    entries = []
    for capability in status.get("capabilities") or []:
        pattern = capability.get("name", "")
        grant = by_grant.get(capability.get("grant", ""), {})
        approvers = (grant.get("spec") or {}).get("approvers") or {}

        def covers(request: dict[str, Any], pattern: str = pattern) -> bool:
            return any(
                domain_capabilities.pattern_matches(pattern, wanted)
                for wanted in (request.get("spec") or {}).get("capabilities") or []
            )

        approved = [
            {
                "request": r["metadata"]["name"],
                "capabilities": r["spec"].get("capabilities", []),
                "until": r["status"]["grantedUntil"],
            }
            for r in mine
            if covers(r) and _in_force(r, now=now)
        ]
        pending = [
            r["metadata"]["name"]
            for r in mine
            if covers(r) and (r.get("status") or {}).get("phase") in ("Pending", None)
        ]
        entries.append(
            {
                "name": pattern,
                "grant": capability.get("grant", ""),
                "approval": capability.get("approval", ""),
                "maxDuration": capability.get("maxDuration"),
                "grantExpiresAt": capability.get("expiresAt"),
                "approvers": {
                    "users": approvers.get("users") or [],
                    "groups": approvers.get("groups") or [],
                    "minApprovals": approvers.get("minApprovals", 1),
                },
                "approved": approved,
                "pending": pending,
            }
        )
    return {
        "agent": name,
        "namespace": meta.get("namespace", ""),
        "agentID": status.get("agentID"),
        "suspended": bool(spec.get("suspended")),
        "ready": ready.get("status", "Unknown"),
        "reason": ready.get("reason", ""),
        "message": ready.get("message", ""),
        "capabilities": entries,
    }


def _now_text(entry: dict[str, Any], *, now: datetime.datetime) -> str:
    if entry["approval"] == "Automatic":
        return "in every token"
    if entry["approved"]:
        latest = max(entry["approved"], key=lambda a: a["until"])
        return (
            f"approved until {latest['until']} ({output.until(latest['until'], now=now)}, "
            f"request {latest['request']})"
        )
    approvers = entry["approvers"]
    who = ", ".join(approvers["users"] + [f"group {g}" for g in approvers["groups"]])
    needed = f"{approvers['minApprovals']} approval(s)" + (f" from {who}" if who else "")
    if entry["pending"]:
        return f"pending: {', '.join(entry['pending'])} (needs {needed})"
    return f"needs a request and {needed}"


def cmd_capabilities(ctx: commands.Context) -> int:
    agent = get_agent(ctx, ctx.options.agent)
    report = capability_report(
        agent,
        grants=_list(ctx, "capabilitygrants"),
        requests=_list(ctx, "accessrequests"),
        now=ctx.now,
    )
    if ctx.options.output:
        output.dump(report, fmt=ctx.options.output, stream=ctx.stdout)
        return 0
    ctx.print(f"Agent:     {report['namespace']}/{report['agent']}")
    ctx.print(f"Agent ID:  {report['agentID'] or '<not reconciled yet>'}")
    ctx.print(f"Ready:     {report['ready']} ({report['reason']})")
    if report["suspended"]:
        ctx.print("Suspended: yes: the token service issues this agent nothing until it is resumed")
    elif report["ready"] != "True":
        ctx.print(f"           {report['message']}")
        ctx.print("           it gets no token until it is Ready")
    if not report["capabilities"]:
        raise PluginError(
            f"agent {report['namespace']}/{report['agent']} has no capabilities: no active "
            "CapabilityGrant selects it (kubectl get capabilitygrants -n "
            f"{report['namespace']}; kubectl describe agent {report['agent']} -n "
            f"{report['namespace']})"
        )
    rows = [
        [
            entry["name"],
            entry["grant"],
            entry["approval"],
            entry["grantExpiresAt"] or "-",
            _now_text(entry, now=ctx.now),
        ]
        for entry in report["capabilities"]
    ]
    ctx.print("")
    ctx.print(
        output.table(
            ["CAPABILITY", "GRANT", "APPROVAL", "GRANT EXPIRES", "NOW"],
            rows,
            width=output.terminal_width(),
            flexible="NOW",
        )
    )
    return 0
