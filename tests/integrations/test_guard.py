"""The shared ToolGuard against the real stack: SDK, token service, controller, kubectl approvals.

Every refusal path is asserted with its exact text (what the model reads) and its type.
"""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
from collections.abc import Iterator

import pytest

from agentauth.integrations import guard as guard_module
from agentauth.sdk import AgentClient, ServiceAccountTokenFile
from tests.integrations.conftest import EnrolledAgent, Stack
from tests.stack import ISSUER, free_port, wait_for

PAY = guard_module.ToolPolicy(capability="payments.authorize", jit=True)
JUSTIFICATION = "Invoice INV-7 is due today."


@pytest.fixture(scope="module")
def clerk(agentauth_stack: Stack) -> EnrolledAgent:
    return agentauth_stack.enroll("clerk-guard")


@pytest.fixture
def client(clerk: EnrolledAgent) -> Iterator[AgentClient]:
    sdk = clerk.client()
    yield sdk
    sdk.close()


def test_declared_capability_held_is_permitted(client: AgentClient) -> None:
    guard = guard_module.ToolGuard(client)
    policy = guard_module.ToolPolicy(capability="document.read")
    assert guard.check(tool="read_document", policy=policy) == "document.read"


def test_declared_capability_missing_is_refused_with_its_name(client: AgentClient) -> None:
    guard = guard_module.ToolGuard(client)
    with pytest.raises(guard_module.NotPermitted) as refused:
        guard.check(tool="drop_table", policy=guard_module.ToolPolicy(capability="db.delete"))
    assert refused.value.message == "not permitted: needs db.delete"
    assert refused.value.capability == "db.delete"


def test_jit_for_a_capability_nobody_may_approve_is_refused(
    clerk: EnrolledAgent, client: AgentClient
) -> None:
    guard = guard_module.ToolGuard(client, approval_wait=0)
    policy = guard_module.ToolPolicy(capability="db.delete", jit=True)
    with pytest.raises(guard_module.NotPermitted) as refused:
        guard.check(tool="drop_table", policy=policy, justification=JUSTIFICATION)
    assert refused.value.message == (
        "not permitted: needs db.delete "
        f"(db.delete is not granted to agent {clerk.stack.namespace}/clerk-guard)"
    )
    # Nothing is filed for a capability that no grant offers with approval Required.
    assert not [r for r in clerk.access_requests() if "db.delete" in r["spec"]["capabilities"]]


def test_jit_without_a_justification_asks_the_model_for_one(client: AgentClient) -> None:
    guard = guard_module.ToolGuard(client, approval_wait=0)
    with pytest.raises(guard_module.NotPermitted) as refused:
        guard.check(tool="authorize_payment", policy=PAY, justification="  ")
    assert refused.value.message == (
        "not permitted: needs payments.authorize (it needs a person's approval: call "
        "authorize_payment again with a 'justification' saying why)"
    )


async def test_undeclared_tools_go_through_the_ask_api(client: AgentClient) -> None:
    guard = guard_module.ToolGuard(client)
    allowed = await guard.acheck(
        tool="read_document", policy=guard_module.ToolPolicy(), description="read documents"
    )
    assert allowed == "document.read"
    with pytest.raises(guard_module.NotPermitted) as refused:
        await guard.acheck(
            tool="launch_rocket",
            policy=guard_module.ToolPolicy(),
            description="launch a rocket to the moon",
        )
    assert refused.value.message == (
        "not permitted: needs a capability that covers the tool launch_rocket "
        "(no capability shares words with the question)"
    )


def test_unreachable_token_service_fails_closed(clerk: EnrolledAgent) -> None:
    dead = AgentClient(
        issuer=ISSUER,
        token_url=f"http://127.0.0.1:{free_port()}",
        subject_token_source=ServiceAccountTokenFile(clerk.token_file),
        timeout=2,
    )
    guard = guard_module.ToolGuard(dead)
    with pytest.raises(guard_module.NotPermitted) as refused:
        guard.check(tool="read_document", policy=guard_module.ToolPolicy("document.read"))
    assert refused.value.message.startswith(
        "not permitted: needs document.read (authorization check failed: transport_error"
    )


def test_pending_request_reports_awaiting_approval_then_runs_once_approved(
    clerk: EnrolledAgent, client: AgentClient
) -> None:
    guard = guard_module.ToolGuard(client, approval_wait=0)
    with pytest.raises(guard_module.AwaitingApproval) as pending:
        guard.check(tool="authorize_payment", policy=PAY, justification=JUSTIFICATION)
    name = pending.value.request
    assert re.fullmatch(r"clerk-guard-[a-z0-9]+", name)
    assert pending.value.message == (
        f"awaiting approval: access request {name} for payments.authorize is pending; "
        "authorize_payment runs once a person approves it (call it again later)"
    )
    (filed,) = [r for r in clerk.access_requests() if r["metadata"]["name"] == name]
    assert filed["spec"]["justification"] == JUSTIFICATION
    # Asking again before anyone decided files nothing new.
    with pytest.raises(guard_module.AwaitingApproval):
        guard.check(tool="authorize_payment", policy=PAY, justification=JUSTIFICATION)
    assert len(clerk.access_requests()) == 1
    clerk.wait_pending(name)
    decision = clerk.stack.approve(name)
    assert decision.returncode == 0, decision.stderr
    granted = wait_for(lambda: _permitted(guard), timeout=20, interval=0.1, message="approval")
    assert granted == "payments.authorize"
    assert "payments.authorize" in client.token_info().scope


def _permitted(guard: guard_module.ToolGuard) -> str | None:
    try:
        return guard.check(tool="authorize_payment", policy=PAY, justification=JUSTIFICATION)
    except guard_module.AwaitingApproval:
        return None


def test_denied_request_is_reported_to_the_model(agentauth_stack: Stack) -> None:
    denied_clerk = agentauth_stack.enroll("clerk-guard-denied")
    sdk = denied_clerk.client()
    guard = guard_module.ToolGuard(sdk, approval_wait=20)
    with (
        denied_clerk.decide_when_filed("payments.authorize", approve=False) as denier,
        pytest.raises(guard_module.NotPermitted) as refused,
    ):
        guard.check(tool="authorize_payment", policy=PAY, justification=JUSTIFICATION)
    sdk.close()
    assert denier.error is None and denier.request is not None
    name = denier.request["metadata"]["name"]
    assert refused.value.message == (
        f"not permitted: needs payments.authorize (access request {name} was denied)"
    )


def test_bad_declarations_are_rejected(client: AgentClient) -> None:
    with pytest.raises(ValueError, match=r"^invalid capability name 'Payments'$"):
        guard_module.ToolPolicy(capability="Payments")
    with pytest.raises(ValueError, match=r"^approval_wait must be >= 0 seconds$"):
        guard_module.ToolGuard(client, approval_wait=-1)


def test_the_guard_imports_no_framework_and_no_sdk_until_used() -> None:
    # The core stays light: the guard (and the package) pull in no framework, and the SDK
    # (httpx) only when a guard is built.
    probe = (
        "import sys, agentauth.integrations, agentauth.integrations.guard\n"
        "heavy = ['langchain_core', 'langgraph', 'crewai', 'agents', 'agno', 'google.adk',\n"
        "         'agent_framework', 'agentauth.sdk', 'httpx']\n"
        "print(sorted(m for m in heavy if m in sys.modules))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=60
    )
    assert result.stdout.strip() == "[]"


async def test_concurrent_calls_share_one_access_request(agentauth_stack: Stack) -> None:
    together = agentauth_stack.enroll("clerk-guard-together")
    sdk = together.client()
    guard = guard_module.ToolGuard(sdk, approval_wait=20)
    calls = [
        guard.acheck(tool="authorize_payment", policy=PAY, justification=JUSTIFICATION)
        for _ in range(3)
    ]
    with together.decide_when_filed("payments.authorize") as approver:
        granted = await asyncio.gather(*calls)
    sdk.close()
    assert approver.error is None
    assert granted == ["payments.authorize"] * 3
    assert len(together.access_requests()) == 1
