"""The controller's list+watch mirrors (``controller/informers.py``) against the embedded control
plane: real HTTPS list and watch, real objects (ConfigMaps stand in for any kind)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from agentauth.controller import informers
from agentauth.devcluster import server
from agentauth.kube import client as kube
from agentauth.kube import config

CONFIGMAPS = kube.Resource("", "v1", "configmaps")


@pytest.fixture
async def api(dev_cluster: server.DevCluster) -> AsyncIterator[kube.KubeClient]:
    async with kube.KubeClient(config.from_kubeconfig(dev_cluster.kubeconfig_path)) as client:
        yield client


class Recorder:
    """Records every delivered change as (type, name of old, name of new, data of new)."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str | None, str | None, Any]] = []

    def __call__(self, event_type: str, old: Any, new: Any) -> None:
        self.seen.append(
            (
                event_type,
                old["metadata"]["name"] if old else None,
                new["metadata"]["name"] if new else None,
                (new or {}).get("data"),
            )
        )


async def until(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.02)


@contextlib.asynccontextmanager
async def running(informer: informers.Informer) -> AsyncIterator[None]:
    listed = informer.relists
    task = asyncio.create_task(informer.run())
    try:
        await until(lambda: informer.relists > listed)
        assert informer.synced.is_set()
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def by_label(body: dict[str, Any]) -> list[str]:
    return [str(v) for v in ((body["metadata"].get("labels") or {}).values())]


async def test_first_listing_then_every_change_in_order_with_indices(
    api: kube.KubeClient, namespace: str
) -> None:
    await api.create(
        CONFIGMAPS, {"metadata": {"name": "before", "labels": {"k": "x"}}}, namespace=namespace
    )
    mirror = informers.Informer(
        api, CONFIGMAPS, namespaces=(namespace,), indexers={"label": by_label}
    )
    recorder = Recorder()
    mirror.listen(recorder)
    async with running(mirror):
        assert recorder.seen == [("ADDED", None, "before", None)]
        await api.create(
            CONFIGMAPS, {"metadata": {"name": "later", "labels": {"k": "x"}}}, namespace=namespace
        )
        await api.patch(
            CONFIGMAPS,
            "before",
            {"metadata": {"labels": {"k": "y"}}, "data": {"a": "1"}},
            namespace=namespace,
        )
        await api.delete(CONFIGMAPS, "later", namespace=namespace)
        await until(lambda: len(recorder.seen) == 4)
        assert recorder.seen[1:] == [
            ("ADDED", None, "later", None),
            ("MODIFIED", "before", "before", {"a": "1"}),
            ("DELETED", "later", None, None),
        ]
        assert [b["metadata"]["name"] for b in mirror.by("label", "y")] == ["before"]
        assert mirror.by("label", "x") == []
        assert mirror.get(namespace, "later") is None
        assert len(mirror) == 1


async def test_a_relist_delivers_only_what_changed_meanwhile(
    api: kube.KubeClient, namespace: str
) -> None:
    """What a restart or a 410 Gone sees: the objects that appeared, changed or went while
    nobody watched, and nothing for the unchanged ones."""
    for name in ("same", "changed", "gone"):
        await api.create(CONFIGMAPS, {"metadata": {"name": name}}, namespace=namespace)
    mirror = informers.Informer(api, CONFIGMAPS, namespaces=(namespace,))
    recorder = Recorder()
    mirror.listen(recorder)
    async with running(mirror):
        pass
    assert sorted(recorder.seen) == [
        ("ADDED", None, name, None) for name in ("changed", "gone", "same")
    ]
    recorder.seen.clear()
    await api.patch(CONFIGMAPS, "changed", {"data": {"b": "2"}}, namespace=namespace)
    await api.delete(CONFIGMAPS, "gone", namespace=namespace)
    await api.create(CONFIGMAPS, {"metadata": {"name": "new"}}, namespace=namespace)
    async with running(mirror):
        pass
    assert sorted(recorder.seen) == [
        ("ADDED", None, "new", None),
        ("DELETED", "gone", None, None),
        ("MODIFIED", "changed", "changed", {"b": "2"}),
    ]
    assert mirror.relists == 2


async def test_only_the_watched_namespaces_are_mirrored(
    api: kube.KubeClient, namespace: str
) -> None:
    await api.create(CONFIGMAPS, {"metadata": {"name": "mine"}}, namespace=namespace)
    await api.create(CONFIGMAPS, {"metadata": {"name": "elsewhere"}}, namespace="default")
    try:
        mirror = informers.Informer(api, CONFIGMAPS, namespaces=(namespace,))
        async with running(mirror):
            assert mirror.get(namespace, "mine") is not None
            assert mirror.get("default", "elsewhere") is None
    finally:
        await api.delete(CONFIGMAPS, "elsewhere", namespace="default")


async def test_a_failing_listener_does_not_stop_the_others(
    api: kube.KubeClient, namespace: str
) -> None:
    mirror = informers.Informer(api, CONFIGMAPS, namespaces=(namespace,))

    def broken(event_type: str, old: Any, new: Any) -> None:
        raise RuntimeError("listener bug")

    recorder = Recorder()
    mirror.listen(broken)
    mirror.listen(recorder)
    async with running(mirror):
        await api.create(CONFIGMAPS, {"metadata": {"name": "one"}}, namespace=namespace)
        await api.create(CONFIGMAPS, {"metadata": {"name": "two"}}, namespace=namespace)
        await until(lambda: len(recorder.seen) == 2)
    assert [name for _t, _o, name, _d in recorder.seen] == ["one", "two"]


async def test_the_listing_is_paginated_and_complete(api: kube.KubeClient, namespace: str) -> None:
    for index in range(5):
        await api.create(CONFIGMAPS, {"metadata": {"name": f"c{index}"}}, namespace=namespace)
    mirror = informers.Informer(api, CONFIGMAPS, namespaces=(namespace,), page_size=2)
    recorder = Recorder()
    mirror.listen(recorder)
    async with running(mirror):
        assert sorted(name for _t, _o, name, _d in recorder.seen) == [f"c{i}" for i in range(5)]
        await api.create(CONFIGMAPS, {"metadata": {"name": "later"}}, namespace=namespace)
        await until(lambda: mirror.get(namespace, "later") is not None)
    assert len(recorder.seen) == 6
