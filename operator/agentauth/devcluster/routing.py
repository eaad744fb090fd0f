"""Request routing: authentication, impersonation, authorization, then dispatch by verb.

Public paths (health, version, OIDC discovery) need no credentials; every other request is
authenticated, ``Impersonate-*`` headers are each authorized as upstream does, and the request
is authorized by RBAC (403 worded like upstream). Non-resource paths (discovery, OpenAPI v2 and
v3, health) are answered here; resource requests are checked against the served type (404 for
an unknown path or subresource, 405 for a verb the type does not serve) and handed to
:mod:`reads`, :mod:`watch`, :mod:`writes`, :mod:`deletion` or :mod:`subresources`.
:func:`handle` turns every error into a ``Status`` body: no input makes it raise.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

from aiohttp import web

from agentauth.devcluster import (
    admission,
    authn,
    context,
    decoding,
    deletion,
    discovery,
    errors,
    openapi,
    openapiv2,
    rbac,
    reads,
    requestinfo,
    responses,
    statuses,
    storage,
    subresources,
    types,
    watch,
    writes,
)

# Crashes are logged under the name they had while this code lived in api.py (log filters).
log = logging.getLogger("agentauth.devcluster.api")

VERSION_INFO = {
    "major": "1",
    "minor": "37",
    "emulationMajor": "1",
    "emulationMinor": "37",
    "gitVersion": "v1.37.0-agentauth-dev",
    "gitCommit": "0000000000000000000000000000000000000000",
    "gitTreeState": "clean",
    "buildDate": "2026-01-01T00:00:00Z",
    "goVersion": "go1.25.0",
    "compiler": "gc",
    "platform": "linux/amd64",
}
PUBLIC_PATHS = {
    "/healthz",
    "/livez",
    "/readyz",
    "/version",
    "/.well-known/openid-configuration",
    "/openid/v1/jwks",
}


async def handle(server: context.Server, request: web.Request) -> web.StreamResponse:
    """Answer one request; every failure becomes a ``Status`` body (500 for a crash, logged)."""
    try:
        response = await route(server, request)
        # Group commit: whatever this answer shows (its own write, or a write of another
        # request it read) is committed before it leaves.
        await server.store.synced()
        return response
    except errors.ApiError as error:
        return errors.error_response(error)
    except storage.StorageError as error:
        return errors.storage_unavailable(error)
    except admission.AdmissionDenied as denied:
        return errors.error_response(
            errors.ApiError(denied.code, denied.reason, denied.message, details=denied.details)
        )
    except web.HTTPRequestEntityTooLarge:
        return errors.error_response(
            errors.ApiError(
                413,
                "RequestEntityTooLarge",
                f"Request entity too large: limit is {decoding.MAX_BODY_BYTES}",
            )
        )
    except (ConnectionResetError, asyncio.CancelledError):
        raise
    except Exception:
        log.exception("internal error serving %s %s", request.method, request.path)
        return errors.error_response(
            errors.ApiError.of(statuses.internal_error("unexpected server error"))
        )


async def route(server: context.Server, request: web.Request) -> web.StreamResponse:
    """Authenticate, impersonate, authorize, then dispatch to a verb module."""
    path = request.path
    if path in PUBLIC_PATHS:
        return public(server, path)
    try:
        user = server.authenticator.authenticate(request.headers.get("Authorization"))
    except authn.Unauthenticated:
        raise errors.ApiError(401, "Unauthorized", "Unauthorized") from None
    user = impersonated(server.authorizer, request, user=user)
    query = request.query
    attributes = requestinfo.parse(request.method, path, query)
    decision = server.authorizer.authorize(user, attributes)
    if not decision.allowed:
        raise errors.ApiError(
            403,
            "Forbidden",
            server.authorizer.forbidden_message(user, attributes),
            details=forbidden_details(attributes),
        )
    if not attributes.resource_request:
        return non_resource(server, request)
    return await resource(server, request, attributes=attributes, user=user)


def impersonated(
    authorizer: rbac.RBACAuthorizer, request: web.Request, *, user: types.UserInfo
) -> types.UserInfo:
    """Apply ``Impersonate-*`` headers as kube-apiserver does, each one authorized by RBAC.

    The caller needs verb ``impersonate`` on ``users`` (or ``serviceaccounts`` in the
    account's namespace), on ``groups`` for each group and on ``uids`` for a uid; anything
    less is a 403 naming what was refused, so ``kubectl --as`` never silently runs as the
    caller.
    """
    name = request.headers.get("Impersonate-User")
    groups = tuple(request.headers.getall("Impersonate-Group", []))
    uid = request.headers.get("Impersonate-Uid", "")
    if name is None:
        if groups or uid:
            raise errors.ApiError(
                400, "BadRequest", "requested impersonation without a user (Impersonate-User)"
            )
        return user
    wanted: list[types.RequestAttributes] = []
    if name.startswith("system:serviceaccount:") and name.count(":") == 3:
        _, _, sa_namespace, sa_name = name.split(":")
        wanted.append(
            types.RequestAttributes(
                verb="impersonate",
                resource_request=True,
                resource="serviceaccounts",
                namespace=sa_namespace,
                name=sa_name,
            )
        )
        default_groups: tuple[str, ...] = (
            "system:serviceaccounts",
            f"system:serviceaccounts:{sa_namespace}",
        )
    else:
        wanted.append(
            types.RequestAttributes(
                verb="impersonate", resource_request=True, resource="users", name=name
            )
        )
        default_groups = ()
    wanted.extend(
        types.RequestAttributes(
            verb="impersonate", resource_request=True, resource="groups", name=group
        )
        for group in groups
    )
    if uid:
        wanted.append(
            types.RequestAttributes(
                verb="impersonate",
                resource_request=True,
                api_group="authentication.k8s.io",
                resource="uids",
                name=uid,
            )
        )
    for attributes in wanted:
        if not authorizer.authorize(user, attributes).allowed:
            raise errors.ApiError(
                403,
                "Forbidden",
                authorizer.forbidden_message(user, attributes),
                details=forbidden_details(attributes),
            )
    effective = groups or default_groups
    if "system:authenticated" not in effective:
        effective = (*effective, "system:authenticated")
    return types.UserInfo(username=name, uid=uid, groups=effective)


def forbidden_details(attributes: types.RequestAttributes) -> dict[str, Any]:
    if not attributes.resource_request:
        return {}
    details: dict[str, Any] = {"kind": attributes.resource}
    if attributes.name:
        details["name"] = attributes.name
    if attributes.api_group:
        details["group"] = attributes.api_group
    return details


def public(server: context.Server, path: str) -> web.Response:
    if path == "/version":
        return responses.json_response(VERSION_INFO)
    if path == "/.well-known/openid-configuration":
        return responses.json_response(server.token_issuer.openid_configuration())
    if path == "/openid/v1/jwks":
        return web.Response(
            body=json.dumps(server.token_issuer.jwks()).encode(),
            content_type="application/jwk-set+json",
        )
    return web.Response(text="ok", content_type="text/plain")


def non_resource(server: context.Server, request: web.Request) -> web.Response:
    path = request.path
    parts = [part for part in path.strip("/").split("/") if part]
    found: dict[str, Any] | None = None
    if parts == ["api"]:
        found = discovery.core_versions(server.server_address)
    elif parts == ["apis"]:
        found = discovery.group_list(server.registry)
    elif len(parts) == 2 and parts[0] == "api":
        found = discovery.resource_list(server.registry, "", parts[1])
    elif len(parts) == 2 and parts[0] == "apis":
        found = discovery.group(server.registry, parts[1])
    elif len(parts) == 3 and parts[0] == "apis":
        found = discovery.resource_list(server.registry, parts[1], parts[2])
    elif parts == ["openapi", "v3"]:
        found = openapi.index(server.registry)
    elif len(parts) >= 4 and parts[:2] == ["openapi", "v3"]:
        group, version = (
            ("", parts[3]) if parts[2] == "api" else (parts[3], parts[4] if len(parts) > 4 else "")
        )
        body = openapi.document_bytes(server.registry, group, version)
        if body is not None:
            return web.Response(body=body, content_type="application/json")
    elif parts == ["openapi", "v2"]:
        wants_protobuf = openapiv2.wants_protobuf(request.headers.get("Accept", ""))
        return web.Response(
            body=openapi.swagger_bytes(server.registry, protobuf=wants_protobuf),
            content_type=openapiv2.PROTOBUF_MEDIA_TYPE if wants_protobuf else "application/json",
        )
    elif path in ("/healthz", "/livez", "/readyz"):
        return web.Response(text="ok", content_type="text/plain")
    if found is None:
        raise errors.ApiError.of(statuses.path_not_found())
    return responses.json_response(found)


async def resource(
    server: context.Server,
    request: web.Request,
    *,
    attributes: types.RequestAttributes,
    user: types.UserInfo,
) -> web.StreamResponse:
    rt = server.registry.lookup(attributes.api_group, attributes.api_version, attributes.resource)
    if rt is None:
        raise errors.ApiError.of(statuses.path_not_found())
    version = attributes.api_version
    namespace = attributes.namespace if rt.namespaced else ""
    if (
        rt.namespaced
        and not namespace
        and attributes.verb not in ("list", "watch", "deletecollection")
    ):
        raise errors.ApiError.of(statuses.path_not_found())
    name = attributes.name
    if rt.plural == "namespaces" and attributes.verb in ("list", "watch", "deletecollection"):
        namespace = ""
    verb = attributes.verb
    sub = attributes.subresource
    if sub and sub not in rt.subresources:
        raise errors.ApiError.of(statuses.path_not_found())
    if verb not in rt.verbs and not (sub and verb in ("get", "update", "patch", "create")):
        raise errors.ApiError.of(statuses.method_not_allowed())
    if rt.virtual:
        return await subresources.review(server, request, rt=rt, user=user, namespace=namespace)
    if sub == "token":
        return await subresources.token_request(server, request, namespace=namespace, name=name)
    ctx = context.Context(
        rt=rt,
        version=version,
        namespace=namespace,
        name=name,
        sub=sub,
        user=user,
        attributes=attributes,
        request=request,
    )
    if verb == "get":
        return reads.get_object(server, ctx)
    if verb == "list":
        return reads.list_objects(server, ctx)
    if verb == "watch":
        return await watch.watch(server, ctx)
    if verb == "create":
        return await writes.create(server, ctx)
    if verb == "update":
        return await writes.update(server, ctx)
    if verb == "patch":
        return await writes.patch(server, ctx)
    if verb == "delete":
        return await deletion.delete(server, ctx)
    if verb == "deletecollection":
        return await deletion.delete_collection(server, ctx)
    raise errors.ApiError.of(statuses.method_not_allowed())
