"""Server-side tables: JSONPath cells, ages, column sets."""

from __future__ import annotations

import datetime

from agentauth.devcluster import resources, tables


def test_human_duration_matches_kubectl() -> None:
    cases = {
        0: "0s",
        59: "59s",
        119: "119s",
        130: "2m10s",
        600: "10m",
        3 * 3600: "3h",
        3 * 3600 + 60: "3h1m",
        9 * 3600: "9h",
        50 * 3600: "2d2h",
        10 * 86400: "10d",
        800 * 86400: "2y70d",
    }
    assert {s: tables.human_duration(s) for s in cases} == cases
    assert tables.human_duration(-5) == "<invalid>"


def test_jsonpath_subset() -> None:
    obj = {
        "status": {
            "conditions": [
                {"type": "Other", "status": "False"},
                {"type": "Ready", "status": "True"},
            ],
            "caps": [{"name": "a"}, {"name": "b"}],
        }
    }
    assert tables.jsonpath(obj, '.status.conditions[?(@.type=="Ready")].status') == ["True"]
    assert tables.jsonpath(obj, ".status.conditions[0].type") == ["Other"]
    assert tables.jsonpath(obj, ".status.caps[*].name") == ["a", "b"]
    assert tables.jsonpath(obj, ".missing.path") == []


def test_custom_columns_and_rows() -> None:
    crd = {
        "spec": {
            "group": "g.dev",
            "scope": "Namespaced",
            "names": {"plural": "things", "kind": "Thing"},
            "versions": [
                {
                    "name": "v1",
                    "served": True,
                    "storage": True,
                    "additionalPrinterColumns": [
                        {"name": "Size", "type": "integer", "jsonPath": ".spec.size"},
                        {"name": "Tags", "type": "string", "jsonPath": ".spec.tags[*]"},
                    ],
                }
            ],
        }
    }
    rt = resources.from_crd(crd)
    assert rt is not None
    columns = tables.columns_for(rt, "v1")
    created = (datetime.datetime.now(datetime.UTC) - datetime.timedelta(seconds=30)).strftime(
        "%Y-%m-%dT%H:%M:%SZ"
    )
    obj = {
        "metadata": {"name": "t", "creationTimestamp": created},
        "spec": {"size": 3, "tags": ["x", "y"]},
    }
    table = tables.table([obj], columns, include_object="None")
    assert [c["name"] for c in table["columnDefinitions"]] == ["Name", "Size", "Tags", "Age"]
    cells = table["rows"][0]["cells"]
    assert cells[:3] == ["t", 3, "x,y"]
    assert cells[3] in ("30s", "31s", "32s")
    assert "object" not in table["rows"][0]
    assert tables.wants_table("application/json;as=Table;v=v1;g=meta.k8s.io,application/json")
    assert not tables.wants_table("application/json")
