"""LangChain/LangGraph: LangGraph's prebuilt ReAct agent and LangChain's ``create_agent`` with a
scripted chat model, offline, against the real stack; tools wrapped by
``agentauth.integrations.langchain.guard_tool``."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from langchain.agents import create_agent
from langchain_core.tools import StructuredTool
from langgraph.prebuilt import create_react_agent

from agentauth.integrations import guard as guard_module
from agentauth.integrations import langchain as agentauth_langchain
from tests.integrations import scenario, scripted
from tests.integrations.conftest import EnrolledAgent, Stack

# create_react_agent is deprecated in favour of langchain.agents.create_agent (another package).
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@pytest.fixture(scope="module")
def clerk(agentauth_stack: Stack) -> EnrolledAgent:
    return agentauth_stack.enroll("clerk-langchain")


@pytest.fixture
def guard(clerk: EnrolledAgent) -> Iterator[guard_module.ToolGuard]:
    client = clerk.client()
    yield guard_module.ToolGuard(client, approval_wait=20)
    client.close()


def tools(guard: guard_module.ToolGuard, ledger: scenario.Ledger) -> list[StructuredTool]:
    read = StructuredTool.from_function(ledger.read_document, description="Read documents.")
    delete = StructuredTool.from_function(ledger.delete_database, description="Drop a table.")
    pay = StructuredTool.from_function(ledger.authorize_payment, description="Pay an invoice.")
    return [
        agentauth_langchain.guard_tool(read, guard=guard, capability="document.read"),
        agentauth_langchain.guard_tool(delete, guard=guard, capability="db.delete"),
        agentauth_langchain.guard_tool(pay, guard=guard, capability="payments.authorize", jit=True),
    ]


def test_react_agent_reads_is_refused_and_pays_after_approval(
    clerk: EnrolledAgent, guard: guard_module.ToolGuard
) -> None:
    ledger = scenario.Ledger()
    model = scripted.langchain_model(scenario.CALLS)
    agent = create_react_agent(model, tools(guard, ledger))
    with clerk.decide_when_filed("payments.authorize") as approver:
        result = agent.invoke({"messages": [("user", "Pay the ACME invoice.")]})
    assert result["messages"][-1].content == "done"
    scenario.assert_outcome(
        seen=scripted.langchain_results(model), ledger=ledger, approver=approver, clerk=clerk
    )


def test_jit_tool_schema_offers_the_justification(guard: guard_module.ToolGuard) -> None:
    pay = tools(guard, scenario.Ledger())[2]
    schema = pay.tool_call_schema.model_json_schema()  # type: ignore[union-attr]
    assert set(schema["properties"]) == {"amount", "justification"}
    assert schema["required"] == ["amount"]


async def test_create_agent_async_asks_for_undeclared_tools_and_refuses_missing_ones(
    guard: guard_module.ToolGuard,
) -> None:
    ledger = scenario.Ledger()
    read = StructuredTool.from_function(ledger.read_document, description="Read documents.")
    delete = StructuredTool.from_function(ledger.delete_database, description="Drop a table.")
    model = scripted.langchain_model(scenario.ASK_CALLS)
    agent = create_agent(
        model,
        [
            # No capability declared: the guard asks the Ask API with the tool's description.
            agentauth_langchain.guard_tool(read, guard=guard),
            agentauth_langchain.guard_tool(delete, guard=guard, capability="db.delete"),
        ],
    )
    await agent.ainvoke({"messages": [("user", "Read the report, then drop invoices.")]})
    assert scripted.langchain_results(model) == scenario.ASK_OUTCOME
    assert ledger.calls == ["read report-7"]


def test_json_schema_tools_get_the_justification_too(guard: guard_module.ToolGuard) -> None:
    # Tools built from a JSON schema (MCP adapters make these) rather than a pydantic model.
    schema = {
        "type": "object",
        "properties": {"amount": {"type": "integer"}},
        "required": ["amount"],
    }
    pay = StructuredTool(
        name="authorize_payment",
        description="Pay an invoice.",
        args_schema=schema,
        func=lambda amount: f"authorized {amount} EUR",
    )
    guarded = agentauth_langchain.guard_tool(
        pay, guard=guard, capability="payments.authorize", jit=True
    )
    assert guarded.args_schema == {
        "type": "object",
        "properties": {
            "amount": {"type": "integer"},
            "justification": {
                "type": "string",
                "description": guard_module.JUSTIFICATION_DESCRIPTION,
            },
        },
        "required": ["amount"],
    }
    assert schema["properties"] == {"amount": {"type": "integer"}}, "the original is untouched"
