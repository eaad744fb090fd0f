"""API semantics of the embedded control plane, asserted over real HTTPS.

Object identity (uid, creationTimestamp, generateName), generation and the status-subresource
split, finalizers, ownerReference cascade, namespace lifecycle, CRDs served and removed, dry
run, restart persistence, tables, admission webhooks in the write path, and every bad-input
path with its exact status code and message.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import re
import ssl
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.rest import ApiException

from agentauth.devcluster import server
from tests.devcluster.fixtures import security_webhook

GROUP = "agentauth.dev"
VERSION = "v1alpha1"


def wait_for(predicate: Callable[[], Any], *, timeout: float = 20, what: str = "") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        threading.Event().wait(0.02)


class Raw:
    """Plain HTTPS requests, for bodies and headers the typed client cannot produce."""

    def __init__(self, cluster: server.DevCluster, token: str) -> None:
        self._cluster = cluster
        self._token = token
        self._context = ssl.create_default_context(cafile=str(cluster.ca_path))

    def __call__(
        self,
        method: str,
        path: str,
        body: bytes | str | None = None,
        *,
        content_type: str = "application/json",
        accept: str = "application/json",
        token: str | None = None,
    ) -> tuple[int, dict[str, Any], http.client.HTTPResponse]:
        connection = http.client.HTTPSConnection(
            "127.0.0.1", self._cluster.port, context=self._context, timeout=30
        )
        headers = {"Content-Type": content_type, "Accept": accept}
        if token != "":
            headers["Authorization"] = f"Bearer {token or self._token}"
        connection.request(method, path, body=body, headers=headers)
        response = connection.getresponse()
        data = response.read()
        connection.close()
        return response.status, json.loads(data) if data else {}, response


@pytest.fixture(scope="module")
def raw(dev_cluster: server.DevCluster) -> Raw:
    return Raw(dev_cluster, dev_cluster.admin_token)


def _agent(name: str, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "Agent",
        "metadata": {"name": name},
        "spec": {"serviceAccountName": "bot", **spec},
    }


def test_identity_fields_and_generate_name(kube_api: Any, namespace: str) -> None:
    core = client.CoreV1Api(kube_api)
    created = core.create_namespaced_config_map(namespace, {"metadata": {"generateName": "gen-"}})
    assert re.fullmatch(r"gen-[bcdfghjklmnpqrstvwxz2456789]{5}", created.metadata.name)
    assert uuid.UUID(created.metadata.uid)
    assert created.metadata.creation_timestamp is not None
    other = core.create_namespaced_config_map(namespace, {"metadata": {"generateName": "gen-"}})
    assert other.metadata.name != created.metadata.name
    assert int(other.metadata.resource_version) > int(created.metadata.resource_version)


def test_generation_and_status_subresource_split(kube_api: Any, namespace: str) -> None:
    objects = client.CustomObjectsApi(kube_api)

    def patch(body: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
        method = (
            objects.patch_namespaced_custom_object_status
            if kwargs.pop("status", False)
            else objects.patch_namespaced_custom_object
        )
        result: dict[str, Any] = method(GROUP, VERSION, namespace, "agents", "g", body)
        return result

    created = objects.create_namespaced_custom_object(
        GROUP, VERSION, namespace, "agents", {**_agent("g"), "status": {"agentID": "dropped"}}
    )
    assert created["metadata"]["generation"] == 1
    assert "status" not in created  # create ignores status when the kind has the subresource
    labelled = patch({"metadata": {"labels": {"a": "b"}}})
    assert labelled["metadata"]["generation"] == 1  # metadata changes do not bump generation
    changed = patch({"spec": {"description": "new"}, "status": {"agentID": "ignored"}})
    assert changed["metadata"]["generation"] == 2
    assert "status" not in changed  # the main resource ignores status
    status = patch(
        {"status": {"agentID": "aauth:g"}, "spec": {"description": "ignored"}}, status=True
    )
    assert status["status"] == {"agentID": "aauth:g"}
    assert status["spec"]["description"] == "new"  # the status subresource ignores spec
    assert status["metadata"]["generation"] == 2
    # An identical write is a no-op: same resourceVersion, no event.
    again = patch({"spec": {"description": "new"}})
    assert again["metadata"]["resourceVersion"] == status["metadata"]["resourceVersion"]


def test_defaults_are_applied_from_the_schema(kube_api: Any, namespace: str) -> None:
    objects = client.CustomObjectsApi(kube_api)
    created = objects.create_namespaced_custom_object(
        GROUP, VERSION, namespace, "agents", _agent("defaults")
    )
    assert created["spec"]["tokenTTL"] == "2m"
    assert created["spec"]["suspended"] is False


def test_delete_with_finalizer_is_accepted_then_completes(raw: Raw, namespace: str) -> None:
    path = f"/api/v1/namespaces/{namespace}/configmaps"
    status, _, _ = raw(
        "POST", path, json.dumps({"metadata": {"name": "fin", "finalizers": ["example.com/x"]}})
    )
    assert status == 201
    status, body, _ = raw("DELETE", f"{path}/fin")
    assert status == 202
    assert body["metadata"]["deletionTimestamp"]
    # No new finalizers once deletion started.
    status, body, _ = raw(
        "PATCH",
        f"{path}/fin",
        json.dumps({"metadata": {"finalizers": ["example.com/x", "example.com/y"]}}),
        content_type="application/merge-patch+json",
    )
    assert status == 422
    assert "no new finalizers can be added if the object is being deleted" in body["message"]
    status, _, _ = raw(
        "PATCH",
        f"{path}/fin",
        json.dumps({"metadata": {"finalizers": []}}),
        content_type="application/merge-patch+json",
    )
    assert status == 200
    status, body, _ = raw("GET", f"{path}/fin")
    assert (status, body["message"]) == (404, 'configmaps "fin" not found')


def test_owner_reference_cascade_and_orphan(kube_api: Any, namespace: str) -> None:
    core = client.CoreV1Api(kube_api)
    owner = core.create_namespaced_config_map(namespace, {"metadata": {"name": "owner"}})
    reference = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "name": "owner",
        "uid": owner.metadata.uid,
    }
    for name in ("child-1", "child-2"):
        core.create_namespaced_secret(
            namespace, {"metadata": {"name": name, "ownerReferences": [reference]}}
        )
    core.delete_namespaced_config_map("owner", namespace)

    def children() -> list[str]:
        return [s.metadata.name for s in core.list_namespaced_secret(namespace).items]

    wait_for(lambda: children() == [], what="background cascade")

    orphan_owner = core.create_namespaced_config_map(namespace, {"metadata": {"name": "o2"}})
    reference["uid"] = orphan_owner.metadata.uid
    reference["name"] = "o2"
    core.create_namespaced_secret(
        namespace, {"metadata": {"name": "kept", "ownerReferences": [reference]}}
    )
    core.delete_namespaced_config_map("o2", namespace, propagation_policy="Orphan")
    kept = core.read_namespaced_secret("kept", namespace)
    assert not kept.metadata.owner_references


def test_namespace_deletion_removes_content(kube_api: Any, raw: Raw) -> None:
    core = client.CoreV1Api(kube_api)
    name = f"doomed-{uuid.uuid4().hex[:6]}"
    core.create_namespace({"metadata": {"name": name}})
    assert core.read_namespaced_service_account("default", name).metadata.name == "default"
    core.create_namespaced_config_map(
        name, {"metadata": {"name": "held", "finalizers": ["example.com/x"]}}
    )
    core.delete_namespace(name)
    terminating = core.read_namespace(name)
    assert terminating.status.phase == "Terminating"
    status, body, _ = raw(
        "POST", f"/api/v1/namespaces/{name}/configmaps", json.dumps({"metadata": {"name": "late"}})
    )
    assert status == 403
    assert body["message"] == (
        f'configmaps "late" is forbidden: unable to create new content '
        f"in namespace {name} because it is being terminated"
    )
    core.patch_namespaced_config_map("held", name, {"metadata": {"finalizers": None}})

    def gone() -> bool:
        try:
            core.read_namespace(name)
        except ApiException as error:
            return bool(error.status == 404)
        return False

    wait_for(gone, what="namespace removal")
    status, body, _ = raw(
        "POST", f"/api/v1/namespaces/{name}/configmaps", json.dumps({"metadata": {"name": "late"}})
    )
    assert (status, body["message"]) == (404, f'namespaces "{name}" not found')


def test_crd_is_served_at_once_and_removed_on_delete(
    kube_api: Any, raw: Raw, namespace: str
) -> None:
    extensions = client.ApiextensionsV1Api(kube_api)
    group = "served.agentauth.dev"
    extensions.create_custom_resource_definition(
        {
            "metadata": {"name": f"gadgets.{group}"},
            "spec": {
                "group": group,
                "scope": "Namespaced",
                "names": {"plural": "gadgets", "kind": "Gadget", "shortNames": ["gd"]},
                "versions": [
                    {
                        "name": "v1",
                        "served": True,
                        "storage": True,
                        "schema": {
                            "openAPIV3Schema": {
                                "type": "object",
                                "x-kubernetes-preserve-unknown-fields": True,
                            }
                        },
                    }
                ],
            },
        }
    )
    status, body, _ = raw("GET", f"/apis/{group}/v1")
    assert status == 200
    assert body["resources"][0]["name"] == "gadgets"
    status, _, _ = raw(
        "POST",
        f"/apis/{group}/v1/namespaces/{namespace}/gadgets",
        json.dumps({"apiVersion": f"{group}/v1", "kind": "Gadget", "metadata": {"name": "g1"}}),
    )
    assert status == 201
    crd = extensions.read_custom_resource_definition(f"gadgets.{group}")
    assert {c.type: c.status for c in crd.status.conditions}["Established"] == "True"
    extensions.delete_custom_resource_definition(f"gadgets.{group}")
    status, body, _ = raw("GET", f"/apis/{group}/v1/namespaces/{namespace}/gadgets")
    assert (status, body["message"]) == (404, "the server could not find the requested resource")


def test_dry_run_does_not_store(raw: Raw, namespace: str) -> None:
    path = f"/api/v1/namespaces/{namespace}/configmaps"
    status, body, _ = raw("POST", f"{path}?dryRun=All", json.dumps({"metadata": {"name": "dry"}}))
    assert status == 201 and body["metadata"]["name"] == "dry"
    status, _, _ = raw("GET", f"{path}/dry")
    assert status == 404


def test_table_from_printer_columns(raw: Raw, namespace: str) -> None:
    raw("POST", f"/apis/{GROUP}/{VERSION}/namespaces/{namespace}/agents", json.dumps(_agent("tbl")))
    status, body, _ = raw(
        "GET",
        f"/apis/{GROUP}/{VERSION}/namespaces/{namespace}/agents",
        accept="application/json;as=Table;v=v1;g=meta.k8s.io,application/json",
    )
    assert status == 200 and body["kind"] == "Table"
    names = [column["name"] for column in body["columnDefinitions"]]
    assert names[:3] == ["Name", "Service Account", "Ready"]
    assert body["rows"][0]["cells"][:2] == ["tbl", "bot"]
    assert body["rows"][0]["object"]["kind"] == "PartialObjectMetadata"


def test_bad_input(raw: Raw, namespace: str, dev_cluster: server.DevCluster) -> None:
    configmaps = f"/api/v1/namespaces/{namespace}/configmaps"
    status, body, _ = raw("POST", configmaps, "{not json")
    assert (status, body["reason"]) == (400, "BadRequest")
    assert body["message"].startswith("error decoding request body: ")
    status, body, _ = raw("POST", configmaps, "a: [", content_type="application/yaml")
    assert (status, body["reason"]) == (400, "BadRequest")
    status, body, _ = raw("GET", "/api/v1/widgets")
    assert (status, body["message"]) == (404, "the server could not find the requested resource")
    status, body, _ = raw(
        "POST",
        configmaps,
        json.dumps({"metadata": {"name": "big"}, "data": {"x": "y" * (3 * 1024 * 1024 + 10)}}),
    )
    assert (status, body["reason"]) == (413, "RequestEntityTooLarge")
    status, body, _ = raw(
        "POST", configmaps, json.dumps({"metadata": {"name": "x", "namespace": "elsewhere"}})
    )
    assert status == 400
    assert body["message"] == (
        "the namespace of the provided object does not match the namespace sent on the request"
    )
    status, body, _ = raw("POST", configmaps, json.dumps({"metadata": {"name": "Bad_Name"}}))
    assert (status, body["reason"]) == (422, "Invalid")
    assert body["details"]["causes"][0]["field"] == "metadata.name"
    status, body, _ = raw("GET", configmaps, token="")
    assert (status, body["reason"]) == (401, "Unauthorized")
    status, body, _ = raw("GET", configmaps, token="not-a-token")
    assert status == 401
    status, body, _ = raw("GET", f"{configmaps}?watch=true&resourceVersion=abc")
    assert (status, body["message"]) == (400, 'invalid resource version "abc"')
    status, body, _ = raw("PATCH", f"{configmaps}/none", "{}", content_type="text/plain")
    assert (status, body["reason"]) == (415, "UnsupportedMediaType")
    status, body, _ = raw("POST", configmaps, "null")
    assert status == 400
    # A protobuf ConfigMap whose metadata is a varint of 2**40 where a message belongs: decoding
    # it used to call bytes(2**40) (a MemoryError; a smaller number allocates that many bytes).
    type_meta = b"\n\x02v1\x12\tConfigMap"
    raw_object = b"\x08\x80\x80\x80\x80\x80\x20"
    envelope = b"\n" + bytes([len(type_meta)]) + type_meta + b"\x12" + bytes([len(raw_object)])
    status, body, _ = raw(
        "POST",
        configmaps,
        b"k8s\x00" + envelope + raw_object,
        content_type="application/vnd.kubernetes.protobuf",
    )
    assert (status, body["reason"], body["message"]) == (
        415,
        "UnsupportedMediaType",
        "wire type 0 where a length-delimited field is expected",
    )
    # The server survived all of it.
    status, _, _ = raw("GET", "/version")
    assert status == 200


def test_schema_violation_names_the_fields(raw: Raw, namespace: str) -> None:
    agents = f"/apis/{GROUP}/{VERSION}/namespaces/{namespace}/agents"
    status, body, _ = raw("POST", agents, json.dumps(_agent("inv", tokenTTL=5, suspended="yes")))
    assert (status, body["reason"]) == (422, "Invalid")
    fields = {cause["field"]: cause for cause in body["details"]["causes"]}
    # "<nil>": the CEL rules were skipped because of the type errors (kube-apiserver's wording).
    assert set(fields) == {"spec.tokenTTL", "spec.suspended", "<nil>"}
    assert fields["spec.suspended"]["message"] == (
        'Invalid value: "yes": spec.suspended in body must be of type boolean: "string"'
    )
    assert body["message"].startswith('Agent.agentauth.dev "inv" is invalid: [')
    status, body, _ = raw(
        "POST", f"{agents}?fieldValidation=Strict", json.dumps({**_agent("strict"), "extra": 1})
    )
    assert (status, body["message"]) == (
        400,
        'Agent in version "v1alpha1" cannot be handled as a Agent: '
        'strict decoding error: unknown field "extra"',
    )
    status, body, response = raw(
        "POST", f"{agents}?fieldValidation=Warn", json.dumps({**_agent("warned"), "extra": 1})
    )
    assert status == 201 and "extra" not in body
    assert response.getheader("Warning") == '299 - "unknown field \\"extra\\""'


def test_service_account_token_is_a_bearer_credential_under_rbac(
    kube_api: Any, namespace: str, dev_cluster: server.DevCluster
) -> None:
    core = client.CoreV1Api(kube_api)
    core.create_namespaced_service_account(namespace, {"metadata": {"name": "bot"}})
    issued = core.create_namespaced_service_account_token(
        "bot", namespace, {"spec": {"audiences": [dev_cluster.issuer], "expirationSeconds": 600}}
    )
    as_bot = Raw(dev_cluster, issued.status.token)
    status, body, _ = as_bot("GET", f"/api/v1/namespaces/{namespace}/configmaps")
    assert status == 403
    assert body["message"] == (
        f'configmaps is forbidden: User "system:serviceaccount:{namespace}:bot" cannot list '
        f'resource "configmaps" in API group "" in the namespace "{namespace}"'
    )
    rbac = client.RbacAuthorizationV1Api(kube_api)
    rbac.create_namespaced_role(
        namespace,
        {
            "metadata": {"name": "cm-reader"},
            "rules": [{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["list"]}],
        },
    )
    rbac.create_namespaced_role_binding(
        namespace,
        {
            "metadata": {"name": "bot-reads"},
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "Role",
                "name": "cm-reader",
            },
            "subjects": [{"kind": "ServiceAccount", "name": "bot", "namespace": namespace}],
        },
    )
    status, body, _ = as_bot("GET", f"/api/v1/namespaces/{namespace}/configmaps")
    assert (status, body["kind"]) == (200, "ConfigMapList")
    # Deleting the service account revokes its tokens.
    core.delete_namespaced_service_account("bot", namespace)
    status, _, _ = as_bot("GET", f"/api/v1/namespaces/{namespace}/configmaps")
    assert status == 401


def test_restart_keeps_objects_and_versions(tmp_path: Path) -> None:
    with server.running_cluster(tmp_path, apply_crds=False) as first:
        raw = Raw(first, first.admin_token)
        status, created, _ = raw(
            "POST",
            "/api/v1/namespaces/default/configmaps",
            json.dumps({"metadata": {"name": "kept"}, "data": {"a": "1"}}),
        )
        assert status == 201
        token = first.admin_token
    with server.running_cluster(tmp_path, apply_crds=False) as second:
        assert second.admin_token == token
        raw = Raw(second, token)
        status, found, _ = raw("GET", "/api/v1/namespaces/default/configmaps/kept")
        assert status == 200 and found["metadata"]["uid"] == created["metadata"]["uid"]
        status, newer, _ = raw(
            "POST",
            "/api/v1/namespaces/default/configmaps",
            json.dumps({"metadata": {"name": "newer"}}),
        )
        assert int(newer["metadata"]["resourceVersion"]) > int(
            created["metadata"]["resourceVersion"]
        )


@pytest.fixture
def webhook_authority() -> Iterator[security_webhook.Authority]:
    yield security_webhook.make_authority("test-webhook-ca")


async def test_admission_webhooks_mutate_and_deny(
    kube_api: Any, namespace: str, webhook_authority: security_webhook.Authority
) -> None:
    context = security_webhook.make_server_ssl_context(
        webhook_authority, dns_names=["localhost"], ips=["127.0.0.1"]
    )
    admission = client.AdmissionregistrationV1Api(kube_api)
    core = client.CoreV1Api(kube_api)
    async with security_webhook.WebhookServer(context) as hooks:
        hooks.on(
            "/mutate",
            lambda request: security_webhook.json_patch(
                [{"op": "add", "path": "/metadata/labels", "value": {"stamped": "yes"}}]
            ),
        )
        hooks.on(
            "/validate",
            lambda request: (
                {"allowed": True}
                if not request["name"].startswith("forbidden")
                else {
                    "allowed": False,
                    "status": {"code": 403, "message": "names like that are not allowed"},
                }
            ),
        )
        selector = {"matchLabels": {"kubernetes.io/metadata.name": namespace}}
        rules = [
            {
                "apiGroups": [""],
                "apiVersions": ["v1"],
                "resources": ["configmaps"],
                "operations": ["CREATE"],
            }
        ]
        name = f"hooks-{namespace}"

        def webhook(path: str) -> dict[str, Any]:
            return {
                "name": f"{path.strip('/')}.example.com",
                "rules": rules,
                "namespaceSelector": selector,
                "sideEffects": "None",
                "admissionReviewVersions": ["v1"],
                "failurePolicy": "Fail",
                "clientConfig": {
                    "url": f"{hooks.url}{path}",
                    "caBundle": webhook_authority.ca_bundle,
                },
            }

        await asyncio.to_thread(
            admission.create_mutating_webhook_configuration,
            {"metadata": {"name": name}, "webhooks": [webhook("/mutate")]},
        )
        await asyncio.to_thread(
            admission.create_validating_webhook_configuration,
            {"metadata": {"name": name}, "webhooks": [webhook("/validate")]},
        )
        try:
            created = await asyncio.to_thread(
                core.create_namespaced_config_map, namespace, {"metadata": {"name": "allowed"}}
            )
            assert created.metadata.labels == {"stamped": "yes"}
            with pytest.raises(ApiException) as raised:
                await asyncio.to_thread(
                    core.create_namespaced_config_map,
                    namespace,
                    {"metadata": {"name": "forbidden-1"}},
                )
            assert raised.value.status == 403
            assert (
                'admission webhook \\"validate.example.com\\" denied the request: names '
                "like that are not allowed"
            ) in raised.value.body
            reviewed = hooks.calls_to("/mutate")[0]["request"]
            assert reviewed["userInfo"]["username"] == "admin"
            assert reviewed["operation"] == "CREATE"
        finally:
            await asyncio.to_thread(admission.delete_mutating_webhook_configuration, name)
            await asyncio.to_thread(admission.delete_validating_webhook_configuration, name)


def test_events_are_one_store_behind_both_apis(kube_api: Any, namespace: str, kubectl: Any) -> None:
    core = client.CoreV1Api(kube_api)
    events_api = client.EventsV1Api(kube_api)
    core.create_namespaced_config_map(namespace, {"metadata": {"name": "target"}})
    uid = core.read_namespaced_config_map("target", namespace).metadata.uid
    events_api.create_namespaced_event(
        namespace,
        {
            "metadata": {"name": "via-events-api"},
            "eventTime": "2026-01-01T00:00:00.000000Z",
            "reportingController": "agentauth.dev/test",
            "reportingInstance": "test-1",
            "action": "Check",
            "reason": "Checked",
            "type": "Normal",
            "note": "checked it",
            "regarding": {
                "kind": "ConfigMap",
                "apiVersion": "v1",
                "name": "target",
                "namespace": namespace,
                "uid": uid,
            },
        },
    )
    as_core = core.read_namespaced_event("via-events-api", namespace)
    assert (as_core.message, as_core.involved_object.name) == ("checked it", "target")
    core.create_namespaced_event(
        namespace,
        {
            "metadata": {"name": "via-core-api"},
            "reason": "Poked",
            "message": "poked it",
            "type": "Warning",
            "source": {"component": "tester"},
            # (the Python client refuses an events.k8s.io Event without eventTime)
            "eventTime": "2026-01-01T00:00:01.000000Z",
            "involvedObject": {
                "kind": "ConfigMap",
                "name": "target",
                "namespace": namespace,
                "uid": uid,
            },
        },
    )
    listed = events_api.list_namespaced_event(namespace, field_selector="regarding.name=target")
    assert {(e.reason, e.note, e.reporting_controller) for e in listed.items} == {
        ("Checked", "checked it", "agentauth.dev/test"),
        ("Poked", "poked it", "tester"),
    }
    described = kubectl("describe", "configmap", "target", "-n", namespace).stdout
    assert "Checked" in described and "Poked" in described
