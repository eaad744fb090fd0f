"""Projected agent credentials for pods: the admission mutation and validation, as pure functions.

Guarantees:
- :func:`mutation_patch` returns a JSONPatch (RFC 6902) that gives the pod exactly one volume
  ``agentauth-token`` (a projected service-account token with audience = the issuer and the
  configured expiry), mounts it read-only at ``TOKEN_DIR`` in every container and init
  container, and sets the five ``AGENTAUTH_*`` variables in each of them. Applying the patch and
  calling it again yields an empty patch (idempotent; safe under ``reinvocationPolicy:
  IfNeeded``). Anything the pod already had under those names is replaced by the injected value:
  the label, not the pod author, decides the identity.
- :func:`validate_pod` raises :class:`PodRejected` with a message that says what to change, for a
  labelled pod whose Agent is missing, suspended, has no ServiceAccount, names a different
  ServiceAccount than the pod runs as, or whose ``podSelector`` the pod does not match, and for a
  pod that mounts something else at the agent-token path. It returns only when the pod may run.
"""

from __future__ import annotations

import copy
import dataclasses
import re
from typing import Any

from agentauth.domain.models import agents as agent_models
from agentauth.domain.models import common

AGENT_LABEL = common.AGENT_LABEL
VOLUME_NAME = "agentauth-token"
TOKEN_DIR = "/var/run/secrets/agentauth.dev/serviceaccount"
TOKEN_FILE_NAME = "token"
TOKEN_PATH = f"{TOKEN_DIR}/{TOKEN_FILE_NAME}"
MIN_EXPIRATION_SECONDS = 600

_DNS_LABEL = re.compile(common.DNS1123_LABEL_PATTERN)


class PodRejected(Exception):
    """The pod may not run as the agent it names; ``message`` is shown to the person."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Injection:
    """What the webhook injects, from the controller's settings."""

    issuer: str
    token_url: str
    expiration_seconds: int

    def __post_init__(self) -> None:
        if self.expiration_seconds < MIN_EXPIRATION_SECONDS:
            raise ValueError("expiration_seconds must be at least 600 (the kubelet's minimum)")


def agent_name(pod: dict[str, Any]) -> str | None:
    """The value of the pod's ``agentauth.dev/agent`` label, or None when unlabelled."""
    labels = (pod.get("metadata") or {}).get("labels") or {}
    value = labels.get(AGENT_LABEL)
    return value if isinstance(value, str) else None


def is_valid_agent_name(name: str) -> bool:
    """Whether ``name`` can name an Agent (a DNS-1123 label)."""
    return len(name) <= 63 and _DNS_LABEL.match(name) is not None


def volume(injection: Injection) -> dict[str, Any]:
    """The projected token volume, exactly as it appears in the pod."""
    return {
        "name": VOLUME_NAME,
        "projected": {
            "defaultMode": 0o444,
            "sources": [
                {
                    "serviceAccountToken": {
                        "audience": injection.issuer,
                        "expirationSeconds": injection.expiration_seconds,
                        "path": TOKEN_FILE_NAME,
                    }
                }
            ],
        },
    }


def volume_mount() -> dict[str, Any]:
    return {"name": VOLUME_NAME, "mountPath": TOKEN_DIR, "readOnly": True}


def env(injection: Injection, *, agent: str, namespace: str) -> list[dict[str, Any]]:
    """The ``AGENTAUTH_*`` variables, in the order they are appended."""
    return [
        {"name": "AGENTAUTH_AGENT", "value": agent},
        {"name": "AGENTAUTH_NAMESPACE", "value": namespace},
        {"name": "AGENTAUTH_ISSUER", "value": injection.issuer},
        {"name": "AGENTAUTH_TOKEN_URL", "value": injection.token_url},
        {"name": "AGENTAUTH_TOKEN_FILE", "value": TOKEN_PATH},
    ]


def _upsert(items: list[dict[str, Any]], wanted: dict[str, Any]) -> list[dict[str, Any]]:
    """``items`` with the entry named like ``wanted`` replaced (in place) or appended."""
    result = list(items)
    for index, item in enumerate(result):
        if item.get("name") == wanted["name"]:
            result[index] = wanted
            return result
    result.append(wanted)
    return result


def _inject_container(
    container: dict[str, Any], injection: Injection, *, agent: str, namespace: str
) -> dict[str, Any]:
    updated = copy.deepcopy(container)
    mounts = [m for m in updated.get("volumeMounts") or [] if m.get("name") != VOLUME_NAME]
    mounts.append(volume_mount())
    updated["volumeMounts"] = mounts
    variables: list[dict[str, Any]] = list(updated.get("env") or [])
    for variable in env(injection, agent=agent, namespace=namespace):
        variables = _upsert(variables, variable)
    updated["env"] = variables
    return updated


def mutate(pod: dict[str, Any], injection: Injection, *, namespace: str) -> dict[str, Any]:
    """The pod as it should be admitted (a deep copy; ``pod`` is not changed)."""
    agent = agent_name(pod)
    if agent is None:
        return copy.deepcopy(pod)
    result = copy.deepcopy(pod)
    spec = result.setdefault("spec", {})
    spec["volumes"] = _upsert(list(spec.get("volumes") or []), volume(injection))
    for key in ("initContainers", "containers"):
        if spec.get(key):
            spec[key] = [
                _inject_container(c, injection, agent=agent, namespace=namespace) for c in spec[key]
            ]
    return result


def mutation_patch(
    pod: dict[str, Any], injection: Injection, *, namespace: str
) -> list[dict[str, Any]]:
    """The JSONPatch turning ``pod`` into :func:`mutate`'s result; ``[]`` when already there.

    Whole lists are written with ``add`` (which replaces an existing member), so the patch
    applies the same way whether or not the pod had volumes, mounts or env before.
    """
    desired = mutate(pod, injection, namespace=namespace)
    current_spec = pod.get("spec") or {}
    desired_spec = desired.get("spec") or {}
    if "spec" not in pod:
        return [{"op": "add", "path": "/spec", "value": desired_spec}]
    return [
        {"op": "add", "path": f"/spec/{key}", "value": desired_spec[key]}
        for key in ("volumes", "initContainers", "containers")
        if key in desired_spec and desired_spec[key] != current_spec.get(key)
    ]


def _pod_service_account(pod: dict[str, Any]) -> str:
    spec = pod.get("spec") or {}
    return str(spec.get("serviceAccountName") or spec.get("serviceAccount") or "default")


def validate_pod(
    pod: dict[str, Any],
    *,
    namespace: str,
    agent: agent_models.Agent | None,
) -> None:
    """Admit a labelled pod or raise :class:`PodRejected` saying what to fix.

    ``agent`` is the Agent the label names in ``namespace`` (None when it does not exist).
    """
    name = agent_name(pod)
    if name is None:
        return
    if not is_valid_agent_name(name):
        raise PodRejected(
            f'label {AGENT_LABEL}="{name}" is not a valid Agent name: use the name of an Agent '
            f"in namespace {namespace} (a DNS-1123 label)"
        )
    if agent is None:
        raise PodRejected(
            f'Agent "{name}" not found in namespace "{namespace}": create the Agent, or fix the '
            f"pod's label {AGENT_LABEL}"
        )
    if agent.spec.suspended:
        raise PodRejected(
            f'Agent "{name}" in namespace "{namespace}" is suspended: resume it with kubectl '
            f"patch agent {name} -n {namespace} --type merge -p "
            '\'{"spec":{"suspended":false}}\', or remove the pod\'s label '
            f"{AGENT_LABEL}"
        )
    wanted = agent.spec.service_account_name
    if wanted is None:
        raise PodRejected(
            f'Agent "{name}" in namespace "{namespace}" has no spec.serviceAccountName, so no '
            "pod can act as it: set spec.serviceAccountName on the Agent"
        )
    actual = _pod_service_account(pod)
    if actual != wanted:
        raise PodRejected(
            f'pod runs as ServiceAccount "{actual}" but Agent "{name}" requires "{wanted}": set '
            f"spec.serviceAccountName: {wanted} in the pod (template)"
        )
    selector = agent.spec.pod_selector
    labels = (pod.get("metadata") or {}).get("labels") or {}
    if selector is not None and not selector.matches(labels):
        raise PodRejected(
            f'pod labels do not match Agent "{name}" spec.podSelector '
            f"{selector.to_api()}: add the labels to the pod (template)"
        )
    spec = pod.get("spec") or {}
    for key in ("initContainers", "containers"):
        for container in spec.get(key) or []:
            for mount in container.get("volumeMounts") or []:
                path = str(mount.get("mountPath", "")).rstrip("/")
                if mount.get("name") != VOLUME_NAME and (
                    path == TOKEN_DIR or path.startswith(TOKEN_DIR + "/")
                ):
                    raise PodRejected(
                        f'container "{container.get("name")}" mounts volume '
                        f'"{mount.get("name")}" at {mount.get("mountPath")}, which would hide '
                        f"the agent token at {TOKEN_PATH}: mount it elsewhere"
                    )
