"""Label and field selector parsing and matching."""

from __future__ import annotations

import pytest

from agentauth.devcluster import selectors


@pytest.mark.parametrize(
    ("selector", "labels", "expected"),
    [
        ("a=b", {"a": "b"}, True),
        ("a==b", {"a": "c"}, False),
        ("a!=b", {}, True),
        ("a in (x, y)", {"a": "y"}, True),
        ("a notin (x)", {"a": "x"}, False),
        ("a", {"a": ""}, True),
        ("!a", {"a": "1"}, False),
        ("app.kubernetes.io/name=web,tier", {"app.kubernetes.io/name": "web", "tier": "1"}, True),
    ],
)
def test_label_selectors(selector: str, labels: dict[str, str], expected: bool) -> None:
    requirements = selectors.parse_labels(selector)
    assert all(r.matches(labels) for r in requirements) is expected


def test_malformed_label_selector() -> None:
    with pytest.raises(selectors.SelectorError) as raised:
        selectors.parse_labels("a=b c")
    assert str(raised.value) == "unable to parse requirement: found 'c', expected: ','"


def test_field_selectors_on_any_path() -> None:
    event = {
        "metadata": {"name": "e", "namespace": "n"},
        "involvedObject": {"name": "w1", "kind": "Widget"},
    }
    f = selectors.make_filter(None, "", "involvedObject.name=w1,metadata.namespace!=x")
    assert f.matches(event)
    assert not selectors.make_filter("other", "", "").matches(event)
    with pytest.raises(selectors.SelectorError) as raised:
        selectors.parse_fields("nonsense")
    assert str(raised.value) == "invalid selector: 'nonsense'; can't understand 'nonsense'"


def test_label_selector_objects() -> None:
    selector = {
        "matchLabels": {"a": "1"},
        "matchExpressions": [{"key": "b", "operator": "In", "values": ["x"]}],
    }
    assert selectors.matches_label_selector(selector, {"a": "1", "b": "x"})
    assert not selectors.matches_label_selector(selector, {"a": "1"})
    assert not selectors.matches_label_selector(
        {"matchExpressions": [{"key": "b", "operator": "Bogus"}]}, {"b": "x"}
    )
