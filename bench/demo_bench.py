"""Issue 9's number: ``make demo`` runs end to end in under 60 seconds; plus ``agentauth dev``.

Measures, on this machine (absolute figures, labelled with it by bench/run.py):

- ``demo_seconds``: wall time of ``demo/run.py`` (what ``make demo`` runs once the virtualenv
  exists), every run must exit 0; min/median/max over ``RUNS`` runs, against the 60 s budget;
- ``dev_ready_seconds``: ``agentauth dev`` from exec to its ``ready`` line (fresh directory:
  CA, chart render, RBAC, controller keys, token service ready), and ``dev_restart_ready_seconds``
  with the same directory again;
- ``dev_stop_seconds``: SIGTERM to exit (exit code 0 required).

Prints one JSON object as its last line (the bench/run.py protocol).
"""

from __future__ import annotations

import json
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
RUNS = 3
BUDGET_SECONDS = 60.0


def time_demo() -> float:
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, str(ROOT / "demo" / "run.py")],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    elapsed = time.monotonic() - started
    if result.returncode != 0:
        raise SystemExit(f"demo failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    return elapsed


def time_dev(directory: Path) -> tuple[float, float]:
    """(seconds to the ready line, seconds from SIGTERM to exit)."""
    started = time.monotonic()
    process = subprocess.Popen(
        [str(BIN / "agentauth"), "dev", "--dir", str(directory)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    assert process.stdout is not None
    for line in process.stdout:
        if line.startswith("ready kubeconfig="):
            break
    else:
        raise SystemExit(f"agentauth dev exited with {process.wait()} before ready")
    ready = time.monotonic() - started
    stopping = time.monotonic()
    process.send_signal(signal.SIGTERM)
    code = process.wait(timeout=60)
    if code != 0:
        raise SystemExit(f"agentauth dev exited with {code} on SIGTERM")
    return ready, time.monotonic() - stopping


def main() -> None:
    demo = [time_demo() for _ in range(RUNS)]
    with tempfile.TemporaryDirectory(prefix="agentauth-dev-bench-") as directory:
        ready, stop = time_dev(Path(directory))
        restart_ready, restart_stop = time_dev(Path(directory))
    figures = {
        "demo_seconds": {
            "runs": RUNS,
            "min": round(min(demo), 2),
            "median": round(statistics.median(demo), 2),
            "max": round(max(demo), 2),
            "budget": BUDGET_SECONDS,
            "max_over_budget": round(max(demo) / BUDGET_SECONDS, 3),
        },
        "dev_ready_seconds": round(ready, 2),
        "dev_restart_ready_seconds": round(restart_ready, 2),
        "dev_stop_seconds": round(max(stop, restart_stop), 2),
    }
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
