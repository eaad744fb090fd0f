"""agentauth for Agno: a tool hook on each guarded tool (``agentauth-k8s[agno]``).

Agno's documented middleware for tools is the *tool hook*: a callable that receives the
function name, the next step in the chain and the arguments, and decides whether (and how) the
call proceeds. :func:`guard_tool` returns an Agno ``Function`` carrying the guard as its
innermost tool hook (after any hooks the tool already had) and, for JIT tools, a
``justification`` argument in its schema that the hook removes before the function runs. In an
async run the hook hands Agno an awaitable, so the approval wait never blocks the event loop.
A refusal is the tool result the model reads.
"""

from __future__ import annotations

import copy
import inspect
from collections.abc import Awaitable, Callable
from typing import Any

from agno.tools import function as agno_function

from agentauth.integrations import guard as guard_module

__all__ = ["guard_hook", "guard_tool"]


def guard_hook(
    *,
    guard: guard_module.ToolGuard,
    policy: guard_module.ToolPolicy,
    description: str = "",
) -> Callable[..., Any]:
    """An Agno tool hook that lets the call through only when ``guard`` permits it."""

    # Agno passes hook arguments by name (function_name, function_call, arguments).
    def agentauth_guard(
        *, function_name: str, function_call: Callable[..., Any], arguments: dict[str, Any]
    ) -> Any:
        own, justification = guard_module.pop_justification(arguments)
        # Agno calls the entrypoint with the FunctionCall's own argument dict, not with what a
        # hook passes on: remove the justification from that dict itself.
        arguments.pop(guard_module.JUSTIFICATION_PARAMETER, None)
        if inspect.iscoroutinefunction(function_call):
            return _guarded_async(
                function_name=function_name,
                function_call=function_call,
                own=own,
                justification=justification,
                guard=guard,
                policy=policy,
                description=description,
            )
        try:
            guard.check(
                tool=function_name,
                policy=policy,
                description=description,
                justification=justification,
            )
        except guard_module.ToolRefused as refusal:
            return refusal.message
        return function_call(**own)

    return agentauth_guard


async def _guarded_async(
    *,
    function_name: str,
    function_call: Callable[..., Awaitable[Any]],
    own: dict[str, Any],
    justification: str | None,
    guard: guard_module.ToolGuard,
    policy: guard_module.ToolPolicy,
    description: str,
) -> Any:
    try:
        await guard.acheck(
            tool=function_name,
            policy=policy,
            description=description,
            justification=justification,
        )
    except guard_module.ToolRefused as refusal:
        return refusal.message
    return await function_call(**own)


def guard_tool(
    tool: agno_function.Function | Callable[..., Any],
    *,
    guard: guard_module.ToolGuard,
    capability: str | None = None,
    jit: bool = False,
    duration: str | None = None,
) -> agno_function.Function:
    """Wrap a plain function or an Agno ``Function`` (``@tool``) so it runs only when the
    agent may: ``capability`` declared (local token check) or ``None`` (Ask API); ``jit``
    requests approval with the model's justification."""
    policy = guard_module.ToolPolicy(capability=capability, jit=jit, duration=duration)
    if isinstance(tool, agno_function.Function):
        function = tool.model_copy(deep=True)
    else:
        function = agno_function.Function.from_callable(tool)
    function.process_entrypoint()
    parameters = copy.deepcopy(function.parameters)
    if jit:
        parameters.setdefault("properties", {})[guard_module.JUSTIFICATION_PARAMETER] = {
            "type": "string",
            "description": guard_module.JUSTIFICATION_DESCRIPTION,
        }
    hook = guard_hook(guard=guard, policy=policy, description=function.description or "")
    return agno_function.Function(
        name=function.name,
        description=function.description,
        parameters=parameters,
        entrypoint=function.entrypoint,
        # The schema above is final: Agno must not re-derive it from the entrypoint (which
        # has no ``justification`` parameter).
        skip_entrypoint_processing=True,
        tool_hooks=[*(function.tool_hooks or []), hook],
    )
