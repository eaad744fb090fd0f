"""API errors become sentences a person can act on."""

from __future__ import annotations

import json
from typing import Any

from kubernetes.client import exceptions as k8s_exceptions

from agentauth.kubectl_plugin import errors


def api_error(status: int, body: dict[str, Any]) -> k8s_exceptions.ApiException:
    error = k8s_exceptions.ApiException(status=status, reason="x")
    error.body = json.dumps(body)
    return error


def explain(error: k8s_exceptions.ApiException) -> str:
    return errors.from_api_error(
        error, action="approve", what="access request 'buyer-1'", namespace="shop", context="bob"
    ).message


def test_webhook_denial_keeps_the_webhook_sentence() -> None:
    error = api_error(
        403,
        {
            "message": 'admission webhook "accessrequests.agentauth.dev" denied the request: '
            "user 'bob' may not approve access request 'buyer-1': ..."
        },
    )
    assert explain(error) == "user 'bob' may not approve access request 'buyer-1': ..."


def test_rbac_forbidden_names_user_verb_and_resource() -> None:
    error = api_error(
        403,
        {
            "message": 'accessrequests.agentauth.dev "buyer-1" is forbidden: User "bob" cannot '
            'update resource "accessrequests/status" in API group "agentauth.dev" in the '
            'namespace "shop"'
        },
    )
    assert explain(error) == (
        "cannot approve access request 'buyer-1': user 'bob' is not allowed to update "
        "accessrequests/status.agentauth.dev in namespace 'shop'; ask a cluster admin for a Role "
        "that grants it (for approvers: bind the ClusterRole 'agentauth-approver')"
    )


def test_not_found_suggests_listing() -> None:
    error = api_error(404, {"message": "not found", "details": {"name": "buyer-1"}})
    assert explain(error) == (
        "access request 'buyer-1' not found in namespace 'shop'; list them with "
        "'kubectl agentauth requests -n shop --all'"
    )
    missing_crd = api_error(404, {"message": "the server could not find the requested resource"})
    assert explain(missing_crd) == (
        "cannot approve access request 'buyer-1': the API server does not serve this resource; "
        "are the agentauth CRDs installed? (agentauth crds | kubectl apply -f -)"
    )


def test_unauthorized_and_other_codes() -> None:
    assert explain(api_error(401, {"message": "Unauthorized"})) == (
        "the API server did not accept your credentials (context 'bob'): log in again, or pass "
        "a valid --token"
    )
    assert explain(api_error(422, {"message": "spec.x: Invalid value"})) == (
        "cannot approve access request 'buyer-1': the API server rejected it: spec.x: Invalid value"
    )
    assert explain(api_error(500, {"message": "boom"})) == (
        "cannot approve access request 'buyer-1': API error 500: boom"
    )


def test_connection_error_message() -> None:
    message = errors.from_connection_error(
        ConnectionRefusedError("Connection refused"), server="https://127.0.0.1:1", context="dev"
    ).message
    assert message == (
        "cannot reach the API server at https://127.0.0.1:1 (context 'dev'): Connection refused; "
        "check that the cluster is running and the kubeconfig points at it"
    )
