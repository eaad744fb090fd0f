"""An Agent that exists (and has settled as NoCapabilities) before any grant names or selects it
gets the capabilities of grants created afterwards, end to end through kubectl."""

from __future__ import annotations

from typing import Any

from tests.conftest import Kubectl
from tests.controller.conftest import (
    ControllerThread,
    Install,
    get_json,
    ready_condition,
    wait_for,
)
from tests.controller.test_lifecycle import agent, apply, capabilities_of, grant


def _ready(kubectl: Kubectl, *, namespace: str, name: str) -> dict[str, Any] | None:
    obj = get_json(kubectl, "agent", name, "-n", namespace) or {}
    return next(
        (c for c in (obj.get("status") or {}).get("conditions") or [] if c["type"] == "Ready"),
        None,
    )


def test_grants_created_after_the_agent_apply_to_it(
    kubectl: Kubectl, install: Install, controller: ControllerThread
) -> None:
    ns = install.namespace
    kubectl("create", "serviceaccount", "early-sa", "-n", ns)
    labelled = agent("early", ns)
    labelled["metadata"]["labels"] = {"crew": "early-birds"}
    apply(kubectl, labelled)
    wait_for(
        lambda: (
            ready_condition(get_json(kubectl, "agent", "early", "-n", ns))
            == ("False", "NoCapabilities")
        ),
        message="the agent settles without capabilities",
    )

    apply(
        kubectl,
        grant(
            "early-by-name",
            ns,
            agents={"names": ["early"]},
            capabilities=[{"name": "document.read"}],
        ),
    )
    wait_for(
        lambda: (
            capabilities_of(kubectl, namespace=ns, name="early")
            == [("document.read", "early-by-name", "Automatic")]
        ),
        message="the by-name grant reaches the agent",
    )
    wait_for(
        lambda: ready_condition(get_json(kubectl, "agent", "early", "-n", ns)) == ("True", "Ready"),
        message="Ready after the by-name grant",
    )
    ready = _ready(kubectl, namespace=ns, name="early")
    assert ready is not None
    assert ready["message"] == "Agent holds 1 capability: document.read"

    apply(
        kubectl,
        grant(
            "early-by-selector",
            ns,
            agents={"selector": {"matchLabels": {"crew": "early-birds"}}},
            capabilities=[{"name": "calendar.read", "approval": "Required"}],
        ),
    )
    wait_for(
        lambda: (
            capabilities_of(kubectl, namespace=ns, name="early")
            == [
                ("calendar.read", "early-by-selector", "Required"),
                ("document.read", "early-by-name", "Automatic"),
            ]
        ),
        message="the selector grant reaches the agent",
    )
    ready = _ready(kubectl, namespace=ns, name="early")
    assert ready is not None
    assert (ready["status"], ready["reason"], ready["message"]) == (
        "True",
        "Ready",
        "Agent holds 2 capabilities: calendar.read, document.read",
    )
    for name in ("early-by-name", "early-by-selector"):
        status = get_json(kubectl, "capabilitygrant", name, "-n", ns)["status"]
        assert status["matchedAgents"] == ["early"]
        active = next(c for c in status["conditions"] if c["type"] == "Active")
        assert (active["status"], active["reason"], active["message"]) == (
            "True",
            "Active",
            "Applies to 1 agent",
        )
    assert controller.failures == []
