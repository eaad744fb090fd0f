"""The Ask matcher: corpus accuracy, fail-closed behaviour and the three kinds of answer."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml

from agentauth.domain import asking
from tests.domain import tokenkit
from tests.domain.tokenkit import NOW

CORPUS = Path(__file__).with_name("ask_corpus.yaml")


@pytest.fixture(scope="module")
def corpus() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(CORPUS.read_text())
    return data


@pytest.fixture(scope="module")
def catalog(corpus: dict[str, Any]) -> list[asking.CatalogEntry]:
    return [
        asking.CatalogEntry.build(
            name=e["name"], description=e["description"], examples=e["examples"]
        )
        for e in corpus["catalog"]
    ]


def accuracy(corpus: dict[str, Any], catalog: list[asking.CatalogEntry]) -> tuple[float, list[str]]:
    misses = []
    for item in corpus["questions"]:
        got = asking.match(item["q"], catalog).capability
        if got != item["expect"]:
            misses.append(f"{item['q']!r}: expected {item['expect']}, got {got}")
    return 1 - len(misses) / len(corpus["questions"]), misses


def test_corpus_is_large_enough_and_labels_exist(corpus: dict[str, Any]) -> None:
    names = {e["name"] for e in corpus["catalog"]}
    assert len(corpus["questions"]) >= 80
    assert {q["expect"] for q in corpus["questions"]} <= names | {None}


def test_corpus_accuracy_is_at_least_95_percent(
    corpus: dict[str, Any], catalog: list[asking.CatalogEntry]
) -> None:
    score, misses = accuracy(corpus, catalog)
    assert score >= 0.95, "\n".join(misses)


def test_unrelated_questions_are_never_confident(
    corpus: dict[str, Any], catalog: list[asking.CatalogEntry]
) -> None:
    for item in corpus["questions"]:
        if item["expect"] is None and item["q"] != "buy me a coffee machine":
            match = asking.match(item["q"], catalog)
            assert match.capability is None, item["q"]
            assert match.confidence < asking.CONFIDENCE_THRESHOLD


def test_matching_is_deterministic(catalog: list[asking.CatalogEntry]) -> None:
    answers = {asking.match("please pay the Acme invoice", catalog) for _ in range(5)}
    assert len(answers) == 1


def test_normalisation_applies_synonyms_and_stems() -> None:
    assert asking.normalise("Fetch the invoices") == ["read", "payments"]
    assert asking.normalise("remove old files") == ["delete", "old", "document"]
    assert asking.normalise("file a bug") == ["create", "tickets"]


GRANTS = [
    tokenkit.grant(
        "base",
        capabilities=[
            {
                "name": "document.read",
                "description": "Read documents",
                "examples": ["open the report"],
            },
            {
                "name": "payments.authorize",
                "description": "Pay invoices to vendors",
                "approval": "Required",
            },
        ],
    ),
    tokenkit.grant(
        "others",
        agents=["billing"],
        capabilities=[{"name": "payments.refund", "description": "Refund a payment"}],
    ),
]


def ask(question: str, *, requests: list[Any] | None = None) -> asking.AskAnswer:
    snapshot = tokenkit.snapshot(grants=GRANTS, access_requests=requests or [])
    agent = tokenkit.agent()
    match = asking.match(question, asking.catalog_from_grants(GRANTS))
    return asking.decide(
        capability=match.capability,
        confidence=match.confidence,
        candidates=match.candidates,
        explanation=match.explanation,
        agent_label="team-a/research",
        held=snapshot.held(agent, now=NOW),
        requests=snapshot.access_requests_of(agent),
        now=NOW,
    )


def test_held_automatic_capability_is_allowed() -> None:
    answer = ask("can I open the quarterly report document?")
    assert (answer.allowed, answer.capability, answer.approval_required) == (
        True,
        "document.read",
        False,
    )
    assert answer.reason == "document.read is granted by base"


def test_held_required_capability_needs_approval_until_approved() -> None:
    answer = ask("pay the vendor invoice")
    assert (answer.allowed, answer.capability, answer.approval_required) == (
        False,
        "payments.authorize",
        True,
    )
    assert (
        answer.reason == "payments.authorize requires approval: file an AccessRequest (grant base)"
    )
    approved = tokenkit.access_request(
        "ar-7", capabilities=["payments.authorize"], granted_until=NOW + timedelta(minutes=5)
    )
    answer = ask("pay the vendor invoice", requests=[approved])
    assert (answer.allowed, answer.approval_required) == (True, False)
    assert answer.reason.startswith("payments.authorize is approved by AccessRequest ar-7 until ")


def test_capability_of_another_agent_is_not_allowed() -> None:
    answer = ask("refund the payment")
    assert (answer.allowed, answer.capability) == (False, "payments.refund")
    assert answer.reason == "payments.refund is not granted to agent team-a/research"


def test_below_threshold_never_allowed_and_names_candidates() -> None:
    answer = ask("restart the cluster")
    assert answer.allowed is False
    assert answer.capability is None
    assert answer.confidence < asking.CONFIDENCE_THRESHOLD
    vague = ask("documents")
    assert vague.allowed is False
    assert vague.reason.startswith("no confident match; closest: document.read")
