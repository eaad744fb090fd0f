"""Strict JSON for untrusted input: RFC 8259 only, finite numbers, no RecursionError."""

from __future__ import annotations

import pytest

from agentauth.domain import strictjson


def test_ordinary_json_parses() -> None:
    assert strictjson.loads(b'{"exp": 1.5, "n": [1, 2], "s": "x"}') == {
        "exp": 1.5,
        "n": [1, 2],
        "s": "x",
    }


@pytest.mark.parametrize(
    ("document", "message"),
    [
        ('{"exp": NaN}', "NaN is not valid JSON"),
        ('{"exp": Infinity}', "Infinity is not valid JSON"),
        ('{"exp": -Infinity}', "-Infinity is not valid JSON"),
        ('{"exp": 1e999}', "number 1e999 is out of range"),
        ("[" * 100_000 + "]" * 100_000, "JSON is nested too deeply"),
    ],
)
def test_non_rfc_json_is_a_value_error(document: str, message: str) -> None:
    with pytest.raises(ValueError) as caught:
        strictjson.loads(document)
    assert str(caught.value) == message
