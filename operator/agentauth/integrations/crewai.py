"""agentauth for CrewAI: guarded tools (``agentauth-k8s[crewai]``).

CrewAI agents run ``crewai.tools.BaseTool`` objects; :func:`guard_tool` returns a
``BaseTool`` with the same name, description and arguments (plus a ``justification``
argument for JIT tools) whose ``_run`` asks the shared
:class:`~agentauth.integrations.guard.ToolGuard` first. CrewAI's global
``before_tool_call`` hooks can block a call too, but they are process-wide and the model only
reads a generic "blocked by hook" text, so the tool wrapper is the seam that lets the model
read *why* ("not permitted: needs payments.authorize") and keeps each agent's policy its own.
"""

from __future__ import annotations

from typing import Any

import pydantic
from crewai import tools as crew_tools

from agentauth.integrations import guard as guard_module

__all__ = ["GuardedTool", "guard_tool"]

_DESCRIPTION_MARK = "Tool Description: "


class GuardedTool(crew_tools.BaseTool):
    """A CrewAI tool that runs ``inner`` only when the guard permits it."""

    inner: crew_tools.BaseTool
    guard: guard_module.ToolGuard
    policy: guard_module.ToolPolicy

    def _run(self, *args: Any, **kwargs: Any) -> Any:
        own, justification = guard_module.pop_justification(kwargs)
        try:
            self.guard.check(
                tool=self.name,
                policy=self.policy,
                description=_plain_description(self.inner.description),
                justification=justification,
            )
        except guard_module.ToolRefused as refusal:
            return refusal.message
        return self.inner.run(*args, **own)


def guard_tool(
    tool: crew_tools.BaseTool,
    *,
    guard: guard_module.ToolGuard,
    capability: str | None = None,
    jit: bool = False,
    duration: str | None = None,
) -> GuardedTool:
    """Wrap a CrewAI tool (``@tool`` function or ``BaseTool`` subclass) so it runs only when
    the agent may: ``capability`` declared (local token check) or ``None`` (Ask API); ``jit``
    requests approval with the model's justification."""
    policy = guard_module.ToolPolicy(capability=capability, jit=jit, duration=duration)
    return GuardedTool(
        name=tool.name,
        description=_plain_description(tool.description),
        args_schema=_schema(tool, jit=jit),
        inner=tool,
        guard=guard,
        policy=policy,
        result_as_answer=tool.result_as_answer,
    )


def _plain_description(description: str) -> str:
    """CrewAI prefixes descriptions with name and arguments; keep the author's own text."""
    head, mark, tail = description.rpartition(_DESCRIPTION_MARK)
    return tail if mark else head + tail


def _schema(tool: crew_tools.BaseTool, *, jit: bool) -> type[pydantic.BaseModel]:
    if not jit:
        return tool.args_schema
    justification_field: Any = (
        str | None,
        pydantic.Field(default=None, description=guard_module.JUSTIFICATION_DESCRIPTION),
    )
    return pydantic.create_model(
        f"{tool.args_schema.__name__}WithJustification",
        __base__=tool.args_schema,
        **{guard_module.JUSTIFICATION_PARAMETER: justification_field},
    )
