"""``/openapi/v2`` and ``/openapi/v3`` generated from the schemas the server decodes with, as
kubectl, the official client and the Swagger consumers read them."""

from __future__ import annotations

import json
from typing import Any

import pytest
import yaml
from kubernetes import client
from kubernetes.client.rest import ApiException

from agentauth.devcluster import openapiv2
from tests.conftest import Kubectl


def _get(api: Any, path: str, accept: str = "application/json") -> Any:
    headers = {
        "Authorization": api.configuration.get_api_key_with_prefix("BearerToken"),
        "Accept": accept,
    }
    return api.rest_client.pool_manager.request(
        "GET", api.configuration.host + path, headers=headers
    )


def test_kubectl_creates_a_token_review_with_client_side_validation(kubectl: Kubectl) -> None:
    # TokenReview has no patch operation, so kubectl validates it with /openapi/v2 (protobuf).
    review = {
        "apiVersion": "authentication.k8s.io/v1",
        "kind": "TokenReview",
        "spec": {"token": "not-a-token"},
    }
    result = kubectl("create", "-f", "-", "-o", "json", input=json.dumps(review))
    assert json.loads(result.stdout)["status"].get("authenticated") is not True
    bad = {**review, "spec": {"token": "x", "bogus": 1}}
    refused = kubectl("create", "-f", "-", input=json.dumps(bad), check=False)
    assert refused.returncode == 1
    # kubectl's own validation against the v2 schema refuses it before sending anything.
    assert refused.stderr.startswith(
        'error: error validating "STDIN": error validating data: ValidationError(TokenReview.spec):'
        ' unknown field "bogus" in io.k8s.api.authentication.v1.TokenReviewSpec;'
    )


def test_swagger_json_and_protobuf(kube_api: Any) -> None:
    response = _get(kube_api, "/openapi/v2")
    assert response.status == 200 and response.headers["Content-Type"] == "application/json"
    swagger = json.loads(response.data)
    assert swagger["swagger"] == "2.0"
    job = swagger["definitions"]["io.k8s.api.batch.v1.Job"]
    assert job["x-kubernetes-group-version-kind"] == [
        {"group": "batch", "kind": "Job", "version": "v1"}
    ]
    assert job["properties"]["spec"] == {
        "$ref": "#/definitions/io.k8s.api.batch.v1.JobSpec",
        "description": job["properties"]["spec"]["description"],
    }
    ports = swagger["definitions"]["io.k8s.api.core.v1.ServicePort"]["properties"]
    assert (
        ports["targetPort"]["$ref"]
        == "#/definitions/io.k8s.apimachinery.pkg.util.intstr.IntOrString"
    )
    assert swagger["definitions"]["io.k8s.apimachinery.pkg.util.intstr.IntOrString"]["format"] == (
        "int-or-string"
    )
    jobs = swagger["paths"]["/apis/batch/v1/namespaces/{namespace}/jobs/{name}"]
    assert {"name": "fieldValidation", "in": "query", "type": "string", "uniqueItems": True} in (
        jobs["patch"]["parameters"]
    )
    assert "dev.agentauth.v1alpha1.Agent" in swagger["definitions"]
    # Only a post for kinds that are answered, never stored.
    assert list(swagger["paths"]["/apis/authentication.k8s.io/v1/tokenreviews"]) == ["post"]

    for accept in openapiv2.PROTOBUF_ACCEPTED:
        response = _get(kube_api, "/openapi/v2", accept=accept)
        assert response.headers["Content-Type"] == openapiv2.PROTOBUF_MEDIA_TYPE
        assert response.data == openapiv2.document(swagger)


def test_v3_has_every_served_group_with_its_schemas(kube_api: Any) -> None:
    index = json.loads(_get(kube_api, "/openapi/v3").data)["paths"]
    for key in (
        "api/v1",
        "apis/batch/v1",
        "apis/apps/v1",
        "apis/policy/v1",
        "apis/networking.k8s.io/v1",
        "apis/discovery.k8s.io/v1",
        "apis/apiregistration.k8s.io/v1",
        "apis/authentication.k8s.io/v1",
        "apis/agentauth.dev/v1alpha1",
    ):
        assert key in index
    batch = json.loads(_get(kube_api, index["apis/batch/v1"]["serverRelativeURL"]).data)
    schemas = batch["components"]["schemas"]
    assert schemas["io.k8s.api.batch.v1.CronJob"]["properties"]["spec"]["$ref"] == (
        "#/components/schemas/io.k8s.api.batch.v1.CronJobSpec"
    )
    assert "io.k8s.api.core.v1.PodSpec" in schemas
    core = json.loads(_get(kube_api, index["api/v1"]["serverRelativeURL"]).data)
    assert "/api/v1/nodes/{name}" in core["paths"]


def test_kubectl_explain_renders_upstream_descriptions(kubectl: Kubectl) -> None:
    result = kubectl("explain", "cronjob.spec.successfulJobsHistoryLimit")
    assert "The number of successful finished jobs to retain" in result.stdout
    result = kubectl("explain", "poddisruptionbudget.spec.minAvailable")
    assert "IntOrString" in result.stdout or "<Object>" in result.stdout


def _deployment(name: str, **container: Any) -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {"containers": [{"name": "main", "image": "busybox", **container}]},
            },
        },
    }


def test_unknown_fields_in_builtin_kinds_as_upstream(
    kubectl: Kubectl, kube_api: Any, namespace: str
) -> None:
    manifest = yaml.safe_dump(_deployment("strict", bogus=1))
    refused = kubectl(
        "apply", "-n", namespace, "--validate=strict", "-f", "-", input=manifest, check=False
    )
    assert refused.returncode == 1
    assert refused.stderr.strip() == (
        'Error from server (BadRequest): error when creating "STDIN": Deployment in version '
        '"v1" cannot be handled as a Deployment: strict decoding error: unknown field '
        '"spec.template.spec.containers[0].bogus"'
    )
    warned = kubectl("apply", "-n", namespace, "--validate=warn", "-f", "-", input=manifest)
    assert 'unknown field "spec.template.spec.containers[0].bogus"' in warned.stderr
    stored = client.AppsV1Api(kube_api).read_namespaced_deployment(
        "strict", namespace, _preload_content=False
    )
    # Dropped from the object; only kubectl's last-applied annotation still quotes it.
    assert "bogus" not in json.dumps(json.loads(stored.data)["spec"])


def test_type_mismatch_is_the_go_decoding_error(kube_api: Any, namespace: str) -> None:
    body = _deployment("typed")
    body["spec"]["replicas"] = "three"
    with pytest.raises(ApiException) as raised:
        client.AppsV1Api(kube_api).create_namespaced_deployment(namespace, body)
    assert raised.value.status == 400
    assert json.loads(raised.value.body)["message"] == (
        'Deployment in version "v1" cannot be handled as a Deployment: json: cannot unmarshal '
        "string into Go struct field DeploymentSpec.spec.replicas of type int32"
    )
    config = {"metadata": {"name": "c"}, "data": {"n": 1}}
    with pytest.raises(ApiException) as raised:
        client.CoreV1Api(kube_api).create_namespaced_config_map(namespace, config)
    assert json.loads(raised.value.body)["message"] == (
        'ConfigMap in version "v1" cannot be handled as a ConfigMap: json: cannot unmarshal '
        "number into Go struct field ConfigMap.data of type string"
    )


def test_kubectl_apply_strict_refuses_a_custom_resource_field(
    kubectl: Kubectl, namespace: str
) -> None:
    agent = {
        "apiVersion": "agentauth.dev/v1alpha1",
        "kind": "Agent",
        "metadata": {"name": "a"},
        "spec": {"serviceAccountName": "bot", "bogus": True},
    }
    refused = kubectl(
        "apply",
        "-n",
        namespace,
        "--validate=strict",
        "-f",
        "-",
        input=json.dumps(agent),
        check=False,
    )
    assert refused.stderr.strip() == (
        'Error from server (BadRequest): error when creating "STDIN": Agent in version '
        '"v1alpha1" cannot be handled as a Agent: strict decoding error: unknown field '
        '"spec.bogus"'
    )
