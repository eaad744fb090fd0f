"""The Ask API's answers: is the agent allowed to do what it asks, does it need a person's
approval first, or is it not covered at all?

Guarantees:

- **The answer depends only on the asking agent's own grants** (and its access requests): the
  catalog is the concrete capabilities of the active grants that select the agent, so what else
  its namespace holds never changes an answer.
- **Fail closed.** ``allowed`` is true only when every clause of the question is covered by a
  capability the agent holds with approval ``Automatic``, or with ``Required`` and an approved,
  unexpired AccessRequest. A clause the matcher cannot tie to one capability (see
  :mod:`agentauth.domain.askmatching`) makes the whole answer "not covered", with the closest
  capabilities as suggestions. Text that is not English, and context clauses that destroy,
  transfer or grant, are not covered either.
- **Every clause that acts counts**: a context clause that carries an action ("before approving
  the discount", "so I can refund it") is matched like a request, and an action inside a clause
  beside its verb ("as well as refunding the order", "should be refunded") is not covered; only
  a clause with no action of its own is passed over.
- **Only direct matches answer**: a match that depends on a loose inference
  (:data:`agentauth.domain.askmatching.INFERENCES`: slang, typo, pronoun, ...) is "not covered"
  with the capability as the first suggestion; the agent asks again with the exact ``action``.
- **Most restrictive clause wins**: not covered > approval required > allowed; each clause's own
  decision, capability, description and matched words are in the answer.
- **Approval is never "allowed" without an approval**: a ``Required`` capability without a
  current approval answers ``approval_required`` with the JIT call to make (``POST
  /v1/access-requests``); with one it answers allowed and says until when.

The request body (:func:`parse_request`) has ``question`` or ``action`` and optionally
``context``; any other field is refused (a misspelt ``"actoin"`` must not silently turn into a
question-less request). A question is plain text of at most ``MAX_QUESTION_CHARS`` characters
without control characters. ``context`` follows the AccessRequest rules (at most 16 plain-text
string values, bounded keys) so an agent can carry it on into an AccessRequest unchanged. It never
changes the answer, because capabilities are not conditional: it is recorded in the audit line
of the question, so a reviewer sees what the agent said it was about to do.
"""

from __future__ import annotations

import functools
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from agentauth.domain import approvals, askmatching, capabilities, exchanging
from agentauth.domain.askmatching import Candidate, CatalogEntry
from agentauth.domain.models import Agent, CapabilityGrant, EffectiveCapability

__all__ = [
    "MAX_QUESTION_CHARS",
    "AskAnswer",
    "AskRequest",
    "Candidate",
    "CatalogEntry",
    "ClauseAnswer",
    "InvalidAsk",
    "answer_question",
    "catalog_for",
    "catalog_from_grants",
    "parse_request",
]

MAX_QUESTION_CHARS = 2000
ACCESS_REQUESTS_PATH = "/v1/access-requests"
ALLOWED, APPROVAL_REQUIRED, NOT_COVERED = "allowed", "approval_required", "not_covered"
_RESTRICTIVENESS = {ALLOWED: 0, APPROVAL_REQUIRED: 1, NOT_COVERED: 2}


def catalog_from_grants(grants: Iterable[CapabilityGrant]) -> list[CatalogEntry]:
    """Concrete capabilities of ``grants`` (wildcards are not answers); the first description and
    the union of examples win when several grants name the same capability."""
    merged: dict[str, tuple[str, list[str]]] = {}
    for grant in sorted(grants, key=lambda g: g.metadata.name or ""):
        for spec in grant.spec.capabilities:
            if not capabilities.is_capability_name(spec.name):
                continue
            description, examples = merged.setdefault(spec.name, (spec.description, []))
            examples.extend(e for e in spec.examples if e not in examples)
            if not description and spec.description:
                merged[spec.name] = (spec.description, examples)
    return list(_entries(tuple((n, d, tuple(e)) for n, (d, e) in sorted(merged.items()))))


@functools.lru_cache(maxsize=1024)
def _entries(specs: tuple[tuple[str, str, tuple[str, ...]], ...]) -> tuple[CatalogEntry, ...]:
    """Catalog entries, built once per distinct catalog (an agent's grants rarely change)."""
    return tuple(CatalogEntry.build(name=n, description=d, examples=e) for n, d, e in specs)


def catalog_for(
    agent: Agent, grants: Iterable[CapabilityGrant], *, now: datetime
) -> list[CatalogEntry]:
    """The catalog of ``agent``: only the active grants of its namespace that select it."""
    namespace = agent.metadata.namespace
    return catalog_from_grants(
        g
        for g in grants
        if g.metadata.namespace == namespace
        and g.metadata.deletion_timestamp is None
        and capabilities.grant_is_active(g, now=now)
        and capabilities.grant_selects(g, agent)
    )


REQUEST_FIELDS = ("question", "action", "context")


class InvalidAsk(ValueError):
    """The Ask request body has a shape the API does not accept; ``message`` says what to fix."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


@dataclass(frozen=True, slots=True)
class AskRequest:
    """A parsed Ask body: exactly one of ``action`` (wins when both are given) and
    ``question``, and the validated ``context``."""

    question: str | None
    action: str | None
    context: dict[str, str]


def parse_request(body: object) -> AskRequest:
    """The Ask request in ``body`` (decoded JSON), or :class:`InvalidAsk`."""
    if not isinstance(body, dict):
        raise InvalidAsk("the request body must be a JSON object")
    unknown = sorted(str(key) for key in body if key not in REQUEST_FIELDS)
    if unknown:
        raise InvalidAsk(
            f'unknown field {unknown[0]!r}: the body has "question" or "action", and '
            'optionally "context"'
        )
    raw_context = body.get("context")
    if raw_context is None:
        context: dict[str, str] = {}
    elif not isinstance(raw_context, dict):
        raise InvalidAsk('"context" must be an object of strings')
    else:
        try:
            context = approvals.validate_context(raw_context)
        except approvals.InvalidAccessRequest as error:
            raise InvalidAsk(error.message) from None
    question, action = body.get("question"), body.get("action")
    if isinstance(action, str) and action:
        if not capabilities.is_capability_name(action):
            raise InvalidAsk(f"action {action!r} is not a capability name")
        return AskRequest(question=None, action=action, context=context)
    if isinstance(question, str) and question.strip():
        if len(question) > MAX_QUESTION_CHARS:
            raise InvalidAsk(f"question exceeds {MAX_QUESTION_CHARS} characters")
        control = next((ch for ch in question if _is_control(ch)), None)
        if control is not None:
            raise InvalidAsk(
                f"question contains the control character U+{ord(control):04X}: send plain text"
            )
        return AskRequest(question=question, action=None, context=context)
    raise InvalidAsk('give either "question" or "action"')


def _is_control(character: str) -> bool:
    """Control and format characters (NUL, ESC, bidi overrides); tab and newline are text."""
    return character not in "\t\n\r" and unicodedata.category(character) in ("Cc", "Cf")


@dataclass(frozen=True, slots=True)
class ClauseAnswer:
    """The decision for one clause of a question."""

    text: str
    decision: str  # allowed | approval_required | not_covered
    capability: str | None
    description: str
    matched_words: tuple[str, ...]
    confidence: float
    reason: str
    approved_until: datetime | None = None
    candidates: tuple[Candidate, ...] = ()


@dataclass(frozen=True, slots=True)
class AskAnswer:
    allowed: bool
    capability: str | None
    approval_required: bool
    confidence: float
    reason: str
    candidates: tuple[Candidate, ...] = ()
    clauses: tuple[ClauseAnswer, ...] = ()
    approved_until: datetime | None = None

    @property
    def decision(self) -> str:
        if self.allowed:
            return ALLOWED
        return APPROVAL_REQUIRED if self.approval_required else NOT_COVERED

    def body(self) -> dict[str, object]:
        """The JSON answer of ``/v1/ask`` (without ``audit_id``, which the handler adds)."""
        body: dict[str, object] = {
            "allowed": self.allowed,
            "decision": self.decision,
            "capability": self.capability,
            "approval_required": self.approval_required,
            "confidence": self.confidence,
            "reason": self.reason,
            "candidates": [{"capability": c.capability, "score": c.score} for c in self.candidates],
            "clauses": [
                {
                    "text": c.text,
                    "decision": c.decision,
                    "capability": c.capability,
                    "description": c.description,
                    "matched_words": list(c.matched_words),
                    "confidence": c.confidence,
                    "reason": c.reason,
                    "approved_until": c.approved_until.isoformat() if c.approved_until else None,
                    "suggestions": [s.capability for s in c.candidates],
                }
                for c in self.clauses
            ],
        }
        if self.approved_until is not None:
            body["approved_until"] = self.approved_until.isoformat()
        if self.approval_required:
            body["approval_request"] = {
                "method": "POST",
                "path": ACCESS_REQUESTS_PATH,
                "body": {
                    "capabilities": list(self.approval_capabilities),
                    "justification": "<why the agent needs this now>",
                },
            }
        return body

    @property
    def approval_capabilities(self) -> tuple[str, ...]:
        """The capabilities to list in the AccessRequest the answer asks for."""
        return tuple(
            dict.fromkeys(
                c.capability
                for c in self.clauses
                if c.decision == APPROVAL_REQUIRED and c.capability is not None
            )
        )


def _decide_capability(
    capability: str,
    *,
    held: Sequence[EffectiveCapability],
    requests: Sequence[Any],
    agent_label: str,
    now: datetime,
) -> tuple[str, str, datetime | None]:
    """(decision, reason, approved until) for one capability name."""
    entry = capabilities.find(held, capability)
    if entry is None:
        return NOT_COVERED, f"{capability} is not granted to agent {agent_label}", None
    if entry.approval == "Automatic":
        return ALLOWED, f"{capability} is granted by {entry.grant}", None
    approved = exchanging.approved_until(capability, requests, now=now)
    if approved is not None:
        until = approved[0]
        reason = (
            f"{capability} is approved by AccessRequest {approved[1]} until {until.isoformat()}"
        )
        return ALLOWED, reason, until
    reason = (
        f"{capability} requires approval: file an AccessRequest with POST {ACCESS_REQUESTS_PATH} "
        f"(grant {entry.grant})"
    )
    return APPROVAL_REQUIRED, reason, None


def _combine(clauses: Sequence[ClauseAnswer], candidates: tuple[Candidate, ...] = ()) -> AskAnswer:
    """The most restrictive clause decides; ties go to the first such clause."""
    deciding = max(clauses, key=lambda c: _RESTRICTIVENESS[c.decision])
    if len({c.reason for c in clauses}) == 1:
        reason = deciding.reason
    else:
        reason = "; ".join(f"{c.text!r}: {c.reason}" for c in clauses)
    allowed = deciding.decision == ALLOWED
    covered = deciding.decision != NOT_COVERED
    approvals_until = [c.approved_until for c in clauses if c.approved_until is not None]
    return AskAnswer(
        allowed=allowed,
        capability=deciding.capability if covered else None,
        approval_required=deciding.decision == APPROVAL_REQUIRED,
        confidence=min(c.confidence for c in clauses),
        reason=reason,
        candidates=deciding.candidates or candidates,
        clauses=tuple(clauses),
        approved_until=min(approvals_until) if allowed and approvals_until else None,
    )


def answer_question(
    question: str | None,
    *,
    agent: Agent,
    snapshot: exchanging.Snapshot,
    now: datetime,
    action: str | None = None,
    strictness: askmatching.Strictness = askmatching.STRICT,
) -> AskAnswer:
    """The answer of ``/v1/ask`` for ``agent``: to the structured ``action`` when given (an exact
    capability name, no matching), else to the plain-language ``question``. ``strictness`` is
    for measuring the matcher's trade-off only; the service always uses the default."""
    held = snapshot.held(agent, now=now)
    requests = snapshot.access_requests_of(agent)
    label = exchanging.agent_label(agent)
    catalog = catalog_for(agent, snapshot.grants_in(agent.metadata.namespace or ""), now=now)
    described = {entry.name: entry.description for entry in catalog}
    if action is not None:
        decision, reason, until = _decide_capability(
            action, held=held, requests=requests, agent_label=label, now=now
        )
        clause = ClauseAnswer(
            text=action,
            decision=decision,
            capability=action if decision != NOT_COVERED else None,
            description=described.get(action, ""),
            matched_words=(),
            confidence=1.0,
            reason=reason,
            approved_until=until,
        )
        answer = _combine([clause])
        if decision == NOT_COVERED:  # keep naming what was asked for, as before
            return AskAnswer(False, action, False, 1.0, reason, (), answer.clauses)
        return answer
    assert question is not None  # noqa: S101 - parse_request gives one of the two
    return _combine(
        _clause_answers(
            question, catalog, described, held, requests, label, now, strictness=strictness
        )
    )


def _not_covered(text: str, reason: str, candidates: tuple[Candidate, ...] = ()) -> ClauseAnswer:
    return ClauseAnswer(text, NOT_COVERED, None, "", (), 0.0, reason, None, candidates)


def _clause_answers(
    question: str,
    catalog: Sequence[CatalogEntry],
    described: dict[str, str],
    held: Sequence[EffectiveCapability],
    requests: Sequence[Any],
    label: str,
    now: datetime,
    *,
    strictness: askmatching.Strictness = askmatching.STRICT,
) -> list[ClauseAnswer]:
    tokens = askmatching.tokenize(question)
    text = question.strip()
    if not askmatching.looks_english(tokens):
        return [_not_covered(text, "the question is not English text the matcher can read")]
    if not catalog:
        return [_not_covered(text, f"agent {label} holds no concrete capability")]
    answers: list[ClauseAnswer] = []
    antecedent: askmatching.Clause | None = None
    for found in askmatching.clauses(tokens):
        clause = found
        if found.kind == "context":
            # a context clause that carries an action of its own is a request like any other
            # (most restrictive wins): only a clause with no action may be passed over
            hidden = askmatching.hidden_request(found) if strictness.hidden_requests else None
            residual = (
                askmatching.residual_actions(found, catalog) if strictness.hidden_requests else []
            )
            if hidden is None and residual:
                reason = f"the clause asks to {residual[0]!r}: ask it as a clause of its own"
                answers.append(_not_covered(found.text, reason))
                continue
            if hidden is None:
                danger = askmatching.context_danger(found)
                if danger is not None:
                    reason = f"the clause asks to {danger!r}, which no capability covers"
                    answers.append(_not_covered(found.text, reason))
                if antecedent is None:
                    # "the certificate on api-gateway expires in 3 days, refresh it": a pronoun
                    # in the first request may stand for what the statement before it is about
                    antecedent = found
                continue
            clause = hidden
        residual = (
            askmatching.residual_actions(clause, catalog) if strictness.hidden_requests else []
        )
        if residual:
            reason = (
                f"the clause also asks to {residual[0]!r}: ask each action as a clause of its own"
            )
            answers.append(_not_covered(clause.text, reason))
        matched = askmatching.match_clause(
            askmatching.resolve(clause, antecedent),
            catalog,
            strictness=strictness,
            active_inferences=strictness.inferences,
        )
        antecedent = clause
        if matched.capability is None:
            answers.append(_not_covered(matched.text, matched.reason, matched.candidates))
            continue
        if matched.inferred:
            # a loose inference never answers for the agent: it may suggest the capability,
            # which the agent then asks about by its exact name (the structured ``action``)
            inferences = ", ".join(matched.inferred)
            reason = (
                f"the clause matches {matched.capability} only by inference ({inferences}): "
                f'ask again with "action": "{matched.capability}" if that is what is meant'
            )
            suggestion = (askmatching.Candidate(matched.capability, matched.confidence),)
            others = tuple(c for c in matched.candidates if c.capability != matched.capability)
            answers.append(_not_covered(matched.text, reason, suggestion + others))
            continue
        decision, reason, until = _decide_capability(
            matched.capability, held=held, requests=requests, agent_label=label, now=now
        )
        words = ", ".join(matched.matched_words)
        description = described.get(matched.capability, "")
        explained = f"{reason} (matched words: {words}; {description or 'no description'})"
        answers.append(
            ClauseAnswer(
                text=matched.text,
                decision=decision,
                capability=matched.capability if decision != NOT_COVERED else None,
                description=description,
                matched_words=matched.matched_words,
                confidence=matched.confidence,
                reason=explained,
                approved_until=until,
                candidates=matched.candidates,
            )
        )
    if not answers:
        closest = askmatching._closest(askmatching.Clause(tuple(tokens), "context"), catalog)
        names = ", ".join(c.capability for c in closest) or "none"
        return [
            _not_covered(text, f"no action recognised in the question; closest: {names}", closest)
        ]
    return answers
