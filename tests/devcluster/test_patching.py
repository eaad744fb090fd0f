"""Patch semantics: RFC 7386 merge, RFC 6902 JSON patch, strategic merge by merge key."""

from __future__ import annotations

import json

import pytest

from agentauth.devcluster import builtins, patching
from tests.conftest import Kubectl


def test_merge_patch_merges_objects_and_null_deletes() -> None:
    target = {"a": {"b": 1, "c": 2}, "list": [1, 2], "gone": True}
    patched = patching.merge_patch(target, {"a": {"b": 9}, "list": [3], "gone": None})
    assert patched == {"a": {"b": 9, "c": 2}, "list": [3]}
    assert target["a"] == {"b": 1, "c": 2}  # the input is not modified


def test_json_patch_operations() -> None:
    doc = {"a": [1, 2], "b": {"c": 1}}
    patched = patching.json_patch(
        doc,
        [
            {"op": "add", "path": "/a/-", "value": 3},
            {"op": "replace", "path": "/b/c", "value": 2},
            {"op": "copy", "from": "/b/c", "path": "/d"},
            {"op": "move", "from": "/d", "path": "/e"},
            {"op": "remove", "path": "/a/0"},
            {"op": "test", "path": "/e", "value": 2},
            {"op": "add", "path": "/x~1y", "value": True},
        ],
    )
    assert patched == {"a": [2, 3], "b": {"c": 2}, "e": 2, "x/y": True}


@pytest.mark.parametrize(
    ("operations", "message", "code"),
    [
        ([{"op": "test", "path": "/a", "value": 2}], "testing value /a failed: test failed", 422),
        (
            [{"op": "remove", "path": "/nope"}],
            "Unable to remove nonexistent key: nope: missing value",
            422,
        ),
        (
            [{"op": "replace", "path": "/b/c", "value": 1}],
            'doc is missing path: "/b/c": missing value',
            422,
        ),
        ([{"op": "frobnicate", "path": "/a"}], "Unexpected kind: frobnicate", 400),
        ({"op": "add"}, "json: cannot unmarshal object into Go value of type jsonpatch.Patch", 400),
    ],
)
def test_json_patch_errors(operations: object, message: str, code: int) -> None:
    with pytest.raises(patching.PatchError) as raised:
        patching.json_patch({"a": 1}, operations)
    assert (raised.value.message, raised.value.code) == (message, code)


def test_strategic_merge_by_merge_keys_and_directives() -> None:
    pod = {
        "spec": {
            "containers": [
                {
                    "name": "a",
                    "image": "x",
                    "env": [{"name": "E", "value": "1"}],
                    "ports": [{"containerPort": 80, "name": "http"}],
                },
                {"name": "b", "image": "y"},
            ],
            "volumes": [{"name": "v1"}, {"name": "v2"}],
            "tolerations": [{"key": "k"}],
            "args": ["1"],
        }
    }
    patched = patching.strategic_merge(
        pod,
        {
            "spec": {
                "containers": [
                    {
                        "name": "a",
                        "env": [{"name": "F", "value": "2"}],
                        "ports": [{"containerPort": 80, "protocol": "TCP"}],
                    },
                    {"name": "b", "$patch": "delete"},
                    {"name": "c", "image": "z"},
                ],
                "volumes": [{"name": "v1", "$patch": "delete"}],
                "$setElementOrder/volumes": [{"name": "v2"}],
                "args": ["2"],
            }
        },
    )
    spec = patched["spec"]
    assert [c["name"] for c in spec["containers"]] == ["a", "c"]
    assert spec["containers"][0]["env"] == [
        {"name": "E", "value": "1"},
        {"name": "F", "value": "2"},
    ]
    assert spec["containers"][0]["ports"] == [
        {"containerPort": 80, "name": "http", "protocol": "TCP"}
    ]
    assert spec["containers"][0]["image"] == "x"
    assert spec["volumes"] == [{"name": "v2"}]
    assert spec["args"] == ["2"]  # lists without a merge key are replaced
    replaced = patching.strategic_merge(pod, {"spec": {"$patch": "replace", "args": []}})
    assert replaced["spec"] == {"args": []}


def test_server_side_apply_removes_what_the_manager_dropped() -> None:
    live = {"metadata": {"name": "x", "labels": {"other": "1"}}, "spec": {"a": 1, "b": 2}}
    first = patching.server_side_apply(
        live,
        {"metadata": {"name": "x"}, "spec": {"a": 1, "b": 2}},
        manager="m",
        api_version="v1",
        time="t",
    )
    assert first["metadata"]["managedFields"] == [
        {
            "manager": "m",
            "operation": "Apply",
            "apiVersion": "v1",
            "time": "t",
            "fieldsType": "FieldsV1",
            "fieldsV1": {"f:spec": {"f:a": {}, "f:b": {}}},
        }
    ]
    second = patching.server_side_apply(
        first,
        {"metadata": {"name": "x"}, "spec": {"a": 3}},
        manager="m",
        api_version="v1",
        time="t",
    )
    assert second["spec"] == {"a": 3}
    assert second["metadata"]["labels"] == {"other": "1"}  # not the manager's: kept
    assert patching.paths_from_fields_v1(second["metadata"]["managedFields"][0]["fieldsV1"]) == {
        ("spec", "a")
    }


def test_kubectl_apply_merges_lists_by_the_upstream_merge_keys(
    kubectl: Kubectl, namespace: str
) -> None:
    """Client-side apply computes strategic merge patches from /openapi (Service ports keyed by
    ``port``, a Deployment's ``strategy`` with ``$retainKeys``); the server must merge alike."""
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "web", "namespace": namespace},
        "spec": {
            "selector": {"app": "web"},
            "ports": [
                {"name": "http", "port": 80, "targetPort": 8080},
                {"name": "metrics", "port": 9090},
            ],
        },
    }
    kubectl("apply", "-f", "-", input=json.dumps(service))
    service["spec"]["ports"] = [{"name": "metrics", "port": 9090}]
    kubectl("apply", "-f", "-", input=json.dumps(service))
    stored = json.loads(kubectl("get", "service", "web", "-n", namespace, "-o", "json").stdout)
    assert stored["spec"]["ports"] == [
        {"name": "metrics", "port": 9090, "protocol": "TCP", "targetPort": 9090}
    ]

    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "d", "namespace": namespace},
        "spec": {
            "selector": {"matchLabels": {"app": "d"}},
            "template": {
                "metadata": {"labels": {"app": "d"}},
                "spec": {"containers": [{"name": "c", "image": "busybox"}]},
            },
        },
    }
    kubectl("apply", "-f", "-", input=json.dumps(deployment))
    deployment["spec"]["strategy"] = {"type": "Recreate"}
    kubectl("apply", "-f", "-", input=json.dumps(deployment))
    stored = json.loads(kubectl("get", "deployment", "d", "-n", namespace, "-o", "json").stdout)
    assert stored["spec"]["strategy"] == {"type": "Recreate"}


def test_schema_merge_of_primitive_sets_and_retain_keys() -> None:
    deployment = builtins.schema_for("apps", "v1", "Deployment")
    live = {
        "metadata": {"finalizers": ["a"]},
        "spec": {"strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1}}},
    }
    patch = {
        "metadata": {"finalizers": ["b", "a"]},
        "spec": {"strategy": {"$retainKeys": ["type"], "type": "Recreate"}},
    }
    assert patching.strategic_merge(live, patch, deployment) == {
        "metadata": {"finalizers": ["a", "b"]},
        "spec": {"strategy": {"type": "Recreate"}},
    }
