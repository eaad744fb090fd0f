"""Built-in kinds as kube-apiserver's strategies leave them: Service defaults and allocations,
the empty Node list."""

from __future__ import annotations

import asyncio
import ipaddress
import json
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.rest import ApiException

from agentauth.devcluster import builtins, server
from tests.conftest import Kubectl, client_configuration


def _service(name: str, **spec: Any) -> dict[str, Any]:
    return {"metadata": {"name": name}, "spec": {"selector": {"app": name}, **spec}}


def test_service_gets_upstream_defaults_and_a_cluster_ip(kube_api: Any, namespace: str) -> None:
    core = client.CoreV1Api(kube_api)
    core.create_namespaced_service(namespace, _service("web", ports=[{"port": 80}]))
    raw = core.read_namespaced_service("web", namespace, _preload_content=False).data
    body = json.loads(raw)
    spec = body["spec"]
    cluster_ip = spec.pop("clusterIP")
    assert ipaddress.IPv4Address(cluster_ip) in builtins.SERVICE_CIDR
    assert spec == {
        "ports": [{"port": 80, "protocol": "TCP", "targetPort": 80}],
        "selector": {"app": "web"},
        "clusterIPs": [cluster_ip],
        "type": "ClusterIP",
        "sessionAffinity": "None",
        "ipFamilies": ["IPv4"],
        "ipFamilyPolicy": "SingleStack",
        "internalTrafficPolicy": "Cluster",
    }
    assert body["status"] == {"loadBalancer": {}}
    assert b'"status":{"loadBalancer":{}}' in raw

    typed = core.read_namespaced_service("web", namespace)
    assert typed.status.load_balancer == client.V1LoadBalancerStatus()
    # A replace that leaves the allocated address out keeps it (patchAllocatedValues).
    typed.spec.cluster_ip = None
    typed.spec.cluster_ips = None
    typed.metadata.labels = {"changed": "yes"}
    replaced = core.replace_namespaced_service("web", namespace, typed)
    assert (replaced.spec.cluster_ip, replaced.spec.cluster_ips) == (cluster_ip, [cluster_ip])


def test_services_get_distinct_addresses(kube_api: Any, namespace: str) -> None:
    core = client.CoreV1Api(kube_api)
    addresses = {
        core.create_namespaced_service(
            namespace, _service(f"s{i}", ports=[{"port": 80}])
        ).spec.cluster_ip
        for i in range(5)
    }
    assert len(addresses) == 5


def test_node_port_headless_and_external_name(kube_api: Any, namespace: str) -> None:
    core = client.CoreV1Api(kube_api)
    node_port = core.create_namespaced_service(
        namespace, _service("np", type="NodePort", ports=[{"port": 80, "targetPort": 8080}])
    )
    assert node_port.spec.ports[0].node_port in builtins.NODE_PORT_RANGE
    assert node_port.spec.ports[0].target_port == 8080
    assert node_port.spec.external_traffic_policy == "Cluster"

    headless = core.create_namespaced_service(
        namespace,
        {"metadata": {"name": "hl"}, "spec": {"clusterIP": "None", "ports": [{"port": 5432}]}},
    )
    assert (headless.spec.cluster_ip, headless.spec.cluster_ips) == ("None", ["None"])
    assert headless.spec.ip_family_policy == "RequireDualStack"

    external = core.create_namespaced_service(
        namespace,
        {
            "metadata": {"name": "ext"},
            "spec": {"type": "ExternalName", "externalName": "example.com"},
        },
    )
    assert external.spec.cluster_ip is None and external.spec.ip_families is None
    assert external.spec.session_affinity == "None"


def test_nodes_list_is_empty_and_a_node_is_not_found(kube_api: Any, kubectl: Kubectl) -> None:
    core = client.CoreV1Api(kube_api)
    listed = core.list_node()
    assert listed.items == [] and listed.kind == "NodeList"
    with pytest.raises(ApiException) as raised:
        core.read_node("worker-1")
    assert raised.value.status == 404
    assert raised.value.body == (
        '{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","message":'
        '"nodes \\"worker-1\\" not found","reason":"NotFound","details":{"name":"worker-1",'
        '"kind":"nodes"},"code":404}\n'
    )
    result = kubectl("get", "nodes")
    assert result.stderr.strip() == "No resources found"


def test_aio_client_reads_service_defaults(dev_cluster: server.DevCluster, namespace: str) -> None:
    from kubernetes.aio import client as aio_client

    async def create_and_read() -> Any:
        configuration = client_configuration(dev_cluster, dev_cluster.admin_token)
        aio_configuration = aio_client.Configuration()
        aio_configuration.host = configuration.host
        aio_configuration.ssl_ca_cert = configuration.ssl_ca_cert
        aio_configuration.api_key = dict(configuration.api_key)
        aio_configuration.api_key_prefix = dict(configuration.api_key_prefix)
        async with aio_client.ApiClient(aio_configuration) as api:
            core = aio_client.CoreV1Api(api)
            await core.create_namespaced_service(namespace, _service("aio", ports=[{"port": 443}]))
            return await core.read_namespaced_service("aio", namespace)

    found = asyncio.run(create_and_read())
    assert found.spec.type == "ClusterIP" and found.spec.ports[0].protocol == "TCP"
    assert found.status.load_balancer is not None
