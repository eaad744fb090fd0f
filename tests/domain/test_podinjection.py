"""Pod mutation (JSONPatch) and validation for projected agent credentials (pure)."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from agentauth.domain import podinjection
from agentauth.domain.models import Agent

INJ = podinjection.Injection(
    issuer="https://issuer.example",
    token_url="https://ts.example/oauth2/token",
    expiration_seconds=3600,
)
ENV = [
    {"name": "AGENTAUTH_AGENT", "value": "research"},
    {"name": "AGENTAUTH_NAMESPACE", "value": "team"},
    {"name": "AGENTAUTH_ISSUER", "value": "https://issuer.example"},
    {"name": "AGENTAUTH_TOKEN_URL", "value": "https://ts.example/oauth2/token"},
    {
        "name": "AGENTAUTH_TOKEN_FILE",
        "value": "/var/run/secrets/agentauth.dev/serviceaccount/token",
    },
]
VOLUME = {
    "name": "agentauth-token",
    "projected": {
        "defaultMode": 0o444,
        "sources": [
            {
                "serviceAccountToken": {
                    "audience": "https://issuer.example",
                    "expirationSeconds": 3600,
                    "path": "token",
                }
            }
        ],
    },
}
MOUNT = {
    "name": "agentauth-token",
    "mountPath": "/var/run/secrets/agentauth.dev/serviceaccount",
    "readOnly": True,
}


def pod(**spec: Any) -> dict[str, Any]:
    return {
        "metadata": {"name": "p", "labels": {"agentauth.dev/agent": "research", "app": "r"}},
        "spec": {
            "serviceAccountName": "research-sa",
            "containers": [{"name": "main", "image": "x"}],
            **spec,
        },
    }


def apply(document: dict[str, Any], patch: list[dict[str, Any]]) -> dict[str, Any]:
    result = copy.deepcopy(document)
    for op in patch:
        assert op["op"] == "add"
        parts = op["path"].strip("/").split("/")
        target = result
        for part in parts[:-1]:
            target = target[part]
        target[parts[-1]] = op["value"]
    return result


def test_injects_volume_mounts_and_env_everywhere() -> None:
    original = pod(
        initContainers=[{"name": "init", "image": "x", "env": [{"name": "KEEP", "value": "1"}]}],
        volumes=[{"name": "data", "emptyDir": {}}],
    )
    patch = podinjection.mutation_patch(original, INJ, namespace="team")
    assert [op["path"] for op in patch] == [
        "/spec/volumes",
        "/spec/initContainers",
        "/spec/containers",
    ]
    result = apply(original, patch)
    assert result["spec"]["volumes"] == [{"name": "data", "emptyDir": {}}, VOLUME]
    init = result["spec"]["initContainers"][0]
    assert init["volumeMounts"] == [MOUNT]
    assert init["env"] == [{"name": "KEEP", "value": "1"}, *ENV]
    main = result["spec"]["containers"][0]
    assert main["volumeMounts"] == [MOUNT]
    assert main["env"] == ENV
    assert original["spec"]["containers"][0] == {"name": "main", "image": "x"}  # not mutated


def test_idempotent_and_overrides_stale_values() -> None:
    once = apply(pod(), podinjection.mutation_patch(pod(), INJ, namespace="team"))
    assert podinjection.mutation_patch(once, INJ, namespace="team") == []
    tampered = copy.deepcopy(once)
    tampered["spec"]["containers"][0]["env"][0]["value"] = "someone-else"
    tampered["spec"]["volumes"][0]["projected"]["sources"][0]["serviceAccountToken"]["audience"] = (
        "https://evil"
    )
    fixed = apply(tampered, podinjection.mutation_patch(tampered, INJ, namespace="team"))
    assert fixed == once


def test_unlabelled_pod_is_untouched_and_short_expiry_refused() -> None:
    plain = {"metadata": {"name": "p"}, "spec": {"containers": [{"name": "c"}]}}
    assert podinjection.mutation_patch(plain, INJ, namespace="team") == []
    with pytest.raises(ValueError, match="at least 600"):
        podinjection.Injection(issuer="https://i", token_url="https://t", expiration_seconds=599)


def agent(**spec: Any) -> Agent:
    return Agent.model_validate(
        {
            "metadata": {"name": "research", "namespace": "team"},
            "spec": {"serviceAccountName": "research-sa", **spec},
        }
    )


def rejection(document: dict[str, Any], found: Agent | None) -> str:
    with pytest.raises(podinjection.PodRejected) as caught:
        podinjection.validate_pod(document, namespace="team", agent=found)
    return caught.value.message


def test_valid_pod_is_admitted() -> None:
    podinjection.validate_pod(pod(), namespace="team", agent=agent())
    podinjection.validate_pod(
        pod(), namespace="team", agent=agent(podSelector={"matchLabels": {"app": "r"}})
    )


def test_rejection_messages() -> None:
    assert rejection(pod(), None) == (
        'Agent "research" not found in namespace "team": create the Agent, or fix the pod\'s '
        "label agentauth.dev/agent"
    )
    assert rejection(pod(), agent(suspended=True)) == (
        'Agent "research" in namespace "team" is suspended: resume it with kubectl patch agent '
        'research -n team --type merge -p \'{"spec":{"suspended":false}}\', or remove the '
        "pod's label agentauth.dev/agent"
    )
    other = pod(serviceAccountName="default")
    assert rejection(other, agent()) == (
        'pod runs as ServiceAccount "default" but Agent "research" requires "research-sa": set '
        "spec.serviceAccountName: research-sa in the pod (template)"
    )
    no_sa = pod()
    del no_sa["spec"]["serviceAccountName"]
    assert 'runs as ServiceAccount "default"' in rejection(no_sa, agent())
    keys_only = Agent.model_validate(
        {"metadata": {"name": "research", "namespace": "team"}, "spec": {}}
    )
    assert rejection(pod(), keys_only) == (
        'Agent "research" in namespace "team" has no spec.serviceAccountName, so no pod can act '
        "as it: set spec.serviceAccountName on the Agent"
    )
    assert rejection(pod(), agent(podSelector={"matchLabels": {"app": "other"}})) == (
        "pod labels do not match Agent \"research\" spec.podSelector {'matchLabels': {'app': "
        "'other'}, 'matchExpressions': []}: add the labels to the pod (template)"
    )
    bad = pod()
    bad["metadata"]["labels"]["agentauth.dev/agent"] = "Not_A_Name"
    assert rejection(bad, None) == (
        'label agentauth.dev/agent="Not_A_Name" is not a valid Agent name: use the name of an '
        "Agent in namespace team (a DNS-1123 label)"
    )
    hiding = pod(
        containers=[
            {
                "name": "main",
                "volumeMounts": [
                    {"name": "x", "mountPath": "/var/run/secrets/agentauth.dev/serviceaccount/"}
                ],
            }
        ]
    )
    assert rejection(hiding, agent()) == (
        'container "main" mounts volume "x" at /var/run/secrets/agentauth.dev/serviceaccount/, '
        "which would hide the agent token at /var/run/secrets/agentauth.dev/serviceaccount/token: "
        "mount it elsewhere"
    )
