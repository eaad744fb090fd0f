"""Render ``charts/agentauth`` with real Helm (``helm-python-sdk``'s libhelm) for the tests."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import helm_python as helm
import yaml

CHART = Path(__file__).resolve().parents[2] / "charts" / "agentauth"


def render(
    values: dict[str, Any] | None = None,
    *,
    release: str = "agentauth",
    namespace: str = "agentauth-system",
) -> list[dict[str, Any]]:
    """Every object the chart renders (templates only; ``crds/`` is applied separately)."""
    chart = helm.Chart.load(CHART)
    manifests = chart.render(values or {}, name=release, namespace=namespace, is_install=True)
    objects: list[dict[str, Any]] = []
    for path, text in sorted(manifests.items()):
        if path.endswith("NOTES.txt"):
            continue
        objects += [doc for doc in yaml.safe_load_all(text) if doc]
    return objects


def notes(values: dict[str, Any] | None = None) -> str:
    chart = helm.Chart.load(CHART)
    manifests = chart.render(
        values or {}, name="agentauth", namespace="agentauth-system", is_install=True
    )
    return next(text for path, text in manifests.items() if path.endswith("NOTES.txt"))


def by_kind(objects: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [o for o in objects if o.get("kind") == kind]


def one(objects: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    found = [o for o in by_kind(objects, kind) if name is None or o["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]
