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

from agentauth.devcluster import types

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
