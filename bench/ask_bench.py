"""Benchmark: Ask API latency in process, for an agent holding 50 capabilities (issue 15).

Builds one Agent and one CapabilityGrant of 50 capabilities through the real models (the 36 of
``tests/domain/ask_eval/own/profiles.yaml`` and 14 more below), then answers every question of
``tests/domain/ask_eval/own/dev.yaml`` and ``heldout.yaml`` ``--rounds`` times through
``asking.answer_question``, the call the ``/v1/ask`` handler makes (HTTP and authentication
excluded). No LLM is consulted: the matcher has none. Reports per-question latency (p50, p99, max)
and, as a floor measured in the same run, the structured ``action`` path (no matching), plus the
one-off cost of loading the WordNet data. Target: p99 < 5 ms. Wall-clock and thread CPU time are
both reported: on a machine shared with other jobs the wall-clock tail is mostly preemption.

Run: ``.venv/bin/python bench/ask_bench.py [--rounds 20]``. Prints one JSON line on stdout
(``bench/run.py`` collects it), merges the figures into ``bench/results.json`` under the key
``ask`` (other keys are kept), and exits 1 if the CPU-time p99 is 5 ms or more.
"""

from __future__ import annotations

import argparse
import datetime
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from agentauth.domain import asking, asklexicon, exchanging  # noqa: E402
from agentauth.domain.models import Agent, CapabilityGrant  # noqa: E402

OWN = REPO / "tests/domain/ask_eval/own"
RESULTS = REPO / "bench/results.json"
TARGET_P99_MS = 5.0
NOW = datetime.datetime(2026, 3, 1, 12, tzinfo=datetime.UTC)

EXTRA = [
    ("calendar.read", "See the user's calendar events"),
    ("calendar.write", "Create, move or cancel meetings in the user's calendar"),
    ("email.send", "Send email on behalf of the user"),
    ("email.read", "Read messages in the user's inbox"),
    ("repo.push", "Push commits to a git repository"),
    ("pullrequests.review", "Review and comment on pull requests"),
    ("pullrequests.merge", "Merge an approved pull request"),
    ("secrets.rotate", "Rotate an application's API keys"),
    ("backups.restore", "Restore a database from a backup"),
    ("contracts.countersign", "Countersign a customer contract"),
    ("leads.qualify", "Mark an inbound lead as qualified"),
    ("surveys.send", "Send a satisfaction survey to a customer"),
    ("translations.request", "Request a translation of a document"),
    ("budgets.update", "Update a department's budget"),
    ("invoices.void", "Void an issued invoice"),
]


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(fraction * len(ordered) + 0.5) - 1))
    return ordered[index]


def catalog() -> list[dict[str, Any]]:
    profiles = yaml.safe_load((OWN / "profiles.yaml").read_text())["profiles"]
    found: dict[str, dict[str, Any]] = {}
    for profile in profiles.values():
        for capability in profile["capabilities"]:
            found.setdefault(
                capability["name"],
                {
                    "name": capability["name"],
                    "description": capability["description"],
                    "examples": capability.get("examples", []),
                    "approval": "Required" if capability["approval"] == "required" else "Automatic",
                },
            )
    for name, description in EXTRA:
        found.setdefault(name, {"name": name, "description": description})
    return list(found.values())[:50]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=20)
    options = parser.parse_args()

    started = time.perf_counter()
    asklexicon.lexicon()
    load_ms = (time.perf_counter() - started) * 1000

    capabilities = catalog()
    agent = Agent.model_validate(
        {
            "metadata": {"name": "bench", "namespace": "bench", "uid": "uid-bench"},
            "spec": {"serviceAccountName": "bench-sa"},
        }
    )
    grant = CapabilityGrant.model_validate(
        {
            "metadata": {"name": "bench", "namespace": "bench", "uid": "uid-grant"},
            "spec": {"agents": {"names": ["bench"]}, "capabilities": capabilities},
        }
    )
    snapshot = exchanging.Snapshot(agents={("bench", "bench"): agent}, grants=[grant])
    questions = [
        item["q"]
        for path in ("dev.yaml", "heldout.yaml")
        for item in yaml.safe_load((OWN / path).read_text())["questions"]
    ]

    started = time.perf_counter()
    asking.answer_question(questions[0], agent=agent, snapshot=snapshot, now=NOW)
    first_ms = (time.perf_counter() - started) * 1000
    for question in questions:  # warm the per-process caches once, as a running service has
        asking.answer_question(question, agent=agent, snapshot=snapshot, now=NOW)

    timings: list[float] = []
    cpu: list[float] = []
    floor: list[float] = []
    for _ in range(options.rounds):
        for question in questions:
            started, started_cpu = time.perf_counter(), time.thread_time()
            asking.answer_question(question, agent=agent, snapshot=snapshot, now=NOW)
            timings.append((time.perf_counter() - started) * 1000)
            cpu.append((time.thread_time() - started_cpu) * 1000)
            started = time.perf_counter()
            asking.answer_question(
                None, action="refunds.issue", agent=agent, snapshot=snapshot, now=NOW
            )
            floor.append((time.perf_counter() - started) * 1000)

    p99 = percentile(timings, 0.99)
    cpu_p99 = percentile(cpu, 0.99)
    figures = {
        "capabilities": len(capabilities),
        "questions": len(questions),
        "answers_timed": len(timings),
        "p50_ms": round(statistics.median(timings), 3),
        "p99_ms": round(p99, 3),
        "max_ms": round(max(timings), 3),
        "cpu_p50_ms": round(statistics.median(cpu), 3),
        "cpu_p99_ms": round(cpu_p99, 3),
        "action_floor_p99_ms": round(percentile(floor, 0.99), 3),
        "p99_over_action_floor": round(p99 / percentile(floor, 0.99), 1),
        "wordnet_load_ms": round(load_ms, 1),
        "first_question_ms": round(first_ms, 1),
        "target_p99_ms": TARGET_P99_MS,
        "llm": "none (the matcher consults no LLM)",
        "note": "in process, one thread; the machine may be shared with other jobs",
    }
    results: dict[str, Any] = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    results["ask"] = figures
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(figures, indent=2), file=sys.stderr)
    print(json.dumps(figures))
    # On a shared machine the wall-clock tail is other jobs' preemption (the action floor, which
    # does no matching, shows it): the gate is the thread's own CPU time per question.
    return 0 if cpu_p99 < TARGET_P99_MS else 1


if __name__ == "__main__":
    sys.exit(main())
