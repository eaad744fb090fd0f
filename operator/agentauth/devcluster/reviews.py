"""TokenReview, SubjectAccessReview and SelfSubjectAccessReview, answered like kube-apiserver.

Guarantees:

- A TokenReview goes through the same :class:`~agentauth.devcluster.authn.Authenticator` as every
  request: a token is reported authenticated only while its service account (and bound pod or
  secret) still exist. ``spec.audiences`` (default: the API audiences) must intersect the token's
  audiences; ``status.audiences`` is that intersection.
- Access reviews are answered by the same :class:`~agentauth.devcluster.rbac.RBACAuthorizer` that
  guards the API, so ``kubectl auth can-i`` and real requests never disagree.
- Malformed bodies raise :class:`ReviewError` with the real server's code and message (400 for a
  body that is not a review, 422 ``Invalid`` for a spec that fails validation).
"""

from __future__ import annotations

from typing import Any

from agentauth.devcluster import authn, rbac, types


class ReviewError(types.StatusError):
    """A refused review request; ``code``/``reason``/``message``/``causes`` form the ``Status``."""


def _check_envelope(body: Any, *, kind: str, group: str) -> tuple[dict[str, Any], dict[str, Any]]:
    if not isinstance(body, dict):
        raise ReviewError(400, "BadRequest", f"the body of a {kind} must be an object")
    if body.get("kind", kind) != kind or body.get("apiVersion", f"{group}/v1") not in (
        f"{group}/v1",
        f"{group}/v1beta1",
    ):
        raise ReviewError(
            400,
            "BadRequest",
            f"expected kind {kind} in {group}/v1, got kind {body.get('kind')!r} "
            f"in {body.get('apiVersion')!r}",
        )
    spec = body.get("spec")
    if not isinstance(spec, dict):
        spec = {}
    metadata = body.get("metadata")
    if not isinstance(metadata, dict):
        metadata = {}
    return spec, metadata


def _invalid(kind: str, causes: list[tuple[str, str]]) -> ReviewError:
    rendered = [f"{field}: {message}" for field, message in causes]
    detail = rendered[0] if len(rendered) == 1 else "[" + ", ".join(rendered) + "]"
    return ReviewError(
        422,
        "Invalid",
        f'{kind}.authorization.k8s.io "" is invalid: {detail}',
        causes=[
            {"reason": "FieldValueInvalid", "message": message, "field": field}
            for field, message in causes
        ],
    )


def _response(
    kind: str, group: str, metadata: dict[str, Any], spec: dict[str, Any]
) -> dict[str, Any]:
    return {
        "kind": kind,
        "apiVersion": f"{group}/v1",
        "metadata": {**metadata, "creationTimestamp": None},
        "spec": spec,
    }


def token_review(body: dict[str, Any], *, authenticator: authn.Authenticator) -> dict[str, Any]:
    """``POST /apis/authentication.k8s.io/v1/tokenreviews``."""
    spec, metadata = _check_envelope(body, kind="TokenReview", group="authentication.k8s.io")
    token = spec.get("token")
    if not isinstance(token, str) or not token:
        raise ReviewError(400, "BadRequest", "token is required for TokenReview")
    audiences = spec.get("audiences") or []
    if not isinstance(audiences, list) or not all(isinstance(a, str) for a in audiences):
        raise ReviewError(400, "BadRequest", "spec.audiences must be a list of strings")
    response = _response("TokenReview", "authentication.k8s.io", metadata, spec)
    try:
        user, matched = authenticator.authenticate_token(token, audiences=audiences or None)
    except authn.Unauthenticated as exc:
        # Like the real server's union authenticator, errors are reported as an aggregate.
        response["status"] = {"user": {}, "error": f"[{exc.message}]"}
        return response
    response["status"] = {"authenticated": True, "user": user.to_api(), "audiences": matched}
    return response


def _resource_attributes(raw: dict[str, Any]) -> types.RequestAttributes:
    def text(key: str) -> str:
        value = raw.get(key, "")
        return value if isinstance(value, str) else ""

    return types.RequestAttributes(
        verb=text("verb"),
        resource_request=True,
        api_group=text("group"),
        api_version=text("version"),
        resource=text("resource"),
        subresource=text("subresource"),
        namespace=text("namespace"),
        name=text("name"),
    )


def _attributes(kind: str, spec: dict[str, Any]) -> types.RequestAttributes:
    resource = spec.get("resourceAttributes")
    non_resource = spec.get("nonResourceAttributes")
    if resource is not None and non_resource is not None:
        raise _invalid(
            kind,
            [
                (
                    "spec.nonResourceAttributes",
                    "Invalid value: cannot be specified in combination with resourceAttributes",
                )
            ],
        )
    if resource is None and non_resource is None:
        raise _invalid(
            kind,
            [
                (
                    "spec.resourceAttributes",
                    'Invalid value: "null": exactly one of nonResourceAttributes or '
                    "resourceAttributes must be specified",
                )
            ],
        )
    if resource is not None:
        if not isinstance(resource, dict):
            raise ReviewError(400, "BadRequest", "spec.resourceAttributes must be an object")
        return _resource_attributes(resource)
    if not isinstance(non_resource, dict):
        raise ReviewError(400, "BadRequest", "spec.nonResourceAttributes must be an object")
    path = non_resource.get("path", "")
    verb = non_resource.get("verb", "")
    return types.RequestAttributes(
        verb=verb if isinstance(verb, str) else "",
        resource_request=False,
        path=path if isinstance(path, str) else "",
    )


def _decide(
    authorizer: rbac.RBACAuthorizer, user: types.UserInfo, attributes: types.RequestAttributes
) -> dict[str, Any]:
    decision = authorizer.authorize(user, attributes)
    status: dict[str, Any] = {"allowed": decision.allowed}
    if decision.reason:
        status["reason"] = decision.reason
    return status


def subject_access_review(
    body: dict[str, Any], *, authorizer: rbac.RBACAuthorizer
) -> dict[str, Any]:
    """``POST /apis/authorization.k8s.io/v1/subjectaccessreviews``."""
    kind = "SubjectAccessReview"
    spec, metadata = _check_envelope(body, kind=kind, group="authorization.k8s.io")
    username = spec.get("user") or ""
    groups = spec.get("groups") or []
    if not isinstance(username, str) or not isinstance(groups, list):
        raise ReviewError(400, "BadRequest", "spec.user must be a string and spec.groups a list")
    attributes = _attributes(kind, spec)
    if not username and not groups:
        raise _invalid(
            kind,
            [("spec.user", 'Invalid value: "": at least one of user or group must be specified')],
        )
    raw_extra = spec.get("extra") or {}
    extra = (
        {str(k): tuple(str(v) for v in values) for k, values in raw_extra.items()}
        if isinstance(raw_extra, dict)
        else {}
    )
    user = types.UserInfo(
        username=username,
        uid=str(spec.get("uid") or ""),
        groups=tuple(str(group) for group in groups),
        extra=extra,
    )
    response = _response(kind, "authorization.k8s.io", metadata, spec)
    response["status"] = _decide(authorizer, user, attributes)
    return response


def self_subject_access_review(
    body: dict[str, Any], *, user: types.UserInfo, authorizer: rbac.RBACAuthorizer
) -> dict[str, Any]:
    """``POST /apis/authorization.k8s.io/v1/selfsubjectaccessreviews`` for the calling ``user``."""
    kind = "SelfSubjectAccessReview"
    spec, metadata = _check_envelope(body, kind=kind, group="authorization.k8s.io")
    attributes = _attributes(kind, spec)
    response = _response(kind, "authorization.k8s.io", metadata, spec)
    response["status"] = _decide(authorizer, user, attributes)
    return response


def local_subject_access_review(
    body: dict[str, Any], *, namespace: str, authorizer: rbac.RBACAuthorizer
) -> dict[str, Any]:
    """``POST /apis/authorization.k8s.io/v1/namespaces/NS/localsubjectaccessreviews``."""
    kind = "LocalSubjectAccessReview"
    spec, _ = _check_envelope(body, kind=kind, group="authorization.k8s.io")
    if not namespace:
        raise ReviewError(400, "BadRequest", "namespace is required on this type: ")
    if spec.get("nonResourceAttributes") is not None:
        raise _invalid(
            kind,
            [
                (
                    "spec.nonResourceAttributes",
                    "Invalid value: disallowed on this kind of request",
                )
            ],
        )
    resource = spec.get("resourceAttributes")
    if isinstance(resource, dict) and resource.get("namespace", "") != namespace:
        raise ReviewError(
            400,
            "BadRequest",
            f"spec.resourceAttributes.namespace must match namespace: {namespace}",
        )
    # Otherwise identical to a SubjectAccessReview, answered under the local kind.
    answered = subject_access_review(
        {**body, "kind": "SubjectAccessReview", "apiVersion": "authorization.k8s.io/v1"},
        authorizer=authorizer,
    )
    answered["kind"] = kind
    answered["metadata"] = {**answered["metadata"], "namespace": namespace}
    return answered


def self_subject_rules_review(
    body: dict[str, Any], *, user: types.UserInfo, authorizer: rbac.RBACAuthorizer
) -> dict[str, Any]:
    """``POST .../selfsubjectrulesreviews``: what ``kubectl auth can-i --list`` asks."""
    kind = "SelfSubjectRulesReview"
    spec, metadata = _check_envelope(body, kind=kind, group="authorization.k8s.io")
    namespace = spec.get("namespace", "")
    if not isinstance(namespace, str):
        raise ReviewError(400, "BadRequest", "spec.namespace must be a string")
    resource_rules, non_resource_rules = authorizer.rules_for(user, namespace)
    response = _response(kind, "authorization.k8s.io", metadata, spec)
    response["status"] = {
        "resourceRules": resource_rules,
        "nonResourceRules": non_resource_rules,
        "incomplete": False,
    }
    return response
