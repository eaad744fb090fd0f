"""Render ``charts/agentauth`` with real Helm (``helm-python-sdk``'s libhelm) for the tests."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import helm_python as helm
import yaml

CHART = Path(__file__).resolve().parents[2] / "charts" / "agentauth"
ISSUER = "https://agentauth.example.com"
TLS_SECRET = "agentauth-token-service-tls"


def with_required(values: dict[str, Any] | None) -> dict[str, Any]:
    """``values`` plus what every install must choose (the chart refuses to render without):
    ``issuer.url``, and a certificate for the token service unless ``tokenService.tls`` is
    given."""
    merged = copy.deepcopy(values or {})
    merged.setdefault("issuer", {}).setdefault("url", ISSUER)
    merged.setdefault("tokenService", {}).setdefault("tls", {"secretName": TLS_SECRET})
    return merged


def render(
    values: dict[str, Any] | None = None,
    *,
    release: str = "agentauth",
    namespace: str = "agentauth-system",
    required: bool = True,
) -> list[dict[str, Any]]:
    """Every object the chart renders (templates only; ``crds/`` is applied separately), with
    :func:`with_required` added unless ``required`` is false."""
    chart = helm.Chart.load(CHART)
    given = with_required(values) if required else (values or {})
    manifests = chart.render(given, name=release, namespace=namespace, is_install=True)
    objects: list[dict[str, Any]] = []
    for path, text in sorted(manifests.items()):
        if path.endswith("NOTES.txt"):
            continue
        objects += [doc for doc in yaml.safe_load_all(text) if doc]
    return objects


def notes(values: dict[str, Any] | None = None) -> str:
    chart = helm.Chart.load(CHART)
    manifests = chart.render(
        with_required(values), name="agentauth", namespace="agentauth-system", is_install=True
    )
    return next(text for path, text in manifests.items() if path.endswith("NOTES.txt"))


def by_kind(objects: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [o for o in objects if o.get("kind") == kind]


def one(objects: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    found = [o for o in by_kind(objects, kind) if name is None or o["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]
