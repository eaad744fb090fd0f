"""ToolServer reconciliation end to end through kubectl: metadata URL, Ready, Invalid, Events."""

from __future__ import annotations

from typing import Any

import yaml

from tests.conftest import Kubectl
from tests.controller.conftest import (
    ControllerThread,
    Install,
    events_for,
    get_json,
    ready_condition,
    wait_for,
)
from tests.controller.test_lifecycle import apply


def tool_server(name: str, namespace: str, *tools: dict[str, str]) -> dict[str, Any]:
    return {
        "apiVersion": "agentauth.dev/v1alpha1",
        "kind": "ToolServer",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"resourceURI": f"https://{name}.example.test/mcp", "tools": list(tools)},
    }


def test_tool_server_publishes_its_metadata_url(
    kubectl: Kubectl, install: Install, controller: ControllerThread
) -> None:
    ns = install.namespace
    apply(
        kubectl,
        tool_server("finance", ns, {"name": "read_document", "capability": "document.read"}),
    )
    wait_for(
        lambda: (
            ready_condition(get_json(kubectl, "toolserver", "finance", "-n", ns))
            == ("True", "MetadataPublished")
        ),
        message="the ToolServer is Ready",
    )
    status = get_json(kubectl, "toolserver", "finance", "-n", ns)["status"]
    assert status["metadataURL"] == (
        "https://finance.example.test/.well-known/oauth-protected-resource/mcp"
    )
    ready = next(c for c in status["conditions"] if c["type"] == "Ready")
    assert ready["message"] == (
        "1 tool; tokens for this server carry audience https://finance.example.test/mcp and "
        f"name ToolServer {ns}/finance in their tool_server claim"
    )
    assert status["observedGeneration"] == 1
    assert (
        "Normal",
        "MetadataPublished",
        "Protected-resource metadata at "
        "https://finance.example.test/.well-known/oauth-protected-resource/mcp",
    ) in events_for(kubectl, namespace=ns, name="finance", kind="ToolServer")


def test_tool_server_with_a_duplicate_tool_is_refused_by_the_api_server(
    kubectl: Kubectl, install: Install, controller: ControllerThread
) -> None:
    # Tool names are a list map keyed by name in the CRD: the API server refuses the duplicate,
    # so the controller never sees it (the model refuses it too: tests/domain/test_models.py).
    ns = install.namespace
    twice = {"name": "pay", "capability": "payments.authorize"}
    refused = kubectl(
        "apply",
        "-f",
        "-",
        input=yaml.safe_dump(tool_server("payments", ns, twice, twice)),
        check=False,
    )
    assert refused.returncode == 1
    assert refused.stderr.strip() == (
        'The ToolServer "payments" is invalid: spec.tools[1]: Duplicate value: '
        'map[string]interface {}{"name":"pay"}'
    )
    missing = kubectl("get", "toolserver", "payments", "-n", ns, check=False)
    assert 'toolservers.agentauth.dev "payments" not found' in missing.stderr
