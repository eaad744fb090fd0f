"""What kube-apiserver's registry strategies do to built-in kinds on create and update.

Defaults and allocations that the real server fills in and clients read back (the official
client's tests compare them): a Service gets ``type: ClusterIP``, ``sessionAffinity: None``,
one IPv4 ``clusterIP`` from the service CIDR (``10.96.0.0/12``, ``.1`` kept for the
``kubernetes`` Service as upstream), ``ipFamilies``/``ipFamilyPolicy``,
``internalTrafficPolicy: Cluster``, ports with ``protocol: TCP`` and ``targetPort`` equal to
``port``, node ports for ``NodePort``/``LoadBalancer``, and ``status: {loadBalancer: {}}``.
Allocated values survive an update that leaves them out, as ``patchAllocatedValues`` does.
The other kinds' strategies (:func:`kind_defaults`: Namespace, Secret, Pod, Job) and the Pod
validation clients rely on (:func:`pod_errors`) are here too, next to the upstream decoding
(:func:`type_error`) and documented defaults (:func:`apply_defaults`) of every built-in kind.
"""

from __future__ import annotations

import base64
import contextlib
import copy
import functools
import ipaddress
import json
import random
import re
from collections.abc import Sequence
from typing import Any

from agentauth.devcluster import definitions, schema, types

SERVICE_CIDR = ipaddress.IPv4Network("10.96.0.0/12")
NODE_PORT_RANGE = range(30000, 32768)
_NEEDS_CLUSTER_IP = ("ClusterIP", "NodePort", "LoadBalancer")
_NEEDS_NODE_PORTS = ("NodePort", "LoadBalancer")
_random = random.SystemRandom()


def _service_fields(reader: types.ObjectReader, field: str) -> set[Any]:
    """Every value of ``spec.<field>`` (or of each port's ``nodePort``) already allocated."""
    used: set[Any] = set()
    for service in reader.list(group="", resource="services"):
        spec = service.get("spec") or {}
        if field == "nodePort":
            used.update(p.get("nodePort") for p in spec.get("ports") or () if isinstance(p, dict))
        else:
            used.update(spec.get(field) or ())
    used.discard(None)
    return used


def _allocate_cluster_ip(reader: types.ObjectReader) -> str:
    used = _service_fields(reader, "clusterIPs")
    first, size = int(SERVICE_CIDR.network_address), SERVICE_CIDR.num_addresses
    while True:
        # .0 is the network, .1 the kubernetes Service, the last the broadcast address.
        candidate = str(ipaddress.IPv4Address(first + _random.randrange(2, size - 1)))
        if candidate not in used:
            return candidate


def _allocate_node_port(reader: types.ObjectReader, taken: set[int]) -> int:
    used = _service_fields(reader, "nodePort") | taken
    free = [port for port in NODE_PORT_RANGE if port not in used]
    return _random.choice(free)


def _copy_allocated(spec: dict[str, Any], old_spec: dict[str, Any]) -> None:
    """``patchAllocatedValues``: an update without allocated values keeps the old ones."""
    same_type = spec.get("type", "ClusterIP") == old_spec.get("type", "ClusterIP")
    if not same_type:
        return
    for field in ("clusterIP", "clusterIPs", "ipFamilies", "ipFamilyPolicy"):
        if not spec.get(field) and old_spec.get(field):
            spec[field] = copy.deepcopy(old_spec[field])
    old_ports = {
        (p.get("port"), p.get("protocol", "TCP")): p.get("nodePort")
        for p in old_spec.get("ports") or ()
        if isinstance(p, dict)
    }
    for port in spec.get("ports") or ():
        if isinstance(port, dict) and not port.get("nodePort"):
            kept = old_ports.get((port.get("port"), port.get("protocol", "TCP")))
            if kept:
                port["nodePort"] = kept
    if not spec.get("healthCheckNodePort") and old_spec.get("healthCheckNodePort"):
        spec["healthCheckNodePort"] = old_spec["healthCheckNodePort"]


def service(obj: dict[str, Any], old: dict[str, Any] | None, *, reader: types.ObjectReader) -> None:
    """``SetDefaults_Service`` and the Service REST strategy's allocations, in place."""
    spec = obj.get("spec")
    if not isinstance(spec, dict):
        return
    if old is not None and isinstance(old.get("spec"), dict):
        _copy_allocated(spec, old["spec"])
    service_type = spec.setdefault("type", "ClusterIP")
    spec.setdefault("sessionAffinity", "None")
    if spec["sessionAffinity"] == "ClientIP":
        config = spec.setdefault("sessionAffinityConfig", {})
        if isinstance(config, dict):
            client_ip = config.setdefault("clientIP", {})
            if isinstance(client_ip, dict):
                client_ip.setdefault("timeoutSeconds", 10800)
    ports = [p for p in spec.get("ports") or () if isinstance(p, dict)]
    for port in ports:
        port.setdefault("protocol", "TCP")
        if port.get("targetPort") in (None, 0, ""):
            port["targetPort"] = port.get("port")
    if service_type == "ExternalName":
        return
    spec.setdefault("internalTrafficPolicy", "Cluster")
    if service_type in _NEEDS_NODE_PORTS:
        spec.setdefault("externalTrafficPolicy", "Cluster")
        if service_type == "LoadBalancer":
            spec.setdefault("allocateLoadBalancerNodePorts", True)
        taken = {p["nodePort"] for p in ports if p.get("nodePort")}
        for port in ports:
            if not port.get("nodePort"):
                port["nodePort"] = _allocate_node_port(reader, taken)
                taken.add(port["nodePort"])
    if service_type not in _NEEDS_CLUSTER_IP:
        return
    cluster_ips: Sequence[Any] = spec.get("clusterIPs") or ()
    cluster_ip = spec.get("clusterIP") or (cluster_ips[0] if cluster_ips else "")
    headless = cluster_ip == "None"
    if not cluster_ip:
        cluster_ip = _allocate_cluster_ip(reader)
    spec["clusterIP"] = cluster_ip
    spec["clusterIPs"] = [cluster_ip]
    if headless and not spec.get("selector"):
        # A headless Service without selector may span every family the cluster has.
        spec.setdefault("ipFamilyPolicy", "RequireDualStack")
    else:
        spec.setdefault("ipFamilyPolicy", "SingleStack")
    spec.setdefault("ipFamilies", ["IPv4"])


def service_status(obj: dict[str, Any], old: dict[str, Any] | None) -> None:
    """A new Service's status is reset to the empty load-balancer status, as upstream."""
    if old is None or not isinstance(obj.get("status"), dict):
        obj["status"] = {"loadBalancer": {}}
    else:
        obj["status"].setdefault("loadBalancer", {})


# -- decoding built-in objects against their upstream schema -----------------------------------


def schema_for(group: str, version: str, kind: str) -> dict[str, Any] | None:
    """The inlined upstream schema of a built-in kind (:func:`definitions.resolved`)."""
    name = definitions.name_for(group, version, kind)
    return None if name is None else definitions.resolved(name)


def _go_type(node: dict[str, Any]) -> str:
    """``reflect.Type.String()`` of the Go field a schema node describes."""
    definition = str(node.get(definitions.DEFINITION_KEY, ""))
    if definition == definitions.INT_OR_STRING:
        return "intstr.IntOrString"
    if definition == definitions.QUANTITY:
        return "resource.Quantity"
    kind = node.get("type")
    if definition and kind == "object" and node.get("properties") is not None:
        package, _, struct_name = definition.rpartition(".")
        return f"{package.rpartition('.')[2]}.{struct_name}"
    if kind == "integer":
        return {"int32": "int32", "int64": "int64"}.get(str(node.get("format")), "int")
    if kind == "number":
        return "float64"
    if kind == "boolean":
        return "bool"
    if kind == "string":
        return "[]uint8" if node.get("format") == "byte" else "string"
    if kind == "array" and isinstance(node.get("items"), dict):
        return "[]" + _go_type(node["items"])
    if kind == "object" and isinstance(node.get("additionalProperties"), dict):
        return "map[string]" + _go_type(node["additionalProperties"])
    return "interface {}"


def _json_kind(value: Any) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


def _fits(value: Any, node: dict[str, Any]) -> bool:
    if value is None or node.get("x-kubernetes-preserve-unknown-fields"):
        return True
    if node.get("x-kubernetes-int-or-string"):
        return isinstance(value, int | float | str) and not isinstance(value, bool)
    kind = node.get("type")
    if kind == "integer":
        return isinstance(value, int) and not isinstance(value, bool)
    if kind == "number":
        return isinstance(value, int | float) and not isinstance(value, bool)
    if kind == "boolean":
        return isinstance(value, bool)
    if kind == "string":
        return isinstance(value, str)
    if kind == "array":
        return isinstance(value, list)
    if kind == "object":
        return isinstance(value, dict)
    return True


def type_error(obj: dict[str, Any], schema: dict[str, Any]) -> str | None:
    """The ``encoding/json`` error decoding ``obj`` into the Go type would raise, or None.

    Worded as Go words it (``json: cannot unmarshal string into Go struct field
    DeploymentSpec.spec.replicas of type int32``): the struct holding the field, the field's
    path from the root without list indices, and the field's Go type.
    """

    def walk(value: Any, node: dict[str, Any], struct: str, path: str) -> str | None:
        if type(value) is dict and _only_strings(value, node):
            return None  # The common case (metadata, data, labels), checked without recursion.
        if not _fits(value, node):
            shown = f"{struct}.{path}" if path else struct
            return (
                f"json: cannot unmarshal {_json_kind(value)} into Go struct field {shown} "
                f"of type {_go_type(node)}"
            )
        if isinstance(value, dict) and not node.get("x-kubernetes-int-or-string"):
            properties = node.get("properties")
            definition = str(node.get(definitions.DEFINITION_KEY, ""))
            holder = definition.rpartition(".")[2] if definition and properties else struct
            if isinstance(properties, dict):
                for key, child in value.items():
                    if key in properties:
                        found = walk(child, properties[key], holder, _dotted(path, key))
                        if found:
                            return found
            elif isinstance(node.get("additionalProperties"), dict):
                for child in value.values():
                    found = walk(child, node["additionalProperties"], struct, path)
                    if found:
                        return found
        elif isinstance(value, list) and isinstance(node.get("items"), dict):
            for item in value:
                found = walk(item, node["items"], struct, path)
                if found:
                    return found
        return None

    root = str(schema.get(definitions.DEFINITION_KEY, "")).rpartition(".")[2]
    return walk(obj, schema, root, "")


_STRING_FIELDS: dict[int, frozenset[str] | bool] = {}


def _string_fields(node: dict[str, Any]) -> frozenset[str] | bool:
    """Names of ``node``'s plain string properties, or True for a map of strings."""
    found = _STRING_FIELDS.get(id(node))
    if found is None:
        properties = node.get("properties")
        additional = node.get("additionalProperties")
        if node.get("type") != "object" or node.get("x-kubernetes-int-or-string"):
            found = frozenset()
        elif isinstance(properties, dict):
            found = frozenset(
                key
                for key, child in properties.items()
                if child.get("type") == "string" and not child.get("x-kubernetes-int-or-string")
            )
        else:
            found = isinstance(additional, dict) and additional.get("type") == "string"
        # Schema nodes live as long as the cached definitions, so their ids stay valid.
        _STRING_FIELDS[id(node)] = found
    return found


def _only_strings(value: dict[str, Any], node: dict[str, Any]) -> bool:
    fields = _string_fields(node)
    if isinstance(fields, bool):
        return fields and all(type(item) is str for item in value.values())
    if not fields:
        return False
    return all(type(item) is str for item in value.values()) and value.keys() <= fields


def _dotted(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


# -- defaults of built-in kinds, read from the upstream field documentation --------------------

# Fields that kube-apiserver's ``SetDefaults_*`` functions fill in when absent. The value of
# each is not written here: it is read from the field's own upstream description ("Defaults to
# 6.", "Default is TCP."), so the table can only say *which* documented defaults are stored
# (descriptions also document behaviour that is never written into the object, such as
# ``minReadySeconds`` "Defaults to 0" on a non-pointer field, or conditional ones such as
# ``imagePullPolicy``).
DOCUMENTED_DEFAULTS: tuple[tuple[str, str], ...] = (
    ("io.k8s.api.apps.v1.DeploymentSpec", "replicas"),
    ("io.k8s.api.apps.v1.DeploymentSpec", "revisionHistoryLimit"),
    ("io.k8s.api.apps.v1.DeploymentSpec", "progressDeadlineSeconds"),
    ("io.k8s.api.apps.v1.DeploymentStrategy", "type"),
    ("io.k8s.api.apps.v1.RollingUpdateDeployment", "maxSurge"),
    ("io.k8s.api.apps.v1.RollingUpdateDeployment", "maxUnavailable"),
    ("io.k8s.api.apps.v1.DaemonSetSpec", "revisionHistoryLimit"),
    ("io.k8s.api.apps.v1.DaemonSetUpdateStrategy", "type"),
    ("io.k8s.api.apps.v1.RollingUpdateDaemonSet", "maxSurge"),
    ("io.k8s.api.apps.v1.RollingUpdateDaemonSet", "maxUnavailable"),
    ("io.k8s.api.apps.v1.ReplicaSetSpec", "replicas"),
    ("io.k8s.api.apps.v1.StatefulSetSpec", "replicas"),
    ("io.k8s.api.apps.v1.StatefulSetUpdateStrategy", "type"),
    ("io.k8s.api.batch.v1.CronJobSpec", "successfulJobsHistoryLimit"),
    ("io.k8s.api.batch.v1.CronJobSpec", "failedJobsHistoryLimit"),
    ("io.k8s.api.batch.v1.CronJobSpec", "suspend"),
    ("io.k8s.api.batch.v1.JobSpec", "backoffLimit"),
    ("io.k8s.api.batch.v1.JobSpec", "suspend"),
    ("io.k8s.api.core.v1.ReplicationControllerSpec", "replicas"),
    ("io.k8s.api.core.v1.PodSpec", "restartPolicy"),
    ("io.k8s.api.core.v1.PodSpec", "dnsPolicy"),
    ("io.k8s.api.core.v1.PodSpec", "terminationGracePeriodSeconds"),
    ("io.k8s.api.core.v1.PodSpec", "enableServiceLinks"),
    ("io.k8s.api.core.v1.Container", "terminationMessagePath"),
    ("io.k8s.api.core.v1.Container", "terminationMessagePolicy"),
    ("io.k8s.api.core.v1.ContainerPort", "protocol"),
    ("io.k8s.api.core.v1.ServicePort", "protocol"),
    ("io.k8s.api.discovery.v1.EndpointPort", "protocol"),
    ("io.k8s.api.networking.v1.NetworkPolicyPort", "protocol"),
    ("io.k8s.kube-aggregator.pkg.apis.apiregistration.v1.ServiceReference", "port"),
)
# Absent structs the defaulting creates (then filled by the table above), and the
# ``rollingUpdate`` parameters that exist only for the RollingUpdate strategy.
_CREATED_STRUCTS: tuple[tuple[str, str, tuple[str, str] | None], ...] = (
    ("io.k8s.api.apps.v1.DeploymentSpec", "strategy", None),
    ("io.k8s.api.apps.v1.DaemonSetSpec", "updateStrategy", None),
    ("io.k8s.api.apps.v1.StatefulSetSpec", "updateStrategy", None),
    ("io.k8s.api.core.v1.PodSpec", "securityContext", None),
    ("io.k8s.api.apps.v1.DeploymentStrategy", "rollingUpdate", ("type", "RollingUpdate")),
    ("io.k8s.api.apps.v1.DaemonSetUpdateStrategy", "rollingUpdate", ("type", "RollingUpdate")),
)
_DEFAULT_PHRASE = re.compile(
    r"(?:Defaults to|Default is|Default value is|Default to|defaults to)"
    r"\s+`?\"?([A-Za-z0-9%/._-]+?)\"?`?[.,;\s]"
)


def documented_default(definition: str, field: str) -> Any:
    """The default the upstream description of ``definition.field`` states, typed by its schema.

    Raises ``LookupError`` when the description states none (a wording change upstream).
    """
    node = (definitions.definitions()[definition].get("properties") or {})[field]
    match = _DEFAULT_PHRASE.search(str(node.get("description", "")) + " ")
    if match is None:
        raise LookupError(f"{definition}.{field} documents no default")
    text = match.group(1)
    reference = str(node.get("$ref", ""))
    if reference.endswith("IntOrString"):
        return int(text) if text.isdigit() else text
    kind = node.get("type")
    if kind == "integer":
        return int(text.rstrip("s"))
    if kind == "boolean":
        return text == "true"
    return text


@functools.cache
def _defaults_by_definition() -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = {}
    for definition, field in DOCUMENTED_DEFAULTS:
        with contextlib.suppress(LookupError, KeyError):
            found.setdefault(definition, {})[field] = documented_default(definition, field)
    return found


@functools.cache
def _defaulted_below(definition: str) -> bool:
    """Whether any struct reachable from ``definition`` has defaults (skips e.g. ConfigMap)."""
    targets = set(_defaults_by_definition()) | {d for d, _, _ in _CREATED_STRUCTS}
    return any(name in targets for name in definitions.closure([definition]))


def _fill(value: Any, node: dict[str, Any]) -> None:
    if isinstance(value, list):
        items = node.get("items")
        if isinstance(items, dict):
            for item in value:
                _fill(item, items)
        return
    if not isinstance(value, dict):
        return
    definition = str(node.get(definitions.DEFINITION_KEY, ""))
    if definition:
        own = _defaults_by_definition().get(definition, {})
        for struct, field, condition in _CREATED_STRUCTS:
            if struct != definition or field in value:
                continue
            # The condition reads the field as it will be once defaulted (type: RollingUpdate).
            if condition is None or value.get(condition[0], own.get(condition[0])) == condition[1]:
                value[field] = {}
        for field, default in _defaults_by_definition().get(definition, {}).items():
            value.setdefault(field, copy.deepcopy(default))
    properties = node.get("properties")
    if isinstance(properties, dict):
        for key, child in value.items():
            if key in properties and key != "metadata":
                _fill(child, properties[key])


def apply_defaults(group: str, version: str, kind: str, obj: dict[str, Any]) -> None:
    """Upstream's documented defaults for a built-in object, in place, at any depth."""
    name = definitions.name_for(group, version, kind)
    if name is None or not _defaulted_below(name):
        return
    _fill(obj, definitions.resolved(name))


def job_selector(job: dict[str, Any]) -> None:
    """The Job strategy's ``generateSelector``: the Job's uid selects and labels its pods."""
    spec = job.get("spec")
    if not isinstance(spec, dict) or spec.get("manualSelector") is True:
        return
    metadata = job["metadata"]
    uid, name = metadata.get("uid", ""), metadata.get("name", "")
    template = spec.setdefault("template", {})
    if not isinstance(template, dict):
        return
    labels = template.setdefault("metadata", {}).setdefault("labels", {})
    if isinstance(labels, dict):
        labels.update(
            {
                "batch.kubernetes.io/controller-uid": uid,
                "batch.kubernetes.io/job-name": name,
                "controller-uid": uid,
                "job-name": name,
            }
        )
    spec["selector"] = {"matchLabels": {"batch.kubernetes.io/controller-uid": uid}}


def job_defaults(job: dict[str, Any]) -> None:
    """``SetDefaults_Job`` beyond the documented fields: one completion and one pod at a time
    unless said otherwise, NonIndexed, replacement once a pod is terminating or failed."""
    spec = job.get("spec")
    if not isinstance(spec, dict):
        return
    if "completions" not in spec and "parallelism" not in spec:
        spec["completions"] = 1
    spec.setdefault("parallelism", 1)
    spec.setdefault("completionMode", "NonIndexed")
    spec.setdefault(
        "podReplacementPolicy", "Failed" if spec.get("podFailurePolicy") else "TerminatingOrFailed"
    )


def kind_defaults(
    group: str,
    plural: str,
    obj: dict[str, Any],
    *,
    old: dict[str, Any] | None,
    reader: types.ObjectReader,
) -> None:
    """The strategy of a built-in kind on create (``old`` None) or update, in place: the
    namespace's name label, finalizer and phase, a Secret's ``stringData`` folded into ``data``,
    a Pod's defaults and ``Pending`` status, Service allocations and a Job's defaults and
    selector."""
    if group == "" and plural == "namespaces":
        name = obj["metadata"]["name"]
        obj["metadata"].setdefault("labels", {})["kubernetes.io/metadata.name"] = name
        if old is None:
            obj["spec"] = {"finalizers": ["kubernetes"]}
            obj["status"] = {"phase": "Active"}
        else:
            obj["spec"] = old.get("spec", {})
            obj["status"] = old.get("status", {})
    elif group == "" and plural == "secrets":
        obj.setdefault("type", "Opaque")
        string_data = obj.pop("stringData", None)
        if isinstance(string_data, dict):
            data = obj.setdefault("data", {})
            for key, value in string_data.items():
                data[key] = base64.b64encode(str(value).encode()).decode()
    elif group == "" and plural == "pods":
        spec = obj.setdefault("spec", {})
        if isinstance(spec, dict):
            spec.setdefault("serviceAccountName", "default")
            spec.setdefault("restartPolicy", "Always")
            spec.setdefault("dnsPolicy", "ClusterFirst")
            spec.setdefault("schedulerName", "default-scheduler")
            for container in spec.get("containers") or ():
                if isinstance(container, dict):
                    container.setdefault("imagePullPolicy", "IfNotPresent")
                    container.setdefault("terminationMessagePath", "/dev/termination-log")
        if old is None:
            obj["status"] = {"phase": "Pending", "qosClass": "BestEffort"}
    elif group == "" and plural == "services":
        service(obj, old, reader=reader)
        service_status(obj, old)
    elif group == "batch" and plural == "jobs":
        job_defaults(obj)
        if old is None:
            job_selector(obj)


def pod_errors(pod: dict[str, Any]) -> list[schema.FieldError]:
    """The Pod validation clients rely on: containers present, each named uniquely, with an
    image."""
    spec = pod.get("spec")
    if not isinstance(spec, dict):
        return [schema.required("spec")]
    containers = spec.get("containers")
    if not isinstance(containers, list) or not containers:
        return [schema.required("spec.containers")]
    errors: list[schema.FieldError] = []
    seen: set[str] = set()
    for index, container in enumerate(containers):
        path = f"spec.containers[{index}]"
        if not isinstance(container, dict):
            errors.append(schema.invalid(path, container, "must be an object"))
            continue
        name = container.get("name")
        if not name:
            errors.append(schema.required(f"{path}.name"))
        elif name in seen:
            errors.append(
                schema.FieldError(
                    "FieldValueDuplicate", f"{path}.name", f"Duplicate value: {json.dumps(name)}"
                )
            )
        else:
            seen.add(str(name))
        if not container.get("image"):
            errors.append(schema.required(f"{path}.image"))
    return errors
