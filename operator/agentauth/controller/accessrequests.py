"""AccessRequest lifecycle: reconcile, timers, Events and the admission webhooks.

All rules live in :mod:`agentauth.domain.approvals`; these handlers only read, call and write.

Reconcile (level-based, restart-safe):
- Every change of an AccessRequest seen by the controller's list+watch mirror of them
  (:class:`informers.Informer`, whose first listing after a restart delivers every request),
  every change of a grant in its namespace and every creation, deletion or relabelling of its
  Agent, queues the request; its reconcile computes the status with :func:`approvals.evaluate`
  from the stored request, the live grants and the clock, and patches only ``phase``,
  ``expiresAt``, ``grantedUntil``, ``conditions`` and ``observedGeneration``. It never writes
  ``approvals``/``denials``: those are appended by approvers and only by them.
- The request is re-queued at its next deadline (``expiresAt`` while Pending, ``grantedUntil``
  while Approved), so expiry and the end of the grant window happen on time without polling.
- Events (on the AccessRequest and on its Agent) are derived from the stored status by
  :func:`approvals.planned_events` and posted under stable names ``<request>.<uid8>.<key>``: a
  second post after a restart is answered 409 AlreadyExists and nothing is duplicated.

Admission (``/mutate/accessrequests``, ``/validate/accessrequests``; the chart registers both for
``accessrequests`` and ``accessrequests/status``, CREATE and UPDATE):
- CREATE: ``spec.requester`` is stamped from ``userInfo`` (whatever the client sent is replaced)
  and validated to match; ``spec.agentUID`` is stamped from the live Agent unless the client
  named one, and must be the live Agent's UID (a request belongs to one Agent object, never to a
  successor of the same name); the request is checked like the token service checks it (each
  capability held with approval Required, duration within ``maxDuration``, justification and
  context plain and bounded).
- UPDATE of the main resource: the whole ``spec`` is immutable (``spec.requester`` with its own
  message), so nobody edits what was asked after approvers have seen it.
- UPDATE of ``status``: the one approval or denial a write adds gets ``user``/``groups``/``time``
  from ``userInfo`` and ``grants`` (name, UID, approver-policy fingerprint of each grant it is made
  under) from the live cluster (mutating) and is then verified (validating): author = caller, the
  stamped grants are the grants as they are now, request still
  Pending and not past ``expiresAt``, caller not the agent's service account nor the requester,
  caller listed in each involved grant's approvers or allowed verb ``approve`` on it by a
  SubjectAccessReview. Recorded decisions cannot be edited or removed, and the phase can only
  move as :func:`approvals.check_status_update` allows, whoever writes (controller included).
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import weakref
from collections.abc import Hashable, Mapping
from typing import Any

import pydantic

from agentauth.controller import agents as agent_handlers
from agentauth.controller import informers, notifications, runtime, webhooks
from agentauth.domain import approvals
from agentauth.domain import capabilities as domain_capabilities
from agentauth.domain.models import AccessRequest, AccessRequestStatus, Agent, CapabilityGrant
from agentauth.kube import client as kube

logger = logging.getLogger("agentauth.controller.accessrequests")

GROUP, VERSION = agent_handlers.GROUP, agent_handlers.VERSION
KIND = "accessrequest"
ACCESS_REQUESTS = "accessrequests"
"""The name of the AccessRequests' informer (``ctl.informer``)."""
SUBJECT_ACCESS_REVIEWS = kube.Resource(
    "authorization.k8s.io", "v1", "subjectaccessreviews", namespaced=False
)
# The status fields the controller owns; approvals and denials are never in its patches.
CONTROLLER_FIELDS = ("phase", "expiresAt", "grantedUntil", "conditions", "observedGeneration")

# Event keys already posted by this controller run, per request uid: saves a 409 round trip per
# reconcile. Lost on restart by design; the stable Event names make re-posting harmless.
_posted: weakref.WeakKeyDictionary[runtime.Controller, dict[str, set[str]]] = (
    weakref.WeakKeyDictionary()
)


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


# --- the mirror and its triggers ----------------------------------------------------------


OPEN_BY_NAMESPACE = "open-by-namespace"


def open_namespace(body: informers.Body) -> list[Hashable]:
    """The namespace of a request a grant change can decide (Pending: approvers, quorum) or end
    (Approved: its approvals withdrawn); Denied and Expired are final."""
    phase = (body.get("status") or {}).get("phase")
    return [agent_handlers.namespace_of(body)] if phase in (None, "Pending", "Approved") else []


OPEN_BY_AGENT = "open-by-agent"


def open_agent(body: informers.Body) -> list[Hashable]:
    """(namespace, agent name) of an open request: its Agent deleted, re-created or relabelled
    can withdraw it or close it."""
    if not open_namespace(body):
        return []
    agent = (body.get("spec") or {}).get("agent")
    return [(agent_handlers.namespace_of(body), str(agent))] if agent else []


def access_request_changed(
    ctl: runtime.Controller, event_type: str, old: dict[str, Any] | None, new: dict[str, Any] | None
) -> None:
    """Every change of an AccessRequest (and every request of a relist) queues its reconcile."""
    if new is None:
        if old is not None:
            uid = str((old.get("metadata") or {}).get("uid", ""))
            _posted.get(ctl, {}).pop(uid, None)
            ctl.forget_parsed(AccessRequest, old)
        return
    namespace, name = informers.object_key(new)
    ctl.queue.add((KIND, namespace, name))


def grant_changed_for_requests(
    ctl: runtime.Controller, event_type: str, old: dict[str, Any] | None, new: dict[str, Any] | None
) -> None:
    """A grant changed: its approvers, minApprovals or capabilities may decide pending requests
    or withdraw approved ones.

    A listener of the grants' informer (``register``); the echo of the controller's own status
    write of the grant changes nothing a request depends on."""
    body = new if new is not None else old
    if body is None or (new is not None and ctl.is_own_write("CapabilityGrant", new)):
        return
    namespace = agent_handlers.namespace_of(body)
    for request in ctl.informer(ACCESS_REQUESTS).by(OPEN_BY_NAMESPACE, namespace):
        ctl.queue.add((KIND, namespace, informers.object_key(request)[1]))


def agent_changed_for_requests(
    ctl: runtime.Controller, event_type: str, old: dict[str, Any] | None, new: dict[str, Any] | None
) -> None:
    """An Agent was created, deleted or relabelled: its open requests may be withdrawn (an
    approval holds only for the Agent object it was given for, under the grants selecting it).
    A listener of the Agents' informer: its events and the requests' own arrive on separate
    watches, in either order, so a request is reconciled again once its Agent's change is in."""
    if old is not None and new is not None:
        before, after = old.get("metadata") or {}, new.get("metadata") or {}
        if before.get("uid") == after.get("uid") and before.get("labels") == after.get("labels"):
            return  # a status write or a spec change: nothing an approval depends on
    body = new if new is not None else old
    if body is None:
        return
    namespace, name = informers.object_key(body)
    for request in ctl.informer(ACCESS_REQUESTS).by(OPEN_BY_AGENT, (namespace, name)):
        ctl.queue.add((KIND, namespace, informers.object_key(request)[1]))


# --- reconcile -------------------------------------------------------------------------------


def _resolved(
    ctl: runtime.Controller, request: AccessRequest, *, now: datetime.datetime
) -> approvals.ResolvedRequest | None:
    namespace = request.metadata.namespace or ""
    agent_body = agent_handlers.agent_body(ctl, namespace, request.spec.agent)
    agent = ctl.parse(Agent, agent_body) if agent_body is not None else None
    try:
        return approvals.resolve_existing(
            request=request,
            agent=agent if isinstance(agent, Agent) else None,
            all_grants=agent_handlers.valid_grants(ctl, namespace),
            now=now,
        )
    except approvals.RequestClosed:
        return None


async def reconcile(ctl: runtime.Controller, namespace: str, name: str) -> None:
    """Recompute one request's status, write it if changed, post its Events, set its timer."""
    body = ctl.informer(ACCESS_REQUESTS).get(namespace, name)
    if body is None:
        return
    parsed = ctl.parse(AccessRequest, body)
    if not isinstance(parsed, AccessRequest):
        logger.warning("AccessRequest %s/%s does not parse: %s", namespace, name, parsed)
        return
    stored = ctl.stored_status("AccessRequest", body)
    request = parsed
    if stored is not None:
        try:
            request = parsed.model_copy(
                update={"status": AccessRequestStatus.model_validate(stored)}
            )
        except pydantic.ValidationError:
            request = parsed
    now = _now()
    new = approvals.evaluate(
        request,
        resolved=_resolved(ctl, request, now=now),
        pending_timeout=ctl.settings.access_request_expiry,
        now=now,
    )
    old_api = _owned(request.status.to_api() if request.status else {})
    new_api = _owned(new.to_api())
    if old_api != new_api:
        patch = {"status": {key: new_api.get(key) for key in CONTROLLER_FIELDS}}
        try:
            await ctl.api.patch(
                kube.ACCESS_REQUESTS, name, patch, namespace=namespace, subresource="status"
            )
        except kube.ApiError as exc:
            if exc.code == 404:
                return
            raise
    decided = request.model_copy(update={"status": new})
    await post_events(ctl, decided, request_body=body, now=now)
    notifications.notifier(ctl).schedule(
        decided,
        request_body=body,
        agent_id=domain_capabilities.agent_id(
            name=request.spec.agent, namespace=namespace, trust_domain=ctl.settings.trust_domain
        ),
        now=now,
    )
    deadline = approvals.next_deadline(new)
    if deadline is not None:
        ctl.wake_at((KIND, namespace, name), deadline)


def _owned(status: Mapping[str, Any]) -> dict[str, Any]:
    return {key: status[key] for key in CONTROLLER_FIELDS if status.get(key) is not None}


async def post_events(
    ctl: runtime.Controller,
    request: AccessRequest,
    *,
    request_body: Mapping[str, Any],
    now: datetime.datetime,
) -> None:
    """Post the Events the request's status implies, each at most once (stable names)."""
    meta = request_body.get("metadata") or {}
    uid = str(meta.get("uid", ""))
    namespace = request.metadata.namespace or ""
    posted = _posted.setdefault(ctl, {}).setdefault(uid, set())
    agent_body = agent_handlers.agent_body(ctl, namespace, request.spec.agent)
    if (
        agent_body is not None
        and (agent_body.get("metadata") or {}).get("uid") != request.spec.agent_uid
    ):
        agent_body = None  # a successor of the same name: the request is not about it
    for event in approvals.planned_events(request, now=now):
        if event.key in posted:
            continue
        target = request_body if event.on == "AccessRequest" else agent_body
        if target is None:
            continue
        target_meta = target.get("metadata") or {}
        time = event.time.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        document = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {
                "name": f"{meta.get('name')}.{uid[:8]}.{event.key}",
                "namespace": namespace,
            },
            "involvedObject": {
                "apiVersion": str(target.get("apiVersion", f"{GROUP}/{VERSION}")),
                "kind": event.on,
                "name": target_meta.get("name"),
                "namespace": namespace,
                "uid": target_meta.get("uid"),
            },
            "type": event.type,
            "reason": event.reason,
            "message": event.message[:1024],
            "source": {"component": runtime.COMPONENT},
            "reportingComponent": runtime.COMPONENT,
            "reportingInstance": runtime.COMPONENT,
            "firstTimestamp": time,
            "lastTimestamp": time,
            "count": 1,
        }
        try:
            await ctl.api.create(kube.EVENTS, document, namespace=namespace)
        except kube.ApiError as exc:
            if exc.code != 409:  # 409: posted before a restart; that is the point of the name
                logger.warning("cannot post Event %s on %s: %s", event.reason, event.on, exc)
                continue
        posted.add(event.key)


def register(ctl: runtime.Controller) -> None:
    ctl.reconcilers[KIND] = reconcile
    requests = informers.Informer(
        ctl.api,
        kube.ACCESS_REQUESTS,
        namespaces=ctl.settings.watch_namespaces,
        indexers={OPEN_BY_NAMESPACE: open_namespace, OPEN_BY_AGENT: open_agent},
    )
    requests.listen(lambda event_type, old, new: access_request_changed(ctl, event_type, old, new))
    ctl.informers[ACCESS_REQUESTS] = requests
    ctl.informer(agent_handlers.AGENTS).listen(
        lambda event_type, old, new: agent_changed_for_requests(ctl, event_type, old, new)
    )
    ctl.informer(agent_handlers.GRANTS).listen(
        lambda event_type, old, new: grant_changed_for_requests(ctl, event_type, old, new)
    )


# --- admission -------------------------------------------------------------------------------


def _parse_request(body: Mapping[str, Any] | None, *, what: str) -> AccessRequest:
    try:
        return AccessRequest.model_validate(dict(body or {}))
    except pydantic.ValidationError as exc:
        first = exc.errors()[0]
        location = ".".join(str(part) for part in first["loc"])
        raise webhooks.Denied(
            f"{what} is not a valid AccessRequest: {location}: {first['msg']}",
            code=422,
            reason="Invalid",
        ) from exc


def _denied(error: approvals.ApprovalError) -> webhooks.Denied:
    reason = {400: "BadRequest", 403: "Forbidden", 409: "Conflict"}.get(error.status, "Invalid")
    return webhooks.Denied(error.message, code=error.status, reason=reason)


async def _agent_and_grants(
    ctl: runtime.Controller, *, namespace: str, agent: str
) -> tuple[Agent | None, list[CapabilityGrant]]:
    """Read the Agent and the namespace's grants live (a just-changed grant counts at once)."""
    # Both reads at once: each is a round trip the caller's write waits on.
    read_agent, listed = await asyncio.gather(
        ctl.api.get_or_none(kube.AGENTS, agent, namespace=namespace),
        ctl.api.list(kube.CAPABILITY_GRANTS, namespace=namespace),
    )
    # Parsed through the controller's cache (one entry per object and resourceVersion, which
    # the API server assigns: the same version is the same content): every filing and decision
    # reads all the namespace's grants, and validating each again cost ~0.1 ms per grant per
    # call, twice per filing (both webhooks), the whole of the dev stack's filing rate at 100
    # grants in a namespace.
    found = ctl.parse(Agent, read_agent) if read_agent is not None else None
    grants: list[CapabilityGrant] = []
    for item in listed.get("items", []):
        item.setdefault("metadata", {}).setdefault("namespace", namespace)
        parsed = ctl.parse(CapabilityGrant, item)
        if isinstance(parsed, CapabilityGrant):  # an invalid grant gives nothing, as everywhere
            grants.append(parsed)
    return (found if isinstance(found, Agent) else None), grants


async def _may_approve_by_rbac(
    ctl: runtime.Controller, *, decider: approvals.Identity, grant: approvals.InvolvedGrant
) -> bool:
    review = {
        "apiVersion": "authorization.k8s.io/v1",
        "kind": "SubjectAccessReview",
        "spec": {
            "user": decider.username,
            "groups": list(decider.groups),
            **({"uid": decider.uid} if decider.uid else {}),
            "resourceAttributes": {
                "namespace": grant.namespace,
                "verb": approvals.APPROVE_VERB,
                "group": GROUP,
                "resource": approvals.GRANTS_RESOURCE,
                "name": grant.name,
            },
        },
    }
    result = await ctl.api.create(SUBJECT_ACCESS_REVIEWS, review)
    return bool((result.get("status") or {}).get("allowed"))


async def _create_patch(
    ctl: runtime.Controller, request: dict[str, Any], decider: approvals.Identity
) -> list[dict[str, Any]]:
    """Stamp ``spec.requester`` (the caller) and, unless the client named one, ``spec.agentUID``
    (the Agent as it is now). A client-supplied ``agentUID`` is kept for the validating webhook to
    check against the live Agent: the token service names the Agent whose token files the
    request, so a request filed while that Agent is being replaced is refused, never moved to
    its successor."""
    obj = request.get("object") or {}
    spec = obj.get("spec") or {}
    namespace = str(request.get("namespace") or (obj.get("metadata") or {}).get("namespace") or "")
    patch = [
        {
            "op": "replace" if "requester" in spec else "add",
            "path": "/spec/requester",
            "value": decider.requester().to_api(),
        }
    ]
    agent_name = spec.get("agent")
    uid: str | None = None
    if isinstance(agent_name, str) and agent_name:
        try:
            agent = await ctl.api.get(kube.AGENTS, agent_name, namespace=namespace)
            uid = (agent.get("metadata") or {}).get("uid")
        except kube.ApiError as exc:
            if exc.code != 404:
                raise
    if uid and not spec.get("agentUID"):
        patch.append({"op": "add", "path": "/spec/agentUID", "value": str(uid)})
    return patch


@webhooks.admission("/mutate/accessrequests")
async def mutate_access_request(
    ctl: runtime.Controller, request: dict[str, Any]
) -> webhooks.Allowed:
    """Stamp ``spec.requester`` on CREATE and the author of an added decision on status UPDATE."""
    try:
        decider = approvals.Identity.from_user_info(request.get("userInfo") or {})
    except approvals.ApprovalError as error:
        raise _denied(error) from error
    operation, subresource = request.get("operation"), request.get("subResource") or ""
    if operation == "CREATE" and not subresource:
        return webhooks.Allowed(patch=await _create_patch(ctl, request, decider))
    if operation != "UPDATE" or subresource != "status":
        return webhooks.Allowed()
    old = _parse_request(request.get("oldObject"), what="the stored request")
    new = _parse_request(request.get("object"), what="the updated request")
    try:
        added = approvals.decision_added(old=old.status, new=new.status)
        if added is None:
            return webhooks.Allowed()
        namespace = old.metadata.namespace or str(request.get("namespace") or "")
        now = _now()
        agent, grants = await _agent_and_grants(ctl, namespace=namespace, agent=old.spec.agent)
        # The grants the decision is made under, as they are now: recorded in the decision so
        # that it counts only while they exist unchanged (re-checked by the validating webhook).
        resolved = approvals.resolve_existing(request=old, agent=agent, all_grants=grants, now=now)
        stamped = approvals.stamp_decision(added=added, decider=decider, resolved=resolved, now=now)
    except approvals.ApprovalError as error:
        raise _denied(error) from error
    field = "approvals" if added.kind == "Approve" else "denials"
    return webhooks.Allowed(
        patch=[
            {
                "op": "replace",
                "path": f"/status/{field}/{added.index}",
                "value": stamped.to_api(),
            }
        ]
    )


@webhooks.admission("/validate/accessrequests")
async def validate_access_request(
    ctl: runtime.Controller, request: dict[str, Any]
) -> webhooks.Allowed:
    """Enforce the lifecycle rules described in the module docstring."""
    try:
        decider = approvals.Identity.from_user_info(request.get("userInfo") or {})
        operation, subresource = request.get("operation"), request.get("subResource") or ""
        if operation == "CREATE" and not subresource:
            await _validate_create(ctl, request, decider)
        elif operation == "UPDATE" and not subresource:
            _validate_spec_unchanged(request)
        elif operation == "UPDATE" and subresource == "status":
            await _validate_status(ctl, request, decider)
    except approvals.ApprovalError as error:
        raise _denied(error) from error
    return webhooks.Allowed()


async def _validate_create(
    ctl: runtime.Controller, request: dict[str, Any], decider: approvals.Identity
) -> None:
    new = _parse_request(request.get("object"), what="the request")
    requester = new.spec.requester
    if requester is None or requester.username != decider.username:
        raise approvals.ForbiddenChange(
            "spec.requester is set by agentauth from the authenticated caller; "
            f"it must be {decider.username!r}"
        )
    if new.status is not None and (new.status.approvals or new.status.denials or new.status.phase):
        raise approvals.ForbiddenChange("a new AccessRequest cannot carry a status")
    namespace = str(request.get("namespace") or new.metadata.namespace or "")
    approvals.validate_justification(new.spec.justification)
    approvals.validate_context(new.spec.context)
    agent, grants = await _agent_and_grants(ctl, namespace=namespace, agent=new.spec.agent)
    if agent is None:
        raise approvals.InvalidAccessRequest(
            f"agent {new.spec.agent!r} does not exist in namespace {namespace!r}"
        )
    if not new.spec.agent_uid or new.spec.agent_uid != agent.metadata.uid:
        raise approvals.ForbiddenChange(
            "spec.agentUID names the Agent object the request is filed for; it must be "
            f"{agent.metadata.uid!r}, the UID of agent {new.spec.agent!r} now (the Agent was "
            "replaced while the request was filed: file it again)"
        )
    approvals.resolve_request(
        agent=agent,
        requested=new.spec.capabilities,
        duration=approvals.parse_request_duration(new.spec.duration),
        all_grants=grants,
        now=_now(),
    )


def _validate_spec_unchanged(request: dict[str, Any]) -> None:
    old_spec = (request.get("oldObject") or {}).get("spec") or {}
    new_spec = (request.get("object") or {}).get("spec") or {}
    if old_spec.get("requester") != new_spec.get("requester"):
        raise approvals.ForbiddenChange(
            "spec.requester is set by agentauth from the authenticated caller and cannot be changed"
        )
    changed = sorted(
        key for key in set(old_spec) | set(new_spec) if old_spec.get(key) != new_spec.get(key)
    )
    if changed:
        fields = ", ".join(f"spec.{key}" for key in changed)
        raise approvals.ForbiddenChange(
            f"an AccessRequest cannot be changed after it is filed ({fields}); file a new request"
        )


async def _validate_status(
    ctl: runtime.Controller, request: dict[str, Any], decider: approvals.Identity
) -> None:
    old = _parse_request(request.get("oldObject"), what="the stored request")
    new = _parse_request(request.get("object"), what="the updated request")
    new_status = new.status or AccessRequestStatus()
    namespace = old.metadata.namespace or str(request.get("namespace") or "")
    now = _now()
    added = approvals.decision_added(old=old.status, new=new_status)
    old_phase = old.status.phase if old.status else None
    grants_needed = new_status.phase == "Approved" or (
        new_status.phase == "Expired" and old_phase == "Approved"
    )
    if added is None and (new_status.phase == old_phase or not grants_needed):
        # No decision, and no transition whose rules look at the grants (the common case of the
        # controller's own condition and pending-expiry writes; saves two API reads).
        approvals.check_status_update(old=old, new=new_status, resolved=None, now=now)
        return
    agent, grants = await _agent_and_grants(ctl, namespace=namespace, agent=old.spec.agent)
    resolved: approvals.ResolvedRequest | None
    try:
        resolved = approvals.resolve_existing(request=old, agent=agent, all_grants=grants, now=now)
    except approvals.RequestClosed:
        if added is not None:
            raise
        resolved = None
    if added is not None:
        if resolved is None or agent is None:  # resolve_existing raised already; belt and braces
            raise approvals.RequestClosed(f"access request {old.metadata.name!r} is closed")
        approvals.check_added_decision(
            request_before=old, added=added, decider=decider, resolved=resolved, now=now
        )
        reviews = {
            grant.name: await _may_approve_by_rbac(ctl, decider=decider, grant=grant)
            for grant in approvals.grants_to_review(decider=decider, resolved=resolved)
        }
        approvals.require_may_decide(
            request=old,
            agent=agent,
            resolved=resolved,
            decider=decider,
            kind=added.kind,
            reviews=reviews,
        )
    approvals.check_status_update(old=old, new=new_status, resolved=resolved, now=now)
