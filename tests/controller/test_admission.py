"""Pod admission through the real webhook path of the embedded control plane.

The dev control plane calls the chart's webhook configurations over HTTPS, verifying the
``caBundle`` the controller patched in, via the chart's Service; kubectl shows the outcome.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
import yaml

from tests.conftest import Kubectl
from tests.controller.conftest import ISSUER, ControllerThread, Install, get_json, wait_for

TOKEN_DIR = "/var/run/secrets/agentauth.dev/serviceaccount"


def pod(name: str, namespace: str, *, agent: str | None, account: str, **spec: Any) -> str:
    labels = {"app": "demo"}
    if agent is not None:
        labels["agentauth.dev/agent"] = agent
    body = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace, "labels": labels},
        "spec": {
            "serviceAccountName": account,
            "containers": [{"name": "main", "image": "python:3.11-slim"}],
            **spec,
        },
    }
    return yaml.safe_dump(body)


@pytest.fixture(scope="module")
def agents(kubectl: Kubectl, install: Install, controller: ControllerThread) -> str:
    ns = install.namespace
    kubectl("create", "serviceaccount", "writer-sa", "-n", ns)
    documents = [
        {
            "apiVersion": "agentauth.dev/v1alpha1",
            "kind": "Agent",
            "metadata": {"name": "writer", "namespace": ns},
            "spec": {"serviceAccountName": "writer-sa"},
        },
        {
            "apiVersion": "agentauth.dev/v1alpha1",
            "kind": "Agent",
            "metadata": {"name": "sleeper", "namespace": ns},
            "spec": {"serviceAccountName": "writer-sa", "suspended": True},
        },
    ]
    kubectl("apply", "-f", "-", input=yaml.safe_dump_all(documents))
    # The controller patched its CA into the chart's configurations at start.
    mutating = get_json(kubectl, "mutatingwebhookconfiguration", f"{install.release}-webhook")
    assert all(w["clientConfig"].get("caBundle") for w in mutating["webhooks"])
    return ns


def expected_env(ns: str, agent: str) -> list[dict[str, str]]:
    return [
        {"name": "AGENTAUTH_AGENT", "value": agent},
        {"name": "AGENTAUTH_NAMESPACE", "value": ns},
        {"name": "AGENTAUTH_ISSUER", "value": ISSUER},
        {"name": "AGENTAUTH_TOKEN_URL", "value": f"{ISSUER}/oauth2/token"},
        {"name": "AGENTAUTH_TOKEN_FILE", "value": f"{TOKEN_DIR}/token"},
    ]


def test_injection_is_exact_and_idempotent(kubectl: Kubectl, agents: str) -> None:
    ns = agents
    kubectl(
        "apply",
        "-f",
        "-",
        input=pod(
            "writer-1",
            ns,
            agent="writer",
            account="writer-sa",
            initContainers=[
                {"name": "init", "image": "busybox", "env": [{"name": "KEEP", "value": "yes"}]}
            ],
        ),
    )
    stored = get_json(kubectl, "pod", "writer-1", "-n", ns)
    volumes = [v for v in stored["spec"]["volumes"] if v["name"] == "agentauth-token"]
    assert volumes == [
        {
            "name": "agentauth-token",
            "projected": {
                "defaultMode": 292,
                "sources": [
                    {
                        "serviceAccountToken": {
                            "audience": ISSUER,
                            "expirationSeconds": 3600,
                            "path": "token",
                        }
                    }
                ],
            },
        }
    ]
    mount = {"name": "agentauth-token", "mountPath": TOKEN_DIR, "readOnly": True}
    init = stored["spec"]["initContainers"][0]
    main = stored["spec"]["containers"][0]
    assert [m for m in init["volumeMounts"] if m["name"] == "agentauth-token"] == [mount]
    assert [m for m in main["volumeMounts"] if m["name"] == "agentauth-token"] == [mount]
    assert init["env"] == [{"name": "KEEP", "value": "yes"}, *expected_env(ns, "writer")]
    assert main["env"] == expected_env(ns, "writer")

    # Re-invocation on an already injected pod changes nothing: admit a copy of the stored pod.
    again = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "writer-2", "namespace": ns, "labels": stored["metadata"]["labels"]},
        "spec": stored["spec"],
    }
    kubectl("apply", "-f", "-", input=json.dumps(again))
    second = get_json(kubectl, "pod", "writer-2", "-n", ns)
    assert second["spec"]["volumes"] == stored["spec"]["volumes"]
    assert second["spec"]["containers"] == stored["spec"]["containers"]
    assert second["spec"]["initContainers"] == stored["spec"]["initContainers"]


def test_unlabelled_pod_is_not_touched(kubectl: Kubectl, agents: str) -> None:
    kubectl("apply", "-f", "-", input=pod("plain", agents, agent=None, account="default"))
    stored = get_json(kubectl, "pod", "plain", "-n", agents)
    assert "env" not in stored["spec"]["containers"][0]
    assert not any(v["name"] == "agentauth-token" for v in stored["spec"].get("volumes") or [])


def denial(kubectl: Kubectl, document: str) -> str:
    result = kubectl("apply", "-f", "-", input=document, check=False)
    assert result.returncode != 0, result.stdout
    return result.stderr.strip()


def test_rejections_say_what_to_fix(kubectl: Kubectl, agents: str) -> None:
    ns = agents
    prefix = (
        'Error from server (Forbidden): error when creating "STDIN": admission webhook '
        '"pods.agentauth.dev" denied the request: '
    )
    assert denial(kubectl, pod("ghost-1", ns, agent="ghost", account="writer-sa")) == prefix + (
        f'Agent "ghost" not found in namespace "{ns}": create the Agent, or fix the pod\'s '
        "label agentauth.dev/agent"
    )
    assert denial(kubectl, pod("sleeper-1", ns, agent="sleeper", account="writer-sa")) == (
        prefix + f'Agent "sleeper" in namespace "{ns}" is suspended: resume it with kubectl '
        f'patch agent sleeper -n {ns} --type merge -p \'{{"spec":{{"suspended":false}}}}\', '
        "or remove the pod's label agentauth.dev/agent"
    )
    assert denial(kubectl, pod("writer-x", ns, agent="writer", account="default")) == prefix + (
        'pod runs as ServiceAccount "default" but Agent "writer" requires "writer-sa": set '
        "spec.serviceAccountName: writer-sa in the pod (template)"
    )
    for name in ("ghost-1", "sleeper-1", "writer-x"):
        assert get_json(kubectl, "pod", name, "-n", ns) is None


def test_relabelling_a_running_pod_is_validated(kubectl: Kubectl, agents: str) -> None:
    ns = agents
    kubectl("apply", "-f", "-", input=pod("writer-3", ns, agent="writer", account="writer-sa"))
    result = kubectl(
        "label",
        "pod",
        "writer-3",
        "-n",
        ns,
        "agentauth.dev/agent=ghost",
        "--overwrite",
        check=False,
    )
    assert result.returncode != 0
    assert f'Agent "ghost" not found in namespace "{ns}"' in result.stderr
    # Unrelated updates of an admitted pod pass even once its Agent is suspended.
    kubectl(
        "patch", "agent", "writer", "-n", ns, "--type", "merge", "-p", '{"spec":{"suspended":true}}'
    )
    kubectl("annotate", "pod", "writer-3", "-n", ns, "note=still-fine")
    wait_for(
        lambda: (
            get_json(kubectl, "pod", "writer-3", "-n", ns)["metadata"]
            .get("annotations", {})
            .get("note")
            == "still-fine"
        ),
        message="annotation",
    )
    kubectl(
        "patch",
        "agent",
        "writer",
        "-n",
        ns,
        "--type",
        "merge",
        "-p",
        '{"spec":{"suspended":false}}',
    )


async def test_webhook_server_refuses_bad_input(
    install: Install, controller: ControllerThread
) -> None:
    import ssl

    import aiohttp

    ctl = controller.controller
    assert ctl is not None and ctl.webhook_ca is not None
    context = ssl.create_default_context(cadata=ctl.webhook_ca.decode())
    base = f"https://127.0.0.1:{ctl.webhook_port}"
    hostname = f"{install.release}-controller.{install.system_namespace}.svc"
    async with aiohttp.ClientSession() as session:

        async def post(path: str, body: bytes) -> tuple[int, str]:
            async with session.post(
                base + path, data=body, ssl=context, server_hostname=hostname
            ) as response:
                return response.status, await response.text()

        assert await post("/mutate/nothing", b"{}") == (
            404,
            "no admission webhook at /mutate/nothing",
        )
        assert await post("/mutate/pods", b"not json") == (
            400,
            "malformed AdmissionReview: Expecting value: line 1 column 1 (char 0)",
        )
        assert await post("/mutate/pods", b'{"kind": "AdmissionReview"}') == (
            400,
            "malformed AdmissionReview: 'request'",
        )
        status, text = await post(
            "/validate/pods",
            json.dumps(
                {
                    "apiVersion": "admission.k8s.io/v1",
                    "kind": "AdmissionReview",
                    "request": {
                        "uid": "u1",
                        "operation": "CREATE",
                        "namespace": install.namespace,
                        "object": {
                            "metadata": {"labels": {"agentauth.dev/agent": "ghost"}},
                            "spec": {"serviceAccountName": "x"},
                        },
                    },
                }
            ).encode(),
        )
        assert status == 200
        assert json.loads(text)["response"] == {
            "uid": "u1",
            "allowed": False,
            "status": {
                "code": 403,
                "reason": "Forbidden",
                "message": (
                    f'Agent "ghost" not found in namespace "{install.namespace}": create the '
                    "Agent, or fix the pod's label agentauth.dev/agent"
                ),
            },
        }
        # The certificate is only valid for the Service's names.
        with pytest.raises(aiohttp.ClientConnectorCertificateError):
            async with session.post(
                base + "/mutate/pods", data=b"{}", ssl=context, server_hostname="evil.example"
            ):
                pass


def test_invalid_grant_is_refused_and_gives_nothing(kubectl: Kubectl, agents: str) -> None:
    ns = agents
    # The model's rule (maxDuration only with approval Required) is a CEL rule of the CRD: the API
    # server refuses the grant with the rule's message before the controller sees it.
    refused = kubectl(
        "apply",
        "-f",
        "-",
        input=yaml.safe_dump(
            {
                "apiVersion": "agentauth.dev/v1alpha1",
                "kind": "CapabilityGrant",
                "metadata": {"name": "odd", "namespace": ns},
                "spec": {
                    "agents": {"names": ["writer"]},
                    "capabilities": [{"name": "x.y", "approval": "Automatic", "maxDuration": "1h"}],
                },
            }
        ),
        check=False,
    )
    assert refused.returncode == 1
    assert refused.stderr.strip() == (
        'The CapabilityGrant "odd" is invalid: spec.capabilities[0]: Invalid value: "object": '
        "maxDuration applies only to capabilities with approval Required"
    )
    writer = get_json(kubectl, "agent", "writer", "-n", ns)
    assert not any(c["name"] == "x.y" for c in writer["status"].get("capabilities", []))
