"""A tiny Kopf operator, defined here, runs against the embedded control plane.

It reacts to create, update and delete of a custom resource served from a CRD created by the
test, patches the resource's status and posts Events; the test observes all of it through the
API. This is the shape of the agentauth controller, so if Kopf is happy here it is happy there.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import kopf
import pytest
from kubernetes import client
from kubernetes.client.rest import ApiException

from agentauth.devcluster import server

GROUP = "kopftest.agentauth.dev"


def _crd() -> dict[str, Any]:
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"widgets.{GROUP}"},
        "spec": {
            "group": GROUP,
            "scope": "Namespaced",
            "names": {"plural": "widgets", "singular": "widget", "kind": "Widget"},
            "versions": [
                {
                    "name": "v1",
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "properties": {
                                "spec": {
                                    "type": "object",
                                    "properties": {"size": {"type": "integer"}},
                                },
                                "status": {
                                    "type": "object",
                                    "x-kubernetes-preserve-unknown-fields": True,
                                },
                            },
                        }
                    },
                }
            ],
        },
    }


def wait_for(predicate: Callable[[], Any], *, timeout: float = 30, what: str = "") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what or predicate}")
        threading.Event().wait(0.05)


@pytest.fixture(scope="module")
def widget_crd(kube_api: Any) -> Iterator[None]:
    extensions = client.ApiextensionsV1Api(kube_api)
    extensions.create_custom_resource_definition(_crd())
    yield
    extensions.delete_custom_resource_definition(f"widgets.{GROUP}")


def test_kopf_operator_handles_create_update_delete(
    dev_cluster: server.DevCluster, kube_api: Any, namespace: str, widget_crd: None
) -> None:
    registry = kopf.OperatorRegistry()
    deleted: list[str] = []

    @kopf.on.login(registry=registry)
    def login(**_: Any) -> kopf.ConnectionInfo:
        return kopf.ConnectionInfo(
            server=dev_cluster.url,
            ca_path=str(dev_cluster.ca_path),
            token=dev_cluster.admin_token,
            scheme="Bearer",
        )

    @kopf.on.startup(registry=registry)
    def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
        settings.posting.level = 0
        settings.watching.server_timeout = 30
        settings.networking.request_timeout = 30

    @kopf.on.create(GROUP, "v1", "widgets", registry=registry)
    def created(spec: Any, patch: kopf.Patch, body: Any, **_: Any) -> None:
        patch.status["phase"] = "Created"
        patch.status["size"] = spec.get("size")
        kopf.info(body, reason="Created", message=f"widget of size {spec.get('size')}")

    @kopf.on.update(GROUP, "v1", "widgets", registry=registry)
    def updated(spec: Any, patch: kopf.Patch, body: Any, **_: Any) -> None:
        patch.status["phase"] = "Updated"
        patch.status["size"] = spec.get("size")
        kopf.info(body, reason="Updated", message=f"resized to {spec.get('size')}")

    @kopf.on.delete(GROUP, "v1", "widgets", registry=registry)
    def removed(name: str, **_: Any) -> None:
        deleted.append(name)

    stop = threading.Event()
    ready = threading.Event()

    def run() -> None:
        asyncio.run(
            kopf.operator(
                registry=registry,
                namespaces=[namespace],
                standalone=True,
                clusterwide=False,
                stop_flag=stop,
                ready_flag=ready,
            )
        )

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        assert ready.wait(30), "Kopf did not become ready"
        objects = client.CustomObjectsApi(kube_api)
        core = client.CoreV1Api(kube_api)
        objects.create_namespaced_custom_object(
            GROUP,
            "v1",
            namespace,
            "widgets",
            {
                "apiVersion": f"{GROUP}/v1",
                "kind": "Widget",
                "metadata": {"name": "w1"},
                "spec": {"size": 1},
            },
        )

        def status() -> dict[str, Any]:
            found = objects.get_namespaced_custom_object(GROUP, "v1", namespace, "widgets", "w1")
            return dict(found.get("status") or {})

        wait_for(lambda: status().get("phase") == "Created", what="create handler status")
        objects.patch_namespaced_custom_object(
            GROUP, "v1", namespace, "widgets", "w1", {"spec": {"size": 2}}
        )
        wait_for(
            lambda: status().get("phase") == "Updated" and status().get("size") == 2,
            what="update handler status",
        )

        def reasons() -> set[str]:
            events = core.list_namespaced_event(
                namespace, field_selector="involvedObject.name=w1"
            ).items
            return {event.reason for event in events}

        wait_for(lambda: {"Created", "Updated"} <= reasons(), what="events posted by Kopf")

        # Kopf put its finalizer on the object, so deletion waits for the delete handler.
        current = objects.get_namespaced_custom_object(GROUP, "v1", namespace, "widgets", "w1")
        assert current["metadata"]["finalizers"]
        objects.delete_namespaced_custom_object(GROUP, "v1", namespace, "widgets", "w1")

        def gone() -> bool:
            try:
                objects.get_namespaced_custom_object(GROUP, "v1", namespace, "widgets", "w1")
            except ApiException as error:
                return bool(error.status == 404)
            return False

        wait_for(gone, what="deletion after Kopf removed its finalizer")
        assert deleted == ["w1"]
    finally:
        stop.set()
        thread.join(30)


def test_kopf_operator_handles_a_builtin_kind(
    dev_cluster: server.DevCluster, kube_api: Any, namespace: str
) -> None:
    """Kopf on batch/v1 Jobs (issue 18): the kind is discovered, watched, patched and finalized
    like on a real cluster."""
    registry = kopf.OperatorRegistry()
    deleted: list[str] = []

    @kopf.on.login(registry=registry)
    def login(**_: Any) -> kopf.ConnectionInfo:
        return kopf.ConnectionInfo(
            server=dev_cluster.url,
            ca_path=str(dev_cluster.ca_path),
            token=dev_cluster.admin_token,
            scheme="Bearer",
        )

    @kopf.on.startup(registry=registry)
    def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
        settings.posting.level = 0
        settings.watching.server_timeout = 30

    @kopf.on.create("batch", "v1", "jobs", registry=registry)
    def created(spec: Any, patch: kopf.Patch, **_: Any) -> None:
        patch.metadata.setdefault("annotations", {})["seen-backoff-limit"] = str(
            spec.get("backoffLimit")
        )

    @kopf.on.delete("batch", "v1", "jobs", registry=registry)
    def removed(name: str, **_: Any) -> None:
        deleted.append(name)

    stop = threading.Event()
    ready = threading.Event()

    def run() -> None:
        asyncio.run(
            kopf.operator(
                registry=registry,
                namespaces=[namespace],
                standalone=True,
                clusterwide=False,
                stop_flag=stop,
                ready_flag=ready,
            )
        )

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        assert ready.wait(30), "Kopf did not become ready"
        batch = client.BatchV1Api(kube_api)
        template = {
            "spec": {"containers": [{"name": "c", "image": "busybox"}], "restartPolicy": "Never"}
        }
        batch.create_namespaced_job(
            namespace, {"metadata": {"name": "j1"}, "spec": {"template": template}}
        )

        def annotation() -> str | None:
            annotations = batch.read_namespaced_job("j1", namespace).metadata.annotations or {}
            return annotations.get("seen-backoff-limit")

        # The handler saw the server's default (6), not an absent field.
        assert wait_for(annotation, what="create handler annotation") == "6"
        assert batch.read_namespaced_job("j1", namespace).metadata.finalizers
        batch.delete_namespaced_job("j1", namespace)

        def gone() -> bool:
            try:
                batch.read_namespaced_job("j1", namespace)
            except ApiException as error:
                return bool(error.status == 404)
            return False

        wait_for(gone, what="deletion after Kopf removed its finalizer")
        assert deleted == ["j1"]
    finally:
        stop.set()
        thread.join(30)
