"""English lemmas, synonyms and verb classes for the Ask matcher, from WordNet 3.0.

The data is ``asklexicon.json.gz`` next to this module, generated once from Princeton WordNet 3.0
by ``hack/gen_ask_lexicon.py`` and shipped inside the package (nothing is downloaded at run time;
WordNet's licence notice is in the data file, key ``license``). It is loaded on first use and
kept for the life of the process. One table is not WordNet's: :data:`EVERYDAY_SENSES`, a small
hand-written table of everyday and IT-slang verb senses WordNet 3.0 lacks ("bump", "snooze",
"ack"), each a sense a current dictionary lists.

Guarantees: every function is pure and deterministic; an unknown word gives empty results, never
an error; lemmatisation follows WordNet's own *morphy* (its exception lists, then its suffix rules,
keeping only forms WordNet knows), with one addition for doubled final consonants
(``shipped`` -> ``ship``).
"""

from __future__ import annotations

import functools
import gc
import gzip
import importlib.resources
import json
from collections.abc import Iterable
from dataclasses import dataclass

VERB_SENSES = 3
"""Senses of a verb that count for synonymy: rarer senses ("edit" as "delete") do not."""
TROPONYM_DEPTH = 2
"""How many hypernym steps up from a verb still name the same act done a particular way."""

# WordNet's morphy detachment rules, in its order
_VERB_RULES: tuple[tuple[str, str], ...] = (
    ("s", ""),
    ("ies", "y"),
    ("es", "e"),
    ("es", ""),
    ("ed", "e"),
    ("ed", ""),
    ("ing", "e"),
    ("ing", ""),
)
_NOUN_RULES: tuple[tuple[str, str], ...] = (
    ("s", ""),
    ("ses", "s"),
    ("xes", "x"),
    ("zes", "z"),
    ("ches", "ch"),
    ("shes", "sh"),
    ("men", "man"),
    ("ies", "y"),
)

EVERYDAY_SENSES: dict[str, tuple[str, ...]] = {
    # Everyday and IT-slang senses of verbs that WordNet 3.0 lacks or does not link to the
    # standard verb (it predates most of them, and links "bump" only to collisions). Written
    # once, as a whole, from general knowledge: each entry is a sense a current dictionary lists
    # (Merriam-Webster, Cambridge, Wiktionary), never grown from one question. Word -> the
    # standard verbs it can mean; a verb's class is the most dangerous class of its meanings
    # ("nuke" destroys), so the table can make a verb more dangerous but never less.
    # -- changing an amount
    "bump": ("increase", "raise", "scale", "escalate"),
    "bump_up": ("increase", "raise", "scale", "escalate"),
    "up": ("increase", "raise", "scale"),
    "crank_up": ("increase", "raise"),
    "ramp_up": ("increase", "scale"),
    "ramp_down": ("decrease", "scale"),
    "scale_up": ("scale", "increase"),
    "scale_down": ("scale", "decrease"),
    "scale_out": ("scale", "increase"),
    "scale_in": ("scale", "decrease"),
    "dial_down": ("decrease", "reduce"),
    "dial_up": ("increase",),
    "tweak": ("adjust", "change", "update"),
    "patch": ("update", "fix"),
    # -- starting, stopping, restarting
    "kick": ("restart",),
    "bounce": ("restart",),
    "reboot": ("restart",),
    "recycle": ("restart",),
    "cycle": ("restart",),
    "kick_off": ("start", "launch", "initiate", "trigger", "begin"),
    "fire_up": ("start", "launch"),
    "fire_off": ("send",),
    "spin_up": ("start", "launch", "create", "provision"),
    "spin_down": ("stop", "scale"),
    "roll_out": ("deploy", "release", "launch"),
    "go_live": ("publish", "launch"),
    "rerun": ("run", "rerun"),
    "rebuild": ("build",),
    "redeploy": ("deploy", "restart"),
    # -- undoing, cancelling, destroying
    "undo": ("revert", "roll_back"),
    "revert": ("roll_back", "undo"),
    "nuke": ("delete", "destroy"),
    "zap": ("delete", "destroy"),
    "wipe": ("erase", "delete"),
    "trash": ("delete", "discard"),
    "bin": ("discard", "delete"),
    "ditch": ("discard", "cancel"),
    "axe": ("cancel", "delete"),
    "scrub": ("cancel", "erase"),
    "tear_down": ("destroy", "delete"),
    "take_down": ("remove", "delete", "disable"),
    "blow_away": ("delete", "destroy"),
    "dump": ("export", "discard"),
    "kill": ("stop", "terminate", "delete"),
    # -- alerts and paging
    "snooze": ("silence", "mute", "postpone"),
    "mute": ("silence",),
    "hush": ("silence",),
    "quiet": ("silence",),
    "shush": ("silence",),
    "ack": ("acknowledge",),
    # -- messages and people
    "ping": ("contact", "message", "remind"),
    "nudge": ("remind",),
    "chase": ("remind", "follow_up"),
    "chase_up": ("remind", "follow_up"),
    "follow_up": ("contact", "remind"),
    "dm": ("message", "contact"),
    "text": ("message", "send"),
    "cc": ("send", "share"),
    "hand_off": ("transfer", "reassign", "escalate"),
    "hand_over": ("transfer", "reassign", "escalate"),
    "pass_on": ("transfer", "escalate", "forward"),
    # -- reading
    "tail": ("read", "stream", "follow"),
    "grep": ("search",),
    "pull_up": ("display", "open", "retrieve", "view"),
    "bring_up": ("display", "open"),
    "dig_up": ("find", "search"),
    "skim": ("read",),
    # -- time and calendars
    "push_back": ("postpone", "reschedule", "delay"),
    "push_out": ("postpone", "reschedule"),
    "bring_forward": ("reschedule", "advance"),
    "move_up": ("reschedule", "advance"),
    "move": ("reschedule", "transfer"),
    "shift": ("reschedule", "move"),
    "pencil_in": ("schedule", "book"),
    "slot_in": ("schedule", "book"),
    "line_up": ("schedule", "arrange"),
    "set_up": ("arrange", "schedule", "book", "create"),
    "queue": ("schedule",),
    "queue_up": ("schedule",),
    # -- approving and writing
    "greenlight": ("approve",),
    "sign_off": ("approve",),
    "rubber_stamp": ("approve",),
    "condense": ("summarize", "shorten"),
    "boil_down": ("summarize",),
    "write_up": ("write", "draft"),
    "refresh": ("renew", "update"),
    "reimburse": ("refund", "pay"),
}
"""Everyday and IT-slang verb senses (see the comment inside)."""

CLASSES = ("read", "destroy", "transfer", "privilege")
"""Verb classes the matcher keeps apart (see ``hack/gen_ask_lexicon.py`` for their roots)."""


@dataclass(frozen=True, slots=True)
class Lexicon:
    """The data, with every list flattened into a space-separated string: strings are not
    tracked by Python's garbage collector, so the ~200 000 entries cost no collection time."""

    verbs: dict[str, str]
    verb_hypernyms: tuple[str, ...]
    nouns: dict[str, str]
    derived: dict[str, str]
    derived_nouns: dict[str, str]
    persons: frozenset[str]
    times: frozenset[str]
    noun_hypernyms: dict[str, str]
    verb_exceptions: dict[str, str]
    noun_exceptions: dict[str, str]
    classes: dict[str, str]
    license: str


def _flat(values: Iterable[object]) -> str:
    return " ".join(str(value) for value in values)


@functools.cache
def lexicon() -> Lexicon:
    raw = importlib.resources.files("agentauth.domain").joinpath("asklexicon.json.gz").read_bytes()
    data = json.loads(gzip.decompress(raw))
    reverse: dict[str, list[str]] = {}
    for noun, verbs in data["derived"].items():
        for verb in verbs:
            reverse.setdefault(verb, []).append(noun)
    lexicon = Lexicon(
        verbs={k: _flat(v) for k, v in data["verbs"].items()},
        verb_hypernyms=tuple(_flat(synset[1]) for synset in data["verb_synsets"]),
        nouns={k: _flat(v) for k, v in data["nouns"].items()},
        derived={k: _flat(v) for k, v in data["derived"].items()},
        derived_nouns={k: _flat(v) for k, v in reverse.items()},
        persons=frozenset(data["persons"]),
        times=frozenset(data["times"]),
        noun_hypernyms={k: _flat(v) for k, v in data["noun_hypernyms"].items()},
        verb_exceptions=data["verb_exceptions"],
        noun_exceptions=data["noun_exceptions"],
        classes=data["classes"],
        license=data["license"],
    )
    del data, reverse
    gc.collect()  # the decoded JSON was a million tracked objects: free them now, once
    return lexicon


def lexicon_license() -> str:
    """WordNet's licence notice, which travels with the data."""
    return lexicon().license


def _morphy(
    word: str,
    *,
    known: dict[str, object],
    exceptions: dict[str, str],
    rules: Iterable[tuple[str, str]],
) -> list[str]:
    found: list[str] = []
    if word in exceptions:
        found.append(exceptions[word])
    if word in known:
        found.append(word)
    for suffix, replacement in rules:
        if word.endswith(suffix) and len(word) > len(suffix) + 1:
            stem = word[: -len(suffix)] + replacement
            if stem in known:
                found.append(stem)
            # "shipped" -> "shipp" -> "ship"; "stopping" -> "stop"
            if not replacement and len(stem) > 2 and stem[-1] == stem[-2] and stem[:-1] in known:
                found.append(stem[:-1])
    return list(dict.fromkeys(found))


@functools.lru_cache(maxsize=65536)
def verb_lemmas(word: str) -> tuple[str, ...]:
    """The verb lemmas ``word`` can be a form of (``restarting`` -> ``restart``), most literal
    first; empty when WordNet knows no such verb."""
    lex = lexicon()
    found = _morphy(word, known=lex.verbs, exceptions=lex.verb_exceptions, rules=_VERB_RULES)  # type: ignore[arg-type]
    if not found:  # "ack", "acked", "grepping", "dm": everyday verbs WordNet lacks
        found = _morphy(word, known=EVERYDAY_SENSES, exceptions={}, rules=_VERB_RULES)  # type: ignore[arg-type]
    return tuple(found)


@functools.lru_cache(maxsize=65536)
def noun_lemmas(word: str) -> tuple[str, ...]:
    """The noun lemmas ``word`` can be a form of (``invoices`` -> ``invoice``)."""
    lex = lexicon()
    return tuple(_morphy(word, known=lex.nouns, exceptions=lex.noun_exceptions, rules=_NOUN_RULES))  # type: ignore[arg-type]


def is_verb(lemma: str) -> bool:
    return lemma in lexicon().verbs or lemma in EVERYDAY_SENSES


def is_noun(lemma: str) -> bool:
    return lemma in lexicon().nouns


def is_person(noun: str) -> bool:
    """Whether the noun's first sense is a person or an organisation (``customer``, ``team``)."""
    return noun in lexicon().persons


def is_time(noun: str) -> bool:
    """Whether the noun's first sense is a time ("tomorrow", "friday", "week")."""
    return noun in lexicon().times


@functools.lru_cache(maxsize=65536)
def noun_kinds(noun: str) -> tuple[str, ...]:
    """What the noun's first sense is a kind of, one then two steps up (``contract`` ->
    ``agreement``, ...), nearest first."""
    return tuple(lexicon().noun_hypernyms.get(noun, "").split())


def is_word(word: str) -> bool:
    """Whether WordNet knows ``word`` as a form of some verb or noun."""
    return bool(verb_lemmas(word) or noun_lemmas(word))


def noun_synonyms(noun: str) -> tuple[str, ...]:
    """Single-word synonyms from the noun's first senses (``voucher`` -> ``coupon``)."""
    return tuple(lexicon().nouns.get(noun, "").split())


def derived_verbs(noun: str) -> tuple[str, ...]:
    """Verbs WordNet derives the noun from or to (``payment`` -> ``pay``, ``summary`` ->
    ``summarize``)."""
    return tuple(lexicon().derived.get(noun, "").split())


def derived_nouns(verb: str) -> tuple[str, ...]:
    return tuple(lexicon().derived_nouns.get(verb, "").split())


_DANGER_ORDER = ("privilege", "destroy", "transfer", "read")


@functools.lru_cache(maxsize=65536)
def verb_class(lemma: str) -> str | None:
    """``read``, ``destroy``, ``transfer``, ``privilege`` or None: WordNet's class of the verb,
    or the most dangerous class of its everyday senses ("nuke" is "delete": destroy)."""
    classes = {lexicon().classes.get(lemma)}
    classes.update(lexicon().classes.get(sense) for sense in EVERYDAY_SENSES.get(lemma, ()))
    return next((name for name in _DANGER_ORDER if name in classes), None)


@functools.lru_cache(maxsize=65536)
def _senses(lemma: str) -> tuple[int, ...]:
    return tuple(int(sense) for sense in lexicon().verbs.get(lemma, "").split())


@functools.lru_cache(maxsize=65536)
def verb_similarity(asked: str, action: str) -> float:
    """How surely the verb ``asked`` names the action ``action`` (both lemmas):

    - 1.0 the same lemma;
    - 0.85 they share one of the first ``VERB_SENSES`` senses of both (``give_back`` and
      ``refund``; ``okay`` and ``approve``);
    - 0.7 one of the first two senses of ``asked`` is a more specific way of doing one of the
      first ``VERB_SENSES`` senses of ``action``, directly or through one intermediate verb (a
      troponym: ``e-mail`` is a way to ``send``, ``jot down`` to ``write``, ``offer`` to
      ``give``), or ``asked`` is the general verb one step above the action's first sense
      (``sign`` for ``countersign``);
    - for a verb of :data:`EVERYDAY_SENSES`: 0.85 when the action is one of its senses, 0.7
      when one of its senses is a WordNet synonym of the action;
    - 0.0 otherwise.
    """
    if asked == action:
        return 1.0
    if asked in EVERYDAY_SENSES:
        senses = EVERYDAY_SENSES[asked]
        if action in senses:
            return 0.85
        if any(_wordnet_similarity(sense, action) >= 0.85 for sense in senses):
            return 0.7
    return _wordnet_similarity(asked, action)


@functools.lru_cache(maxsize=65536)
def _wordnet_similarity(asked: str, action: str) -> float:
    if asked == action:
        return 1.0
    asked_senses, action_senses = _senses(asked), _senses(action)
    if not asked_senses or not action_senses:
        return 0.0
    if set(asked_senses[:VERB_SENSES]) & set(action_senses[:VERB_SENSES]):
        return 0.85
    targets = set(action_senses[:VERB_SENSES])
    frontier = set(asked_senses[:2])
    for _ in range(TROPONYM_DEPTH):
        frontier = {h for sense in frontier for h in _hypernyms(sense)}
        if targets & frontier:
            return 0.7
    # the asked verb is the general word for the action ("sign" for "countersign")
    if set(asked_senses[:VERB_SENSES]) & {h for s in action_senses[:1] for h in _hypernyms(s)}:
        return 0.7
    return 0.0


@functools.lru_cache(maxsize=65536)
def _hypernyms(sense: int) -> tuple[int, ...]:
    return tuple(int(h) for h in lexicon().verb_hypernyms[sense].split())
