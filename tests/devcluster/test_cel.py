"""The CRDs' CEL rules (``x-kubernetes-validations``), enforced by the embedded control plane.

Real here: the CRDs generated from the pydantic models, served by the session dev cluster, real
``kubectl apply`` and the messages it prints, CEL evaluated by ``cel-python``. Each bad manifest
is refused by the API server with the rule's message, before any controller sees it; the same
manifests fixed are accepted.
"""

from __future__ import annotations

from typing import Any

import pydantic
import pytest
import yaml

from agentauth.devcluster import cel, schema
from agentauth.domain import models
from tests.conftest import Kubectl

API = "agentauth.dev/v1alpha1"
DURATION = (
    "must be a duration such as '300s', '5m', '1h' or '1h30m' (whole hours, minutes and seconds, "
    "in that order), greater than zero"
)


def agent(**spec: Any) -> dict[str, Any]:
    return {"apiVersion": API, "kind": "Agent", "metadata": {"name": "a"}, "spec": spec}


def grant(**spec: Any) -> dict[str, Any]:
    body = {"agents": {"names": ["a"]}, "capabilities": [{"name": "document.read"}], **spec}
    return {"apiVersion": API, "kind": "CapabilityGrant", "metadata": {"name": "g"}, "spec": body}


def request(**spec: Any) -> dict[str, Any]:
    body = {"agent": "a", "capabilities": ["payments.authorize"], "justification": "x", **spec}
    return {"apiVersion": API, "kind": "AccessRequest", "metadata": {"name": "r"}, "spec": body}


def tool_server(**spec: Any) -> dict[str, Any]:
    body = {"resourceURI": "https://tools.example.com/mcp", **spec}
    return {"apiVersion": API, "kind": "ToolServer", "metadata": {"name": "t"}, "spec": body}


CASES = [
    (
        "ttl-over-an-hour",
        agent(tokenTTL="2h"),
        'Agent "a" is invalid: spec.tokenTTL: Invalid value: "string": tokenTTL must be at most 1h',
    ),
    (
        "ttl-not-a-duration",
        agent(tokenTTL="2 hours"),
        f'Agent "a" is invalid: spec.tokenTTL: Invalid value: "string": {DURATION}',
    ),
    (
        "ttl-zero",
        agent(tokenTTL="0s"),
        f'Agent "a" is invalid: spec.tokenTTL: Invalid value: "string": {DURATION}',
    ),
    (
        "service-account-not-a-name",
        agent(serviceAccountName="Research_SA"),
        'Agent "a" is invalid: spec.serviceAccountName: Invalid value: "string": '
        "must be a DNS-1123 subdomain: lower-case letters, digits, '-' or '.', starting and "
        "ending with a letter or digit",
    ),
    (
        "capability-name",
        grant(capabilities=[{"name": "Document.Read"}]),
        'CapabilityGrant "g" is invalid: spec.capabilities[0].name: Invalid value: '
        "\"string\": must be a capability name '<resource>.<action>' in lower case, such as "
        "'document.read', or end in a wildcard such as 'document.*'",
    ),
    (
        "grant-selects-nothing",
        grant(agents={}),
        'CapabilityGrant "g" is invalid: spec.agents: Invalid value: "object": set '
        "agents.names or agents.selector: a grant must say which agents it applies to",
    ),
    (
        "automatic-with-max-duration",
        grant(capabilities=[{"name": "document.read", "maxDuration": "10m"}]),
        'CapabilityGrant "g" is invalid: spec.capabilities[0]: Invalid value: '
        '"object": maxDuration applies only to capabilities with approval Required',
    ),
    (
        "selector-operator-without-values",
        grant(
            agents={"selector": {"matchExpressions": [{"key": "team", "operator": "In"}]}},
        ),
        'CapabilityGrant "g" is invalid: '
        'spec.agents.selector.matchExpressions[0]: Invalid value: "object": operators In and '
        "NotIn need at least one value; Exists and DoesNotExist take none",
    ),
    (
        "blank-justification",
        request(justification="   "),
        'AccessRequest "r" is invalid: spec.justification: Invalid value: "string": '
        "justification must not be blank: say why it is needed",
    ),
    (
        "request-duration",
        request(duration="forever"),
        f'AccessRequest "r" is invalid: spec.duration: Invalid value: "string": {DURATION}',
    ),
    (
        "plain-http-resource",
        tool_server(resourceURI="http://tools.example.com/mcp"),
        'ToolServer "t" is invalid: spec.resourceURI: Invalid value: "string": '
        "resourceURI must be an absolute https URL of URI characters (no userinfo, fragment, "
        "spaces, quotes or control characters), such as https://tools.example.com/mcp",
    ),
    (
        "duplicate-tools",
        tool_server(
            tools=[
                {"name": "read", "capability": "document.read"},
                {"name": "read", "capability": "document.write"},
            ]
        ),
        'ToolServer "t" is invalid: spec.tools[1]: Duplicate value: '
        'map[string]interface {}{"name":"read"}',
    ),
]


@pytest.mark.parametrize(("manifest", "message"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_kubectl_shows_the_rule_message(
    manifest: dict[str, Any], message: str, kubectl: Kubectl, namespace: str
) -> None:
    refused = kubectl(
        "apply", "-n", namespace, "-f", "-", input=yaml.safe_dump(manifest), check=False
    )
    assert refused.returncode == 1
    assert refused.stderr.strip() == f"The {message}"
    got = kubectl("get", manifest["kind"].lower(), "-n", namespace, "-o", "name")
    assert got.stdout.strip() == ""


@pytest.mark.parametrize("manifest", [c[1] for c in CASES], ids=[c[0] for c in CASES])
def test_the_models_refuse_what_the_api_server_refuses(manifest: dict[str, Any]) -> None:
    # The rules are one set: the controller's and token service's pydantic models agree.
    model = getattr(models, manifest["kind"])
    with pytest.raises(pydantic.ValidationError):
        model.model_validate(manifest)


def test_the_same_manifests_fixed_are_accepted(kubectl: Kubectl, namespace: str) -> None:
    fixed = [
        agent(tokenTTL="1h", serviceAccountName="research-sa"),
        grant(
            agents={
                "names": ["a"],
                "selector": {"matchExpressions": [{"key": "team", "operator": "Exists"}]},
            },
            capabilities=[
                {"name": "document.*"},
                {"name": "payments.authorize", "approval": "Required", "maxDuration": "30m"},
            ],
        ),
        request(justification="invoice INV-1", duration="1h30m"),
        tool_server(
            resourceURI="https://tools.example.com:8443/mcp?v=1",
            tools=[
                {"name": "read", "capability": "document.read"},
                {"name": "write", "capability": "document.write"},
            ],
        ),
    ]
    for manifest in fixed:
        getattr(models, manifest["kind"]).model_validate(manifest)
    applied = kubectl("apply", "-n", namespace, "-f", "-", input=yaml.safe_dump_all(fixed))
    assert len(applied.stdout.strip().splitlines()) == 4


def test_rules_do_not_run_on_an_object_with_a_type_error(kubectl: Kubectl, namespace: str) -> None:
    refused = kubectl(
        "apply", "-n", namespace, "-f", "-", input=yaml.safe_dump(agent(tokenTTL=5)), check=False
    )
    assert refused.returncode == 1
    assert refused.stderr.strip().splitlines() == [
        'The Agent "a" is invalid: ',
        "* spec.tokenTTL: Invalid value: 5: spec.tokenTTL in body must be of type string: "
        '"integer"',
        '* <nil>: Invalid value: "null": some validation rules were not checked because the '
        "object was invalid; correct the existing errors to complete validation",
    ]


def test_a_rule_that_does_not_compile_or_errors_is_reported_not_passed() -> None:
    node = {
        "type": "object",
        "properties": {
            "spec": {
                "type": "object",
                "properties": {
                    "a": {
                        "type": "string",
                        "x-kubernetes-validations": [{"rule": "self.matches(", "message": "m"}],
                    },
                    "b": {
                        "type": "string",
                        "x-kubernetes-validations": [{"rule": "duration(self) > duration('1s')"}],
                    },
                    "c": {
                        "type": "integer",
                        "x-kubernetes-validations": [{"rule": "self > 3"}],
                    },
                },
            }
        },
    }
    found = cel.validate({"spec": {"a": "x", "b": "soon", "c": 1}}, node, schema_errors=[])
    assert [error.field for error in found] == ["spec.a", "spec.b", "spec.c"]
    assert "compilation failed" in found[0].detail
    assert found[1].detail.endswith("evaluating rule: duration(self) > duration('1s')")
    assert str(found[2]) == 'spec.c: Invalid value: "integer": failed rule: self > 3'
    assert cel.validate({"spec": {"c": 1}}, node, schema_errors=[schema.required("spec.x")]) == [
        schema.FieldError("FieldValueInvalid", "<nil>", f'Invalid value: "null": {cel.NOT_CHECKED}')
    ]


def test_a_rule_is_evaluated_once_per_distinct_value() -> None:
    """Outcomes are memoised by (rule, value): re-validating an unchanged spec (every status
    write does) or many objects with the same spec costs one evaluation, with the same errors,
    each reported at its own path."""
    rule = "self.size() <= 3 && self != 'abc'"
    node = {
        "type": "object",
        "properties": {
            "items": {
                "type": "array",
                "items": {"type": "string", "x-kubernetes-validations": [{"rule": rule}]},
            }
        },
    }
    before = cel._outcome.cache_info()
    found = cel.validate({"items": ["ok", "abc", "ok", "abc", "toolong"]}, node, schema_errors=[])
    after = cel._outcome.cache_info()
    assert [str(error) for error in found] == [
        f'items[1]: Invalid value: "string": failed rule: {rule}',
        f'items[3]: Invalid value: "string": failed rule: {rule}',
        f'items[4]: Invalid value: "string": failed rule: {rule}',
    ]
    assert after.misses - before.misses == 3  # "ok", "abc", "toolong"
    assert after.hits - before.hits == 2


def test_subtrees_without_rules_are_not_walked() -> None:
    rule = "self.startsWith('ok')"
    node = {
        "type": "object",
        "properties": {
            "ruled": {"type": "string", "x-kubernetes-validations": [{"rule": rule}]},
            "free": {"type": "array", "items": {"type": "object"}},
        },
    }
    assert cel._has_rules(node) and not cel._has_rules(node["properties"]["free"])
    before = cel._outcome.cache_info()
    found = cel.validate({"ruled": "nope", "free": [{"a": 1}] * 50}, node, schema_errors=[])
    after = cel._outcome.cache_info()
    assert [str(error) for error in found] == [
        f'ruled: Invalid value: "string": failed rule: {rule}'
    ]
    assert (after.hits + after.misses) - (before.hits + before.misses) == 1
