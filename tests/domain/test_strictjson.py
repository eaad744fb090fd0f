"""Strict JSON for untrusted input: RFC 8259 only, finite numbers, no RecursionError."""

from __future__ import annotations

import concurrent.futures
import json

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


@pytest.mark.parametrize(
    "document",
    [
        '{"a": [1, 2.5, "x", true, null], "b": {"c": -0.0}}',
        b'{"utf8": "\xc3\xa9"}',
        '{"utf16": "é"}'.encode("utf-16"),
        '{"utf32": "é"}'.encode("utf-32-le"),
        bytearray(b"[1, 2]"),
        '"\\ud83d\\ude00"',
    ],
)
def test_documents_decode_exactly_as_json_loads_decodes_them(document: str | bytes) -> None:
    assert strictjson.loads(document) == json.loads(document)


@pytest.mark.parametrize(
    ("document", "error", "message"),
    [
        ('\ufeff{"a": 1}', ValueError, "Unexpected UTF-8 BOM (decode using utf-8-sig)"),
        (b'{"a": "\xff"}', ValueError, "'utf-8' codec can't decode byte 0xff in position 7"),
        ("", ValueError, "Expecting value"),
        ('{"a": 1} x', ValueError, "Extra data"),
        (12, TypeError, "JSON document must be str or bytes, not int"),
    ],
)
def test_what_json_loads_refuses_is_refused_with_its_message(
    document: object, error: type[Exception], message: str
) -> None:
    with pytest.raises(error) as caught:
        strictjson.loads(document)  # type: ignore[arg-type]
    assert str(caught.value).startswith(message)
    if isinstance(document, str | bytes):
        with pytest.raises(error) as expected:
            json.loads(document)
        assert str(caught.value) == str(expected.value)


def test_the_shared_decoder_serves_concurrent_threads() -> None:
    documents = [json.dumps({"n": n, "xs": list(range(n % 50))}) for n in range(400)]
    with concurrent.futures.ThreadPoolExecutor(max_workers=8) as pool:
        decoded = list(pool.map(strictjson.loads, documents))
    assert decoded == [json.loads(d) for d in documents]
