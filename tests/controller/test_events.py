"""Events of status writes are posted after the write, in the background, in order per object,
and flushed when the controller stops (``runtime.Controller.write_status``/``flush_events``).

What is real: the controller's runtime. What is not: the API server, replaced by a recording
client whose Event posts wait until the test releases them, so the order is observable.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

from agentauth.controller import runtime
from agentauth.controller import settings as controller_settings
from agentauth.domain import agents as domain_agents
from agentauth.kube import client as kube
from agentauth.kube import config as kube_config


class RecordingApi(kube.KubeClient):
    """Answers status patches at once; holds each Event post until ``release`` is set."""

    def __init__(self) -> None:
        super().__init__(kube_config.KubeConfig(server="https://api.invalid"))
        self.release = asyncio.Event()
        self.posted: list[tuple[str, str]] = []
        self.version = 0

    async def patch(
        self, resource: kube.Resource, name: str, patch: Mapping[str, Any], **_: Any
    ) -> dict[str, Any]:
        self.version += 1
        return {"metadata": {"name": name, "resourceVersion": str(self.version)}}

    async def create(
        self, resource: kube.Resource, body: Mapping[str, Any], *, namespace: str | None = None
    ) -> dict[str, Any]:
        await self.release.wait()
        self.posted.append((str(body["involvedObject"]["name"]), str(body["reason"])))
        return dict(body)


def body(name: str) -> dict[str, Any]:
    meta = {"name": name, "namespace": "ns", "uid": f"uid-{name}", "resourceVersion": "1"}
    return {"apiVersion": "agentauth.dev/v1alpha1", "metadata": meta}


def event(reason: str) -> domain_agents.Event:
    return domain_agents.Event("Normal", reason, reason)


async def write(ctl: runtime.Controller, name: str, reasons: list[str]) -> None:
    await ctl.write_status(
        resource=kube.AGENTS,
        kind="Agent",
        body=body(name),
        status={"phase": reasons[-1]},
        events=[event(r) for r in reasons],
    )


async def test_writes_return_before_their_events_which_keep_their_order_per_object() -> None:
    api = RecordingApi()
    ctl = runtime.Controller(settings=controller_settings.build(issuer="https://i.test"), api=api)
    # Every write returns while its Events are still held: the reconcile does not wait on them.
    await write(ctl, "a", ["Registered", "Ready"])
    await write(ctl, "b", ["Registered"])
    await write(ctl, "a", ["Suspended"])
    await write(ctl, "a", ["Resumed", "Ready"])
    assert api.posted == []
    api.release.set()
    await ctl.flush_events(timeout=10)
    assert [reason for name, reason in api.posted if name == "a"] == [
        "Registered",
        "Ready",
        "Suspended",
        "Resumed",
        "Ready",
    ]
    assert [reason for name, reason in api.posted if name == "b"] == ["Registered"]


async def test_a_stop_cancels_the_posts_still_held_after_the_flush_deadline() -> None:
    api = RecordingApi()
    ctl = runtime.Controller(settings=controller_settings.build(issuer="https://i.test"), api=api)
    await write(ctl, "a", ["Registered", "Ready"])
    await write(ctl, "a", ["Suspended"])
    await ctl.flush_events(timeout=0.05)
    # Released now, a post that survived the stop would show up with the next object's.
    api.release.set()
    await write(ctl, "b", ["Registered"])
    await ctl.flush_events(timeout=10)
    assert api.posted == [("b", "Registered")]
