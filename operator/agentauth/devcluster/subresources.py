"""Requests answered without storing anything: the review kinds and ``serviceaccounts/token``.

TokenReview, SubjectAccessReview (and the local and self variants), SelfSubjectRulesReview and
SelfSubjectReview are create-only kinds computed from the request (:mod:`reviews`); the
``token`` subresource of a ServiceAccount issues a bound token (:mod:`serviceaccounts`). Both
answer ``201`` with the computed object, or the ``Status`` their module's error carries.
"""

from __future__ import annotations

from aiohttp import web

from agentauth.devcluster import (
    context,
    decoding,
    errors,
    resources,
    responses,
    reviews,
    serviceaccounts,
    types,
)


async def review(
    server: context.Server,
    request: web.Request,
    *,
    rt: resources.ResourceType,
    user: types.UserInfo,
    namespace: str,
) -> web.Response:
    body = await decoding.read_body(request)
    if not isinstance(body, dict):
        raise errors.bad_request(
            "the body of the request was in an unknown format: expected an object"
        )
    try:
        if rt.plural == "tokenreviews":
            result = reviews.token_review(body, authenticator=server.authenticator)
        elif rt.plural == "subjectaccessreviews":
            result = reviews.subject_access_review(body, authorizer=server.authorizer)
        elif rt.plural == "localsubjectaccessreviews":
            result = reviews.local_subject_access_review(
                body, namespace=namespace, authorizer=server.authorizer
            )
        elif rt.plural == "selfsubjectrulesreviews":
            result = reviews.self_subject_rules_review(
                body, user=user, authorizer=server.authorizer
            )
        elif rt.plural == "selfsubjectaccessreviews":
            result = reviews.self_subject_access_review(
                body, user=user, authorizer=server.authorizer
            )
        else:
            result = {
                "kind": "SelfSubjectReview",
                "apiVersion": "authentication.k8s.io/v1",
                "metadata": {"creationTimestamp": context.now()},
                "status": {"userInfo": user.to_api()},
            }
    except reviews.ReviewError as error:
        details = {"causes": error.causes} if error.causes else None
        raise errors.ApiError(error.code, error.reason, error.message, details=details) from None
    return responses.json_response(result, status=201)


async def token_request(
    server: context.Server, request: web.Request, *, namespace: str, name: str
) -> web.Response:
    body = await decoding.read_body(request)
    if not isinstance(body, dict):
        raise errors.bad_request(
            "the body of the request was in an unknown format: expected an object"
        )
    try:
        result = serviceaccounts.token_request(
            issuer=server.token_issuer,
            reader=server.reader,
            namespace=namespace,
            service_account_name=name,
            body=body,
        )
    except serviceaccounts.TokenRequestError as error:
        details = {"causes": error.causes} if error.causes else None
        raise errors.ApiError(error.code, error.reason, error.message, details=details) from None
    return responses.json_response(result, status=201)
