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


_TEMPLATE = {
    "metadata": {"labels": {"app": "x"}},
    "spec": {"containers": [{"name": "main", "image": "busybox"}], "restartPolicy": "Never"},
}
_SELECTOR = {"matchLabels": {"app": "x"}}
# (api class, kind-ish method suffix, namespaced, body): one object of every kind added for
# issue 18, created, read, listed and deleted through the official client's typed API.
_KINDS = [
    ("BatchV1Api", "job", True, {"spec": {"template": _TEMPLATE}}),
    (
        "BatchV1Api",
        "cron_job",
        True,
        {"spec": {"schedule": "*/5 * * * *", "jobTemplate": {"spec": {"template": _TEMPLATE}}}},
    ),
    ("AppsV1Api", "daemon_set", True, {"spec": {"selector": _SELECTOR, "template": _TEMPLATE}}),
    ("AppsV1Api", "replica_set", True, {"spec": {"selector": _SELECTOR, "template": _TEMPLATE}}),
    (
        "AppsV1Api",
        "stateful_set",
        True,
        {"spec": {"selector": _SELECTOR, "template": _TEMPLATE, "serviceName": "x"}},
    ),
    ("AppsV1Api", "controller_revision", True, {"revision": 1, "data": {"a": 1}}),
    (
        "CoreV1Api",
        "replication_controller",
        True,
        {"spec": {"selector": {"app": "x"}, "template": _TEMPLATE}},
    ),
    (
        "PolicyV1Api",
        "pod_disruption_budget",
        True,
        {"spec": {"minAvailable": 1, "selector": _SELECTOR}},
    ),
    ("NetworkingV1Api", "network_policy", True, {"spec": {"podSelector": _SELECTOR}}),
    (
        "NetworkingV1Api",
        "ingress",
        True,
        {"spec": {"defaultBackend": {"service": {"name": "x", "port": {"number": 80}}}}},
    ),
    ("NetworkingV1Api", "ingress_class", False, {"spec": {"controller": "example.com/ingress"}}),
    (
        "DiscoveryV1Api",
        "endpoint_slice",
        True,
        {"addressType": "IPv4", "endpoints": [{"addresses": ["10.0.0.1"]}]},
    ),
    (
        "ApiregistrationV1Api",
        "api_service",
        False,
        {
            "spec": {
                "group": "example.com",
                "version": "v1",
                "groupPriorityMinimum": 1000,
                "versionPriority": 15,
                "service": {"name": "x", "namespace": "default"},
            }
        },
    ),
]


@pytest.mark.parametrize(("api_name", "suffix", "namespaced", "body"), _KINDS)
def test_builtin_kind_round_trip(
    kube_api: Any, namespace: str, api_name: str, suffix: str, namespaced: bool, body: Any
) -> None:
    api = getattr(client, api_name)(kube_api)
    name = f"{suffix.replace('_', '')}-{namespace}" if not namespaced else "x"
    if suffix == "api_service":
        name = f"v1.{namespace}.example.com"
        body = {**body, "spec": {**body["spec"], "group": f"{namespace}.example.com"}}
    obj = {"metadata": {"name": name}, **body}
    scope = "namespaced_" if namespaced else ""
    args = (namespace,) if namespaced else ()
    created = getattr(api, f"create_{scope}{suffix}")(*args, obj)
    assert created.metadata.uid and created.metadata.resource_version
    read = getattr(api, f"read_{scope}{suffix}")(name, *args)
    assert read.metadata.uid == created.metadata.uid
    listed = getattr(api, f"list_{scope}{suffix}")(*args)
    assert name in [item.metadata.name for item in listed.items]
    getattr(api, f"delete_{scope}{suffix}")(name, *args)
    with pytest.raises(ApiException) as raised:
        getattr(api, f"read_{scope}{suffix}")(name, *args)
    assert raised.value.status == 404


def test_discovery_lists_the_builtin_kinds(kubectl: Kubectl) -> None:
    listed = kubectl("api-resources", "--no-headers", "-o", "name").stdout.split()
    for resource in (
        "jobs.batch",
        "cronjobs.batch",
        "daemonsets.apps",
        "replicasets.apps",
        "statefulsets.apps",
        "controllerrevisions.apps",
        "replicationcontrollers",
        "nodes",
        "poddisruptionbudgets.policy",
        "networkpolicies.networking.k8s.io",
        "ingresses.networking.k8s.io",
        "ingressclasses.networking.k8s.io",
        "endpointslices.discovery.k8s.io",
        "apiservices.apiregistration.k8s.io",
    ):
        assert resource in listed


def test_opaque_fields_are_kept(kube_api: Any, namespace: str) -> None:
    # RawExtension (ControllerRevision.data) and FieldsV1 (managedFields) hold any JSON.
    apps = client.AppsV1Api(kube_api)
    data = {"spec": {"template": {"x": [1, {"y": True}]}}}
    apps.create_namespaced_controller_revision(
        namespace, {"metadata": {"name": "r"}, "revision": 2, "data": data}
    )
    assert apps.read_namespaced_controller_revision("r", namespace).data == data
    core = client.CoreV1Api(kube_api)
    core.patch_namespaced_config_map(
        "applied",
        namespace,
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": "applied"},
            "data": {"k": "v"},
        },
        field_manager="tester",
        _content_type="application/apply-patch+yaml",
    )
    managed = core.read_namespaced_config_map("applied", namespace).metadata.managed_fields
    assert managed[0].fields_v1 == {"f:data": {"f:k": {}}}


# What upstream's SetDefaults_* functions store (k8s.io/kubernetes pkg/apis/*/v1/defaults.go):
# the independent oracle for the values read from the field descriptions.
_UPSTREAM_DEFAULTS = {
    ("io.k8s.api.apps.v1.DeploymentSpec", "replicas"): 1,
    ("io.k8s.api.apps.v1.DeploymentSpec", "revisionHistoryLimit"): 10,
    ("io.k8s.api.apps.v1.DeploymentSpec", "progressDeadlineSeconds"): 600,
    ("io.k8s.api.apps.v1.DeploymentStrategy", "type"): "RollingUpdate",
    ("io.k8s.api.apps.v1.RollingUpdateDeployment", "maxSurge"): "25%",
    ("io.k8s.api.apps.v1.RollingUpdateDeployment", "maxUnavailable"): "25%",
    ("io.k8s.api.apps.v1.DaemonSetSpec", "revisionHistoryLimit"): 10,
    ("io.k8s.api.apps.v1.DaemonSetUpdateStrategy", "type"): "RollingUpdate",
    ("io.k8s.api.apps.v1.RollingUpdateDaemonSet", "maxSurge"): 0,
    ("io.k8s.api.apps.v1.RollingUpdateDaemonSet", "maxUnavailable"): 1,
    ("io.k8s.api.apps.v1.ReplicaSetSpec", "replicas"): 1,
    ("io.k8s.api.apps.v1.StatefulSetSpec", "replicas"): 1,
    ("io.k8s.api.apps.v1.StatefulSetUpdateStrategy", "type"): "RollingUpdate",
    ("io.k8s.api.batch.v1.CronJobSpec", "successfulJobsHistoryLimit"): 3,
    ("io.k8s.api.batch.v1.CronJobSpec", "failedJobsHistoryLimit"): 1,
    ("io.k8s.api.batch.v1.CronJobSpec", "suspend"): False,
    ("io.k8s.api.batch.v1.JobSpec", "backoffLimit"): 6,
    ("io.k8s.api.batch.v1.JobSpec", "suspend"): False,
    ("io.k8s.api.core.v1.ReplicationControllerSpec", "replicas"): 1,
    ("io.k8s.api.core.v1.PodSpec", "restartPolicy"): "Always",
    ("io.k8s.api.core.v1.PodSpec", "dnsPolicy"): "ClusterFirst",
    ("io.k8s.api.core.v1.PodSpec", "terminationGracePeriodSeconds"): 30,
    ("io.k8s.api.core.v1.PodSpec", "enableServiceLinks"): True,
    ("io.k8s.api.core.v1.Container", "terminationMessagePath"): "/dev/termination-log",
    ("io.k8s.api.core.v1.Container", "terminationMessagePolicy"): "File",
    ("io.k8s.api.core.v1.ContainerPort", "protocol"): "TCP",
    ("io.k8s.api.core.v1.ServicePort", "protocol"): "TCP",
    ("io.k8s.api.discovery.v1.EndpointPort", "protocol"): "TCP",
    ("io.k8s.api.networking.v1.NetworkPolicyPort", "protocol"): "TCP",
    ("io.k8s.kube-aggregator.pkg.apis.apiregistration.v1.ServiceReference", "port"): 443,
}


def test_documented_defaults_are_upstreams() -> None:
    read = {key: builtins.documented_default(*key) for key in builtins.DOCUMENTED_DEFAULTS}
    assert read == _UPSTREAM_DEFAULTS


def test_workloads_get_upstream_defaults(kube_api: Any, namespace: str) -> None:
    apps = client.AppsV1Api(kube_api)
    created = apps.create_namespaced_deployment(
        namespace,
        {
            "metadata": {"name": "d"},
            "spec": {
                "selector": _SELECTOR,
                "template": _TEMPLATE
                | {
                    "spec": {
                        "containers": [
                            {"name": "main", "image": "busybox", "ports": [{"containerPort": 8080}]}
                        ]
                    }
                },
            },
        },
    ).to_dict()
    spec = created["spec"]
    assert (
        spec["replicas"],
        spec["revision_history_limit"],
        spec["progress_deadline_seconds"],
    ) == (
        1,
        10,
        600,
    )
    assert spec["strategy"] == {
        "type": "RollingUpdate",
        "rolling_update": {"max_surge": "25%", "max_unavailable": "25%"},
    }
    pod = spec["template"]["spec"]
    assert (pod["restart_policy"], pod["dns_policy"], pod["termination_grace_period_seconds"]) == (
        "Always",
        "ClusterFirst",
        30,
    )
    container = pod["containers"][0]
    assert container["ports"][0]["protocol"] == "TCP"
    assert container["termination_message_policy"] == "File"

    batch = client.BatchV1Api(kube_api)
    job = batch.create_namespaced_job(
        namespace, {"metadata": {"name": "j"}, "spec": {"template": _TEMPLATE}}
    )
    uid = job.metadata.uid
    assert job.spec.selector.match_labels == {"batch.kubernetes.io/controller-uid": uid}
    assert job.spec.template.metadata.labels["batch.kubernetes.io/job-name"] == "j"
    assert (job.spec.backoff_limit, job.spec.suspend) == (6, False)
    cron = batch.create_namespaced_cron_job(
        namespace,
        {
            "metadata": {"name": "c"},
            "spec": {"schedule": "@hourly", "jobTemplate": {"spec": {"template": _TEMPLATE}}},
        },
    )
    assert (cron.spec.successful_jobs_history_limit, cron.spec.failed_jobs_history_limit) == (3, 1)
    daemons = apps.create_namespaced_daemon_set(
        namespace,
        {"metadata": {"name": "ds"}, "spec": {"selector": _SELECTOR, "template": _TEMPLATE}},
    )
    assert daemons.spec.update_strategy.rolling_update.max_unavailable == 1


def test_kubectl_get_prints_upstream_columns(
    kubectl: Kubectl, kube_api: Any, namespace: str
) -> None:
    batch = client.BatchV1Api(kube_api)
    batch.create_namespaced_cron_job(
        namespace,
        {
            "metadata": {"name": "nightly"},
            "spec": {"schedule": "0 3 * * *", "jobTemplate": {"spec": {"template": _TEMPLATE}}},
        },
    )
    lines = kubectl("get", "cronjobs", "-n", namespace).stdout.splitlines()
    assert lines[0].split() == [
        "NAME",
        "SCHEDULE",
        "TIMEZONE",
        "SUSPEND",
        "ACTIVE",
        "LAST",
        "SCHEDULE",
        "AGE",
    ]
    assert lines[1].split()[:8] == ["nightly", "0", "3", "*", "*", "*", "<none>", "false"]
    client.PolicyV1Api(kube_api).create_namespaced_pod_disruption_budget(
        namespace, {"metadata": {"name": "p"}, "spec": {"minAvailable": 1, "selector": _SELECTOR}}
    )
    lines = kubectl("get", "pdb", "-n", namespace).stdout.splitlines()
    assert lines[0].split() == [
        "NAME",
        "MIN",
        "AVAILABLE",
        "MAX",
        "UNAVAILABLE",
        "ALLOWED",
        "DISRUPTIONS",
        "AGE",
    ]
    assert lines[1].split()[:4] == ["p", "1", "<none>", "0"]


def test_unknown_metadata_fields_are_dropped_and_get_all_lists_workloads(
    kube_api: Any, kubectl: Kubectl, namespace: str
) -> None:
    core = client.CoreV1Api(kube_api)
    # The official client's own e2e test sends this misspelt field; upstream drops it.
    core.create_namespaced_service(
        namespace,
        {
            "metadata": {"name": "front", "resourceversion": "v1"},
            "spec": {"ports": [{"port": 80}]},
        },
    )
    raw = json.loads(core.read_namespaced_service("front", namespace, _preload_content=False).data)
    assert "resourceversion" not in raw["metadata"]
    client.BatchV1Api(kube_api).create_namespaced_job(
        namespace, {"metadata": {"name": "once"}, "spec": {"template": _TEMPLATE}}
    )
    names = kubectl("get", "all", "-n", namespace, "-o", "name").stdout.split()
    assert {"service/front", "job.batch/once"} <= set(names)


def test_kubectl_typed_create_commands(kubectl: Kubectl, namespace: str) -> None:
    """kubectl's typed ``create`` subcommands send protobuf bodies and never fall back to JSON."""
    ns = ("-n", namespace)
    kubectl("create", "deployment", "web", "--image=nginx", "--port=80", "--replicas=2", *ns)
    kubectl("create", "job", "once", "--image=busybox", *ns, "--", "echo", "hi")
    kubectl("create", "cronjob", "tick", "--image=busybox", "--schedule=*/5 * * * *", *ns)
    kubectl("create", "service", "nodeport", "np", "--tcp=80:8080", *ns)
    kubectl(
        "create",
        "ingress",
        "in",
        "--class=nginx",
        "--rule=foo.com/bar*=svc1:8080,tls=my-cert",
        "--default-backend=defsvc:http",
        *ns,
    )
    kubectl("create", "pdb", "budget", "--selector=app=x", "--min-available=50%", *ns)

    def get(kind: str, name: str) -> Any:
        return json.loads(kubectl("get", kind, name, "-o", "json", *ns).stdout)

    deployment = get("deployment", "web")["spec"]
    assert deployment["replicas"] == 2
    assert deployment["template"]["spec"]["containers"][0]["ports"] == [
        {"containerPort": 80, "protocol": "TCP"}
    ]
    job = get("job", "once")["spec"]
    assert job["template"]["spec"]["containers"][0]["command"] == ["echo", "hi"]
    assert (job["completions"], job["parallelism"]) == (1, 1)
    assert job["template"]["spec"]["restartPolicy"] == "Never"
    assert get("cronjob", "tick")["spec"]["schedule"] == "*/5 * * * *"
    port = get("service", "np")["spec"]["ports"][0]
    assert (port["port"], port["targetPort"], port["name"]) == (80, 8080, "80-8080")
    assert port["nodePort"] in builtins.NODE_PORT_RANGE
    assert get("ingress", "in")["spec"] == {
        "defaultBackend": {"service": {"name": "defsvc", "port": {"name": "http"}}},
        "ingressClassName": "nginx",
        "rules": [
            {
                "host": "foo.com",
                "http": {
                    "paths": [
                        {
                            "backend": {"service": {"name": "svc1", "port": {"number": 8080}}},
                            "path": "/bar",
                            "pathType": "Prefix",
                        }
                    ]
                },
            }
        ],
        "tls": [{"hosts": ["foo.com"], "secretName": "my-cert"}],
    }
    assert get("pdb", "budget")["spec"]["minAvailable"] == "50%"
    lines = kubectl("get", "jobs", *ns).stdout.splitlines()
    assert lines[0].split() == ["NAME", "STATUS", "COMPLETIONS", "DURATION", "AGE"]
    assert lines[1].split()[:3] == ["once", "Running", "0/1"]
