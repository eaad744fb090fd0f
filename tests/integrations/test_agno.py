"""Agno: an ``Agent`` with a scripted ``Model``, offline, against the real stack; tools wrapped
by ``agentauth.integrations.agno.guard_tool`` (a tool hook)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from agno.agent import Agent

from agentauth.integrations import agno as agentauth_agno
from agentauth.integrations import guard as guard_module
from tests.integrations import scenario, scripted
from tests.integrations.conftest import EnrolledAgent, Stack


@pytest.fixture(scope="module")
def clerk(agentauth_stack: Stack) -> EnrolledAgent:
    return agentauth_stack.enroll("clerk-agno")


@pytest.fixture
def guard(clerk: EnrolledAgent) -> Iterator[guard_module.ToolGuard]:
    client = clerk.client()
    yield guard_module.ToolGuard(client, approval_wait=20)
    client.close()


def guarded(guard: guard_module.ToolGuard, ledger: scenario.Ledger) -> list[Any]:
    return [
        agentauth_agno.guard_tool(ledger.read_document, guard=guard, capability="document.read"),
        agentauth_agno.guard_tool(ledger.delete_database, guard=guard, capability="db.delete"),
        agentauth_agno.guard_tool(
            ledger.authorize_payment, guard=guard, capability="payments.authorize", jit=True
        ),
    ]


async def test_async_run_reads_is_refused_and_pays_after_approval(
    clerk: EnrolledAgent, guard: guard_module.ToolGuard
) -> None:
    ledger = scenario.Ledger()
    model = scripted.ScriptedAgnoModel.playing(scenario.CALLS)
    agent = Agent(model=model, tools=guarded(guard, ledger), telemetry=False)
    with clerk.decide_when_filed("payments.authorize") as approver:
        output = await agent.arun("Pay the ACME invoice.")
    assert output.content == "done"
    scenario.assert_outcome(seen=model.results(), ledger=ledger, approver=approver, clerk=clerk)


def test_sync_run_asks_for_undeclared_tools_and_refuses_missing_ones(
    guard: guard_module.ToolGuard,
) -> None:
    ledger = scenario.Ledger()
    model = scripted.ScriptedAgnoModel.playing(scenario.ASK_CALLS)
    tools = [
        # No capability declared: the guard asks the Ask API with the tool's name.
        agentauth_agno.guard_tool(ledger.read_document, guard=guard),
        agentauth_agno.guard_tool(ledger.delete_database, guard=guard, capability="db.delete"),
    ]
    output = Agent(model=model, tools=tools, telemetry=False).run("Read, then drop invoices.")
    assert output.content == "done"
    assert model.results() == scenario.ASK_OUTCOME
    assert ledger.calls == ["read report-7"]
