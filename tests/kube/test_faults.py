"""The Kubernetes client, caches and health probe when the API server freezes or goes away.

What is real: the embedded control plane (the session ``dev_cluster``) behind a loopback TCP proxy
(:class:`tests.faults.TcpProxy`) that can hold every byte (a frozen, SIGSTOPped server) or cut
every connection and refuse new ones (a dead server), then let traffic flow again; real TLS,
real service-account tokens whose bound Secret is deleted to make them invalid.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from agentauth.devcluster import server
from agentauth.kube import caches, config, health
from agentauth.kube import client as kubeclient
from tests import faults

CONFIGMAPS = kubeclient.Resource("", "v1", "configmaps")
DEADLINE = 1.0


@pytest.fixture
def proxy(dev_cluster: server.DevCluster) -> Iterator[faults.TcpProxy]:
    port = int(dev_cluster.url.rsplit(":", 1)[1])
    running = faults.TcpProxy(lambda: ("127.0.0.1", port))
    yield running
    running.close()


def proxied(dev_cluster: server.DevCluster, proxy: faults.TcpProxy) -> config.KubeConfig:
    cfg = config.from_kubeconfig(dev_cluster.kubeconfig_path)
    cfg.server = f"https://127.0.0.1:{proxy.port}"
    return cfg


@pytest.fixture
async def api(
    dev_cluster: server.DevCluster, proxy: faults.TcpProxy
) -> AsyncIterator[kubeclient.KubeClient]:
    async with kubeclient.KubeClient(proxied(dev_cluster, proxy), timeout=DEADLINE) as created:
        yield created


async def test_api_errors_come_as_the_subclass_callers_act_on(
    api: kubeclient.KubeClient, namespace: str
) -> None:
    with pytest.raises(kubeclient.NotFound) as missing:
        await api.get(CONFIGMAPS, "nope", namespace=namespace)
    assert (missing.value.code, missing.value.reason) == (404, "NotFound")
    await api.create(CONFIGMAPS, {"metadata": {"name": "one"}}, namespace=namespace)
    with pytest.raises(kubeclient.Conflict) as taken:
        await api.create(CONFIGMAPS, {"metadata": {"name": "one"}}, namespace=namespace)
    assert (taken.value.code, taken.value.reason) == (409, "AlreadyExists")
    stale = await api.get(CONFIGMAPS, "one", namespace=namespace)
    await api.patch(CONFIGMAPS, "one", {"data": {"a": "1"}}, namespace=namespace)
    with pytest.raises(kubeclient.Conflict) as raced:
        await api.replace(CONFIGMAPS, stale, namespace=namespace)
    assert (raced.value.code, raced.value.reason) == (409, "Conflict")


async def test_calls_to_a_frozen_api_server_end_at_their_deadline(
    api: kubeclient.KubeClient, proxy: faults.TcpProxy, namespace: str
) -> None:
    await api.list(CONFIGMAPS, namespace=namespace)  # a kept-alive connection, then a fresh one
    proxy.pause()
    try:
        for call in (
            lambda: api.list(CONFIGMAPS, namespace=namespace),
            lambda: api.create(CONFIGMAPS, {"metadata": {"name": "x"}}, namespace=namespace),
            lambda: anext(api.watch(CONFIGMAPS, resource_version="0", namespace=namespace)),
        ):
            started = time.monotonic()
            with pytest.raises(kubeclient.ApiUnavailable) as caught:
                await call()
            assert DEADLINE * 0.9 < time.monotonic() - started < DEADLINE + 2
            assert (caught.value.code, caught.value.reason, caught.value.failure) == (
                504,
                "Timeout",
                "timeout",
            )
            assert f"no answer from the API server within {DEADLINE:g}s" in caught.value.message
    finally:
        proxy.resume()
    await api.list(CONFIGMAPS, namespace=namespace)


async def test_a_dead_api_server_is_unavailable_never_a_bare_transport_error(
    api: kubeclient.KubeClient, proxy: faults.TcpProxy, namespace: str
) -> None:
    await api.list(CONFIGMAPS, namespace=namespace)
    proxy.go_down()
    try:
        with pytest.raises(kubeclient.ApiUnavailable) as caught:
            await api.list(CONFIGMAPS, namespace=namespace)
        assert (caught.value.code, caught.value.failure) == (503, "unreachable")
        assert "cannot reach the API server" in caught.value.message
    finally:
        proxy.come_up()
    await api.list(CONFIGMAPS, namespace=namespace)


def _bound_token(kube_api: Any, *, namespace: str, account: str, secret: str) -> str:
    core = client.CoreV1Api(kube_api)
    uid = core.read_namespaced_secret(secret, namespace).metadata.uid
    spec = {"boundObjectRef": {"kind": "Secret", "apiVersion": "v1", "name": secret, "uid": uid}}
    answer = core.create_namespaced_service_account_token(account, namespace, {"spec": spec})
    return str(answer.status.token)


@pytest.fixture
def reader(kube_api: Any, namespace: str) -> str:
    """A ServiceAccount that may list and watch ConfigMaps in ``namespace``, with two Secrets
    its tokens can be bound to."""
    core, rbac = client.CoreV1Api(kube_api), client.RbacAuthorizationV1Api(kube_api)
    core.create_namespaced_service_account(namespace, {"metadata": {"name": "reader"}})
    for secret in ("first", "second"):
        core.create_namespaced_secret(namespace, {"metadata": {"name": secret}})
    rbac.create_namespaced_role(
        namespace,
        {
            "metadata": {"name": "reader"},
            "rules": [{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["list", "watch"]}],
        },
    )
    rbac.create_namespaced_role_binding(
        namespace,
        {
            "metadata": {"name": "reader"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "reader"},
            "subjects": [{"kind": "ServiceAccount", "name": "reader", "namespace": namespace}],
        },
    )
    return "reader"


def _token_config(dev_cluster: server.DevCluster, token_file: Path) -> config.KubeConfig:
    cfg = config.from_kubeconfig(dev_cluster.kubeconfig_path)
    cfg.token, cfg.client_cert_file, cfg.client_key_file = None, None, None
    cfg.token_file = token_file
    return cfg


async def test_a_new_token_file_is_used_at_once_and_a_401_re_reads_it(
    dev_cluster: server.DevCluster, kube_api: Any, namespace: str, reader: str, tmp_path: Path
) -> None:
    first = _bound_token(kube_api, namespace=namespace, account=reader, secret="first")
    second = _bound_token(kube_api, namespace=namespace, account=reader, secret="second")
    width = max(len(first), len(second))
    token_file = tmp_path / "token"
    token_file.write_text(first.ljust(width))
    async with kubeclient.KubeClient(_token_config(dev_cluster, token_file)) as api:
        await api.list(CONFIGMAPS, namespace=namespace)
        client.CoreV1Api(kube_api).delete_namespaced_secret("first", namespace)  # first: dead
        # The file changes in place to the second token but looks the same to stat() (size,
        # inode, mtime): only the 401 can tell the client to read it again.
        before = token_file.stat()
        with token_file.open("r+") as handle:
            handle.write(second.ljust(width))
        os.utime(token_file, ns=(before.st_atime_ns, before.st_mtime_ns))
        await api.list(CONFIGMAPS, namespace=namespace)  # 401, re-read, retried once: 200
        # A file that visibly changed is read before the next call, no 401 needed.
        token_file.write_text(first)
        with pytest.raises(kubeclient.Unauthorized):
            await api.list(CONFIGMAPS, namespace=namespace)  # the dead token, from the new file


async def test_a_cache_recovers_within_seconds_when_the_api_server_returns(
    api: kubeclient.KubeClient, proxy: faults.TcpProxy, namespace: str, kube_api: Any
) -> None:
    cache: caches.Cache[dict[str, Any]] = caches.Cache(
        api, CONFIGMAPS, parse=dict, namespace=namespace
    )
    task = asyncio.create_task(cache.run())
    try:
        await asyncio.wait_for(cache.synced.wait(), 10)
        # The watch has its own connection (requests use the client's pool): the server dies
        # once both are open, not while the watch is still connecting.
        await asyncio.wait_for(_until(lambda: proxy.connections >= 2), 10)
        proxy.go_down()
        await asyncio.wait_for(_until(lambda: not cache.healthy), 10)
        assert "cannot reach the API server" in (cache.last_error or "")
        # made while the cache cannot see it
        client.CoreV1Api(kube_api).create_namespaced_config_map(
            namespace, {"metadata": {"name": "while-down"}}
        )
        proxy.come_up()
        returned = time.monotonic()
        await asyncio.wait_for(_until(lambda: cache.get(namespace, "while-down") is not None), 10)
        assert time.monotonic() - returned < caches.RETRY_MAX + 3
        assert cache.healthy and cache.last_error is None
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_listeners_see_every_change_and_a_deletion_missed_while_the_server_was_away(
    api: kubeclient.KubeClient, proxy: faults.TcpProxy, namespace: str, kube_api: Any
) -> None:
    """What the token service's snapshot is kept current by: each store and removal, one object
    at a time, including one the watch never saw (the relist reports it)."""
    core = client.CoreV1Api(kube_api)
    core.create_namespaced_config_map(namespace, {"metadata": {"name": "before"}})
    cache: caches.Cache[dict[str, Any]] = caches.Cache(
        api, CONFIGMAPS, parse=dict, namespace=namespace
    )
    seen: dict[tuple[str, str], dict[str, Any] | None] = {}
    cache.listen(lambda key, item: seen.__setitem__(key, item))
    task = asyncio.create_task(cache.run())
    try:
        await asyncio.wait_for(cache.synced.wait(), 10)
        assert seen[(namespace, "before")] is not None
        core.create_namespaced_config_map(namespace, {"metadata": {"name": "watched"}})
        await asyncio.wait_for(_until(lambda: (namespace, "watched") in seen), 10)
        late: dict[tuple[str, str], dict[str, Any] | None] = {}
        cache.listen(lambda key, item: late.__setitem__(key, item))  # starts with the contents
        assert set(late) == {(namespace, "before"), (namespace, "watched")}
        proxy.go_down()
        await asyncio.wait_for(_until(lambda: not cache.healthy), 10)
        core.delete_namespaced_config_map("before", namespace)  # while the cache is away
        proxy.come_up()
        await asyncio.wait_for(_until(lambda: seen[(namespace, "before")] is None), 10)
        assert late[(namespace, "before")] is None
        assert seen[(namespace, "watched")] is not None
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_the_health_probe_sees_a_freeze_and_the_return(
    api: kubeclient.KubeClient, proxy: faults.TcpProxy
) -> None:
    probe = health.ApiHealth(api)
    recovered: list[bool] = []
    probe.on_recovered.append(lambda: recovered.append(True))
    assert await probe.check() and probe.reachable
    proxy.pause()
    try:
        started = time.monotonic()
        assert not await probe.check()
        assert time.monotonic() - started < DEADLINE + 2
        assert not probe.reachable and probe.unreachable_for() >= 0
        assert f"no answer from the API server within {DEADLINE:g}s" in (probe.last_error or "")
        assert recovered == []
    finally:
        proxy.resume()
    assert await probe.check()
    assert probe.reachable and probe.unreachable_for() == 0 and probe.last_error is None
    assert recovered == [True]


async def _until(predicate: Any) -> None:
    while not predicate():
        await asyncio.sleep(0.05)  # polling a cache attribute, bounded by the caller's wait_for
