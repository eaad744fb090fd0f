"""Run every benchmark under bench/ and collect the figures.

Each ``bench/*_bench.py`` prints, as its last line of standard output, one JSON object of
results. This runner executes them one after another (never in parallel: they measure throughput
on this machine), then writes ``bench/results.json`` and ``bench/results.md`` with the machine they
ran on, so every figure is either a ratio against a floor measured in the same run or an absolute
figure labelled with its machine. The machine is shared, and its speed moves by a third within
minutes (another tenant's load): before and after each bench the runner measures the crypto
floor of ``tokenservice_bench.py`` (an RS256 verification and an Ed25519 signature, per CPU
second, for half a second) and records both beside the bench's figures as
``host_floor_per_cpu_s``, so an absolute figure says which host it had (about 18.5k/s quiet on
the 2-core development machine, 13k/s busy). A bench that exits non-zero after printing its
figures (a target missed, work lost) keeps them, with ``missed_target`` saying so; one that
printed none is recorded as an ``error``. Either makes the runner exit 1.
"""

from __future__ import annotations

import json
import os
import pathlib
import platform
import subprocess
import sys
import time
from typing import Any

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ed25519, padding, rsa

HERE = pathlib.Path(__file__).parent
PLOTS = HERE / "plots"


def machine() -> dict[str, Any]:
    cpu = "unknown"
    cpuinfo = pathlib.Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


class HostProbe:
    """The crypto floor of ``tokenservice_bench.py`` (an RS256 verification and an Ed25519
    signature of a message as long as a minted token's signing input) as a reference of the
    machine's speed."""

    def __init__(self) -> None:
        self._ed25519 = ed25519.Ed25519PrivateKey.generate()
        self._message = b"x" * 617  # as long as a minted agent token's signing input
        private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self._public = private.public_key()
        self._signature = private.sign(self._message, padding.PKCS1v15(), hashes.SHA256())

    def per_cpu_second(self, seconds: float = 0.5) -> int:
        """Floors (verification plus signature) per CPU second over ``seconds`` of wall time."""
        count, wall, cpu = 0, time.perf_counter(), time.process_time()
        while time.perf_counter() - wall < seconds:
            for _ in range(25):
                self._public.verify(
                    self._signature, self._message, padding.PKCS1v15(), hashes.SHA256()
                )
                self._ed25519.sign(self._message)
            count += 25
        return round(count / (time.process_time() - cpu))


def flatten(prefix: str, value: Any) -> list[tuple[str, str]]:
    if isinstance(value, dict):
        rows: list[tuple[str, str]] = []
        for key, sub in value.items():
            rows.extend(flatten(f"{prefix}.{key}" if prefix else str(key), sub))
        return rows
    if isinstance(value, float):
        return [(prefix, f"{value:,.3f}")]
    return [(prefix, str(value))]


def plot(benchmark: str, distributions: dict[str, list[float]]) -> list[str]:
    """One histogram PNG per distribution (``bench/plots/``), marked with its p50 and p99."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        from matplotlib import pyplot
    except ImportError:
        return ["matplotlib not installed (pip install -e '.[bench]'): no plots"]
    PLOTS.mkdir(exist_ok=True)
    written = []
    for label, samples in distributions.items():
        if not samples:
            continue
        ordered = sorted(samples)
        p50 = ordered[len(ordered) // 2]
        p99 = ordered[int(0.99 * (len(ordered) - 1))]
        figure, axes = pyplot.subplots(figsize=(7, 4))
        axes.hist(ordered, bins=80, color="#4477aa")
        axes.set_yscale("log")  # the tail is what a p99 target is about
        for value, text in ((p50, "p50"), (p99, "p99")):
            axes.axvline(value, color="#cc3311", linestyle="--")
            axes.annotate(f"{text} {value:.1f}", (value, 0), rotation=90, va="bottom")
        axes.set_xlabel(label)
        axes.set_ylabel("count")
        axes.set_title(f"{benchmark}: {label} (n={len(ordered)})")
        figure.tight_layout()
        path = PLOTS / f"{benchmark.removesuffix('.py')}-{label}.png"
        figure.savefig(path, dpi=100)
        pyplot.close(figure)
        written.append(str(path.relative_to(HERE.parent)))
    return written


def main(argv: list[str]) -> int:
    selected = argv or sorted(path.name for path in HERE.glob("*_bench.py"))
    results: dict[str, Any] = {"machine": machine(), "started": time.time(), "benchmarks": {}}
    previous = HERE / "results.json"
    if argv and previous.exists():
        # A partial run (named benchmarks) updates the last full run's figures.
        results["benchmarks"] = json.loads(previous.read_text()).get("benchmarks", {})
    failed = []
    probe = HostProbe()
    for name in selected:
        print(f"== {name}", flush=True)
        host_before = probe.per_cpu_second()
        started = time.monotonic()
        completed = subprocess.run(
            [sys.executable, str(HERE / name)],
            capture_output=True,
            text=True,
            check=False,
            timeout=1800,
        )
        wall_seconds = round(time.monotonic() - started, 1)
        host = {"before": host_before, "after": probe.per_cpu_second()}
        sys.stderr.write(completed.stderr[-4000:])
        lines = [line for line in completed.stdout.splitlines() if line.startswith("{")]
        if not lines:
            failed.append(name)
            results["benchmarks"][name] = {
                "error": f"exit {completed.returncode}",
                "host_floor_per_cpu_s": host,
            }
            print(completed.stdout[-4000:])
            continue
        figures = json.loads(lines[-1])
        if completed.returncode != 0:
            # A bench that measured but missed its target (or lost work) still printed its
            # figures: keep them, marked, so results.json says by how much it missed.
            failed.append(name)
            figures["missed_target"] = f"exit {completed.returncode}"
        figures["wall_seconds"] = wall_seconds
        figures["host_floor_per_cpu_s"] = host
        distributions = figures.pop("distributions", {})
        if distributions:
            figures["plots"] = plot(name, distributions)
        results["benchmarks"][name] = figures
        print(json.dumps(figures, indent=2))
    (HERE / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    table = ["| benchmark | figure | value |", "| --- | --- | --- |"]
    for name, figures in results["benchmarks"].items():
        for key, value in flatten("", figures):
            table.append(f"| {name} | {key} | {value} |")
    header = f"Machine: {results['machine']['cpu']}, {results['machine']['cores']} cores, "
    header += f"Python {results['machine']['python']}\n\n"
    (HERE / "results.md").write_text(header + "\n".join(table) + "\n")
    print(f"wrote {HERE / 'results.json'} and {HERE / 'results.md'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
