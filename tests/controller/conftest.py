"""The controller installed by the chart into the embedded control plane, run with the chart's RBAC.

``install_chart`` (:mod:`tests.stack`) renders the chart (real Helm) for a unique release,
applies every object with real kubectl, and derives the controller's settings from the rendered
Deployment's environment, so the chart and the settings cannot drift apart. The controller
authenticates as the chart's ServiceAccount with a token from the TokenRequest API. Webhooks
reach it through the chart's Service (the dev control plane resolves it via the
``agentauth.dev/dev-endpoint`` annotation), with the ``caBundle`` the controller patches in. The
webhook configurations only select the release's own namespace (a label), so no other suite's
pods see them, and are deleted afterwards. Each module gets its own release and controller
(module scope): several modules race controllers, restart them or strip their RBAC.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from agentauth.devcluster import server
from tests.conftest import Kubectl

# The controller suite's modules import these from here; they live in tests.stack, shared with
# the integration and end-to-end suites.
from tests.stack import ISSUER as ISSUER
from tests.stack import ControllerThread as ControllerThread
from tests.stack import Install as Install
from tests.stack import free_port as free_port
from tests.stack import install_chart
from tests.stack import wait_for as wait_for


@pytest.fixture(scope="module")
def install(
    kubectl: Kubectl, dev_cluster: server.DevCluster, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Install]:
    with install_chart(kubectl, dev_cluster, tmp_path_factory.mktemp("ctl")) as installed:
        yield installed


@pytest.fixture(scope="module")
def controller(install: Install) -> Iterator[ControllerThread]:
    running = ControllerThread(install.settings).start()
    yield running
    running.stop()


def get_json(kubectl: Kubectl, *args: str) -> Any:
    result = kubectl("get", *args, "-o", "json", check=False)
    if result.returncode != 0:
        return None
    return json.loads(result.stdout)


def events_for(
    kubectl: Kubectl, *, namespace: str, name: str, kind: str
) -> list[tuple[str, str, str]]:
    """(type, reason, message) of the Events on one object, oldest first."""
    items = (get_json(kubectl, "events", "-n", namespace) or {}).get("items", [])
    found = [
        e
        for e in items
        if e["involvedObject"].get("name") == name and e["involvedObject"].get("kind") == kind
    ]
    found.sort(key=lambda e: int(e["metadata"].get("resourceVersion") or 0))
    return [(e["type"], e["reason"], e["message"]) for e in found]


def ready_condition(obj: dict[str, Any] | None) -> tuple[str, str] | None:
    if not obj:
        return None
    for condition in (obj.get("status") or {}).get("conditions") or []:
        if condition["type"] == "Ready":
            return condition["status"], condition["reason"]
    return None
