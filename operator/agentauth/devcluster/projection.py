"""``agentauth dev run-as-pod`` (interface; body in progress)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path


async def run_as_pod(*, kubeconfig: Path, namespace: str, pod: str, command: list[str]) -> int:
    raise NotImplementedError


def main(argv: Sequence[str] | None = None) -> int:
    raise NotImplementedError
