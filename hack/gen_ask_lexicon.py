#!/usr/bin/env python3
"""Generate ``operator/agentauth/domain/asklexicon.json.gz`` from WordNet 3.0 (run once, commit).

The Ask matcher (``agentauth.domain.asking``) needs English lemmas, synonyms and a few verb classes.
They come from Princeton WordNet 3.0, read here from its dict files (Debian package
``wordnet-base``: ``/usr/share/wordnet``, or ``--wordnet DIR``), reduced to what the matcher uses,
and shipped inside the package: nothing is downloaded at run time and the operator image needs no
Debian package. WordNet's licence (below, also in the data file) permits redistribution with its
notice.

What is kept:

- ``verbs``: every verb lemma (phrasal verbs such as ``look_up`` included) with its synsets in
  WordNet's sense order (most frequent first), as indexes into ``verb_synsets``;
- ``verb_synsets``: each verb synset's lemmas and its hypernyms (indexes);
- ``nouns``: every single-word noun lemma and two-word compound with the lemmas of its first
  ``NOUN_SENSES`` synsets (its synonyms);
- ``derived``: morphological derivations between noun and verb lemmas (``refund`` <-> ``refund``,
  ``summary`` -> ``summarize``, ``payment`` -> ``pay``), from WordNet's ``+`` pointers;
- ``noun_hypernyms``: what each noun's first sense is a kind of, two steps up (``contract`` ->
  ``agreement``, ``document``);
- ``times``: nouns whose first sense is a time (``tomorrow``, ``friday``, ``week``);
- ``persons``: noun lemmas whose first sense is a person or an organisation (``customer``,
  ``vendor``, ``team``): the matcher treats them as who an action is for, not what it acts on;
- ``verb_exceptions`` / ``noun_exceptions``: irregular inflections (``ran`` -> ``run``, ``mice``
  -> ``mouse``), WordNet's ``verb.exc`` / ``noun.exc``;
- ``classes``: verb lemma -> class, for the classes the matcher must keep apart (``read``: looking
  at something without changing it; ``destroy``: deleting, cancelling, disabling, revoking;
  ``transfer``: moving data or money out: export, upload, leak, publish, forward;
  ``privilege``: granting rights or roles). A class is the closure of a few root senses named
  below over WordNet synonyms and troponyms (more specific ways of doing it), counting a lemma only
  when the sense is among its first ``CLASS_SENSES`` senses (a troponym: its first sense), so
  that a rare sense ("edit" as "delete") does not move a common verb into a class.

Usage: ``python hack/gen_ask_lexicon.py [--wordnet /usr/share/wordnet] [--check]``.
"""

from __future__ import annotations

import argparse
import gzip
import json
import sys
from collections import defaultdict
from pathlib import Path

OUT = Path(__file__).resolve().parents[1] / "operator/agentauth/domain/asklexicon.json.gz"
NOUN_SENSES = 3
CLASS_SENSES = 2
TROPONYM_DEPTH = 1
HYPERNYM_DEPTH = 2

WORDNET_LICENSE = """WordNet Release 3.0. This software and database is being provided to you, the
LICENSEE, by Princeton University under the following license. By obtaining, using and/or copying
this software and database, you agree that you have read, understood, and will comply with these
terms and conditions.: Permission to use, copy, modify and distribute this software and database
and its documentation for any purpose and without fee or royalty is hereby granted, provided that
you agree to comply with the following copyright notice and statements, including the disclaimer,
and that the same appear on ALL copies of the software, database and documentation, including
modifications that you make for internal use or for distribution. WordNet 3.0 Copyright 2006 by
Princeton University. All rights reserved. THIS SOFTWARE AND DATABASE IS PROVIDED "AS IS" AND
PRINCETON UNIVERSITY MAKES NO REPRESENTATIONS OR WARRANTIES, EXPRESS OR IMPLIED. BY WAY OF
EXAMPLE, BUT NOT LIMITATION, PRINCETON UNIVERSITY MAKES NO REPRESENTATIONS OR WARRANTIES OF
MERCHANT- ABILITY OR FITNESS FOR ANY PARTICULAR PURPOSE OR THAT THE USE OF THE LICENSED SOFTWARE,
DATABASE OR DOCUMENTATION WILL NOT INFRINGE ANY THIRD PARTY PATENTS, COPYRIGHTS, TRADEMARKS OR
OTHER RIGHTS. The name of Princeton University or Princeton may not be used in advertising or
publicity pertaining to distribution of the software and/or database. Title to copyright in this
software, database and any associated documentation shall at all times remain with Princeton
University and LICENSEE agrees to preserve same."""

# Roots whose troponyms are too broad to follow ("end, terminate" covers "finish", "complete").
LEMMA_ONLY_ROOTS = frozenset({("terminate", 1)})
# Roots that bring only their own lemma: their synonyms are other acts ("show" ~ "present",
# "retrieve" ~ "recover", "fetch" ~ "bring").
WORD_ONLY_ROOTS = frozenset({("show", 1), ("retrieve", 1), ("fetch", 1), ("display", 1)})
# Root senses of each class, as (lemma, sense number in WordNet's order). The lemmas of these
# synsets and of their troponyms are in the class.
CLASS_ROOTS: dict[str, tuple[tuple[str, int], ...]] = {
    "read": (
        ("read", 1),
        ("see", 1),
        ("look", 1),
        ("view", 2),
        ("watch", 1),
        ("examine", 1),
        ("examine", 2),
        ("inspect", 1),
        ("check", 1),
        ("review", 1),
        ("consult", 2),
        ("search", 1),
        ("search", 2),
        ("browse", 3),
        ("show", 1),
        ("display", 1),
        ("list", 1),
        ("query", 1),
        ("monitor", 1),
        ("fetch", 1),
        ("retrieve", 1),
        ("find", 2),
        ("find_out", 1),
        ("scan", 1),
        ("peruse", 1),
        ("skim", 1),
    ),
    "destroy": (
        ("delete", 1),
        ("delete", 2),
        ("erase", 1),
        ("remove", 1),
        ("destroy", 1),
        ("destroy", 2),
        ("kill", 1),
        ("cancel", 1),
        ("cancel", 5),
        ("invalidate", 1),
        ("void", 1),
        ("annul", 1),
        ("revoke", 1),
        ("abolish", 1),
        ("terminate", 1),
        ("discard", 1),
        ("purge", 1),
        ("wipe_out", 1),
        ("disable", 1),
        ("deactivate", 1),
        ("shut_down", 1),
        ("turn_off", 1),
        ("drop", 1),
        ("scrap", 1),
        ("obliterate", 1),
        ("ban", 1),
        ("block", 1),
        ("suspend", 1),
        ("reject", 1),
        ("reject", 2),
        ("disapprove", 1),
        ("deny", 1),
        ("refuse", 1),
        ("overwrite", 1),
    ),
    "transfer": (
        ("export", 1),
        ("upload", 1),
        ("leak", 1),
        ("publish", 1),
        ("post", 1),
        ("forward", 1),
        ("transfer", 1),
        ("transmit", 1),
        ("disclose", 1),
        ("reveal", 1),
        ("expose", 1),
        ("copy", 1),
        ("download", 1),
        ("share", 1),
        ("sell", 1),
        ("send", 1),
        ("mail", 1),
        ("email", 1),
        ("broadcast", 1),
    ),
    "privilege": (
        ("grant", 1),
        ("empower", 1),
        ("authorize", 1),
        ("promote", 1),
        ("elevate", 1),
        ("appoint", 1),
        ("enroll", 1),
        ("impersonate", 1),
        ("escalate", 1),
    ),
}


def read_index(root: Path, pos: str) -> dict[str, list[str]]:
    """lemma -> synset offsets in sense order (``index.<pos>``)."""
    index: dict[str, list[str]] = {}
    for line in (root / f"index.{pos}").read_text(encoding="latin-1").splitlines():
        if line.startswith(" "):
            continue
        fields = line.split()
        pointer_count = int(fields[3])
        index[fields[0]] = fields[4 + pointer_count + 2 :]
    return index


def read_data(root: Path, pos: str) -> dict[str, dict[str, object]]:
    """offset -> {words, pointers} (``data.<pos>``)."""
    data: dict[str, dict[str, object]] = {}
    for line in (root / f"data.{pos}").read_text(encoding="latin-1").splitlines():
        if line.startswith(" "):
            continue
        fields = line.partition("|")[0].split()
        word_count = int(fields[3], 16)
        words = [fields[4 + 2 * i].lower() for i in range(word_count)]
        i = 4 + 2 * word_count
        pointers = []
        for _ in range(int(fields[i])):
            symbol, offset, target_pos, numbers = fields[i + 1 : i + 5]
            pointers.append(
                (symbol, offset, target_pos, int(numbers[:2], 16), int(numbers[2:], 16))
            )
            i += 4
        data[fields[0]] = {"words": words, "pointers": pointers}
    return data


def read_exceptions(root: Path, pos: str) -> dict[str, str]:
    found: dict[str, str] = {}
    for line in (root / f"{pos}.exc").read_text(encoding="latin-1").splitlines():
        fields = line.split()
        if len(fields) >= 2 and fields[0] not in found:
            found[fields[0]] = fields[1]
    return found


def strip_marker(word: str) -> str:
    """Adjective markers such as ``(a)`` never occur in verbs/nouns, but be safe."""
    return word.split("(")[0]


def build(root: Path) -> dict[str, object]:
    verb_index, noun_index = read_index(root, "verb"), read_index(root, "noun")
    verb_data, noun_data = read_data(root, "verb"), read_data(root, "noun")

    verb_ids = {offset: n for n, offset in enumerate(sorted(verb_data))}
    verb_synsets = []
    troponyms: defaultdict[str, list[str]] = defaultdict(list)
    for offset in sorted(verb_data):
        entry = verb_data[offset]
        hypernyms = [p[1] for p in entry["pointers"] if p[0] == "@"]  # type: ignore[union-attr]
        for hypernym in hypernyms:
            troponyms[hypernym].append(offset)
        verb_synsets.append(
            [[strip_marker(w) for w in entry["words"]], [verb_ids[h] for h in hypernyms]]  # type: ignore[union-attr]
        )
    verbs = {lemma: [verb_ids[o] for o in offsets] for lemma, offsets in verb_index.items()}

    nouns: dict[str, list[str]] = {}
    for lemma, offsets in noun_index.items():
        if lemma.count("_") > 1 or not lemma.replace("_", "").replace("-", "").isalpha():
            continue
        synonyms: list[str] = []
        for offset in offsets[:NOUN_SENSES]:
            for word in noun_data[offset]["words"]:  # type: ignore[union-attr]
                word = strip_marker(word)
                if word != lemma and word not in synonyms and "_" not in word:
                    synonyms.append(word)
        nouns[lemma] = synonyms

    # derivations (noun lemma <-> verb lemma), from the first senses of the noun only
    derived: defaultdict[str, set[str]] = defaultdict(set)
    for lemma, offsets in noun_index.items():
        if "_" in lemma:
            continue
        for offset in offsets[:NOUN_SENSES]:
            entry = noun_data[offset]
            words = entry["words"]  # type: ignore[assignment]
            for symbol, target, target_pos, source, target_word in entry["pointers"]:  # type: ignore[attr-defined]
                if symbol != "+" or target_pos != "v":
                    continue
                if source and words[source - 1] != lemma:  # type: ignore[index]
                    continue
                verb = verb_data[target]["words"][target_word - 1]  # type: ignore[index]
                if "_" not in verb:
                    derived[lemma].add(strip_marker(verb))

    # nouns whose first sense descends from person.n.01 or organization.n.01 / social_group.n.01
    agent_roots = {noun_index["person"][0], noun_index["organization"][0]}
    agent_roots.add(noun_index["social_group"][0])

    def is_agentive(offset: str, seen: set[str]) -> bool:
        if offset in agent_roots:
            return True
        seen.add(offset)
        return any(
            is_agentive(target, seen)
            for symbol, target, *_ in noun_data[offset]["pointers"]  # type: ignore[attr-defined]
            if symbol in ("@", "@i") and target not in seen
        )

    # nouns whose first sense is a time ("tomorrow", "friday", "morning", "week"): never objects
    time_roots = {noun_index[w][0] for w in ("time_period", "time_unit", "time")}

    def is_time(offset: str, seen: set[str]) -> bool:
        if offset in time_roots:
            return True
        seen.add(offset)
        return any(
            is_time(target, seen)
            for symbol, target, *_ in noun_data[offset]["pointers"]  # type: ignore[attr-defined]
            if symbol in ("@", "@i") and target not in seen
        )

    times = sorted(
        lemma
        for lemma, offsets in noun_index.items()
        if lemma in nouns and "_" not in lemma and is_time(offsets[0], set())
    )

    # what each noun's first sense is a kind of, two steps up ("contract" -> "agreement")
    noun_hypernyms: dict[str, list[str]] = {}
    for lemma, offsets in noun_index.items():
        if lemma not in nouns or "_" in lemma:
            continue
        found_words: list[str] = []
        frontier = [offsets[0]]
        for _ in range(HYPERNYM_DEPTH):
            following = []
            for offset in frontier:
                for symbol, target, *_ in noun_data[offset]["pointers"]:  # type: ignore[attr-defined]
                    if symbol in ("@", "@i"):
                        following.append(target)
                        for word in noun_data[target]["words"]:  # type: ignore[union-attr]
                            if "_" not in word and word not in found_words:
                                found_words.append(strip_marker(word))
            frontier = following
        noun_hypernyms[lemma] = found_words

    persons = sorted(
        lemma
        for lemma, offsets in noun_index.items()
        if lemma in nouns and "_" not in lemma and is_agentive(offsets[0], set())
    )

    classes: dict[str, str] = {}
    for name, roots in CLASS_ROOTS.items():
        members: set[str] = set()
        for lemma, sense in roots:
            offsets = verb_index.get(lemma, [])
            if len(offsets) < sense:
                raise SystemExit(f"{lemma} has no verb sense {sense}")
            if (lemma, sense) in WORD_ONLY_ROOTS:
                members.add(lemma)
                continue
            frontier, depth = [offsets[sense - 1]], 0
            while frontier and depth <= TROPONYM_DEPTH:
                following: list[str] = []
                for offset in frontier:
                    for word in verb_data[offset]["words"]:  # type: ignore[union-attr]
                        word = strip_marker(word)
                        senses = CLASS_SENSES if depth == 0 else 1
                        if offset in verb_index.get(word, [])[:senses] or word == lemma:
                            members.add(word)
                    if (lemma, sense) not in LEMMA_ONLY_ROOTS:
                        following.extend(troponyms.get(offset, []))
                frontier, depth = following, depth + 1
        for word in sorted(members):
            # a verb in two classes keeps the first: read < destroy < transfer < privilege would
            # let a destructive verb read as a read; the most dangerous class wins instead
            order = ["privilege", "destroy", "transfer", "read"]
            current = classes.get(word)
            if current is None or order.index(name) < order.index(current):
                classes[word] = name

    return {
        "source": "Princeton WordNet 3.0 (wordnet-base), reduced by hack/gen_ask_lexicon.py",
        "license": WORDNET_LICENSE,
        "verbs": verbs,
        "verb_synsets": verb_synsets,
        "nouns": nouns,
        "derived": {k: sorted(v) for k, v in sorted(derived.items())},
        "persons": persons,
        "times": times,
        "noun_hypernyms": noun_hypernyms,
        "verb_exceptions": read_exceptions(root, "verb"),
        "noun_exceptions": read_exceptions(root, "noun"),
        "classes": dict(sorted(classes.items())),
    }


def encode(data: dict[str, object]) -> bytes:
    text = json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return gzip.compress(text.encode(), compresslevel=9, mtime=0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--wordnet", type=Path, default=Path("/usr/share/wordnet"))
    parser.add_argument("--check", action="store_true", help="fail if the committed file differs")
    args = parser.parse_args(argv)
    payload = encode(build(args.wordnet))
    if args.check:
        if not OUT.exists() or OUT.read_bytes() != payload:
            print(f"{OUT} is not what {Path(__file__).name} generates", file=sys.stderr)
            return 1
        return 0
    OUT.write_bytes(payload)
    print(f"wrote {OUT} ({len(payload)} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
