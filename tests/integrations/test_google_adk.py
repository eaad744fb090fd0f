"""Google ADK: an ``LlmAgent`` run by ``InMemoryRunner`` with a scripted ``BaseLlm``, offline,
against the real stack; tools wrapped by ``agentauth.integrations.google_adk.guard_tool``."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from google.adk.agents import LlmAgent
from google.adk.runners import InMemoryRunner
from google.genai import types

from agentauth.integrations import google_adk as agentauth_adk
from agentauth.integrations import guard as guard_module
from tests.integrations import scenario, scripted
from tests.integrations.conftest import EnrolledAgent, Stack


@pytest.fixture(scope="module")
def clerk(agentauth_stack: Stack) -> EnrolledAgent:
    return agentauth_stack.enroll("clerk-google-adk")


@pytest.fixture
def guard(clerk: EnrolledAgent) -> Iterator[guard_module.ToolGuard]:
    client = clerk.client()
    yield guard_module.ToolGuard(client, approval_wait=20)
    client.close()


async def test_runner_reads_is_refused_and_pays_after_approval(
    clerk: EnrolledAgent, guard: guard_module.ToolGuard
) -> None:
    ledger = scenario.Ledger()
    tools = [
        agentauth_adk.guard_tool(ledger.read_document, guard=guard, capability="document.read"),
        agentauth_adk.guard_tool(ledger.delete_database, guard=guard, capability="db.delete"),
        agentauth_adk.guard_tool(
            ledger.authorize_payment, guard=guard, capability="payments.authorize", jit=True
        ),
    ]
    model = scripted.ScriptedLlm.playing(scenario.CALLS)
    agent = LlmAgent(name="clerk", model=model, tools=tools, instruction="Pay invoices.")
    runner = InMemoryRunner(agent=agent, app_name="clerk")
    session = await runner.session_service.create_session(app_name="clerk", user_id="u")
    message = types.Content(role="user", parts=[types.Part(text="Pay the ACME invoice.")])
    final = ""
    with clerk.decide_when_filed("payments.authorize") as approver:
        async for event in runner.run_async(
            user_id="u", session_id=session.id, new_message=message
        ):
            if event.is_final_response() and event.content and event.content.parts:
                final = event.content.parts[0].text or ""
    assert final == "done"
    scenario.assert_outcome(seen=model.results(), ledger=ledger, approver=approver, clerk=clerk)
    declaration = tools[2]._get_declaration()
    assert declaration is not None and declaration.parameters_json_schema is not None
    assert set(declaration.parameters_json_schema["properties"]) == {"amount", "justification"}


def test_declarations_with_a_schema_object_get_the_justification() -> None:
    # Some ADK tools declare `parameters` as a genai Schema instead of a JSON schema.
    declaration = types.FunctionDeclaration(
        name="authorize_payment",
        description="Pay an invoice.",
        parameters=types.Schema(
            type=types.Type.OBJECT,
            properties={"amount": types.Schema(type=types.Type.INTEGER)},
            required=["amount"],
        ),
    )
    extended = agentauth_adk._with_justification(declaration)
    assert extended.parameters is not None and extended.parameters.properties is not None
    assert set(extended.parameters.properties) == {"amount", "justification"}
    assert extended.parameters.required == ["amount"]
    assert declaration.parameters is not None and declaration.parameters.properties is not None
    assert set(declaration.parameters.properties) == {"amount"}, "the original is untouched"
