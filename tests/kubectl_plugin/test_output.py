"""Tables that fit the terminal, ages and time-left strings."""

from __future__ import annotations

import datetime

from agentauth.kubectl_plugin import output

NOW = datetime.datetime(2026, 11, 28, 12, 0, tzinfo=datetime.UTC)


def test_table_fits_width_by_shrinking_the_flexible_column() -> None:
    rows = [
        ["buyer-x7k2q", "Pending", "Pay invoice INV-42 of 120 EUR to ACME Corp, due today " * 3]
    ]
    text = output.table(
        ["NAME", "PHASE", "JUSTIFICATION"], rows, width=60, flexible="JUSTIFICATION"
    )
    lines = text.splitlines()
    assert all(len(line) <= 60 for line in lines)
    assert lines[0].split() == ["NAME", "PHASE", "JUSTIFICATION"]
    assert lines[1].startswith("buyer-x7k2q   Pending   Pay invoice")
    assert lines[1].endswith("...")


def test_table_keeps_short_content_whole() -> None:
    text = output.table(["A", "B"], [["x", "multi\nline"]], width=80)
    assert text.splitlines() == ["A   B", "x   multi line"]


def test_age_and_until() -> None:
    assert output.age("2026-11-28T11:59:15Z", now=NOW) == "45s"
    assert output.age("2026-11-28T11:48:00Z", now=NOW) == "12m"
    assert output.age("2026-11-28T09:00:00Z", now=NOW) == "3h"
    assert output.age("2026-11-25T12:00:00Z", now=NOW) == "3d"
    assert output.age(None, now=NOW) == "<unknown>"
    assert output.until("2026-11-28T12:09:00Z", now=NOW) == "in 9m"
    assert output.until("2026-11-28T11:55:00Z", now=NOW) == "5m ago"
    assert output.until(None, now=NOW) == "-"
