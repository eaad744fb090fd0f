"""Server-side ``meta.k8s.io/v1`` ``Table`` responses, as ``kubectl get`` asks for them.

Custom resources get their CRD's ``additionalPrinterColumns`` (evaluated as the simple JSONPath
subset CRDs use: ``.a.b``, ``[0]``, ``[?(@.type=="Ready")]``), always preceded by ``Name`` and,
when no column is a date, followed by ``Age`` like upstream. Built-in kinds get a few familiar
default columns. Date columns render as ages ("5m10s"), exactly like ``kubectl``.
"""

from __future__ import annotations

import datetime
import json
import re
from collections.abc import Callable
from typing import Any

from agentauth.devcluster import resources

TABLE_ACCEPT = "as=Table"
_NAME_COLUMN = {
    "name": "Name",
    "type": "string",
    "format": "name",
    "description": "Name must be unique within a namespace.",
    "priority": 0,
}
_AGE_COLUMN = {
    "name": "Age",
    "type": "date",
    "format": "",
    "description": "CreationTimestamp is a timestamp representing the server time when this "
    "object was created.",
    "priority": 0,
}


def wants_table(accept: str) -> bool:
    """True when the first acceptable media type asks for a meta.k8s.io Table."""
    first = accept.split(",")[0]
    return "as=Table" in first and "g=meta.k8s.io" in first


def human_duration(seconds_total: float) -> str:
    """``k8s.io/apimachinery/pkg/util/duration.HumanDuration``."""
    seconds = round(seconds_total)
    if seconds < -1:
        return "<invalid>"
    if seconds < 0:
        return "0s"
    if seconds < 120:
        return f"{seconds}s"
    minutes = int(seconds_total // 60)
    if minutes < 10:
        rest = int(seconds_total) % 60
        return f"{minutes}m" if rest == 0 else f"{minutes}m{rest}s"
    if minutes < 180:
        return f"{minutes}m"
    hours = minutes // 60
    if hours < 8:
        rest = minutes % 60
        return f"{hours}h" if rest == 0 else f"{hours}h{rest}m"
    if hours < 48:
        return f"{hours}h"
    if hours < 24 * 8:
        rest = hours % 24
        return f"{hours // 24}d" if rest == 0 else f"{hours // 24}d{rest}h"
    if hours < 24 * 365 * 2:
        return f"{hours // 24}d"
    if hours < 24 * 365 * 8:
        days = (hours // 24) % 365
        return f"{hours // 24 // 365}y" if days == 0 else f"{hours // 24 // 365}y{days}d"
    return f"{hours // 24 // 365}y"


def age(timestamp: Any) -> str:
    if not isinstance(timestamp, str) or not timestamp:
        return "<unknown>"
    try:
        created = datetime.datetime.fromisoformat(timestamp.replace("Z", "+00:00"))
    except ValueError:
        return "<invalid>"
    return human_duration((datetime.datetime.now(datetime.UTC) - created).total_seconds())


_TOKEN = re.compile(
    r"\.([A-Za-z0-9_\-]+)|\[(\d+)\]|\[\?\(@\.([A-Za-z0-9_.\-]+)\s*==\s*"
    r"[\"']([^\"']*)[\"']\)\]|\[\*\]"
)


def jsonpath(obj: Any, expression: str) -> list[Any]:
    """Evaluate the JSONPath subset printer columns use; returns every match."""
    text = expression.strip()
    if text.startswith("{") and text.endswith("}"):
        text = text[1:-1]
    if text.startswith("$"):
        text = text[1:]
    current: list[Any] = [obj]
    position = 0
    while position < len(text):
        match = _TOKEN.match(text, position)
        if match is None:
            return []
        position = match.end()
        field, index, filter_key, filter_value = match.groups()
        following: list[Any] = []
        for item in current:
            if field is not None and isinstance(item, dict) and field in item:
                following.append(item[field])
            elif index is not None and isinstance(item, list) and int(index) < len(item):
                following.append(item[int(index)])
            elif filter_key is not None and isinstance(item, list):
                for element in item:
                    value: Any = element
                    for part in filter_key.split("."):
                        value = value.get(part) if isinstance(value, dict) else None
                    if value is not None and str(value) == filter_value:
                        following.append(element)
            elif match.group(0) == "[*]" and isinstance(item, list):
                following.extend(item)
        current = following
    return current


def _cell(value: Any, column_type: str) -> Any:
    if value is None:
        return None
    if column_type == "date":
        return age(value)
    if column_type == "integer" and isinstance(value, int | float):
        return int(value)
    if column_type == "number" and isinstance(value, int | float):
        return value
    if column_type == "boolean" and isinstance(value, bool):
        return value
    if isinstance(value, dict | list):
        return json.dumps(value, separators=(",", ":"))
    if isinstance(value, bool):
        return "true" if value else "false"
    return value if isinstance(value, str) else str(value)


Path = str | Callable[[dict[str, Any]], Any]
"""A column's source: a JSONPath, or a function of the object for computed columns."""


def _pod_ready(pod: dict[str, Any]) -> str:
    statuses = (pod.get("status") or {}).get("containerStatuses") or []
    total = len((pod.get("spec") or {}).get("containers") or [])
    ready = sum(1 for status in statuses if isinstance(status, dict) and status.get("ready"))
    return f"{ready}/{total}"


def _pod_status(pod: dict[str, Any]) -> str:
    if (pod.get("metadata") or {}).get("deletionTimestamp"):
        return "Terminating"
    return str((pod.get("status") or {}).get("phase") or "Pending")


def _pod_restarts(pod: dict[str, Any]) -> int:
    statuses = (pod.get("status") or {}).get("containerStatuses") or []
    return sum(int(s.get("restartCount") or 0) for s in statuses if isinstance(s, dict))


def _data_count(obj: dict[str, Any]) -> int:
    return len(obj.get("data") or {}) + len(obj.get("binaryData") or {})


def _ratio(ready: str, wanted: str) -> Callable[[dict[str, Any]], str]:
    def cell(obj: dict[str, Any]) -> str:
        found = jsonpath(obj, ready)
        total = jsonpath(obj, wanted)
        return f"{found[0] if found else 0}/{total[0] if total else 0}"

    return cell


def _int_at(path: str) -> Callable[[dict[str, Any]], int]:
    def cell(obj: dict[str, Any]) -> int:
        found = jsonpath(obj, path)
        return int(found[0]) if found and isinstance(found[0], int) else 0

    return cell


def _or_none(path: str) -> Callable[[dict[str, Any]], str]:
    def cell(obj: dict[str, Any]) -> str:
        found = jsonpath(obj, path)
        if not found or found[0] in ("", None, {}, []):
            return "<none>"
        value = found[0]
        if isinstance(value, dict):
            labels = value.get("matchLabels", value)
            return ",".join(f"{k}={v}" for k, v in labels.items()) if labels else "<none>"
        return ",".join(str(v) for v in found)

    return cell


def _job_status(job: dict[str, Any]) -> str:
    for condition in (job.get("status") or {}).get("conditions") or ():
        if condition.get("status") == "True" and condition.get("type") in (
            "Complete",
            "Failed",
            "Suspended",
        ):
            return str(condition["type"])
    return "Running"


def _service_ports(service: dict[str, Any]) -> str:
    ports = (service.get("spec") or {}).get("ports") or ()
    shown = []
    for port in ports:
        text = str(port.get("port"))
        if port.get("nodePort"):
            text += f":{port['nodePort']}"
        shown.append(f"{text}/{port.get('protocol', 'TCP')}")
    return ",".join(shown) or "<none>"


def _builtin_columns(rt: resources.ResourceType) -> list[tuple[dict[str, Any], Path]]:
    """(column definition, source) pairs for a built-in kind, between Name and Age."""

    def col(name: str, path: Path, kind: str = "string") -> tuple[dict[str, Any], Path]:
        return (
            {"name": name, "type": kind, "format": "", "description": name, "priority": 0},
            path,
        )

    if rt.group == "events.k8s.io":
        return [col("Reason", ".reason"), col("Object", ".regarding.name"), col("Note", ".note")]
    extra: dict[str, list[tuple[dict[str, Any], Path]]] = {
        "namespaces": [col("Status", ".status.phase")],
        "secrets": [col("Type", ".type"), col("Data", _data_count, "integer")],
        "configmaps": [col("Data", _data_count, "integer")],
        "pods": [
            col("Ready", _pod_ready),
            col("Status", _pod_status),
            col("Restarts", _pod_restarts, "integer"),
        ],
        "events": [
            col("Type", ".type"),
            col("Reason", ".reason"),
            col("Object", ".involvedObject.name"),
            col("Message", ".message"),
        ],
        "leases": [col("Holder", ".spec.holderIdentity")],
        "rolebindings": [col("Role", ".roleRef.name")],
        "clusterrolebindings": [col("Role", ".roleRef.name")],
        # The columns kube-apiserver's printers give the kinds served for issue 18.
        "services": [
            col("Type", ".spec.type"),
            col("Cluster-IP", _or_none(".spec.clusterIP")),
            col("External-IP", _or_none(".spec.externalIPs[*]")),
            col("Port(s)", _service_ports),
        ],
        "nodes": [
            col("Status", ".status.phase"),
            col("Version", ".status.nodeInfo.kubeletVersion"),
        ],
        "deployments": [
            col("Ready", _ratio(".status.readyReplicas", ".spec.replicas")),
            col("Up-to-date", _int_at(".status.updatedReplicas"), "integer"),
            col("Available", _int_at(".status.availableReplicas"), "integer"),
        ],
        "replicasets": [
            col("Desired", _int_at(".spec.replicas"), "integer"),
            col("Current", _int_at(".status.replicas"), "integer"),
            col("Ready", _int_at(".status.readyReplicas"), "integer"),
        ],
        "replicationcontrollers": [
            col("Desired", _int_at(".spec.replicas"), "integer"),
            col("Current", _int_at(".status.replicas"), "integer"),
            col("Ready", _int_at(".status.readyReplicas"), "integer"),
        ],
        "statefulsets": [col("Ready", _ratio(".status.readyReplicas", ".spec.replicas"))],
        "daemonsets": [
            col("Desired", _int_at(".status.desiredNumberScheduled"), "integer"),
            col("Current", _int_at(".status.currentNumberScheduled"), "integer"),
            col("Ready", _int_at(".status.numberReady"), "integer"),
            col("Up-to-date", _int_at(".status.updatedNumberScheduled"), "integer"),
            col("Available", _int_at(".status.numberAvailable"), "integer"),
            col("Node Selector", _or_none(".spec.template.spec.nodeSelector")),
        ],
        "controllerrevisions": [
            col("Controller", _or_none(".metadata.ownerReferences[0].name")),
            col("Revision", ".revision", "integer"),
        ],
        "jobs": [
            col("Status", _job_status),
            col("Completions", _ratio(".status.succeeded", ".spec.completions")),
            col("Duration", ".status.completionTime"),
        ],
        "cronjobs": [
            col("Schedule", ".spec.schedule"),
            col("Timezone", _or_none(".spec.timeZone")),
            col("Suspend", ".spec.suspend"),
            col("Active", lambda o: len((o.get("status") or {}).get("active") or ()), "integer"),
            col("Last Schedule", _or_none(".status.lastScheduleTime")),
        ],
        "poddisruptionbudgets": [
            col("Min Available", _or_none(".spec.minAvailable")),
            col("Max Unavailable", _or_none(".spec.maxUnavailable")),
            col("Allowed Disruptions", _int_at(".status.disruptionsAllowed"), "integer"),
        ],
        "networkpolicies": [col("Pod-Selector", _or_none(".spec.podSelector"))],
        "ingresses": [
            col("Class", _or_none(".spec.ingressClassName")),
            col(
                "Hosts",
                lambda o: (
                    ",".join(
                        str(r.get("host"))
                        for r in (o.get("spec") or {}).get("rules") or ()
                        if r.get("host")
                    )
                    or "*"
                ),
            ),
            col("Address", _or_none(".status.loadBalancer.ingress[*].ip")),
            col("Ports", lambda o: "80, 443" if (o.get("spec") or {}).get("tls") else "80"),
        ],
        "ingressclasses": [
            col("Controller", ".spec.controller"),
            col("Parameters", _or_none(".spec.parameters.name")),
        ],
        "endpointslices": [
            col("AddressType", ".addressType"),
            col("Ports", _or_none(".ports[*].port")),
            col("Endpoints", _or_none(".endpoints[*].addresses[0]")),
        ],
        "apiservices": [
            col(
                "Service",
                lambda o: (
                    "/".join(
                        str(v)
                        for v in (
                            ((o.get("spec") or {}).get("service") or {}).get("namespace"),
                            ((o.get("spec") or {}).get("service") or {}).get("name"),
                        )
                        if v
                    )
                    or "Local"
                ),
            ),
            col("Available", _or_none('.status.conditions[?(@.type=="Available")].status')),
        ],
        "endpoints": [col("Endpoints", _or_none(".subsets[*].addresses[*].ip"))],
    }
    return extra.get(rt.plural, [])


def columns_for(rt: resources.ResourceType, version: str) -> list[tuple[dict[str, Any], Path]]:
    if rt.custom:
        custom = rt.columns(version)
        pairs: list[tuple[dict[str, Any], Path]] = [
            (
                {
                    "name": column["name"],
                    "type": column.get("type", "string"),
                    "format": column.get("format", ""),
                    "description": column.get("description", ""),
                    "priority": column.get("priority", 0),
                },
                str(column.get("jsonPath", "")),
            )
            for column in custom
        ]
        has_date = any(c.get("type") == "date" for c in custom)
    else:
        pairs = _builtin_columns(rt)
        has_date = False
    result = [(_NAME_COLUMN, ".metadata.name"), *pairs]
    if not has_date:
        result.append((_AGE_COLUMN, ".metadata.creationTimestamp"))
    return result


def row(
    obj: dict[str, Any],
    columns: list[tuple[dict[str, Any], Path]],
    *,
    include_object: str,
) -> dict[str, Any]:
    cells = []
    for definition, path in columns:
        found = jsonpath(obj, path) if isinstance(path, str) else [path(obj)]
        value: Any = found[0] if found else None
        if len(found) > 1:
            value = ",".join(str(_cell(item, "string")) for item in found)
        cells.append(_cell(value, str(definition.get("type", "string"))))
    result: dict[str, Any] = {"cells": cells}
    if include_object == "Object":
        result["object"] = obj
    elif include_object != "None":
        result["object"] = {
            "kind": "PartialObjectMetadata",
            "apiVersion": "meta.k8s.io/v1",
            "metadata": obj.get("metadata", {}),
        }
    return result


def table(
    objects: list[dict[str, Any]],
    columns: list[tuple[dict[str, Any], Path]],
    *,
    include_object: str,
    list_metadata: dict[str, Any] | None = None,
    with_definitions: bool = True,
) -> dict[str, Any]:
    return {
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": list_metadata or {},
        "columnDefinitions": [c for c, _ in columns] if with_definitions else [],
        "rows": [row(obj, columns, include_object=include_object) for obj in objects],
    }
