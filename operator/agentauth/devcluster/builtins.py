"""What kube-apiserver's registry strategies do to built-in kinds on create and update.

Defaults and allocations that the real server fills in and clients read back (the official
client's tests compare them): a Service gets ``type: ClusterIP``, ``sessionAffinity: None``,
one IPv4 ``clusterIP`` from the service CIDR (``10.96.0.0/12``, ``.1`` kept for the
``kubernetes`` Service as upstream), ``ipFamilies``/``ipFamilyPolicy``,
``internalTrafficPolicy: Cluster``, ports with ``protocol: TCP`` and ``targetPort`` equal to
``port``, node ports for ``NodePort``/``LoadBalancer``, and ``status: {loadBalancer: {}}``.
Allocated values survive an update that leaves them out, as ``patchAllocatedValues`` does.
"""

from __future__ import annotations

import copy
import ipaddress
import random
from collections.abc import Sequence
from typing import Any

from agentauth.devcluster import definitions, types

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


def _dotted(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key
