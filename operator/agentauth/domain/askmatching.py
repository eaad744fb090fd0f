"""The Ask matcher: from a plain-language question to the agent's own capabilities, clause by
clause, failing closed.

Guarantees (no model, no randomness: the same question and catalog always give the same result):

- **The vocabulary is the agent's own capabilities.** A capability ``<resource>.<action>``
  contributes its action verb, the verbs and nouns of its description and examples, its resource
  nouns with their WordNet synonyms, and, when its action is a support verb ("issue", "generate",
  "authorize"), the verbs WordNet derives from its resource (``refunds.issue``: "refund";
  ``summaries.generate``: "summarize"; ``payments.authorize``: "pay"). Words are compared as
  WordNet lemmas (:mod:`agentauth.domain.asklexicon`), so inflections ("restarting", "escalated")
  and WordNet synonyms ("okay" for "approve", "give back" for "refund") match.
- **Every clause counts.** The question is split into clauses ("look up the order and give them a
  voucher" is two); each clause that asks for an action must be covered by a capability, and a
  clause that only gives context ("so the auditors don't see them") may not ask to destroy,
  transfer or grant anything.
- **Fail closed.** A clause is covered only when its verb names the capability's action and its
  object is the capability's resource (or what its description says it acts on), with nothing
  foreign in the object: an object that is another capability's resource, or a credential or
  privilege ("permissions", "password", "admin"), is foreign. A verb that destroys, transfers data
  out or changes privileges (WordNet-derived classes) never matches a capability whose action is
  not of the same class, and a capability whose action only reads matches only verbs that read.
  Otherwise the clause is not covered, with the closest capabilities as suggestions.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from agentauth.domain import asklexicon


def _words(text: str) -> frozenset[str]:
    return frozenset(text.split())


# -- closed-class English: the words that frame a request rather than say what it is ---------

_FRAMING = _words(
    """please kindly just now also then ok so hey hi can could may might would will
    shall should must i we you me us am is are be do does did have has to need needs want
    wants like allowed able permitted going gonna wanna about ahead go it possible really
    quickly quick actually first next finally right away again yes sure if whether fine
    alright afterwards afterward later soon immediately subsequently thereafter meanwhile"""
)
"""Words stripped from the start of a clause: "can I", "I need to", "please go ahead and"."""
_CONDITIONAL_FRAMING = frozenset(["do", "does", "did", "have", "has"])
"""Framing only before a pronoun or more framing ("do I", "have to"), so that "do a restart" is
a request."""
_WH = _words("""what which where who whom whose when how""")
_HOW_INFO = frozenset(["many", "much", "long", "often"])
_SUBORDINATORS = _words(
    """so because since while when whenever if unless once before after until that which who
    whom where whereas though although"""
)
_COORDINATORS = frozenset(["and", "then", "also", "plus", "but", "or"])
_PREPOSITIONS = _words(
    """for about with from in on at to into onto by via during since after before until
    because within without across against toward towards per like than regarding
    concerning under below above beneath beside besides between among amongst"""
)
_DETERMINERS = _words(
    """a an the this that these those my our your their his her its some any all every each
    no other another such what which whose both either neither few more most less least
    much many several"""
)
_PRONOUNS = _words(
    """i me my mine we us our ours you your yours he him his she her hers it its they them
    their theirs this that these those who whom someone somebody something anyone anybody
    anything everyone everybody everything everyone nobody nothing one ones myself
    yourself ourselves themselves itself there here"""
)
_AUXILIARIES = _words(
    """am is are was were be been being do does did done have has had having can could may
    might must shall should will would not no"""
)
_PARTICLES = ("up", "down", "off", "out", "back", "over", "in", "on", "away", "through")
_FUNCTION = (
    (_FRAMING | _WH | _SUBORDINATORS | _COORDINATORS | _PREPOSITIONS | _DETERMINERS | _PRONOUNS)
    | _AUXILIARIES
    | frozenset(("of", "as", "than", "too", "very", "not", "no", "s", "t"))
)

SUPPORT_VERBS = _words(
    """issue create generate make produce send give provide authorize authorise process
    execute perform do run initiate start trigger submit file extend deliver place raise
    conduct carry_out"""
)
"""Verbs that say "carry out the act named by the noun": a capability ``refunds.issue`` is done
by "refund", ``payments.authorize`` by "pay". Verbs that only prepare the thing ("draft",
"write", "prepare") are not among them: "post" is not what ``posts.draft`` does."""
LIGHT_VERBS = _words("""do make perform run process carry_out take have give get conduct""")
"""Verbs that lend their clause the action of a derived noun: "do a restart", "run a query"."""

SENSITIVE_NOUNS = _words(
    """admin administrator root superuser sudo permission privilege right role rolebinding
    access password passphrase credential key token secret certificate quota limit
    approver owner ownership policy mfa login"""
)
"""Objects that change who may do what: foreign to any capability that does not name them."""

_TOKEN = re.compile(r"[^\W_]+(?:['\u2019][^\W_]+)?(?:[-_/.@:+#][^\W_]+)*|[.;!?,]")
_CONTRACTIONS = (
    ("n't", " not"),
    ("'m", " am"),
    ("'re", " are"),
    ("'d", " would"),
    ("'ll", " will"),
    ("'ve", " have"),
    ("'s", ""),
    ("s'", "s"),
)

_PRONOUN_IS = re.compile(r"\b(it|that|there|he|she|what|who|where|here)'s\b", re.IGNORECASE)

DIRECT_MATCH = 0.85
"""The least verb similarity that names a capability's action without a resource match."""
VERB_MATCH = 0.7
"""The least verb similarity that counts at all."""
READ_MATCH = 0.8
"""The verb score of a reading verb for a reading capability ("show" for ``logs.read``)."""
AMBIGUITY_MARGIN = 0.05
DANGEROUS = ("destroy", "transfer", "privilege")


INFERENCES = (
    "slang",
    "same-kind verb",
    "related verb",
    "resource-verb synonym",
    "light verb",
    "re- prefix",
    "related noun",
    "typo",
    "pronoun",
)
"""The loose inferences a match may depend on; each alone makes the clause "not covered" with
the capability as the suggestion (the sure path is the structured ``action``):

- ``slang``: the asked verb is read through :data:`asklexicon.EVERYDAY_SENSES`;
- ``same-kind verb``: both verbs are ways to create or start (:data:`ACT_KINDS`);
- ``related verb``: WordNet makes the asked verb a more specific or more general way of the
  capability's verb, not a synonym of it (verb similarity below :data:`DIRECT_MATCH`);
- ``resource-verb synonym``: a synonym of the verb derived from the resource stands for the
  object ("give back" for refunds.issue; "refund" itself is direct);
- ``light verb``: "do a restart": the action is read from a noun;
- ``re- prefix``: "resend" read as "send" again;
- ``related noun``: the object is only a noun of a related act ("booking"), from the same verb
  as the resource, or a more general word for it, never the resource, a synonym of it, or what
  its description acts on;
- ``typo``: a word was corrected towards the catalog's vocabulary;
- ``pronoun``: the object is a pronoun read as the object of the clause before.
"""


@dataclass(frozen=True, slots=True)
class Strictness:
    """The matcher's fail-closed rules, as switches. :data:`STRICT` is what the service uses;
    looser settings exist only to measure what each rule costs in accuracy and buys in safety
    (``bench/ask_tradeoff.py``): no caller of the service can choose them."""

    object_head: bool = True
    """The head of the first object of a changing clause must be what the capability acts on."""
    ambiguity_margin: float = AMBIGUITY_MARGIN
    """Two capabilities scoring within this margin make the clause ambiguous (not covered)."""
    verb_required: bool = True
    """The verb must name the capability's action; without this rule the object decides."""
    object_required: bool = True
    """Some object evidence is needed (or a verb derived from the resource, or only names)."""
    foreign: bool = True
    """An object that is another capability's resource, or a credential, refuses the match."""
    classes: bool = True
    """Destroying, transferring and privilege-changing verbs match only their own class, and a
    reading capability only reading verbs."""
    hidden_requests: bool = True
    """A context clause that carries an action ("before approving the discount") is matched."""
    inferences: frozenset[str] = frozenset(INFERENCES) - {"light verb"}
    """The loose inferences that keep a match from answering "allowed" (fewer only to measure
    what each contributes). A light verb is not among them: "do a restart", "make a payment"
    ask for the verb WordNet derives the noun from, which shares the noun's stem, so the light
    verb adds no meaning, and the derived verb meets every rule (classes, object, foreign) that
    the verb itself would."""


STRICT = Strictness()
LOOSENING = (
    ("strict (shipped)", STRICT),
    ("- object head", Strictness(object_head=False)),
    ("- ambiguity margin", Strictness(object_head=False, ambiguity_margin=0.0)),
    (
        "- verb match",
        Strictness(object_head=False, ambiguity_margin=0.0, verb_required=False),
    ),
    (
        "- object required",
        Strictness(
            object_head=False, ambiguity_margin=0.0, verb_required=False, object_required=False
        ),
    ),
    (
        "- foreign objects",
        Strictness(
            object_head=False,
            ambiguity_margin=0.0,
            verb_required=False,
            object_required=False,
            foreign=False,
        ),
    ),
    (
        "- verb classes",
        Strictness(
            object_head=False,
            ambiguity_margin=0.0,
            verb_required=False,
            object_required=False,
            foreign=False,
            classes=False,
        ),
    ),
)
"""Cumulative loosenings of :data:`STRICT`, from strict to loosest, for the trade-off curve."""

_TITLES = _words("mr mrs ms dr prof")
"""A word after one of these is a name ("Mr. Green", "Dr. Weber")."""

# -- tokens -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Token:
    text: str
    kind: str  # word | id | name | foreign | punct
    verbs: tuple[str, ...] = ()
    nouns: tuple[str, ...] = ()


@functools.lru_cache(maxsize=32768)
def _word(text: str) -> Token:
    if not text.isascii():
        return Token(text, "foreign")
    if text in (".", ";", "!", "?", ","):
        return Token(text, "punct")
    if any(ch.isdigit() for ch in text) or any(ch in "_/.@:+#" for ch in text):
        return Token(text, "id")
    verbs = asklexicon.verb_lemmas(text)
    nouns = asklexicon.noun_lemmas(text)
    if not nouns and not verbs and text.endswith("s") and len(text) > 3:
        nouns = (text[:-1],)  # "configmaps" -> "configmap": plural of a word WordNet lacks
    return Token(text, "word", verbs, nouns)


def tokenize(text: str) -> list[Token]:
    """Lower-cased tokens of ``text``; hyphenated English words are split into their words
    ("high-latency") or joined ("check-up"), other hyphenated or dotted strings are identifiers
    ("INV-2231"). A capitalised word inside a sentence ("cancel Tom Baker's appointment"), or the
    word after a title ("Mr. Green"), is a name, unless the text is title-cased (its first word
    and all its words but function words capitalised: capitals then say nothing about names)."""
    expanded = text.replace("\u2019", "'")
    # "it's", "that's", "what's": "is" (elsewhere "'s" is a possessive, dropped below)
    expanded = _PRONOUN_IS.sub(r"\1 is", expanded)
    for contraction, expansion in _CONTRACTIONS:
        expanded = re.sub(re.escape(contraction), expansion, expanded, flags=re.IGNORECASE)
    raws = _TOKEN.findall(expanded)
    alphabetic = [r for r in raws if r[:1].isalpha()]
    # a title-cased question ("Restart The Checkout Deployment") capitalises its first word and
    # every word that is not a function word: then capitals say nothing about names; a
    # sentence naming several people ("book Anna Lopez in with Dr. Weber") is not one
    names_allowed = not (
        alphabetic
        and alphabetic[0][:1].isupper()
        and all(r[:1].isupper() for r in alphabetic if r.lower() not in _FUNCTION)
    )
    tokens: list[Token] = []
    for index, raw in enumerate(raws):
        lowered = raw.lower()
        previous = raws[index - 1].lower() if index else "."
        starts_sentence = previous in (".", "!", "?", ";", ":") or index == 0
        if names_allowed and lowered not in _FUNCTION and raw.isalpha() and raw.isascii():
            after_title = previous in _TITLES or (
                previous == "." and index > 1 and raws[index - 2].lower() in _TITLES
            )
            if after_title or (
                raw[:1].isupper() and not raw.isupper() and not starts_sentence and lowered != "i"
            ):
                tokens.append(Token(lowered, "name"))
                continue
        if "-" in lowered and lowered.replace("-", "").isalpha() and lowered.isascii():
            whole = _word(lowered)
            joined = _word(lowered.replace("-", ""))
            parts = [_word(part) for part in lowered.split("-") if part]
            if whole.verbs or (whole.nouns and not lowered.endswith("s")):
                tokens.append(whole)
            elif joined.verbs or joined.nouns:
                tokens.append(joined)  # "check-up" -> "checkup"
            elif all(part.verbs or part.nouns or part.text in _FUNCTION for part in parts):
                tokens.extend(parts)  # "high-latency", "help-center"
            else:
                tokens.append(Token(lowered, "name"))  # "billing-api", "us-east"
            continue
        tokens.append(_word(lowered))
    return tokens


def looks_english(tokens: Sequence[Token]) -> bool:
    """At least half the words are English words WordNet or the closed-class lists know (names
    and a typo aside)."""
    words = [t for t in tokens if t.kind in ("word", "foreign")]  # names say nothing
    if not words:
        return False
    known = sum(
        1
        for t in words
        if t.kind == "word" and (t.text in _FUNCTION or (len(t.text) > 2 and (t.verbs or t.nouns)))
    )  # WordNet's two-letter nouns are abbreviations ("de", "el"), not evidence of English
    return known * 2 >= len(words)


# -- clauses ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Clause:
    """One clause of a question: ``request`` when it asks for something (an action verb after the
    framing, or a question for information), else ``context``."""

    tokens: tuple[Token, ...]
    kind: str  # request | context
    verb: Token | None = None
    particle: str | None = None
    info: bool = False
    noun_request: bool = False
    after_verb: tuple[Token, ...] = ()
    inherited: tuple[Token, ...] = ()
    """The object of the clause before, when this one's is a pronoun: evidence only (what "it"
    stands for was checked in its own clause)."""

    @property
    def text(self) -> str:
        return " ".join(t.text for t in self.tokens)


def _is_base_verb(token: Token) -> bool:
    return token.kind == "word" and token.text in token.verbs


def _could_start_request(token: Token) -> bool:
    """A clause starting with this word asks for an action (imperative or gerund)."""
    if token.kind != "word" or (token.text in _FUNCTION and token.text not in LIGHT_VERBS):
        return False
    if not token.verbs:
        return False
    return token.text in token.verbs or token.text.endswith("ing")


def _strip_framing(tokens: Sequence[Token]) -> tuple[list[Token], bool]:
    """The clause without its leading framing, and whether that framing asked for a thing
    ("I need a report", "I'd like the invoices")."""
    rest = list(tokens)
    wanted = False
    while rest:
        head = rest[0].text
        if head in ("is", "are") and len(rest) > 1 and rest[1].text == "there":
            break  # "is there an article about ...": a question for information
        if head in ("ok", "okay") and len(rest) > 1 and rest[1].text in _DETERMINERS:
            rest[0] = _word("okay")  # "OK the taxi expense": the verb "okay" (approve)
            break
        if head == "how" and len(rest) > 1 and rest[1].text in _HOW_INFO:
            break
        if head == "let" and len(rest) > 1 and rest[1].text in ("me", "us"):
            rest = rest[2:]
            continue
        if head in _CONDITIONAL_FRAMING and not (
            len(rest) > 1 and (rest[1].text in _PRONOUNS or rest[1].text in _FRAMING)
        ):
            break
        if head in _FRAMING or head == "how" or (head == "to" and len(rest) > 1):
            if head in ("need", "needs", "want", "wants", "like"):
                wanted = True
            rest = rest[1:]
            continue
        if rest[0].kind == "punct":
            rest = rest[1:]
            continue
        break
    return rest, wanted


def _split(tokens: Sequence[Token]) -> list[tuple[str, list[Token]]]:
    """Pieces of a sentence with how each begins: ``main`` (first, after a coordinator or a
    comma) or ``sub`` (after a subordinator or an infinitive of purpose)."""
    pieces: list[tuple[str, list[Token]]] = [("main", [])]
    for index, token in enumerate(tokens):
        current = pieces[-1][1]
        following = tokens[index + 1] if index + 1 < len(tokens) else None
        if token.text == "," or token.text in _COORDINATORS:
            pieces.append(("main", []))
            continue
        if token.text in _SUBORDINATORS and current and not _starts_wh(current, token):
            pieces.append(("sub", []))
            continue
        after = tokens[index + 2] if index + 2 < len(tokens) else None
        if (
            token.text == "to"
            and current
            and following is not None
            and _is_base_verb(following)
            # "to refund the order": a verb that is also a noun, followed by its own object,
            # is an infinitive all the same (its action must be covered, see hidden_request)
            and (
                not following.nouns
                or (after is not None and (after.text in _DETERMINERS or after.text in _ANAPHORA))
            )
            and not _framing_only(current)
        ):
            pieces.append(("sub", []))
            continue
        current.append(token)
    return [(kind, piece) for kind, piece in pieces if piece]


def _starts_wh(current: Sequence[Token], token: Token) -> bool:
    return token.text in _WH and all(t.text in _FRAMING for t in current)


def _framing_only(tokens: Sequence[Token]) -> bool:
    return all(t.text in _FRAMING for t in tokens)


def _is_statement(piece: Sequence[Token]) -> bool:
    """A subject and a finite verb ("the customer confirmed it is fixed"): something said about
    the world, not more of the object of the previous clause."""
    return any(
        t.kind == "word"
        and t.verbs
        and t.text not in _FUNCTION
        and (t.text.endswith("ed") or not t.nouns)
        for t in piece[1:]
    ) or any(t.text in ("is", "are", "was", "were") for t in piece)


def _verb_list(pieces: list[tuple[str, list[Token]]]) -> list[tuple[str, list[Token]]]:
    """Pieces of a description: the single verbs of a leading verb list, then each verb with its
    object; a piece that does not start with a verb and a determiner ("and page the incident
    commander") continues the object before it."""
    result: list[tuple[str, list[Token]]] = []
    in_object = False
    for kind, piece in pieces:
        verb_with_object = (
            len(piece) > 1
            and _could_start_request(piece[0])
            and piece[1].text in _DETERMINERS | _PRONOUNS
        )
        if in_object and not verb_with_object:
            # "application, resume and interview notes": more of the same object
            previous_kind, previous = result[-1]
            result[-1] = (previous_kind, previous + piece)
            continue
        result.append((kind, piece))
        in_object = len(piece) > 1
    return result


def _unknown_verb_shape(body: Sequence[Token]) -> bool:
    """A word the lexicon does not know followed by an object ("backfill it", "reroute the
    truck"): the shape of a verb phrase whose verb WordNet lacks (a capability's own action
    often is one). It is a clause of its own, so its action must be answered: merged into the
    clause before, it would be left unasked and the answer could be that clause's alone."""
    head = body[0]
    return (
        len(body) > 1
        and head.kind == "word"
        and not head.verbs
        and not head.nouns
        and head.text not in _FUNCTION
        and (body[1].text in _DETERMINERS or body[1].text in _PRONOUNS)
    )


def _merge(pieces: list[tuple[str, list[Token]]]) -> list[tuple[str, list[Token]]]:
    """A piece after "and" or a comma that does not start with a verb continues the previous
    one ("invoices and receipts"), unless it starts its own question."""
    merged: list[tuple[str, list[Token]]] = []
    for kind, piece in pieces:
        body, _ = _strip_framing(piece)
        starts = bool(body) and (
            _could_start_request(body[0]) or body[0].text in _WH or _unknown_verb_shape(body)
        )
        if merged and kind == "main" and not starts and not _framing_only(piece):
            previous_kind, previous = merged[-1]
            if previous_kind == "main" and not _is_statement(piece):
                merged[-1] = (previous_kind, previous + piece)
                continue
            merged.append(("context", piece))
            continue
        merged.append((kind, piece))
    return merged


def clauses(tokens: Sequence[Token], *, lists: bool = False) -> list[Clause]:
    """The clauses of a tokenized question. With ``lists`` (a capability's description), a
    comma or "and" splits only a leading list of verbs ("Create, move or cancel meetings"): once
    the object starts, "application, resume and interview notes" is one object."""
    sentences: list[list[Token]] = [[]]
    for index, token in enumerate(tokens):
        previous = tokens[index - 1].text if index else ""
        if token.text == "." and previous in _ABBREVIATIONS:
            continue  # "Mr. Chen", "Dr. Weber": not the end of a sentence
        if token.text in (".", ";", "!", "?"):
            sentences.append([])
        else:
            sentences[-1].append(token)
    found: list[Clause] = []
    for sentence in sentences:
        if not sentence:
            continue
        pieces = _merge(_split(sentence))
        if lists:
            pieces = _verb_list(pieces)
        for kind, piece in pieces:
            found.append(_clause(kind, piece))
    return found


_ABBREVIATIONS = _words("mr mrs ms dr prof st jr sr vs etc eg ie approx no nr inc ltd co corp")
_TOOL_VERBS = frozenset(("use", "call", "invoke", "run"))
_TOOL_NOUNS = frozenset(("tool", "function", "action", "command"))


def _tool_clause(piece: list[Token], body: list[Token]) -> list[Token] | None:
    """ "use the tool read_document": the tool's name is the action asked about, so the clause is
    read as the words of the name ("read document")."""
    if not body or body[0].text not in _TOOL_VERBS:
        return None
    rest = body[1:5]
    if not any(t.text in _TOOL_NOUNS for t in rest):
        return None
    for token in rest:
        parts = re.split(r"[_\-]", token.text)
        if token.kind == "id" and len(parts) > 1 and all(p.isalpha() for p in parts):
            return [_word(p) for p in parts if p]
    return None


_TELLING = _words("tell inform notify update")


def _asks_the_asker(body: Sequence[Token]) -> bool:
    """ "tell me the total", "let me know", "update us": addressed to whoever asks; what is
    told comes from the other clauses, which are matched on their own."""
    return len(body) >= 2 and body[0].text in _TELLING and body[1].text in ("me", "us")


_SUBJECTS = _words("it they he she this that there")


def _progressive_statement(piece: Sequence[Token]) -> bool:
    """ "it's overspending", "they are failing": a third-person subject pronoun, a form of "be"
    and a verb in -ing says what is happening and asks for nothing ("I'm closing ticket 2210"
    says what the asker is about to do: a request)."""
    return (
        len(piece) >= 3
        and piece[0].text in _SUBJECTS
        and piece[1].text in ("is", "are", "was", "were", "am")
        and piece[2].text.endswith("ing")
        and bool(piece[2].verbs)
    )


def _clause(kind: str, piece: list[Token]) -> Clause:
    if _progressive_statement(piece):
        return Clause(tuple(piece), "context", after_verb=tuple(piece[2:]))
    body, wanted = _strip_framing(piece)
    if _asks_the_asker(body) or (
        piece and piece[0].text == "let" and [t.text for t in body] in (["know"], ["know", "it"])
    ):
        return Clause(tuple(piece), "context", after_verb=tuple(body))
    named = _tool_clause(piece, body) if kind == "main" else None
    if named is not None:
        return _clause(kind, named)
    tokens = tuple(piece)
    if kind != "main" or not body:
        return Clause(tokens, "context", after_verb=tuple(body))
    head = body[0]
    if head.text in _WH or (
        head.text in ("is", "are") and len(body) > 1 and body[1].text == "there"
    ):
        return Clause(tokens, "request", info=True, after_verb=tuple(body[1:]))
    if _could_start_request(head) or (head.kind == "word" and head.verbs and not head.nouns):
        particle = _particle(head, body[1:])
        return Clause(tokens, "request", verb=head, particle=particle, after_verb=tuple(body[1:]))
    if wanted and (head.text in _DETERMINERS or (head.nouns and not head.verbs)):
        return Clause(tokens, "request", noun_request=True, after_verb=tuple(body))
    if head.kind == "word" and not head.verbs and head.text not in _FUNCTION and len(body) > 1:
        # a first word where a verb belongs that WordNet knows only as a noun ("rollback"), or
        # not at all (a typo, a name, another language): the matcher compares its spelling
        return Clause(tokens, "request", verb=head, after_verb=tuple(body[1:]))
    if wanted and (head.text in _DETERMINERS or head.nouns):
        return Clause(tokens, "request", noun_request=True, after_verb=tuple(body))
    # "the checkout pods need restarting": a subject, then need(s) + gerund
    for index, token in enumerate(body[:-1]):
        if token.text in ("need", "needs") and body[index + 1].text.endswith("ing"):
            verb = body[index + 1]
            if verb.verbs:
                rest = tuple(body[:index]) + tuple(body[index + 2 :])
                return Clause(tokens, "request", verb=verb, after_verb=rest)
    return Clause(tokens, "context", after_verb=tuple(body))


def _particle(verb: Token, rest: Sequence[Token]) -> str | None:
    """A particle that may make a phrasal verb with this verb ("roll ... back", "look up"); the
    matcher reads the clause both with and without it."""
    if not verb.verbs:
        return None
    for index, token in enumerate(rest[:7]):
        if token.kind == "punct":
            break
        if token.text not in _PARTICLES:
            continue
        following = rest[index + 1] if index + 1 < len(rest) else None
        preceding = rest[index - 1] if index else None
        if preceding is not None and (preceding.kind == "id" or preceding.text == "percent"):
            continue  # "10% off", "20 EUR off": an amount, not a phrasal verb
        # right after the verb ("look up the order"), or closing the object ("hand the account
        # over to Priya"); not a preposition opening a phrase ("sign the contract on our side")
        if index == 0 or following is None or following.text in _PREPOSITIONS | {"of"}:
            return token.text
    return None


# -- the catalog ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CatalogEntry:
    """One capability as the matcher sees it."""

    name: str
    description: str = ""
    examples: tuple[str, ...] = ()
    actions: dict[str, float] = field(default_factory=dict, compare=False)
    """Verb lemma -> weight: the name's action 1.0, support-derived verbs 0.95, description and
    example verbs 0.9."""
    strong_actions: frozenset[str] = field(default=frozenset(), compare=False)
    """The name's action and the verbs derived from its resource: these alone name it."""
    resource: frozenset[str] = field(default=frozenset(), compare=False)
    synonyms: frozenset[str] = field(default=frozenset(), compare=False)
    described: frozenset[str] = field(default=frozenset(), compare=False)
    """Nouns of what the description's and examples' verbs act on."""
    general: frozenset[str] = field(default=frozenset(), compare=False)
    """The nearest kind of each resource and described noun ("agreement" for "contract")."""
    mentioned: frozenset[str] = field(default=frozenset(), compare=False)
    """Other nouns of the description and examples ("for a service"): support, not evidence."""
    action_class: str | None = field(default=None, compare=False)
    person_resource: bool = field(default=False, compare=False)
    act_nouns: frozenset[str] = field(default=frozenset(), compare=False)
    """Nouns WordNet derives from its name's action ("booking" from ``book``): what capabilities
    on the same resource may call the resource by ("drop the booking" for appointments.cancel)."""

    @property
    def reads(self) -> bool:
        return self.action_class == "read"

    @property
    def nouns(self) -> frozenset[str]:
        return _all_nouns(self)

    @classmethod
    def build(
        cls, *, name: str, description: str = "", examples: Sequence[str] = ()
    ) -> CatalogEntry:
        return _build_entry(name, description, tuple(examples))


@functools.lru_cache(maxsize=4096)
def _all_nouns(entry: CatalogEntry) -> frozenset[str]:
    return entry.resource | entry.synonyms | entry.described | entry.mentioned


def _split_compound(word: str, known: Iterable[str]) -> list[str]:
    """``rollback`` -> ``roll_back``; ``backgroundchecks`` -> ``background_check``."""
    for index in range(3, len(word) - 1):
        left, right = word[:index], word[index:]
        if right in _PARTICLES and asklexicon.is_verb(left):
            return [f"{left}_{right}"]
        rights = asklexicon.noun_lemmas(right)
        if asklexicon.noun_lemmas(left) and rights and len(left) > 3 and len(right) > 3:
            return [f"{left}_{rights[0]}"]
    del known
    return []


def _noun_forms(token: Token) -> tuple[str, ...]:
    return token.nouns or ((token.text,) if token.kind == "word" else ())


def _content_nouns(tokens: Sequence[Token], *, concatenated: bool = True) -> list[str]:
    """Noun lemmas among ``tokens``, with the WordNet compounds of two adjacent words
    ("credit_card") and, when ``concatenated``, two adjacent words written as one ("config map"
    -> "configmap", to meet a resource named ``configmaps``)."""
    found: list[str] = []
    words = [
        t
        for t in tokens
        if t.kind == "word" and t.text not in _FUNCTION and t.text not in _PARTICLES
    ]
    for index, token in enumerate(words):
        found.extend(_noun_forms(token))
        if index + 1 < len(words):
            for second in _noun_forms(words[index + 1]):
                if asklexicon.is_noun(f"{token.text}_{second}"):
                    found.append(f"{token.text}_{second}")
                if concatenated:
                    found.append(f"{token.text}{second}")
    return found


def _phrase_verbs(text: str) -> tuple[list[str], list[str], list[str]]:
    """The verbs of a description or example, read as one or more imperative clauses ("Create,
    move or cancel meetings"), the nouns of what they act on, and the other nouns."""
    verbs: list[str] = []
    objects: list[str] = []
    others: list[str] = []
    for clause in clauses(tokenize(text), lists=True):
        rest = clause.after_verb if clause.verb else clause.tokens
        if clause.verb is not None:
            verbs.extend(_verb_lemmas(clause))
        direct = _object_nouns(rest)
        objects.extend(_content_nouns(direct, concatenated=False))
        others.extend(_content_nouns(rest[len(direct) :], concatenated=False))
    return verbs, objects, others


def _verb_lemmas(clause: Clause) -> list[str]:
    """The verb's lemmas; with a particle, the phrasal verb WordNet knows ("write off" is not
    "write"), else both readings ("roll back": a capability may name ``rollback``)."""
    assert clause.verb is not None  # noqa: S101 - callers check
    lemmas = list(clause.verb.verbs) or [clause.verb.text]
    if clause.particle:
        phrasal = [f"{lemma}_{clause.particle}" for lemma in lemmas]
        known = [p for p in phrasal if asklexicon.is_verb(p)]
        lemmas = known or phrasal + lemmas
    return lemmas


@functools.lru_cache(maxsize=4096)
def _build_entry(name: str, description: str, examples: tuple[str, ...]) -> CatalogEntry:
    parts = name.split(".")
    action_words = [w for w in re.split(r"[_-]", parts[-1]) if w]
    actions: dict[str, float] = {}
    for word in action_words[:1]:
        lemmas = list(asklexicon.verb_lemmas(word)) or [word, *_split_compound(word, ())]
        for lemma in lemmas:
            actions[lemma] = 1.0
    resource: set[str] = set()
    for part in parts[:-1]:
        words = [w for w in re.split(r"[_-]", part) if w]
        for word in words:
            token = _word(word)
            resource.update(_noun_forms(token))
            resource.update(c for c in _split_compound(word, ()) if "_" in c)
        if len(words) > 1:
            resource.add("_".join(words))
            resource.add("".join(words))
    resource.update(r.split("_")[-1] for r in list(resource) if "_" in r)
    synonyms = {s for r in resource for s in asklexicon.noun_synonyms(r)} - resource
    strong = set(actions)
    described_verbs: list[str] = []
    described: set[str] = set()
    mentioned: set[str] = set()
    for text in (description, *examples):
        verbs, objects, others = _phrase_verbs(text)
        described_verbs.extend(verbs)
        described.update(objects)
        mentioned.update(others)
    if set(actions) & SUPPORT_VERBS or (described_verbs and described_verbs[0] in SUPPORT_VERBS):
        for noun in resource:
            for verb in asklexicon.derived_verbs(noun):
                actions.setdefault(verb, 0.95)
                strong.add(verb)
    for verb in described_verbs:
        actions.setdefault(verb, 0.9)
    # the class of what the capability does: its name's action, else its description's verb
    # (never a verb derived from its resource, which only widens how it may be asked for)
    action_class = None
    for lemma in [*(a for a, w in actions.items() if w == 1.0), *described_verbs[:1]]:
        action_class = asklexicon.verb_class(lemma)
        if action_class is not None:
            break
    for verb in [v for v, w in actions.items() if w == 0.95]:
        derived_class = asklexicon.verb_class(verb)
        if derived_class in DANGEROUS and derived_class != action_class:
            del actions[verb]  # "post" (publish) is not what posts.draft does
            strong.discard(verb)
    return CatalogEntry(
        name=name,
        description=description,
        examples=examples,
        actions=actions,
        strong_actions=frozenset(strong),
        resource=frozenset(resource),
        synonyms=frozenset(synonyms),
        described=frozenset(described - resource),
        general=frozenset(
            kinds[0] for n in resource | described if (kinds := asklexicon.noun_kinds(n))
        ),
        mentioned=frozenset(mentioned - described - resource),
        action_class=action_class,
        person_resource=any(asklexicon.is_person(r) for r in resource),
        act_nouns=frozenset(
            n
            for a, w in actions.items()
            if w == 1.0
            for n in asklexicon.derived_nouns(a)
            if not asklexicon.is_person(n)
        ),
    )


# -- matching ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Candidate:
    capability: str
    score: float


@dataclass(frozen=True, slots=True)
class ClauseMatch:
    """What one requesting clause was matched to; ``capability`` None when not covered."""

    text: str
    capability: str | None
    confidence: float
    matched_words: tuple[str, ...]
    reason: str
    candidates: tuple[Candidate, ...] = ()
    inferred: tuple[str, ...] = ()
    """The loose inferences the match depends on (see :data:`INFERENCES`): empty for a direct
    match, which alone may answer "allowed"."""


def _damerau(a: str, b: str) -> int:
    """Optimal string alignment distance (for typos: one transposition counts one)."""
    previous2: list[int] = []
    previous = list(range(len(b) + 1))
    for i in range(1, len(a) + 1):
        current = [i] + [0] * len(b)
        for j in range(1, len(b) + 1):
            cost = 0 if a[i - 1] == b[j - 1] else 1
            current[j] = min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + cost)
            if i > 1 and j > 1 and a[i - 1] == b[j - 2] and a[i - 2] == b[j - 1]:
                current[j] = min(current[j], previous2[j - 2] + 1)
        previous2, previous = previous, current
    return previous[-1]


@functools.lru_cache(maxsize=65536)
def _typo_of(word: str, vocabulary: frozenset[str]) -> str | None:
    """The one vocabulary word ``word`` is a likely typo of (distance 1, or 2 from 8 letters)."""
    if len(word) < 4:
        return None
    limit = 2 if len(word) >= 8 else 1
    letters = set(word)
    found = {
        v
        for v in vocabulary
        if abs(len(v) - len(word)) <= limit
        # each edit changes the set of letters by at most two: a cheap bound before the distance
        and len(letters.symmetric_difference(v)) <= 2 * limit
        and _damerau(word, v) <= limit
        and not word.endswith(v)  # "unpublish" is no typo of "publish": it is its undoing
        and not word.startswith(v)
    }
    return found.pop() if len(found) == 1 else None


ACT_NOUN = 0.6
"""The object score of a noun of an act on the capability's resource ("booking")."""
KIND_MATCH = 0.7
"""The verb score of a verb of the same kind as the capability's action (see ``ACT_KINDS``)."""
ACT_KINDS = {
    "create": ("create", "make", "produce"),
    "start": ("start", "begin", "initiate"),
}
"""Generic acts, each named by its WordNet root verbs: a verb is of a kind when WordNet makes it
a synonym, a more specific way or the general word of one of the roots. Two verbs of one kind
name the same act when it is applied to the capability's own resource ("produce a report" =
"generate a report"); verbs that destroy, transfer or grant never count (their classes
decide)."""


@functools.lru_cache(maxsize=65536)
def _kinds(lemma: str, *, least: float) -> frozenset[str]:
    if asklexicon.verb_class(lemma) in DANGEROUS:
        return frozenset()
    return frozenset(
        kind
        for kind, roots in ACT_KINDS.items()
        if any(asklexicon.verb_similarity(lemma, root) >= least for root in roots)
    )


def _same_kind(lemmas: Sequence[str], entry: CatalogEntry) -> bool:
    """The capability's action and the asked verb are both ways to create ("generate",
    "produce", "put together") or to start ("trigger", "start", "kick off") something. There is
    no such kind for changing: "merge tickets" is a way to change them, as "close" is, and is
    not closing them."""
    if entry.action_class in DANGEROUS or entry.reads:
        return False
    generic = {k for action in _name_actions(entry) for k in _kinds(action, least=VERB_MATCH)}
    if not generic:
        return False
    return bool(generic & {k for lemma in lemmas for k in _kinds(lemma, least=VERB_MATCH)})


@functools.lru_cache(maxsize=1024)
def _catalog_nouns(catalog: tuple[CatalogEntry, ...]) -> frozenset[str]:
    return frozenset(n for e in catalog for n in e.resource | e.synonyms | e.described)


@functools.lru_cache(maxsize=1024)
def _catalog_verbs(catalog: tuple[CatalogEntry, ...]) -> frozenset[str]:
    return frozenset(a for e in catalog for a in e.actions) | _COMMON_VERBS


def _corrected_noun(noun: str, vocabulary: frozenset[str]) -> str:
    if "_" in noun or asklexicon.is_noun(noun) or asklexicon.is_verb(noun):
        return noun
    return _typo_of(noun, vocabulary) or noun


@dataclass(slots=True)
class _Scored:
    entry: CatalogEntry
    score: float
    verb: float
    words: list[str]
    inferred: tuple[str, ...] = ()


def _asked_verbs(
    clause: Clause, nouns: list[str], vocabulary: frozenset[str]
) -> tuple[list[str], list[str]]:
    """The verb lemmas the clause asks for, and nouns used up as its action ("do a restart")."""
    if clause.verb is None:
        return [], []
    lemmas = _verb_lemmas(clause)
    if not clause.verb.verbs and not clause.verb.nouns:
        typo = _typo_of(clause.verb.text, vocabulary)
        lemmas = [typo] if typo else [clause.verb.text]
    text = clause.verb.text
    if text.startswith("re") and not clause.verb.verbs and not clause.particle:
        # "resend", "reforecast" (words WordNet lacks): the same act again
        again = [v for v in asklexicon.verb_lemmas(text[2:]) if v not in lemmas and len(v) > 2]
        lemmas = lemmas + again
    used: list[str] = []
    if set(lemmas) & LIGHT_VERBS:
        for noun in nouns[:3]:
            derived = [
                v for v in asklexicon.derived_verbs(noun) if v == noun or noun.startswith(v[:4])
            ]
            if derived:
                lemmas = derived + lemmas
                used.append(noun)
                break
    return lemmas, used


def _class_of(lemmas: Sequence[str]) -> str | None:
    """The most dangerous class among the readings of a verb."""
    classes = {asklexicon.verb_class(lemma) for lemma in lemmas}
    for name in ("privilege", "destroy", "transfer", "read"):
        if name in classes:
            return name
    return None


def _verb_score(lemmas: Sequence[str], entry: CatalogEntry) -> tuple[float, str | None, str | None]:
    """The best verb score, the asked lemma that has it and the capability's verb it names."""
    best, word, named = 0.0, None, None
    for asked in lemmas:
        for action, weight in entry.actions.items():
            similarity = asklexicon.verb_similarity(asked, action) * weight
            if similarity > best:
                best, word, named = similarity, asked, action
    return best, word, named


def _heads(tokens: Sequence[Token]) -> list[tuple[tuple[str, ...], bool]]:
    """The head of each noun phrase of ``tokens`` that is not a person (its last word, with the
    compounds it ends), first phrase first, and whether the phrase is one bare word right at the
    start (no determiner: likely a name, "scale checkout"); a phrase ending in a word WordNet
    does not know (a name such as "frontend") has no head."""
    runs: list[list[Token]] = [[]]
    starts: list[int] = [0]
    for index, token in enumerate(tokens):
        # a particle closes the phrase ("hand the ticket over"): it is part of the verb
        if token.kind != "word" or token.text in _FUNCTION or token.text in _PARTICLES:
            runs.append([])
            starts.append(index + 1)
        else:
            runs[-1].append(token)
    heads: list[tuple[tuple[str, ...], bool]] = []
    for run, start in zip(runs, starts, strict=True):
        if not run or not run[-1].nouns:
            continue
        last = run[-1]
        forms = list(last.nouns)
        if len(run) > 1:
            previous = run[-2].text
            forms.extend(f"{previous}{n}" for n in last.nouns)
            forms.extend(f"{previous}_{n}" for n in last.nouns)
        if any(asklexicon.is_person(n) or asklexicon.is_time(n) for n in last.nouns):
            # who it is for, or when: the head is the last noun before them ("the appointment
            # tomorrow", "the offer for Priya")
            thing = next(
                (
                    t
                    for t in reversed(run[:-1])
                    if t.nouns
                    and not any(asklexicon.is_time(n) or asklexicon.is_person(n) for n in t.nouns)
                ),
                None,
            )
            if thing is None:
                continue
            heads.append((tuple(thing.nouns), False))
            continue
        heads.append((tuple(forms), start == 0 and len(run) == 1 and last.text in last.nouns))
    return heads


def _name_actions(entry: CatalogEntry) -> frozenset[str]:
    return frozenset(a for a, weight in entry.actions.items() if weight == 1.0)


def _object_nouns(tokens: Sequence[Token]) -> list[Token]:
    """The direct object: the tokens after the verb up to the first preposition (an "of" phrase
    belongs to the object: "the logs of the checkout pods")."""
    found: list[Token] = []
    for token in tokens:
        if token.text in _PREPOSITIONS:
            break
        found.append(token)
    return found


def _names(entry: CatalogEntry, noun: str) -> float:
    """How surely ``noun`` is something the capability acts on: its resource 1.0, a synonym
    0.8, a noun its description acts on 0.6, a kind of one of those (WordNet: a "contract" is an
    "agreement") 0.6, the nearest more general word for one of those 0.5, a noun from the same
    verb as the resource 0.6; else 0."""
    if noun in entry.resource:
        return 1.0
    if noun in entry.synonyms:
        return 0.8
    if noun in entry.described:
        return 0.6
    if any(
        kind in entry.resource or kind in entry.described for kind in asklexicon.noun_kinds(noun)
    ):
        return 0.6
    if noun in entry.general:
        return 0.5
    if _same_stem(noun, entry.resource):
        return 0.6
    return 0.0


@functools.lru_cache(maxsize=65536)
def _same_stem(noun: str, resource: frozenset[str]) -> bool:
    """``noun`` and one of the resource nouns come from the same verb (WordNet derivations):
    "the last deploy" for ``deployments``."""
    stems = set(asklexicon.derived_verbs(noun)) | set(asklexicon.verb_lemmas(noun))
    return bool(stems) and any(stems & set(asklexicon.derived_verbs(r)) for r in resource)


@functools.lru_cache(maxsize=1024)
def _resource_acts(catalog: tuple[CatalogEntry, ...]) -> dict[str, frozenset[str]]:
    """For each capability, the nouns of the acts of every capability on the same resource
    (appointments.book, .cancel, .reschedule: "booking", "cancellation")."""
    return {
        entry.name: frozenset().union(
            *(other.act_nouns for other in catalog if other.resource & entry.resource)
        )
        for entry in catalog
    }


def _only_names(
    tokens: Sequence[Token], word: str | None, entry: CatalogEntry, catalog: Sequence[CatalogEntry]
) -> bool:
    """The object is only names and identifiers, and ``word`` is the capability's own action
    (exactly), which no other capability of the catalog has, and which neither destroys,
    transfers nor grants."""
    content = [
        t
        for t in tokens
        if t.text not in _FUNCTION and t.text not in _PARTICLES and t.kind != "punct"
    ]  # "roll back billing-api": the particle is part of the verb
    if not content or any(t.kind not in ("name", "id") for t in content):
        return False
    # a capitalised word that is a catalog noun or a credential ("restart Payments", "reset
    # the Admin") is no name to act on blindly: capitals must not hide a foreign object
    resources = {r for other in catalog if other is not entry for r in other.resource}
    for token in content:
        forms = {token.text, *_word(token.text).nouns}
        if token.kind == "name" and forms & (resources | SENSITIVE_NOUNS):
            return False
    if word is None or entry.actions.get(word) != 1.0 or entry.action_class in DANGEROUS:
        return False
    return not any(word in other.actions for other in catalog if other is not entry)


_PLACES = _words("in into to onto on inside within")


def _placed_in(clause: Clause, entry: CatalogEntry) -> bool:
    """The clause acts in or into the capability's own place ("write the result into my
    notes", "set MAX_CONNECTIONS=200 in the api configmap", "roll back to revision 41"): its
    resource, a synonym, or a noun its description names after a preposition."""
    tokens = clause.after_verb
    for index, token in enumerate(tokens):
        if token.text not in _PLACES:
            continue
        following = tokens[index + 1 :]
        phrase: list[Token] = []
        for item in following:
            if item.text in _PREPOSITIONS:
                break
            phrase.append(item)
        for noun in _content_nouns(phrase):
            if asklexicon.is_person(noun):
                continue  # "to the patient": who receives it, not where it goes
            if noun in entry.resource or noun in entry.synonyms or noun in entry.mentioned:
                return True
    return False


_QUESTION_AUXILIARIES = _words("do does did has have had will would is are was were can could")


def _actors(clause: Clause) -> frozenset[str]:
    """The persons who act in a question for information ("what did **customer** 2231 buy?",
    "which orders has the **customer** returned?"): the subject between the auxiliary and the
    verb does the act; what is asked about is what the verb acts on, not the person, so the
    person is no evidence for a capability that reads persons."""
    if not clause.info:
        return frozenset()
    tokens = list(clause.after_verb)
    # "what did ...", "which orders has ...": skip to the auxiliary
    index = next((i for i, t in enumerate(tokens[:4]) if t.text in _QUESTION_AUXILIARIES), None)
    if index is None:
        return frozenset()
    subject: list[str] = []
    for token in tokens[index + 1 :]:
        if (
            token.kind == "word"
            and token.text in token.verbs
            and token.text not in _FUNCTION
            and not any(asklexicon.is_person(n) for n in token.nouns)
        ):
            # the verb after the subject: the subject's persons are actors
            return frozenset(n for n in subject if asklexicon.is_person(n))
        if token.kind == "punct" or token.text in _PREPOSITIONS:
            break
        subject.extend(_noun_forms(token) if token.kind == "word" else ())
    return frozenset()


def _things(nouns: Iterable[str]) -> list[str]:
    """Nouns that can be acted on: not times ("tomorrow", "friday")."""
    return [n for n in nouns if not asklexicon.is_time(n)]


_ANAPHORA = _words("it them this that these those one ones")


def resolve(clause: Clause, antecedent: Clause | None) -> Clause:
    """A clause whose object is a pronoun ("share it with the funder", "pay it") acts on the
    object of the clause before it."""
    if antecedent is None or clause.verb is None:
        return clause
    direct = [t for t in _object_nouns(clause.after_verb) if t.text not in _DETERMINERS - _ANAPHORA]
    if not direct or any(t.text not in _ANAPHORA for t in direct):
        return clause
    return Clause(
        clause.tokens,
        clause.kind,
        verb=clause.verb,
        particle=clause.particle,
        info=clause.info,
        noun_request=clause.noun_request,
        after_verb=clause.after_verb,
        inherited=tuple(_object_nouns(antecedent.after_verb)),
    )


def _verb_inference(
    clause: Clause, lemmas: Sequence[str], used: Sequence[str], vocabulary: frozenset[str]
) -> dict[str, tuple[str, ...]]:
    """For each asked lemma that is not a reading of the clause's own verb, the inference that
    produced it: a typo correction, "re-" read as "again", or a light verb's noun."""
    if clause.verb is None:
        return {}
    own = set(_verb_lemmas(clause))
    found: dict[str, tuple[str, ...]] = {}
    for lemma in lemmas:
        if lemma in own and (clause.verb.verbs or clause.verb.nouns):
            continue
        text = clause.verb.text
        if text.startswith("re") and lemma in asklexicon.verb_lemmas(text[2:]):
            found[lemma] = ("re- prefix",)
        elif not clause.verb.verbs and not clause.verb.nouns and lemma != text:
            found[lemma] = ("typo",)
        elif used and lemma not in own:
            found[lemma] = ("light verb",)
        elif lemma not in own:
            found[lemma] = ("re- prefix",)
    return found


def match_clause(
    clause: Clause,
    catalog: Sequence[CatalogEntry],
    *,
    strictness: Strictness = STRICT,
    active_inferences: frozenset[str] = frozenset(INFERENCES),
) -> ClauseMatch:
    """The capability that covers one requesting clause, or why none does; ``inferred`` on the
    result names the loose inferences the match depends on (only those in
    ``active_inferences``: fewer only to measure what each contributes)."""
    all_nouns = _things(_content_nouns(clause.after_verb + clause.inherited))
    if clause.info:
        # "what is the auth service logging?", "who did we pay?": a question for information
        # asks about what its verb is about (the nouns WordNet derives from it)
        all_nouns += [
            n
            for t in clause.after_verb
            if t.kind == "word" and t.verbs and t.text not in _FUNCTION
            for v in t.verbs[:1]
            for n in asklexicon.derived_nouns(v)
            if not asklexicon.is_person(n)
        ]
    direct_tokens = _object_nouns(clause.after_verb)
    direct = _things(_content_nouns(direct_tokens))
    # a word neither WordNet nor the grammar knows may be a typo of the catalog's own nouns
    # ("intervew slot"): corrected only towards them, and only when one word is that close
    nouns_known = _catalog_nouns(tuple(catalog))
    corrected = {
        fixed for n in (*all_nouns, *direct) if (fixed := _corrected_noun(n, nouns_known)) != n
    }
    all_nouns = [_corrected_noun(n, nouns_known) for n in all_nouns]
    direct = [_corrected_noun(n, nouns_known) for n in direct]
    # "cordon worker-9 and then drain it": a pronoun object names what the clause before named
    pronoun_only = bool(direct_tokens) and all(
        t.text in _ANAPHORA or t.text in _DETERMINERS or t.kind == "punct" for t in direct_tokens
    )
    named_tokens = list(clause.inherited) if pronoun_only and clause.inherited else direct_tokens
    vocabulary = _catalog_verbs(tuple(catalog))
    lemmas, used = _asked_verbs(clause, all_nouns, vocabulary)
    verb_inference = _verb_inference(clause, lemmas, used, vocabulary)
    heads = [h for h in _heads(direct_tokens) if not set(h[0]) & set(used)]
    asked_class = _class_of(lemmas)
    resources = {r: e.name for e in catalog for r in e.resource}
    acts = _resource_acts(tuple(catalog))
    scored: list[_Scored] = []
    persons = {n for n in (*all_nouns, *direct) if asklexicon.is_person(n)}
    actors = _actors(clause)
    for entry in catalog:
        # action evidence first: it rules out most of the catalog cheaply
        derived = kind_only = read_verb = False
        named = None
        if clause.info or clause.noun_request:
            if not entry.reads and not (clause.noun_request and set(entry.actions) & SUPPORT_VERBS):
                continue
            verb, word = 0.8, None
        else:
            verb, word, named = _verb_score(lemmas, entry)
            if entry.reads and asked_class == "read" and verb < READ_MATCH:
                # any verb that only looks ("show", "check", "look at") asks a reading capability
                verb, word, read_verb = READ_MATCH, lemmas[0], True
            if verb < VERB_MATCH and _same_kind(lemmas, entry):
                # "produce the aging report" for reports.generate, "start a new build" for
                # builds.trigger: both verbs are ways to create (or start, or change) and the
                # object must be the capability's own resource (checked below)
                verb, word, kind_only = KIND_MATCH, lemmas[0], True
            if verb < VERB_MATCH:
                if strictness.verb_required:
                    continue
                verb, word = 0.5, None  # the object alone decides (trade-off measurement only)
            if (
                strictness.classes
                and asked_class in DANGEROUS
                and asked_class != entry.action_class
            ):
                continue
            if (
                strictness.classes
                and entry.reads
                and asked_class != "read"
                and word not in entry.actions
            ):
                continue
            # the verb derived from the resource, or a synonym of it ("give back", "reimburse"
            # for the "refund" of refunds.issue), names the object by itself
            derived = (
                named in entry.strong_actions
                and named not in _name_actions(entry)
                and word is not None
                and asklexicon.verb_similarity(word, named) >= DIRECT_MATCH
            )
        nouns = entry.nouns
        # object evidence
        if entry.person_resource:
            # persons name it only as its resource ("the customer" for customers.read), not as
            # who an act is for; the things its description acts on ("a demo or call" for
            # meetings.book, whose "meeting" WordNet files under social groups) still count
            evidence = [
                n
                for n in all_nouns
                if ((n in entry.resource or n in entry.synonyms) and n not in actors)
                or (n in entry.described and n not in persons)
            ]
        else:
            evidence = [
                n
                for n in all_nouns
                if n not in persons and (_names(entry, n) > 0 or n in acts[entry.name])
            ]
        object_score = max(
            (_names(entry, n) or (ACT_NOUN if n in acts[entry.name] else 0.0) for n in evidence),
            default=0.0,
        )
        placed = _placed_in(clause, entry)
        if object_score == 0.0 and placed:
            object_score = 0.5
        foreign = [
            n
            for n in direct
            if n not in nouns
            and n not in used
            and n not in persons  # who it is for ("the customer") is never foreign
            and (n in SENSITIVE_NOUNS or resources.get(n, entry.name) != entry.name)
            and _names(entry, n) == 0.0
            and n not in acts[entry.name]
        ]
        if strictness.foreign and foreign and not (entry.reads and clause.info):
            continue
        if (
            kind_only
            and strictness.verb_required
            and not any(n in entry.resource or n in entry.synonyms for n in direct)
        ):
            continue  # a verb of the same kind only names the capability with its resource
        if clause.info or clause.noun_request:
            if object_score == 0.0 and strictness.object_required:
                continue
        elif object_score == 0.0:
            # no object the capability names: only a verb derived from its resource names
            # the object by itself ("refund order 7781" for refunds.issue: what follows is
            # what the refund is for, and anything foreign was refused above), or the
            # capability's own action, held by no other capability, applied to nothing but
            # names ("roll back billing-api"): the name can only be what the action acts on
            if (
                strictness.object_required
                and not derived
                and not _only_names(named_tokens, word, entry, catalog)
            ):
                continue
            object_score = 0.5
        elif strictness.object_head and heads and not entry.reads and not derived and not placed:
            # what is acted on (the first phrase's head) must be what the capability acts
            # on; a bare word after the verb ("scale checkout to 6 replicas") is a name
            head, bare = heads[0]
            if not bare and not any(
                form in nouns
                or form in entry.actions
                or form in acts[entry.name]
                or _names(entry, form) > 0
                for form in head
            ):
                continue
        words = ([word] if word else []) + sorted(set(evidence))
        inferred: list[str] = []
        if word is not None and not read_verb:
            if kind_only:
                inferred.append("same-kind verb")
            elif word in asklexicon.EVERYDAY_SENSES and word != named:
                inferred.append("slang")
            elif named is not None and asklexicon.verb_similarity(word, named) < DIRECT_MATCH:
                inferred.append("related verb")
            if derived and word != named:
                inferred.append("resource-verb synonym")
            inferred.extend(verb_inference.get(word, ()))
        direct_evidence = [
            n
            for n in evidence
            if n in entry.resource
            or n in entry.synonyms
            or n in entry.described
            or any(k in entry.resource or k in entry.described for k in asklexicon.noun_kinds(n))
        ]
        if evidence and not direct_evidence and not placed:
            inferred.append("related noun")
        if set(evidence) & corrected and not set(direct_evidence) - corrected:
            inferred.append("typo")
        if clause.inherited:
            inferred.append("pronoun")
        scored.append(
            _Scored(
                entry,
                round(0.6 * verb + 0.4 * object_score, 4),
                verb,
                words,
                tuple(i for i in dict.fromkeys(inferred) if i in active_inferences),
            )
        )
    scored.sort(key=lambda s: (-s.score, s.entry.name))
    suggestions = tuple(Candidate(s.entry.name, s.score) for s in scored[:3])
    if not scored:
        closest = _closest(clause, catalog)
        reason = (
            _uncovered_reason(clause, lemmas)
            if closest
            else "no capability shares words with the question"
        )
        return ClauseMatch(clause.text, None, 0.0, (), reason, closest)
    best = scored[0]
    if len(scored) > 1 and best.score - scored[1].score < strictness.ambiguity_margin:
        names = ", ".join(c.capability for c in suggestions)
        return ClauseMatch(
            clause.text,
            None,
            round(best.score / 2, 3),
            (),
            f"ambiguous: the clause could mean {names}",
            suggestions,
        )
    return ClauseMatch(
        clause.text,
        best.entry.name,
        round(best.score, 3),
        tuple(best.words),
        f"matched {best.entry.name}",
        suggestions,
        best.inferred,
    )


def _uncovered_reason(clause: Clause, lemmas: Sequence[str]) -> str:
    if clause.info:
        return "no capability of the agent reads what the question asks about"
    if lemmas:
        return f"no capability of the agent covers {lemmas[0].replace('_', ' ')!r} on this object"
    if clause.verb is not None:
        return f"the action {clause.verb.text!r} is not a word the matcher knows"
    return "no capability of the agent covers this"


def _closest(clause: Clause, catalog: Sequence[CatalogEntry]) -> tuple[Candidate, ...]:
    """Suggestions for an uncovered clause: capabilities sharing a noun or a verb with it."""
    words = set(_content_nouns(clause.tokens))
    if clause.verb is not None:
        words.update(clause.verb.verbs)
    scored = []
    for entry in catalog:
        shared = words & (entry.nouns | set(entry.actions))
        if shared:
            scored.append(Candidate(entry.name, round(len(shared) / (len(words) or 1), 3)))
    scored.sort(key=lambda c: (-c.score, c.capability))
    return tuple(scored[:3])


_COMMON_VERBS = _words(
    """read see show view look check find get open search list display send delete"""
)
"""Typos are corrected towards the agent's own verbs and these few everyday request verbs."""


_COPULAS = _words("is are was were has have had")
_LEADS = _SUBORDINATORS | frozenset(("to", "then", "that"))


def hidden_request(clause: Clause) -> Clause | None:
    """The request a context clause carries, if any: after its subordinator and framing it
    starts with a verb in the base form or in -ing that acts on something ("check the stock
    before approving the discount", "..., after that approve it", "so I can export the list",
    "the pods need restarting"). Such a clause must be covered like any other; only a clause
    with no action of its own (a statement with its subject, "because the customer
    complained"; politeness; a time) may be passed over."""
    body = list(clause.tokens)
    while True:
        stripped, _ = _strip_framing(body)
        while stripped and stripped[0].text in _LEADS:
            stripped = stripped[1:]
        if stripped == body:
            break
        body = stripped
    if not body or any(t.text in _COPULAS for t in body[1:4]):
        return None  # "that invoice 332 is late": a subject and its verb, a statement
    found = _clause("main", body)
    if found.kind != "request" or found.verb is None or found.info:
        return None
    if found.verb is body[0] and not _could_start_request(body[0]):
        return None
    has_object = any(
        t.kind in ("id", "name")
        or t.text in _ANAPHORA
        or (t.kind == "word" and t.text not in _FUNCTION and t.text not in _PARTICLES)
        for t in found.after_verb
    )
    return found if has_object else None


_MODALS = _words("should must can could will would shall may might")


def residual_actions(clause: Clause, catalog: Sequence[CatalogEntry]) -> list[str]:
    """Actions a clause names besides its own verb, which the clause's match does not cover:
    a gerund with an object ("as well as refunding the order"), a passive after a modal
    ("the order should be refunded", "needs to be deleted") or a participle closing a "with"
    phrase ("with the order refunded"), when the verb names an action of
    the agent's catalog (the same lemma or a WordNet synonym) or destroys, transfers or grants.
    Each must be asked as a clause of its own: the answer is not covered."""
    tokens = list(clause.tokens)
    found: list[str] = []
    for index, token in enumerate(tokens):
        if token is clause.verb or token.kind != "word" or token.text in _FUNCTION:
            continue
        lemmas = [v for v in token.verbs if v != token.text]
        if not lemmas:
            continue  # a base form: a verb of its own clause, or a noun ("the refund")
        before = tokens[index - 1].text if index else ""
        after = tokens[index + 1] if index + 1 < len(tokens) else None
        gerund = (
            token.text.endswith("ing")
            and before not in _DETERMINERS
            and after is not None
            and (after.text in _DETERMINERS or after.text in _ANAPHORA or after.kind != "word")
        )
        passive = (
            before == "be"
            and index >= 2
            and (tokens[index - 2].text in _MODALS or tokens[index - 2].text == "to")
        )
        # "show me invoice 7712 with the order refunded": a participle closing a "with" phrase
        # asks for the state the action leaves (an adjective before its noun, "the refunded
        # order", does not)
        with_participle = (
            not token.text.endswith("ing")
            and before not in _DETERMINERS
            and any(t.text == "with" for t in tokens[:index])
        )
        if not (gerund or passive or with_participle):
            continue
        names_action = any(
            asklexicon.verb_similarity(lemma, action) >= DIRECT_MATCH
            for lemma in lemmas
            for entry in catalog
            for action in entry.actions
        )
        if names_action or _class_of(lemmas) in DANGEROUS:
            found.append(token.text)
    return found


def context_danger(clause: Clause) -> str | None:
    """A verb in a context clause that destroys, transfers out or grants ("so that I can delete
    them"): such a clause is a request in disguise and makes the answer "not covered"."""
    for token in clause.tokens:
        if token.kind != "word" or not token.verbs or token.text in _FUNCTION:
            continue
        if token.nouns and token.text in token.nouns:
            continue  # "the end of the month", "a copy": read as a noun
        if _class_of(token.verbs[:1]) in ("destroy", "transfer", "privilege"):
            return token.text
    return None
