"""``make demo`` end to end: the runner ``make demo`` calls, as a subprocess, asserted step by step.

It proves every step the README promises happens for real (exit 0, under 60 seconds, one line
per step in order) and that the demo leaves nothing running: no process of its own and no
temporary directory.
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.slow

# Each step's line, in order (the runner prefixes "[ elapsed] who").
STEPS = [
    r"runner starting agentauth dev",
    r"runner ready: token service and issuer https://127\.0\.0\.1:\d+",
    r"runner kubectl apply -f samples/: Namespace/demo, .*Agent/research-assistant",
    r"runner Agent research-assistant is Ready: aauth:research-assistant\.demo@agentauth\.local: "
    r"document\.read, document\.search, payments\.authorize \(approval\)",
    r"runner pod research-assistant was mutated by the webhook: projected volume "
    r"\['agentauth-token'\]",
    r"agent  exchanged the projected token for an agent token: "
    r"sub=aauth:research-assistant\.demo@agentauth\.local "
    r"scope=\"document\.read document\.search\"",
    r"agent    claims: \{\"iss\": \"https://127\.0\.0\.1:\d+\", .*\"pod\": \{\"name\": "
    r"\"research-assistant\"",
    r"agent  asked \"Can I read the quarterly budget report\?\" -> allowed=True "
    r"capability=document\.read",
    r"agent  read document q3-budget from the tool server \(HTTP 200\)",
    r"agent  tried payments\.authorize -> HTTP 403 insufficient_scope: approval required",
    r"agent  filed AccessRequest demo/(?P<request>research-assistant-\w+) for payments\.authorize",
    r"alice  kubectl agentauth approve research-assistant-\w+: .*approved by alice",
    r"agent  AccessRequest research-assistant-\w+ is Approved by alice until ",
    r"agent  authorized payment PAY-0001 \(HTTP 200\) with payments\.authorize",
    r"agent  delegated for jane@example\.com: sub=jane@example\.com scope=\"document\.read\" "
    r"act=\{\"sub\": \"aauth:research-assistant\.demo@agentauth\.local\"\}",
    r"agent  read q3-budget on behalf of jane@example\.com acting as "
    r"aauth:research-assistant\.demo@agentauth\.local",
    r"runner demo finished",
]


def test_make_demo_runs_every_step_and_cleans_up() -> None:
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, str(ROOT / "demo" / "run.py")],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
        check=False,
    )
    elapsed = time.monotonic() - started
    assert result.returncode == 0, f"{result.stdout}\n{result.stderr}"
    lines = [re.sub(r"^\[\s*[\d.]+s\] ", "", line) for line in result.stdout.splitlines()]
    position = 0
    for step in STEPS:
        pattern = re.compile(step)
        while position < len(lines) and not pattern.match(lines[position]):
            position += 1
        assert position < len(lines), f"step not shown: {step}\n{result.stdout}"
    assert not [line for line in lines if "FAILED" in line]
    # The README's promise, measured around the whole runner including its shutdown.
    assert elapsed < 60, f"the demo took {elapsed:.1f}s"
    workdir = re.search(r"runner working in (\S+) \(removed at exit\)", result.stdout)
    assert workdir is not None, result.stdout
    assert not Path(workdir.group(1)).exists()
    # Every process the demo started ran with its directory in its command line.
    leftovers = subprocess.run(
        ["pgrep", "-f", workdir.group(1)], capture_output=True, text=True, check=False
    )
    assert leftovers.stdout == "", f"processes left running: {leftovers.stdout}"
