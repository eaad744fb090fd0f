"""agentauth for the Microsoft Agent Framework: function middleware (extra `agent-framework`).

The Agent Framework's extension point around tool calls is *function middleware*: it sees
each ``FunctionInvocationContext`` (the tool and the model's arguments) before the function
runs, may call ``call_next()`` or set ``context.result`` instead. :class:`AgentAuthMiddleware`
looks up the tool's :class:`~agentauth.integrations.guard.ToolPolicy` (tools without one are
checked through the Ask API), asks the shared guard, and on refusal sets the result to the
refusal text, which the model reads as the function result. JIT works here too:
:func:`with_justification` gives a tool the ``justification`` argument the model fills in,
and the middleware removes it before the function is called.
"""

from __future__ import annotations

import copy
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import agent_framework
import pydantic

from agentauth.integrations import guard as guard_module

__all__ = ["AgentAuthMiddleware", "with_justification"]


class AgentAuthMiddleware(agent_framework.FunctionMiddleware):
    """Function middleware that runs a tool only when the agent may.

    ``policies`` maps tool names to their policy; a tool not listed gets ``default``
    (``ToolPolicy()``: ask the Ask API).
    """

    def __init__(
        self,
        guard: guard_module.ToolGuard,
        *,
        policies: Mapping[str, guard_module.ToolPolicy],
        default: guard_module.ToolPolicy | None = None,
    ) -> None:
        self.guard = guard
        self.policies = dict(policies)
        self.default = default if default is not None else guard_module.ToolPolicy()

    async def process(
        self,
        context: agent_framework.FunctionInvocationContext,
        call_next: Callable[[], Awaitable[None]],
    ) -> None:
        function = context.function
        policy = self.policies.get(function.name, self.default)
        arguments = _as_dict(context.arguments)
        own, justification = guard_module.pop_justification(arguments)
        if guard_module.JUSTIFICATION_PARAMETER in arguments:
            # The function itself has no such parameter: hand it only its own arguments.
            context.arguments = own
        try:
            await self.guard.acheck(
                tool=function.name,
                policy=policy,
                description=function.description,
                justification=justification,
            )
        except guard_module.ToolRefused as refusal:
            context.result = refusal.message
            return
        await call_next()


def with_justification(tool: agent_framework.FunctionTool) -> agent_framework.FunctionTool:
    """A copy of ``tool`` whose schema also offers the optional ``justification`` argument
    (for JIT tools; :class:`AgentAuthMiddleware` strips it before the function runs)."""
    schema = copy.deepcopy(tool.parameters())
    schema.setdefault("properties", {})[guard_module.JUSTIFICATION_PARAMETER] = {
        "type": "string",
        "description": guard_module.JUSTIFICATION_DESCRIPTION,
    }
    return agent_framework.FunctionTool(
        name=tool.name,
        description=tool.description,
        func=tool.func,
        input_model=schema,
    )


def _as_dict(arguments: pydantic.BaseModel | Mapping[str, Any]) -> dict[str, Any]:
    if isinstance(arguments, pydantic.BaseModel):
        return arguments.model_dump()
    return dict(arguments)
