"""``Status`` error bodies, byte for byte as kube-apiserver writes them.

Each expected body below is what a real kube-apiserver answers for the same request (Go struct
field order, ``omitempty``, ``details`` present or absent per constructor, trailing newline).
They are compared as the clients see them: the official client's ``ApiException.body``, the
aio client's ``ApiException.body``, a raw watch stream, and what kubectl prints.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.rest import ApiException

from agentauth.devcluster import server, statuses
from tests.conftest import Kubectl, client_configuration
from tests.stack import user_api

_HEAD = '{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure",'


def _body(call: Any, *args: Any, **kwargs: Any) -> tuple[int, str]:
    with pytest.raises(ApiException) as raised:
        call(*args, **kwargs)
    return raised.value.status, raised.value.body


def _raw(api: Any, method: str, path: str, **options: Any) -> Any:
    """A raw request through the official client's REST layer (no model decoding)."""
    url = api.configuration.host + path
    headers = {"Authorization": api.configuration.get_api_key_with_prefix("BearerToken")}
    headers.update(options.pop("headers", {}))
    return api.rest_client.pool_manager.request(
        method, url, headers=headers, preload_content=False, **options
    )


def test_not_found_core_and_grouped(kube_api: Any, namespace: str) -> None:
    core = client.CoreV1Api(kube_api)
    code, body = _body(core.read_namespaced_config_map, "nope", namespace)
    assert code == 404
    assert body == (
        _HEAD + '"message":"configmaps \\"nope\\" not found","reason":"NotFound",'
        '"details":{"name":"nope","kind":"configmaps"},"code":404}\n'
    )
    apps = client.AppsV1Api(kube_api)
    code, body = _body(apps.read_namespaced_deployment, "nope", namespace)
    assert body == (
        _HEAD + '"message":"deployments.apps \\"nope\\" not found","reason":"NotFound",'
        '"details":{"name":"nope","group":"apps","kind":"deployments"},"code":404}\n'
    )


def test_path_nothing_serves_is_the_generic_not_found(kube_api: Any) -> None:
    response = _raw(kube_api, "GET", "/apis/nothing.example.com/v1/things")
    assert response.status == 404
    assert response.headers["Content-Type"] == "application/json"
    assert response.data == (
        _HEAD.encode() + b'"message":"the server could not find the requested resource",'
        b'"reason":"NotFound","details":{},"code":404}\n'
    )


def test_already_exists_and_conflict(kube_api: Any, namespace: str) -> None:
    core = client.CoreV1Api(kube_api)
    created = core.create_namespaced_config_map(namespace, {"metadata": {"name": "c"}})
    code, body = _body(core.create_namespaced_config_map, namespace, {"metadata": {"name": "c"}})
    assert (code, body) == (
        409,
        _HEAD + '"message":"configmaps \\"c\\" already exists","reason":"AlreadyExists",'
        '"details":{"name":"c","kind":"configmaps"},"code":409}\n',
    )
    created.data = {"k": "first"}
    core.replace_namespaced_config_map("c", namespace, created)
    created.data = {"k": "second"}
    code, body = _body(core.replace_namespaced_config_map, "c", namespace, created)
    assert (code, body) == (
        409,
        _HEAD + '"message":"Operation cannot be fulfilled on configmaps \\"c\\": the object '
        "has been modified; please apply your changes to the latest version and try again"
        '","reason":"Conflict","details":{"name":"c","kind":"configmaps"},"code":409}\n',
    )


def test_invalid_lists_causes_in_upstream_order(kube_api: Any, namespace: str) -> None:
    core = client.CoreV1Api(kube_api)
    pod = {
        "metadata": {"name": "p"},
        "spec": {"containers": [{"name": "a"}, {"name": "a", "image": "x"}]},
    }
    code, body = _body(core.create_namespaced_pod, namespace, pod)
    assert (code, body) == (
        422,
        _HEAD + '"message":"Pod \\"p\\" is invalid: [spec.containers[0].image: Required value, '
        'spec.containers[1].name: Duplicate value: \\"a\\"]","reason":"Invalid",'
        '"details":{"name":"p","kind":"Pod","causes":['
        '{"reason":"FieldValueRequired","message":"Required value",'
        '"field":"spec.containers[0].image"},'
        '{"reason":"FieldValueDuplicate","message":"Duplicate value: \\"a\\"",'
        '"field":"spec.containers[1].name"}]},"code":422}\n',
    )


def test_forbidden_and_unauthorized(dev_cluster: server.DevCluster, namespace: str) -> None:
    with user_api(dev_cluster, dev_cluster.user_tokens["alice"]) as alice:
        code, body = _body(client.AppsV1Api(alice).read_namespaced_deployment, "d", namespace)
        assert (code, body) == (
            403,
            _HEAD + '"message":"deployments.apps \\"d\\" is forbidden: User \\"alice\\" cannot '
            'get resource \\"deployments\\" in API group \\"apps\\" in the namespace \\"'
            + namespace
            + '\\"","reason":"Forbidden","details":{"name":"d","group":"apps",'
            '"kind":"deployments"},"code":403}\n',
        )
        response = _raw(alice, "GET", "/metrics")
        assert response.status == 403
        assert response.data == (
            _HEAD.encode() + b'"message":"forbidden: User \\"alice\\" cannot get path '
            b'\\"/metrics\\"","reason":"Forbidden","details":{},"code":403}\n'
        )
    with user_api(dev_cluster, "not-a-token") as stranger:
        code, body = _body(client.CoreV1Api(stranger).list_namespace)
        assert (code, body) == (
            401,
            _HEAD + '"message":"Unauthorized","reason":"Unauthorized","code":401}\n',
        )


def test_method_not_allowed_is_go_restfuls_405(kube_api: Any) -> None:
    response = _raw(kube_api, "GET", "/apis/authentication.k8s.io/v1/tokenreviews")
    assert response.status == 405
    assert response.data == (
        _HEAD.encode() + b'"message":"the server does not allow this method on the requested '
        b'resource","reason":"MethodNotAllowed","details":{"causes":[{"reason":'
        b'"UnexpectedServerResponse","message":"405: Method Not Allowed"}]},"code":405}\n'
    )


def test_bad_request_and_unsupported_media_type_have_no_details(
    kube_api: Any, namespace: str
) -> None:
    path = f"/api/v1/namespaces/{namespace}/configmaps"
    response = _raw(kube_api, "POST", path, body=b"{", headers={"Content-Type": "application/json"})
    assert response.status == 400
    assert response.data.startswith(_HEAD.encode() + b'"message":"error decoding request body')
    assert response.data.endswith(b'","reason":"BadRequest","code":400}\n')
    core = client.CoreV1Api(kube_api)
    core.create_namespaced_config_map(namespace, {"metadata": {"name": "m"}})
    response = _raw(
        kube_api, "PATCH", f"{path}/m", body=b"{}", headers={"Content-Type": "text/plain"}
    )
    assert response.status == 415
    assert response.data == (
        _HEAD.encode() + b'"message":"the body of the request was in an unknown format - '
        b"accepted media types include: application/json-patch+json, "
        b"application/merge-patch+json, application/apply-patch+yaml, "
        b'application/strategic-merge-patch+json","reason":"UnsupportedMediaType",'
        b'"code":415}\n'
    )


def test_failing_webhook_is_an_internal_error_with_its_cause(kube_api: Any, namespace: str) -> None:
    label = f"fail-{uuid.uuid4().hex[:8]}"
    webhooks = client.AdmissionregistrationV1Api(kube_api)
    webhooks.create_validating_webhook_configuration(
        {
            "metadata": {"name": label},
            "webhooks": [
                {
                    "name": "fail.agentauth.test",
                    "clientConfig": {"url": "https://127.0.0.1:1/validate"},
                    "rules": [
                        {
                            "apiGroups": [""],
                            "apiVersions": ["v1"],
                            "operations": ["CREATE"],
                            "resources": ["configmaps"],
                        }
                    ],
                    "objectSelector": {"matchLabels": {"test": label}},
                    "sideEffects": "None",
                    "admissionReviewVersions": ["v1"],
                    "timeoutSeconds": 2,
                }
            ],
        }
    )
    try:
        code, body = _body(
            client.CoreV1Api(kube_api).create_namespaced_config_map,
            namespace,
            {"metadata": {"name": "w", "labels": {"test": label}}},
        )
    finally:
        webhooks.delete_validating_webhook_configuration(label)
    status = json.loads(body)
    cause = status["details"]["causes"][0]["message"]
    assert cause.startswith('failed calling webhook "fail.agentauth.test": ')
    assert code == 500
    assert body == (
        _HEAD
        + '"message":'
        + statuses.go_json(f"Internal error occurred: {cause}")
        + ',"reason":"InternalError","details":{"causes":[{"message":'
        + statuses.go_json(cause)
        + '}]},"code":500}\n'
    )


def test_delete_answers_the_success_status(kube_api: Any, namespace: str) -> None:
    core = client.CoreV1Api(kube_api)
    created = core.create_namespaced_config_map(namespace, {"metadata": {"name": "gone"}})
    response = _raw(kube_api, "DELETE", f"/api/v1/namespaces/{namespace}/configmaps/gone")
    assert response.status == 200
    assert response.data == (
        b'{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Success","details":'
        b'{"name":"gone","kind":"configmaps","uid":"' + created.metadata.uid.encode() + b'"}}\n'
    )


def test_aio_client_sees_the_same_bytes(dev_cluster: server.DevCluster, namespace: str) -> None:
    from kubernetes.aio import client as aio_client

    async def read() -> tuple[int, str]:
        configuration = client_configuration(dev_cluster, dev_cluster.admin_token)
        aio_configuration = aio_client.Configuration()
        aio_configuration.host = configuration.host
        aio_configuration.ssl_ca_cert = configuration.ssl_ca_cert
        aio_configuration.api_key = dict(configuration.api_key)
        aio_configuration.api_key_prefix = dict(configuration.api_key_prefix)
        async with aio_client.ApiClient(aio_configuration) as api:
            try:
                await aio_client.CoreV1Api(api).read_namespaced_secret("nope", namespace)
            except aio_client.ApiException as error:
                return int(error.status), str(
                    error.body.decode() if isinstance(error.body, bytes) else error.body
                )
        raise AssertionError("no error")

    code, body = asyncio.run(read())
    assert (code, body) == (
        404,
        _HEAD + '"message":"secrets \\"nope\\" not found","reason":"NotFound",'
        '"details":{"name":"nope","kind":"secrets"},"code":404}\n',
    )


def test_kubectl_reads_reason_and_message(kubectl: Kubectl, namespace: str) -> None:
    result = kubectl("get", "configmap", "nope", "-n", namespace, check=False)
    assert result.returncode == 1
    assert result.stderr.strip() == 'Error from server (NotFound): configmaps "nope" not found'
    result = kubectl("get", "--raw", "/apis/nothing.example.com/v1", check=False)
    assert result.stderr.strip() == (
        "Error from server (NotFound): the server could not find the requested resource"
    )
    verbose = kubectl("get", "configmap", "nope", "-n", namespace, "-v=8", check=False)
    # kubectl logs the body it received before turning it into the message above.
    assert (
        '{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","message":'
        '"configmaps \\"nope\\" not found","reason":"NotFound","details":{"name":"nope",'
        '"kind":"configmaps"},"code":404}' in verbose.stderr
    )


@pytest.fixture(scope="module")
def small_window(tmp_path_factory: pytest.TempPathFactory) -> Iterator[server.DevCluster]:
    directory: Path = tmp_path_factory.mktemp("statuses-window")
    with server.running_cluster(directory, history_window=3, apply_crds=False) as cluster:
        yield cluster


def test_watch_expired_event_bytes(small_window: server.DevCluster) -> None:
    configuration = client_configuration(small_window, small_window.admin_token)
    with client.ApiClient(configuration) as api:
        core = client.CoreV1Api(api)
        start = core.list_namespaced_config_map("default").metadata.resource_version
        for index in range(5):
            core.create_namespaced_config_map("default", {"metadata": {"name": f"e-{index}"}})
        response = _raw(
            api,
            "GET",
            f"/api/v1/namespaces/default/configmaps?watch=1&resourceVersion={start}",
        )
        frame = response.data
    message = json.loads(frame)["object"]["message"]
    assert message.startswith(f"too old resource version: {start} (")
    assert frame == (
        b'{"type":"ERROR","object":{"kind":"Status","apiVersion":"v1","metadata":{},'
        b'"status":"Failure","message":"' + message.encode() + b'","reason":"Expired",'
        b'"code":410}}\n'
    )


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        (
            statuses.too_many_requests("please try again later", retry_after_seconds=1),
            _HEAD + '"message":"Too many requests: please try again later",'
            '"reason":"TooManyRequests","details":{"retryAfterSeconds":1},"code":429}\n',
        ),
        (
            statuses.service_unavailable("storage is not ready"),
            _HEAD + '"message":"storage is not ready","reason":"ServiceUnavailable","code":503}\n',
        ),
        (
            statuses.failure(400, "BadRequest", "a <b> & c\u00e9"),
            _HEAD + '"message":"a \\u003cb\\u003e \\u0026 c\u00e9","reason":"BadRequest",'
            '"code":400}\n',
        ),
    ],
)
def test_constructors_the_server_does_not_reach_yet(status: dict[str, Any], expected: str) -> None:
    # No request path answers 429 or 503 today; these pin the bytes for when one does, and the
    # Go escaping of HTML-sensitive characters.
    assert statuses.encode(status).decode() == expected
