"""Offline, scripted models for each framework: they play fixed turns and remember what they
were sent, so a test can assert on the tool results the model received.

Each is the framework's own documented seam for a custom model: a LangChain fake chat model, an
Agents SDK ``Model``, a CrewAI ``BaseLLM``, an Agno ``Model``, an ADK ``BaseLlm``, and an Agent
Framework chat client with its function-invocation layer. No network, no API key.
"""

from __future__ import annotations

import json
from collections.abc import AsyncGenerator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import agent_framework as af
from agents.items import ModelResponse as AgentsModelResponse
from agents.models.interface import Model as AgentsModel
from agents.usage import Usage
from agno.models.base import Model as AgnoModel
from agno.models.response import ModelResponse as AgnoModelResponse
from crewai.llms.base_llm import BaseLLM
from google.adk.models.base_llm import BaseLlm
from google.adk.models.llm_request import LlmRequest
from google.adk.models.llm_response import LlmResponse
from google.genai import types
from langchain_core.language_models.fake_chat_models import FakeMessagesListChatModel
from langchain_core.messages import AIMessage, BaseMessage, ToolMessage
from openai.types.responses import (
    ResponseFunctionToolCall,
    ResponseOutputMessage,
    ResponseOutputText,
)

# A tool call the scripts make: (tool name, arguments, call id).
Call = tuple[str, dict[str, Any], str]


# --------------------------------------------------------------------------- LangChain


class ScriptedChatModel(FakeMessagesListChatModel):
    """LangChain's fake chat model, able to bind tools, remembering what it was sent."""

    seen: list[list[BaseMessage]] = []

    def bind_tools(self, tools: Any, **kwargs: Any) -> Any:
        return self

    def _generate(self, messages: list[BaseMessage], *args: Any, **kwargs: Any) -> Any:
        self.seen.append(list(messages))
        return super()._generate(messages, *args, **kwargs)


def langchain_model(calls: Sequence[Call], final: str = "done") -> ScriptedChatModel:
    tool_calls = [{"name": name, "args": args, "id": call_id} for name, args, call_id in calls]
    return ScriptedChatModel(
        responses=[AIMessage(content="", tool_calls=tool_calls), AIMessage(content=final)],
        seen=[],
    )


def langchain_results(model: ScriptedChatModel) -> dict[str, str]:
    return {m.name or "": str(m.content) for m in model.seen[-1] if isinstance(m, ToolMessage)}


# --------------------------------------------------------------------------- OpenAI Agents SDK


class ScriptedAgentsModel(AgentsModel):
    """An Agents SDK ``Model`` that plays fixed turns and remembers its input."""

    def __init__(self, calls: Sequence[Call], final: str = "done") -> None:
        self.calls = list(calls)
        self.turns: list[list[Any]] = [
            [
                ResponseFunctionToolCall(
                    arguments=json.dumps(args),
                    call_id=call_id,
                    name=name,
                    type="function_call",
                    id=f"fc-{call_id}",
                    status="completed",
                )
                for name, args, call_id in calls
            ],
            [
                ResponseOutputMessage(
                    id="msg-1",
                    role="assistant",
                    status="completed",
                    type="message",
                    content=[ResponseOutputText(text=final, type="output_text", annotations=[])],
                )
            ],
        ]
        self.inputs: list[Any] = []

    async def get_response(
        self, system_instructions: Any, input: Any, *args: Any, **kwargs: Any
    ) -> AgentsModelResponse:
        self.inputs.append(input)
        return AgentsModelResponse(output=self.turns.pop(0), usage=Usage(), response_id=None)

    def stream_response(self, *args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError("the tests do not stream")

    def results(self) -> dict[str, str]:
        names = {call_id: name for name, _args, call_id in self.calls}
        return {
            names[item["call_id"]]: item["output"]
            for item in self.inputs[-1]
            if isinstance(item, dict) and item.get("type") == "function_call_output"
        }


# --------------------------------------------------------------------------- CrewAI


class ScriptedLLM(BaseLLM):
    """A CrewAI LLM that answers with fixed ReAct steps and remembers the messages."""

    def __init__(self, calls: Sequence[Call], final: str = "done") -> None:
        super().__init__(model="scripted")
        self.replies = [
            f"Thought: next\nAction: {name}\nAction Input: {json.dumps(args)}"
            for name, args, _call_id in calls
        ]
        self.replies.append(f"Thought: I now know the final answer\nFinal Answer: {final}")
        self.names = [name for name, _args, _call_id in calls]
        self.seen: list[Any] = []

    def call(self, messages: Any, *args: Any, **kwargs: Any) -> str:
        self.seen.append(messages)
        return self.replies.pop(0)

    def supports_function_calling(self) -> bool:
        return False

    def results(self) -> dict[str, str]:
        """The Observation CrewAI appended after each Action."""
        found: dict[str, str] = {}
        for message in self.seen[-1]:
            content = str(message["content"])
            for name in self.names:
                if f"Action: {name}\n" in content and "Observation: " in content:
                    found[name] = content.split("Observation: ", 1)[1].split("\n", 1)[0]
        return found


# --------------------------------------------------------------------------- Agno


@dataclass
class ScriptedAgnoModel(AgnoModel):
    """An Agno model that plays fixed turns and remembers the messages it was sent."""

    id: str = "scripted"
    name: str = "Scripted"
    provider: str = "agentauth-tests"
    turns: list[AgnoModelResponse] = field(default_factory=list)
    seen: list[list[Any]] = field(default_factory=list)
    names: dict[str, str] = field(default_factory=dict)

    @classmethod
    def playing(cls, calls: Sequence[Call], final: str = "done") -> ScriptedAgnoModel:
        tool_calls = [
            {
                "id": call_id,
                "type": "function",
                "function": {"name": name, "arguments": json.dumps(args)},
            }
            for name, args, call_id in calls
        ]
        return cls(
            turns=[
                AgnoModelResponse(role="assistant", content="", tool_calls=tool_calls),
                AgnoModelResponse(role="assistant", content=final),
            ],
            names={call_id: name for name, _args, call_id in calls},
        )

    def _next(self, messages: list[Any]) -> AgnoModelResponse:
        self.seen.append(list(messages))
        return self.turns.pop(0)

    def invoke(self, messages: list[Any], *args: Any, **kwargs: Any) -> AgnoModelResponse:
        return self._next(messages)

    async def ainvoke(self, messages: list[Any], *args: Any, **kwargs: Any) -> AgnoModelResponse:
        return self._next(messages)

    def invoke_stream(self, *args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError("the tests do not stream")

    def ainvoke_stream(self, *args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError("the tests do not stream")

    def _parse_provider_response(self, response: Any, **kwargs: Any) -> AgnoModelResponse:
        return response  # type: ignore[no-any-return]

    def _parse_provider_response_delta(self, response: Any) -> AgnoModelResponse:
        return response  # type: ignore[no-any-return]

    def results(self) -> dict[str, str]:
        return {
            self.names[m.tool_call_id]: str(m.content) for m in self.seen[-1] if m.role == "tool"
        }


# --------------------------------------------------------------------------- Google ADK


class ScriptedLlm(BaseLlm):
    """An ADK model that plays fixed turns and remembers the contents it was sent."""

    model: str = "scripted"
    turns: list[LlmResponse] = []
    seen: list[list[types.Content]] = []

    @classmethod
    def playing(cls, calls: Sequence[Call], final: str = "done") -> ScriptedLlm:
        parts = [
            types.Part(function_call=types.FunctionCall(name=name, args=args, id=call_id))
            for name, args, call_id in calls
        ]
        return cls(
            turns=[
                LlmResponse(content=types.Content(role="model", parts=parts)),
                LlmResponse(content=types.Content(role="model", parts=[types.Part(text=final)])),
            ],
            seen=[],
        )

    async def generate_content_async(
        self, llm_request: LlmRequest, stream: bool = False
    ) -> AsyncGenerator[LlmResponse, None]:
        self.seen.append(list(llm_request.contents))
        yield self.turns.pop(0)

    def results(self) -> dict[str, str]:
        return {
            part.function_response.name or "": str(
                (part.function_response.response or {})["result"]
            )
            for content in self.seen[-1]
            for part in content.parts or []
            if part.function_response is not None
        }


# --------------------------------------------------------------------------- Agent Framework


class ScriptedChatClient(af.FunctionInvocationLayer[Any], af.BaseChatClient[Any]):
    """A chat client (with the function-invocation layer that runs tools and middleware) that
    plays fixed turns and remembers the messages it was sent."""

    def __init__(self, calls: Sequence[Call], final: str = "done", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        contents = [
            af.Content.from_function_call(call_id=call_id, name=name, arguments=json.dumps(args))
            for name, args, call_id in calls
        ]
        self.turns = [
            af.ChatResponse(messages=[af.Message(role="assistant", contents=contents)]),
            af.ChatResponse(messages=[af.Message(role="assistant", contents=[final])]),
        ]
        self.names = {call_id: name for name, _args, call_id in calls}
        self.seen: list[list[af.Message]] = []

    async def _respond(self, messages: Sequence[af.Message]) -> af.ChatResponse:
        self.seen.append(list(messages))
        return self.turns.pop(0)

    def _inner_get_response(
        self,
        *,
        messages: Sequence[af.Message],
        stream: bool,
        options: Mapping[str, Any],
        **kwargs: Any,
    ) -> Any:
        assert not stream, "the tests do not stream"
        return self._respond(messages)

    def results(self) -> dict[str, str]:
        return {
            self.names[content.call_id or ""]: str(content.result)
            for message in self.seen[-1]
            for content in message.contents
            if content.type == "function_result"
        }
