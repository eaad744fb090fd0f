"""Output for people and for scripts: tables that fit the terminal, ages, JSON and YAML.

Guarantees: :func:`table` never prints a line wider than the given width when the fixed
columns fit; it shrinks the column marked ``flexible`` (and then the widest others) with a
trailing ``...``, like kubectl's own wide columns. ``-o json`` and ``-o yaml`` print the API
objects unchanged, so scripts see exactly what the API server returned.
"""

from __future__ import annotations

import datetime
import json
import shutil
from collections.abc import Sequence
from typing import Any, TextIO

import yaml

from agentauth.domain import display

ELLIPSIS = "..."
COLUMN_GAP = 3
MIN_COLUMN = 8


def terminal_width() -> int:
    """The terminal width (``COLUMNS`` wins), 120 when output is not a terminal."""
    return shutil.get_terminal_size(fallback=(120, 24)).columns


def table(
    headers: Sequence[str],
    rows: Sequence[Sequence[str]],
    *,
    width: int,
    flexible: str | None = None,
) -> str:
    """Render ``rows`` under ``headers`` in at most ``width`` columns where possible."""
    cells = [[_one_line(cell) for cell in row] for row in rows]
    widths = [len(header) for header in headers]
    for row in cells:
        for index, cell in enumerate(row):
            widths[index] = max(widths[index], len(cell))
    total = sum(widths) + COLUMN_GAP * (len(widths) - 1)
    order = list(range(len(headers)))
    if flexible is not None and flexible in headers:
        flex_index = headers.index(flexible)
        order.remove(flex_index)
        order.insert(0, flex_index)
    else:
        order.sort(key=lambda index: -widths[index])
    for index in order:
        if total <= width:
            break
        floor = max(MIN_COLUMN, len(headers[index]))
        shrink = min(total - width, widths[index] - floor)
        if shrink > 0:
            widths[index] -= shrink
            total -= shrink
    lines = []
    for row in [list(headers), *cells]:
        padded = [_fit(cell, widths[index]) for index, cell in enumerate(row)]
        lines.append((" " * COLUMN_GAP).join(padded).rstrip())
    return "\n".join(lines)


def _fit(cell: str, width: int) -> str:
    if len(cell) > width:
        cell = cell[: max(0, width - len(ELLIPSIS))] + ELLIPSIS
    return cell.ljust(width)


def _one_line(text: str) -> str:
    # Cells may hold text others wrote (Event messages, justifications): never a control
    # character or terminal escape sequence on the user's terminal.
    return display.clean(text, limit=4096)


def age(moment: datetime.datetime | str | None, *, now: datetime.datetime) -> str:
    """A kubectl-style age: ``45s``, ``12m``, ``3h``, ``2d``; ``<unknown>`` if missing."""
    parsed = parse_time(moment)
    if parsed is None:
        return "<unknown>"
    return short_duration(now - parsed)


def until(moment: datetime.datetime | str | None, *, now: datetime.datetime) -> str:
    """Time left until ``moment``: ``in 9m``, or ``5m ago`` once it has passed."""
    parsed = parse_time(moment)
    if parsed is None:
        return "-"
    if parsed >= now:
        return f"in {short_duration(parsed - now)}"
    return f"{short_duration(now - parsed)} ago"


def short_duration(delta: datetime.timedelta) -> str:
    seconds = max(0, int(delta.total_seconds()))
    if seconds < 120:
        return f"{seconds}s"
    if seconds < 2 * 3600:
        return f"{seconds // 60}m"
    if seconds < 2 * 86400:
        return f"{seconds // 3600}h"
    return f"{seconds // 86400}d"


def parse_time(moment: datetime.datetime | str | None) -> datetime.datetime | None:
    if moment is None or moment == "":
        return None
    if isinstance(moment, datetime.datetime):
        parsed = moment
    else:
        try:
            parsed = datetime.datetime.fromisoformat(moment.replace("Z", "+00:00"))
        except ValueError:
            return None
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=datetime.UTC)


def dump(data: Any, *, fmt: str, stream: TextIO) -> None:
    """Print ``data`` as ``json`` or ``yaml``."""
    if fmt == "json":
        stream.write(json.dumps(data, indent=2, sort_keys=False, default=str) + "\n")
    else:
        stream.write(yaml.safe_dump(data, sort_keys=False, default_flow_style=False))


def as_list(items: list[dict[str, Any]]) -> dict[str, Any]:
    """Several objects as a kubectl ``List`` (what ``kubectl get -o json`` prints)."""
    return {"apiVersion": "v1", "kind": "List", "items": items, "metadata": {}}
