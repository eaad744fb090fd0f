"""Evaluation harness for the Ask API: ``python -m tests.domain.askeval PATH.yaml``.

``PATH.yaml`` holds ``questions: [{profile, q, expect}]``; the agent profiles are read from
``profiles.yaml`` in the same directory (``profiles:`` a mapping by name or a list of profiles
with ``name``; each with ``capabilities: [{name, description, examples, approval}]``). Each
profile becomes an ``Agent`` and a ``CapabilityGrant`` built through the real models, and each
question is answered by the same domain call the ``/v1/ask`` handler makes (:func:`answer`), so
what this measures is what the service answers. Every question is asked twice: with the
profile's agent alone in its namespace, and with all profiles' agents and grants together in one
namespace (safety must not depend on what else the namespace holds).

Only totals are printed (accuracy, unsafe answers, approval-required capabilities answered as
plainly allowed), per profile and overall, so a held-out file can be measured without reading it.
``--misses`` lists the wrong answers of a development file; it refuses a held-out file: one whose
name contains ``heldout``, unless the file itself says ``held_out: false`` (a former held-out set
that has since been measured and opened for tuning, such as ``own/heldout.yaml``).

Grading, for one question with ``expect`` (a capability, a list of capabilities, or null):

- expected decision: ``not_covered`` for null, else ``approval`` if any expected capability
  needs approval (no approval holds in this evaluation), else ``allowed``;
- right: the decision equals the expected one and, unless not covered, the set of capabilities
  the answer names equals the expected set;
- unsafe: answered allowed while ``expect`` is null or the answer names a capability outside it;
- approval as allowed: answered allowed while an expected capability needs approval.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

from agentauth.domain import asking, askmatching, exchanging
from agentauth.domain.models import Agent, CapabilityGrant

NAMESPACE = "ask-eval"
NOW = datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)


@dataclass(frozen=True, slots=True)
class Profile:
    name: str
    agent: Agent
    grant: CapabilityGrant
    approval_required: frozenset[str]


def load_profiles(path: Path) -> dict[str, Profile]:
    data: dict[str, Any] = yaml.safe_load(path.read_text())
    listed = data["profiles"]
    # a mapping name -> profile, or a list of profiles each with its ``name``
    bodies = listed if isinstance(listed, dict) else {p["name"]: p for p in listed}
    profiles: dict[str, Profile] = {}
    for index, (name, body) in enumerate(sorted(bodies.items())):
        capabilities = [
            {
                "name": c["name"],
                "description": c.get("description", ""),
                "examples": list(c.get("examples") or []),
                "approval": "Required" if c.get("approval") == "required" else "Automatic",
            }
            for c in body["capabilities"]
        ]
        agent = Agent.model_validate(
            {
                "metadata": {"name": name, "namespace": NAMESPACE, "uid": f"agent-uid-{index}"},
                "spec": {
                    "serviceAccountName": f"{name}-sa",
                    "description": body.get("description", ""),
                },
            }
        )
        grant = CapabilityGrant.model_validate(
            {
                "metadata": {"name": f"{name}-grant", "namespace": NAMESPACE, "uid": f"g-{index}"},
                "spec": {"agents": {"names": [name]}, "capabilities": capabilities},
            }
        )
        required = frozenset(c["name"] for c in capabilities if c["approval"] == "Required")
        profiles[name] = Profile(name, agent, grant, required)
    return profiles


def snapshot_of(profiles: Iterable[Profile]) -> exchanging.Snapshot:
    chosen = list(profiles)
    return exchanging.Snapshot(
        agents={(NAMESPACE, p.name): p.agent for p in chosen},
        grants=[p.grant for p in chosen],
    )


@dataclass(frozen=True, slots=True)
class Graded:
    """An answer reduced to what is graded."""

    decision: str  # allowed | approval | not_covered
    capabilities: frozenset[str]


def answer(
    question: str,
    *,
    agent: Agent,
    snapshot: exchanging.Snapshot,
    strictness: askmatching.Strictness = askmatching.STRICT,
) -> Graded:
    """The answer of ``/v1/ask`` to ``question`` asked by ``agent`` (the handler's domain call)."""
    result = asking.answer_question(
        question, agent=agent, snapshot=snapshot, now=NOW, strictness=strictness
    )
    if result.allowed:
        decision = "allowed"
    elif result.approval_required:
        decision = "approval"
    else:
        return Graded("not_covered", frozenset())
    return Graded(decision, frozenset(c.capability for c in result.clauses if c.capability))


@dataclass(slots=True)
class Totals:
    asked: int = 0
    right: int = 0
    unsafe: int = 0
    approval_as_allowed: int = 0
    misses: list[str] = field(default_factory=list)

    def add(self, other: Totals) -> None:
        self.asked += other.asked
        self.right += other.right
        self.unsafe += other.unsafe
        self.approval_as_allowed += other.approval_as_allowed
        self.misses.extend(other.misses)

    def line(self, label: str) -> str:
        accuracy = 100.0 * self.right / self.asked if self.asked else 0.0
        return (
            f"{label:<34} n={self.asked:<4} right={accuracy:5.1f}%  unsafe={self.unsafe:<3} "
            f"approval_as_allowed={self.approval_as_allowed}"
        )


def grade(item: dict[str, Any], got: Graded, *, required: frozenset[str], totals: Totals) -> None:
    expect = item["expect"]
    expected = frozenset([expect] if isinstance(expect, str) else expect or [])
    if not expected:
        wanted = "not_covered"
    elif expected & required:
        wanted = "approval"
    else:
        wanted = "allowed"
    totals.asked += 1
    right = got.decision == wanted and (wanted == "not_covered" or got.capabilities == expected)
    if right:
        totals.right += 1
    else:
        totals.misses.append(
            f"[{item['profile']}] {item['q']!r}: expected {wanted} {sorted(expected)}, "
            f"got {got.decision} {sorted(got.capabilities)}"
        )
    if got.decision == "allowed":
        if not expected or not got.capabilities <= expected:
            totals.unsafe += 1
        if expected & required:
            totals.approval_as_allowed += 1


def evaluate(
    questions: Sequence[dict[str, Any]],
    profiles: dict[str, Profile],
    *,
    together: bool,
    strictness: askmatching.Strictness = askmatching.STRICT,
) -> dict[str, Totals]:
    """Totals per profile: each profile's agent alone in the namespace, or all together."""
    shared = snapshot_of(profiles.values()) if together else None
    alone = {name: snapshot_of([p]) for name, p in profiles.items()}
    result = {name: Totals() for name in profiles}
    for item in questions:
        profile = profiles[item["profile"]]
        snapshot = shared if shared is not None else alone[profile.name]
        got = answer(item["q"], agent=profile.agent, snapshot=snapshot, strictness=strictness)
        grade(item, got, required=profile.approval_required, totals=result[profile.name])
    return result


def is_held_out(path: Path) -> bool:
    """Whether ``path`` is held out: named ``*heldout*`` and not marked ``held_out: false``.
    Only the marker is looked at, never the questions."""
    if "heldout" not in path.name:
        return False
    data = yaml.safe_load(path.read_text())
    return not (isinstance(data, dict) and data.get("held_out") is False)


def run(
    path: Path,
    *,
    show_misses: bool = False,
    strictness: askmatching.Strictness = askmatching.STRICT,
    quiet: bool = False,
) -> dict[str, Totals]:
    """Evaluate ``path``; print totals (unless ``quiet``) and (``show_misses``) the misses.
    Returns the overall totals by mode (``alone``, ``together``)."""
    if show_misses and "heldout" in path.name and is_held_out(path):
        raise SystemExit(f"refusing to show misses of held-out file {path}")
    profiles = load_profiles(path.with_name("profiles.yaml"))
    questions = yaml.safe_load(path.read_text())["questions"]
    overall: dict[str, Totals] = {}
    say = (lambda _: None) if quiet else print
    say(f"{path}: {len(questions)} questions, {len(profiles)} profiles")
    for mode in ("alone", "together"):
        per_profile = evaluate(
            questions, profiles, together=mode == "together", strictness=strictness
        )
        total = Totals()
        for name, totals in sorted(per_profile.items()):
            say(totals.line(f"  {mode:<8} {name}"))
            total.add(totals)
        say(total.line(f"{mode.upper()} (all profiles)"))
        overall[mode] = total
        if show_misses:
            for miss in total.misses:
                print(f"    miss: {miss}")
    return overall


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.domain.askeval")
    parser.add_argument("paths", nargs="+", type=Path)
    parser.add_argument("--misses", action="store_true", help="list misses (not for held-out)")
    args = parser.parse_args(argv)
    for path in args.paths:
        run(path, show_misses=args.misses)
    return 0


if __name__ == "__main__":
    sys.exit(main())
