"""Microsoft Agent Framework: an ``Agent`` over a scripted chat client with the function
invocation layer, offline, against the real stack; guarded by
``agentauth.integrations.microsoft_agent_framework.AgentAuthMiddleware`` (function middleware)."""

from __future__ import annotations

from collections.abc import Iterator

import agent_framework as af
import pytest

from agentauth.integrations import guard as guard_module
from agentauth.integrations import microsoft_agent_framework as agentauth_maf
from tests.integrations import scenario, scripted
from tests.integrations.conftest import EnrolledAgent, Stack


@pytest.fixture(scope="module")
def clerk(agentauth_stack: Stack) -> EnrolledAgent:
    return agentauth_stack.enroll("clerk-maf")


@pytest.fixture
def guard(clerk: EnrolledAgent) -> Iterator[guard_module.ToolGuard]:
    client = clerk.client()
    yield guard_module.ToolGuard(client, approval_wait=20)
    client.close()


async def test_agent_reads_is_refused_and_pays_after_approval(
    clerk: EnrolledAgent, guard: guard_module.ToolGuard
) -> None:
    ledger = scenario.Ledger()
    middleware = agentauth_maf.AgentAuthMiddleware(
        guard,
        policies={
            "read_document": guard_module.ToolPolicy(capability="document.read"),
            "delete_database": guard_module.ToolPolicy(capability="db.delete"),
            "authorize_payment": guard_module.ToolPolicy(capability="payments.authorize", jit=True),
        },
    )
    tools = [
        af.tool(ledger.read_document, name="read_document"),
        af.tool(ledger.delete_database, name="delete_database"),
        agentauth_maf.with_justification(
            af.tool(ledger.authorize_payment, name="authorize_payment")
        ),
    ]
    client = scripted.ScriptedChatClient(scenario.CALLS)
    agent = af.Agent(client=client, tools=tools, middleware=[middleware], instructions="Pay.")
    with clerk.decide_when_filed("payments.authorize") as approver:
        response = await agent.run("Pay the ACME invoice.")
    assert response.text == "done"
    scenario.assert_outcome(seen=client.results(), ledger=ledger, approver=approver, clerk=clerk)


async def test_tools_without_a_policy_are_checked_through_the_ask_api(
    guard: guard_module.ToolGuard,
) -> None:
    ledger = scenario.Ledger()
    middleware = agentauth_maf.AgentAuthMiddleware(
        guard, policies={"delete_database": guard_module.ToolPolicy(capability="db.delete")}
    )
    tools = [
        af.tool(ledger.read_document, name="read_document", description="Read documents."),
        af.tool(ledger.delete_database, name="delete_database"),
    ]
    client = scripted.ScriptedChatClient(scenario.ASK_CALLS)
    agent = af.Agent(client=client, tools=tools, middleware=[middleware])
    await agent.run("Read the report, then drop invoices.")
    assert client.results() == scenario.ASK_OUTCOME
    assert ledger.calls == ["read report-7"]
