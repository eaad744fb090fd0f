"""OpenAI Agents SDK: ``Runner.run`` with a scripted ``Model``, offline, against the real stack;
tools wrapped by ``agentauth.integrations.openai_agents.guard_tool``."""

from __future__ import annotations

from collections.abc import Iterator

import agents
import pytest

from agentauth.integrations import guard as guard_module
from agentauth.integrations import openai_agents as agentauth_openai_agents
from tests.integrations import scenario, scripted
from tests.integrations.conftest import EnrolledAgent, Stack


@pytest.fixture(scope="module")
def clerk(agentauth_stack: Stack) -> EnrolledAgent:
    return agentauth_stack.enroll("clerk-openai-agents")


@pytest.fixture
def guard(clerk: EnrolledAgent) -> Iterator[guard_module.ToolGuard]:
    client = clerk.client()
    yield guard_module.ToolGuard(client, approval_wait=20)
    client.close()


async def test_runner_reads_is_refused_and_pays_after_approval(
    clerk: EnrolledAgent, guard: guard_module.ToolGuard
) -> None:
    ledger = scenario.Ledger()
    read = agents.function_tool(ledger.read_document)
    delete = agents.function_tool(ledger.delete_database)
    pay = agents.function_tool(ledger.authorize_payment)
    tools = [
        agentauth_openai_agents.guard_tool(read, guard=guard, capability="document.read"),
        agentauth_openai_agents.guard_tool(delete, guard=guard, capability="db.delete"),
        agentauth_openai_agents.guard_tool(
            pay, guard=guard, capability="payments.authorize", jit=True
        ),
    ]
    model = scripted.ScriptedAgentsModel(scenario.CALLS)
    agent = agents.Agent(name="clerk", instructions="Pay invoices.", tools=tools, model=model)
    with clerk.decide_when_filed("payments.authorize") as approver:
        result = await agents.Runner.run(agent, "Pay the ACME invoice.")
    assert result.final_output == "done"
    scenario.assert_outcome(seen=model.results(), ledger=ledger, approver=approver, clerk=clerk)
    # Strict schemas (the SDK default) list every property as required.
    assert tools[2].params_json_schema["required"] == ["amount", "justification"]
