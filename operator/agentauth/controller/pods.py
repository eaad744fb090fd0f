"""Pod admission: projected agent credentials (mutating) and agent checks (validating).

Guarantees: handlers are thin. The mutation is :func:`agentauth.domain.podinjection.mutation_patch`
with the controller's issuer, token endpoint and projected-token expiry; the validation reads the
Agent live from the API server (a just-created Agent is seen at once) and applies
:func:`agentauth.domain.podinjection.validate_pod`, whose message becomes the rejection. On UPDATE
only a change of the agent label is validated, so an Agent being suspended never blocks
unrelated updates of pods that are already running.
"""

from __future__ import annotations

from typing import Any

import pydantic

from agentauth.controller import runtime, webhooks
from agentauth.domain import podinjection
from agentauth.domain.models import Agent
from agentauth.kube import client as kube


def injection(ctl: runtime.Controller) -> podinjection.Injection:
    settings = ctl.settings
    return podinjection.Injection(
        issuer=settings.issuer,
        token_url=settings.token_endpoint,
        expiration_seconds=int(settings.projected_token_expiry.total_seconds()),
    )


def _namespace(request: dict[str, Any], pod: dict[str, Any]) -> str:
    return str(request.get("namespace") or (pod.get("metadata") or {}).get("namespace") or "")


@webhooks.admission("/mutate/pods")
async def mutate_pod(ctl: runtime.Controller, request: dict[str, Any]) -> webhooks.Allowed:
    pod = request.get("object") or {}
    patch = podinjection.mutation_patch(pod, injection(ctl), namespace=_namespace(request, pod))
    return webhooks.Allowed(patch=patch or None)


@webhooks.admission("/validate/pods")
async def validate_pod(ctl: runtime.Controller, request: dict[str, Any]) -> webhooks.Allowed:
    pod = request.get("object") or {}
    name = podinjection.agent_name(pod)
    if name is None:
        return webhooks.Allowed()
    old = request.get("oldObject")
    if request.get("operation") == "UPDATE" and old and podinjection.agent_name(old) == name:
        return webhooks.Allowed()
    namespace = _namespace(request, pod)
    agent = await _read_agent(ctl, name=name, namespace=namespace)
    try:
        podinjection.validate_pod(pod, namespace=namespace, agent=agent)
    except podinjection.PodRejected as rejected:
        raise webhooks.Denied(rejected.message) from rejected
    return webhooks.Allowed()


async def _read_agent(ctl: runtime.Controller, *, name: str, namespace: str) -> Agent | None:
    """The Agent the label names, None if it does not exist (or cannot, the name being invalid)."""
    if not podinjection.is_valid_agent_name(name):
        return None
    body = await ctl.api.get_or_none(kube.AGENTS, name, namespace=namespace)
    if body is None:
        return None
    try:
        return Agent.model_validate(body)
    except pydantic.ValidationError as exc:
        raise webhooks.Denied(
            f'Agent "{name}" in namespace "{namespace}" is invalid ({exc.error_count()} errors): '
            f"see kubectl describe agent {name} -n {namespace}"
        ) from exc
