"""The official ``kubernetes`` Python client against the embedded control plane.

list+watch with resume, 410 once a version has left the history window, patch types,
optimistic-concurrency conflicts, paging and selectors.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client, watch
from kubernetes.client.rest import ApiException

from agentauth.devcluster import server
from tests.conftest import client_configuration


def _configmap(name: str, **labels: str) -> dict[str, Any]:
    return {"metadata": {"name": name, "labels": labels}, "data": {"k": "v"}}


def test_list_then_watch_resumes_from_any_version(kube_api: Any, namespace: str) -> None:
    core = client.CoreV1Api(kube_api)
    start = core.list_namespaced_config_map(namespace).metadata.resource_version
    core.create_namespaced_config_map(namespace, _configmap("a"))
    core.patch_namespaced_config_map("a", namespace, {"data": {"k": "w"}})
    core.delete_namespaced_config_map("a", namespace)

    seen: list[tuple[str, str, str]] = []
    for event in watch.Watch().stream(
        core.list_namespaced_config_map, namespace, resource_version=start, timeout_seconds=10
    ):
        obj = event["object"]
        seen.append((event["type"], obj.metadata.name, obj.metadata.resource_version))
        if event["type"] == "DELETED":
            break
    assert [(kind, name) for kind, name, _ in seen] == [
        ("ADDED", "a"),
        ("MODIFIED", "a"),
        ("DELETED", "a"),
    ]
    versions = [int(version) for _, _, version in seen]
    assert versions == sorted(versions) and len(set(versions)) == 3

    # Resuming from the MODIFIED version replays only what came after it.
    resumed = watch.Watch().stream(
        core.list_namespaced_config_map, namespace, resource_version=seen[1][2], timeout_seconds=10
    )
    first = next(iter(resumed))
    assert (first["type"], first["object"].metadata.name) == ("DELETED", "a")


def test_watch_without_version_starts_with_current_objects_and_sees_bookmarks(
    kube_api: Any, namespace: str
) -> None:
    core = client.CoreV1Api(kube_api)
    core.create_namespaced_config_map(namespace, _configmap("present"))
    events: list[str] = []
    stream = watch.Watch().stream(
        core.list_namespaced_config_map, namespace, allow_watch_bookmarks=True, timeout_seconds=15
    )
    for event in stream:
        events.append(event["type"])
        if event["type"] == "BOOKMARK":
            break
    assert events[0] == "ADDED" and events[-1] == "BOOKMARK"


def test_watch_honours_label_selector_transitions(kube_api: Any, namespace: str) -> None:
    core = client.CoreV1Api(kube_api)
    start = core.list_namespaced_config_map(namespace).metadata.resource_version
    core.create_namespaced_config_map(namespace, _configmap("x", team="a"))
    core.patch_namespaced_config_map("x", namespace, {"metadata": {"labels": {"team": "b"}}})
    core.patch_namespaced_config_map("x", namespace, {"metadata": {"labels": {"team": "a"}}})
    seen = []
    for event in watch.Watch().stream(
        core.list_namespaced_config_map,
        namespace,
        label_selector="team=a",
        resource_version=start,
        timeout_seconds=10,
    ):
        seen.append(event["type"])
        if len(seen) == 3:
            break
    # Leaving the selection is a DELETED, entering it again an ADDED, as upstream.
    assert seen == ["ADDED", "DELETED", "ADDED"]


def test_update_with_stale_resource_version_is_a_conflict(kube_api: Any, namespace: str) -> None:
    core = client.CoreV1Api(kube_api)
    created = core.create_namespaced_config_map(namespace, _configmap("c"))
    created.data = {"k": "first"}
    core.replace_namespaced_config_map("c", namespace, created)
    created.data = {"k": "second"}
    with pytest.raises(ApiException) as raised:
        core.replace_namespaced_config_map("c", namespace, created)
    assert raised.value.status == 409
    body = raised.value.body
    assert '"reason":"Conflict"' in body
    assert (
        'Operation cannot be fulfilled on configmaps \\"c\\": the object has been modified; '
        "please apply your changes to the latest version and try again"
    ) in body


def test_create_twice_is_already_exists(kube_api: Any, namespace: str) -> None:
    core = client.CoreV1Api(kube_api)
    core.create_namespaced_config_map(namespace, _configmap("dup"))
    with pytest.raises(ApiException) as raised:
        core.create_namespaced_config_map(namespace, _configmap("dup"))
    assert raised.value.status == 409
    assert 'configmaps \\"dup\\" already exists' in raised.value.body


def test_patch_types(kube_api: Any, namespace: str) -> None:
    core = client.CoreV1Api(kube_api)
    core.create_namespaced_pod(
        namespace,
        {
            "metadata": {"name": "p"},
            "spec": {
                "containers": [
                    {"name": "main", "image": "busybox", "env": [{"name": "A", "value": "1"}]}
                ]
            },
        },
    )
    # Strategic merge (the client's default for dict bodies) merges containers by name.
    patched = core.patch_namespaced_pod(
        "p",
        namespace,
        {"spec": {"containers": [{"name": "main", "env": [{"name": "B", "value": "2"}]}]}},
    )
    assert [e.name for e in patched.spec.containers[0].env] == ["A", "B"]
    assert patched.spec.containers[0].image == "busybox"
    # JSON patch (a list body).
    patched = core.patch_namespaced_pod(
        "p", namespace, [{"op": "add", "path": "/metadata/labels", "value": {"x": "1"}}]
    )
    assert patched.metadata.labels == {"x": "1"}
    # A failing JSON-patch test operation is 422.
    with pytest.raises(ApiException) as raised:
        core.patch_namespaced_pod(
            "p", namespace, [{"op": "test", "path": "/metadata/labels/x", "value": "2"}]
        )
    assert raised.value.status == 422


def test_paging_with_limit_and_continue(kube_api: Any, namespace: str) -> None:
    core = client.CoreV1Api(kube_api)
    for index in range(7):
        core.create_namespaced_config_map(namespace, _configmap(f"page-{index}"))
    names: list[str] = []
    token = None
    pages = 0
    while True:
        page = core.list_namespaced_config_map(namespace, limit=3, _continue=token)
        pages += 1
        names += [item.metadata.name for item in page.items]
        token = page.metadata._continue
        if not token:
            assert page.metadata.remaining_item_count is None
            break
        assert page.metadata.remaining_item_count == 7 - len(names)
    assert pages == 3
    assert names == [f"page-{index}" for index in range(7)]


def test_field_and_label_selectors(kube_api: Any, namespace: str) -> None:
    core = client.CoreV1Api(kube_api)
    core.create_namespaced_config_map(namespace, _configmap("one", tier="web"))
    core.create_namespaced_config_map(namespace, _configmap("two", tier="db"))
    by_field = core.list_namespaced_config_map(namespace, field_selector="metadata.name=two")
    assert [i.metadata.name for i in by_field.items] == ["two"]
    by_label = core.list_namespaced_config_map(namespace, label_selector="tier in (web,cache)")
    assert [i.metadata.name for i in by_label.items] == ["one"]
    everywhere = core.list_config_map_for_all_namespaces(
        field_selector=f"metadata.namespace={namespace}"
    )
    assert {i.metadata.name for i in everywhere.items} == {"one", "two"}
    with pytest.raises(ApiException) as raised:
        core.list_namespaced_config_map(namespace, field_selector="nonsense")
    assert raised.value.status == 400


@pytest.fixture(scope="module")
def small_history_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[server.DevCluster]:
    directory: Path = tmp_path_factory.mktemp("small-history")
    with server.running_cluster(directory, history_window=5, apply_crds=False) as cluster:
        yield cluster


def test_watch_from_version_outside_the_window_is_410(
    small_history_cluster: server.DevCluster,
) -> None:
    configuration = client_configuration(small_history_cluster, small_history_cluster.admin_token)
    with client.ApiClient(configuration) as api_client:
        core = client.CoreV1Api(api_client)
        start = core.list_namespaced_config_map("default").metadata.resource_version
        for index in range(8):
            core.create_namespaced_config_map("default", _configmap(f"h-{index}"))
        with pytest.raises(ApiException) as raised:
            for _ in watch.Watch().stream(
                core.list_namespaced_config_map,
                "default",
                resource_version=start,
                timeout_seconds=5,
            ):
                pass
        assert raised.value.status == 410
        assert raised.value.reason.startswith(f"Expired: too old resource version: {start}")
        # A client recovers by listing again and watching from the fresh version.
        fresh = core.list_namespaced_config_map("default").metadata.resource_version
        core.create_namespaced_config_map("default", _configmap("after"))
        event = next(
            iter(
                watch.Watch().stream(
                    core.list_namespaced_config_map,
                    "default",
                    resource_version=fresh,
                    timeout_seconds=5,
                )
            )
        )
        assert (event["type"], event["object"].metadata.name) == ("ADDED", "after")
