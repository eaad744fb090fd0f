"""A controller restarted mid-way loses nothing and posts nothing twice.

All state lives in the API (status, Events); a new controller recomputes from its initial
listing and writes (and posts) only what differs from the stored status.
"""

from __future__ import annotations

from collections import Counter

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


def settle(running: ControllerThread, *, agents: int) -> None:
    """Wait until the controller has reconciled at least ``agents`` Agents and is idle."""

    def settled() -> bool:
        ctl = running.controller
        return ctl is not None and ctl.reconciled["agent"] >= agents and ctl.queue.idle()

    wait_for(settled, message="controller idle")


def test_restart_mid_way(kubectl: Kubectl, install: Install) -> None:
    ns = install.namespace
    documents = [
        {
            "apiVersion": "agentauth.dev/v1alpha1",
            "kind": "CapabilityGrant",
            "metadata": {"name": "base", "namespace": ns},
            "spec": {"agents": {"names": ["one", "two"]}, "capabilities": [{"name": "doc.read"}]},
        },
        {
            "apiVersion": "agentauth.dev/v1alpha1",
            "kind": "Agent",
            "metadata": {"name": "one", "namespace": ns},
            "spec": {"serviceAccountName": "one-sa"},
        },
        {
            "apiVersion": "agentauth.dev/v1alpha1",
            "kind": "Agent",
            "metadata": {"name": "two", "namespace": ns},
            "spec": {"serviceAccountName": "two-sa"},
        },
    ]
    kubectl("create", "serviceaccount", "two-sa", "-n", ns)
    first = ControllerThread(install.settings).start()
    try:
        kubectl("apply", "-f", "-", input=yaml.safe_dump_all(documents))
        wait_for(
            lambda: (
                ready_condition(get_json(kubectl, "agent", "one", "-n", ns))
                == ("False", "ServiceAccountNotFound")
            ),
            message="one waits for its SA",
        )
        wait_for(
            lambda: (
                ready_condition(get_json(kubectl, "agent", "two", "-n", ns)) == ("True", "Ready")
            ),
            message="two Ready",
        )
    finally:
        first.stop()
    before = {
        name: events_for(kubectl, namespace=ns, name=name, kind="Agent") for name in ("one", "two")
    }

    # While no controller runs: the SA appears and a grant is added.
    kubectl("create", "serviceaccount", "one-sa", "-n", ns)
    kubectl(
        "apply",
        "-f",
        "-",
        input=yaml.safe_dump(
            {
                "apiVersion": "agentauth.dev/v1alpha1",
                "kind": "CapabilityGrant",
                "metadata": {"name": "extra", "namespace": ns},
                "spec": {"agents": {"names": ["one"]}, "capabilities": [{"name": "doc.write"}]},
            }
        ),
    )

    second = ControllerThread(install.settings).start()
    try:
        wait_for(
            lambda: (
                ready_condition(get_json(kubectl, "agent", "one", "-n", ns)) == ("True", "Ready")
            ),
            message="one Ready after restart",
        )
        wait_for(
            lambda: (
                [
                    c["name"]
                    for c in get_json(kubectl, "agent", "one", "-n", ns)["status"]["capabilities"]
                ]
                == ["doc.read", "doc.write"]
            ),
            message="both grants",
        )
        settle(second, agents=2)
    finally:
        second.stop()
    # "two" did not change: nothing new was posted for it.
    assert events_for(kubectl, namespace=ns, name="two", kind="Agent") == before["two"]
    one = events_for(kubectl, namespace=ns, name="one", kind="Agent")
    assert one[: len(before["one"])] == before["one"]
    assert [reason for _t, reason, _m in one[len(before["one"]) :]] == [
        "CapabilitiesChanged",
        "Ready",
    ]
    versions = {
        n: get_json(kubectl, "agent", n, "-n", ns)["metadata"]["resourceVersion"]
        for n in ("one", "two")
    }
    all_events = events_for(kubectl, namespace=ns, name="one", kind="Agent") + events_for(
        kubectl, namespace=ns, name="two", kind="Agent"
    )

    # A restart with nothing changed writes nothing and posts nothing.
    third = ControllerThread(install.settings).start()
    try:
        settle(third, agents=2)
    finally:
        third.stop()
    assert {
        n: get_json(kubectl, "agent", n, "-n", ns)["metadata"]["resourceVersion"]
        for n in ("one", "two")
    } == versions
    assert (
        events_for(kubectl, namespace=ns, name="one", kind="Agent")
        + events_for(kubectl, namespace=ns, name="two", kind="Agent")
        == all_events
    )
    counts = Counter(reason for _t, reason, _m in all_events)
    assert counts["Registered"] == 2
