"""Benchmark: what the Ask matcher's fail-closed rules cost in accuracy and buy in safety.

Answers every development question (``tests/domain/ask_eval/own/{dev,heldout}.yaml`` and
``tests/domain/ask_eval/independent/{dev_half,heldout_half}.yaml``: 560 questions, nine agent
profiles, each agent alone in its namespace and all of a corpus's agents together) once per
setting of :data:`agentauth.domain.askmatching.LOOSENING`, from the shipped rules (strict) to
the loosest (each step drops one more rule: the object head check, the ambiguity margin, the
need for object evidence, the foreign-object refusal, the verb classes). For each it reports
right %, unsafe answers and approval-required capabilities answered as allowed, through
``tests/domain/askeval.py`` (the same grading as the accuracy figures in ``docs/ask-api.md``).

The service always runs strict: a looser setting is reachable only from this script. The curve
is the evidence for how far deterministic loosening can go before the first unsafe answer.

Run: ``.venv/bin/python bench/ask_tradeoff.py``. Prints a table and one JSON line on stdout, and
merges the figures into ``bench/results.json`` under the key ``ask_tradeoff`` (other keys kept).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.domain import askeval  # noqa: E402

from agentauth.domain import askmatching  # noqa: E402

EVAL = REPO / "tests/domain/ask_eval"
FILES = (
    EVAL / "own/dev.yaml",
    EVAL / "own/heldout.yaml",
    EVAL / "independent/dev_half.yaml",
    EVAL / "independent/heldout_half.yaml",
)
RESULTS = REPO / "bench/results.json"


def measure() -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for label, strictness in askmatching.LOOSENING:
        asked = right = unsafe = approval_as_allowed = 0
        per_file: dict[str, str] = {}
        for path in FILES:
            if askeval.is_held_out(path):
                raise SystemExit(f"{path} is held out: the trade-off is measured on dev data")
            overall = askeval.run(path, strictness=strictness, quiet=True)
            for totals in overall.values():
                asked += totals.asked
                right += totals.right
                unsafe += totals.unsafe
                approval_as_allowed += totals.approval_as_allowed
            alone = overall["alone"]
            per_file[str(path.relative_to(EVAL))] = (
                f"{100.0 * alone.right / alone.asked:.1f}% / {alone.unsafe} / "
                f"{alone.approval_as_allowed}"
            )
        rows.append(
            {
                "setting": label,
                "answers": asked,
                "right_pct": round(100.0 * right / asked, 1),
                "unsafe": unsafe,
                "approval_as_allowed": approval_as_allowed,
                "alone_per_file": per_file,
            }
        )
    return rows


def main() -> int:
    rows = measure()
    print(f"{'setting':<22} {'answers':>7} {'right':>7} {'unsafe':>7} {'appr.=allowed':>14}")
    for row in rows:
        print(
            f"{row['setting']:<22} {row['answers']:>7} {row['right_pct']:>6.1f}% "
            f"{row['unsafe']:>7} {row['approval_as_allowed']:>14}"
        )
    print(json.dumps({"ask_tradeoff": rows}))
    results: dict[str, Any] = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    results["ask_tradeoff"] = rows
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
