"""agentauth for LangChain and LangGraph: guarded tools (install ``agentauth-k8s[langchain]``).

LangChain's extension point for "run something around a tool" is the tool itself: every agent
runtime (LangGraph's ``create_react_agent`` and ``ToolNode``, ``langchain.agents``, plain
``bind_tools`` loops) executes ``BaseTool`` objects. :func:`guard_tool` returns a
``StructuredTool`` with the same name, description and argument schema (plus an optional
``justification`` argument for JIT tools) whose sync and async paths ask the shared
:class:`~agentauth.integrations.guard.ToolGuard` first. A refusal becomes the tool's output, so
the model receives it as the ``ToolMessage`` content and the agent loop goes on.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pydantic
from langchain_core import tools as lc_tools

from agentauth.integrations import guard as guard_module

__all__ = ["guard_tool"]


def guard_tool(
    tool: lc_tools.BaseTool | Callable[..., Any],
    *,
    guard: guard_module.ToolGuard,
    capability: str | None = None,
    jit: bool = False,
    duration: str | None = None,
) -> lc_tools.StructuredTool:
    """Wrap a LangChain tool (or a plain function, turned into one) so it runs only when the
    agent may: ``capability`` declared (local token check) or ``None`` (Ask API); ``jit``
    requests approval with the model's justification."""
    policy = guard_module.ToolPolicy(capability=capability, jit=jit, duration=duration)
    inner = tool if isinstance(tool, lc_tools.BaseTool) else lc_tools.tool(tool)
    description = inner.description

    def run(**arguments: Any) -> Any:
        own, justification = guard_module.pop_justification(arguments)
        try:
            guard.check(
                tool=inner.name,
                policy=policy,
                description=description,
                justification=justification,
            )
        except guard_module.ToolRefused as refusal:
            return refusal.message
        return inner.invoke(own)

    async def arun(**arguments: Any) -> Any:
        own, justification = guard_module.pop_justification(arguments)
        try:
            await guard.acheck(
                tool=inner.name,
                policy=policy,
                description=description,
                justification=justification,
            )
        except guard_module.ToolRefused as refusal:
            return refusal.message
        return await inner.ainvoke(own)

    return lc_tools.StructuredTool(
        name=inner.name,
        description=description,
        args_schema=_schema(inner, jit=jit),
        func=run,
        coroutine=arun,
    )


def _schema(inner: lc_tools.BaseTool, *, jit: bool) -> Any:
    """The inner tool's argument schema, plus the optional ``justification`` for JIT tools."""
    schema = inner.args_schema
    if not jit:
        return schema if schema is not None else inner.get_input_schema()
    justification_field: Any = (
        str | None,
        pydantic.Field(default=None, description=guard_module.JUSTIFICATION_DESCRIPTION),
    )
    if isinstance(schema, dict):
        extended = dict(schema)
        properties = dict(extended.get("properties", {}))
        properties[guard_module.JUSTIFICATION_PARAMETER] = {
            "type": "string",
            "description": guard_module.JUSTIFICATION_DESCRIPTION,
        }
        extended["properties"] = properties
        return extended
    base = schema if schema is not None else inner.get_input_schema()
    return pydantic.create_model(
        f"{base.__name__}WithJustification",
        __base__=base,
        **{guard_module.JUSTIFICATION_PARAMETER: justification_field},
    )
