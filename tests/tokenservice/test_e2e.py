"""End to end against the embedded control plane: real TokenRequest tokens, real watches.

The controller is not running here: the test creates the Agent, grant, pod and issuer-key
Secret through the API itself (the Agent has no status, which the domain rules treat as usable).
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from agentauth.devcluster import server
from agentauth.domain import keys, tokens
from agentauth.kube import client as kubeclient
from agentauth.kube import config
from agentauth.tokenservice import app as service_app
from agentauth.tokenservice import settings as settings_module
from agentauth.tokenservice import state as state_module

ISSUER = "https://agentauth.e2e.test"
EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"
JWT = "urn:ietf:params:oauth:token-type:jwt"
SERVICE_ACCOUNTS = kubeclient.SERVICE_ACCOUNTS


@dataclass
class Running:
    base: str
    api: kubeclient.KubeClient
    http: aiohttp.ClientSession
    state: state_module.KubeState
    namespace: str
    keyset: keys.KeySet

    async def sa_token(self, pod: dict[str, Any]) -> str:
        review = await self.api.request(
            "POST",
            f"/api/v1/namespaces/{self.namespace}/serviceaccounts/research-sa/token",
            body={
                "apiVersion": "authentication.k8s.io/v1",
                "kind": "TokenRequest",
                "spec": {
                    "audiences": [ISSUER],
                    "expirationSeconds": 600,
                    "boundObjectRef": {
                        "kind": "Pod",
                        "apiVersion": "v1",
                        "name": pod["metadata"]["name"],
                        "uid": pod["metadata"]["uid"],
                    },
                },
            },
        )
        token: str = review["status"]["token"]
        return token

    async def exchange(self, token: str) -> tuple[int, dict[str, Any]]:
        form = {"grant_type": EXCHANGE, "subject_token": token, "subject_token_type": JWT}
        async with self.http.post(f"{self.base}/oauth2/token", data=form) as response:
            return response.status, await response.json()

    async def introspect(self, token: str, *, caller: str) -> dict[str, Any]:
        async with self.http.post(
            f"{self.base}/oauth2/introspect",
            data={"token": token},
            headers={"Authorization": f"Bearer {caller}"},
        ) as response:
            body: dict[str, Any] = await response.json()
            return body


async def setup_objects(
    api: kubeclient.KubeClient, namespace: str, keyset: keys.KeySet
) -> dict[str, Any]:
    await api.create(kubeclient.NAMESPACES, {"metadata": {"name": namespace}})
    await api.create(SERVICE_ACCOUNTS, {"metadata": {"name": "research-sa"}}, namespace=namespace)
    pod = await api.create(
        kubeclient.PODS,
        {
            "metadata": {"name": "research-0", "labels": {"agentauth.dev/agent": "research"}},
            "spec": {
                "serviceAccountName": "research-sa",
                "containers": [{"name": "main", "image": "busybox"}],
            },
        },
        namespace=namespace,
    )
    await api.create(
        kubeclient.AGENTS,
        {
            "apiVersion": "agentauth.dev/v1alpha1",
            "kind": "Agent",
            "metadata": {"name": "research"},
            "spec": {"serviceAccountName": "research-sa"},
        },
        namespace=namespace,
    )
    await api.create(
        kubeclient.CAPABILITY_GRANTS,
        {
            "apiVersion": "agentauth.dev/v1alpha1",
            "kind": "CapabilityGrant",
            "metadata": {"name": "docs"},
            "spec": {
                "agents": {"names": ["research"]},
                "capabilities": [{"name": "document.read"}],
            },
        },
        namespace=namespace,
    )
    await api.create(
        kubeclient.SECRETS,
        {"metadata": {"name": keys.SECRET_NAME}, "data": keyset.to_secret_data()},
        namespace=namespace,
    )
    return pod


async def start(
    dev_cluster: server.DevCluster, namespace: str, keyset: keys.KeySet, **extra: Any
) -> tuple[web.AppRunner, Running]:
    settings = settings_module.Settings(
        issuer=ISSUER,
        cluster_issuer=dev_cluster.issuer,
        kubeconfig=dev_cluster.kubeconfig_path,
        namespace=namespace,
        watch_namespaces=(namespace,),
        **extra,
    )
    api = kubeclient.KubeClient(config.from_kubeconfig(dev_cluster.kubeconfig_path))
    state = state_module.KubeState(api, settings)
    await state.start()
    await state.wait_synced(10)
    runner = web.AppRunner(service_app.build_app(settings=settings, state=state, kube=api))
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    base = f"http://127.0.0.1:{runner.addresses[0][1]}"
    return runner, Running(base, api, aiohttp.ClientSession(), state, namespace, keyset)


@pytest.fixture
async def running(dev_cluster: server.DevCluster) -> AsyncIterator[tuple[Running, dict[str, Any]]]:
    namespace = f"ts-{int(time.time() * 1000) % 10**9}"
    keyset = keys.generate_keyset(now=datetime.now(UTC) - timedelta(minutes=1))
    admin = kubeclient.KubeClient(config.from_kubeconfig(dev_cluster.kubeconfig_path))
    pod = await setup_objects(admin, namespace, keyset)
    await admin.close()
    runner, svc = await start(dev_cluster, namespace, keyset)
    yield svc, pod
    await svc.http.close()
    await runner.cleanup()
    await svc.state.stop()
    await svc.api.delete(kubeclient.NAMESPACES, namespace)
    await svc.api.close()


async def eventually(check: Callable[[], Awaitable[bool]], *, within: float) -> float:
    """Poll ``check`` until true; return the elapsed seconds, fail after ``within``."""
    started = time.monotonic()
    while time.monotonic() - started < within:
        if await check():
            return time.monotonic() - started
        await asyncio.sleep(0.02)  # polling interval of a deadline loop, not synchronisation
    raise AssertionError(f"condition not reached within {within} s")


async def test_exchange_then_suspension_grant_deletion_and_pod_deletion_take_effect(
    running: tuple[Running, dict[str, Any]],
) -> None:
    svc, pod = running
    sa_token = await svc.sa_token(pod)
    status, body = await svc.exchange(sa_token)
    assert status == 200, body
    assert body["scope"] == "document.read"
    claims = tokens.verify(
        body["access_token"],
        public_keys=svc.keyset.public_keys(),
        issuer=ISSUER,
        now=datetime.now(UTC),
        audience=ISSUER,
    )
    assert claims.subject == f"aauth:research.{svc.namespace}@agentauth.e2e.test"
    assert claims.claims["pod"] == {"name": "research-0", "uid": pod["metadata"]["uid"]}
    agent_token = body["access_token"]

    await svc.api.patch(
        kubeclient.AGENTS, "research", {"spec": {"suspended": True}}, namespace=svc.namespace
    )

    async def refused() -> bool:
        status, body = await svc.exchange(sa_token)
        return (
            status == 400
            and body["error_description"] == f"agent {svc.namespace}/research is suspended"
        )

    assert await eventually(refused, within=2.0) < 2.0
    assert await svc.introspect(agent_token, caller=sa_token) == {"active": False}

    await svc.api.patch(
        kubeclient.AGENTS, "research", {"spec": {"suspended": False}}, namespace=svc.namespace
    )

    async def active() -> bool:
        return (await svc.introspect(agent_token, caller=sa_token))["active"] is True

    await eventually(active, within=2.0)
    await svc.api.delete(kubeclient.CAPABILITY_GRANTS, "docs", namespace=svc.namespace)

    async def inactive() -> bool:
        return (await svc.introspect(agent_token, caller=sa_token)) == {"active": False}

    assert await eventually(inactive, within=2.0) < 2.0

    await svc.api.delete(kubeclient.PODS, "research-0", namespace=svc.namespace)

    async def pod_gone() -> bool:
        status, body = await svc.exchange(sa_token)
        return status == 400 and body["error_description"].endswith(
            "bound to the token no longer exists"
        )

    await eventually(pod_gone, within=2.0)


async def test_token_review_mode(
    dev_cluster: server.DevCluster, running: tuple[Running, dict[str, Any]]
) -> None:
    svc, pod = running
    runner, reviewed = await start(dev_cluster, svc.namespace, svc.keyset, token_review=True)
    try:
        status, body = await reviewed.exchange(await svc.sa_token(pod))
        assert status == 200, body
        status, body = await reviewed.exchange("e30.e30.e30")
        assert (status, body["error"]) == (400, "invalid_grant")
    finally:
        await reviewed.http.close()
        await runner.cleanup()
        await reviewed.state.stop()
        await reviewed.api.close()


async def test_serve_becomes_ready_once_caches_sync_and_stops_cleanly(
    dev_cluster: server.DevCluster, running: tuple[Running, dict[str, Any]]
) -> None:
    """``serve`` as ``agentauth dev`` runs it: HTTPS with the dev CA's certificate."""
    svc, _ = running
    ca_path, cert_path, key_path = server.ensure_certificates(dev_cluster.directory)
    settings = settings_module.Settings(
        tls_cert=cert_path,
        tls_key=key_path,
        issuer=ISSUER,
        cluster_issuer=dev_cluster.issuer,
        kubeconfig=dev_cluster.kubeconfig_path,
        namespace=svc.namespace,
        watch_namespaces=(svc.namespace,),
        listen_host="127.0.0.1",
        listen_port=0,
    )
    stop = asyncio.Event()
    urls: list[str] = []
    task = asyncio.create_task(service_app.serve(settings, stop=stop, started=urls.append))

    tls = ssl.create_default_context(cafile=str(ca_path))

    async def ready() -> bool:
        if not urls:
            return False
        async with svc.http.get(f"{urls[0]}/readyz", ssl=tls) as response:
            return response.status == 200

    await eventually(ready, within=10.0)
    assert urls[0].startswith("https://127.0.0.1:")
    async with svc.http.get(f"{urls[0]}/jwks", ssl=tls) as response:
        assert (await response.json())["keys"][0]["kid"] == svc.keyset.signing_key().kid
    stop.set()
    await asyncio.wait_for(task, 10)


async def test_serve_with_a_shutdown_delay_fails_readiness_first_then_stops_accepting(
    dev_cluster: server.DevCluster, running: tuple[Running, dict[str, Any]]
) -> None:
    """``--shutdown-delay``: for load balancers that route by readiness, /readyz fails at once
    on stop while requests are still served for the delay; then the listener closes."""
    svc, _ = running
    settings = settings_module.Settings(
        issuer=ISSUER,
        cluster_issuer=dev_cluster.issuer,
        kubeconfig=dev_cluster.kubeconfig_path,
        namespace=svc.namespace,
        watch_namespaces=(svc.namespace,),
        listen_host="127.0.0.1",
        listen_port=0,
        shutdown_delay=1.5,
    )
    stop = asyncio.Event()
    urls: list[str] = []
    task = asyncio.create_task(service_app.serve(settings, stop=stop, started=urls.append))

    async def readiness() -> tuple[int, Any]:
        async with svc.http.get(f"{urls[0]}/readyz") as response:
            return response.status, await response.json()

    await eventually(lambda: _ready(urls, readiness), within=10.0)
    stop.set()
    stopping = time.monotonic()
    await eventually(lambda: _not_ready(readiness), within=1.0)
    assert await readiness() == (503, {"status": "not ready", "reason": "shutting down"})
    async with svc.http.get(f"{urls[0]}/jwks") as response:
        assert response.status == 200  # still serving during the delay
    await asyncio.wait_for(task, 10)
    assert time.monotonic() - stopping >= settings.shutdown_delay
    with pytest.raises(aiohttp.ClientConnectionError):
        await readiness()


async def _ready(urls: list[str], readiness: Callable[[], Awaitable[tuple[int, Any]]]) -> bool:
    return bool(urls) and (await readiness())[0] == 200


async def _not_ready(readiness: Callable[[], Awaitable[tuple[int, Any]]]) -> bool:
    return (await readiness())[0] == 503


async def test_state_watches_exactly_the_listed_namespaces(dev_cluster: server.DevCluster) -> None:
    """``watch_namespaces`` (the chart passes ``controller.watchNamespaces``) covers every listed
    namespace, merged into one snapshot, and nothing else."""
    suffix = int(time.time() * 1000) % 10**9
    watched, unwatched = (f"tw-{suffix}-a", f"tw-{suffix}-b"), f"tw-{suffix}-c"
    api = kubeclient.KubeClient(config.from_kubeconfig(dev_cluster.kubeconfig_path))
    settings = settings_module.Settings(
        issuer=ISSUER,
        cluster_issuer=dev_cluster.issuer,
        namespace=watched[0],
        watch_namespaces=watched,
    )
    state = state_module.KubeState(api, settings)
    try:
        for namespace in (*watched, unwatched):
            await api.create(kubeclient.NAMESPACES, {"metadata": {"name": namespace}})
            await api.create(
                kubeclient.AGENTS,
                {
                    "apiVersion": "agentauth.dev/v1alpha1",
                    "kind": "Agent",
                    "metadata": {"name": "scout"},
                    "spec": {"serviceAccountName": "scout-sa"},
                },
                namespace=namespace,
            )
        await state.start()
        await state.wait_synced(10)
        assert sorted(state.snapshot().agents) == [(watched[0], "scout"), (watched[1], "scout")]
        assert state.cache_sizes()["agents"] == 2
        # A change in a watched namespace arrives through that namespace's watch.
        await api.delete(kubeclient.AGENTS, "scout", namespace=watched[1])

        async def gone() -> bool:
            return sorted(state.snapshot().agents) == [(watched[0], "scout")]

        await eventually(gone, within=5.0)
    finally:
        await state.stop()
        for namespace in (*watched, unwatched):
            await api.delete(kubeclient.NAMESPACES, namespace)
        await api.close()
