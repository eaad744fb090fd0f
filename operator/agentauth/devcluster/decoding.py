"""Request bodies: size limit, media types and the object's identity checked against the URL.

A body over :data:`MAX_BODY_BYTES` is a 413; JSON, YAML and the protobuf kinds kubectl's typed
clients send are decoded, other media types are a 415, undecodable bodies a 400 worded as
upstream. :func:`decode_object` fills in and checks ``apiVersion``, ``kind`` and the namespace
the URL names, so the handlers after it see a well-formed object.
"""

from __future__ import annotations

from typing import Any

import yaml
from aiohttp import web

from agentauth.devcluster import context, errors, protobuf
from agentauth.kube import jsontext

MAX_BODY_BYTES = 3 * 1024 * 1024


async def read_body(request: web.Request) -> Any:
    raw = await request.read()
    if len(raw) > MAX_BODY_BYTES:
        raise errors.ApiError(
            413, "RequestEntityTooLarge", f"Request entity too large: limit is {MAX_BODY_BYTES}"
        )
    content_type = request.content_type
    if content_type == "application/vnd.kubernetes.protobuf":
        try:
            return protobuf.decode(raw)
        except protobuf.ProtobufError as error:
            raise errors.ApiError(415, "UnsupportedMediaType", str(error)) from None
    if "protobuf" in content_type or "cbor" in content_type:
        raise errors.ApiError(
            415,
            "UnsupportedMediaType",
            "the body of the request was in an unknown format - accepted media types "
            "include: application/json, application/yaml",
        )
    try:
        if "yaml" in content_type:
            return yaml.safe_load(raw.decode("utf-8"))
        return jsontext.decode(raw)
    except (ValueError, yaml.YAMLError, UnicodeDecodeError) as error:
        detail = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise errors.bad_request(f"error decoding request body: {detail}") from None


def decode_object(ctx: context.Context, body: Any) -> dict[str, Any]:
    rt = ctx.rt
    if not isinstance(body, dict):
        raise errors.bad_request(
            "the body of the request was in an unknown format: expected an object"
        )
    api_version = body.setdefault("apiVersion", rt.api_version(ctx.version))
    kind = body.setdefault("kind", rt.kind)
    if api_version != rt.api_version(ctx.version):
        raise errors.bad_request(
            f"the API version in the data ({api_version}) does not match the expected API "
            f"version ({rt.api_version(ctx.version)})"
        )
    if kind != rt.kind:
        raise errors.bad_request(
            f"the kind in the data ({kind}) does not match the expected kind ({rt.kind})"
        )
    metadata = body.get("metadata")
    if metadata is None:
        metadata = body["metadata"] = {}
    if not isinstance(metadata, dict):
        raise errors.bad_request("metadata must be an object")
    object_namespace = metadata.get("namespace")
    if rt.namespaced:
        if object_namespace and object_namespace != ctx.namespace:
            raise errors.bad_request(
                "the namespace of the provided object does not match the "
                "namespace sent on the request"
            )
        metadata["namespace"] = ctx.namespace
    else:
        metadata.pop("namespace", None)
    return body


def delete_options(body: Any) -> dict[str, Any]:
    return body if isinstance(body, dict) else {}
