"""The chart's required issuer, the token service's TLS, and its Ingress / HTTPRoute options.

Real Helm renders and lints every case (``helm-python-sdk``); the refusals are Helm's own errors,
asserted word for word where the chart writes them. ``tests/charts/test_chart.py`` applies the
same variants to the embedded control plane with real kubectl.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import helm_python as helm
import pytest

from tests.charts import chart

ISSUER = {"url": "https://tokens.example.org"}
SECRET_TLS = {"issuer": ISSUER, "tokenService": {"tls": {"secretName": "ts-cert"}}}


def _container(objects: list[dict[str, Any]]) -> dict[str, Any]:
    deployment = chart.one(objects, "Deployment", "agentauth-token-service")
    container: dict[str, Any] = deployment["spec"]["template"]["spec"]["containers"][0]
    return container


def _env(objects: list[dict[str, Any]]) -> dict[str, str]:
    return {e["name"]: e.get("value", "") for e in _container(objects)["env"]}


def test_an_install_without_issuer_url_is_refused_by_the_schema() -> None:
    with pytest.raises(helm.HelmValuesError) as caught:
        chart.render({"tokenService": {"tls": {"secretName": "ts-cert"}}}, required=False)
    assert "at '/issuer': missing property 'url'" in str(caught.value)
    report = helm.lint(chart.CHART, {}, strict=True)
    assert any("missing property 'url'" in str(m) for m in report["messages"]), report


def test_without_the_schema_the_template_still_requires_issuer_url(tmp_path: Path) -> None:
    # `helm install --skip-schema-validation` is the template's `required` alone: a copy of the
    # chart without values.schema.json renders the same way.
    copy = shutil.copytree(chart.CHART, tmp_path / "agentauth")
    (copy / "values.schema.json").unlink()
    with pytest.raises(helm.HelmRenderError) as caught:
        helm.Chart.load(copy).render(
            {"tokenService": {"tls": {"secretName": "ts-cert"}}},
            name="agentauth",
            namespace="agentauth-system",
            is_install=True,
        )
    assert (
        "issuer.url is required: the public HTTPS URL of the token service, which every agent "
        "token and agent pod carries (e.g. --set issuer.url=https://agentauth.example.com)"
    ) in str(caught.value)


def test_a_plain_http_issuer_is_refused() -> None:
    with pytest.raises(helm.HelmValuesError) as caught:
        chart.render({**SECRET_TLS, "issuer": {"url": "http://tokens.example.org"}})
    assert "/issuer/url" in str(caught.value)


def test_tls_without_a_certificate_source_is_refused_with_the_choices() -> None:
    with pytest.raises(helm.HelmRenderError) as caught:
        chart.render({"issuer": ISSUER}, required=False)
    assert (
        "tokenService.tls.enabled is true but there is no certificate: set "
        "tokenService.tls.secretName to a kubernetes.io/tls Secret you created, or "
        "tokenService.tls.certManager.enabled=true with tokenService.tls.certManager.issuerRef, "
        "or (only when TLS ends at an Ingress or Gateway in front of it) "
        "tokenService.tls.enabled=false"
    ) in str(caught.value)


def test_two_certificate_sources_are_refused() -> None:
    values = {
        "issuer": ISSUER,
        "tokenService": {"tls": {"secretName": "ts-cert", "certManager": {"enabled": True}}},
    }
    with pytest.raises(helm.HelmRenderError) as caught:
        chart.render(values, required=False)
    assert "set either secretName (a Secret you created) or certManager.enabled=true, not both" in (
        str(caught.value)
    )


def test_an_admin_secret_makes_the_token_service_serve_https() -> None:
    objects = chart.render(SECRET_TLS, required=False)
    container = _container(objects)
    env = _env(objects)
    assert env["AGENTAUTH_TLS_CERT"] == "/etc/agentauth/tls/tls.crt"
    assert env["AGENTAUTH_TLS_KEY"] == "/etc/agentauth/tls/tls.key"
    assert env["AGENTAUTH_ISSUER"] == "https://tokens.example.org"
    assert container["ports"][0]["name"] == "https"
    for probe in ("livenessProbe", "readinessProbe"):
        assert container[probe]["httpGet"]["scheme"] == "HTTPS"
        assert container[probe]["httpGet"]["port"] == "https"
    assert {"name": "tls", "mountPath": "/etc/agentauth/tls", "readOnly": True} in (
        container["volumeMounts"]
    )
    pod = chart.one(objects, "Deployment", "agentauth-token-service")["spec"]["template"]["spec"]
    assert {"name": "tls", "secret": {"secretName": "ts-cert"}} in pod["volumes"]
    service = chart.one(objects, "Service", "agentauth-token-service")
    assert service["spec"]["ports"] == [
        {
            "name": "https",
            "port": 443,
            "targetPort": "https",
            "protocol": "TCP",
            "appProtocol": "https",
        }
    ]
    assert chart.by_kind(objects, "Certificate") == []


def test_cert_manager_issues_a_certificate_for_the_issuer_host_and_the_service() -> None:
    values = {
        "issuer": {"url": "https://tokens.example.org:8443/", "tokenServiceURL": ""},
        "tokenService": {
            "tls": {
                "certManager": {
                    "enabled": True,
                    "issuerRef": {"name": "corp-ca", "kind": "ClusterIssuer"},
                    "extraDnsNames": ["tokens.internal"],
                }
            }
        },
    }
    objects = chart.render(values, required=False)
    certificate = chart.one(objects, "Certificate", "agentauth-token-service")
    assert certificate["spec"]["secretName"] == "agentauth-token-service-tls"
    assert certificate["spec"]["dnsNames"] == [
        "tokens.example.org",
        "agentauth-token-service",
        "agentauth-token-service.agentauth-system",
        "agentauth-token-service.agentauth-system.svc",
        "agentauth-token-service.agentauth-system.svc.cluster.local",
        "tokens.internal",
    ]
    assert certificate["spec"]["issuerRef"] == {
        "name": "corp-ca",
        "kind": "ClusterIssuer",
        "group": "cert-manager.io",
    }
    pod = chart.one(objects, "Deployment", "agentauth-token-service")["spec"]["template"]["spec"]
    assert {"name": "tls", "secret": {"secretName": "agentauth-token-service-tls"}} in pod[
        "volumes"
    ]


def test_cert_manager_without_an_issuer_is_refused() -> None:
    values = {"issuer": ISSUER, "tokenService": {"tls": {"certManager": {"enabled": True}}}}
    with pytest.raises(helm.HelmRenderError) as caught:
        chart.render(values, required=False)
    assert "tokenService.tls.certManager.issuerRef.name is required" in str(caught.value)


def test_tls_off_serves_plain_http_on_port_80() -> None:
    objects = chart.render({"issuer": ISSUER, "tokenService": {"tls": {"enabled": False}}})
    env = _env(objects)
    assert "AGENTAUTH_TLS_CERT" not in env
    assert _container(objects)["livenessProbe"]["httpGet"]["scheme"] == "HTTP"
    service = chart.one(objects, "Service", "agentauth-token-service")
    assert [(p["name"], p["port"]) for p in service["spec"]["ports"]] == [("http", 80)]


def test_the_ingress_routes_the_issuer_host_to_the_https_port() -> None:
    values = {
        **SECRET_TLS,
        "tokenService": {
            "tls": {"secretName": "ts-cert"},
            "ingress": {"enabled": True, "className": "nginx", "annotations": {"a.example/b": "c"}},
        },
    }
    ingress = chart.one(chart.render(values), "Ingress", "agentauth-token-service")
    assert ingress["spec"]["ingressClassName"] == "nginx"
    assert ingress["metadata"]["annotations"] == {"a.example/b": "c"}
    assert ingress["spec"]["rules"] == [
        {
            "host": "tokens.example.org",
            "http": {
                "paths": [
                    {
                        "path": "/",
                        "pathType": "Prefix",
                        "backend": {
                            "service": {
                                "name": "agentauth-token-service",
                                "port": {"name": "https"},
                            }
                        },
                    }
                ]
            },
        }
    ]


def test_the_httproute_needs_a_gateway_and_routes_to_the_service() -> None:
    with pytest.raises(helm.HelmRenderError) as caught:
        chart.render({**SECRET_TLS, "tokenService": {"httpRoute": {"enabled": True}}})
    assert "tokenService.httpRoute.parentRefs is required" in str(caught.value)

    values = {
        "issuer": ISSUER,
        "tokenService": {
            "tls": {"secretName": "ts-cert"},
            "httpRoute": {
                "enabled": True,
                "parentRefs": [{"name": "public", "namespace": "gateways"}],
                "backendTLSPolicy": {"enabled": True, "caConfigMap": "corp-ca"},
            },
        },
    }
    objects = chart.render(values)
    route = chart.one(objects, "HTTPRoute", "agentauth-token-service")
    assert route["apiVersion"] == "gateway.networking.k8s.io/v1"
    assert route["spec"]["parentRefs"] == [{"name": "public", "namespace": "gateways"}]
    assert route["spec"]["hostnames"] == ["tokens.example.org"]
    assert route["spec"]["rules"][0]["backendRefs"] == [
        {"name": "agentauth-token-service", "port": 443}
    ]
    policy = chart.one(objects, "BackendTLSPolicy", "agentauth-token-service")
    assert policy["spec"]["targetRefs"] == [
        {"group": "", "kind": "Service", "name": "agentauth-token-service", "sectionName": "https"}
    ]
    assert policy["spec"]["validation"] == {
        "hostname": "agentauth-token-service.agentauth-system.svc",
        "caCertificateRefs": [{"group": "", "kind": "ConfigMap", "name": "corp-ca"}],
    }


def test_metrics_scraping_follows_the_scheme() -> None:
    values = {**SECRET_TLS, "prometheus": {"servicemonitor": {"enabled": True}}}
    endpoint = chart.one(chart.render(values), "ServiceMonitor")["spec"]["endpoints"][0]
    assert endpoint["port"] == "https"
    assert endpoint["scheme"] == "https"


def test_notifications_read_the_webhook_url_from_a_secret() -> None:
    values = {"notifications": {"webhook": {"enabled": True, "secretName": "approver-hook"}}}
    controller = chart.one(chart.render(values), "Deployment", "agentauth-controller")
    env = {e["name"]: e for e in controller["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["AGENTAUTH_NOTIFY_WEBHOOK_URL"] == {
        "name": "AGENTAUTH_NOTIFY_WEBHOOK_URL",
        "valueFrom": {"secretKeyRef": {"name": "approver-hook", "key": "url"}},
    }
    assert env["AGENTAUTH_NOTIFY_FORMAT"]["value"] == "slack"
    assert env["AGENTAUTH_NOTIFY_ATTEMPTS"]["value"] == "5"
    with pytest.raises(helm.HelmRenderError) as caught:
        chart.render({"notifications": {"webhook": {"enabled": True}}})
    assert "notifications.webhook.secretName is required" in str(caught.value)
    plain = chart.one(chart.render(), "Deployment", "agentauth-controller")
    names = {e["name"] for e in plain["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert "AGENTAUTH_NOTIFY_WEBHOOK_URL" not in names
