"""Every adapter page's example runs as written, against the real stack.

Each page under ``docs/integrations/`` marks its copy-paste example with
``<!-- tested: tests/integrations/test_docs.py -->``. The example is executed unchanged, with
``AgentClient.from_environment()`` reading the variables a pod would get and ``model`` bound
to the framework's scripted model (the one name the page asks the reader to supply). The model
reads a document and pays an invoice (JIT); a test approver approves with ``kubectl agentauth
approve``; both results must reach the model.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.integrations import scripted
from tests.integrations.conftest import Stack
from tests.stack import ISSUER

DOCS = Path(__file__).resolve().parents[2] / "docs" / "integrations"
MARK = "<!-- tested: tests/integrations/test_docs.py -->"
JUSTIFICATION = "Invoice INV-42 is due today; finance asked me to pay it."
CALLS: list[scripted.Call] = [
    ("read_document", {"doc_id": "report-7"}, "c-read"),
    (
        "authorize_payment",
        {"amount": 120, "invoice": "INV-42", "justification": JUSTIFICATION},
        "c-pay",
    ),
]
EXPECTED = {
    "read_document": "contents of report-7",
    "authorize_payment": "authorized 120 EUR for INV-42",
}


def example(page: str) -> str:
    """The marked ```python block of ``docs/integrations/<page>.md``."""
    text = (DOCS / f"{page}.md").read_text()
    assert text.count(MARK) == 1, f"{page}.md must mark exactly one tested example"
    found = re.search(r"```python\n(.*?)\n```", text.split(MARK, 1)[1], re.DOTALL)
    assert found is not None, f"{page}.md: no python block after the mark"
    return found.group(1)


def _langchain() -> tuple[Any, Callable[[], dict[str, str]]]:
    model = scripted.langchain_model(CALLS)
    return model, lambda: scripted.langchain_results(model)


def _crewai() -> tuple[Any, Callable[[], dict[str, str]]]:
    model = scripted.ScriptedLLM(CALLS)
    return model, model.results


def _openai_agents() -> tuple[Any, Callable[[], dict[str, str]]]:
    model = scripted.ScriptedAgentsModel(CALLS)
    return model, model.results


def _agno() -> tuple[Any, Callable[[], dict[str, str]]]:
    model = scripted.ScriptedAgnoModel.playing(CALLS)
    return model, model.results


def _google_adk() -> tuple[Any, Callable[[], dict[str, str]]]:
    model = scripted.ScriptedLlm.playing(CALLS)
    return model, model.results


def _microsoft_agent_framework() -> tuple[Any, Callable[[], dict[str, str]]]:
    model = scripted.ScriptedChatClient(CALLS)
    return model, model.results


MODELS: dict[str, Callable[[], tuple[Any, Callable[[], dict[str, str]]]]] = {
    "langchain": _langchain,
    "crewai": _crewai,
    "openai_agents": _openai_agents,
    "agno": _agno,
    "google_adk": _google_adk,
    "microsoft_agent_framework": _microsoft_agent_framework,
}


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
@pytest.mark.parametrize("page", sorted(MODELS))
def test_page_example_runs(
    page: str, agentauth_stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Its own agent per page: an approval lasts its window and must not leak to the next page.
    agent = agentauth_stack.enroll(f"docs-{page.replace('_', '-')}")
    monkeypatch.setenv("AGENTAUTH_ISSUER", ISSUER)
    monkeypatch.setenv("AGENTAUTH_TOKEN_URL", agentauth_stack.token_url)
    monkeypatch.setenv("AGENTAUTH_TOKEN_FILE", str(agent.token_file))
    model, results = MODELS[page]()
    code = compile(example(page), str(DOCS / f"{page}.md"), "exec")
    with agent.decide_when_filed("payments.authorize") as approver:
        # The documentation's own code, unchanged: that is what this test is for.
        exec(code, {"__name__": f"docs_{page}", "model": model})  # noqa: S102
    assert approver.error is None, approver.error
    assert approver.result is not None and approver.result.returncode == 0, approver.result
    assert results() == EXPECTED
    (request,) = agent.access_requests()
    assert request["spec"]["justification"] == JUSTIFICATION
    assert request["status"]["phase"] == "Approved"
