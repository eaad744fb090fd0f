"""``agentauth dev`` killed with SIGKILL in the middle of a burst of writes loses nothing it
acknowledged (issue 20).

Eight writers create ConfigMaps, bump a counter ConfigMap each and delete some of what they
created, over real HTTPS, while the process is killed with ``kill -9``. After a restart on the
same directory: every create answered 201 is there, every delete answered 200 is gone, every
counter holds at least its last acknowledged value; the first write after the restart gets a
resourceVersion above every acknowledged one, and a watch resumed from an acknowledged version
delivers every acknowledged change after it, with its own version, and nothing before it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import statistics
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.devprocess import DevServer

pytestmark = pytest.mark.slow

NAMESPACE = "durability"
CONFIGMAPS = f"/api/v1/namespaces/{NAMESPACE}/configmaps"
WRITERS = 8
KILL_AFTER_ACKNOWLEDGED = 400


@dataclasses.dataclass
class Acknowledged:
    """What the server answered 2xx, with the resourceVersion it answered."""

    creates: dict[str, int] = dataclasses.field(default_factory=dict)
    deletes: set[str] = dataclasses.field(default_factory=set)
    counters: dict[str, tuple[int, int]] = dataclasses.field(default_factory=dict)

    @property
    def count(self) -> int:
        return len(self.creates) + len(self.deletes) + len(self.counters)

    def versions(self) -> list[int]:
        return [*self.creates.values(), *(rv for _, rv in self.counters.values())]


def _configmap(name: str, **data: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name}, "data": data}


def _rv(response: httpx.Response) -> int:
    return int(response.json()["metadata"]["resourceVersion"])


async def _burst(server: DevServer, acknowledged: Acknowledged) -> None:
    """Write until the server dies; kill it once enough writes have been acknowledged."""
    killed = asyncio.Event()

    async def writer(client: httpx.AsyncClient, index: int) -> None:
        counter = f"counter-{index}"
        created = await client.post(CONFIGMAPS, json=_configmap(counter, value="0"))
        assert created.status_code == 201, created.text
        acknowledged.counters[counter] = (0, _rv(created))
        number = 0
        while True:
            number += 1
            name = f"w{index}-{number}"
            try:
                response = await client.post(CONFIGMAPS, json=_configmap(name, n=str(number)))
                if response.status_code == 201:
                    acknowledged.creates[name] = _rv(response)
                response = await client.patch(
                    f"{CONFIGMAPS}/{counter}",
                    content=json.dumps({"data": {"value": str(number)}}),
                    headers={"Content-Type": "application/merge-patch+json"},
                )
                if response.status_code == 200:
                    acknowledged.counters[counter] = (number, _rv(response))
                if number % 4 == 0:
                    doomed = f"w{index}-{number - 1}"
                    response = await client.delete(f"{CONFIGMAPS}/{doomed}")
                    if response.status_code == 200:
                        acknowledged.deletes.add(doomed)
            except httpx.TransportError:
                assert killed.is_set(), "the server stopped answering before it was killed"
                return
            if acknowledged.count >= KILL_AFTER_ACKNOWLEDGED and not killed.is_set():
                killed.set()
                server.process.kill()  # SIGKILL, with the other writers' requests in flight

    async with server.async_api(limits=httpx.Limits(max_connections=WRITERS)) as client:
        await asyncio.gather(*(writer(client, index) for index in range(WRITERS)))


def _lost(stored: dict[str, dict[str, Any]], acknowledged: Acknowledged) -> list[str]:
    lost = []
    for name in acknowledged.creates:
        if name not in stored and name not in acknowledged.deletes:
            lost.append(f"create {name}")
    for name in acknowledged.deletes:
        if name in stored:
            lost.append(f"delete {name}")
    for name, (value, version) in acknowledged.counters.items():
        found = stored.get(name)
        if found is None or int(found["data"]["value"]) < value:
            lost.append(f"patch {name} value={value}")
        elif int(found["metadata"]["resourceVersion"]) < version:
            lost.append(f"patch {name} rv={version}")
    return lost


def _watch(server: DevServer, since: int, *, until: str) -> list[tuple[str, str, int]]:
    """Events of a watch resumed from ``since``, up to the ADDED event of ``until``."""
    events = []
    with (
        server.api(timeout=60) as client,
        client.stream(
            "GET", CONFIGMAPS, params={"watch": "1", "resourceVersion": str(since)}
        ) as response,
    ):
        assert response.status_code == 200
        for line in response.iter_lines():
            if not line:
                continue
            event = json.loads(line)
            assert event["type"] != "ERROR", event
            metadata = event["object"]["metadata"]
            events.append((event["type"], metadata["name"], int(metadata["resourceVersion"])))
            if event["type"] == "ADDED" and metadata["name"] == until:
                return events
    raise AssertionError(f"the watch ended before {until}: {events[-5:]}")


def test_kill_9_during_a_burst_loses_no_acknowledged_write(
    tmp_path: Path, servers: list[DevServer]
) -> None:
    directory = tmp_path / "dev"
    first = DevServer(directory)
    servers.append(first)
    first.wait_ready()
    with first.api() as client:
        namespace = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}}
        assert client.post("/api/v1/namespaces", json=namespace).status_code == 201
    acknowledged = Acknowledged()
    asyncio.run(_burst(first, acknowledged))
    assert first.process.wait(30) == -9

    again = DevServer(directory)
    servers.append(again)
    again.wait_ready()
    with again.api() as client:
        listing = client.get(CONFIGMAPS)
        assert listing.status_code == 200
        stored = {item["metadata"]["name"]: item for item in listing.json()["items"]}
        lost = _lost(stored, acknowledged)
        print(f"acknowledged={acknowledged.count} lost={len(lost)}")
        assert lost == [], f"{len(lost)} of {acknowledged.count} acknowledged writes lost"

        newest = max(acknowledged.versions())
        after = client.post(CONFIGMAPS, json=_configmap("after-restart"))
        assert after.status_code == 201, after.text
        assert _rv(after) > newest
        assert int(listing.json()["metadata"]["resourceVersion"]) >= newest

    since = int(statistics.median(acknowledged.versions()))
    events = _watch(again, since, until="after-restart")
    assert all(version > since for _, _, version in events), events[:5]
    delivered = {(name, version) for _, name, version in events}
    expected = {(name, rv) for name, rv in acknowledged.creates.items() if rv > since}
    expected |= {(name, rv) for name, (_, rv) in acknowledged.counters.items() if rv > since}
    assert expected - delivered == set()
