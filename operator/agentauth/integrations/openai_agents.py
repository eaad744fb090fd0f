"""agentauth for the OpenAI Agents SDK: guarded function tools (``agentauth-k8s[openai-agents]``).

The Agents SDK runs every function tool through ``FunctionTool.on_invoke_tool(ctx, json)``;
:func:`guard_tool` returns a new ``FunctionTool`` with the same name, description and schema
(plus a ``justification`` argument for JIT tools) whose invoker asks the shared
:class:`~agentauth.integrations.guard.ToolGuard` first and only then calls the original
invoker. A tool guardrail (``tool_input_guardrails``) could reject a call too, but it cannot
remove the ``justification`` argument before the function sees it, so the wrapper is the one
seam that serves both the capability check and JIT. A refusal is returned as the tool output,
so the model reads it in the ``function_call_output`` item and the run goes on.
"""

from __future__ import annotations

import json
from typing import Any

import agents

from agentauth.integrations import guard as guard_module

__all__ = ["guard_tool"]


def guard_tool(
    tool: agents.FunctionTool,
    *,
    guard: guard_module.ToolGuard,
    capability: str | None = None,
    jit: bool = False,
    duration: str | None = None,
) -> agents.FunctionTool:
    """Wrap a ``FunctionTool`` (e.g. from ``@function_tool``) so it runs only when the agent
    may: ``capability`` declared (local token check) or ``None`` (Ask API); ``jit`` requests
    approval with the model's justification."""
    policy = guard_module.ToolPolicy(capability=capability, jit=jit, duration=duration)
    original = tool.on_invoke_tool

    async def invoke(context: agents.ToolContext[Any], arguments: str) -> Any:
        parsed = json.loads(arguments) if arguments.strip() else {}
        own, justification = guard_module.pop_justification(parsed)
        try:
            await guard.acheck(
                tool=tool.name,
                policy=policy,
                description=tool.description,
                justification=justification,
            )
        except guard_module.ToolRefused as refusal:
            return refusal.message
        return await original(context, json.dumps(own))

    return agents.FunctionTool(
        name=tool.name,
        description=tool.description,
        params_json_schema=_schema(tool, jit=jit),
        on_invoke_tool=invoke,
        strict_json_schema=tool.strict_json_schema,
        is_enabled=tool.is_enabled,
    )


def _schema(tool: agents.FunctionTool, *, jit: bool) -> dict[str, Any]:
    schema = json.loads(json.dumps(tool.params_json_schema))  # deep copy; never edit theirs
    if not jit:
        return dict(schema)
    schema.setdefault("properties", {})[guard_module.JUSTIFICATION_PARAMETER] = {
        "type": "string",
        "description": guard_module.JUSTIFICATION_DESCRIPTION,
    }
    if tool.strict_json_schema:
        # Strict schemas (the SDK default) list every property as required.
        schema["required"] = [*schema.get("required", []), guard_module.JUSTIFICATION_PARAMETER]
    return dict(schema)
