"""CrewAI: a real Crew with a scripted ``BaseLLM`` (ReAct text), offline, against the real
stack; tools wrapped by ``agentauth.integrations.crewai.guard_tool``."""

from __future__ import annotations

from collections.abc import Iterator

import crewai
import pytest
from crewai.tools import tool

from agentauth.integrations import crewai as agentauth_crewai
from agentauth.integrations import guard as guard_module
from tests.integrations import scenario, scripted
from tests.integrations.conftest import EnrolledAgent, Stack


@pytest.fixture(scope="module")
def clerk(agentauth_stack: Stack) -> EnrolledAgent:
    return agentauth_stack.enroll("clerk-crewai")


@pytest.fixture
def guard(clerk: EnrolledAgent) -> Iterator[guard_module.ToolGuard]:
    client = clerk.client()
    yield guard_module.ToolGuard(client, approval_wait=20)
    client.close()


def test_crew_reads_is_refused_and_pays_after_approval(
    clerk: EnrolledAgent, guard: guard_module.ToolGuard
) -> None:
    ledger = scenario.Ledger()

    @tool("read_document")
    def read_document(doc_id: str) -> str:
        """Read a document."""
        return ledger.read_document(doc_id)

    @tool("delete_database")
    def delete_database(table: str) -> str:
        """Drop a table."""
        return ledger.delete_database(table)

    @tool("authorize_payment")
    def authorize_payment(amount: int) -> str:
        """Pay an invoice."""
        return ledger.authorize_payment(amount)

    tools = [
        agentauth_crewai.guard_tool(read_document, guard=guard, capability="document.read"),
        agentauth_crewai.guard_tool(delete_database, guard=guard, capability="db.delete"),
        agentauth_crewai.guard_tool(
            authorize_payment, guard=guard, capability="payments.authorize", jit=True
        ),
    ]
    llm = scripted.ScriptedLLM(scenario.CALLS)
    agent = crewai.Agent(
        role="clerk", goal="pay invoices", backstory="careful", tools=tools, llm=llm, max_iter=6
    )
    task = crewai.Task(description="Pay the ACME invoice.", expected_output="done", agent=agent)
    with clerk.decide_when_filed("payments.authorize") as approver:
        output = crewai.Crew(agents=[agent], tasks=[task]).kickoff()
    assert output.raw == "done"
    scenario.assert_outcome(seen=llm.results(), ledger=ledger, approver=approver, clerk=clerk)
    # The model is told about the extra argument; the author's description is kept.
    assert tools[2].description.endswith("Tool Description: Pay an invoice.")
    assert "justification" in tools[2].description
