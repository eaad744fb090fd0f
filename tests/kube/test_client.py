"""The async Kubernetes client and list+watch cache against the embedded control plane."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from agentauth.devcluster import server
from agentauth.kube import caches, config
from agentauth.kube import client as kubeclient

CONFIGMAPS = kubeclient.Resource("", "v1", "configmaps")


@pytest.fixture
async def api(dev_cluster: server.DevCluster) -> AsyncIterator[kubeclient.KubeClient]:
    async with kubeclient.KubeClient(config.from_kubeconfig(dev_cluster.kubeconfig_path)) as client:
        yield client


def test_kubeconfig_loading(dev_cluster: server.DevCluster) -> None:
    cfg = config.from_kubeconfig(dev_cluster.kubeconfig_path)
    assert cfg.server == dev_cluster.url
    assert cfg.bearer_token() == dev_cluster.admin_token
    assert cfg.ca_data is not None or cfg.ca_file is not None
    with pytest.raises(config.ConfigError, match="cannot use kubeconfig"):
        config.from_kubeconfig(dev_cluster.kubeconfig_path, context="no-such-context")


async def test_create_get_patch_list_delete(api: kubeclient.KubeClient, namespace: str) -> None:
    body = {"metadata": {"name": "one", "labels": {"app": "x"}}, "data": {"a": "1"}}
    created = await api.create(CONFIGMAPS, body, namespace=namespace)
    assert created["metadata"]["uid"]
    patched = await api.patch(CONFIGMAPS, "one", {"data": {"b": "2"}}, namespace=namespace)
    assert patched["data"] == {"a": "1", "b": "2"}
    listed = await api.list(CONFIGMAPS, namespace=namespace, label_selector="app=x")
    assert [i["metadata"]["name"] for i in listed["items"]] == ["one"]
    assert (await api.get(CONFIGMAPS, "one", namespace=namespace))["data"]["b"] == "2"
    await api.delete(CONFIGMAPS, "one", namespace=namespace)
    with pytest.raises(kubeclient.ApiError) as caught:
        await api.get(CONFIGMAPS, "one", namespace=namespace)
    assert (caught.value.code, caught.value.reason) == (404, "NotFound")
    assert await api.get_or_none(CONFIGMAPS, "one", namespace=namespace) is None


async def test_get_or_none_raises_every_error_but_404(dev_cluster: server.DevCluster) -> None:
    cfg = config.from_kubeconfig(dev_cluster.kubeconfig_path)
    cfg.token = "not-a-token"
    async with kubeclient.KubeClient(cfg) as client:
        with pytest.raises(kubeclient.ApiError) as caught:
            await client.get_or_none(CONFIGMAPS, "one", namespace="default")
    assert caught.value.code == 401


async def test_unauthenticated_client_gets_401(dev_cluster: server.DevCluster) -> None:
    cfg = config.from_kubeconfig(dev_cluster.kubeconfig_path)
    cfg.token = "not-a-token"
    async with kubeclient.KubeClient(cfg) as client:
        with pytest.raises(kubeclient.ApiError) as caught:
            await client.list(CONFIGMAPS, namespace="default")
    assert caught.value.code == 401


async def wait_for(cache: caches.Cache[Any], predicate: Any, timeout: float = 5.0) -> None:
    async def loop() -> None:
        while not predicate():
            async with cache.changed:
                await cache.changed.wait()

    await asyncio.wait_for(loop(), timeout)


async def test_cache_syncs_then_follows_adds_updates_and_deletes(
    api: kubeclient.KubeClient, namespace: str
) -> None:
    await api.create(CONFIGMAPS, {"metadata": {"name": "before"}}, namespace=namespace)
    cache: caches.Cache[dict[str, Any]] = caches.Cache(
        api, CONFIGMAPS, parse=dict, namespace=namespace
    )
    task = asyncio.create_task(cache.run())
    try:
        await asyncio.wait_for(cache.synced.wait(), 10)
        assert cache.get(namespace, "before") is not None
        await api.create(
            CONFIGMAPS, {"metadata": {"name": "after"}, "data": {"v": "1"}}, namespace=namespace
        )
        await wait_for(cache, lambda: cache.get(namespace, "after") is not None)
        await api.patch(CONFIGMAPS, "after", {"data": {"v": "2"}}, namespace=namespace)
        await wait_for(
            cache, lambda: (cache.get(namespace, "after") or {}).get("data", {}).get("v") == "2"
        )
        await api.delete(CONFIGMAPS, "before", namespace=namespace)
        await wait_for(cache, lambda: cache.get(namespace, "before") is None)
        assert len(cache) == 1
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_unparseable_objects_are_left_out(api: kubeclient.KubeClient, namespace: str) -> None:
    await api.create(
        CONFIGMAPS, {"metadata": {"name": "good"}, "data": {"ok": "1"}}, namespace=namespace
    )
    await api.create(CONFIGMAPS, {"metadata": {"name": "bad"}}, namespace=namespace)

    def parse(obj: dict[str, Any]) -> str:
        return str(obj["data"]["ok"])  # KeyError for "bad"

    cache: caches.Cache[str] = caches.Cache(api, CONFIGMAPS, parse=parse, namespace=namespace)
    task = asyncio.create_task(cache.run())
    try:
        await asyncio.wait_for(cache.synced.wait(), 10)
        assert cache.items() == ["1"]
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


@pytest.fixture(scope="module")
def short_history_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[server.DevCluster]:
    """A second control plane that remembers only 3 events, so old versions expire quickly."""
    with server.running_cluster(tmp_path_factory.mktemp("short"), history_window=3) as cluster:
        yield cluster


async def test_watch_from_an_expired_version_raises_resource_expired(
    short_history_cluster: server.DevCluster,
) -> None:
    """A 410 from the server (HTTP status or ERROR event) becomes ResourceExpired (relist)."""
    cfg = config.from_kubeconfig(short_history_cluster.kubeconfig_path)
    async with kubeclient.KubeClient(cfg) as api:
        first = await api.create(CONFIGMAPS, {"metadata": {"name": "v0"}}, namespace="default")
        for index in range(1, 8):
            await api.create(CONFIGMAPS, {"metadata": {"name": f"v{index}"}}, namespace="default")
        old = first["metadata"]["resourceVersion"]
        with pytest.raises(kubeclient.ResourceExpired) as caught:
            async for _ in api.watch(
                CONFIGMAPS, resource_version=old, namespace="default", timeout_seconds=2
            ):
                pass
        assert caught.value.code == 410
