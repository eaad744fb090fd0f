"""Just-in-time approval: the rules of the ``AccessRequest`` lifecycle, as pure functions.

One module answers every question the controller, its admission webhooks, the token service and
the kubectl plugin ask about an access request, so they cannot disagree:

- :func:`resolve_request`: may this agent ask for these capabilities, for this long? Each one must
  be held with approval ``Required`` from a grant that still applies, the duration must fit the
  grant's ``maxDuration``, the justification must be non-blank plain text of bounded length.
- :func:`require_may_decide`: may this authenticated Kubernetes user approve or deny it? Never the
  agent's own service account nor the request's creator (no self-approval); otherwise the user
  must be listed in every involved grant's ``approvers`` (user or group) or be allowed verb
  ``approve`` on that ``capabilitygrants`` object (a SubjectAccessReview answered by the caller,
  see :func:`grants_to_review`).
- :func:`decision_added`, :func:`stamp_decision`, :func:`check_status_update`: how a status write
  may change the request. Approvals and denials are append-only; each write adds at most one,
  and its ``user`` is the authenticated caller (stamped from admission ``userInfo``, then
  verified); the phase moves only along Pending -> Approved | Denied | Expired and
  Approved -> Expired, each transition only when the recorded decisions and the clock justify it,
  so nobody (not even a holder of status-write permission) can record an approval in someone
  else's name, remove one, or re-open a Denied request.
- :func:`evaluate`: the status the controller writes: ``minApprovals`` distinct approvers approve,
  one denial denies (and wins over any number of approvals), no decision by ``expiresAt``
  expires; approved access lasts until ``grantedUntil`` = time of the deciding approval + the
  requested duration, after which the request is Expired as well.
- :func:`require_still_approved`: whether an Approved request still grants anything (raises
  :class:`ApprovalWithdrawn` otherwise): it must belong to
  the very Agent object it was filed for (``spec.agentUID``) and every approval counts only under
  the grant it was given under, the same object (UID) with the same approvers
  (:func:`policy_fingerprint`); the token exchange and introspection apply it to every request.
- :func:`planned_events`: the Kubernetes Events a request's status implies, each with a stable
  key, so posting them again after a restart is a no-op rather than a duplicate.

Every refusal raises a subclass of :class:`ApprovalError` whose message is a sentence a person
can act on; nothing here returns a bool a caller could forget to check.
"""

from __future__ import annotations

import dataclasses
import datetime
import functools
import hashlib
import json
import re
import unicodedata
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, ClassVar, Literal

from agentauth.domain import capabilities as domain_capabilities
from agentauth.domain import display, durations
from agentauth.domain.models import accessrequests, agents, common, grants

DEFAULT_PENDING_TIMEOUT = datetime.timedelta(minutes=10)
MAX_JUSTIFICATION = accessrequests.MAX_JUSTIFICATION
MAX_COMMENT = 1024
MAX_CONTEXT_ENTRIES = 16
MAX_CONTEXT_VALUE = 256
MAX_CAPABILITIES = 32
# Clock skew tolerated between the controller that stamps decision times and the one that checks
# an expiry: a status write may mark a request Expired at most this long before its deadline.
CLOCK_SKEW = datetime.timedelta(seconds=2)
# Events older than this are not (re)posted: the API server garbage-collects Events after an hour,
# so re-posting an old one after a restart would be a duplicate, not a repair.
EVENT_REPOST_WINDOW = datetime.timedelta(minutes=50)

APPROVE_VERB = "approve"
GRANTS_RESOURCE = "capabilitygrants"
SERVICE_ACCOUNT_PREFIX = "system:serviceaccount:"

DecisionKind = Literal["Approve", "Deny"]
Phase = accessrequests.Phase
EventTarget = Literal["AccessRequest", "Agent"]
_TARGETS: tuple[EventTarget, ...] = ("AccessRequest", "Agent")
_TERMINAL: frozenset[str] = frozenset({"Denied", "Expired"})
_CONTEXT_KEY = re.compile(r"^[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$")


class ApprovalError(Exception):
    """A refused access-request operation; ``status`` is the HTTP status that fits it."""

    status: ClassVar[int] = 400
    reason: ClassVar[str] = "Invalid"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidAccessRequest(ApprovalError):
    """The request itself is malformed: justification, duration, context."""

    status = 400
    reason = "Invalid"


class CapabilityNotRequestable(InvalidAccessRequest):
    """A requested capability is not held with approval Required (or not held at all)."""

    reason = "CapabilityNotRequestable"


class NotEligible(ApprovalError):
    """The user may not decide this request: not an approver of an involved grant."""

    status = 403
    reason = "NotAnApprover"


class SelfApproval(ApprovalError):
    """The user is the agent's own service account, or created the request."""

    status = 403
    reason = "SelfApproval"


class RequestClosed(ApprovalError):
    """The request no longer takes decisions: decided, expired, or its grant is gone."""

    status = 409
    reason = "RequestClosed"


class DuplicateDecision(ApprovalError):
    """The user has already decided this request."""

    status = 409
    reason = "AlreadyDecided"


class ApprovalWithdrawn(ApprovalError):
    """An Approved request whose approvals no longer hold under the current Agent and grants."""

    status = 409
    reason = "ApprovalWithdrawn"


class ForbiddenChange(ApprovalError):
    """A write tries to change what only agentauth may record, or breaks the lifecycle."""

    status = 403
    reason = "ForbiddenChange"


@dataclasses.dataclass(frozen=True)
class Identity:
    """An authenticated Kubernetes user, as admission ``userInfo`` has it."""

    username: str
    groups: tuple[str, ...] = ()
    uid: str | None = None

    @classmethod
    def from_user_info(cls, user_info: Mapping[str, Any]) -> Identity:
        """Build from admission ``request.userInfo``; an anonymous or empty user is refused."""
        username = user_info.get("username")
        if not isinstance(username, str) or not username:
            raise ForbiddenChange("the API server sent no authenticated user for this request")
        groups = user_info.get("groups") or []
        uid = user_info.get("uid")
        return cls(
            username=username,
            groups=tuple(str(group) for group in groups),
            uid=str(uid) if uid else None,
        )

    def requester(self) -> accessrequests.Requester:
        """This identity as the ``spec.requester`` the admission webhook stamps."""
        return accessrequests.Requester(
            username=self.username, uid=self.uid, groups=list(self.groups)
        )


def service_account_username(*, namespace: str, name: str) -> str:
    """The Kubernetes user name of a service account: ``system:serviceaccount:NS:NAME``."""
    return f"{SERVICE_ACCOUNT_PREFIX}{namespace}:{name}"


def policy_fingerprint(approvers: grants.Approvers) -> str:
    """A fingerprint of who may approve under a grant: its users, groups and ``minApprovals``.

    Order and repetition do not matter; any other change (an approver added or removed, a
    different quorum) changes the fingerprint, and approvals recorded under the old one no longer
    count.
    """
    return _fingerprint(
        tuple(sorted(set(approvers.users))),
        tuple(sorted(set(approvers.groups))),
        approvers.min_approvals,
    )


@functools.lru_cache(maxsize=1024)
def _fingerprint(users: tuple[str, ...], groups: tuple[str, ...], min_approvals: int) -> str:
    canonical = json.dumps(
        {"users": list(users), "groups": list(groups), "minApprovals": min_approvals},
        sort_keys=True,
        separators=(",", ":"),
    )
    return "sha256:" + hashlib.sha256(canonical.encode()).hexdigest()[:32]


@dataclasses.dataclass(frozen=True)
class InvolvedGrant:
    """A grant that gives one or more of a request's capabilities with approval Required."""

    name: str
    namespace: str
    capabilities: tuple[str, ...]
    max_duration: datetime.timedelta
    approvers: grants.Approvers
    uid: str = ""

    @functools.cached_property
    def binding(self) -> accessrequests.GrantBinding:
        """What an approval under this grant records: name, UID and approver policy."""
        return accessrequests.GrantBinding(
            name=self.name, uid=self.uid, policy=policy_fingerprint(self.approvers)
        )


@dataclasses.dataclass(frozen=True)
class ResolvedRequest:
    """A request checked against what the agent holds: what it asks and whose approval it needs."""

    capabilities: tuple[str, ...]
    duration: datetime.timedelta
    grants: tuple[InvolvedGrant, ...]

    @property
    def min_approvals(self) -> int:
        """Distinct approvals needed: the strictest ``minApprovals`` of the involved grants."""
        return max(grant.approvers.min_approvals for grant in self.grants)

    @property
    def max_duration(self) -> datetime.timedelta:
        """The longest duration every involved grant allows."""
        return min(grant.max_duration for grant in self.grants)


def validate_justification(text: str) -> str:
    """Return ``text`` stripped, or raise: it must be non-blank plain text of bounded length."""
    stripped = text.strip()
    if not stripped:
        raise InvalidAccessRequest("justification is required: say why the agent needs this access")
    if len(stripped) > MAX_JUSTIFICATION:
        raise InvalidAccessRequest(
            f"justification is too long: {len(stripped)} characters, at most {MAX_JUSTIFICATION}"
        )
    if any(_is_control(char) for char in stripped):
        raise InvalidAccessRequest(
            "justification must be plain text: control characters other than newline and tab "
            "are not allowed"
        )
    return stripped


def validate_comment(text: str, *, kind: DecisionKind) -> str:
    """Return an approver's comment (or a denial's reason) stripped, or raise."""
    stripped = text.strip()
    if kind == "Deny" and not stripped:
        raise InvalidAccessRequest("a denial needs a reason: say why the access is refused")
    if len(stripped) > MAX_COMMENT:
        raise InvalidAccessRequest(
            f"comment is too long: {len(stripped)} characters, at most {MAX_COMMENT}"
        )
    if any(_is_control(char) for char in stripped):
        raise InvalidAccessRequest(
            "comment must be plain text: control characters other than newline and tab are not "
            "allowed"
        )
    return stripped


def validate_context(context: Mapping[str, str]) -> dict[str, str]:
    """Return the request's free-form context, or raise if it is not small, plain key/values."""
    if len(context) > MAX_CONTEXT_ENTRIES:
        raise InvalidAccessRequest(
            f"context has {len(context)} entries, at most {MAX_CONTEXT_ENTRIES} are allowed"
        )
    result: dict[str, str] = {}
    for key, value in context.items():
        if not isinstance(key, str) or not _CONTEXT_KEY.match(key):
            raise InvalidAccessRequest(
                f"context key {key!r} is invalid: use at most 63 letters, digits, '-', '_' or '.', "
                "starting and ending with a letter or digit"
            )
        if not isinstance(value, str):
            raise InvalidAccessRequest(f"context value for {key!r} must be a string")
        if len(value) > MAX_CONTEXT_VALUE or any(_is_control(char) for char in value):
            raise InvalidAccessRequest(
                f"context value for {key!r} must be plain text of at most {MAX_CONTEXT_VALUE} "
                "characters"
            )
        result[key] = value
    return result


def parse_request_duration(text: str) -> datetime.timedelta:
    """Parse a request's ``duration``, raising :class:`InvalidAccessRequest` on a bad value."""
    try:
        return durations.parse_duration(text)
    except ValueError as error:
        raise InvalidAccessRequest(f"duration: {error}") from error


def resolve_request(
    *,
    agent: agents.Agent,
    requested: Sequence[str],
    duration: datetime.timedelta,
    all_grants: Iterable[grants.CapabilityGrant],
    now: datetime.datetime,
) -> ResolvedRequest:
    """Check ``requested`` capabilities for ``duration`` against what ``agent`` holds at ``now``.

    Uses :func:`agentauth.domain.capabilities.effective_capabilities` over ``all_grants`` (the
    live grants, not the possibly stale ``Agent.status``), so a withdrawn or expired grant can no
    longer be requested or approved.
    """
    agent_name = agent.metadata.name or ""
    if not requested:
        raise InvalidAccessRequest("capabilities: request at least one capability")
    if len(requested) > MAX_CAPABILITIES:
        raise InvalidAccessRequest(
            f"capabilities: at most {MAX_CAPABILITIES} may be requested at once, "
            f"got {len(requested)}"
        )
    grant_list = list(all_grants)
    by_name = {grant.metadata.name: grant for grant in grant_list}
    held = domain_capabilities.effective_capabilities(agent, grant_list, now=now)
    involved: dict[str, list[str]] = {}
    limits: dict[str, datetime.timedelta] = {}
    ordered: list[str] = []
    for capability in requested:
        if not domain_capabilities.is_capability_name(capability):
            raise InvalidAccessRequest(
                f"{capability!r} is not a capability name: expected '<resource>.<action>' in "
                "lower case, such as 'payments.authorize'"
            )
        if capability in ordered:
            continue
        entry = domain_capabilities.find(held, capability)
        if entry is None:
            raise CapabilityNotRequestable(
                f"agent {agent_name!r} holds no capability {capability!r}: no CapabilityGrant "
                "in its namespace gives it"
            )
        if entry.approval != "Required":
            raise CapabilityNotRequestable(
                f"capability {capability!r} needs no approval: grant {entry.grant!r} gives it to "
                f"agent {agent_name!r} automatically; exchange for a token with it instead"
            )
        limit = (
            durations.parse_duration(entry.max_duration)
            if entry.max_duration is not None
            else durations.parse_duration(grants.DEFAULT_MAX_DURATION)
        )
        if duration > limit:
            raise InvalidAccessRequest(
                f"duration {durations.format_duration(duration)} is longer than the "
                f"{durations.format_duration(limit)} that grant {entry.grant!r} allows for "
                f"{capability!r} (its maxDuration)"
            )
        ordered.append(capability)
        involved.setdefault(entry.grant, []).append(capability)
        limits[entry.grant] = min(limit, limits.get(entry.grant, limit))
    resolved: list[InvolvedGrant] = []
    for grant_name in sorted(involved):
        grant = by_name[grant_name]
        resolved.append(
            InvolvedGrant(
                name=grant_name,
                namespace=grant.metadata.namespace or "",
                capabilities=tuple(involved[grant_name]),
                max_duration=limits[grant_name],
                approvers=grant.spec.approvers or grants.Approvers(),
                uid=grant.metadata.uid or "",
            )
        )
    return ResolvedRequest(capabilities=tuple(ordered), duration=duration, grants=tuple(resolved))


def resolve_existing(
    *,
    request: accessrequests.AccessRequest,
    agent: agents.Agent | None,
    all_grants: Iterable[grants.CapabilityGrant],
    now: datetime.datetime,
) -> ResolvedRequest:
    """Resolve a stored request again, raising :class:`RequestClosed` if it no longer applies.

    The capabilities may have been withdrawn since the request was filed (grant deleted, expired,
    changed to Automatic, agent deleted); then nobody can approve it any more. A request belongs
    to the Agent *object* it was filed for (``spec.agentUID``, stamped at admission): an Agent
    deleted and created again under the same name is another Agent, and the request is closed
    for it (as it is when the UID was never stamped: fail closed).
    """
    name = request.metadata.name or ""
    if agent is None:
        raise RequestClosed(
            f"access request {name!r} is for agent {request.spec.agent!r}, which no longer exists"
        )
    require_same_agent(request, agent)
    try:
        return resolve_request(
            agent=agent,
            requested=request.spec.capabilities,
            duration=parse_request_duration(request.spec.duration),
            all_grants=all_grants,
            now=now,
        )
    except InvalidAccessRequest as error:
        raise RequestClosed(
            f"access request {name!r} can no longer be decided: {error.message}"
        ) from error


def require_same_agent(request: accessrequests.AccessRequest, agent: agents.Agent) -> None:
    """Raise :class:`RequestClosed` unless ``request`` was filed for this very Agent object."""
    name = request.metadata.name or ""
    filed_for = request.spec.agent_uid
    if not filed_for:
        raise RequestClosed(
            f"access request {name!r} carries no spec.agentUID (agentauth's admission webhook "
            "did not stamp it), so it cannot be tied to an Agent; file a new request"
        )
    if agent.metadata.uid != filed_for:
        raise RequestClosed(
            f"access request {name!r} was filed for an earlier Agent {request.spec.agent!r} "
            f"(uid {filed_for}); that Agent was deleted and the current one "
            f"(uid {agent.metadata.uid}) does not inherit it"
        )


def bindings(resolved: ResolvedRequest) -> list[accessrequests.GrantBinding]:
    """The grant bindings a decision on ``resolved`` records (stamped by the webhook)."""
    return [grant.binding for grant in resolved.grants]


def deciding_approval(
    approvals: Sequence[accessrequests.Decision], *, resolved: ResolvedRequest
) -> accessrequests.Decision | None:
    """The approval that completed the quorum of every involved grant, if they all have one.

    Per grant, only approvals recorded under that grant's current binding count (same name,
    UID and approver policy, see :func:`policy_fingerprint`), from distinct users; the grant
    needs its ``minApprovals`` of them. An approval given under a grant that was deleted and
    re-created, or whose approvers have changed since, counts for nothing. The result is the
    latest of the per-grant deciding approvals (the one that completed the last quorum).
    """
    latest: tuple[int, accessrequests.Decision] | None = None
    for grant in resolved.grants:
        binding = grant.binding
        counted = _distinct([item for item in approvals if binding in item.grants])
        needed = grant.approvers.min_approvals
        if len(counted) < needed:
            return None
        decider = counted[needed - 1]
        position = next(index for index, item in enumerate(approvals) if item is decider)
        if latest is None or position > latest[0]:
            latest = (position, decider)
    return latest[1] if latest is not None else None


def counted_approvals(
    approvals: Sequence[accessrequests.Decision], *, resolved: ResolvedRequest | None
) -> int:
    """Distinct approvals that count toward every involved grant's quorum (for messages)."""
    if resolved is None or not resolved.grants:
        return 0
    current = bindings(resolved)
    return len(_distinct([item for item in approvals if all(b in item.grants for b in current)]))


def require_still_approved(
    request: accessrequests.AccessRequest, *, resolved: ResolvedRequest | None
) -> None:
    """Raise :class:`ApprovalWithdrawn` unless the request's approvals still hold under the
    current grants.

    They do not when the request can no longer be resolved (``resolved`` is ``None``: agent
    re-created or gone, grant deleted, capability no longer Required) or when its recorded
    approvals no longer make every quorum under the grants as they are now (a grant re-created,
    its approvers or quorum changed).
    """
    name = request.metadata.name or ""
    status = request.status
    if resolved is None:
        raise ApprovalWithdrawn(
            f"access request {name!r} no longer applies: its Agent or a grant giving its "
            "capabilities was deleted, re-created or changed"
        )
    if (
        status is None
        or status.denials
        or deciding_approval(status.approvals, resolved=resolved) is None
    ):
        raise ApprovalWithdrawn(
            f"the approvals of access request {name!r} were given under grants that no longer "
            "exist as they were (deleted, re-created, or their approvers changed)"
        )


def grants_to_review(*, decider: Identity, resolved: ResolvedRequest) -> list[InvolvedGrant]:
    """The involved grants that do not list ``decider`` (by user or group) as an approver.

    For each of these the caller asks the API server a SubjectAccessReview (verb ``approve`` on
    that ``capabilitygrants`` object) and passes the answers to :func:`require_may_decide`.
    """
    return [grant for grant in resolved.grants if not _listed(decider, grant.approvers)]


def require_may_decide(
    *,
    request: accessrequests.AccessRequest,
    agent: agents.Agent,
    resolved: ResolvedRequest,
    decider: Identity,
    kind: DecisionKind,
    reviews: Mapping[str, bool],
) -> None:
    """Raise unless ``decider`` may approve or deny ``request``.

    ``reviews`` maps grant names to the SubjectAccessReview answer for verb ``approve`` on that
    grant; a grant neither listing the user nor present in ``reviews`` with ``True`` refuses.
    """
    verb = "approve" if kind == "Approve" else "deny"
    namespace = request.metadata.namespace or ""
    agent_sa = agent.spec.service_account_name
    if agent_sa and decider.username == service_account_username(
        namespace=agent.metadata.namespace or namespace, name=agent_sa
    ):
        raise SelfApproval(
            f"{decider.username} is the service account of agent {agent.metadata.name!r} and "
            f"may not {verb} its own access requests"
        )
    requester = request.spec.requester
    if requester is not None and decider.username == requester.username:
        raise SelfApproval(
            f"{decider.username} filed access request {request.metadata.name!r} and may not "
            f"{verb} it"
        )
    for grant in grants_to_review(decider=decider, resolved=resolved):
        if reviews.get(grant.name) is True:
            continue
        raise NotEligible(
            f"user {decider.username!r} may not {verb} access request "
            f"{request.metadata.name!r}: not listed in the approvers of CapabilityGrant "
            f"{grant.name!r} and not allowed verb 'approve' on capabilitygrants "
            f"{grant.name!r} in namespace {grant.namespace!r}; ask an admin to add you to "
            "spec.approvers of that grant"
        )


@dataclasses.dataclass(frozen=True)
class AddedDecision:
    """The one approval or denial a status write adds."""

    kind: DecisionKind
    index: int
    decision: accessrequests.Decision


def decision_added(
    *,
    old: accessrequests.AccessRequestStatus | None,
    new: accessrequests.AccessRequestStatus | None,
) -> AddedDecision | None:
    """The decision a status write appends, or ``None``; raise if it edits or removes any.

    Recorded approvals and denials are append-only and a write adds at most one, so each entry is
    attributable to exactly one authenticated write.
    """
    old_status = old or accessrequests.AccessRequestStatus()
    new_status = new or accessrequests.AccessRequestStatus()
    added: list[AddedDecision] = []
    for kind, before, after in (
        ("Approve", old_status.approvals, new_status.approvals),
        ("Deny", old_status.denials, new_status.denials),
    ):
        noun = "approvals" if kind == "Approve" else "denials"
        if len(after) < len(before) or any(
            _decision_key(a) != _decision_key(b) for a, b in zip(before, after, strict=False)
        ):
            raise ForbiddenChange(f"status.{noun}: recorded decisions cannot be edited or removed")
        added.extend(
            AddedDecision(kind=kind, index=index, decision=after[index])  # type: ignore[arg-type]
            for index in range(len(before), len(after))
        )
    if len(added) > 1:
        raise ForbiddenChange("a status write may add only one approval or denial at a time")
    return added[0] if added else None


def stamp_decision(
    *,
    added: AddedDecision,
    decider: Identity,
    resolved: ResolvedRequest,
    now: datetime.datetime,
) -> accessrequests.Decision:
    """The added decision as it must be stored: user, groups and time from the authenticated call,
    and the grants (name, UID, approver policy) it is made under, from the live cluster.

    The client leaves ``user`` empty (or puts its own name); groups, time and grants are always
    replaced by the server's. A different name is refused rather than silently corrected, so an
    attempt to record a decision in someone else's name fails visibly.
    """
    kind = added.kind
    if added.decision.user not in ("", decider.username):
        raise _foreign_name(decider=decider, claimed=added.decision.user)
    return accessrequests.Decision(
        user=decider.username,
        groups=list(decider.groups),
        time=now.replace(microsecond=0),
        comment=validate_comment(added.decision.comment, kind=kind),
        grants=bindings(resolved),
    )


def check_added_decision(
    *,
    request_before: accessrequests.AccessRequest,
    added: AddedDecision,
    decider: Identity,
    resolved: ResolvedRequest,
    now: datetime.datetime,
) -> None:
    """Raise unless ``added`` is a well-formed decision by ``decider`` on an open request.

    The caller has already stamped the entry (mutating webhook); this re-checks the stamp
    (validating webhook): author, and the grants it was made under, which must be the grants as
    they are now (a grant re-created or its approvers changed between the two webhooks refuses
    the write; the approver tries again). Then the phase and the deadline, and duplicates.
    Eligibility is checked separately by :func:`require_may_decide`.
    """
    name = request_before.metadata.name or ""
    entry = added.decision
    if entry.user != decider.username:
        raise _foreign_name(decider=decider, claimed=entry.user)
    if entry.grants != bindings(resolved):
        raise ForbiddenChange(
            f"the decision on access request {name!r} must record the grants it is made under "
            "as agentauth stamps them (their name, UID and approvers); they changed while it "
            "was written: try again"
        )
    validate_comment(entry.comment, kind=added.kind)
    status = request_before.status or accessrequests.AccessRequestStatus()
    if status.phase != "Pending":
        state = status.phase or "not yet pending"
        raise RequestClosed(
            f"access request {name!r} is {state}; only Pending requests can be approved or denied"
        )
    if status.expires_at is not None and now >= _aware(status.expires_at):
        raise RequestClosed(
            f"access request {name!r} expired at {_rfc3339(status.expires_at)}; the agent must "
            "file a new request"
        )
    for kind, recorded in (("approved", status.approvals), ("denied", status.denials)):
        if any(item.user == decider.username for item in recorded):
            raise DuplicateDecision(
                f"{decider.username} has already {kind} access request {name!r}"
            )


def check_status_update(
    *,
    old: accessrequests.AccessRequest,
    new: accessrequests.AccessRequestStatus,
    resolved: ResolvedRequest | None,
    now: datetime.datetime,
) -> None:
    """Raise unless the phase and timestamps in ``new`` follow from ``old`` and its decisions.

    Enforced for every writer: Denied and Expired are final; Pending is entered once, with an
    ``expiresAt`` that never changes afterwards; Approved needs every involved grant's quorum of
    approvals recorded under that grant as it is now (:func:`deciding_approval`; ``resolved`` is
    ``None`` when the request cannot be approved any more) and no denial, with a ``grantedUntil``
    no later than the deciding approval plus the requested duration; Denied needs a denial;
    Expired needs the deadline to have passed, or, for an Approved request, its approvals to no
    longer hold (:func:`require_still_approved`: the access is withdrawn early, never extended).
    """
    before = old.status or accessrequests.AccessRequestStatus()
    name = old.metadata.name or ""
    if before.phase in _TERMINAL and new.phase != before.phase:
        raise ForbiddenChange(
            f"access request {name!r} is {before.phase} and cannot be re-opened or changed to "
            f"{new.phase}; the agent must file a new request"
        )
    if before.expires_at is not None and new.expires_at != before.expires_at:
        raise ForbiddenChange(f"status.expiresAt of access request {name!r} cannot be changed")
    if before.granted_until is not None and new.granted_until != before.granted_until:
        raise ForbiddenChange(f"status.grantedUntil of access request {name!r} cannot be changed")
    if new.phase == before.phase:
        if new.granted_until is not None and before.granted_until is None:
            raise ForbiddenChange("status.grantedUntil is set only when a request is approved")
        return
    transition = f"{before.phase or 'new'} -> {new.phase or 'none'}"
    allowed = {
        (None, "Pending"),
        ("Pending", "Approved"),
        ("Pending", "Denied"),
        ("Pending", "Expired"),
        ("Approved", "Expired"),
    }
    if (before.phase, new.phase) not in allowed:
        raise ForbiddenChange(
            f"access request {name!r}: phase transition {transition} is not allowed"
        )
    if new.phase == "Pending" and new.expires_at is None:
        raise ForbiddenChange("a Pending access request needs status.expiresAt")
    if new.phase == "Approved":
        if new.denials:
            raise ForbiddenChange(
                f"access request {name!r} has a denial and cannot be approved (one denial decides)"
            )
        if resolved is None:
            raise ForbiddenChange(
                f"access request {name!r} can no longer be approved: its capabilities are no "
                "longer granted with approval Required"
            )
        deciding = deciding_approval(new.approvals, resolved=resolved)
        if deciding is None:
            raise ForbiddenChange(
                f"access request {name!r} has {counted_approvals(new.approvals, resolved=resolved)}"
                f" of the {resolved.min_approvals} distinct approvals it needs under its grants "
                "as they are now"
            )
        if new.granted_until is None:
            raise ForbiddenChange("an Approved access request needs status.grantedUntil")
        limit = _aware(deciding.time) + parse_request_duration(old.spec.duration)
        if _aware(new.granted_until) > limit + CLOCK_SKEW:
            raise ForbiddenChange(
                f"status.grantedUntil {_rfc3339(new.granted_until)} is later than the approval "
                f"time plus the requested {old.spec.duration} ({_rfc3339(limit)})"
            )
    if new.phase == "Denied" and not new.denials:
        raise ForbiddenChange(f"access request {name!r} has no denial and cannot be Denied")
    if new.phase == "Expired":
        if before.phase == "Approved":
            try:
                require_still_approved(old, resolved=resolved)
            except ApprovalWithdrawn:
                return  # withdrawn early: its grant or Agent changed under it
        deadline = before.granted_until if before.phase == "Approved" else before.expires_at
        if deadline is None or now + CLOCK_SKEW < _aware(deadline):
            raise ForbiddenChange(
                f"access request {name!r} cannot expire before its deadline"
                + (f" {_rfc3339(deadline)}" if deadline is not None else "")
            )


def pending_deadline(
    request: accessrequests.AccessRequest,
    *,
    timeout: datetime.timedelta,
    now: datetime.datetime,
) -> datetime.datetime:
    """``expiresAt`` of a new request: its creation time plus ``timeout`` (restart-stable)."""
    created = request.metadata.creation_timestamp
    start = _aware(created) if created is not None else now
    return start.replace(microsecond=0) + timeout


def evaluate(
    request: accessrequests.AccessRequest,
    *,
    resolved: ResolvedRequest | None,
    pending_timeout: datetime.timedelta,
    now: datetime.datetime,
) -> accessrequests.AccessRequestStatus:
    """The status the controller should write for ``request`` at ``now``.

    Level-based and deterministic: it depends only on the stored request, the request resolved
    against the current Agent and grants (``None`` when it can no longer be approved) and the
    clock, so re-running it after a restart yields the same status. Approvals and denials are
    copied as recorded, never rewritten. An Approved request whose approvals no longer hold
    (:func:`require_still_approved`) becomes Expired at once, with reason ``ApprovalWithdrawn``.
    """
    before = request.status or accessrequests.AccessRequestStatus()
    status = before.model_copy(deep=True)
    generation = request.metadata.generation
    status.observed_generation = generation
    if status.phase is None:
        status.phase = "Pending"
        status.expires_at = pending_deadline(request, timeout=pending_timeout, now=now)
    if status.phase == "Pending":
        _decide_pending(request, status, resolved=resolved, now=now)
    withdrawn = False
    if status.phase == "Approved":
        if status.granted_until is not None and now >= _aware(status.granted_until):
            status.phase = "Expired"
        else:
            try:
                require_still_approved(
                    request.model_copy(update={"status": status}), resolved=resolved
                )
            except ApprovalWithdrawn:
                status.phase = "Expired"
                withdrawn = True
    if before.phase == "Expired" and _condition_reason(before) == REASON_WITHDRAWN:
        withdrawn = True  # keep saying why it ended, also after grantedUntil has passed
    status.conditions = common.set_condition(
        status.conditions,
        _granted_condition(request, status, resolved, now, withdrawn=withdrawn),
    )
    return status


REASON_WITHDRAWN = "ApprovalWithdrawn"


def _condition_reason(status: accessrequests.AccessRequestStatus) -> str | None:
    found = next((item for item in status.conditions if item.type == "Granted"), None)
    return found.reason if found is not None else None


def _decide_pending(
    request: accessrequests.AccessRequest,
    status: accessrequests.AccessRequestStatus,
    *,
    resolved: ResolvedRequest | None,
    now: datetime.datetime,
) -> None:
    if status.denials:
        status.phase = "Denied"
        return
    deciding = (
        deciding_approval(status.approvals, resolved=resolved) if resolved is not None else None
    )
    if deciding is not None:
        status.phase = "Approved"
        status.granted_until = _aware(deciding.time) + parse_request_duration(request.spec.duration)
        return
    if status.expires_at is not None and now >= _aware(status.expires_at):
        status.phase = "Expired"


def _granted_condition(
    request: accessrequests.AccessRequest,
    status: accessrequests.AccessRequestStatus,
    resolved: ResolvedRequest | None,
    now: datetime.datetime,
    *,
    withdrawn: bool,
) -> common.Condition:
    def condition(value: common.ConditionStatus, reason: str, message: str) -> common.Condition:
        return common.Condition(
            type="Granted",
            status=value,
            reason=reason,
            message=message,
            last_transition_time=now.replace(microsecond=0),
            observed_generation=request.metadata.generation,
        )

    approvers = ", ".join(display.clean(item.user) for item in _distinct(status.approvals))
    if status.phase == "Approved":
        return condition(
            "True",
            "Approved",
            f"approved by {approvers}; access until {_rfc3339(status.granted_until)}",
        )
    if status.phase == "Denied":
        denial = status.denials[0]
        return condition(
            "False",
            "Denied",
            f"denied by {display.clean(denial.user)}; reason: {display.quote(denial.comment)}",
        )
    if status.phase == "Expired":
        if withdrawn:
            return condition(
                "False",
                REASON_WITHDRAWN,
                "access withdrawn before "
                f"{_rfc3339(status.granted_until)}: the approvals no longer hold (the Agent or a "
                "CapabilityGrant was deleted or re-created, or the grant's approvers changed)",
            )
        if status.granted_until is not None:
            return condition(
                "False", "GrantEnded", f"access ended at {_rfc3339(status.granted_until)}"
            )
        return condition(
            "False",
            "RequestExpired",
            f"no decision before {_rfc3339(status.expires_at)}",
        )
    if resolved is None:
        return condition(
            "False",
            "NoLongerGrantable",
            "the requested capabilities are no longer granted with approval Required to this "
            "Agent; the request will expire",
        )
    count = counted_approvals(status.approvals, resolved=resolved)
    return condition(
        "False",
        "AwaitingApproval",
        f"{count} of {resolved.min_approvals} approvals; expires at {_rfc3339(status.expires_at)}",
    )


def next_deadline(
    status: accessrequests.AccessRequestStatus | None,
) -> datetime.datetime | None:
    """When the request's phase changes by the clock alone (expiry, end of grant), if ever."""
    if status is None:
        return None
    if status.phase == "Pending" and status.expires_at is not None:
        return _aware(status.expires_at)
    if status.phase == "Approved" and status.granted_until is not None:
        return _aware(status.granted_until)
    return None


def approve_command(*, name: str, namespace: str) -> str:
    """The exact command a person runs to approve the request."""
    return f"kubectl agentauth approve {name} -n {namespace}"


def deny_command(*, name: str, namespace: str) -> str:
    """The exact command a person runs to deny the request."""
    return f'kubectl agentauth deny {name} -n {namespace} --reason "..."'


@dataclasses.dataclass(frozen=True)
class PlannedEvent:
    """A Kubernetes Event a request's state implies; ``key`` makes its object name stable."""

    key: str
    on: EventTarget
    type: Literal["Normal", "Warning"]
    reason: str
    message: str
    time: datetime.datetime


def planned_events(
    request: accessrequests.AccessRequest,
    *,
    now: datetime.datetime,
) -> list[PlannedEvent]:
    """Every Event ``request``'s recorded state implies, oldest first, skipping stale ones.

    Derived from the status alone, so the controller can post them after any restart; the key
    goes into the Event's name, so a second post is refused by the API server as a duplicate.
    """
    status = request.status
    if status is None or status.phase is None:
        return []
    name = request.metadata.name or ""
    namespace = request.metadata.namespace or ""
    agent = request.spec.agent
    wanted = _capability_list(request.spec.capabilities)
    events: list[PlannedEvent] = []
    created = request.metadata.creation_timestamp
    filed_at = _aware(created) if created is not None else now
    for target in _TARGETS:
        ours = (
            (f"{name}: " if target == "Agent" else "")
            + f"Agent {agent} requests {wanted} for {request.spec.duration}"
            + f" | approve: {approve_command(name=name, namespace=namespace)}"
            + f" | deny: {deny_command(name=name, namespace=namespace)}"
        )
        events.append(
            PlannedEvent(
                key=f"requested-{target.lower()}",
                on=target,
                type="Normal",
                reason="AccessRequested",
                message=_with_requester_text(ours, request),
                time=filed_at,
            )
        )
    for index, approval in enumerate(status.approvals):
        comment = f"; comment: {display.quote(approval.comment)}" if approval.comment else ""
        events.append(
            PlannedEvent(
                key=f"approval-{index}",
                on="AccessRequest",
                type="Normal",
                reason="ApprovalRecorded",
                message=f"{display.clean(approval.user)} approved{comment}",
                time=_aware(approval.time),
            )
        )
    withdrawn = status.phase == "Expired" and _condition_reason(status) == REASON_WITHDRAWN
    if status.phase == "Approved" or (status.phase == "Expired" and status.granted_until):
        deciding_time = (
            max(_aware(item.time) for item in status.approvals) if status.approvals else now
        )
        approvers = ", ".join(display.clean(item.user) for item in _distinct(status.approvals))
        message = f"{wanted} approved by {approvers} until {_rfc3339(status.granted_until)}"
        for target in _TARGETS:
            events.append(
                PlannedEvent(
                    key=f"approved-{target.lower()}",
                    on=target,
                    type="Normal",
                    reason="AccessApproved",
                    message=f"{name}: {message}" if target == "Agent" else message,
                    time=deciding_time,
                )
            )
    if status.phase == "Denied" and status.denials:
        denial = status.denials[0]
        message = (
            f"{wanted} denied by {display.clean(denial.user)}; reason: "
            f"{display.quote(denial.comment)}"
        )
        for target in _TARGETS:
            events.append(
                PlannedEvent(
                    key=f"denied-{target.lower()}",
                    on=target,
                    type="Warning",
                    reason="AccessDenied",
                    message=f"{name}: {message}" if target == "Agent" else message,
                    time=_aware(denial.time),
                )
            )
    if status.phase == "Expired":
        if withdrawn:
            condition = next(item for item in status.conditions if item.type == "Granted")
            events.append(
                PlannedEvent(
                    key="withdrawn",
                    on="AccessRequest",
                    type="Warning",
                    reason=REASON_WITHDRAWN,
                    message=f"access to {wanted} withdrawn: {condition.message}",
                    time=_aware(condition.last_transition_time),
                )
            )
        elif status.granted_until is not None:
            events.append(
                PlannedEvent(
                    key="ended",
                    on="AccessRequest",
                    type="Normal",
                    reason="AccessEnded",
                    message=f"access to {wanted} ended at {_rfc3339(status.granted_until)}",
                    time=_aware(status.granted_until),
                )
            )
        elif status.expires_at is not None:
            events.append(
                PlannedEvent(
                    key="expired",
                    on="AccessRequest",
                    type="Warning",
                    reason="AccessRequestExpired",
                    message=f"no decision before {_rfc3339(status.expires_at)}; request expired",
                    time=_aware(status.expires_at),
                )
            )
    return [event for event in events if now - event.time <= EVENT_REPOST_WINDOW]


def _foreign_name(*, decider: Identity, claimed: str) -> ForbiddenChange:
    return ForbiddenChange(
        "an approval or denial is recorded in the caller's own name: "
        f"{decider.username!r} cannot record one for {claimed!r}"
    )


def _distinct(approvals: Sequence[accessrequests.Decision]) -> list[accessrequests.Decision]:
    seen: set[str] = set()
    result: list[accessrequests.Decision] = []
    for item in approvals:
        # An empty user is an unstamped placeholder (webhook not called): it never counts.
        if item.user and item.user not in seen:
            seen.add(item.user)
            result.append(item)
    return result


def _listed(decider: Identity, approvers: grants.Approvers) -> bool:
    return decider.username in approvers.users or any(
        group in approvers.groups for group in decider.groups
    )


def _decision_key(
    decision: accessrequests.Decision,
) -> tuple[str, tuple[str, ...], str, str, tuple[tuple[str, str, str], ...]]:
    return (
        decision.user,
        tuple(decision.groups),
        _rfc3339(decision.time),
        decision.comment,
        tuple((item.name, item.uid, item.policy) for item in decision.grants),
    )


def _is_control(char: str) -> bool:
    return char not in "\n\t" and unicodedata.category(char) in ("Cc", "Cf")


MAX_EVENT_MESSAGE = 1024
MAX_LISTED_CAPABILITIES = 200
MAX_EVENT_CONTEXT = 320
MIN_EVENT_JUSTIFICATION = 40


def _capability_list(names: Sequence[str]) -> str:
    """Capability names (validated, so plain) joined, at most about 200 characters."""
    shown: list[str] = []
    for index, capability in enumerate(names):
        if len(", ".join([*shown, capability])) > MAX_LISTED_CAPABILITIES:
            return ", ".join(shown) + f" and {len(names) - index} more"
        shown.append(capability)
    return ", ".join(shown)


def _with_requester_text(ours: str, request: accessrequests.AccessRequest) -> str:
    """``ours`` followed by what the requester wrote, quoted, last and bounded.

    The justification and context values come from the agent (or whoever filed the request):
    each is quoted by :func:`display.quote`, so it cannot pass for agentauth's text (such as a
    second ``| approve: ...``), and it comes after everything of ours, sized so that the whole
    message fits the Event's 1024 characters.
    """
    context = ""
    if request.spec.context:
        parts = [
            f"{display.clean(key, limit=63)}={display.quote(value, limit=64)}"
            for key, value in sorted(request.spec.context.items())
        ]
        shown: list[str] = []
        for part in parts:
            if len(", ".join([*shown, part])) > MAX_EVENT_CONTEXT:
                break
            shown.append(part)
        more = len(parts) - len(shown)
        context = " | context: " + ", ".join(shown)
        if more:
            context += f" and {more} more (kubectl agentauth describe)"
    label = " | justification from the requester: "
    budget = max(
        MIN_EVENT_JUSTIFICATION, MAX_EVENT_MESSAGE - len(ours) - len(context) - len(label) - 2
    )
    return ours + context + label + display.quote(request.spec.justification, limit=budget)


def _aware(moment: datetime.datetime) -> datetime.datetime:
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=datetime.UTC)


def _rfc3339(moment: datetime.datetime | None) -> str:
    if moment is None:
        return "-"
    return _aware(moment).astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
