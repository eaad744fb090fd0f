"""agentauth for Google's Agent Development Kit: guarded tools (``agentauth-k8s[google-adk]``).

ADK agents call ``BaseTool.run_async(args=..., tool_context=...)`` for each function call the
model makes. :func:`guard_tool` wraps a tool (or a plain function, as a ``FunctionTool``) in
a :class:`GuardedTool` with the same name, description and declaration (plus a
``justification`` argument for JIT tools) whose ``run_async`` asks the shared
:class:`~agentauth.integrations.guard.ToolGuard` first. ADK's ``before_tool_callback`` can
veto a call as well, but it cannot change the declaration the model sees, which JIT needs for
the model's justification; the tool wrapper serves both. A refusal is returned as the tool's
result, so the model reads it in the ``function_response`` part and the run goes on.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from google.adk.tools import base_tool, function_tool, tool_context
from google.genai import types

from agentauth.integrations import guard as guard_module

__all__ = ["GuardedTool", "guard_tool"]


class GuardedTool(base_tool.BaseTool):
    """An ADK tool that runs ``inner`` only when the guard permits it."""

    def __init__(
        self,
        inner: base_tool.BaseTool,
        *,
        guard: guard_module.ToolGuard,
        policy: guard_module.ToolPolicy,
    ) -> None:
        super().__init__(
            name=inner.name,
            description=inner.description,
            is_long_running=inner.is_long_running,
            custom_metadata=inner.custom_metadata,
        )
        self.inner = inner
        self.guard = guard
        self.policy = policy

    def _get_declaration(self) -> types.FunctionDeclaration | None:
        declaration = self.inner._get_declaration()
        if declaration is None or not self.policy.jit:
            return declaration
        return _with_justification(declaration)

    async def run_async(
        self, *, args: dict[str, Any], tool_context: tool_context.ToolContext
    ) -> Any:
        own, justification = guard_module.pop_justification(args)
        try:
            await self.guard.acheck(
                tool=self.name,
                policy=self.policy,
                description=self.description,
                justification=justification,
            )
        except guard_module.ToolRefused as refusal:
            return refusal.message
        return await self.inner.run_async(args=own, tool_context=tool_context)


def guard_tool(
    tool: base_tool.BaseTool | Callable[..., Any],
    *,
    guard: guard_module.ToolGuard,
    capability: str | None = None,
    jit: bool = False,
    duration: str | None = None,
) -> GuardedTool:
    """Wrap an ADK tool (or a plain function) so it runs only when the agent may:
    ``capability`` declared (local token check) or ``None`` (Ask API); ``jit`` requests
    approval with the model's justification."""
    policy = guard_module.ToolPolicy(capability=capability, jit=jit, duration=duration)
    inner = tool if isinstance(tool, base_tool.BaseTool) else function_tool.FunctionTool(tool)
    return GuardedTool(inner, guard=guard, policy=policy)


def _with_justification(declaration: types.FunctionDeclaration) -> types.FunctionDeclaration:
    extended = declaration.model_copy(deep=True)
    name = guard_module.JUSTIFICATION_PARAMETER
    if extended.parameters_json_schema is not None:
        schema = dict(extended.parameters_json_schema)
        schema["properties"] = {
            **schema.get("properties", {}),
            name: {"type": "string", "description": guard_module.JUSTIFICATION_DESCRIPTION},
        }
        extended.parameters_json_schema = schema
        return extended
    parameters = extended.parameters or types.Schema(type=types.Type.OBJECT, properties={})
    parameters.properties = {
        **(parameters.properties or {}),
        name: types.Schema(
            type=types.Type.STRING, description=guard_module.JUSTIFICATION_DESCRIPTION
        ),
    }
    extended.parameters = parameters
    return extended
