"""The group commit seen from clients: during a burst of concurrent writes (answered only
once committed, many per transaction), watches opened from ``0`` and from an acknowledged
version deliver every object exactly once, at the version its write was acknowledged with and
resumed ones in version order, and every acknowledged write is in the store after a restart."""

from __future__ import annotations

import asyncio
import json
import ssl
from pathlib import Path
from typing import Any

import aiohttp

from agentauth.devcluster import selectors, server, storage, watching

NAMESPACE = "burst"
WRITES = 600
# Watches opened at once, each a chance to start while writes wait for their commit.
WATCHES = 8
CONFIGMAPS = f"/api/v1/namespaces/{NAMESPACE}/configmaps"


SENTINEL = "zz-last"


async def _watch(
    session: aiohttp.ClientSession, url: str, version: str
) -> list[tuple[str, str, int]]:
    """(type, name, resourceVersion) of each event until the sentinel, written last."""
    seen: list[tuple[str, str, int]] = []
    async with session.get(
        f"{url}{CONFIGMAPS}", params={"watch": "1", "resourceVersion": version}
    ) as response:
        assert response.status == 200
        async for line in response.content:
            if not line.strip():
                continue
            event = json.loads(line)
            meta = event["object"]["metadata"]
            seen.append((event["type"], meta["name"], int(meta["resourceVersion"])))
            if meta["name"] == SENTINEL:
                return seen[:-1]
    raise AssertionError(f"watch ended early: {len(seen)} events")


async def test_burst_of_writes_is_watched_once_in_order_and_survives_restart(
    tmp_path: Path,
) -> None:
    # The server on its own thread and loop, as clients meet it: requests of both kinds arrive
    # in the same turn of its loop.
    with server.running_cluster(tmp_path, apply_crds=False) as cluster:
        context = ssl.create_default_context(cafile=str(cluster.ca_path))
        headers = {"Authorization": f"Bearer {cluster.admin_token}"}
        connector = aiohttp.TCPConnector(ssl=context, limit=64 + 2 * WATCHES)
        async with aiohttp.ClientSession(connector=connector, headers=headers) as session:
            namespace = {"metadata": {"name": NAMESPACE}}
            async with session.post(f"{cluster.url}/api/v1/namespaces", json=namespace) as made:
                assert made.status == 201
            names = {f"cm-{index}" for index in range(WRITES)}
            acknowledged: dict[str, int] = {}
            halfway = asyncio.Event()

            async def create(name: str) -> None:
                body: dict[str, Any] = {"metadata": {"name": name}, "data": {"k": name}}
                async with session.post(f"{cluster.url}{CONFIGMAPS}", json=body) as response:
                    assert response.status == 201, await response.text()
                    stored = await response.json()
                acknowledged[name] = int(stored["metadata"]["resourceVersion"])
                if len(acknowledged) == WRITES // 3:
                    halfway.set()

            pending = sorted(names)

            async def writer() -> None:
                while pending:
                    await create(pending.pop())

            burst = asyncio.gather(*(writer() for _ in range(64)))
            await halfway.wait()
            # Opened while writes go on: one replays the current objects, one the history
            # after an acknowledged version.
            resumed_from = max(acknowledged.values())
            watches = asyncio.gather(
                *(_watch(session, cluster.url, "0") for _ in range(WATCHES)),
                *(_watch(session, cluster.url, str(resumed_from)) for _ in range(WATCHES)),
            )
            await burst
            await create(SENTINEL)
            sentinel_version = acknowledged.pop(SENTINEL)
            streams = await asyncio.wait_for(watches, 60)
            expected = sorted(
                ((n, v) for n, v in acknowledged.items() if v > resumed_from),
                key=lambda item: item[1],
            )
            for listing in streams[:WATCHES]:
                # Every object exactly once, at the version its create was acknowledged with.
                assert sorted((name, v) for _, name, v in listing) == sorted(acknowledged.items())
                assert {event_type for event_type, _, _ in listing} == {"ADDED"}
            for resumed in streams[WATCHES:]:
                # Exactly the writes after the version, once each, in version order.
                assert [(name, version) for _, name, version in resumed] == expected
    with server.running_cluster(tmp_path, apply_crds=False) as restarted:
        assert restarted.api is not None
        stored = restarted.api.store.entries("", "configmaps", NAMESPACE)
        versions = {e.obj["metadata"]["name"]: e.obj["metadata"]["resourceVersion"] for e in stored}
        assert {name: int(version) for name, version in versions.items()} == {
            **acknowledged,
            SENTINEL: sentinel_version,
        }


class _Socket(asyncio.Transport):
    """A transport that keeps what is written (the hub writes HTTP chunks to it)."""

    def __init__(self) -> None:
        super().__init__()
        self.written = b""

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.written += bytes(data)

    def is_closing(self) -> bool:
        return False

    def get_write_buffer_size(self) -> int:
        return 0


async def test_a_watch_replaying_pending_writes_does_not_get_their_events_again(
    tmp_path: Path,
) -> None:
    store = storage.Store(tmp_path / "db")
    hub = watching.Hub()
    store.subscribe(hub.publish)
    for name in ("a", "b"):
        obj = {"metadata": {"name": name, "resourceVersion": str(store.next_version())}}
        store.put(("", "configmaps", "ns", name), obj, event_type="ADDED", deferred=True)
    socket = _Socket()
    watcher = watching.Watcher(
        group="",
        resource="configmaps",
        filter=selectors.Filter(),
        encoder=lambda event_type, event: f"{event_type} {event.resource_version}\n".encode(),
        transport=socket,
    )
    # Its replay (from memory) holds both pending writes: versions up to 2.
    watcher.after = store.latest_version
    hub.add(watcher)
    obj = {"metadata": {"name": "c", "resourceVersion": str(store.next_version())}}
    store.put(("", "configmaps", "ns", "c"), obj, event_type="ADDED", deferred=True)
    await store.synced()
    watcher.flush()
    assert socket.written.endswith(b"ADDED 3\n\r\n")
    assert b"ADDED 1" not in socket.written
    assert b"ADDED 2" not in socket.written
