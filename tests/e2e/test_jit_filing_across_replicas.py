"""JIT filing with two token-service replicas racing: the pending cap and idempotency hold.

Issue 14, finding 5: 70 concurrent filings by one agent created 61-65 AccessRequests against a
cap of 50, because each replica counted from its own cache. Issue 20: a retried filing must not
file twice, whichever replica serves the retry.

What is real: the shared ``agentauth dev`` stack (the chart's RBAC for the token service, the
controller), two token-service instances (``tokenservice.app.serve`` on their own threads and
event loops, as the CLI runs it, each with its own caches), real HTTP on loopback, agent tokens
from real exchanges of a pod's projected token.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import uuid
from collections import Counter
from collections.abc import Iterator

import httpx
import pytest

from agentauth.tokenservice import accessrequests
from tests import stack
from tests.e2e.conftest import Stack

pytestmark = pytest.mark.slow

CAPABILITY = "payments.approve"


@dataclasses.dataclass
class Replicas:
    urls: list[str]
    namespace: str
    bearer: str

    def filed(self, dev_stack: Stack, agent: str) -> list[dict[str, object]]:
        listing = json.loads(
            dev_stack.admin("get", "accessrequests", "-n", self.namespace, "-o", "json").stdout
        )
        return [item for item in listing["items"] if item["spec"]["agent"] == agent]


@pytest.fixture
def replicas(dev_stack: Stack) -> Iterator[Replicas]:
    namespace = dev_stack.new_namespace("race")
    dev_stack.create_agent(
        namespace,
        "racer",
        capabilities=[{"name": "document.read"}, {"name": CAPABILITY, "approval": "Required"}],
        approvers={"users": ["alice"]},
    )
    dev_stack.create_pod(namespace, "racer-0", agent="racer")
    subject_token = dev_stack.projected_token(namespace, "racer-0")
    settings = dev_stack.stack.token_service_settings
    assert settings is not None
    services = [
        stack.TokenServiceThread(
            dataclasses.replace(settings, listen_port=0, tls_cert=None, tls_key=None)
        ).start()
        for _ in range(2)
    ]
    try:

        def exchanged(url: str) -> str | None:
            answer = httpx.post(f"{url}/oauth2/token", data=stack.exchange_form(subject_token))
            return str(answer.json()["access_token"]) if answer.status_code == 200 else None

        # both replicas' caches hold the Agent, its grant and the pod
        for service in services:
            stack.wait_for(lambda s=service: exchanged(s.url), message="an exchange")  # type: ignore[misc]
        bearer = exchanged(services[0].url)
        assert bearer is not None
        yield Replicas([s.url for s in services], namespace, bearer)
    finally:
        for service in services:
            service.stop()


async def _file_concurrently(
    replicas: Replicas, count: int, *, key: str | None = None
) -> list[httpx.Response]:
    headers = {"Authorization": f"Bearer {replicas.bearer}"}
    if key is not None:
        headers["Idempotency-Key"] = f'"{key}"'
    body = {"capabilities": [CAPABILITY], "justification": "racing the cap"}
    async with httpx.AsyncClient(timeout=60, limits=httpx.Limits(max_connections=200)) as http:
        return list(
            await asyncio.gather(
                *(
                    http.post(
                        f"{replicas.urls[i % 2]}/v1/access-requests", json=body, headers=headers
                    )
                    for i in range(count)
                )
            )
        )


def test_seventy_concurrent_filings_through_two_replicas_create_exactly_the_cap(
    dev_stack: Stack, replicas: Replicas
) -> None:
    answers = asyncio.run(_file_concurrently(replicas, 70))

    statuses = Counter(answer.status_code for answer in answers)
    cap = accessrequests.MAX_PENDING_PER_AGENT
    # Never more than the cap, whatever the timing: every request was created after its filing
    # took one of the cap's slots.
    assert len(replicas.filed(dev_stack, "racer")) <= cap
    assert set(statuses) <= {201, 429, 503}, [a.text for a in answers]
    if 503 not in statuses:
        # A filing past its deadline (a heavily loaded machine) answers 503 and may still land;
        # without one, the count is exact.
        assert statuses == {201: cap, 429: 70 - cap}
        assert len(replicas.filed(dev_stack, "racer")) == cap
    for refused in (a for a in answers if a.status_code == 429):
        assert refused.json() == {
            "error": "rate_limited",
            "error_description": f"agent {replicas.namespace}/racer already has {cap} undecided "
            "access requests; wait for a decision before filing more",
        }
        assert int(refused.headers["Retry-After"]) > 0
    for late in (a for a in answers if a.status_code == 503):
        assert late.json()["error"] == "temporarily_unavailable"
        assert int(late.headers["Retry-After"]) > 0


def test_the_same_idempotency_key_racing_through_two_replicas_files_once(
    dev_stack: Stack, replicas: Replicas
) -> None:
    answers = asyncio.run(_file_concurrently(replicas, 12, key=str(uuid.uuid4())))

    assert [a.status_code for a in answers] == [201] * 12, [a.text for a in answers]
    names = {a.json()["name"] for a in answers}
    assert len(names) == 1
    assert sorted(a.headers.get("Idempotent-Replayed", "") for a in answers) == [""] + ["true"] * 11
    (stored,) = replicas.filed(dev_stack, "racer")
    assert stored["metadata"]["name"] in names  # type: ignore[index]
