"""The generated CRDs: structural, up to date, and accepting exactly what the models accept."""

from __future__ import annotations

import pathlib
from typing import Any

import jsonschema
import pytest
import yaml

from agentauth import cli
from agentauth.domain import crds
from tests.domain import test_models

ROOT = pathlib.Path(__file__).parents[2]


def schema_of(kind: str) -> dict[str, Any]:
    for crd in crds.generate_crds():
        if crd["spec"]["names"]["kind"] == kind:
            schema: dict[str, Any] = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
            return schema
    raise KeyError(kind)


def validator(kind: str) -> jsonschema.Draft7Validator:
    return jsonschema.Draft7Validator(
        schema_of(kind), format_checker=jsonschema.Draft7Validator.FORMAT_CHECKER
    )


@pytest.mark.parametrize("crd", crds.generate_crds(), ids=lambda crd: crd["metadata"]["name"])
def test_schema_is_structural(crd: dict[str, Any]) -> None:
    schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    assert crds.structural_violations(schema) == []
    assert crds.metadata_violations(schema) == []
    jsonschema.Draft7Validator.check_schema(schema)


def test_structural_check_catches_violations() -> None:
    bad = {
        "type": "object",
        "properties": {
            "a": {"$ref": "#/x"},
            "b": {"anyOf": [{"type": "string"}, {"type": "null"}]},
            "c": {"type": "object", "properties": {}, "additionalProperties": {"type": "string"}},
            "d": {"type": "array"},
            "e": {
                "type": "array",
                "x-kubernetes-list-type": "map",
                "x-kubernetes-list-map-keys": ["type"],
                "items": {"type": "object"},
            },
        },
    }
    assert crds.structural_violations(bad) == [
        "a: $ref is not allowed",
        "a: missing type",
        "b: anyOf is not allowed by this generator",
        "b: missing type",
        "c: properties and additionalProperties are mutually exclusive",
        "d: array without items",
        "e: list-type map needs required list-map-keys, missing ['type']",
    ]
    assert crds.metadata_violations(
        {"properties": {"metadata": {"properties": {"labels": {}}}}}
    ) == ["metadata.labels: only name and generateName may be constrained"]


def test_conditions_are_a_map_keyed_by_type() -> None:
    for crd in crds.generate_crds():
        status = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["status"]
        conditions = status["properties"]["conditions"]
        assert conditions["x-kubernetes-list-type"] == "map"
        assert conditions["x-kubernetes-list-map-keys"] == ["type"]
        assert set(conditions["items"]["required"]) >= {"type", "status", "reason"}


def test_crd_metadata_names_and_columns() -> None:
    by_kind = {crd["spec"]["names"]["kind"]: crd for crd in crds.generate_crds()}
    assert set(by_kind) == {"Agent", "CapabilityGrant", "AccessRequest", "ToolServer"}
    for kind, short in (("Agent", "ag"), ("CapabilityGrant", "cg"), ("AccessRequest", "ar")):
        names = by_kind[kind]["spec"]["names"]
        assert names["shortNames"] == [short]
        assert names["categories"] == ["agentauth"]
        assert by_kind[kind]["spec"]["scope"] == "Namespaced"
        assert by_kind[kind]["spec"]["versions"][0]["subresources"] == {"status": {}}
    columns = [
        c["name"]
        for c in by_kind["AccessRequest"]["spec"]["versions"][0]["additionalPrinterColumns"]
    ]
    assert columns == [
        "Agent",
        "Capabilities",
        "Phase",
        "Approved By",
        "Decide By",
        "Access Until",
        "Age",
    ]


def test_descriptions_reach_the_schema() -> None:
    spec = schema_of("Agent")["properties"]["spec"]
    assert "ServiceAccount" in spec["properties"]["serviceAccountName"]["description"]
    assert spec["properties"]["tokenTTL"]["default"] == "2m"


@pytest.mark.parametrize("document", test_models.agentauth_samples(), ids=lambda doc: doc["kind"])
def test_every_sample_validates_against_the_crd_schema(document: dict[str, Any]) -> None:
    errors = list(validator(document["kind"]).iter_errors(document))
    assert errors == []


SCHEMA_INVALID = [
    (
        "Agent",
        {"metadata": {"name": "Bad_Name"}, "spec": {}},
        "metadata.name",
        "'Bad_Name' does not match '^[a-z0-9]([-a-z0-9]*[a-z0-9])?$'",
    ),
    (
        "Agent",
        # The duration's format and bound are CEL rules (tests/devcluster/test_cel.py); the
        # OpenAPI part bounds its length.
        {"metadata": {"name": "a"}, "spec": {"tokenTTL": "1" * 30 + "h"}},
        "spec.tokenTTL",
        f"'{'1' * 30}h' is too long",
    ),
    (
        "CapabilityGrant",
        {
            "metadata": {"name": "g"},
            "spec": {
                "agents": {"names": ["a"]},
                "capabilities": [{"name": "payments.authorize", "approval": "Sometimes"}],
            },
        },
        "spec.capabilities.0.approval",
        "'Sometimes' is not one of ['Automatic', 'Required']",
    ),
    (
        "CapabilityGrant",
        {"metadata": {"name": "g"}, "spec": {"agents": {"names": ["a"]}, "capabilities": []}},
        "spec.capabilities",
        "[] should be non-empty",
    ),
    (
        "AccessRequest",
        {"metadata": {"name": "r"}, "spec": {"agent": "a", "capabilities": ["pay"]}},
        "spec",
        "'justification' is a required property",
    ),
]


@pytest.mark.parametrize(("kind", "document", "path", "message"), SCHEMA_INVALID)
def test_crd_schema_rejects_invalid_manifests(
    kind: str, document: dict[str, Any], path: str, message: str
) -> None:
    errors = sorted(validator(kind).iter_errors(document), key=lambda e: list(e.absolute_path))
    assert [(".".join(str(p) for p in error.absolute_path), error.message) for error in errors][
        :1
    ] == [(path, message)]


def test_generation_is_deterministic_and_committed(tmp_path: pathlib.Path) -> None:
    assert crds.generate_crds() == crds.generate_crds()
    for directory in (ROOT / "crds", ROOT / "charts" / "agentauth" / "crds"):
        committed = {path.name: path.read_text() for path in directory.glob("*.yaml")}
        assert committed == {crds.file_name(c): crds.render(c) for c in crds.generate_crds()}
    for crd in crds.generate_crds():
        assert yaml.safe_load(crds.render(crd)) == crd


def test_cli_check_reports_stale_files(
    tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["crds", "--output-dir", str(tmp_path)]) == 0
    assert cli.main(["crds", "--check", "--output-dir", str(tmp_path)]) == 0
    (tmp_path / "agentauth.dev_agents.yaml").write_text("edited\n")
    (tmp_path / "stray.yaml").write_text("x: 1\n")
    assert cli.main(["crds", "--check", "--output-dir", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert f"{tmp_path / 'agentauth.dev_agents.yaml'}: differs from a fresh generation" in err
    assert f"{tmp_path / 'stray.yaml'}: not generated by agentauth crds" in err
