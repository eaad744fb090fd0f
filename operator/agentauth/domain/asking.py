"""The Ask matcher: a deterministic, explainable map from a plain-language question to one
capability of the catalog, and the answer allowed / approval required / not allowed.

How a question is matched (no model, no randomness; the same input always gives the same answer):

1. Normalise: lower-case, split on anything that is not a letter or digit, drop stop words,
   reduce plurals/verb endings (``invoices`` -> ``invoice``, ``sending`` -> ``send``), map
   synonyms to one canonical word (view/open/fetch/get/show -> read; pay/charge -> authorize;
   remove/erase -> delete; book/schedule/reschedule -> write; ...). Capability names,
   descriptions and examples from the grants are normalised the same way.
2. Score every capability in ``[0, 1]``: 0.35 when the question contains the capability's action,
   0.35 x the share of its resource words present, and 0.30 x the best word overlap with its
   description and examples.
3. Confidence is the best score, discounted when the runner-up is close (an ambiguous question
   is not a confident one) and capped below the threshold when the question names no action.

Fail closed: below ``CONFIDENCE_THRESHOLD`` the answer is never ``allowed``; it names the closest
candidates instead. A structured ``action`` (an exact capability name) skips matching.

The request body (:func:`parse_request`) has ``question`` or ``action`` and optionally
``context``; any other field is refused (a misspelt ``"actoin"`` must not silently turn into a
question-less request). ``context`` follows the AccessRequest rules (at most 16 plain-text
string values, bounded keys) so an agent can carry it on into an AccessRequest unchanged. It never
changes the answer, because capabilities are not conditional: it is recorded in the audit line
of the question, so a reviewer sees what the agent said it was about to do.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from agentauth.domain import approvals, capabilities, exchanging
from agentauth.domain.models import (
    AccessRequest,
    Agent,
    CapabilityGrant,
    EffectiveCapability,
)

CONFIDENCE_THRESHOLD = 0.5
AMBIGUITY_MARGIN = 0.15
UNIQUE_ACTION_RESOURCE = 0.6
VERB_CONFLICT = 0.75
MAX_QUESTION_CHARS = 2000

_WORD = re.compile(r"[a-z0-9]+")

_STOP_TEXT = """
    a an the and or of to for in on at by with from into about as is are was be been am do
    does did can could would should may might will shall i me my we our you your it its this that
    these those there their them they he she his her please want need like just some any all
    let us so if then than what which who whom whose when where how why to up out over under
    again also very too not no yes ok okay agent allowed permitted able possible go going
    try trying new"""
STOP_WORDS = frozenset(_STOP_TEXT.split())

SYNONYMS: dict[str, str] = {
    # read
    "view": "read",
    "open": "read",
    "fetch": "read",
    "get": "read",
    "show": "read",
    "see": "read",
    "look": "read",
    "display": "read",
    "retrieve": "read",
    "access": "read",
    "download": "read",
    "inspect": "read",
    "review": "read",
    "peek": "read",
    "check": "read",
    "summarize": "read",
    "summarise": "read",
    "browse": "read",
    "lookup": "read",
    "find": "read",
    "search": "read",
    "content": "read",
    # write
    "edit": "write",
    "update": "write",
    "modify": "write",
    "change": "write",
    "amend": "write",
    "rewrite": "write",
    "revise": "write",
    "append": "write",
    "save": "write",
    "rename": "write",
    "book": "write calendar",
    "reschedule": "write calendar",
    "move": "write",
    "postpone": "write calendar",
    "cancel": "write",
    "invite": "write calendar",
    "set": "write",
    # create
    "raise": "create",
    "submit": "create",
    "open up": "create",
    "make": "create",
    "add": "create",
    "start": "create",
    # delete
    "remove": "delete",
    "erase": "delete",
    "destroy": "delete",
    "drop": "delete",
    "purge": "delete",
    "wipe": "delete",
    "trash": "delete",
    "discard": "delete",
    "close": "delete",
    "terminate": "delete",
    "deactivate": "delete",
    # authorize
    "pay": "authorize",
    "authorise": "authorize",
    "transfer": "authorize",
    "wire": "authorize",
    "settle": "authorize",
    "payout": "authorize",
    "bill": "authorize",
    "purchase": "authorize",
    "buy": "authorize",
    # refund
    "reimburse": "refund",
    "chargeback": "refund",
    "repay": "refund",
    "reverse": "refund",
    # send
    "mail": "send",
    "forward": "send",
    "reply": "send",
    "respond": "send",
    "notify": "send",
    "message": "send",
    # query
    "sql": "query",
    "count": "query",
    "select": "query",
    "analyze": "query",
    "analyse": "query",
    "many": "query",
    "average": "query",
    "total": "query",
    "sum": "query",
    "statistic": "query",
    "metric": "query",
    # push
    "commit": "push",
    "merge": "push",
    "publish": "push",
    "ship": "push",
    # resources
    "doc": "document",
    "memo": "document",
    "page": "document",
    "wiki": "document",
    "guide": "document",
    "note": "document",
    "spec": "document",
    "paper": "document",
    "manual": "document",
    "handbook": "document",
    "policy": "document",
    "payment": "payments",
    "invoice": "payments",
    "vendor": "payments",
    "card": "payments",
    "supplier": "payments",
    "transaction": "payments",
    "money": "payments",
    "inbox": "email",
    "e-mail": "email",
    "emails": "email",
    "mailbox": "email",
    "meeting": "calendar",
    "event": "calendar",
    "appointment": "calendar",
    "standup": "calendar",
    "agenda": "calendar",
    "call": "calendar",
    "sync": "calendar",
    "ticket": "tickets",
    "bug": "tickets",
    "incident": "tickets",
    "case": "tickets",
    "repository": "repo",
    "branch": "repo",
    "git": "repo",
    "code": "repo",
    "github": "repo",
    "main": "repo",
    "patch": "repo",
    "db": "database",
    "table": "database",
    "analytics": "database",
    "warehouse": "database",
    "data": "database",
    "row": "database",
    "client": "customer",
    "account": "customer",
    "user": "customer",
}
# "file" is both a verb (file a ticket) and a noun (open the file); the verb wins only when the
# word starts the question, the noun otherwise (see ``normalise``).
_VERB_ONLY_AT_START: dict[str, tuple[str, str]] = {
    "file": ("create", "document"),
    "report": ("create", "document"),
    "log": ("create", "document"),
    "email": ("send email", "email"),
    "schedule": ("write calendar", "calendar"),
    "charge": ("authorize", "payments"),
    "issue": ("", "tickets"),
    "draft": ("write", "document"),
    "fix": ("write", "repo"),
}
ACTIONS = frozenset(
    {"read", "write", "create", "delete", "authorize", "refund", "send", "query", "push"}
)
"""Canonical action words: the verbs a question can carry."""
_QUESTION_WORDS = frozenset(
    {
        "what",
        "which",
        "when",
        "who",
        "where",
        "whose",
        "how",
        "am",
        "is",
        "are",
        "do",
        "does",
        "did",
    }
)
"""A question that starts with one of these and names no action asks about state: a read."""
_PHRASES = {
    "get rid of": "delete",
    "money back": "refund",
    "write back": "send",
    "how many": "query",
}


def _variants(word: str) -> list[str]:
    """``word`` and its plausible stems, most literal first."""
    found = [word]
    for suffix, replacement in (("ies", "y"), ("ing", ""), ("ed", ""), ("es", ""), ("s", "")):
        if len(word) > len(suffix) + 2 and word.endswith(suffix) and not word.endswith("ss"):
            stemmed = word[: -len(suffix)] + replacement
            found.append(stemmed)
            if suffix in ("ing", "ed") and len(stemmed) > 2 and stemmed[-1] == stemmed[-2]:
                found.append(stemmed[:-1])  # "shipped" -> "ship", "dropping" -> "drop"
            if suffix in ("ing", "ed"):
                found.append(stemmed + "e")  # "scheduled" -> "schedule"
    return found


def _canonical(word: str) -> str:
    variants = _variants(word)
    for variant in variants:
        if variant in SYNONYMS:
            return SYNONYMS[variant]
    for variant in variants:
        if variant in ACTIONS:
            return variant
    # no known form: the shortest plural/verb stem keeps "invoices" and "invoice" together
    return variants[1] if len(variants) > 1 and word.endswith("s") else word


def normalise(text: str) -> list[str]:
    """Canonical content words of ``text`` (order kept, duplicates kept)."""
    lowered = text.lower()[:MAX_QUESTION_CHARS]
    for phrase, canonical in _PHRASES.items():
        lowered = lowered.replace(phrase, f" {canonical} ")
    raw_words = _WORD.findall(lowered)
    words: list[str] = []
    for raw in raw_words:
        if raw in STOP_WORDS or len(raw) < 2:
            continue
        ambiguous = next((v for v in _variants(raw) if v in _VERB_ONLY_AT_START), None)
        if ambiguous is not None:
            verb, noun = _VERB_ONLY_AT_START[ambiguous]
            words.extend((noun if words else verb).split())
            continue
        canonical = _canonical(raw)
        if canonical in STOP_WORDS:
            continue
        words.extend(canonical.split())
    # "what meetings do I have today" asks to read: a wh-question without a verb is a read
    if raw_words and raw_words[0] in _QUESTION_WORDS and not ACTIONS.intersection(words):
        words.append("read")
    return words


@dataclass(frozen=True, slots=True)
class CatalogEntry:
    """One capability as the grants describe it."""

    name: str
    description: str = ""
    examples: tuple[str, ...] = ()
    resource_words: frozenset[str] = field(default=frozenset(), compare=False)
    action_word: str = field(default="", compare=False)
    action_words: frozenset[str] = field(default=frozenset(), compare=False)
    texts: tuple[frozenset[str], ...] = field(default=(), compare=False)

    @classmethod
    def build(
        cls, *, name: str, description: str = "", examples: Sequence[str] = ()
    ) -> CatalogEntry:
        parts = [normalise(p.replace("_", " ").replace("-", " ")) for p in name.split(".")]
        resource = frozenset(w for p in parts[:-1] for w in p)
        action = parts[-1][-1] if parts[-1] else name.rsplit(".", 1)[-1]
        texts = tuple(frozenset(normalise(t)) for t in (description, *examples) if t.strip())
        described = ACTIONS.intersection(normalise(description))
        return cls(
            name=name,
            description=description,
            examples=tuple(examples),
            resource_words=resource,
            action_word=action,
            action_words=frozenset({action, *described}),
            texts=texts,
        )


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
    return [
        CatalogEntry.build(name=name, description=desc, examples=ex)
        for name, (desc, ex) in sorted(merged.items())
    ]


@dataclass(frozen=True, slots=True)
class Candidate:
    capability: str
    score: float


@dataclass(frozen=True, slots=True)
class Match:
    capability: str | None
    confidence: float
    candidates: tuple[Candidate, ...]
    explanation: str


def score(words: Sequence[str], entry: CatalogEntry, *, unique_action: bool = False) -> float:
    """The weighted score of the module docstring. ``unique_action``: no other capability of the
    catalog has this action, so the verb alone names the capability (its resource share then
    counts at least ``UNIQUE_ACTION_RESOURCE``). A question whose verbs are all foreign to the
    capability is discounted by ``VERB_CONFLICT``."""
    question = set(words)
    if not question:
        return 0.0
    if entry.action_word in question:
        action = 1.0
    elif entry.action_words & question:
        action = 0.8
    else:
        action = 0.0
    resource = (
        len(entry.resource_words & question) / len(entry.resource_words)
        if entry.resource_words
        else 0.0
    )
    if action == 1.0 and unique_action:
        resource = max(resource, UNIQUE_ACTION_RESOURCE)
    overlap = max(
        (len(question & text) / len(question | text) for text in entry.texts if text),
        default=0.0,
    )
    total = 0.35 * action + 0.35 * resource + 0.30 * min(1.0, overlap * 1.5)
    verbs = ACTIONS & question
    if verbs and not verbs & entry.action_words:
        total *= VERB_CONFLICT
    return round(total, 4)


def match(question: str, catalog: Sequence[CatalogEntry]) -> Match:
    """The best capability for ``question`` with a confidence; ``capability`` is None below the
    threshold."""
    words = normalise(question)
    action_counts = Counter(e.action_word for e in catalog)
    ranked = sorted(
        (
            Candidate(e.name, score(words, e, unique_action=action_counts[e.action_word] == 1))
            for e in catalog
        ),
        key=lambda c: (-c.score, c.capability),
    )
    top = tuple(c for c in ranked[:3] if c.score > 0)
    if not top:
        return Match(None, 0.0, (), "no capability shares words with the question")
    best = top[0]
    if not ACTIONS.intersection(words):
        # "documents": which action? Without a verb no capability can be named confidently.
        names = ", ".join(c.capability for c in top)
        confidence = round(min(best.score, CONFIDENCE_THRESHOLD) * 0.9, 3)
        return Match(None, confidence, top, f"no confident match; closest: {names}")
    runner_up = top[1].score if len(top) > 1 else 0.0
    margin = best.score - runner_up
    # a tie is never confident (it would be decided by alphabetical order): half the score at
    # margin 0, rising linearly to the full score at AMBIGUITY_MARGIN
    factor = min(1.0, 0.5 + 0.5 * margin / AMBIGUITY_MARGIN)
    confidence = best.score * factor
    confidence = round(min(1.0, confidence), 3)
    if confidence < CONFIDENCE_THRESHOLD:
        names = ", ".join(c.capability for c in top)
        return Match(None, confidence, top, f"no confident match; closest: {names}")
    return Match(best.capability, confidence, top, f"matched {best.capability}")


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
        return AskRequest(question=question, action=None, context=context)
    raise InvalidAsk('give either "question" or "action"')


@dataclass(frozen=True, slots=True)
class ClauseAnswer:
    """What one clause of a question was matched to."""

    capability: str | None


@dataclass(frozen=True, slots=True)
class AskAnswer:
    allowed: bool
    capability: str | None
    approval_required: bool
    confidence: float
    reason: str
    candidates: tuple[Candidate, ...] = ()

    @property
    def clauses(self) -> tuple[ClauseAnswer, ...]:
        return (ClauseAnswer(self.capability),)


def decide(
    *,
    capability: str | None,
    confidence: float,
    candidates: tuple[Candidate, ...],
    explanation: str,
    agent_label: str,
    held: Sequence[EffectiveCapability],
    requests: Sequence[AccessRequest],
    now: datetime,
) -> AskAnswer:
    """Allowed (held, automatic or approved), approval required (held, JIT) or not allowed."""
    if capability is None or confidence < CONFIDENCE_THRESHOLD:
        return AskAnswer(False, None, False, confidence, explanation, candidates)
    entry = capabilities.find(held, capability)
    if entry is None:
        return AskAnswer(
            False,
            capability,
            False,
            confidence,
            f"{capability} is not granted to agent {agent_label}",
            candidates,
        )
    if entry.approval == "Automatic":
        return AskAnswer(
            True,
            capability,
            False,
            confidence,
            f"{capability} is granted by {entry.grant}",
            candidates,
        )
    approved = exchanging.approved_until(capability, requests, now=now)
    if approved is not None:
        until = approved[0].isoformat()
        return AskAnswer(
            True,
            capability,
            False,
            confidence,
            f"{capability} is approved by AccessRequest {approved[1]} until {until}",
            candidates,
        )
    return AskAnswer(
        False,
        capability,
        True,
        confidence,
        f"{capability} requires approval: file an AccessRequest (grant {entry.grant})",
        candidates,
    )


def answer_question(
    question: str | None,
    *,
    agent: Agent,
    snapshot: exchanging.Snapshot,
    now: datetime,
    action: str | None = None,
) -> AskAnswer:
    """The answer of ``/v1/ask`` for ``agent``: to the structured ``action`` when given, else to
    the plain-language ``question``."""
    if action is not None:
        capability: str | None = action
        confidence, explanation = 1.0, f"asked for {action}"
        candidates: tuple[Candidate, ...] = ()
    else:
        assert question is not None  # noqa: S101 - parse_request gives one of the two
        catalog = catalog_from_grants(
            g for g in snapshot.grants if g.metadata.namespace == agent.metadata.namespace
        )
        matched = match(question, catalog)
        capability, confidence = matched.capability, matched.confidence
        candidates, explanation = matched.candidates, matched.explanation
    return decide(
        capability=capability,
        confidence=confidence,
        candidates=candidates,
        explanation=explanation,
        agent_label=exchanging.agent_label(agent),
        held=snapshot.held(agent, now=now),
        requests=snapshot.access_requests_of(agent),
        now=now,
    )
