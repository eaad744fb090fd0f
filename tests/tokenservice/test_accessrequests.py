"""``POST /v1/access-requests`` and ``GET /v1/access-requests/{name}?wait=S`` over real HTTP.

The service runs on loopback with in-memory caches (real keys, real agent tokens); filing goes to
the embedded control plane, so the created AccessRequest is a real API object.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from kubernetes import client

from agentauth.devcluster import server
from agentauth.domain import exchanging, keys, tokens
from agentauth.domain.models import AccessRequest, Agent
from agentauth.kube import client as kubeclient
from agentauth.kube import config as kubeconfig
from agentauth.tokenservice import accessrequests as routes
from agentauth.tokenservice import app as service_app
from agentauth.tokenservice import settings as settings_module
from agentauth.tokenservice import state as state_module
from tests.domain import tokenkit

ISSUER = "https://agentauth.example.test"
CAPABILITIES = [
    {"name": "document.read"},
    {"name": "payments.authorize", "approval": "Required", "maxDuration": "10m"},
]


def now() -> datetime:
    return datetime.now(UTC)


class Env:
    def __init__(
        self,
        *,
        base: str,
        state: state_module.MemoryState,
        http: aiohttp.ClientSession,
        keyset: keys.KeySet,
        agent: Agent,
        api: client.ApiClient,
        runner: web.AppRunner,
    ) -> None:
        self.base = base
        self.state = state
        self.http = http
        self.keyset = keyset
        self.agent = agent
        self.api = api
        self.runner = runner
        self.stopped = False

    def token(self, agent: Agent | None = None) -> str:
        who = agent or self.agent
        subject = tokens.agent_subject(
            name=who.metadata.name or "", namespace=who.metadata.namespace or "", trust_domain="t"
        )
        return tokens.issue(
            keyset=self.keyset,
            issuer=ISSUER,
            subject=subject,
            agent=tokens.AgentRef(
                name=who.metadata.name or "",
                namespace=who.metadata.namespace or "",
                uid=who.metadata.uid or "",
            ),
            audience=ISSUER,
            scope=["document.read"],
            lifetime=timedelta(minutes=5),
            now=now(),
            client_id=subject,
        ).token

    async def call(
        self, method: str, path: str, *, token: str | None = None, **kw: Any
    ) -> tuple[int, Any]:
        headers = {"Authorization": f"Bearer {token or self.token()}"} if token != "" else {}
        async with self.http.request(method, self.base + path, headers=headers, **kw) as response:
            return response.status, await response.json()

    async def world(self, *, requests: list[AccessRequest] | None = None) -> None:
        other = tokenkit.agent("other", self.agent.metadata.namespace or "", uid="other-uid")
        await self.state.update(
            snapshot=exchanging.Snapshot(
                agents={
                    (a.metadata.namespace or "", a.metadata.name or ""): a
                    for a in (self.agent, other)
                },
                grants=[
                    tokenkit.grant(
                        "payments",
                        self.agent.metadata.namespace or "",
                        agents=["buyer", "other"],
                        capabilities=CAPABILITIES,
                    )
                ],
                access_requests=requests or [],
            )
        )


@pytest.fixture
async def env(
    dev_cluster: server.DevCluster, kube_api: client.ApiClient, namespace: str
) -> AsyncIterator[Env]:
    created = client.CustomObjectsApi(kube_api).create_namespaced_custom_object(
        "agentauth.dev",
        "v1alpha1",
        namespace,
        "agents",
        {
            "apiVersion": "agentauth.dev/v1alpha1",
            "kind": "Agent",
            "metadata": {"name": "buyer"},
            "spec": {"serviceAccountName": "buyer-sa"},
        },
    )
    agent = Agent.model_validate(created)
    keyset = keys.generate_keyset(now=now() - timedelta(minutes=1))
    state = state_module.MemoryState(keyset=keyset)
    kube = kubeclient.KubeClient(kubeconfig.load(dev_cluster.kubeconfig_path))
    settings = settings_module.Settings(issuer=ISSUER)
    runner = web.AppRunner(service_app.build_app(settings=settings, state=state, kube=kube))
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    http = aiohttp.ClientSession()
    environment = Env(
        base=f"http://127.0.0.1:{port}",
        state=state,
        http=http,
        keyset=keyset,
        agent=agent,
        api=kube_api,
        runner=runner,
    )
    await environment.world()
    yield environment
    await http.close()
    if not environment.stopped:
        await runner.cleanup()
    await kube.close()


def stored(env: Env, name: str) -> dict[str, Any]:
    obj: dict[str, Any] = client.CustomObjectsApi(env.api).get_namespaced_custom_object(
        "agentauth.dev", "v1alpha1", env.agent.metadata.namespace, "accessrequests", name
    )
    return obj


def request_of(
    env: Env, name: str, *, phase: str | None, agent: str = "buyer", **status: Any
) -> AccessRequest:
    """A request as the webhooks leave it: filed for the Agent object (``agentUID``), its
    approvals stamped with the grant of :meth:`Env.world` they were made under."""
    namespace = env.agent.metadata.namespace or ""
    body: dict[str, Any] = {
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "agent": agent,
            "agentUID": env.agent.metadata.uid if agent == "buyer" else "other-uid",
            "capabilities": ["payments.authorize"],
            "justification": "pay",
            "duration": "5m",
        },
    }
    if phase is not None:
        grant = tokenkit.grant(
            "payments", namespace, agents=["buyer", "other"], capabilities=CAPABILITIES
        )
        stamp = tokenkit.approval_under(grant)["grants"]
        given = status.pop("approvals", None)
        if given is None and phase == "Approved":
            given = [{"user": "alice", "time": (now() - timedelta(minutes=1)).isoformat()}]
        if given is not None:
            status["approvals"] = [{**item, "grants": stamp} for item in given]
        body["status"] = {"phase": phase, **status}
    return AccessRequest.model_validate(body)


async def test_file_creates_the_access_request_for_the_token_s_agent(env: Env) -> None:
    status, body = await env.call(
        "POST",
        "/v1/access-requests",
        json={
            "capabilities": ["payments.authorize"],
            "justification": "  Pay invoice INV-42  ",
            "context": {"invoice": "INV-42", "amount": "120 EUR"},
            # an agent cannot name another agent or a requester: such fields are ignored
            "agent": "other",
            "requester": {"username": "alice"},
        },
    )
    assert status == 201, body
    name = body["name"]
    namespace = env.agent.metadata.namespace
    assert name.startswith("buyer-")
    assert body == {
        "name": name,
        "namespace": namespace,
        "agent": "buyer",
        "capabilities": ["payments.authorize"],
        # no duration asked: the 15m default, capped at the grant's 10m maxDuration
        "duration": "10m",
        "justification": "Pay invoice INV-42",
        "context": {"invoice": "INV-42", "amount": "120 EUR"},
        "phase": "Pending",
        "approvals": [],
        "denials": [],
        "approveCommand": f"kubectl agentauth approve {name} -n {namespace}",
    }
    obj = stored(env, name)
    assert obj["spec"]["agent"] == "buyer"
    assert "requester" not in obj["spec"]  # only the admission webhook writes it
    assert obj["metadata"]["labels"] == {"agentauth.dev/agent": "buyer"}
    (owner,) = obj["metadata"]["ownerReferences"]
    assert (owner["kind"], owner["name"], owner["uid"]) == (
        "Agent",
        "buyer",
        env.agent.metadata.uid,
    )


@pytest.mark.parametrize(
    ("body", "status", "error", "description"),
    [
        (
            {"capabilities": ["payments.authorize"]},
            400,
            "invalid_request",
            '"justification" is required: say why the agent needs this access',
        ),
        (
            {"capabilities": ["payments.authorize"], "justification": " "},
            400,
            "invalid_request",
            "justification is required: say why the agent needs this access",
        ),
        (
            {"capabilities": ["document.read"], "justification": "x"},
            400,
            "invalid_scope",
            "capability 'document.read' needs no approval: grant 'payments' gives it to agent "
            "'buyer' automatically; exchange for a token with it instead",
        ),
        (
            {"capabilities": ["payments.refund"], "justification": "x"},
            400,
            "invalid_scope",
            "agent 'buyer' holds no capability 'payments.refund': no CapabilityGrant in its "
            "namespace gives it",
        ),
        (
            {"capabilities": ["payments.authorize"], "justification": "x", "duration": "1h"},
            400,
            "invalid_request",
            "duration 1h is longer than the 10m that grant 'payments' allows for "
            "'payments.authorize' (its maxDuration)",
        ),
        (
            {"capabilities": "payments.authorize", "justification": "x", "duration": 5},
            400,
            "invalid_request",
            '"duration" must be a string such as "15m"',
        ),
        (
            {"capabilities": [1], "justification": "x"},
            400,
            "invalid_request",
            '"capabilities" must be a list of capability names',
        ),
        (
            {"capabilities": ["payments.authorize"], "justification": "x", "context": {"a b": "c"}},
            400,
            "invalid_request",
            "context key 'a b' is invalid: use at most 63 letters, digits, '-', '_' or '.', "
            "starting and ending with a letter or digit",
        ),
    ],
)
async def test_file_refusals(
    env: Env, body: dict[str, Any], status: int, error: str, description: str
) -> None:
    assert await env.call("POST", "/v1/access-requests", json=body) == (
        status,
        {"error": error, "error_description": description},
    )


async def test_file_needs_an_agent_token_and_json(env: Env) -> None:
    status, body = await env.call("POST", "/v1/access-requests", token="", json={})
    assert (status, body["error"]) == (401, "invalid_token")
    status, body = await env.call("POST", "/v1/access-requests", data=b"not json")
    assert (status, body) == (
        400,
        {"error": "invalid_request", "error_description": "the request body must be JSON"},
    )


async def test_too_many_undecided_requests_are_refused(env: Env) -> None:
    pending = [
        request_of(
            env, f"buyer-{i}", phase="Pending", expiresAt=(now() + timedelta(minutes=5)).isoformat()
        )
        for i in range(routes.MAX_PENDING_PER_AGENT)
    ]
    await env.world(requests=pending)
    status, body = await env.call(
        "POST",
        "/v1/access-requests",
        json={"capabilities": ["payments.authorize"], "justification": "x"},
    )
    assert (status, body["error"]) == (429, "rate_limited")
    assert body["error_description"] == (
        f"agent {env.agent.metadata.namespace}/buyer already has 50 undecided access requests; "
        "wait for a decision before filing more"
    )


async def test_get_shows_only_the_agent_s_own_requests(env: Env) -> None:
    await env.world(
        requests=[
            request_of(env, "buyer-a", phase="Approved", grantedUntil="2030-01-01T00:00:00Z"),
            request_of(env, "other-a", phase="Pending", agent="other"),
        ]
    )
    status, body = await env.call("GET", "/v1/access-requests/buyer-a")
    assert (status, body["phase"], body["grantedUntil"]) == (
        200,
        "Approved",
        "2030-01-01T00:00:00Z",
    )
    status, body = await env.call("GET", "/v1/access-requests/other-a")
    assert (status, body) == (
        404,
        {
            "error": "not_found",
            "error_description": f"access request 'other-a' not found for agent "
            f"{env.agent.metadata.namespace}/buyer",
        },
    )


@pytest.mark.parametrize("wait", ["-1", "61", "soon"])
async def test_get_refuses_bad_wait(env: Env, wait: str) -> None:
    assert await env.call("GET", f"/v1/access-requests/x?wait={wait}") == (
        400,
        {
            "error": "invalid_request",
            "error_description": "wait must be a number of seconds between 0 and 60",
        },
    )


async def open_long_polls(env: Env) -> float:
    async with env.http.get(env.base + "/metrics") as response:
        text = await response.text()
    (line,) = [x for x in text.splitlines() if x.startswith("agentauth_access_request_long_polls ")]
    return float(line.split()[1])


async def test_long_poll_returns_as_soon_as_the_cache_sees_the_decision(env: Env) -> None:
    pending = request_of(env, "buyer-lp", phase="Pending", expiresAt="2030-01-01T00:00:00Z")
    await env.world(requests=[pending])
    token = env.token()
    started = time.monotonic()
    poll = asyncio.create_task(env.call("GET", "/v1/access-requests/buyer-lp?wait=30", token=token))
    # Wait (with a deadline) until the handler is parked (the open long-polls gauge).
    deadline = time.monotonic() + 10
    while await open_long_polls(env) != 1:
        assert time.monotonic() < deadline, "the long-poll never waited"
        await asyncio.sleep(0.01)
    # An unrelated change wakes it, but it keeps waiting: still Pending.
    await env.world(requests=[pending])
    assert not poll.done()
    decided = request_of(
        env,
        "buyer-lp",
        phase="Approved",
        expiresAt="2030-01-01T00:00:00Z",
        grantedUntil="2030-01-01T00:05:00Z",
        approvals=[{"user": "alice", "time": "2029-12-31T23:59:00Z"}],
    )
    decided_at = time.monotonic()
    await env.world(requests=[decided])
    status, body = await poll
    answered_at = time.monotonic()
    assert status == 200
    assert (body["phase"], body["approvals"][0]["user"]) == ("Approved", "alice")
    assert answered_at - decided_at < 0.5
    assert decided_at - started < 10


async def test_long_poll_times_out_with_the_current_state(env: Env) -> None:
    await env.world(requests=[request_of(env, "buyer-p", phase=None)])
    started = time.monotonic()
    status, body = await env.call("GET", "/v1/access-requests/buyer-p?wait=0.3")
    assert (status, body["phase"]) == (200, "Pending")
    assert time.monotonic() - started >= 0.3
    status, body = await env.call("GET", "/v1/access-requests/missing?wait=0.2")
    assert status == 404


# -- idempotency ------------------------------------------------------------------------------


PAYMENT = {"capabilities": ["payments.authorize"], "justification": "Pay invoice INV-7"}


async def file_with_key(
    env: Env, key: str, body: dict[str, Any], *, token: str | None = None
) -> tuple[int, Any, dict[str, str]]:
    headers = {"Authorization": f"Bearer {token or env.token()}", "Idempotency-Key": key}
    async with env.http.post(
        env.base + "/v1/access-requests", json=body, headers=headers
    ) as response:
        return response.status, await response.json(), dict(response.headers)


def filed_for(env: Env, agent: str) -> list[dict[str, Any]]:
    listing = client.CustomObjectsApi(env.api).list_namespaced_custom_object(
        "agentauth.dev", "v1alpha1", env.agent.metadata.namespace, "accessrequests"
    )
    return [item for item in listing["items"] if item["spec"]["agent"] == agent]


async def test_a_retry_with_the_same_idempotency_key_returns_the_same_request(env: Env) -> None:
    status, first, headers = await file_with_key(env, '"order-42"', PAYMENT)
    assert (status, "Idempotent-Replayed" in headers) == (201, False)
    status, again, headers = await file_with_key(env, '"order-42"', PAYMENT)
    assert (status, headers["Idempotent-Replayed"]) == (201, "true")
    assert again == first
    assert headers["Location"] == f"/v1/access-requests/{first['name']}"
    (stored_request,) = filed_for(env, "buyer")
    assert stored_request["metadata"]["name"] == first["name"]
    # another key is another request
    status, other, _ = await file_with_key(env, '"order-43"', PAYMENT)
    assert status == 201 and other["name"] != first["name"]


async def test_an_idempotency_key_reused_for_a_different_request_is_refused(env: Env) -> None:
    assert (await file_with_key(env, "k-1", PAYMENT))[0] == 201
    status, body, _ = await file_with_key(env, "k-1", {**PAYMENT, "justification": "Other"})
    assert (status, body) == (
        422,
        {
            "error": "invalid_request",
            "error_description": "this Idempotency-Key was already used for a different "
            "request; use a new key for a new request",
        },
    )
    assert len(filed_for(env, "buyer")) == 1


@pytest.mark.parametrize(
    ("key", "description"),
    [
        ('"unterminated', "Idempotency-Key: the string has no closing quote"),
        ("two words", "Idempotency-Key must be a quoted string or a token of visible ASCII"),
        ('""', "Idempotency-Key must have 1 to 255 characters"),
    ],
)
async def test_malformed_idempotency_keys_are_refused(env: Env, key: str, description: str) -> None:
    status, body, _ = await file_with_key(env, key, PAYMENT)
    assert (status, body) == (400, {"error": "invalid_request", "error_description": description})
    assert filed_for(env, "buyer") == []


async def test_one_agent_s_idempotency_key_never_reaches_another_agent_s_request(
    env: Env,
) -> None:
    namespace = env.agent.metadata.namespace or ""
    other = Agent.model_validate(
        client.CustomObjectsApi(env.api).create_namespaced_custom_object(
            "agentauth.dev",
            "v1alpha1",
            namespace,
            "agents",
            {
                "apiVersion": "agentauth.dev/v1alpha1",
                "kind": "Agent",
                "metadata": {"name": "other"},
                "spec": {"serviceAccountName": "other-sa"},
            },
        )
    )
    snapshot = env.state.snapshot()
    await env.state.update(
        snapshot=exchanging.Snapshot(
            agents={**snapshot.agents, (namespace, "other"): other},
            grants=snapshot.grants,
        )
    )
    status, mine, _ = await file_with_key(env, '"shared-key"', PAYMENT)
    assert status == 201
    status, theirs, headers = await file_with_key(
        env, '"shared-key"', PAYMENT, token=env.token(other)
    )
    assert (status, theirs["agent"], "Idempotent-Replayed" in headers) == (201, "other", False)
    assert theirs["name"] != mine["name"] and theirs["name"].startswith("other-")
    # and buyer's request stays invisible to the other agent
    status, _ = await env.call("GET", f"/v1/access-requests/{mine['name']}", token=env.token(other))
    assert status == 404


async def test_each_request_holds_a_pending_slot_lease_owned_by_the_agent(env: Env) -> None:
    status, filed, _ = await file_with_key(env, "slot-1", PAYMENT)
    assert status == 201
    leases = client.CoordinationV1Api(env.api).list_namespaced_lease(
        env.agent.metadata.namespace,
        label_selector=f"agentauth.dev/pending-slot-of={env.agent.metadata.uid}",
    )
    (lease,) = leases.items
    assert lease.spec.holder_identity == filed["name"]
    assert lease.metadata.name.startswith("buyer-jit-")
    (owner,) = lease.metadata.owner_references
    assert (owner.kind, owner.name, owner.uid) == ("Agent", "buyer", env.agent.metadata.uid)


# -- shutdown ---------------------------------------------------------------------------------


async def test_shutdown_answers_open_long_polls_at_once_and_closes_their_connections(
    env: Env,
) -> None:
    await env.world(
        requests=[request_of(env, "buyer-sd", phase="Pending", expiresAt="2030-01-01T00:00:00Z")]
    )

    async def poll() -> tuple[int, Any, dict[str, str]]:
        headers = {"Authorization": f"Bearer {env.token()}"}
        async with env.http.get(
            env.base + "/v1/access-requests/buyer-sd?wait=30", headers=headers
        ) as response:
            return response.status, await response.json(), dict(response.headers)

    waiting = asyncio.create_task(poll())
    deadline = time.monotonic() + 10
    while await open_long_polls(env) != 1:
        assert time.monotonic() < deadline, "the long-poll never waited"
        await asyncio.sleep(0.01)
    started = time.monotonic()
    env.stopped = True
    await env.runner.cleanup()  # what serve() does after SIGTERM
    status, body, headers = await waiting
    assert time.monotonic() - started < 2
    assert (status, body["phase"], headers["Connection"]) == (200, "Pending", "close")
