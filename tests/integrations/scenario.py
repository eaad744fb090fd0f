"""The one scenario every framework test plays, so each adapter is held to the same outcome.

The scripted model asks, in one turn, for three tools: ``read_document`` (needs
``document.read``, granted Automatic), ``delete_database`` (needs ``db.delete``, granted to
nobody) and ``authorize_payment`` (needs ``payments.authorize``, granted with approval Required,
JIT, with the model's justification). A test approver approves the AccessRequest through
``kubectl agentauth approve``. The model must then read the document, the refusal, and the
payment's result; the refused tool must not have run.
"""

from __future__ import annotations

from typing import Any

from tests.integrations.conftest import Approver, EnrolledAgent

JUSTIFICATION = "Invoice INV-42 from ACME is due today; finance asked me to pay it."
DOCUMENT_RESULT = "contents of report-7"
REFUSAL = "not permitted: needs db.delete"
PAYMENT_RESULT = "authorized 120 EUR"

READ_ARGS: dict[str, Any] = {"doc_id": "report-7"}
DELETE_ARGS: dict[str, Any] = {"table": "invoices"}
PAY_ARGS: dict[str, Any] = {"amount": 120, "justification": JUSTIFICATION}

# The model's one turn of tool calls: (tool name, arguments, call id).
CALLS = [
    ("read_document", READ_ARGS, "c-read"),
    ("delete_database", DELETE_ARGS, "c-delete"),
    ("authorize_payment", PAY_ARGS, "c-pay"),
]
# A turn without JIT, where read_document declares no capability (the Ask API decides).
ASK_CALLS = CALLS[:2]
ASK_OUTCOME = {"read_document": DOCUMENT_RESULT, "delete_database": REFUSAL}


class Ledger:
    """What the tools really did (a refused tool must leave no trace here)."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def read_document(self, doc_id: str) -> str:
        self.calls.append(f"read {doc_id}")
        return f"contents of {doc_id}"

    def delete_database(self, table: str) -> str:
        self.calls.append(f"delete {table}")
        return f"deleted {table}"

    def authorize_payment(self, amount: int) -> str:
        self.calls.append(f"pay {amount}")
        return f"authorized {amount} EUR"


def assert_outcome(
    *, seen: dict[str, str], ledger: Ledger, approver: Approver, clerk: EnrolledAgent
) -> None:
    """``seen`` maps tool name -> the tool result text the model received."""
    assert approver.error is None, approver.error
    assert approver.result is not None and approver.result.returncode == 0, approver.result
    assert seen == {
        "read_document": DOCUMENT_RESULT,
        "delete_database": REFUSAL,
        "authorize_payment": PAYMENT_RESULT,
    }
    # Frameworks may run one turn's tools concurrently: order is theirs to choose.
    assert sorted(ledger.calls) == ["pay 120", "read report-7"]
    assert approver.request is not None
    name = approver.request["metadata"]["name"]
    (request,) = [r for r in clerk.access_requests() if r["metadata"]["name"] == name]
    assert request["spec"]["capabilities"] == ["payments.authorize"]
    assert request["spec"]["justification"] == JUSTIFICATION
    assert request["status"]["phase"] == "Approved"
    assert [a["user"] for a in request["status"]["approvals"]] == ["alice"]
