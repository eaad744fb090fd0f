"""Candidate lookups between Agents and grants (``controller/selection.py``): never fewer than the
grants that select an Agent (or the Agents a grant selects), and no namespace scan for
selectors that name a label.

Real here: the informers' own mirrors and indices, filled through ``Informer.apply`` exactly as a
watch event fills them (no API server needed for the indexing), and the domain's selector
semantics (``LabelSelector.matches``) as the oracle. Hypothesis draws the labels and selectors.
"""

from __future__ import annotations

from typing import Any, cast

from hypothesis import given, settings
from hypothesis import strategies as st

from agentauth.controller import informers, selection
from agentauth.domain.models import common
from agentauth.kube import client as kube

NAMESPACE = "ns"
KEYS = st.sampled_from(["team", "tier", "pair"])
VALUES = st.sampled_from(["a", "b", "c"])


def mirrors() -> tuple[informers.Informer, informers.Informer]:
    api = cast(Any, None)  # apply() never calls the API
    agents = informers.Informer(
        api,
        kube.AGENTS,
        indexers={
            selection.BY_NAMESPACE: selection.in_namespace,
            selection.BY_LABEL: selection.agent_labels,
        },
    )
    grants = informers.Informer(
        api,
        kube.CAPABILITY_GRANTS,
        indexers={
            selection.BY_NAMESPACE: selection.in_namespace,
            selection.BY_AGENT: selection.grant_names,
            selection.BY_ANCHOR: selection.grant_anchors,
        },
    )
    return agents, grants


def agent(name: str, labels: dict[str, str], namespace: str = NAMESPACE) -> dict[str, Any]:
    return {"metadata": {"name": name, "namespace": namespace, "labels": labels}, "spec": {}}


def grant(
    name: str, *, names: list[str] | None = None, selector: Any = None, namespace: str = NAMESPACE
) -> dict[str, Any]:
    agents: dict[str, Any] = {}
    if names:
        agents["names"] = names
    if selector is not None:
        agents["selector"] = selector
    return {"metadata": {"name": name, "namespace": namespace}, "spec": {"agents": agents}}


requirements = st.one_of(
    st.builds(
        lambda k, op, vs: {"key": k, "operator": op, "values": vs},
        KEYS,
        st.sampled_from(["In", "NotIn"]),
        st.lists(VALUES, min_size=1, max_size=2, unique=True),
    ),
    st.builds(
        lambda k, op: {"key": k, "operator": op}, KEYS, st.sampled_from(["Exists", "DoesNotExist"])
    ),
)
selectors = st.builds(
    lambda labels, expressions: {
        **({"matchLabels": labels} if labels else {}),
        **({"matchExpressions": expressions} if expressions else {}),
    },
    st.dictionaries(KEYS, VALUES, max_size=2),
    st.lists(requirements, max_size=2),
)
label_sets = st.dictionaries(KEYS, VALUES, max_size=3)


def selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    return common.LabelSelector.model_validate(selector).matches(labels)


@settings(max_examples=300, deadline=None)
@given(
    agent_labels=st.lists(label_sets, min_size=1, max_size=6),
    chosen=st.lists(selectors, max_size=6),
)
def test_candidates_include_every_selecting_pair(
    agent_labels: list[dict[str, str]], chosen: list[dict[str, Any]]
) -> None:
    agents, grants = mirrors()
    for index, labels in enumerate(agent_labels):
        agents.apply("ADDED", agent(f"a{index}", labels))
    for index, selector in enumerate(chosen):
        grants.apply("ADDED", grant(f"g{index}", selector=selector))
    for a_index, labels in enumerate(agent_labels):
        body = agents.get(NAMESPACE, f"a{a_index}")
        assert body is not None
        found = {selection.name_of(g) for g in selection.candidate_grants(grants, body)}
        for g_index, selector in enumerate(chosen):
            if selects(selector, labels):
                assert f"g{g_index}" in found
    for g_index, selector in enumerate(chosen):
        body = grants.get(NAMESPACE, f"g{g_index}")
        assert body is not None
        found = {selection.name_of(a) for a in selection.candidate_agents(agents, body)}
        for a_index, labels in enumerate(agent_labels):
            if selects(selector, labels):
                assert f"a{a_index}" in found


def test_a_selector_naming_a_label_finds_only_agents_with_it() -> None:
    agents, grants = mirrors()
    for index in range(100):
        agents.apply("ADDED", agent(f"a{index}", {"pair": f"p{index // 2}"}))
    agents.apply("ADDED", agent("a0", {"pair": "p0"}, namespace="other"))
    by_labels = grant("g", selector={"matchLabels": {"pair": "p7"}})
    by_in = grant(
        "h",
        selector={"matchExpressions": [{"key": "pair", "operator": "In", "values": ["p1", "p2"]}]},
    )
    for body in (by_labels, by_in):
        grants.apply("ADDED", body)
    assert sorted(selection.name_of(a) for a in selection.candidate_agents(agents, by_labels)) == [
        "a14",
        "a15",
    ]
    assert sorted(selection.name_of(a) for a in selection.candidate_agents(agents, by_in)) == [
        "a2",
        "a3",
        "a4",
        "a5",
    ]
    a14 = agents.get(NAMESPACE, "a14")
    assert a14 is not None
    assert [selection.name_of(g) for g in selection.candidate_grants(grants, a14)] == ["g"]


def test_names_and_selectors_without_anchor() -> None:
    """A grant naming Agents finds them by name; a selector with only NotIn is a candidate for
    every Agent of its namespace, and only there; a malformed selector never raises."""
    agents, grants = mirrors()
    agents.apply("ADDED", agent("one", {}))
    agents.apply("ADDED", agent("two", {"team": "x"}))
    agents.apply("ADDED", agent("three", {}, namespace="other"))
    named = grant("named", names=["one", "missing"])
    negative = grant(
        "negative",
        selector={"matchExpressions": [{"key": "team", "operator": "NotIn", "values": ["y"]}]},
    )
    malformed = grant("malformed", selector={"matchLabels": "not-a-map", "matchExpressions": 3})
    for body in (named, negative, malformed):
        grants.apply("ADDED", body)
    assert [selection.name_of(a) for a in selection.candidate_agents(agents, named)] == ["one"]
    assert sorted(selection.name_of(a) for a in selection.candidate_agents(agents, negative)) == [
        "one",
        "two",
    ]
    one = agents.get(NAMESPACE, "one")
    three = agents.get("other", "three")
    assert one is not None and three is not None
    assert sorted(selection.name_of(g) for g in selection.candidate_grants(grants, one)) == [
        "malformed",
        "named",
        "negative",
    ]
    assert selection.candidate_grants(grants, three) == []
    grants.apply("DELETED", negative)
    assert sorted(selection.name_of(g) for g in selection.candidate_grants(grants, one)) == [
        "malformed",
        "named",
    ]
