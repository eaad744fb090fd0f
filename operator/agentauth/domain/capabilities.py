"""Capability names, wildcard matching and an Agent's effective capabilities.

Guarantees: :func:`effective_capabilities` is the one definition of what an Agent holds, used by
the controller (for status) and the token service (for tokens), so both always agree. A grant
applies only in its own namespace, only while it has not expired, and only to Agents it selects
by name or label selector. When several grants give the same capability, ``Automatic`` wins over
``Required`` (the least friction an admin has already granted) and, between equal modes, the
grant whose name sorts first is reported, so the result is deterministic.
"""

from __future__ import annotations

import datetime
import re
from collections.abc import Iterable

from agentauth.domain.models import agents, common, grants

_CAPABILITY = re.compile(common.CAPABILITY_PATTERN)


def is_capability_name(name: str) -> bool:
    """Whether ``name`` is a concrete capability name (no wildcard)."""
    return _CAPABILITY.match(name) is not None


def pattern_matches(pattern: str, capability: str) -> bool:
    """Whether a granted ``pattern`` (``document.read`` or ``document.*``) covers ``capability``.

    ``document.*`` covers ``document.read`` and ``document.folder.read`` but not ``document``.
    """
    if pattern.endswith(".*"):
        return capability.startswith(pattern[:-1]) and len(capability) > len(pattern) - 1
    return pattern == capability


def grant_is_active(grant: grants.CapabilityGrant, *, now: datetime.datetime) -> bool:
    """Whether ``grant`` still applies at ``now`` (it has no ``expiresAt`` or that is later)."""
    expires_at = grant.spec.expires_at
    return expires_at is None or _aware(expires_at) > now


def grant_selects(grant: grants.CapabilityGrant, agent: agents.Agent) -> bool:
    """Whether ``grant`` selects ``agent``: same namespace, and by name or by label selector."""
    if grant.metadata.namespace != agent.metadata.namespace:
        return False
    selection = grant.spec.agents
    if agent.metadata.name in selection.names:
        return True
    return selection.selector is not None and selection.selector.matches(agent.metadata.labels)


def effective_capabilities(
    agent: agents.Agent,
    all_grants: Iterable[grants.CapabilityGrant],
    *,
    now: datetime.datetime,
) -> list[agents.EffectiveCapability]:
    """Every capability ``agent`` holds at ``now``, sorted by name, one entry per name."""
    best: dict[str, agents.EffectiveCapability] = {}
    for grant in sorted(all_grants, key=lambda item: item.metadata.name or ""):
        if grant.metadata.deletion_timestamp is not None:
            continue
        if not grant_is_active(grant, now=now) or not grant_selects(grant, agent):
            continue
        for capability in grant.spec.capabilities:
            candidate = agents.EffectiveCapability(
                name=capability.name,
                grant=grant.metadata.name or "",
                approval=capability.approval,
                max_duration=capability.max_duration,
                expires_at=grant.spec.expires_at,
            )
            current = best.get(capability.name)
            if current is None or (
                current.approval == "Required" and candidate.approval == "Automatic"
            ):
                best[capability.name] = candidate
    return [best[name] for name in sorted(best)]


def find(
    held: Iterable[agents.EffectiveCapability], capability: str
) -> agents.EffectiveCapability | None:
    """The held entry that covers the concrete ``capability``, preferring an ``Automatic`` one."""
    matches = [entry for entry in held if pattern_matches(entry.name, capability)]
    if not matches:
        return None
    matches.sort(key=lambda entry: (entry.approval != "Automatic", entry.name != capability))
    return matches[0]


def next_expiry(
    all_grants: Iterable[grants.CapabilityGrant], *, now: datetime.datetime
) -> datetime.datetime | None:
    """The earliest future ``expiresAt`` among ``all_grants``, for scheduling a re-check."""
    upcoming = [
        _aware(grant.spec.expires_at)
        for grant in all_grants
        if grant.spec.expires_at is not None and _aware(grant.spec.expires_at) > now
    ]
    return min(upcoming) if upcoming else None


def agent_id(*, name: str, namespace: str, trust_domain: str) -> str:
    """The agent identifier (token ``sub``): ``aauth:<name>.<namespace>@<trust-domain>``."""
    return f"aauth:{name}.{namespace}@{trust_domain}"


def _aware(moment: datetime.datetime) -> datetime.datetime:
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=datetime.UTC)
