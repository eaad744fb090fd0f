"""The Helm chart, rendered and linted with real Helm, and applied to the embedded control plane.

Every rendered object of the default values and of each variant is applied with real
``kubectl apply`` (strict field validation). Built-in kinds, the PodDisruptionBudget,
NetworkPolicies and the Ingress included, are decoded by the dev control plane against their
upstream schemas, so an unknown or mistyped field fails the test. Kinds that come from CRDs on a
real cluster (``monitoring.coreos.com``, ``cert-manager.io``, ``gateway.networking.k8s.io``) get
a stand-in CRD (schema-less): apply proves they are well-formed API objects in the right
group/version, not that their fields are valid.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

import helm_python as helm
import pytest
import yaml

from tests.charts import chart
from tests.conftest import Kubectl

VARIANTS: dict[str, dict[str, Any]] = {
    "default": {},
    "cert-manager": {"webhook": {"certManager": {"enabled": True}}},
    "cert-manager-issuer": {
        "webhook": {
            "certManager": {"enabled": True, "issuerRef": {"name": "corp", "kind": "ClusterIssuer"}}
        }
    },
    "monitoring-netpol": {
        "prometheus": {"servicemonitor": {"enabled": True, "labels": {"release": "prom"}}},
        "networkPolicy": {"enabled": True},
    },
    "token-service-cert-manager-ingress": {
        "tokenService": {
            "tls": {
                "certManager": {
                    "enabled": True,
                    "issuerRef": {"name": "letsencrypt", "kind": "ClusterIssuer"},
                }
            },
            "ingress": {
                "enabled": True,
                "className": "nginx",
                "annotations": {"nginx.ingress.kubernetes.io/backend-protocol": "HTTPS"},
                "tls": [{"secretName": "public-tls", "hosts": ["agentauth.example.com"]}],
            },
        }
    },
    "token-service-httproute-backend-tls": {
        "tokenService": {
            "httpRoute": {
                "enabled": True,
                "parentRefs": [{"name": "public", "namespace": "gateways", "sectionName": "https"}],
                "backendTLSPolicy": {"enabled": True, "caConfigMap": "agentauth-ca"},
            }
        }
    },
    "token-service-plain-behind-gateway": {
        "tokenService": {
            "tls": {"enabled": False},
            "httpRoute": {"enabled": True, "parentRefs": [{"name": "public"}]},
        }
    },
    "notifications": {
        "notifications": {
            "webhook": {"enabled": True, "secretName": "approver-hook", "format": "json"}
        }
    },
    "dev-url-tokenreview": {
        "webhook": {
            "url": "https://127.0.0.1:9443",
            "extraHosts": ["127.0.0.1"],
            "accessRequests": {"enabled": False},
        },
        "tokenService": {
            "useTokenReview": True,
            "replicaCount": 3,
            "extraArgs": ["--client-rate-limit", "5", "--log-format=text"],
        },
        "controller": {"watchNamespaces": ["team-a", "team-b"], "extraArgs": ["--workers=4"]},
        "global": {"logLevel": "debug"},
        "image": {"digest": "sha256:" + "a" * 64},
    },
}

RESTRICTED_CONTAINER = {
    "allowPrivilegeEscalation": False,
    "readOnlyRootFilesystem": True,
    "capabilities": {"drop": ["ALL"]},
}


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_lint_is_clean(variant: str) -> None:
    report = helm.lint(chart.CHART, chart.with_required(VARIANTS[variant]), strict=True)
    problems = [m for m in report["messages"] if m["severity"] >= 2]
    assert problems == [], problems
    assert report["errors"] == []


def test_default_render() -> None:
    objects = chart.render()
    kinds = sorted({o["kind"] for o in objects})
    assert kinds == [
        "ClusterRole",
        "ClusterRoleBinding",
        "Deployment",
        "MutatingWebhookConfiguration",
        "PodDisruptionBudget",
        "Role",
        "RoleBinding",
        "Service",
        "ServiceAccount",
        "ValidatingWebhookConfiguration",
    ]
    controller = chart.one(objects, "Deployment", "agentauth-controller")
    assert controller["spec"]["replicas"] == 1
    assert controller["spec"]["strategy"] == {"type": "Recreate"}
    token_service = chart.one(objects, "Deployment", "agentauth-token-service")
    assert token_service["spec"]["replicas"] == 2
    for deployment in (controller, token_service):
        pod = deployment["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        for container in pod["containers"]:
            assert container["securityContext"] == RESTRICTED_CONTAINER
            assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
            assert "readinessProbe" in container
            assert container["resources"]["requests"]["memory"] == "128Mi"
    env = {
        e["name"]: e.get("value")
        for e in controller["spec"]["template"]["spec"]["containers"][0]["env"]
    }
    assert env["AGENTAUTH_ISSUER"] == "https://agentauth.example.com"
    assert env["AGENTAUTH_CONTROLLER_NAMESPACE"] == "agentauth-system"
    assert env["AGENTAUTH_MUTATING_WEBHOOK_CONFIGURATION"] == "agentauth-webhook"
    assert env["AGENTAUTH_WEBHOOK_SERVICE"] == "agentauth-controller"
    pdb = chart.one(objects, "PodDisruptionBudget")
    assert pdb["spec"]["minAvailable"] == 1
    assert pdb["spec"]["selector"]["matchLabels"]["app.kubernetes.io/component"] == "token-service"

    mutating = chart.one(objects, "MutatingWebhookConfiguration")
    pods = mutating["webhooks"][0]
    assert pods["name"] == "pods.agentauth.dev"
    assert pods["clientConfig"]["service"] == {
        "name": "agentauth-controller",
        "namespace": "agentauth-system",
        "path": "/mutate/pods",
        "port": 443,
    }
    assert pods["objectSelector"] == {
        "matchExpressions": [{"key": "agentauth.dev/agent", "operator": "Exists"}]
    }
    assert pods["failurePolicy"] == "Fail"
    assert pods["reinvocationPolicy"] == "IfNeeded"
    validating = chart.one(objects, "ValidatingWebhookConfiguration")
    assert [w["clientConfig"]["service"]["path"] for w in validating["webhooks"]] == [
        "/validate/pods",
        "/validate/accessrequests",
    ]


def test_controller_rbac_is_least_privilege() -> None:
    objects = chart.render()
    role = chart.one(objects, "ClusterRole", "agentauth-controller")
    verbs = {
        (group, resource): sorted(rule["verbs"])
        for rule in role["rules"]
        for group in rule["apiGroups"]
        for resource in rule["resources"]
    }
    assert verbs[("agentauth.dev", "agents")] == ["get", "list", "watch"]
    assert verbs[("agentauth.dev", "agents/status")] == ["patch"]
    assert verbs[("", "serviceaccounts")] == ["get", "list", "watch"]
    assert verbs[("", "events")] == ["create", "patch"]
    webhook_rule = next(
        r for r in role["rules"] if "admissionregistration.k8s.io" in r["apiGroups"]
    )
    assert webhook_rule["resourceNames"] == ["agentauth-webhook"]
    assert not any(("secrets" in r["resources"]) for r in role["rules"])  # secrets: Role only
    local = chart.one(objects, "Role", "agentauth-controller")
    assert local["metadata"]["namespace"] == "agentauth-system"
    assert local["rules"] == [
        {"apiGroups": [""], "resources": ["secrets"], "verbs": ["create"]},
        {
            "apiGroups": [""],
            "resources": ["secrets"],
            "resourceNames": ["agentauth-issuer-keys", "agentauth-webhook-tls"],
            "verbs": ["get", "update"],
        },
    ]
    ts_local = chart.one(objects, "Role", "agentauth-token-service")
    assert ts_local["rules"][0]["resourceNames"] == ["agentauth-issuer-keys"]
    assert ts_local["rules"][0]["verbs"] == ["get", "list", "watch"]
    all_verbs = {
        v for o in chart.by_kind(objects, "ClusterRole") for r in o["rules"] for v in r["verbs"]
    }
    assert "*" not in all_verbs and "delete" not in all_verbs


def test_variants_render_what_they_promise() -> None:
    cm = chart.render(VARIANTS["cert-manager"])
    certificate = chart.one(cm, "Certificate")
    assert certificate["spec"]["dnsNames"][2] == "agentauth-controller.agentauth-system.svc"
    assert certificate["spec"]["issuerRef"]["name"] == "agentauth-webhook-selfsigned"
    assert chart.one(cm, "Issuer")["spec"] == {"selfSigned": {}}
    mutating = chart.one(cm, "MutatingWebhookConfiguration")
    assert mutating["metadata"]["annotations"] == {
        "agentauth.dev/issuer": "https://agentauth.example.com",
        "agentauth.dev/namespace": "agentauth-system",
        "cert-manager.io/inject-ca-from": "agentauth-system/agentauth-webhook",
    }
    role = chart.one(cm, "ClusterRole", "agentauth-controller")
    assert not any("admissionregistration.k8s.io" in r["apiGroups"] for r in role["rules"])
    env = {
        e["name"]: e.get("value")
        for e in chart.one(cm, "Deployment", "agentauth-controller")["spec"]["template"]["spec"][
            "containers"
        ][0]["env"]
    }
    assert env["AGENTAUTH_WEBHOOK_CERT_DIR"] == "/etc/agentauth/webhook-tls"
    assert chart.by_kind(chart.render(VARIANTS["cert-manager-issuer"]), "Issuer") == []

    mon = chart.render(VARIANTS["monitoring-netpol"])
    monitor = chart.one(mon, "ServiceMonitor")
    assert monitor["metadata"]["labels"]["release"] == "prom"
    assert monitor["spec"]["endpoints"][0]["path"] == "/metrics"
    assert len(chart.by_kind(mon, "NetworkPolicy")) == 2

    dev = chart.render(VARIANTS["dev-url-tokenreview"])
    webhooks = chart.one(dev, "MutatingWebhookConfiguration")["webhooks"]
    assert [w["clientConfig"] for w in webhooks] == [{"url": "https://127.0.0.1:9443/mutate/pods"}]
    ts_role = chart.one(dev, "ClusterRole", "agentauth-token-service")
    assert {
        "apiGroups": ["authentication.k8s.io"],
        "resources": ["tokenreviews"],
        "verbs": ["create"],
    } in ts_role["rules"]
    deployment = chart.one(dev, "Deployment", "agentauth-controller")
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert container["image"] == "ghcr.io/agentauth/agentauth@sha256:" + "a" * 64
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["AGENTAUTH_WATCH_NAMESPACES"] == "team-a,team-b"
    assert env["AGENTAUTH_WEBHOOK_EXTRA_HOSTS"] == "127.0.0.1"
    token_service = chart.one(dev, "Deployment", "agentauth-token-service")
    assert token_service["spec"]["replicas"] == 3
    ts_env = {
        e["name"]: e.get("value")
        for e in token_service["spec"]["template"]["spec"]["containers"][0]["env"]
    }
    assert ts_env["AGENTAUTH_TOKEN_REVIEW"] == "true"
    assert ts_env["AGENTAUTH_LISTEN_PORT"] == "8080"
    assert ts_env["AGENTAUTH_TOKEN_SERVICE_URL"] == "https://agentauth.example.com"


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"controller": {"replicaCount": 2}}, "controller.replicaCount"),
        ({"issuer": {"url": "http://insecure.example"}}, "issuer.url"),
        ({"webhook": {"failurePolicy": "Sometimes"}}, "webhook.failurePolicy"),
        ({"controller": {"projectedTokenExpiry": "ten minutes"}}, "projectedTokenExpiry"),
        ({"unknownTopLevel": True}, "unknownTopLevel"),
    ],
)
def test_schema_rejects_bad_values(values: dict[str, Any], message: str) -> None:
    with pytest.raises(helm.HelmValuesError) as caught:
        chart.render(values)
    assert message.split(".")[-1] in str(caught.value)


def test_notes_tell_the_next_steps() -> None:
    text = chart.notes()
    assert "Token endpoint:  https://agentauth.example.com/oauth2/token" in text
    assert "kubectl create serviceaccount research-agent -n default" in text


# Only kinds a real cluster gets from CRDs; built-in kinds are served by the dev cluster.
STAND_INS = [
    ("monitoring.coreos.com", "servicemonitors", "ServiceMonitor", "v1"),
    ("cert-manager.io", "certificates", "Certificate", "v1"),
    ("cert-manager.io", "issuers", "Issuer", "v1"),
    ("gateway.networking.k8s.io", "httproutes", "HTTPRoute", "v1"),
    ("gateway.networking.k8s.io", "backendtlspolicies", "BackendTLSPolicy", "v1"),
]


def stand_in_crd(*, group: str, plural: str, kind: str, version: str) -> dict[str, Any]:
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{plural}.{group}"},
        "spec": {
            "group": group,
            "scope": "Namespaced",
            "names": {"plural": plural, "kind": kind, "singular": kind.lower()},
            "versions": [
                {
                    "name": version,
                    "served": True,
                    "storage": True,
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "x-kubernetes-preserve-unknown-fields": True,
                        }
                    },
                }
            ],
        },
    }


@pytest.fixture(scope="module")
def stand_ins(kubectl: Kubectl) -> None:
    served = kubectl("api-resources", "-o", "name").stdout.split()
    missing = [s for s in STAND_INS if f"{s[1]}.{s[0]}" not in served and s[1] not in served]
    if missing:
        documents = [stand_in_crd(group=g, plural=p, kind=k, version=v) for g, p, k, v in missing]
        kubectl("apply", "-f", "-", input=yaml.safe_dump_all(documents))
        for group, plural, _kind, _version in missing:
            kubectl("wait", "--for=condition=Established", f"crd/{plural}.{group}", "--timeout=30s")


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_every_rendered_object_is_accepted(variant: str, kubectl: Kubectl, stand_ins: None) -> None:
    release = f"aa{uuid.uuid4().hex[:8]}"
    namespace = f"{release}-system"
    values = json.loads(json.dumps(VARIANTS[variant]))
    # Inert webhooks: no namespace carries this label, so applying them changes no other test.
    values.setdefault("webhook", {})["namespaceSelector"] = {
        "matchLabels": {"agentauth.dev/test-inert": release}
    }
    objects = chart.render(values, release=release, namespace=namespace)
    kubectl("create", "namespace", namespace)
    try:
        result = kubectl("apply", "-f", "-", input=yaml.safe_dump_all(objects))
        applied = [line for line in result.stdout.splitlines() if line.strip()]
        assert len(applied) == len(objects), result.stdout
        assert all(line.endswith((" created", " configured", " unchanged")) for line in applied)
        for obj in objects:
            meta = obj["metadata"]
            group = obj["apiVersion"].split("/")[0] if "/" in obj["apiVersion"] else ""
            kind = f"{obj['kind'].lower()}.{group}" if group else obj["kind"].lower()
            args = ["get", kind, meta["name"], "-o", "json"]
            if "namespace" in meta:
                args += ["-n", meta["namespace"]]
            stored = json.loads(kubectl(*args).stdout)
            assert stored["metadata"]["uid"]
    finally:
        cluster_scoped = [o for o in objects if "namespace" not in o["metadata"]]
        kubectl("delete", "--ignore-not-found", "-f", "-", input=yaml.safe_dump_all(cluster_scoped))
        kubectl("delete", "namespace", namespace, "--wait=false")


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_components_accept_the_environment_the_chart_gives_them(variant: str) -> None:
    from agentauth.controller import settings as controller_settings
    from agentauth.tokenservice import settings as tokenservice_settings

    objects = chart.render(VARIANTS[variant])

    def environment(name: str) -> dict[str, str]:
        pod = chart.one(objects, "Deployment", name)["spec"]["template"]["spec"]
        env = {e["name"]: e["value"] for e in pod["containers"][0]["env"] if "value" in e}
        return {**env, "POD_NAMESPACE": "agentauth-system"}

    controller = controller_settings.from_sources(None, environ=environment("agentauth-controller"))
    assert controller.namespace == "agentauth-system"
    assert controller.issuer == "https://agentauth.example.com"
    assert controller.webhook_service == "agentauth-controller"
    assert controller.mutating_webhook_configuration == "agentauth-webhook"
    tokens = tokenservice_settings.from_sources(environ=environment("agentauth-token-service"))
    assert tokens.issuer == controller.issuer
    assert tokens.namespace == controller.namespace


def test_token_service_drains_before_it_stops() -> None:
    """Rolling updates drop nothing (issue 20): a terminating pod keeps serving through the
    preStop sleep while endpoints drop it, then has shutdownTimeoutSeconds to finish; the grace
    period covers both; the API deadline reaches the service."""
    objects = chart.render()
    pod = chart.one(objects, "Deployment", "agentauth-token-service")["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert pod["terminationGracePeriodSeconds"] == 30
    assert container["lifecycle"] == {"preStop": {"exec": {"command": ["sleep", "5"]}}}
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert (env["AGENTAUTH_SHUTDOWN_TIMEOUT"], env["AGENTAUTH_API_TIMEOUT"]) == ("5", "5")
    # pending-request slots: create-if-absent and compare-and-swap on Leases, never delete
    (rule,) = [
        r
        for r in chart.one(objects, "ClusterRole", "agentauth-token-service")["rules"]
        if r["apiGroups"] == ["coordination.k8s.io"]
    ]
    assert (rule["resources"], rule["verbs"]) == (["leases"], ["get", "list", "create", "update"])

    without = chart.render({"tokenService": {"preStopSleepSeconds": 0}})
    bare = chart.one(without, "Deployment", "agentauth-token-service")["spec"]["template"]["spec"]
    assert "lifecycle" not in bare["containers"][0]

    with pytest.raises(helm.HelmRenderError) as caught:
        chart.render({"tokenService": {"terminationGracePeriodSeconds": 10}})
    assert (
        "tokenService.terminationGracePeriodSeconds must exceed preStopSleepSeconds + "
        "shutdownTimeoutSeconds" in str(caught.value)
    )


def test_pdb_and_network_policy_are_real_objects(kubectl: Kubectl, namespace: str) -> None:
    """No stand-in: a misspelled field in the chart's PDB or NetworkPolicy would be refused."""
    objects = chart.render({"networkPolicy": {"enabled": True}}, namespace=namespace)
    pdb = chart.one(objects, "PodDisruptionBudget")
    policies = chart.by_kind(objects, "NetworkPolicy")
    kubectl("apply", "--validate=strict", "-f", "-", input=yaml.safe_dump_all([pdb, *policies]))
    stored = json.loads(
        kubectl("get", "pdb", pdb["metadata"]["name"], "-n", namespace, "-o", "json").stdout
    )
    assert stored["spec"] == pdb["spec"]
    misspelled = {**pdb, "spec": {**pdb["spec"], "minAvailble": 1}}
    refused = kubectl(
        "apply", "--validate=strict", "-f", "-", input=yaml.safe_dump(misspelled), check=False
    )
    assert 'strict decoding error: unknown field "spec.minAvailble"' in refused.stderr


def test_real_helm_install_into_the_dev_cluster(
    dev_cluster: Any, kubectl: Kubectl, tmp_path: Any
) -> None:
    """Helm's own install (server-side apply, strict field validation) of the chart, and of a
    chart whose PodDisruptionBudget misspells a field, which the server refuses as upstream."""
    release = f"h{uuid.uuid4().hex[:8]}"
    namespace = f"{release}-system"
    kubectl("create", "namespace", namespace)
    values = chart.with_required(
        {
            "networkPolicy": {"enabled": True},
            "webhook": {
                "namespaceSelector": {"matchLabels": {"agentauth.dev/test-inert": release}}
            },
        }
    )
    bad = tmp_path / "bad"
    (bad / "templates").mkdir(parents=True)
    (bad / "Chart.yaml").write_text("apiVersion: v2\nname: bad\nversion: 0.1.0\n")
    (bad / "templates" / "pdb.yaml").write_text(
        "apiVersion: policy/v1\nkind: PodDisruptionBudget\nmetadata:\n  name: bad\n"
        "spec:\n  minAvailble: 1\n  selector: {matchLabels: {app: x}}\n"
    )
    with helm.Config(kubeconfig_path=str(dev_cluster.kubeconfig_path), namespace=namespace) as cfg:
        try:
            cfg.install(str(chart.CHART), release, values, namespace=namespace, timeout=60)
            names = kubectl(
                "get", "pdb,netpol,secrets", "-n", namespace, "-o", "name"
            ).stdout.split()
            assert f"poddisruptionbudget.policy/{release}-agentauth-token-service" in names
            assert f"secret/sh.helm.release.v1.{release}.v1" in names
            with pytest.raises(helm.HelmReleaseError) as refused:
                cfg.install(str(bad), f"{release}-bad", {}, namespace=namespace, timeout=60)
            assert (
                'PodDisruptionBudget in version "v1" cannot be handled as a PodDisruptionBudget: '
                'strict decoding error: unknown field "spec.minAvailble"'
            ) in str(refused.value)
        finally:
            cfg.uninstall(release)
            kubectl("delete", "namespace", namespace, "--wait=false")
