"""What the server does to an object between decoding and storing it (the registry strategy).

On create: server-owned metadata (uid, creation time, generation) is set and client-sent values
of it dropped; the namespace must exist and not be terminating. On update: immutable metadata is
kept, the ``status`` subresource is split from the main resource, ``generation`` moves only when
the spec changes, and no finalizer can be added to an object being deleted. Every write is then
defaulted and validated: CRD structural schemas (pruning, defaults, CEL rules), the upstream
decoding of built-in kinds (Go type errors, unknown fields per ``fieldValidation``) and the
name, Pod and CRD checks. Failures are the 400/422 ``Status`` bodies upstream answers.
"""

from __future__ import annotations

import json
import re
import uuid
from typing import Any

from agentauth.devcluster import (
    builtins,
    cel,
    context,
    errors,
    resources,
    schema,
    storage,
    types,
)
from agentauth.kube import jsontext

DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
RBAC_GROUP = "rbac.authorization.k8s.io"


def check_namespace(store: storage.Store, ctx: context.Context, *, name: str) -> None:
    if not ctx.rt.namespaced:
        return
    entry = store.get(("", "namespaces", "", ctx.namespace))
    if entry is None:
        raise errors.ApiError(
            404,
            "NotFound",
            f'namespaces "{ctx.namespace}" not found',
            details={"name": ctx.namespace, "kind": "namespaces"},
        )
    if entry.obj["metadata"].get("deletionTimestamp"):
        raise errors.ApiError(
            403,
            "Forbidden",
            f'{ctx.rt.group_resource} "{name}" is forbidden: unable to create new content in '
            f"namespace {ctx.namespace} because it is being terminated",
            details={
                "name": name,
                "kind": ctx.rt.plural,
                "causes": [
                    {
                        "reason": "NamespaceTerminating",
                        "message": f"namespace {ctx.namespace} is being terminated",
                        "field": "metadata.namespace",
                    }
                ],
            },
        )


def prepare_create(
    reader: types.ObjectReader,
    rt: resources.ResourceType,
    *,
    version: str,
    obj: dict[str, Any],
    namespace: str,
) -> dict[str, Any]:
    metadata = obj["metadata"]
    for field in (
        "resourceVersion",
        "deletionTimestamp",
        "deletionGracePeriodSeconds",
        "managedFields",
        "selfLink",
    ):
        metadata.pop(field, None)
    metadata["uid"] = str(uuid.uuid4())
    metadata["creationTimestamp"] = context.now()
    if rt.namespaced:
        metadata["namespace"] = namespace
    if rt.tracks_generation:
        metadata["generation"] = 1
    else:
        metadata.pop("generation", None)
    obj["apiVersion"] = rt.api_version(rt.storage_version)
    if rt.status_subresource and rt.custom:
        obj.pop("status", None)
    builtin_defaults(rt, obj, old=None, reader=reader)
    return obj


def builtin_defaults(
    rt: resources.ResourceType,
    obj: dict[str, Any],
    *,
    old: dict[str, Any] | None,
    reader: types.ObjectReader,
) -> None:
    """What the server fills in on create (``old`` None) or update: a CRD's status (names
    accepted, established), a built-in kind's strategy (:func:`builtins.kind_defaults`) and
    upstream's documented defaults of built-in kinds."""
    if rt.group == "apiextensions.k8s.io":
        spec = obj.get("spec") or {}
        names = dict(spec.get("names") or {})
        names.setdefault("singular", str(names.get("kind", "")).lower())
        names.setdefault("listKind", f"{names.get('kind', '')}List")
        status = obj.setdefault("status", {})
        status["acceptedNames"] = names
        status["storedVersions"] = [
            v["name"] for v in spec.get("versions") or () if v.get("storage")
        ]
        status["conditions"] = [
            {
                "type": "NamesAccepted",
                "status": "True",
                "reason": "NoConflicts",
                "message": "no conflicts found",
                "lastTransitionTime": context.now(),
            },
            {
                "type": "Established",
                "status": "True",
                "reason": "InitialNamesAccepted",
                "message": "the initial names have been accepted",
                "lastTransitionTime": context.now(),
            },
        ]
    else:
        builtins.kind_defaults(rt.group, rt.plural, obj, old=old, reader=reader)

    if not rt.custom and isinstance(obj.get("metadata"), dict):
        builtins.apply_defaults(rt.group, rt.storage_version, rt.kind, obj)


def validate(
    registry: resources.Registry, ctx: context.Context, *, obj: dict[str, Any], creating: bool
) -> list[str]:
    """Schema and built-in validation; returns warnings, raises 400/422."""
    rt = ctx.rt
    name = str(obj["metadata"].get("name", ""))
    field_errors: list[schema.FieldError] = []
    warnings: list[str] = []
    if creating:
        field_errors += _name_errors(rt, name)
    for key in ("labels", "annotations"):
        values = obj["metadata"].get(key)
        if values is not None and (
            not isinstance(values, dict) or not all(isinstance(v, str) for v in values.values())
        ):
            field_errors.append(
                schema.invalid(f"metadata.{key}", values, "must be a map of string to string")
            )
    if rt.custom:
        found = rt.schema(ctx.version) or {}
        if found:
            unknown = schema.prune(obj, found)
            if unknown:
                mode = ctx.request.query.get("fieldValidation", "Warn")
                if mode == "Strict":
                    listed = ", ".join(f'unknown field "{u}"' for u in unknown)
                    raise errors.bad_request(
                        f'{rt.kind} in version "{ctx.version}" cannot be handled as a '
                        f"{rt.kind}: strict decoding error: {listed}"
                    )
                if mode != "Ignore":
                    warnings += [f'unknown field "{u}"' for u in unknown]
            schema.apply_defaults(obj, found)
            field_errors += schema.validate(obj, found)
            field_errors += cel.validate(obj, found, schema_errors=field_errors)
    else:
        upstream = builtins.schema_for(rt.group, ctx.version, rt.kind)
        if upstream is not None and context.storage_type(registry, rt) is rt:
            warnings += decode_builtin(ctx, obj, found=upstream)
        if rt.group == "" and rt.plural == "pods":
            field_errors += builtins.pod_errors(obj)
        elif rt.group == "apiextensions.k8s.io":
            field_errors += _crd_errors(obj)
    if field_errors:
        raise errors.invalid(rt, name, field_errors)
    return warnings


def decode_builtin(
    ctx: context.Context, obj: dict[str, Any], *, found: dict[str, Any]
) -> list[str]:
    """What decoding into the Go type does upstream: type errors (400), unknown fields
    dropped with a warning or, with ``fieldValidation=Strict``, refused (400)."""
    rt = ctx.rt
    cannot = f'{rt.kind} in version "{ctx.version}" cannot be handled as a {rt.kind}'
    mismatch = builtins.type_error(obj, found)
    if mismatch:
        raise errors.bad_request(f"{cannot}: {mismatch}")
    unknown = schema.prune(obj, found)
    metadata = (found.get("properties") or {}).get("metadata")
    meta = obj.get("metadata")
    if (
        isinstance(metadata, dict)
        and isinstance(meta, dict)
        and not meta.keys() <= (metadata.get("properties") or {}).keys()
    ):
        unknown += schema.prune(meta, metadata, path="metadata", root=False)
    if not unknown:
        return []
    mode = ctx.request.query.get("fieldValidation", "Warn")
    if mode == "Strict":
        listed = ", ".join(f'unknown field "{u}"' for u in unknown)
        raise errors.bad_request(f"{cannot}: strict decoding error: {listed}")
    return [] if mode == "Ignore" else [f'unknown field "{u}"' for u in unknown]


def apply_strategy(
    ctx: context.Context,
    *,
    old: dict[str, Any],
    new: dict[str, Any],
    reader: types.ObjectReader,
) -> dict[str, Any]:
    """Update strategy: immutable metadata, status split, generation, finalizer rules."""
    rt = ctx.rt
    if rt.status_subresource and ctx.sub == "status":
        result: dict[str, Any] = jsontext.clone(old)
        if "status" in new:
            result["status"] = new["status"]
        else:
            result.pop("status", None)
        return result
    if rt.status_subresource:
        if "status" in old:
            new["status"] = jsontext.clone(old["status"])
        else:
            new.pop("status", None)
    metadata = new.setdefault("metadata", {})
    old_metadata = old["metadata"]
    for field in (
        "uid",
        "creationTimestamp",
        "deletionTimestamp",
        "deletionGracePeriodSeconds",
        "generation",
        "namespace",
        "name",
    ):
        if field in old_metadata:
            metadata[field] = old_metadata[field]
        else:
            metadata.pop(field, None)
    if not ctx.is_apply:
        # Only server-side apply records managers here; other writes keep what was there.
        if "managedFields" in old_metadata:
            metadata["managedFields"] = old_metadata["managedFields"]
        else:
            metadata.pop("managedFields", None)
    new["apiVersion"] = old["apiVersion"]
    builtin_defaults(rt, new, old=old, reader=reader)
    if old_metadata.get("deletionTimestamp"):
        added = set(metadata.get("finalizers") or ()) - set(old_metadata.get("finalizers") or ())
        if added:
            raise errors.invalid(
                rt,
                metadata["name"],
                [
                    schema.FieldError(
                        "FieldValueForbidden",
                        "metadata.finalizers",
                        "Forbidden: no new finalizers can be added if the object is being "
                        f"deleted, found new finalizers {json.dumps(sorted(added))}",
                    )
                ],
            )
    if rt.tracks_generation:
        ignored = {"metadata", "status"} if rt.status_subresource else {"metadata"}
        if not rt.custom:
            ignored = {"metadata", "status"}
        before = {k: v for k, v in old.items() if k not in ignored}
        after = {k: v for k, v in new.items() if k not in ignored}
        if before != after:
            metadata["generation"] = int(old_metadata.get("generation") or 1) + 1
    return new


def _name_errors(rt: resources.ResourceType, name: str) -> list[schema.FieldError]:
    if rt.group == RBAC_GROUP:
        if "/" in name or "%" in name or name in (".", ".."):
            return [schema.invalid("metadata.name", name, "may not contain '/' or '%'")]
        return []
    if rt.group == "" and rt.plural == "namespaces":
        if len(name) > 63 or not DNS_LABEL.match(name):
            return [
                schema.invalid(
                    "metadata.name",
                    name,
                    "a lowercase RFC 1123 label must consist of lower case alphanumeric "
                    "characters or '-', and must start and end with an alphanumeric character "
                    "(e.g. 'my-name',  or '123-abc', regex used for validation is "
                    "'[a-z0-9]([-a-z0-9]*[a-z0-9])?')",
                )
            ]
        return []
    if len(name) > 253 or not DNS_SUBDOMAIN.match(name):
        return [
            schema.invalid(
                "metadata.name",
                name,
                "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric "
                "characters, '-' or '.', and must start and end with an alphanumeric character "
                "(e.g. 'example.com', regex used for validation is "
                "'[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')",
            )
        ]
    return []


def _crd_errors(crd: dict[str, Any]) -> list[schema.FieldError]:
    spec = crd.get("spec") or {}
    names = spec.get("names") or {}
    errors: list[schema.FieldError] = []
    if not spec.get("group"):
        errors.append(schema.required("spec.group"))
    if not names.get("plural"):
        errors.append(schema.required("spec.names.plural"))
    if not names.get("kind"):
        errors.append(schema.required("spec.names.kind"))
    if not spec.get("versions"):
        errors.append(schema.required("spec.versions"))
    expected = f"{names.get('plural')}.{spec.get('group')}"
    name = crd.get("metadata", {}).get("name")
    if not errors and name != expected:
        errors.append(
            schema.invalid("metadata.name", name, 'must be spec.names.plural+"."+spec.group')
        )
    return errors
