"""Text written by others, made safe to show to people next to ours.

Agents (and the namespace admins who file requests by hand) write justifications, context values
and comments; agentauth shows them to approvers in Events, conditions, ``kubectl agentauth``
output and logs, right beside the commands an approver runs. Guarantees of :func:`quote`:

- the result is one line that starts and ends with ``"``, with every ``"`` and ``\\`` inside
  escaped (JSON string syntax), so nothing the writer puts in it can end the quotation and
  continue as if it were agentauth's own text (a ``| approve: kubectl agentauth approve <decoy>``
  stays visibly inside the quotes);
- control characters (C0, C1, DEL, so every terminal escape sequence loses its ESC or CSI),
  Unicode format characters (bidirectional overrides and isolates, zero-width characters), line
  and paragraph separators and surrogates are removed; runs of whitespace become one space;
- at most ``limit`` characters of the text are kept, and a cut is marked with ``...`` inside
  the quotes (the closing quote always survives, so a length limit applied later to a whole
  message never cuts into our structure if the quoted text comes last).

:func:`clean` applies the same removal without quoting, for values that are shown in their own
column or field (names, user names): it never fails and never returns control characters.
"""

from __future__ import annotations

import json
import unicodedata

DEFAULT_LIMIT = 300
ELLIPSIS = "..."
# Unicode categories that must never reach a terminal or an Event: controls (C0/C1/DEL), format
# characters (bidi overrides, zero-width joiners), surrogates, private use, unassigned, and the
# line/paragraph separators some viewers render as new lines.
_REMOVED_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"})
# Characters that separate words or lines: replaced by a space rather than removed.
_LINE_BREAKS = frozenset("\t\n\r\v\f\x1c\x1d\x1e\x85\u2028\u2029")


def _keep(char: str) -> bool:
    return unicodedata.category(char) not in _REMOVED_CATEGORIES


def clean(text: object, *, limit: int = DEFAULT_LIMIT) -> str:
    """``text`` on one line: unsafe characters removed, whitespace collapsed, at most ``limit``
    characters (a cut ends with ``...``)."""
    raw = text if isinstance(text, str) else str(text)
    spaced = "".join(" " if char in _LINE_BREAKS else char for char in raw)
    kept = "".join(char for char in spaced if _keep(char))
    single = " ".join(kept.split())
    if len(single) > limit:
        single = single[: max(0, limit - len(ELLIPSIS))].rstrip() + ELLIPSIS
    return single


def quote(text: object, *, limit: int = DEFAULT_LIMIT) -> str:
    """``text`` cleaned (see :func:`clean`) inside double quotes, JSON-escaped."""
    return json.dumps(clean(text, limit=limit), ensure_ascii=False)
