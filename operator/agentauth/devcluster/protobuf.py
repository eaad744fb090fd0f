"""Decode the Kubernetes protobuf envelope for the built-in kinds kubectl sends as protobuf.

kubectl's typed clients (``create configmap|secret|namespace|serviceaccount|role|...``,
``create deployment|job|cronjob|service|ingress|poddisruptionbudget``,
``create token``, ``auth can-i``, ``auth whoami``) send ``application/vnd.kubernetes.protobuf``
request bodies and do not fall back to JSON. The server answers in JSON (kubectl accepts it), so
only decoding is needed, and only for the kinds listed in :data:`KINDS`; any other protobuf body
raises :class:`ProtobufError` (answered as 415). Field numbers come from the upstream
``generated.proto`` files.
"""

from __future__ import annotations

import base64
import datetime
from typing import Any

MAGIC = b"k8s\x00"


class ProtobufError(ValueError):
    pass


# A schema maps field number -> (JSON name, type, repeated). Types: "string", "bytes", "int",
# "bool", "time", ("map", value type), or a nested schema dict.
Schema = dict[int, tuple[str, Any, bool]]

_TIME = "time"
OWNER_REFERENCE: Schema = {
    1: ("kind", "string", False),
    3: ("name", "string", False),
    4: ("uid", "string", False),
    5: ("apiVersion", "string", False),
    6: ("controller", "bool", False),
    7: ("blockOwnerDeletion", "bool", False),
}
OBJECT_META: Schema = {
    1: ("name", "string", False),
    2: ("generateName", "string", False),
    3: ("namespace", "string", False),
    5: ("uid", "string", False),
    6: ("resourceVersion", "string", False),
    7: ("generation", "int", False),
    8: ("creationTimestamp", _TIME, False),
    9: ("deletionTimestamp", _TIME, False),
    10: ("deletionGracePeriodSeconds", "int", False),
    11: ("labels", ("map", "string"), False),
    12: ("annotations", ("map", "string"), False),
    13: ("ownerReferences", OWNER_REFERENCE, True),
    14: ("finalizers", "string", True),
}
_META = (1, ("metadata", OBJECT_META, False))
LOCAL_OBJECT_REFERENCE: Schema = {1: ("name", "string", False)}
OBJECT_REFERENCE: Schema = {
    1: ("kind", "string", False),
    2: ("namespace", "string", False),
    3: ("name", "string", False),
    4: ("uid", "string", False),
    5: ("apiVersion", "string", False),
    6: ("resourceVersion", "string", False),
    7: ("fieldPath", "string", False),
}
POLICY_RULE: Schema = {
    1: ("verbs", "string", True),
    2: ("apiGroups", "string", True),
    3: ("resources", "string", True),
    4: ("resourceNames", "string", True),
    5: ("nonResourceURLs", "string", True),
}
SUBJECT: Schema = {
    1: ("kind", "string", False),
    2: ("apiGroup", "string", False),
    3: ("name", "string", False),
    4: ("namespace", "string", False),
}
ROLE_REF: Schema = {
    1: ("apiGroup", "string", False),
    2: ("kind", "string", False),
    3: ("name", "string", False),
}
LABEL_SELECTOR_REQUIREMENT: Schema = {
    1: ("key", "string", False),
    2: ("operator", "string", False),
    3: ("values", "string", True),
}
LABEL_SELECTOR: Schema = {
    1: ("matchLabels", ("map", "string"), False),
    2: ("matchExpressions", LABEL_SELECTOR_REQUIREMENT, True),
}
RESOURCE_ATTRIBUTES: Schema = {
    1: ("namespace", "string", False),
    2: ("verb", "string", False),
    3: ("group", "string", False),
    4: ("version", "string", False),
    5: ("resource", "string", False),
    6: ("subresource", "string", False),
    7: ("name", "string", False),
}
NON_RESOURCE_ATTRIBUTES: Schema = {1: ("path", "string", False), 2: ("verb", "string", False)}

# What kubectl's typed ``create deployment|job|cronjob|service|ingress|pdb`` commands set
# (k8s.io/api apps/v1, batch/v1, core/v1, networking/v1 and policy/v1 generated.proto).
_INT_OR_STRING = "intorstring"
_INLINE = ""
CONTAINER_PORT: Schema = {
    1: ("name", "string", False),
    2: ("hostPort", "int", False),
    3: ("containerPort", "int", False),
    4: ("protocol", "string", False),
    5: ("hostIP", "string", False),
}
CONTAINER: Schema = {
    1: ("name", "string", False),
    2: ("image", "string", False),
    3: ("command", "string", True),
    4: ("args", "string", True),
    5: ("workingDir", "string", False),
    6: ("ports", CONTAINER_PORT, True),
    7: ("env", {1: ("name", "string", False), 2: ("value", "string", False)}, True),
    14: ("imagePullPolicy", "string", False),
}
POD_TEMPLATE_SPEC: Schema = {
    1: ("metadata", OBJECT_META, False),
    2: (
        "spec",
        {
            2: ("containers", CONTAINER, True),
            3: ("restartPolicy", "string", False),
            7: ("nodeSelector", ("map", "string"), False),
            8: ("serviceAccountName", "string", False),
        },
        False,
    ),
}
JOB_SPEC: Schema = {
    1: ("parallelism", "int", False),
    2: ("completions", "int", False),
    3: ("activeDeadlineSeconds", "int", False),
    4: ("selector", LABEL_SELECTOR, False),
    6: ("template", POD_TEMPLATE_SPEC, False),
    7: ("backoffLimit", "int", False),
}
SERVICE_PORT: Schema = {
    1: ("name", "string", False),
    2: ("protocol", "string", False),
    3: ("port", "int", False),
    4: ("targetPort", _INT_OR_STRING, False),
    5: ("nodePort", "int", False),
}
INGRESS_BACKEND: Schema = {
    4: (
        "service",
        {
            1: ("name", "string", False),
            2: ("port", {1: ("name", "string", False), 2: ("number", "int", False)}, False),
        },
        False,
    )
}
INGRESS_RULE: Schema = {
    1: ("host", "string", False),
    # IngressRuleValue is embedded in Go, so its ``http`` is a field of the rule in JSON.
    2: (
        _INLINE,
        {
            1: (
                "http",
                {
                    1: (
                        "paths",
                        {
                            1: ("path", "string", False),
                            2: ("backend", INGRESS_BACKEND, False),
                            3: ("pathType", "string", False),
                        },
                        True,
                    )
                },
                False,
            )
        },
        False,
    ),
}
DELETE_OPTIONS: Schema = {
    1: ("gracePeriodSeconds", "int", False),
    2: (
        "preconditions",
        {1: ("uid", "string", False), 2: ("resourceVersion", "string", False)},
        False,
    ),
    3: ("orphanDependents", "bool", False),
    4: ("propagationPolicy", "string", False),
    5: ("dryRun", "string", True),
}
KINDS: dict[tuple[str, str], Schema] = {
    # Typed clients (Helm's uninstall among them) send DeleteOptions with their deletes.
    ("v1", "DeleteOptions"): DELETE_OPTIONS,
    ("meta.k8s.io/v1", "DeleteOptions"): DELETE_OPTIONS,
    ("apps/v1", "Deployment"): dict(
        [
            _META,
            (
                2,
                (
                    "spec",
                    {
                        1: ("replicas", "int", False),
                        2: ("selector", LABEL_SELECTOR, False),
                        3: ("template", POD_TEMPLATE_SPEC, False),
                        4: ("strategy", {1: ("type", "string", False)}, False),
                    },
                    False,
                ),
            ),
        ]
    ),
    ("batch/v1", "Job"): dict([_META, (2, ("spec", JOB_SPEC, False))]),
    ("batch/v1", "CronJob"): dict(
        [
            _META,
            (
                2,
                (
                    "spec",
                    {
                        1: ("schedule", "string", False),
                        3: ("concurrencyPolicy", "string", False),
                        5: (
                            "jobTemplate",
                            {1: ("metadata", OBJECT_META, False), 2: ("spec", JOB_SPEC, False)},
                            False,
                        ),
                        8: ("timeZone", "string", False),
                    },
                    False,
                ),
            ),
        ]
    ),
    ("v1", "Service"): dict(
        [
            _META,
            (
                2,
                (
                    "spec",
                    {
                        1: ("ports", SERVICE_PORT, True),
                        2: ("selector", ("map", "string"), False),
                        3: ("clusterIP", "string", False),
                        4: ("type", "string", False),
                        5: ("externalIPs", "string", True),
                        10: ("externalName", "string", False),
                    },
                    False,
                ),
            ),
        ]
    ),
    ("networking.k8s.io/v1", "Ingress"): dict(
        [
            _META,
            (
                2,
                (
                    "spec",
                    {
                        1: ("defaultBackend", INGRESS_BACKEND, False),
                        2: (
                            "tls",
                            {1: ("hosts", "string", True), 2: ("secretName", "string", False)},
                            True,
                        ),
                        3: ("rules", INGRESS_RULE, True),
                        4: ("ingressClassName", "string", False),
                    },
                    False,
                ),
            ),
        ]
    ),
    ("policy/v1", "PodDisruptionBudget"): dict(
        [
            _META,
            (
                2,
                (
                    "spec",
                    {
                        1: ("minAvailable", _INT_OR_STRING, False),
                        2: ("selector", LABEL_SELECTOR, False),
                        3: ("maxUnavailable", _INT_OR_STRING, False),
                        4: ("unhealthyPodEvictionPolicy", "string", False),
                    },
                    False,
                ),
            ),
        ]
    ),
    ("v1", "ConfigMap"): dict(
        [
            _META,
            (2, ("data", ("map", "string"), False)),
            (3, ("binaryData", ("map", "bytes"), False)),
            (4, ("immutable", "bool", False)),
        ]
    ),
    ("v1", "Secret"): dict(
        [
            _META,
            (2, ("data", ("map", "bytes"), False)),
            (3, ("type", "string", False)),
            (4, ("stringData", ("map", "string"), False)),
            (5, ("immutable", "bool", False)),
        ]
    ),
    ("v1", "Namespace"): dict([_META, (2, ("spec", {1: ("finalizers", "string", True)}, False))]),
    ("v1", "ServiceAccount"): dict(
        [
            _META,
            (2, ("secrets", OBJECT_REFERENCE, True)),
            (3, ("imagePullSecrets", LOCAL_OBJECT_REFERENCE, True)),
            (4, ("automountServiceAccountToken", "bool", False)),
        ]
    ),
    ("authentication.k8s.io/v1", "TokenRequest"): dict(
        [
            _META,
            (
                2,
                (
                    "spec",
                    {
                        1: ("audiences", "string", True),
                        4: ("expirationSeconds", "int", False),
                        3: (
                            "boundObjectRef",
                            {
                                1: ("kind", "string", False),
                                2: ("apiVersion", "string", False),
                                3: ("name", "string", False),
                                4: ("uid", "string", False),
                            },
                            False,
                        ),
                    },
                    False,
                ),
            ),
        ]
    ),
    ("authorization.k8s.io/v1", "SelfSubjectAccessReview"): dict(
        [
            _META,
            (
                2,
                (
                    "spec",
                    {
                        1: ("resourceAttributes", RESOURCE_ATTRIBUTES, False),
                        2: ("nonResourceAttributes", NON_RESOURCE_ATTRIBUTES, False),
                    },
                    False,
                ),
            ),
        ]
    ),
    ("authorization.k8s.io/v1", "SelfSubjectRulesReview"): dict(
        [_META, (2, ("spec", {1: ("namespace", "string", False)}, False))]
    ),
    ("authentication.k8s.io/v1", "SelfSubjectReview"): dict([_META]),
    ("rbac.authorization.k8s.io/v1", "Role"): dict([_META, (2, ("rules", POLICY_RULE, True))]),
    ("rbac.authorization.k8s.io/v1", "ClusterRole"): dict(
        [
            _META,
            (2, ("rules", POLICY_RULE, True)),
            (3, ("aggregationRule", {1: ("clusterRoleSelectors", LABEL_SELECTOR, True)}, False)),
        ]
    ),
    ("rbac.authorization.k8s.io/v1", "RoleBinding"): dict(
        [_META, (2, ("subjects", SUBJECT, True)), (3, ("roleRef", ROLE_REF, False))]
    ),
    ("rbac.authorization.k8s.io/v1", "ClusterRoleBinding"): dict(
        [_META, (2, ("subjects", SUBJECT, True)), (3, ("roleRef", ROLE_REF, False))]
    ),
    ("coordination.k8s.io/v1", "Lease"): dict(
        [
            _META,
            (
                2,
                (
                    "spec",
                    {
                        1: ("holderIdentity", "string", False),
                        2: ("leaseDurationSeconds", "int", False),
                        5: ("leaseTransitions", "int", False),
                    },
                    False,
                ),
            ),
        ]
    ),
}
TYPE_META: Schema = {1: ("apiVersion", "string", False), 2: ("kind", "string", False)}
UNKNOWN: Schema = {
    1: ("typeMeta", TYPE_META, False),
    2: ("raw", "rawbytes", False),
    3: ("contentEncoding", "string", False),
    4: ("contentType", "string", False),
}


def _varint(data: bytes, position: int) -> tuple[int, int]:
    result = 0
    shift = 0
    while True:
        if position >= len(data):
            raise ProtobufError("truncated varint")
        byte = data[position]
        position += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, position
        shift += 7
        if shift > 63:
            raise ProtobufError("varint too long")


def _fields(data: bytes) -> list[tuple[int, int, Any]]:
    """(field number, wire type, value) triples; length-delimited values are bytes."""
    found: list[tuple[int, int, Any]] = []
    position = 0
    while position < len(data):
        tag, position = _varint(data, position)
        number, wire = tag >> 3, tag & 7
        value: int | bytes
        if wire == 0:
            value, position = _varint(data, position)
        elif wire == 2:
            length, position = _varint(data, position)
            if position + length > len(data):
                raise ProtobufError("truncated field")
            value = data[position : position + length]
            position += length
        elif wire in (1, 5):
            size = 8 if wire == 1 else 4
            if position + size > len(data):
                raise ProtobufError("truncated field")
            value, position = data[position : position + size], position + size
        else:
            raise ProtobufError(f"unsupported wire type {wire}")
        found.append((number, wire, value))
    return found


# Wire types: 0 varint, 1 fixed 64-bit, 2 length-delimited, 5 fixed 32-bit.
_VARINT_KINDS = frozenset({"int", "bool"})


def _scalar(kind: Any, wire: int, value: Any) -> Any:
    # A field's wire type must be its kind's: a varint where bytes are expected would otherwise
    # reach bytes(n), which allocates n zero bytes (any client could ask for gigabytes).
    if isinstance(kind, str) and kind in _VARINT_KINDS:
        if wire != 0:
            raise ProtobufError(f"wire type {wire} where a varint is expected")
    elif wire != 2:
        raise ProtobufError(f"wire type {wire} where a length-delimited field is expected")
    if kind == "string":
        try:
            return bytes(value).decode("utf-8")
        except UnicodeDecodeError:
            raise ProtobufError("string field is not valid UTF-8") from None
    if kind == "bytes":
        return base64.b64encode(bytes(value)).decode()
    if kind == "rawbytes":
        return bytes(value)
    if kind == "int":
        return value - (1 << 64) if value >= 1 << 63 else value
    if kind == "bool":
        return bool(value)
    if kind == _TIME:
        parts = dict(
            _decode_message(
                bytes(value), {1: ("seconds", "int", False), 2: ("nanos", "int", False)}
            )
        )
        if not parts.get("seconds"):
            return None
        try:
            moment = datetime.datetime.fromtimestamp(int(parts["seconds"]), datetime.UTC)
        except (OverflowError, OSError, ValueError):
            raise ProtobufError("timestamp out of range") from None
        return moment.strftime("%Y-%m-%dT%H:%M:%SZ")
    if kind == _INT_OR_STRING:
        parts = _decode_message(
            bytes(value),
            {
                1: ("type", "int", False),
                2: ("intVal", "int", False),
                3: ("strVal", "string", False),
            },
        )
        return parts.get("strVal", "") if parts.get("type") == 1 else parts.get("intVal", 0)
    if isinstance(kind, dict):
        return _decode_message(bytes(value), kind)
    raise ProtobufError(f"unsupported type {kind!r}")


def _decode_message(data: bytes, schema: Schema) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for number, wire, value in _fields(data):
        field = schema.get(number)
        if field is None:
            continue  # Fields this server does not model are dropped, like an old server.
        name, kind, repeated = field
        if isinstance(kind, tuple) and kind[0] == "map":
            if wire != 2:
                raise ProtobufError(f"wire type {wire} where a map entry is expected")
            entry = _decode_message(
                bytes(value), {1: ("key", "string", False), 2: ("value", kind[1], False)}
            )
            result.setdefault(name, {})[entry.get("key", "")] = entry.get("value", "")
        elif name == _INLINE:
            if wire != 2:
                raise ProtobufError(f"wire type {wire} where an embedded message is expected")
            result.update(_decode_message(bytes(value), kind))
        elif repeated:
            result.setdefault(name, []).append(_scalar(kind, wire, value))
        else:
            decoded = _scalar(kind, wire, value)
            # Empty strings and zero numbers are Go zero values, which JSON omits.
            if decoded is not None and decoded != "" and not (kind == "int" and decoded == 0):
                result[name] = decoded
    return result


def decode(body: bytes) -> dict[str, Any]:
    """A JSON-shaped object from a protobuf request body; raises :class:`ProtobufError`."""
    if not body.startswith(MAGIC):
        raise ProtobufError(
            "provided data does not appear to be a protobuf message, expected prefix [107 56 115 0]"
        )
    envelope = _decode_message(body[len(MAGIC) :], UNKNOWN)
    type_meta = envelope.get("typeMeta") or {}
    api_version, kind = type_meta.get("apiVersion", ""), type_meta.get("kind", "")
    schema = KINDS.get((api_version, kind))
    if schema is None:
        raise ProtobufError(
            f"protobuf bodies of {api_version} {kind} are not supported; send application/json"
        )
    obj = _decode_message(envelope.get("raw", b""), schema)
    obj["apiVersion"] = api_version
    obj["kind"] = kind
    return obj
