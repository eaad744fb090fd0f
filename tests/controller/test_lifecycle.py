"""Agent and CapabilityGrant lifecycle end to end, through kubectl, with the chart's RBAC."""

from __future__ import annotations

import datetime
import time
from typing import Any

import yaml

from tests.conftest import Kubectl
from tests.controller.conftest import (
    ControllerThread,
    Install,
    events_for,
    get_json,
    ready_condition,
    wait_for,
)


def apply(kubectl: Kubectl, *documents: dict[str, Any]) -> None:
    kubectl("apply", "-f", "-", input=yaml.safe_dump_all(documents))


def agent(name: str, namespace: str, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "agentauth.dev/v1alpha1",
        "kind": "Agent",
        "metadata": {"name": name, "namespace": namespace, "labels": {"team": "research"}},
        "spec": {"serviceAccountName": f"{name}-sa", **spec},
    }


def grant(
    name: str,
    namespace: str,
    *,
    agents: dict[str, Any],
    capabilities: list[dict[str, Any]],
    **spec: Any,
) -> dict[str, Any]:
    return {
        "apiVersion": "agentauth.dev/v1alpha1",
        "kind": "CapabilityGrant",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"agents": agents, "capabilities": capabilities, **spec},
    }


def capabilities_of(kubectl: Kubectl, *, namespace: str, name: str) -> list[tuple[str, str, str]]:
    obj = get_json(kubectl, "agent", name, "-n", namespace) or {}
    return [
        (c["name"], c["grant"], c["approval"])
        for c in (obj.get("status") or {}).get("capabilities") or []
    ]


def test_agent_becomes_ready_when_its_service_account_appears(
    kubectl: Kubectl, install: Install, controller: ControllerThread
) -> None:
    ns = install.namespace
    apply(
        kubectl,
        agent("scout", ns),
        grant(
            "scout-docs",
            ns,
            agents={"names": ["scout"]},
            capabilities=[
                {"name": "document.read"},
                {"name": "payments.refund", "approval": "Required"},
            ],
        ),
    )
    wait_for(
        lambda: (
            ready_condition(get_json(kubectl, "agent", "scout", "-n", ns))
            == ("False", "ServiceAccountNotFound")
        ),
        message="ServiceAccountNotFound",
    )
    kubectl("create", "serviceaccount", "scout-sa", "-n", ns)
    wait_for(
        lambda: ready_condition(get_json(kubectl, "agent", "scout", "-n", ns)) == ("True", "Ready"),
        message="Ready",
    )
    obj = get_json(kubectl, "agent", "scout", "-n", ns)
    status = obj["status"]
    assert status["agentID"] == f"aauth:scout.{ns}@issuer.agentauth.test"
    assert status["observedGeneration"] == obj["metadata"]["generation"]
    assert [
        (c["name"], c["grant"], c["approval"], c.get("maxDuration")) for c in status["capabilities"]
    ] == [
        ("document.read", "scout-docs", "Automatic", None),
        ("payments.refund", "scout-docs", "Required", "1h"),
    ]
    ready = next(c for c in status["conditions"] if c["type"] == "Ready")
    assert ready["message"] == "Agent holds 2 capabilities: document.read, payments.refund"
    caps = (
        "document.read (Automatic, grant scout-docs), payments.refund (Required, grant scout-docs)"
    )
    registered = f"Registered as aauth:scout.{ns}@issuer.agentauth.test; capabilities: "
    missing = (
        f'ServiceAccount "scout-sa" not found in namespace "{ns}". Create it with: '
        f"kubectl create serviceaccount scout-sa -n {ns}"
    )
    ready = ("Normal", "Ready", "Agent holds 2 capabilities: document.read, payments.refund")
    # Events are posted right after the status write that they describe.
    events = wait_for(
        lambda: (
            (e := events_for(kubectl, namespace=ns, name="scout", kind="Agent"))
            and e[-1] == ready
            and e
        ),
        message="Ready event",
    )
    # Agent and grant arrive together: the first reconcile usually sees both (one Registered
    # Event naming the capabilities); if it ran before the grant arrived, the capabilities come
    # in a second Event. Either way each Event is posted exactly once.
    assert events in (
        [
            ("Normal", "Registered", registered + caps),
            ("Warning", "ServiceAccountNotFound", missing),
            ready,
        ],
        [
            ("Normal", "Registered", registered + "none"),
            ("Warning", "ServiceAccountNotFound", missing),
            ("Normal", "CapabilitiesChanged", "Granted " + caps),
            ready,
        ],
    ), events
    grant_status = get_json(kubectl, "capabilitygrant", "scout-docs", "-n", ns)["status"]
    assert grant_status["matchedAgents"] == ["scout"]
    assert grant_status["conditions"][0]["reason"] == "Active"
    described = kubectl("describe", "agent", "scout", "-n", ns).stdout
    assert "Registered as aauth:scout." in described
    table = kubectl("get", "agents", "-n", ns).stdout
    assert "scout" in table


def test_grants_added_removed_and_expired(
    kubectl: Kubectl, install: Install, controller: ControllerThread
) -> None:
    ns = install.namespace
    kubectl("create", "serviceaccount", "clerk-sa", "-n", ns)
    apply(
        kubectl,
        agent("clerk", ns),
        grant(
            "clerk-base", ns, agents={"names": ["clerk"]}, capabilities=[{"name": "document.read"}]
        ),
    )
    wait_for(
        lambda: (
            capabilities_of(kubectl, namespace=ns, name="clerk")
            == [("document.read", "clerk-base", "Automatic")]
        ),
        message="base grant",
    )

    # Added by label selector.
    selector = {"selector": {"matchLabels": {"team": "research"}}}
    apply(kubectl, grant("team-wide", ns, agents=selector, capabilities=[{"name": "calendar.*"}]))
    wait_for(
        lambda: (
            ("calendar.*", "team-wide", "Automatic")
            in capabilities_of(kubectl, namespace=ns, name="clerk")
        ),
        message="selector grant",
    )

    # Removed: deleting the grant reaches the agent within 2 seconds.
    kubectl("delete", "capabilitygrant", "team-wide", "-n", ns)
    started = time.monotonic()
    wait_for(
        lambda: (
            capabilities_of(kubectl, namespace=ns, name="clerk")
            == [("document.read", "clerk-base", "Automatic")]
        ),
        timeout=2.0,
        message="grant deletion within 2 s",
    )
    assert time.monotonic() - started < 2.0

    # Expired: the capability stops applying at expiresAt, with an Event on the grant.
    expires = (datetime.datetime.now(datetime.UTC) + datetime.timedelta(seconds=5)).replace(
        microsecond=0
    )
    apply(
        kubectl,
        grant(
            "temporary",
            ns,
            agents={"names": ["clerk"]},
            capabilities=[{"name": "ledger.write"}],
            expiresAt=expires.strftime("%Y-%m-%dT%H:%M:%SZ"),
        ),
    )
    wait_for(
        lambda: (
            ("ledger.write", "temporary", "Automatic")
            in capabilities_of(kubectl, namespace=ns, name="clerk")
        ),
        message="temporary grant",
    )
    wait_for(
        lambda: (
            capabilities_of(kubectl, namespace=ns, name="clerk")
            == [("document.read", "clerk-base", "Automatic")]
        ),
        timeout=10,
        message="expiry",
    )
    assert datetime.datetime.now(datetime.UTC) >= expires
    wait_for(
        lambda: events_for(kubectl, namespace=ns, name="temporary", kind="CapabilityGrant"),
        message="event",
    )
    assert events_for(kubectl, namespace=ns, name="temporary", kind="CapabilityGrant") == [
        (
            "Normal",
            "Expired",
            f"Grant expired at {expires.strftime('%Y-%m-%dT%H:%M:%SZ')}; it gives nothing",
        ),
    ]
    status = get_json(kubectl, "capabilitygrant", "temporary", "-n", ns)["status"]
    assert status["conditions"][0]["reason"] == "Expired"


def test_suspend_resume_and_delete(
    kubectl: Kubectl, install: Install, controller: ControllerThread
) -> None:
    ns = install.namespace
    kubectl("create", "serviceaccount", "pilot-sa", "-n", ns)
    # The grant first (and seen by the controller), so the agent's first status has it.
    apply(
        kubectl,
        grant(
            "pilot-grant", ns, agents={"names": ["pilot"]}, capabilities=[{"name": "flight.plan"}]
        ),
    )
    wait_for(
        lambda: (get_json(kubectl, "capabilitygrant", "pilot-grant", "-n", ns) or {}).get("status"),
        message="grant status",
    )
    apply(kubectl, agent("pilot", ns))
    wait_for(
        lambda: ready_condition(get_json(kubectl, "agent", "pilot", "-n", ns)) == ("True", "Ready"),
        message="Ready",
    )
    kubectl(
        "patch", "agent", "pilot", "-n", ns, "--type", "merge", "-p", '{"spec":{"suspended":true}}'
    )
    wait_for(
        lambda: (
            ready_condition(get_json(kubectl, "agent", "pilot", "-n", ns)) == ("False", "Suspended")
        ),
        message="Suspended",
    )
    kubectl(
        "patch", "agent", "pilot", "-n", ns, "--type", "merge", "-p", '{"spec":{"suspended":false}}'
    )
    wait_for(
        lambda: ready_condition(get_json(kubectl, "agent", "pilot", "-n", ns)) == ("True", "Ready"),
        message="Ready again",
    )

    def reasons() -> list[str]:
        return [r for _t, r, _m in events_for(kubectl, namespace=ns, name="pilot", kind="Agent")]

    wait_for(lambda: len(reasons()) >= 5, message="five events")
    assert reasons() == ["Registered", "Ready", "Suspended", "Resumed", "Ready"]
    obj = get_json(kubectl, "agent", "pilot", "-n", ns)
    assert obj["status"]["observedGeneration"] == obj["metadata"]["generation"] == 3

    kubectl("delete", "agent", "pilot", "-n", ns)
    wait_for(
        lambda: (
            get_json(kubectl, "capabilitygrant", "pilot-grant", "-n", ns)["status"]["conditions"][
                0
            ]["reason"]
            == "NoMatchingAgents"
        ),
        message="grant unmatched",
    )
    assert get_json(kubectl, "agent", "pilot", "-n", ns) is None
    assert controller.failures == []


def test_relabelling_an_agent_moves_it_in_and_out_of_selector_grants(
    kubectl: Kubectl, install: Install, controller: ControllerThread
) -> None:
    ns = install.namespace
    kubectl("create", "serviceaccount", "mover-sa", "-n", ns)
    apply(
        kubectl,
        grant(
            "movers",
            ns,
            agents={"selector": {"matchLabels": {"crew": "movers"}}},
            capabilities=[{"name": "truck.drive"}],
        ),
        agent("mover", ns),
    )
    wait_for(
        lambda: (
            ready_condition(get_json(kubectl, "agent", "mover", "-n", ns))
            == ("False", "NoCapabilities")
        ),
        message="no capabilities yet",
    )
    kubectl("label", "agent", "mover", "-n", ns, "crew=movers")
    wait_for(
        lambda: (
            capabilities_of(kubectl, namespace=ns, name="mover")
            == [("truck.drive", "movers", "Automatic")]
        ),
        message="selected",
    )
    wait_for(
        lambda: (
            get_json(kubectl, "capabilitygrant", "movers", "-n", ns)["status"]["matchedAgents"]
            == ["mover"]
        ),
        message="grant lists it",
    )
    kubectl("label", "agent", "mover", "-n", ns, "crew-")
    wait_for(
        lambda: capabilities_of(kubectl, namespace=ns, name="mover") == [], message="deselected"
    )
    wait_for(
        lambda: (
            get_json(kubectl, "capabilitygrant", "movers", "-n", ns)["status"]["matchedAgents"]
            == []
        ),
        message="grant no longer lists it",
    )
