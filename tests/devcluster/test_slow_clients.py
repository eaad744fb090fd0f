"""The embedded API server closes connections of slow clients (slowloris): a request head that
does not arrive within the header deadline, a body that does not arrive within the body deadline
(answered ``504 Timeout`` first). Watches, which outlive both, are unaffected."""

from __future__ import annotations

import json
import ssl
import time
from collections.abc import Iterator

import httpx
import pytest

from agentauth.devcluster import server
from tests import slowclients

HEADER_SECONDS = 1.0
BODY_SECONDS = 1.0


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[server.DevCluster]:
    with server.running_cluster(
        tmp_path_factory.mktemp("slow") / "dev",
        apply_crds=False,
        header_timeout=HEADER_SECONDS,
        body_timeout=BODY_SECONDS,
    ) as running:
        yield running


def test_a_head_sent_a_byte_at_a_time_is_cut_at_the_deadline(cluster: server.DevCluster) -> None:
    head = b"GET /version HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: " + b"a" * 200 + b"\r\n\r\n"
    outcome = slowclients.trickle(cluster.port, head=head, interval=0.05)
    assert outcome.closed_after is not None, "the server never closed the connection"
    assert HEADER_SECONDS * 0.9 <= outcome.closed_after < HEADER_SECONDS + 3
    assert not outcome.sent_everything
    assert outcome.answer == b""


def test_a_body_sent_a_byte_at_a_time_is_answered_504_and_cut(cluster: server.DevCluster) -> None:
    body = json.dumps({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x"}})
    head = (
        f"POST /api/v1/namespaces/default/configmaps HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        f"Authorization: Bearer {cluster.admin_token}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode()
    outcome = slowclients.trickle(
        cluster.port, prefix=head, head=b"", body=body.encode(), interval=0.1
    )
    assert outcome.closed_after is not None
    assert outcome.closed_after < BODY_SECONDS + 3
    assert not outcome.sent_everything
    status_line, _, rest = outcome.answer.partition(b"\r\n")
    assert status_line == b"HTTP/1.1 504 Gateway Timeout"
    status = json.loads(rest.partition(b"\r\n\r\n")[2])
    assert (status["kind"], status["reason"], status["code"]) == ("Status", "Timeout", 504)


def test_watches_outlive_the_header_deadline(cluster: server.DevCluster) -> None:
    tls = ssl.create_default_context(cafile=str(cluster.ca_path))
    headers = {"Authorization": f"Bearer {cluster.admin_token}"}
    lasting = HEADER_SECONDS * 3
    started = time.monotonic()
    with (
        httpx.Client(base_url=cluster.url, verify=tls, headers=headers, timeout=30) as client,
        client.stream(
            "GET",
            "/api/v1/namespaces/default/configmaps",
            params={"watch": "1", "timeoutSeconds": str(int(lasting))},
        ) as response,
    ):
        assert response.status_code == 200
        for _ in response.iter_lines():
            pass
    # Ended by its own timeoutSeconds with a clean end of stream, not at the header deadline.
    assert time.monotonic() - started >= lasting * 0.9
