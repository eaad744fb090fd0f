"""Just-in-time access requests over HTTP: ``POST /v1/access-requests``, ``GET .../{name}``.

Who is the requester. The agent authenticates here with its agent token; the token service then
creates the ``AccessRequest`` with its *own* Kubernetes identity (agents get no RBAC on
AccessRequests). So two facts are recorded, neither of which the agent or anyone else can forge:

- ``spec.agent`` (and the ownerReference to the Agent, so deleting the Agent deletes its
  requests): the agent of record, taken from the verified token, never from the request body.
  This is what the token exchange and the approval rules key on.
- ``spec.requester``: the Kubernetes user that made the API call (this service's
  ServiceAccount), stamped by the admission webhook from ``userInfo`` and immutable, so a request
  filed any other way (``kubectl create`` by a person) shows who really filed it.

Guarantees:
- A request is checked by :func:`agentauth.domain.approvals.resolve_request` before it is
  created: each capability held with approval Required, duration within ``maxDuration`` (omitted:
  the default, capped at that maximum), justification and context plain and bounded. Refusals are
  RFC 6749-style JSON: ``invalid_scope`` for capabilities, ``invalid_request`` otherwise, 429
  ``rate_limited`` beyond :data:`MAX_PENDING_PER_AGENT` undecided requests of one agent.
- An agent sees only its own requests: another agent's name is answered 404, like a missing one.
- ``GET ...?wait=S`` (S <= :data:`MAX_WAIT_SECONDS`) returns as soon as the request is decided:
  it waits on the watch-driven cache's change notification, not on a timer, so the answer leaves
  within milliseconds of the watch event. A restarted token service re-lists and answers the
  agent's next poll from the API server's state; nothing is kept in this process.
"""

from __future__ import annotations

import asyncio
import datetime
from typing import TYPE_CHECKING, Any

from aiohttp import web

from agentauth.domain import approvals, durations, errors
from agentauth.domain.models import AccessRequest, AccessRequestStatus, Agent, Decision
from agentauth.domain.models import accessrequests as request_models
from agentauth.domain.models import common as model_common
from agentauth.kube import client as kubeclient
from agentauth.tokenservice import bodies

if TYPE_CHECKING:
    from agentauth.tokenservice.app import ServiceContext

MAX_WAIT_SECONDS = 60.0
MAX_PENDING_PER_AGENT = 50
MAX_BODY_BYTES = 16 * 1024
AGENT_TOKEN_JTI_ANNOTATION = "agentauth.dev/agent-token-jti"


def add_routes(app: web.Application, *, context: ServiceContext) -> None:
    """Register the two access-request routes on the token service's application."""
    handlers = _Handlers(context)
    app.router.add_post("/v1/access-requests", handlers.create)
    app.router.add_get("/v1/access-requests/{name}", handlers.get)


def request_view(request: AccessRequest) -> dict[str, Any]:
    """The JSON an agent sees for one of its requests."""
    status = request.status or AccessRequestStatus()
    name = request.metadata.name or ""
    namespace = request.metadata.namespace or ""

    def decisions(items: list[Decision]) -> list[dict[str, Any]]:
        return [item.to_api() for item in items]

    view: dict[str, Any] = {
        "name": name,
        "namespace": namespace,
        "agent": request.spec.agent,
        "capabilities": list(request.spec.capabilities),
        "duration": request.spec.duration,
        "justification": request.spec.justification,
        "context": dict(request.spec.context),
        "phase": status.phase or "Pending",
        "approvals": decisions(status.approvals),
        "denials": decisions(status.denials),
        "approveCommand": approvals.approve_command(name=name, namespace=namespace),
    }
    if status.expires_at is not None:
        view["expiresAt"] = _rfc3339(status.expires_at)
    if status.granted_until is not None:
        view["grantedUntil"] = _rfc3339(status.granted_until)
    return view


def _rfc3339(moment: datetime.datetime) -> str:
    aware = moment if moment.tzinfo is not None else moment.replace(tzinfo=datetime.UTC)
    return aware.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _undecided(request: AccessRequest, *, now: datetime.datetime) -> bool:
    """Pending (or not yet seen by the controller) and not past its deadline."""
    status = request.status
    if status is None or status.phase is None:
        return True
    if status.phase != "Pending":
        return False
    deadline = approvals.next_deadline(status)
    return deadline is None or deadline > now


def _refusal(error: approvals.ApprovalError) -> errors.OAuthError:
    if isinstance(error, approvals.CapabilityNotRequestable):
        return errors.InvalidScope(error.message)
    return errors.InvalidRequest(error.message)


class _Handlers:
    def __init__(self, context: ServiceContext) -> None:
        self.context = context

    async def _json_body(self, request: web.Request) -> dict[str, Any]:
        if request.content_length is not None and request.content_length > MAX_BODY_BYTES:
            raise errors.InvalidRequest(f"the request body exceeds {MAX_BODY_BYTES} bytes")
        body = await bodies.json_value(
            request, timeout=self.context.settings.body_timeout, max_bytes=MAX_BODY_BYTES
        )
        if not isinstance(body, dict):
            raise errors.InvalidRequest("the request body must be a JSON object")
        return body

    async def create(self, request: web.Request) -> web.Response:
        caller = await self.context.authenticate(request)
        body = await self._json_body(request)
        agent = caller.agent
        namespace = agent.metadata.namespace or ""
        now = self.context.now()
        snapshot = self.context.state.snapshot()
        document = self._document(body, agent=agent, jti=caller.claims.claims.get("jti"), now=now)
        pending = [r for r in snapshot.access_requests_of(agent) if _undecided(r, now=now)]
        if len(pending) >= MAX_PENDING_PER_AGENT:
            raise errors.RateLimited(
                f"agent {namespace}/{agent.metadata.name} already has {len(pending)} undecided "
                "access requests; wait for a decision before filing more",
                retry_after=30,
            )
        kube = self.context.kube
        if kube is None:
            raise errors.TemporarilyUnavailable("no Kubernetes API to file the request with")
        try:
            created = await kube.create(kubeclient.ACCESS_REQUESTS, document, namespace=namespace)
        except kubeclient.ApiError as exc:
            if exc.code in (400, 403, 409, 422):
                # Our admission webhook's refusal (or the API's validation): say it to the agent.
                message = exc.message.split("denied the request: ", 1)[-1]
                raise errors.InvalidRequest(message) from None
            raise errors.TemporarilyUnavailable(
                f"cannot file the access request now: {exc.code} {exc.reason}"
            ) from None
        filed = AccessRequest.model_validate(created)
        view = request_view(filed)
        location = f"/v1/access-requests/{filed.metadata.name}"
        return web.json_response(
            view, status=201, headers={"Location": location, "Cache-Control": "no-store"}
        )

    def _document(
        self, body: dict[str, Any], *, agent: Agent, jti: Any, now: datetime.datetime
    ) -> dict[str, Any]:
        """Validate the body against the agent's grants; the AccessRequest to create."""
        capabilities = body.get("capabilities")
        if isinstance(capabilities, str):
            capabilities = capabilities.split()
        if not isinstance(capabilities, list) or not all(isinstance(c, str) for c in capabilities):
            raise errors.InvalidRequest('"capabilities" must be a list of capability names')
        justification = body.get("justification")
        if not isinstance(justification, str):
            raise errors.InvalidRequest(
                '"justification" is required: say why the agent needs this access'
            )
        context = body.get("context") or {}
        if not isinstance(context, dict):
            raise errors.InvalidRequest('"context" must be an object of strings')
        duration_text = body.get("duration")
        if duration_text is not None and not isinstance(duration_text, str):
            raise errors.InvalidRequest('"duration" must be a string such as "15m"')
        namespace = agent.metadata.namespace or ""
        grants = [
            g for g in self.context.state.snapshot().grants if g.metadata.namespace == namespace
        ]
        try:
            justification = approvals.validate_justification(justification)
            context = approvals.validate_context(context)
            duration = approvals.parse_request_duration(
                duration_text or request_models.DEFAULT_DURATION
            )
            resolved = approvals.resolve_request(
                agent=agent,
                requested=capabilities,
                duration=duration if duration_text else datetime.timedelta(0),
                all_grants=grants,
                now=now,
            )
            if not duration_text:
                # No duration asked: the default, but never more than the grants allow.
                duration = min(duration, resolved.max_duration)
        except approvals.ApprovalError as error:
            raise _refusal(error) from None
        name = agent.metadata.name or ""
        metadata: dict[str, Any] = {
            "generateName": f"{name}-",
            "namespace": namespace,
            "labels": {model_common.AGENT_LABEL: name},
            "ownerReferences": [
                {
                    "apiVersion": model_common.API_VERSION,
                    "kind": "Agent",
                    "name": name,
                    "uid": agent.metadata.uid,
                }
            ],
        }
        if isinstance(jti, str):
            metadata["annotations"] = {AGENT_TOKEN_JTI_ANNOTATION: jti}
        return {
            "apiVersion": model_common.API_VERSION,
            "kind": "AccessRequest",
            "metadata": metadata,
            "spec": {
                "agent": name,
                # The Agent object whose token files this; the webhook refuses it if that Agent
                # was replaced meanwhile (approvals never pass to a successor of the same name).
                "agentUID": agent.metadata.uid,
                "capabilities": list(resolved.capabilities),
                "justification": justification,
                "duration": durations.format_duration(duration),
                "context": context,
            },
        }

    async def get(self, request: web.Request) -> web.Response:
        caller = await self.context.authenticate(request)
        name = request.match_info["name"]
        wait = _wait_seconds(request.query.get("wait"))
        state = self.context.state
        agent = caller.agent
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait

        def find() -> AccessRequest | None:
            for item in state.snapshot().access_requests_of(agent):
                if item.metadata.name == name:
                    return item
            return None

        # Check and wait under the condition's lock: a watch event cannot slip in between the
        # check and the wait, so the answer leaves as soon as the decision reaches the cache.
        async with state.changed:
            while True:
                found = find()
                phase = found.status.phase if found is not None and found.status else None
                if found is not None and phase not in (None, "Pending"):
                    break
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                try:
                    await asyncio.wait_for(state.changed.wait(), timeout=remaining)
                except TimeoutError:
                    continue
        if found is None:
            raise errors.NotFound(
                f"access request {name!r} not found for agent "
                f"{agent.metadata.namespace}/{agent.metadata.name}"
            )
        return web.json_response(request_view(found), headers={"Cache-Control": "no-store"})


def _wait_seconds(text: str | None) -> float:
    if text is None or text == "":
        return 0.0
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 <= value <= MAX_WAIT_SECONDS:
        raise errors.InvalidRequest(
            f"wait must be a number of seconds between 0 and {MAX_WAIT_SECONDS:g}"
        )
    return value
