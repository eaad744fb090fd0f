"""Durations as written in manifests: ``300s``, ``5m``, ``1h``, ``1h30m``.

Guarantees: :func:`parse_duration` accepts exactly the strings matched by :data:`PATTERN` (whole
seconds, minutes and hours in that order, each at most once, total above zero) and raises
:class:`ValueError` with a message naming the accepted forms for anything else. The same pattern
is published in the generated CRDs, so the API server and the models agree.
"""

from __future__ import annotations

import datetime
import re

# RE2-compatible (Kubernetes evaluates CRD patterns with Go's regexp: no lookahead); together
# with a minimum length of 2 it admits exactly the strings parse_duration accepts, bar bounds.
PATTERN = r"^([0-9]+h)?([0-9]+m)?([0-9]+s)?$"
MIN_LENGTH = 2
_REGEX = re.compile(r"^(?:(?P<h>\d+)h)?(?:(?P<m>\d+)m)?(?:(?P<s>\d+)s)?$")
_MAX_DIGITS = 7

HELP = "a duration such as '300s', '5m', '1h' or '1h30m' (whole hours, minutes, seconds)"


def parse_duration(text: str) -> datetime.timedelta:
    """Parse ``text`` into a positive :class:`datetime.timedelta`."""
    match = _REGEX.match(text) if text else None
    if match is None or not any(match.groupdict().values()):
        raise ValueError(f"invalid duration {text!r}: expected {HELP}")
    parts = {unit: value for unit, value in match.groupdict().items() if value is not None}
    if any(len(value) > _MAX_DIGITS for value in parts.values()):
        raise ValueError(f"invalid duration {text!r}: number too large")
    delta = datetime.timedelta(
        hours=int(parts.get("h", 0)), minutes=int(parts.get("m", 0)), seconds=int(parts.get("s", 0))
    )
    if delta <= datetime.timedelta(0):
        raise ValueError(f"invalid duration {text!r}: must be greater than zero")
    return delta


def format_duration(delta: datetime.timedelta) -> str:
    """The canonical string for ``delta`` (whole seconds), e.g. ``1h30m``; inverse of parsing."""
    total = int(delta.total_seconds())
    if total <= 0:
        raise ValueError("duration must be greater than zero")
    hours, rest = divmod(total, 3600)
    minutes, seconds = divmod(rest, 60)
    text = "".join(
        f"{value}{unit}" for value, unit in ((hours, "h"), (minutes, "m"), (seconds, "s")) if value
    )
    return text
