"""Request attributes for the authorizer, like Kubernetes' RequestInfoFactory."""

from __future__ import annotations

import pytest

from agentauth.devcluster import requestinfo


@pytest.mark.parametrize(
    ("method", "path", "query", "expected"),
    [
        ("GET", "/api/v1/namespaces/ns/pods", {}, ("list", "", "pods", "", "ns", "")),
        (
            "GET",
            "/api/v1/namespaces/ns/pods",
            {"watch": "True"},
            ("watch", "", "pods", "", "ns", ""),
        ),
        ("GET", "/api/v1/watch/namespaces/ns/pods", {}, ("watch", "", "pods", "", "ns", "")),
        (
            "GET",
            "/api/v1/namespaces/ns/pods",
            {"fieldSelector": "metadata.name=p"},
            ("list", "", "pods", "", "ns", "p"),
        ),
        (
            "PATCH",
            "/apis/agentauth.dev/v1alpha1/namespaces/ns/agents/a/status",
            {},
            ("patch", "agentauth.dev", "agents", "status", "ns", "a"),
        ),
        (
            "POST",
            "/api/v1/namespaces/ns/serviceaccounts/bot/token",
            {},
            ("create", "", "serviceaccounts", "token", "ns", "bot"),
        ),
        ("GET", "/api/v1/namespaces/ns", {}, ("get", "", "namespaces", "", "ns", "ns")),
        (
            "PUT",
            "/api/v1/namespaces/ns/status",
            {},
            ("update", "", "namespaces", "status", "ns", "ns"),
        ),
        (
            "DELETE",
            "/apis/rbac.authorization.k8s.io/v1/clusterroles",
            {},
            ("deletecollection", "rbac.authorization.k8s.io", "clusterroles", "", "", ""),
        ),
    ],
)
def test_resource_requests(
    method: str, path: str, query: dict[str, str], expected: tuple[str, ...]
) -> None:
    attributes = requestinfo.parse(method, path, query)
    assert attributes.resource_request
    assert (
        attributes.verb,
        attributes.api_group,
        attributes.resource,
        attributes.subresource,
        attributes.namespace,
        attributes.name,
    ) == expected


@pytest.mark.parametrize(
    "path",
    [
        "/api",
        "/apis",
        "/apis/agentauth.dev",
        "/api/v1",
        "/apis/agentauth.dev/v1alpha1",
        "/version",
        "/openapi/v3",
    ],
)
def test_non_resource_requests(path: str) -> None:
    attributes = requestinfo.parse("GET", path, {})
    assert not attributes.resource_request
    assert (attributes.verb, attributes.path) == ("get", path)
