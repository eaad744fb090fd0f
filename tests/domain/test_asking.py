"""The Ask API: corpus thresholds, fail-closed behaviour, clauses, approvals, bad input."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from agentauth.domain import asking, asklexicon
from tests.domain import askeval, tokenkit
from tests.domain.tokenkit import NOW

OWN = Path(__file__).with_name("ask_eval") / "own"

# -- the corpora -------------------------------------------------------------------------------


EVAL = OWN.parent

DEV_THRESHOLDS = {
    "own/dev.yaml": 0.66,
    "own/heldout.yaml": 0.66,
    "independent/dev_half.yaml": 0.62,
    "independent/heldout_half.yaml": 0.59,
    # Opened after one measurement (46.5 %, 0 unsafe, 2 approval-required answered as allowed):
    # both of those were a clause whose verb WordNet lacks merged into the clause before.
    "fresh/heldout.yaml": 0.46,
}
"""Least share right per development file, each agent alone and all together. The first
round's matcher scored 70.8 %, 70.8 % (1 unsafe), 63.3 % and 60.0 % on them; the second 79.2 %,
80.0 %, 68.7 % and 68.7 %; this one, where loose inferences no longer answer "allowed" and every
clause with an action must be covered, 66.9 %, 66.9 %, 62.0 % and 59.3 %, no unsafe answer and
no approval answered as allowed."""


@pytest.fixture(scope="module")
def dev_totals() -> dict[str, dict[str, askeval.Totals]]:
    return {name: askeval.run(EVAL / name, quiet=True) for name in DEV_THRESHOLDS}


@pytest.mark.parametrize("mode", ["alone", "together"])
@pytest.mark.parametrize("name", sorted(DEV_THRESHOLDS))
def test_dev_corpus_thresholds(
    dev_totals: dict[str, dict[str, askeval.Totals]], name: str, mode: str
) -> None:
    totals = dev_totals[name][mode]
    assert totals.unsafe == 0, totals.misses
    assert totals.approval_as_allowed == 0, totals.misses
    assert totals.right / totals.asked >= DEV_THRESHOLDS[name], "\n".join(totals.misses)


def test_a_heldout_file_is_not_tuned_on(tmp_path: Path) -> None:
    """The harness refuses to show the misses of a held-out file, unless the file says it is
    no longer held out (``held_out: false``, as the first round's held-out halves now do)."""
    (tmp_path / "profiles.yaml").write_text((OWN / "profiles.yaml").read_text())
    heldout = tmp_path / "heldout.yaml"
    heldout.write_text('questions:\n  - {profile: finance-clerk, q: "pay it", expect: null}\n')
    with pytest.raises(SystemExit, match="refusing to show misses of held-out file"):
        askeval.run(heldout, show_misses=True)
    assert askeval.is_held_out(heldout)
    assert not askeval.is_held_out(OWN / "heldout.yaml")
    assert not askeval.is_held_out(OWN.with_name("independent") / "heldout_half.yaml")


# -- the lexicon -------------------------------------------------------------------------------


def test_lexicon_lemmatises_with_wordnet() -> None:
    assert asklexicon.verb_lemmas("restarting") == ("restart",)
    assert asklexicon.verb_lemmas("escalated")[0] == "escalate"
    assert "ship" in asklexicon.verb_lemmas("shipped")
    assert asklexicon.verb_lemmas("ran") == ("run",)
    assert asklexicon.noun_lemmas("invoices") == ("invoice",)
    assert asklexicon.verb_lemmas("zzqx") == ()


def test_lexicon_synonyms_classes_and_derivations() -> None:
    assert asklexicon.verb_similarity("okay", "approve") == 0.85
    assert asklexicon.verb_similarity("give_back", "refund") == 0.85
    assert asklexicon.verb_similarity("delete", "read") == 0.0
    assert asklexicon.verb_class("delete") == "destroy"
    assert asklexicon.verb_class("show") == "read"
    assert asklexicon.verb_class("export") == "transfer"
    assert asklexicon.verb_class("grant") == "privilege"
    assert "pay" in asklexicon.derived_verbs("payment")
    assert asklexicon.is_person("customer")
    assert "WordNet 3.0 Copyright 2006 by" in asklexicon.lexicon_license()


# -- answers through the real models ----------------------------------------------------------

FINANCE = [
    {
        "name": "invoices.read",
        "description": "Read invoices and their line items",
        "examples": ["show me invoice INV-2043"],
    },
    {
        "name": "refunds.issue",
        "description": "Issue a refund to a customer",
        "approval": "Required",
    },
    {"name": "reports.generate", "description": "Generate financial reports"},
    {"name": "deployments.restart", "description": "Restart a deployment"},
]


def ask(
    question: str,
    *,
    requests: list[Any] | None = None,
    others: list[Any] | None = None,
) -> asking.AskAnswer:
    grants = [tokenkit.grant("base", capabilities=FINANCE), *(others or [])]
    snapshot = tokenkit.snapshot(grants=grants, access_requests=requests or [])
    return asking.answer_question(question, agent=tokenkit.agent(), snapshot=snapshot, now=NOW)


def assert_inferred(answer: asking.AskAnswer, capability: str, inference: str) -> None:
    """A match that depends on a loose inference is "not covered", suggesting the capability
    the agent may then ask about by its exact name."""
    clause = next(c for c in answer.clauses if c.decision == "not_covered")
    assert (answer.decision, answer.allowed) == ("not_covered", False), answer.reason
    assert clause.candidates[0].capability == capability, clause.candidates
    assert inference in clause.reason, clause.reason
    assert f'"action": "{capability}"' in clause.reason


def test_a_capability_verb_is_understood_with_its_inflections() -> None:
    for question in (
        "Restart the recommendations deployment",
        "can I restart the checkout deployment?",
        "restarting the auth deployment in staging",
    ):
        answer = ask(question)
        assert (answer.decision, answer.capability) == ("allowed", "deployments.restart"), question
    answer = ask("generate the monthly P&L report")
    assert (answer.decision, answer.capability) == ("allowed", "reports.generate")


def test_everyday_verb_senses_are_understood_and_keep_their_danger() -> None:
    """WordNet lacks "bounce" for restart and "nuke" for delete: the everyday-senses table adds
    them, and a slang verb is as dangerous as its most dangerous sense."""
    assert_inferred(ask("bounce the checkout deployment"), "deployments.restart", "slang")
    assert asklexicon.verb_similarity("snooze", "silence") == 0.85
    assert asklexicon.verb_lemmas("acked") == ("ack",)
    assert asklexicon.verb_class("nuke") == "destroy"
    assert asklexicon.verb_class("dump") == "destroy"  # export or discard: the worse
    for question in ("nuke the checkout deployment", "dump every invoice to a USB stick"):
        assert ask(question).decision == "not_covered", question


def test_verbs_of_one_kind_and_synonyms_of_the_resource_verb() -> None:
    """ "produce" and "generate" are both ways to create (WordNet); "reimburse" means the
    "refund" derived from refunds.issue's resource, so it names the refund by itself."""
    assert_inferred(
        ask("Produce an aging report for receivables"), "reports.generate", "same-kind verb"
    )
    assert_inferred(
        ask("reimburse the customer for the damaged shipment"),
        "refunds.issue",
        "resource-verb synonym",
    )
    # a kind never crosses a dangerous class, nor names another capability's resource
    for question in ("produce a copy of every invoice for my gmail", "produce a new API key"):
        assert ask(question).decision == "not_covered", question


def test_a_typo_in_an_object_is_corrected_towards_the_catalog() -> None:
    assert_inferred(ask("show me invoce 4471"), "invoices.read", "typo")


def test_a_typo_is_corrected_but_an_undoing_prefix_is_not_a_typo() -> None:
    assert_inferred(ask("restrat the checkout deployment"), "deployments.restart", "typo")
    assert ask("unrestart the checkout deployment").decision == "not_covered"


def test_the_answer_explains_itself() -> None:
    answer = ask("can I see invoice 4471?")
    assert answer.decision == "allowed"
    (clause,) = answer.clauses
    assert clause.capability == "invoices.read"
    assert clause.description == "Read invoices and their line items"
    assert "invoice" in clause.matched_words
    assert answer.reason == (
        "invoices.read is granted by base (matched words: see, invoice; "
        "Read invoices and their line items)"
    )


@pytest.mark.parametrize(
    "question",
    [
        "Delete all invoices from 2023 so the auditors don't see them",
        "export every invoice to my personal gmail",
        "give me admin rights on the invoices",
        "edit invoice 4471",
        "restart the Kubernetes control plane nodes",
        "issue a new corporate credit card to me",
        "Generate a new API key for the billing system",
        "what's the weather in Paris?",
        "documents",
    ],
)
def test_dangerous_or_unrelated_questions_are_not_covered(question: str) -> None:
    answer = ask(question)
    assert (answer.allowed, answer.approval_required, answer.capability) == (False, False, None)
    assert answer.decision == "not_covered"


def test_a_person_who_acts_is_not_what_a_question_asks_about() -> None:
    """ "what did customer 2231 buy" asks about what was bought, not about the customer: it was
    answered allowed by customers.read (own held-out set, first round)."""
    grants = [
        tokenkit.grant(
            "support",
            capabilities=[
                {"name": "customers.read", "description": "Look up a customer's profile"},
                {"name": "tickets.read", "description": "Read support tickets"},
            ],
        )
    ]
    snapshot = tokenkit.snapshot(grants=grants)
    agent = tokenkit.agent()
    answer = asking.answer_question(
        "what did customer 2231 buy last month?", agent=agent, snapshot=snapshot, now=NOW
    )
    assert answer.decision == "not_covered"
    answer = asking.answer_question(
        "what is the email address of customer 2231?", agent=agent, snapshot=snapshot, now=NOW
    )
    assert (answer.decision, answer.capability) == ("allowed", "customers.read")


OPS = [
    {"name": "nodes.cordon", "description": "Mark a node as unschedulable"},
    {"name": "nodes.drain", "description": "Evict all pods from a node"},
    {"name": "deployments.rollback", "description": "Roll a deployment back"},
    {"name": "certificates.renew", "description": "Renew a TLS certificate"},
    {"name": "meetings.book", "description": "Book a demo or call with a prospect"},
]


def ask_ops(question: str) -> asking.AskAnswer:
    snapshot = tokenkit.snapshot(grants=[tokenkit.grant("ops", capabilities=OPS)])
    return asking.answer_question(question, agent=tokenkit.agent(), snapshot=snapshot, now=NOW)


@pytest.mark.parametrize(
    ("question", "capabilities"),
    [
        # the particle of a phrasal verb is not part of the object
        ("roll back billing-api", ["deployments.rollback"]),
        # WordNet files "meeting" under social groups; what the description books still counts
        ("book a demo with the Cyberdyne team next Wednesday", ["meetings.book"]),
        # a particle closes the object; "under" opens a phrase that is not the object
        ("cordon the node over there under the old rack", ["nodes.cordon"]),
        # several names make many capitals, not a title-cased question
        ("cordon Worker Nine for Anna Lopez and Dr. Weber", ["nodes.cordon"]),
    ],
)
def test_objects_named_by_pronouns_names_and_descriptions(
    question: str, capabilities: list[str]
) -> None:
    answer = ask_ops(question)
    assert answer.decision == "allowed", answer.reason
    assert [c.capability for c in answer.clauses] == capabilities


@pytest.mark.parametrize(
    ("question", "allowed", "capability"),
    [
        # a pronoun for a name: "it" is read as the object of the clause before, an inference
        ("cordon worker-9 and then drain it", ["nodes.cordon"], "nodes.drain"),
        # a pronoun may stand for what the statement before it is about: an inference too
        ("the certificate on api-gateway expires in 3 days, refresh it", [], "certificates.renew"),
    ],
)
def test_a_pronoun_object_is_only_suggested(
    question: str, allowed: list[str], capability: str
) -> None:
    answer = ask_ops(question)
    assert [c.capability for c in answer.clauses if c.decision == "allowed"] == allowed
    assert_inferred(answer, capability, "pronoun")


def test_a_resource_is_named_by_the_nouns_of_its_acts() -> None:
    """ "the booking" is what appointments.book makes, so appointments.cancel acts on it;
    "the last deploy" comes from the verb of "deployment"."""
    catalog = [
        {"name": "appointments.book", "description": "Book an appointment for a patient"},
        {"name": "appointments.cancel", "description": "Cancel a patient's appointment"},
        {"name": "deployments.rollback", "description": "Roll a deployment back"},
    ]
    snapshot = tokenkit.snapshot(grants=[tokenkit.grant("clinic", capabilities=catalog)])
    for question, capability in (
        ("cancel the booking for Friday", "appointments.cancel"),
        ("roll back the last deploy of billing-api", "deployments.rollback"),
    ):
        answer = asking.answer_question(
            question, agent=tokenkit.agent(), snapshot=snapshot, now=NOW
        )
        assert_inferred(answer, capability, "related noun")


def test_every_clause_counts_and_the_most_restrictive_wins() -> None:
    answer = ask("look up invoice 7712 and refund the 20 EUR overcharge")
    assert answer.decision == "approval_required"
    assert answer.capability == "refunds.issue"
    assert [(c.capability, c.decision) for c in answer.clauses] == [
        ("invoices.read", "allowed"),
        ("refunds.issue", "approval_required"),
    ]
    assert answer.reason.startswith("'look up invoice 7712': invoices.read is granted by base")
    uncovered = ask("read invoice 90 and delete the customer's account")
    assert uncovered.decision == "not_covered"
    assert [c.decision for c in uncovered.clauses] == ["allowed", "not_covered"]


def test_a_pronoun_acts_on_the_object_of_the_clause_before() -> None:
    answer = ask("look up invoice 7712 and then refund it")
    assert [(c.capability, c.decision) for c in answer.clauses] == [
        ("invoices.read", "allowed"),
        (None, "not_covered"),
    ]
    assert_inferred(answer, "refunds.issue", "pronoun")


def test_a_statement_of_what_is_happening_asks_for_nothing() -> None:
    """ "it's overspending" says why; "I'm restarting X" says what the asker is about to do."""
    answer = ask("restart the checkout deployment, it's crashing")
    assert (answer.decision, answer.capability) == ("allowed", "deployments.restart")
    assert len(answer.clauses) == 1
    answer = ask("I'm restarting the checkout deployment now")
    assert (answer.decision, answer.capability) == ("allowed", "deployments.restart")


def test_telling_the_asker_is_not_an_action() -> None:
    answer = ask("look up invoice 7712 and tell me the total")
    assert (answer.decision, answer.capability) == ("allowed", "invoices.read")
    assert len(answer.clauses) == 1


def test_approval_required_until_approved_and_says_until_when() -> None:
    answer = ask("refund order 7781")
    assert (answer.allowed, answer.capability, answer.approval_required) == (
        False,
        "refunds.issue",
        True,
    )
    assert answer.reason.startswith(
        "refunds.issue requires approval: file an AccessRequest with POST /v1/access-requests "
        "(grant base)"
    )
    assert answer.body()["approval_request"] == {
        "method": "POST",
        "path": "/v1/access-requests",
        "body": {
            "capabilities": ["refunds.issue"],
            "justification": "<why the agent needs this now>",
        },
    }
    until = NOW + timedelta(minutes=5)
    approved = tokenkit.access_request(
        "ar-7",
        capabilities=["refunds.issue"],
        granted_until=until,
        under=[tokenkit.grant("base", capabilities=FINANCE)],
    )
    answer = ask("refund order 7781", requests=[approved])
    assert (answer.allowed, answer.approval_required, answer.approved_until) == (True, False, until)
    assert answer.reason.startswith(
        f"refunds.issue is approved by AccessRequest ar-7 until {until.isoformat()}"
    )
    assert answer.body()["approved_until"] == until.isoformat()


def test_what_else_the_namespace_holds_never_changes_the_answer() -> None:
    others = [
        tokenkit.grant(
            "others",
            agents=["billing"],
            capabilities=[
                {"name": "invoices.delete", "description": "Delete invoices"},
                {"name": "customers.delete", "description": "Delete a customer account"},
            ],
        )
    ]
    for question in ("delete all invoices", "can I see invoice 4471?", "refund order 7781"):
        assert ask(question) == ask(question, others=others), question
    assert ask("delete all invoices", others=others).capability is None


def test_structured_action_skips_matching() -> None:
    snapshot = tokenkit.snapshot(grants=[tokenkit.grant("base", capabilities=FINANCE)])
    answer = asking.answer_question(
        None, action="refunds.issue", agent=tokenkit.agent(), snapshot=snapshot, now=NOW
    )
    assert (answer.capability, answer.approval_required, answer.confidence) == (
        "refunds.issue",
        True,
        1.0,
    )
    missing = asking.answer_question(
        None, action="payments.refund", agent=tokenkit.agent(), snapshot=snapshot, now=NOW
    )
    assert (missing.allowed, missing.capability, missing.reason) == (
        False,
        "payments.refund",
        "payments.refund is not granted to agent team-a/research",
    )


def test_matching_is_deterministic() -> None:
    answers = {ask("refund the 45 USD on order 7781") for _ in range(5)}
    assert len(answers) == 1


# -- bad input -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("question", "reason"),
    [
        ("¿Puedo reiniciar el despliegue de checkout?", "the question is not English text"),
        ("Kann ich die Rechnung von Acme bezahlen?", "the question is not English text"),
        ("重启部署", "the question is not English text"),
        ("!!! ??? ...", "the question is not English text"),
        ("kann ich bezahlen", "the question is not English text"),
        ("asdf qwer zxcv", "the question is not English text"),
        ("invoice " * 250, "no capability of the agent covers 'invoice'"),
    ],
)
def test_other_languages_and_noise_are_not_covered(question: str, reason: str) -> None:
    answer = ask(question)
    assert answer.decision == "not_covered"
    assert answer.reason.startswith(reason)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"question": ""}, 'give either "question" or "action"'),
        ({"question": " \n\t "}, 'give either "question" or "action"'),
        ({"question": "x" * 2001}, "question exceeds 2000 characters"),
        (
            {"question": "read\x00 invoice 7"},
            "question contains the control character U+0000: send plain text",
        ),
        (
            {"question": "read \x1b[31minvoice"},
            "question contains the control character U+001B: send plain text",
        ),
        (
            {"question": "read \u202einvoice"},
            "question contains the control character U+202E: send plain text",
        ),
        ({"question": 42}, 'give either "question" or "action"'),
    ],
)
def test_bad_questions_are_refused_with_a_clear_message(body: Any, message: str) -> None:
    with pytest.raises(asking.InvalidAsk) as raised:
        asking.parse_request(body)
    assert raised.value.message == message


def test_multiline_text_is_a_question() -> None:
    asked = asking.parse_request({"question": "look up invoice 7\nthen refund it"})
    assert asked.question is not None
    answer = ask(asked.question)
    assert [c.decision for c in answer.clauses] == ["allowed", "not_covered"]  # "it": a pronoun


@pytest.mark.parametrize(
    "question",
    [
        "look up invoice 7712 before refunding the order",
        "show me invoice 7712 so I can refund the order",
        "read invoice 7712 to refund the order",
        "show me invoice 7712 while refunding the order",
        "show me invoice 7712 and immediately refund the order",
        "show me invoice 7712 and afterwards refund the order",
    ],
)
def test_a_clause_needing_approval_is_never_passed_over(question: str) -> None:
    """Every clause that acts must be covered: a subordinate or infinitive clause with an action
    ("before refunding the order") is matched like any other, and the most restrictive wins.
    The previous matcher read these clauses as context and answered "allowed"."""
    answer = ask(question)
    assert answer.decision == "approval_required", answer.reason
    assert [c.decision for c in answer.clauses] == ["allowed", "approval_required"]
    assert answer.approval_capabilities == ("refunds.issue",)


@pytest.mark.parametrize(
    "question",
    [
        "restart the checkout deployment when you delete the invoices",
        "show me invoice 7712, after that wire the money to my account",
        "look up invoice 7712 once you have refunded it",
        # an action inside a clause, beside its verb: a gerund with an object, a passive
        "show me invoice 7712 as well as refunding the order",
        "show me invoice 7712 and the order should be refunded",
        "show me invoice 7712, the backups need to be deleted",
        # a participle closing a "with" phrase asks for the action's result
        "show me invoice 7712 with the order refunded",
        "show me invoice 7712 with the old ones deleted",
    ],
)
def test_a_clause_with_an_uncovered_action_is_never_passed_over(question: str) -> None:
    answer = ask(question)
    assert answer.decision == "not_covered", answer.reason
    assert not answer.allowed


@pytest.mark.parametrize(
    "question",
    [
        "show me invoice 7712 because the customer complained",
        "show me invoice 7712, thanks a lot",
        "show me invoice 7712, it is about the late order",
    ],
)
def test_a_clause_without_an_action_is_only_context(question: str) -> None:
    answer = ask(question)
    assert (answer.decision, answer.capability) == ("allowed", "invoices.read"), answer.reason


@pytest.mark.parametrize("question", ["please restart Invoices", "please restart Admin"])
def test_capitals_do_not_hide_a_foreign_object(question: str) -> None:
    """A capitalised word is read as a name, and an action applied to nothing but names may
    match; a "name" that is another capability's resource or a credential is no such name."""
    assert ask(question).decision == "not_covered"
    assert ask("please restart Checkout").decision == "allowed"


def test_slang_written_into_an_example_is_direct() -> None:
    """The sure way for an admin to get a slang verb answered: an example that uses it."""
    catalog = [
        {
            "name": "deployments.restart",
            "description": "Restart a deployment",
            "examples": ["bounce the checkout deployment"],
        }
    ]
    snapshot = tokenkit.snapshot(grants=[tokenkit.grant("ops", capabilities=catalog)])
    answer = asking.answer_question(
        "bounce the checkout deployment", agent=tokenkit.agent(), snapshot=snapshot, now=NOW
    )
    assert (answer.decision, answer.capability) == ("allowed", "deployments.restart")


LOGISTICS = [
    {"name": "shipments.track", "description": "Look up where a shipment is and its status"},
    {
        "name": "shipments.reroute",
        "description": "Send a shipment to a different destination",
        "approval": "Required",
    },
]


@pytest.mark.parametrize(
    "question",
    [
        "track shipment 3342 and reroute it to the Antwerp depot",
        "track shipment 3342 and if it's stuck, reroute it to the Antwerp depot",
        "track shipment 3342 and then reroute the truck",
        "show me invoice 7712 and then backfill it for last week",
    ],
)
def test_a_clause_whose_verb_the_lexicon_lacks_is_never_merged_away(question: str) -> None:
    """ "reroute" and "backfill" are not in WordNet: after "and" or a comma, such a word followed
    by an object starts a clause of its own, which must be covered. The previous matcher merged
    it into the clause before and answered that clause alone: allowed."""
    answer = ask(question, others=[tokenkit.grant("logistics", capabilities=LOGISTICS)])
    assert not answer.allowed, answer.reason
    assert answer.decision in ("not_covered", "approval_required")
    assert len(answer.clauses) == 2
