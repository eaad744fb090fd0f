"""``agentauth dev`` on a failing disk: writes answer 503 ``Status``, reads go on, nothing
unacknowledged shows, the process survives and recovers by itself (issue 20).

The faults are real: a file-size limit on the running process (``prlimit``: every write past
4 KiB into any file fails with EFBIG, as on a full disk) and a store whose files and directory
are read-only (the child runs without ``CAP_DAC_OVERRIDE`` when the tests run as root, so the
permission bits bind it). While storage fails: every write (create, patch, delete) answers
``503 ServiceUnavailable`` with a ``Status`` body and ``Retry-After``; reads serve what was
committed; a write that failed never shows in a read, a list or a watch; and once storage works
again the next write succeeds, with nothing of the failed ones after a restart.
"""

from __future__ import annotations

import json
import resource
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.devprocess import DevServer, without_dac_override

pytestmark = pytest.mark.slow

NAMESPACE = "faults"
CONFIGMAPS = f"/api/v1/namespaces/{NAMESPACE}/configmaps"
FULL_DISK_BYTES = 4096


def _configmap(name: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name}, "data": {}}


def _names(client: httpx.Client) -> set[str]:
    listing = client.get(CONFIGMAPS)
    assert listing.status_code == 200, listing.text
    return {item["metadata"]["name"] for item in listing.json()["items"]}


def _assert_unavailable(response: httpx.Response) -> None:
    assert response.status_code == 503, response.text
    assert response.headers["Retry-After"] == "1"
    status = response.json()
    assert {k: status[k] for k in ("kind", "apiVersion", "status", "reason", "code")} == {
        "kind": "Status",
        "apiVersion": "v1",
        "status": "Failure",
        "reason": "ServiceUnavailable",
        "code": 503,
    }
    assert status["message"].startswith("storage is unavailable, the write was not applied: ")


def _every_write_refused(client: httpx.Client) -> None:
    _assert_unavailable(client.post(CONFIGMAPS, json=_configmap("during")))
    _assert_unavailable(
        client.patch(
            f"{CONFIGMAPS}/before",
            content=json.dumps({"data": {"changed": "yes"}}),
            headers={"Content-Type": "application/merge-patch+json"},
        )
    )
    _assert_unavailable(client.delete(f"{CONFIGMAPS}/before"))
    # Not latched on the first failure only: a later write is refused the same way.
    _assert_unavailable(client.post(CONFIGMAPS, json=_configmap("during-2")))


def _assert_reads_committed_only(client: httpx.Client) -> None:
    before = client.get(f"{CONFIGMAPS}/before")
    assert before.status_code == 200
    assert before.json()["data"] == {}
    assert client.get(f"{CONFIGMAPS}/during").status_code == 404
    assert _names(client) == {"before"}


def _watched_since(server: DevServer, version: str, *, until: str) -> list[tuple[str, str]]:
    events = []
    with (
        server.api() as client,
        client.stream(
            "GET", CONFIGMAPS, params={"watch": "1", "resourceVersion": version}
        ) as response,
    ):
        for line in response.iter_lines():
            if line:
                event = json.loads(line)
                events.append((event["type"], event["object"]["metadata"]["name"]))
                if events[-1] == ("ADDED", until):
                    return events
    raise AssertionError(f"watch ended without {until}: {events}")


def _prepare(server: DevServer) -> str:
    """The namespace and one committed ConfigMap; returns the list version after them."""
    with server.api() as client:
        namespace = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}}
        assert client.post("/api/v1/namespaces", json=namespace).status_code == 201
        assert client.post(CONFIGMAPS, json=_configmap("before")).status_code == 201
        return str(client.get(CONFIGMAPS).json()["metadata"]["resourceVersion"])


def _after_recovery(server: DevServer, since: str) -> None:
    with server.api() as client:
        created = client.post(CONFIGMAPS, json=_configmap("after"))
        assert created.status_code == 201, created.text
    # The watch from before the fault sees the recovered write and none of the failed ones.
    assert _watched_since(server, since, until="after") == [("ADDED", "after")]


def test_full_disk_refuses_writes_serves_reads_and_recovers(
    tmp_path: Path, servers: list[DevServer]
) -> None:
    directory = tmp_path / "dev"
    server = DevServer(directory)
    servers.append(server)
    server.wait_ready()
    since = _prepare(server)
    pid = server.process.pid
    hard = resource.prlimit(pid, resource.RLIMIT_FSIZE)[1]
    resource.prlimit(pid, resource.RLIMIT_FSIZE, (FULL_DISK_BYTES, hard))
    try:
        with server.api() as client:
            _every_write_refused(client)
            _assert_reads_committed_only(client)
        assert server.alive()
    finally:
        resource.prlimit(pid, resource.RLIMIT_FSIZE, (hard, hard))
    _after_recovery(server, since)

    assert server.terminate() == 0
    again = DevServer(directory)
    servers.append(again)
    again.wait_ready()
    with again.api() as client:
        assert _names(client) == {"before", "after"}


def test_read_only_store_serves_reads_and_recovers(
    tmp_path: Path, servers: list[DevServer]
) -> None:
    directory = tmp_path / "dev"
    first = DevServer(directory)
    servers.append(first)
    first.wait_ready()
    since = _prepare(first)
    first.kill9()  # leaves a WAL behind: the read-only start must still read it
    store_files = sorted(directory.glob("store.db*"))
    for path in store_files:
        path.chmod(0o444)
    directory.chmod(0o555)
    try:
        server = DevServer(directory, preexec_fn=without_dac_override)
        servers.append(server)
        server.wait_ready()
        with server.api() as client:
            _assert_reads_committed_only(client)
            _every_write_refused(client)
            _assert_reads_committed_only(client)
            assert "read-only" in client.post(CONFIGMAPS, json=_configmap("x")).json()["message"]
        assert server.alive()
    finally:
        directory.chmod(0o755)
        for path in store_files:
            path.chmod(0o644)
    _after_recovery(server, since)
    with server.api() as client:
        assert _names(client) == {"before", "after"}
