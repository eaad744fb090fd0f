"""The one tool guard every framework adapter shares: capability checks and just-in-time access.

Each adapter in this package is thin: it hooks the framework's own extension point, asks
:class:`ToolGuard` before a tool runs, and turns a :class:`ToolRefused` into the tool result
the model reads. The rules live here, once:

* A tool that **declares** its capability is checked locally against the scopes of the
  agent's current token (cached by the SDK; no round trip while it is fresh). A tool that
  declares none is checked through the Ask API with the tool's name and description.
* A refusal never crashes the agent loop: the model receives ``"not permitted: needs
  <capability>"`` (plus why), so it can explain itself or choose another tool.
* A tool marked ``jit`` whose capability needs approval files an ``AccessRequest`` with the
  justification the *model* gave (the ``justification`` argument adapters add to the tool's
  schema), waits up to ``approval_wait`` seconds for a person to decide, and then runs the tool
  (approved), reports the denial, or reports ``"awaiting approval: ..."`` (still pending; the
  next call picks up the same request instead of filing another one).
* Fail closed: any SDK error (token service unreachable, malformed answer, ...) refuses the
  call, and an approval only counts once a freshly exchanged token really carries the
  capability.

The guard is synchronous (the SDK's sync face); async adapters run it with
:meth:`ToolGuard.acheck`, which moves the blocking calls (including the approval wait) off the
event loop.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final, Protocol

from agentauth.domain import capabilities

JUSTIFICATION_PARAMETER: Final = "justification"
"""Name of the argument adapters add to a JIT tool's schema for the model's justification."""

JUSTIFICATION_DESCRIPTION: Final = (
    "Why you need to run this tool now, in one or two sentences for the person who approves "
    "it. Required when the tool needs human approval."
)

DEFAULT_APPROVAL_WAIT: Final = 30.0
"""Seconds a JIT tool call waits for a person's decision before reporting 'awaiting approval'."""


# --------------------------------------------------------------------------- what the guard needs


class TokenInfo(Protocol):
    @property
    def scope(self) -> tuple[str, ...]: ...


class Answer(Protocol):
    @property
    def allowed(self) -> bool: ...
    @property
    def capability(self) -> str | None: ...
    @property
    def approval_required(self) -> bool: ...
    @property
    def reason(self) -> str: ...


class RequestState(Protocol):
    @property
    def name(self) -> str: ...
    @property
    def phase(self) -> str: ...


class CapabilityClient(Protocol):
    """The part of :class:`agentauth.sdk.AgentClient` the guard uses."""

    def token_info(self, *, force_refresh: bool = False) -> TokenInfo: ...

    def check(self, capability: str) -> Answer: ...

    def ask(self, question: str) -> Answer: ...

    def request_access(
        self,
        capabilities: list[str],
        *,
        justification: str,
        duration: str | None = None,
        wait: float | None = None,
    ) -> RequestState: ...

    def access_request(self, name: str) -> RequestState: ...

    def invalidate(self, *, all_audiences: bool = False) -> None: ...


# --------------------------------------------------------------------------- declarations


@dataclass(frozen=True, slots=True)
class ToolPolicy:
    """What a tool needs. ``capability=None`` means "ask the Ask API"; ``jit=True`` lets the
    guard request approval (and makes adapters add a ``justification`` argument);
    ``duration`` is the access window asked for (``"15m"``; default: the grant's maximum)."""

    capability: str | None = None
    jit: bool = False
    duration: str | None = None

    def __post_init__(self) -> None:
        if self.capability is not None and not capabilities.is_capability_name(self.capability):
            raise ValueError(f"invalid capability name {self.capability!r}")


# --------------------------------------------------------------------------- refusals


class ToolRefused(Exception):
    """The tool must not run; ``message`` is what the model is told."""

    def __init__(self, message: str, *, capability: str | None) -> None:
        super().__init__(message)
        self.message = message
        self.capability = capability


class NotPermitted(ToolRefused):
    """The agent lacks the capability (not granted, approval denied/expired, or unverifiable)."""


class AwaitingApproval(ToolRefused):
    """An access request for the capability is filed and still pending; ``request`` names it."""

    def __init__(self, message: str, *, capability: str, request: str) -> None:
        super().__init__(message, capability=capability)
        self.request = request


def not_permitted_message(capability: str, why: str | None = None) -> str:
    """The refusal text the model reads: ``not permitted: needs <capability>[ (why)]``."""
    return f"not permitted: needs {capability}" + (f" ({why})" if why else "")


# --------------------------------------------------------------------------- the guard


class ToolGuard:
    """Decides, per tool call, whether the agent may run a tool; see the module docstring.

    ``client`` is an :class:`agentauth.sdk.AgentClient` (anything with its methods works).
    Thread-safe: frameworks run tools concurrently.
    """

    def __init__(
        self,
        client: CapabilityClient,
        *,
        approval_wait: float = DEFAULT_APPROVAL_WAIT,
    ) -> None:
        if approval_wait < 0:
            raise ValueError("approval_wait must be >= 0 seconds")
        self.client = client
        self.approval_wait = approval_wait
        # Every SDK failure (transport, RFC 6749 error, malformed answer) refuses the call.
        self._sdk_errors = _sdk_error_types()
        self._lock = threading.Lock()
        # capability -> name of the AccessRequest filed for it and not yet decided.
        self._pending: dict[str, str] = {}
        # One JIT procedure per capability at a time: concurrent tool calls (frameworks run a
        # turn's tools in parallel) share one AccessRequest instead of filing several.
        self._jit_locks: dict[str, threading.Lock] = {}

    # ------------------------------------------------------------------ public

    def check(
        self,
        *,
        tool: str,
        policy: ToolPolicy,
        description: str = "",
        justification: str | None = None,
    ) -> str | None:
        """Return the capability that permits ``tool`` (``None``: the Ask API allowed it
        without naming one) or raise :class:`ToolRefused`."""
        try:
            if policy.capability is None:
                return self._check_undeclared(
                    tool=tool, policy=policy, description=description, justification=justification
                )
            return self._check_declared(
                tool=tool,
                policy=policy,
                capability=policy.capability,
                justification=justification,
            )
        except ToolRefused:
            raise
        except self._sdk_errors as exc:
            needed = policy.capability or f"a capability that covers the tool {tool}"
            raise NotPermitted(
                not_permitted_message(needed, f"authorization check failed: {exc}"),
                capability=policy.capability,
            ) from exc

    async def acheck(
        self,
        *,
        tool: str,
        policy: ToolPolicy,
        description: str = "",
        justification: str | None = None,
    ) -> str | None:
        """:meth:`check` for async adapters: runs in a worker thread so that the approval
        wait never blocks the event loop."""
        return await asyncio.to_thread(
            self.check,
            tool=tool,
            policy=policy,
            description=description,
            justification=justification,
        )

    # ------------------------------------------------------------------ rules

    def _holds(self, capability: str, *, fresh: bool = False) -> bool:
        scope = self.client.token_info(force_refresh=fresh).scope
        return any(capabilities.pattern_matches(granted, capability) for granted in scope)

    def _check_declared(
        self, *, tool: str, policy: ToolPolicy, capability: str, justification: str | None
    ) -> str:
        if self._holds(capability):
            return capability
        if not policy.jit:
            # The cached token may predate a new grant: look once more with a fresh one.
            if self._holds(capability, fresh=True):
                return capability
            raise NotPermitted(not_permitted_message(capability), capability=capability)
        answer = self.client.check(capability)
        if answer.allowed:
            # The cached token predates a change (a new grant, an approval): re-exchange and
            # trust the token, not the answer.
            return self._confirm(capability=capability, tool=tool)
        if not answer.approval_required:
            raise NotPermitted(
                not_permitted_message(capability, answer.reason or None), capability=capability
            )
        return self._just_in_time(
            tool=tool, policy=policy, capability=capability, justification=justification
        )

    def _check_undeclared(
        self, *, tool: str, policy: ToolPolicy, description: str, justification: str | None
    ) -> str | None:
        question = f"May I use the tool {tool}?" + (
            f" It will {description}" if description else ""
        )
        answer = self.client.ask(question)
        if answer.allowed:
            return answer.capability
        if answer.capability is None:
            raise NotPermitted(
                not_permitted_message(
                    f"a capability that covers the tool {tool}", answer.reason or None
                ),
                capability=None,
            )
        if answer.approval_required and policy.jit:
            return self._just_in_time(
                tool=tool, policy=policy, capability=answer.capability, justification=justification
            )
        raise NotPermitted(
            not_permitted_message(answer.capability, answer.reason or None),
            capability=answer.capability,
        )

    def _just_in_time(
        self, *, tool: str, policy: ToolPolicy, capability: str, justification: str | None
    ) -> str:
        with self._lock:
            jit_lock = self._jit_locks.setdefault(capability, threading.Lock())
        with jit_lock:
            # Whoever held the lock before us may have been approved meanwhile.
            if self._holds(capability):
                return capability
            return self._request(
                tool=tool, policy=policy, capability=capability, justification=justification
            )

    def _request(
        self, *, tool: str, policy: ToolPolicy, capability: str, justification: str | None
    ) -> str:
        with self._lock:
            pending = self._pending.get(capability)
        if pending is not None:
            state = self.client.access_request(pending)
        else:
            if not justification or not justification.strip():
                raise NotPermitted(
                    not_permitted_message(
                        capability,
                        f"it needs a person's approval: call {tool} again with a "
                        f"'{JUSTIFICATION_PARAMETER}' saying why",
                    ),
                    capability=capability,
                )
            state = self._file(
                capability=capability,
                justification=justification.strip(),
                duration=policy.duration,
            )
        return self._settle(tool=tool, capability=capability, state=state)

    def _file(self, *, capability: str, justification: str, duration: str | None) -> RequestState:
        from agentauth.sdk import errors  # lazy: keeps the guard importable without httpx set up

        try:
            state = self.client.request_access(
                [capability],
                justification=justification,
                duration=duration,
                wait=self.approval_wait,
            )
        except errors.AccessRequestDeniedError as denied:
            raise NotPermitted(
                not_permitted_message(
                    capability, f"access request {denied.name} was {denied.phase.lower()}"
                ),
                capability=capability,
            ) from denied
        except errors.AgentAuthError as refused:
            raise NotPermitted(
                not_permitted_message(
                    capability, f"access request refused: {refused.description or refused.error}"
                ),
                capability=capability,
            ) from refused
        return state

    def _settle(self, *, tool: str, capability: str, state: RequestState) -> str:
        if state.phase == "Pending":
            with self._lock:
                self._pending[capability] = state.name
            raise AwaitingApproval(
                f"awaiting approval: access request {state.name} for {capability} is pending; "
                f"{tool} runs once a person approves it (call it again later)",
                capability=capability,
                request=state.name,
            )
        with self._lock:
            self._pending.pop(capability, None)
        if state.phase != "Approved":
            raise NotPermitted(
                not_permitted_message(
                    capability, f"access request {state.name} was {state.phase.lower()}"
                ),
                capability=capability,
            )
        return self._confirm(capability=capability, tool=tool)

    def _confirm(self, *, capability: str, tool: str) -> str:
        self.client.invalidate(all_audiences=True)
        if not self._holds(capability, fresh=True):
            raise NotPermitted(
                not_permitted_message(
                    capability, f"approved, but the agent token does not carry it yet; retry {tool}"
                ),
                capability=capability,
            )
        return capability


def _sdk_error_types() -> tuple[type[Exception], ...]:
    from agentauth.sdk import errors

    return (errors.AgentAuthError,)


def pop_justification(arguments: Mapping[str, Any]) -> tuple[dict[str, Any], str | None]:
    """Split the model's arguments into the tool's own and the justification adapters added."""
    own = dict(arguments)
    justification = own.pop(JUSTIFICATION_PARAMETER, None)
    return own, justification if isinstance(justification, str) else None
