"""Which grants may select an Agent, and which Agents a grant may select, from the informers'
indices: no reconcile scans a namespace's Agents or grants.

Guarantees:
- :func:`candidate_grants` returns every grant that selects the Agent (by name or by labels),
  and :func:`candidate_agents` every Agent the grant selects; both may return more (the caller
  still applies :func:`agentauth.domain.capabilities.grant_selects`), never fewer. Cost follows
  the number of candidates, not the size of the namespace.
- How: Agents are indexed by each label, as (namespace, key, value) and (namespace, key, ANY).
  A selector grant is indexed under *anchors*, label pairs one of which every Agent it matches
  must carry: a ``matchLabels`` entry, else the values of an ``In`` expression, else the key of an
  ``Exists`` expression. A selector with no anchor (only ``NotIn``/``DoesNotExist``, or empty, or
  malformed) is filed under (namespace, ANY, ANY): a candidate for every Agent of its namespace.
- The indices read raw bodies, so a grant that does not parse is still indexed (it then selects
  nothing when parsed) and nothing here raises on a malformed spec.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from typing import Any

from agentauth.controller import informers

# Informer names (runtime.Controller.informers) and their indices.
AGENTS = "agents"
SERVICE_ACCOUNTS = "serviceaccounts"
GRANTS = "capabilitygrants"
BY_NAMESPACE = "namespace"  # namespace -> its Agents (grants: its grants)
BY_SERVICE_ACCOUNT = "serviceaccount"  # Agents: (namespace, serviceAccountName)
BY_LABEL = "label"  # Agents: (namespace, key, value) and (namespace, key, ANY)
BY_AGENT = "agent"  # grants: (namespace, agent name) for each name in spec.agents.names
BY_ANCHOR = "anchor"  # grants: (namespace, key, value | ANY) or (namespace, ANY, ANY)

ANY = ("*",)  # not a string, so no label key or value can equal it

Body = Mapping[str, Any]


def namespace_of(body: Body) -> str:
    return str((body.get("metadata") or {}).get("namespace") or "")


def name_of(body: Body) -> str:
    return str((body.get("metadata") or {}).get("name") or "")


def _labels(body: Body) -> dict[str, str]:
    labels = (body.get("metadata") or {}).get("labels")
    if not isinstance(labels, Mapping):
        return {}
    return {str(k): str(v) for k, v in labels.items()}


def _selection(body: Body) -> Mapping[str, Any]:
    spec = body.get("spec")
    selection = spec.get("agents") if isinstance(spec, Mapping) else None
    return selection if isinstance(selection, Mapping) else {}


def named_agents(body: Body) -> set[str]:
    """The Agent names a grant lists in ``spec.agents.names``."""
    names = _selection(body).get("names")
    return {str(n) for n in names} if isinstance(names, list) else set()


def has_selector(body: Body) -> bool:
    return _selection(body).get("selector") is not None


# --- indexers ----------------------------------------------------------------------------------


def in_namespace(body: Body) -> list[Hashable]:
    return [namespace_of(body)]


def agent_service_account(body: Body) -> list[Hashable]:
    spec = body.get("spec")
    account = spec.get("serviceAccountName") if isinstance(spec, Mapping) else None
    return [(namespace_of(body), str(account))] if account else []


def agent_labels(body: Body) -> list[Hashable]:
    namespace = namespace_of(body)
    keys: list[Hashable] = []
    for key, value in _labels(body).items():
        keys += [(namespace, key, value), (namespace, key, ANY)]
    return keys


def grant_names(body: Body) -> list[Hashable]:
    namespace = namespace_of(body)
    return [(namespace, name) for name in sorted(named_agents(body))]


def anchors(selector: Any) -> list[tuple[str, Any]] | None:
    """(key, value or ANY) pairs one of which every Agent ``selector`` matches carries; None
    when there are none (see module guarantees)."""
    if not isinstance(selector, Mapping):
        return None
    match_labels = selector.get("matchLabels")
    if isinstance(match_labels, Mapping) and match_labels:
        key = min(str(k) for k in match_labels)
        return [(key, str(match_labels[key]))]
    expressions = selector.get("matchExpressions")
    exists: list[tuple[str, Any]] | None = None
    for expression in expressions if isinstance(expressions, list) else []:
        if not isinstance(expression, Mapping):
            continue
        key, operator = str(expression.get("key")), expression.get("operator")
        values = expression.get("values")
        if operator == "In" and isinstance(values, list) and values:
            return [(key, str(value)) for value in values]
        if operator == "Exists" and exists is None:
            exists = [(key, ANY)]
    return exists


def grant_anchors(body: Body) -> list[Hashable]:
    if not has_selector(body):
        return []
    namespace = namespace_of(body)
    found = anchors(_selection(body).get("selector"))
    if found is None:
        return [(namespace, ANY, ANY)]
    return [(namespace, key, value) for key, value in found]


# --- lookups -----------------------------------------------------------------------------------


def candidate_grants(grants: informers.Informer, agent: Body) -> list[dict[str, Any]]:
    """Every grant that may select ``agent`` (see module guarantees), each once."""
    namespace, name = namespace_of(agent), name_of(agent)
    anchored: list[Hashable] = [(namespace, ANY, ANY)]
    for label, value in _labels(agent).items():
        anchored += [(namespace, label, value), (namespace, label, ANY)]
    found = {name_of(body): body for body in grants.by(BY_AGENT, (namespace, name))}
    for anchor in anchored:
        for body in grants.by(BY_ANCHOR, anchor):
            found[name_of(body)] = body
    return list(found.values())


def candidate_agents(agents: informers.Informer, grant: Body) -> list[dict[str, Any]]:
    """Every Agent ``grant`` may select (see module guarantees), each once."""
    namespace = namespace_of(grant)
    found: dict[str, dict[str, Any]] = {}
    for name in sorted(named_agents(grant)):
        body = agents.get(namespace, name)
        if body is not None:
            found[name] = body
    if has_selector(grant):
        pairs = anchors(_selection(grant).get("selector"))
        if pairs is None:
            bodies = agents.by(BY_NAMESPACE, namespace)
        else:
            bodies = [
                body
                for key, value in pairs
                for body in agents.by(BY_LABEL, (namespace, key, value))
            ]
        for body in bodies:
            found[name_of(body)] = body
    return list(found.values())
