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
- Filing is idempotent and the pending cap holds with any number of replicas: both rest on the
  API server's create-if-absent (:mod:`agentauth.domain.filing`). A retry with the same
  ``Idempotency-Key`` returns the request the first attempt filed (201 again, with
  ``Idempotent-Replayed: true``), whichever replica served either; the same key with a different
  body is refused (422); no request is created without taking one of the agent's
  :data:`MAX_PENDING_PER_AGENT` slot Leases.
- Filing has a deadline (``settings.api_timeout`` for all its API calls together): a slow or
  absent API server gets the agent a 503 ``temporarily_unavailable`` with ``Retry-After``, never
  a hang or a 500; a retry with the same key cannot file twice, even if the first write lands
  late.
- An agent sees only its own requests: another agent's name is answered 404, like a missing one.
- ``GET ...?wait=S`` (S <= :data:`MAX_WAIT_SECONDS`) returns as soon as the request is decided:
  it waits for the watch event of that very request (``state.on_access_request``), not on a
  timer, so the answer leaves within milliseconds of the watch event. A wait is a future on the
  event loop, never a thread, and only the waits of the request that changed are woken, so a
  replica holds thousands of open waits and a decision costs the same with one or thousands.
  When the service shuts down, every open long-poll is answered at once with the current state
  and ``Connection: close``, so the client's next poll reaches a replica that is still serving.
  A restarted token service re-lists and answers the agent's next poll from the API server's
  state; nothing is kept in this process.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import random
import secrets
from typing import TYPE_CHECKING, Any

from aiohttp import web

from agentauth.domain import approvals, durations, errors, filing
from agentauth.domain.models import AccessRequest, AccessRequestStatus, Agent, Decision
from agentauth.domain.models import accessrequests as request_models
from agentauth.domain.models import common as model_common
from agentauth.kube import client as kubeclient
from agentauth.tokenservice import bodies

if TYPE_CHECKING:
    from agentauth.tokenservice.app import ServiceContext

log = logging.getLogger(__name__)

MAX_WAIT_SECONDS = 60.0
MAX_PENDING_PER_AGENT = 50
MAX_BODY_BYTES = 16 * 1024
AGENT_TOKEN_JTI_ANNOTATION = "agentauth.dev/agent-token-jti"
REQUEST_DIGEST_ANNOTATION = "agentauth.dev/request-digest"
REPLAYED_HEADER = "Idempotent-Replayed"
SLOT_TRIES_PER_ROUND = 3


def add_routes(app: web.Application, *, context: ServiceContext) -> None:
    """Register the two access-request routes on the token service's application."""
    handlers = _Handlers(context)
    app.router.add_post("/v1/access-requests", handlers.create)
    app.router.add_get("/v1/access-requests/{name}", handlers.get)
    # aiohttp runs on_shutdown once the listener is closed: answer the open long-polls then.
    app.on_shutdown.append(handlers.shutdown)


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


def _body_digest(body: dict[str, Any]) -> str:
    """The digest of a body ``_document`` accepted (so its fields have their types)."""
    capabilities = body["capabilities"]
    return filing.request_digest(
        capabilities=capabilities.split() if isinstance(capabilities, str) else capabilities,
        justification=body["justification"],
        duration=body.get("duration"),
        context=body.get("context") or {},
    )


def _too_many(agent: Agent, count: int) -> errors.RateLimited:
    return errors.RateLimited(
        f"agent {agent.metadata.namespace}/{agent.metadata.name} already has {count} undecided "
        "access requests; wait for a decision before filing more",
        retry_after=30,
    )


def _refusal(error: approvals.ApprovalError) -> errors.OAuthError:
    if isinstance(error, approvals.CapabilityNotRequestable):
        return errors.InvalidScope(error.message)
    return errors.InvalidRequest(error.message)


class _Handlers:
    def __init__(self, context: ServiceContext) -> None:
        self.context = context
        self.stopping = False
        # One slot-taking at a time per agent in this replica: concurrent filings of one agent
        # would only lose races to each other (each loss costs API calls). Across replicas the
        # API server's create-if-absent decides; this lock is an optimisation, not the guarantee.
        self._slot_locks: dict[str, tuple[asyncio.Lock, int]] = {}
        # Open long-polls by the (namespace, name) of their request.
        self._waiters: dict[tuple[str, str], set[asyncio.Future[None]]] = {}
        context.state.on_access_request(self._request_changed)

    def _request_changed(self, key: tuple[str, str] | None) -> None:
        """Wake the long-polls of the request at ``key`` (every one for ``None``)."""
        for waiting in [key] if key is not None else list(self._waiters):
            for waiter in self._waiters.pop(waiting, ()) if waiting is not None else ():
                if not waiter.done():
                    waiter.set_result(None)

    async def shutdown(self, _app: web.Application) -> None:
        """Wake every open long-poll: each answers with its current state."""
        self.stopping = True
        self._request_changed(None)
        async with self.context.state.changed:
            self.context.state.changed.notify_all()

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
        try:
            key = filing.parse_idempotency_key(request.headers.get(filing.IDEMPOTENCY_KEY_HEADER))
        except filing.InvalidIdempotencyKey as exc:
            raise errors.InvalidRequest(str(exc)) from None
        agent = caller.agent
        namespace = agent.metadata.namespace or ""
        now = self.context.now()
        document = self._document(body, agent=agent, jti=caller.claims.claims.get("jti"), now=now)
        digest = _body_digest(body)
        name = filing.request_name(
            namespace=namespace,
            agent_name=agent.metadata.name or "",
            agent_uid=agent.metadata.uid or "",
            key=key if key is not None else secrets.token_urlsafe(24),
        )
        document["metadata"]["name"] = name
        document["metadata"].setdefault("annotations", {})[REQUEST_DIGEST_ANNOTATION] = digest
        kube = self.context.kube
        if kube is None:
            raise errors.TemporarilyUnavailable("no Kubernetes API to file the request with")
        deadline = self.context.settings.api_timeout
        try:
            async with asyncio.timeout(deadline):
                filed, replayed = await self._file(
                    kube, agent=agent, document=document, digest=digest, retry=key is not None
                )
        except (TimeoutError, kubeclient.ApiUnavailable) as exc:
            if isinstance(exc, TimeoutError) or exc.failure == "timeout":
                what = f"gave no answer within {deadline:g}s"
            elif exc.failure == "unreachable":
                what = "cannot be reached"
            else:
                what = f"answered {exc.code} {exc.reason}"
            raise errors.TemporarilyUnavailable(
                f"cannot file the access request now: the Kubernetes API {what}; retry with "
                f"the same {filing.IDEMPOTENCY_KEY_HEADER} (a retry never files twice)"
            ) from None
        view = request_view(filed)
        headers = {"Location": f"/v1/access-requests/{name}", "Cache-Control": "no-store"}
        if replayed:
            headers[REPLAYED_HEADER] = "true"
        return web.json_response(view, status=201, headers=headers)

    async def _file(
        self,
        kube: kubeclient.KubeClient,
        *,
        agent: Agent,
        document: dict[str, Any],
        digest: str,
        retry: bool,
    ) -> tuple[AccessRequest, bool]:
        """Create ``document`` unless it exists (then it is the answer); (request, replayed)."""
        namespace = agent.metadata.namespace or ""
        name = document["metadata"]["name"]
        if retry:
            existing = await self._lookup(kube, agent=agent, name=name)
            if existing is not None:
                return self._replayed(existing, agent=agent, digest=digest), True
        now = self.context.now()
        pending = [
            r
            for r in self.context.state.snapshot().access_requests_of(agent)
            if _undecided(r, now=now)
        ]
        if len(pending) >= MAX_PENDING_PER_AGENT:
            raise _too_many(agent, len(pending))
        key = agent.metadata.uid or f"{namespace}/{agent.metadata.name}"
        lock, users = self._slot_locks.get(key, (asyncio.Lock(), 0))
        self._slot_locks[key] = (lock, users + 1)
        try:
            async with lock:
                slot = await self._take_slot(kube, agent=agent, holder=name)
        finally:
            lock, users = self._slot_locks[key]
            if users == 1:
                del self._slot_locks[key]  # no one else uses it: no growth per agent
            else:
                self._slot_locks[key] = (lock, users - 1)
        try:
            created = await kube.create(kubeclient.ACCESS_REQUESTS, document, namespace=namespace)
        except kubeclient.Conflict:
            # The same key filed meanwhile (another replica, or the attempt this one retries).
            await self._release_slot(kube, agent=agent, slot=slot)
            existing = await self._lookup(kube, agent=agent, name=name)
            if existing is None:
                raise errors.TemporarilyUnavailable(
                    f"access request {name} is being replaced; retry"
                ) from None
            return self._replayed(existing, agent=agent, digest=digest), True
        except kubeclient.ApiUnavailable:
            raise  # it may have been created: the slot stays taken until that is known
        except kubeclient.ApiError as exc:
            await self._release_slot(kube, agent=agent, slot=slot)
            if exc.code in (400, 403, 422):
                # Our admission webhook's refusal (or the API's validation): say it to the agent.
                message = exc.message.split("denied the request: ", 1)[-1]
                raise errors.InvalidRequest(message) from None
            raise errors.TemporarilyUnavailable(
                f"cannot file the access request now: {exc.code} {exc.reason}"
            ) from None
        return AccessRequest.model_validate(created), False

    async def _lookup(
        self, kube: kubeclient.KubeClient, *, agent: Agent, name: str
    ) -> AccessRequest | None:
        """The request ``name`` from the cache, else from the API server (None if absent)."""
        for item in self.context.state.snapshot().access_requests_of(agent):
            if item.metadata.name == name:
                return item
        try:
            found = await kube.get(
                kubeclient.ACCESS_REQUESTS, name, namespace=agent.metadata.namespace or ""
            )
        except kubeclient.NotFound:
            return None
        return AccessRequest.model_validate(found)

    @staticmethod
    def _replayed(existing: AccessRequest, *, agent: Agent, digest: str) -> AccessRequest:
        """``existing`` if it is this agent's request with this body; 422 otherwise."""
        annotations = existing.metadata.annotations
        owners = (existing.metadata.model_extra or {}).get("ownerReferences") or []
        owned = any(
            isinstance(o, dict) and o.get("kind") == "Agent" and o.get("uid") == agent.metadata.uid
            for o in owners
        )
        if (
            existing.spec.agent != agent.metadata.name
            or not owned
            or annotations.get(REQUEST_DIGEST_ANNOTATION) != digest
        ):
            raise errors.OAuthError(
                "invalid_request",
                f"this {filing.IDEMPOTENCY_KEY_HEADER} was already used for a different request; "
                "use a new key for a new request",
                422,
            )
        return existing

    async def _holder_state(
        self,
        kube: kubeclient.KubeClient,
        *,
        agent: Agent,
        slot: filing.Slot,
        now: datetime.datetime,
    ) -> filing.HolderState:
        for item in self.context.state.snapshot().access_requests_of(agent):
            if item.metadata.name == slot.holder:
                return "undecided" if _undecided(item, now=now) else "decided"
        if not slot.holder or not filing.slot_needs_lookup(slot, now=now):
            return "unknown"
        try:
            found = await kube.get(
                kubeclient.ACCESS_REQUESTS, slot.holder, namespace=agent.metadata.namespace or ""
            )
        except kubeclient.NotFound:
            return "absent"
        request = AccessRequest.model_validate(found)
        return "undecided" if _undecided(request, now=now) else "decided"

    async def _take_slot(
        self, kube: kubeclient.KubeClient, *, agent: Agent, holder: str
    ) -> filing.Slot:
        """One of the agent's pending slots, now held by ``holder``; 429 when none is free.

        Reads the slots, tries a few that look free (in random order, so concurrent filings
        mostly try different ones), and reads them again after losing those races: each round
        costs a list and a few writes, and a full set of held slots is a 429 at once.
        """
        namespace = agent.metadata.namespace or ""
        agent_name, agent_uid = agent.metadata.name or "", agent.metadata.uid or ""
        while True:  # bounded by the filing's deadline; each round sees more slots taken
            listing = await kube.list(
                kubeclient.LEASES,
                namespace=namespace,
                label_selector=f"{filing.SLOT_LABEL}={agent_uid}",
            )
            slots = {
                slot.name: slot
                for slot in (filing.Slot.from_api(item) for item in listing.get("items") or [])
            }
            now = self.context.now()
            candidates: list[tuple[str, filing.Slot | None]] = []
            for index in range(MAX_PENDING_PER_AGENT):
                name = filing.slot_name(agent_name=agent_name, agent_uid=agent_uid, index=index)
                current = slots.get(name)
                if current is not None:
                    state = await self._holder_state(kube, agent=agent, slot=current, now=now)
                    if not filing.slot_is_free(current, holder=state, now=now):
                        continue
                candidates.append((name, current))
            if not candidates:
                raise _too_many(agent, MAX_PENDING_PER_AGENT)
            random.shuffle(candidates)
            for name, current in candidates[:SLOT_TRIES_PER_ROUND]:
                lease = filing.slot_lease(
                    name=name,
                    namespace=namespace,
                    agent_name=agent_name,
                    agent_uid=agent_uid,
                    holder=holder,
                    now=now,
                    api_version=model_common.API_VERSION,
                    resource_version=current.resource_version if current is not None else None,
                )
                try:
                    if current is None:
                        written = await kube.create(kubeclient.LEASES, lease, namespace=namespace)
                    else:
                        written = await kube.replace(kubeclient.LEASES, lease, namespace=namespace)
                except (kubeclient.Conflict, kubeclient.NotFound):
                    continue  # another filing took it first (or it was just deleted)
                return filing.Slot.from_api(written)

    async def _release_slot(
        self, kube: kubeclient.KubeClient, *, agent: Agent, slot: filing.Slot
    ) -> None:
        """Free a slot whose request was not created (best effort: else it frees itself once
        the missing holder is noticed). A compare-and-swap: a slot taken over meanwhile stays."""
        namespace = agent.metadata.namespace or ""
        lease = filing.slot_lease(
            name=slot.name,
            namespace=namespace,
            agent_name=agent.metadata.name or "",
            agent_uid=agent.metadata.uid or "",
            holder="",
            now=self.context.now(),
            api_version=model_common.API_VERSION,
            resource_version=slot.resource_version,
        )
        try:
            await kube.replace(kubeclient.LEASES, lease, namespace=namespace)
        except kubeclient.ApiError as exc:
            log.info("could not free pending slot %s/%s: %s", namespace, slot.name, exc)

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
        grants = list(self.context.state.snapshot().grants_in(namespace))
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

        key = (agent.metadata.namespace or "", name)
        while True:
            found = find()
            phase = found.status.phase if found is not None and found.status else None
            if found is not None and phase not in (None, "Pending"):
                break
            remaining = deadline - loop.time()
            if remaining <= 0 or self.stopping:
                break
            # Registered between the check and the wait with nothing awaited in between: the
            # watch event cannot slip past (it runs on this loop), so the answer leaves as soon
            # as the decision reaches the cache.
            waiter: asyncio.Future[None] = loop.create_future()
            self._waiters.setdefault(key, set()).add(waiter)
            self.context.metrics.long_polls.inc()
            try:
                await asyncio.wait_for(waiter, timeout=remaining)
            except TimeoutError:
                continue
            finally:
                self.context.metrics.long_polls.dec()
                waiting = self._waiters.get(key)
                if waiting is not None:
                    waiting.discard(waiter)
                    if not waiting:
                        del self._waiters[key]
        if found is None:
            raise errors.NotFound(
                f"access request {name!r} not found for agent "
                f"{agent.metadata.namespace}/{agent.metadata.name}"
            )
        response = web.json_response(request_view(found), headers={"Cache-Control": "no-store"})
        if self.stopping:
            response.force_close()  # the next poll opens a new connection, to a serving replica
        return response


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
