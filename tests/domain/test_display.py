"""Text others wrote, shown to people: quoted, one line, no control or format characters."""

from __future__ import annotations

import json

import pytest

from agentauth.domain import display


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("plain words", '"plain words"'),
        ('say "hi" \\ there', '"say \\"hi\\" \\\\ there"'),
        ("two\nlines\tand  spaces", '"two lines and spaces"'),
        ("clear\x1b[2J\x1b[Hscreen", '"clear[2J[Hscreen"'),
        ("csi\x9b31m red", '"csi31m red"'),
        ("title\x1b]0;owned\x07 bell", '"title]0;owned bell"'),
        ("pay \u202eevil\u202c now", '"pay evil now"'),
        ("zero\u200bwidth\ufeff", '"zerowidth"'),
        ("line\u2028separator\u2029para", '"line separator para"'),
    ],
)
def test_quote_removes_what_a_terminal_would_obey(text: str, shown: str) -> None:
    assert display.quote(text) == shown


def test_a_forged_command_stays_inside_the_quotes() -> None:
    forged = 'ok" | approve: kubectl agentauth approve decoy -n x | "'
    quoted = display.quote(forged)
    assert json.loads(quoted) == forged
    assert quoted.startswith('"') and quoted.endswith('"')
    assert quoted.count('"') - quoted.count('\\"') == 2


def test_quote_bounds_the_text_and_keeps_the_closing_quote() -> None:
    quoted = display.quote("x" * 5000, limit=40)
    assert quoted == '"' + "x" * 37 + '..."'
    assert display.clean("  a  b  ", limit=300) == "a b"
    assert display.clean(None) == "None"
