"""The just-in-time approval rules: request validation, eligibility, lifecycle, events."""

from __future__ import annotations

import datetime
from typing import Any

import pytest

from agentauth.domain import approvals
from agentauth.domain.models import accessrequests, agents, grants

NOW = datetime.datetime(2026, 11, 28, 12, 0, 0, tzinfo=datetime.UTC)
NS = "shop"
AGENT_SA = "system:serviceaccount:shop:buyer-sa"
TOKEN_SERVICE = "system:serviceaccount:agentauth-system:agentauth-token-service"


def make_agent(name: str = "buyer") -> agents.Agent:
    return agents.Agent.model_validate(
        {
            "metadata": {"name": name, "namespace": NS, "uid": "u-1"},
            "spec": {"serviceAccountName": "buyer-sa"},
        }
    )


def make_grant(
    name: str = "payments",
    *,
    capabilities: list[dict[str, Any]] | None = None,
    approvers: dict[str, Any] | None = None,
    expires_at: str | None = None,
    agent_names: list[str] | None = None,
) -> grants.CapabilityGrant:
    spec: dict[str, Any] = {
        "agents": {"names": agent_names or ["buyer"]},
        "capabilities": capabilities
        or [
            {"name": "payments.authorize", "approval": "Required", "maxDuration": "30m"},
            {"name": "document.read"},
        ],
    }
    if approvers is not None:
        spec["approvers"] = approvers
    if expires_at is not None:
        spec["expiresAt"] = expires_at
    return grants.CapabilityGrant.model_validate(
        {"metadata": {"name": name, "namespace": NS, "uid": f"uid-{name}"}, "spec": spec}
    )


def make_request(
    *,
    capabilities: list[str] | None = None,
    duration: str = "15m",
    status: dict[str, Any] | None = None,
    requester: str = TOKEN_SERVICE,
) -> accessrequests.AccessRequest:
    body: dict[str, Any] = {
        "metadata": {
            "name": "buyer-x7k2q",
            "namespace": NS,
            "generation": 1,
            "creationTimestamp": "2026-11-28T12:00:00Z",
        },
        "spec": {
            "agent": "buyer",
            "capabilities": capabilities or ["payments.authorize"],
            "justification": "Pay invoice INV-42 of 120 EUR",
            "duration": duration,
            "context": {"invoice": "INV-42"},
            "requester": {"username": requester, "groups": ["system:serviceaccounts"]},
            "agentUID": "u-1",
        },
    }
    if status is not None:
        body["status"] = status
    return accessrequests.AccessRequest.model_validate(body)


def binding(grant: grants.CapabilityGrant | None = None) -> dict[str, Any]:
    """What the webhook stamps on a decision made under ``grant`` (default: ``make_grant()``)."""
    grant = grant if grant is not None else make_grant()
    return {
        "name": grant.metadata.name,
        "uid": grant.metadata.uid,
        "policy": approvals.policy_fingerprint(grant.spec.approvers or grants.Approvers()),
    }


def decision(
    user: str,
    at: datetime.datetime = NOW,
    comment: str = "",
    *,
    under: list[grants.CapabilityGrant] | None = None,
) -> dict[str, Any]:
    return {
        "user": user,
        "groups": [],
        "time": at.isoformat(),
        "comment": comment,
        "grants": [binding(grant) for grant in (under if under is not None else [make_grant()])],
    }


def pending_status(**extra: Any) -> dict[str, Any]:
    status: dict[str, Any] = {"phase": "Pending", "expiresAt": "2026-11-28T12:10:00Z"}
    status.update(extra)
    return status


def resolve(
    requested: list[str],
    *,
    duration: str = "15m",
    all_grants: list[grants.CapabilityGrant] | None = None,
) -> approvals.ResolvedRequest:
    return approvals.resolve_request(
        agent=make_agent(),
        requested=requested,
        duration=approvals.parse_request_duration(duration),
        all_grants=all_grants if all_grants is not None else [make_grant()],
        now=NOW,
    )


# --- request validation -------------------------------------------------------------------


def test_resolve_request_names_the_grant_and_its_approvers() -> None:
    resolved = resolve(
        ["payments.authorize"],
        all_grants=[make_grant(approvers={"users": ["alice"], "minApprovals": 2})],
    )
    assert resolved.capabilities == ("payments.authorize",)
    assert resolved.duration == datetime.timedelta(minutes=15)
    assert [grant.name for grant in resolved.grants] == ["payments"]
    assert resolved.min_approvals == 2
    assert resolved.max_duration == datetime.timedelta(minutes=30)


def test_resolve_request_with_wildcard_grant_and_duplicates() -> None:
    grant = make_grant(
        capabilities=[{"name": "payments.*", "approval": "Required", "maxDuration": "1h"}]
    )
    resolved = resolve(["payments.refund", "payments.refund"], duration="1h", all_grants=[grant])
    assert resolved.capabilities == ("payments.refund",)


def test_resolve_request_refuses_unheld_capability() -> None:
    with pytest.raises(approvals.CapabilityNotRequestable) as caught:
        resolve(["payments.refund"])
    assert caught.value.message == (
        "agent 'buyer' holds no capability 'payments.refund': no CapabilityGrant in its "
        "namespace gives it"
    )
    assert caught.value.status == 400


def test_resolve_request_refuses_automatic_capability() -> None:
    with pytest.raises(approvals.CapabilityNotRequestable) as caught:
        resolve(["document.read"])
    assert caught.value.message == (
        "capability 'document.read' needs no approval: grant 'payments' gives it to agent "
        "'buyer' automatically; exchange for a token with it instead"
    )


def test_resolve_request_refuses_duration_over_max() -> None:
    with pytest.raises(approvals.InvalidAccessRequest) as caught:
        resolve(["payments.authorize"], duration="31m")
    assert caught.value.message == (
        "duration 31m is longer than the 30m that grant 'payments' allows for "
        "'payments.authorize' (its maxDuration)"
    )


def test_resolve_request_refuses_expired_grant() -> None:
    with pytest.raises(approvals.CapabilityNotRequestable):
        resolve(["payments.authorize"], all_grants=[make_grant(expires_at="2026-11-28T11:00:00Z")])


def test_resolve_request_refuses_bad_names_and_sizes() -> None:
    with pytest.raises(approvals.InvalidAccessRequest) as caught:
        resolve([])
    assert caught.value.message == "capabilities: request at least one capability"
    with pytest.raises(approvals.InvalidAccessRequest) as caught:
        resolve(["Payments"])
    assert caught.value.message == (
        "'Payments' is not a capability name: expected '<resource>.<action>' in lower case, "
        "such as 'payments.authorize'"
    )
    with pytest.raises(approvals.InvalidAccessRequest) as caught:
        resolve([f"a.b{i}" for i in range(33)])
    assert caught.value.message == "capabilities: at most 32 may be requested at once, got 33"


def test_parse_request_duration_errors() -> None:
    with pytest.raises(approvals.InvalidAccessRequest) as caught:
        approvals.parse_request_duration("forever")
    assert caught.value.message.startswith("duration: invalid duration 'forever'")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("   ", "justification is required: say why the agent needs this access"),
        ("x" * 2001, "justification is too long: 2001 characters, at most 2000"),
        (
            "pay\x1b[31m now",
            "justification must be plain text: control characters other than newline and tab "
            "are not allowed",
        ),
    ],
)
def test_justification_rules(text: str, message: str) -> None:
    with pytest.raises(approvals.InvalidAccessRequest) as caught:
        approvals.validate_justification(text)
    assert caught.value.message == message


def test_justification_accepts_multiline_plain_text() -> None:
    assert approvals.validate_justification("  line one\n\tline two  ") == "line one\n\tline two"


def test_context_rules() -> None:
    assert approvals.validate_context({"amount": "120 EUR"}) == {"amount": "120 EUR"}
    with pytest.raises(approvals.InvalidAccessRequest) as caught:
        approvals.validate_context({"bad key": "x"})
    assert caught.value.message == (
        "context key 'bad key' is invalid: use at most 63 letters, digits, '-', '_' or '.', "
        "starting and ending with a letter or digit"
    )
    with pytest.raises(approvals.InvalidAccessRequest) as caught:
        approvals.validate_context({f"k{i}": "v" for i in range(17)})
    assert caught.value.message == "context has 17 entries, at most 16 are allowed"
    with pytest.raises(approvals.InvalidAccessRequest) as caught:
        approvals.validate_context({"k": "v" * 257})
    assert (
        caught.value.message == "context value for 'k' must be plain text of at most 256 characters"
    )


def test_comment_rules() -> None:
    assert approvals.validate_comment("", kind="Approve") == ""
    with pytest.raises(approvals.InvalidAccessRequest) as caught:
        approvals.validate_comment("  ", kind="Deny")
    assert caught.value.message == "a denial needs a reason: say why the access is refused"
    with pytest.raises(approvals.InvalidAccessRequest) as caught:
        approvals.validate_comment("c" * 1025, kind="Approve")
    assert caught.value.message == "comment is too long: 1025 characters, at most 1024"


def test_resolve_existing_closes_when_grant_is_gone() -> None:
    request = make_request(status=pending_status())
    with pytest.raises(approvals.RequestClosed) as caught:
        approvals.resolve_existing(request=request, agent=make_agent(), all_grants=[], now=NOW)
    assert caught.value.message == (
        "access request 'buyer-x7k2q' can no longer be decided: agent 'buyer' holds no "
        "capability 'payments.authorize': no CapabilityGrant in its namespace gives it"
    )
    with pytest.raises(approvals.RequestClosed) as caught:
        approvals.resolve_existing(request=request, agent=None, all_grants=[], now=NOW)
    assert caught.value.message == (
        "access request 'buyer-x7k2q' is for agent 'buyer', which no longer exists"
    )


# --- eligibility --------------------------------------------------------------------------


def may_decide(
    user: str,
    *,
    groups: tuple[str, ...] = (),
    kind: approvals.DecisionKind = "Approve",
    reviews: dict[str, bool] | None = None,
    approvers: dict[str, Any] | None = None,
) -> None:
    resolved = resolve(
        ["payments.authorize"],
        all_grants=[make_grant(approvers=approvers or {"users": ["alice"], "groups": ["finance"]})],
    )
    approvals.require_may_decide(
        request=make_request(status=pending_status()),
        agent=make_agent(),
        resolved=resolved,
        decider=approvals.Identity(username=user, groups=groups),
        kind=kind,
        reviews=reviews or {},
    )


def test_listed_user_and_group_members_may_decide() -> None:
    may_decide("alice")
    may_decide("carol", groups=("finance",))
    may_decide("dave", reviews={"payments": True})


def test_unlisted_user_is_refused_with_the_grant_named() -> None:
    with pytest.raises(approvals.NotEligible) as caught:
        may_decide("bob", groups=("system:authenticated",), reviews={"payments": False})
    assert caught.value.message == (
        "user 'bob' may not approve access request 'buyer-x7k2q': not listed in the approvers "
        "of CapabilityGrant 'payments' and not allowed verb 'approve' on capabilitygrants "
        "'payments' in namespace 'shop'; ask an admin to add you to spec.approvers of that grant"
    )
    assert caught.value.status == 403


def test_grants_to_review_skips_listed() -> None:
    resolved = resolve(
        ["payments.authorize"], all_grants=[make_grant(approvers={"users": ["alice"]})]
    )
    alice = approvals.Identity(username="alice")
    bob = approvals.Identity(username="bob")
    assert approvals.grants_to_review(decider=alice, resolved=resolved) == []
    assert [g.name for g in approvals.grants_to_review(decider=bob, resolved=resolved)] == [
        "payments"
    ]


def test_agent_service_account_cannot_approve_itself() -> None:
    with pytest.raises(approvals.SelfApproval) as caught:
        may_decide(AGENT_SA, reviews={"payments": True}, approvers={"users": [AGENT_SA]})
    assert caught.value.message == (
        "system:serviceaccount:shop:buyer-sa is the service account of agent 'buyer' and may "
        "not approve its own access requests"
    )


def test_requester_cannot_decide_its_own_request() -> None:
    with pytest.raises(approvals.SelfApproval) as caught:
        may_decide(TOKEN_SERVICE, kind="Deny", approvers={"users": [TOKEN_SERVICE]})
    assert caught.value.message == (
        f"{TOKEN_SERVICE} filed access request 'buyer-x7k2q' and may not deny it"
    )


def test_identity_from_user_info() -> None:
    identity = approvals.Identity.from_user_info(
        {"username": "alice", "groups": ["finance"], "uid": "42"}
    )
    assert identity == approvals.Identity(username="alice", groups=("finance",), uid="42")
    assert identity.requester().username == "alice"
    with pytest.raises(approvals.ForbiddenChange) as caught:
        approvals.Identity.from_user_info({})
    assert caught.value.message == "the API server sent no authenticated user for this request"


def test_service_account_username() -> None:
    assert approvals.service_account_username(namespace="ns", name="sa") == (
        "system:serviceaccount:ns:sa"
    )


# --- decisions on status -------------------------------------------------------------------


def status(**fields: Any) -> accessrequests.AccessRequestStatus:
    return accessrequests.AccessRequestStatus.model_validate(fields)


def test_decision_added_finds_the_one_new_entry() -> None:
    old = status(**pending_status(approvals=[decision("alice")]))
    new = status(**pending_status(approvals=[decision("alice"), decision("carol")]))
    added = approvals.decision_added(old=old, new=new)
    assert added is not None
    assert (added.kind, added.index, added.decision.user) == ("Approve", 1, "carol")
    assert approvals.decision_added(old=old, new=old) is None
    denied = approvals.decision_added(
        old=None, new=status(**pending_status(denials=[decision("x", comment="no")]))
    )
    assert denied is not None
    assert denied.kind == "Deny"


def test_decision_added_refuses_edits_removals_and_batches() -> None:
    old = status(**pending_status(approvals=[decision("alice")]))
    with pytest.raises(approvals.ForbiddenChange) as caught:
        approvals.decision_added(old=old, new=status(**pending_status()))
    assert (
        caught.value.message == "status.approvals: recorded decisions cannot be edited or removed"
    )
    with pytest.raises(approvals.ForbiddenChange):
        approvals.decision_added(
            old=old, new=status(**pending_status(approvals=[decision("mallory")]))
        )
    with pytest.raises(approvals.ForbiddenChange) as caught:
        approvals.decision_added(
            old=None,
            new=status(**pending_status(approvals=[decision("a"), decision("b")])),
        )
    assert caught.value.message == "a status write may add only one approval or denial at a time"


def test_stamp_decision_refuses_someone_elses_name() -> None:
    added = approvals.AddedDecision(
        kind="Approve", index=0, decision=accessrequests.Decision(user="alice", time=NOW)
    )
    with pytest.raises(approvals.ForbiddenChange) as caught:
        approvals.stamp_decision(
            added=added,
            decider=approvals.Identity(username="bob"),
            resolved=resolve(["payments.authorize"]),
            now=NOW,
        )
    assert caught.value.message == (
        "an approval or denial is recorded in the caller's own name: 'bob' cannot record one "
        "for 'alice'"
    )


def test_unstamped_placeholder_never_counts() -> None:
    request = make_request(status=pending_status(approvals=[decision("")]))
    assert evaluate(request).phase == "Pending"


def test_stamp_decision_fills_the_authenticated_identity() -> None:
    forged = accessrequests.GrantBinding(name="payments", uid="old-uid", policy="sha256:x")
    added = approvals.AddedDecision(
        kind="Approve",
        index=0,
        decision=accessrequests.Decision(
            user="", time=NOW - datetime.timedelta(days=1), comment=" ok ", grants=[forged]
        ),
    )
    stamped = approvals.stamp_decision(
        added=added,
        decider=approvals.Identity(username="bob", groups=("devs",)),
        resolved=resolve(["payments.authorize"]),
        now=NOW + datetime.timedelta(microseconds=5),
    )
    assert (stamped.user, stamped.groups, stamped.time, stamped.comment) == (
        "bob",
        ["devs"],
        NOW,
        "ok",
    )
    # The grants come from the live cluster, never from the client.
    assert [item.to_api() for item in stamped.grants] == [binding()]


def check_added(
    request: accessrequests.AccessRequest,
    user: str,
    *,
    entry_user: str | None = None,
    stamped_under: grants.CapabilityGrant | None = None,
) -> None:
    stamp = accessrequests.GrantBinding.model_validate(binding(stamped_under))
    added = approvals.AddedDecision(
        kind="Approve",
        index=0,
        decision=accessrequests.Decision(user=entry_user or user, time=NOW, grants=[stamp]),
    )
    approvals.check_added_decision(
        request_before=request,
        added=added,
        decider=approvals.Identity(username=user),
        resolved=resolve(["payments.authorize"]),
        now=NOW,
    )


def test_check_added_decision_accepts_first_decision() -> None:
    check_added(make_request(status=pending_status()), "alice")


def test_check_added_decision_refuses_a_stamp_of_other_grants() -> None:
    """The validating webhook re-checks the grants the mutating webhook stamped: a grant that was
    re-created (new UID) or whose approvers changed in between refuses the write."""
    recreated = make_grant().model_copy(deep=True)
    recreated.metadata.uid = "uid-payments-old"
    stricter = make_grant(approvers={"users": ["alice"], "minApprovals": 2})
    for stamped_under in (recreated, stricter):
        with pytest.raises(approvals.ForbiddenChange) as caught:
            check_added(make_request(status=pending_status()), "alice", stamped_under=stamped_under)
        assert caught.value.message == (
            "the decision on access request 'buyer-x7k2q' must record the grants it is made "
            "under as agentauth stamps them (their name, UID and approvers); they changed while "
            "it was written: try again"
        )


def test_check_added_decision_refuses_forged_name() -> None:
    with pytest.raises(approvals.ForbiddenChange) as caught:
        check_added(make_request(status=pending_status()), "bob", entry_user="alice")
    assert caught.value.message == (
        "an approval or denial is recorded in the caller's own name: 'bob' cannot record "
        "one for 'alice'"
    )


def test_check_added_decision_refuses_closed_and_expired_and_duplicate() -> None:
    with pytest.raises(approvals.RequestClosed) as caught:
        check_added(make_request(status={"phase": "Denied"}), "alice")
    assert caught.value.message == (
        "access request 'buyer-x7k2q' is Denied; only Pending requests can be approved or denied"
    )
    with pytest.raises(approvals.RequestClosed) as caught:
        check_added(make_request(), "alice")
    assert caught.value.message == (
        "access request 'buyer-x7k2q' is not yet pending; only Pending requests can be "
        "approved or denied"
    )
    with pytest.raises(approvals.RequestClosed) as caught:
        check_added(make_request(status=pending_status(expiresAt="2026-11-28T12:00:00Z")), "alice")
    assert caught.value.message == (
        "access request 'buyer-x7k2q' expired at 2026-11-28T12:00:00Z; the agent must file a "
        "new request"
    )
    with pytest.raises(approvals.DuplicateDecision) as caught:
        check_added(make_request(status=pending_status(approvals=[decision("alice")])), "alice")
    assert caught.value.message == "alice has already approved access request 'buyer-x7k2q'"


# --- status transitions --------------------------------------------------------------------


QUORUM_OF_TWO = make_grant(approvers={"users": ["alice", "bob", "carol"], "minApprovals": 2})


def resolved_under(grant: grants.CapabilityGrant | None) -> approvals.ResolvedRequest | None:
    """The request for payments.authorize resolved against ``grant`` (``None``: withdrawn)."""
    return resolve(["payments.authorize"], all_grants=[grant]) if grant is not None else None


def check_update(
    before: dict[str, Any] | None,
    after: dict[str, Any],
    *,
    grant: grants.CapabilityGrant | None = make_grant(),  # noqa: B008 - immutable in use
    now: datetime.datetime = NOW,
) -> None:
    approvals.check_status_update(
        old=make_request(status=before),
        new=status(**after),
        resolved=resolved_under(grant),
        now=now,
    )


def test_legal_transitions() -> None:
    check_update(None, pending_status())
    approved = pending_status(
        phase="Approved",
        approvals=[decision("alice")],
        grantedUntil="2026-11-28T12:15:00Z",
    )
    check_update(pending_status(approvals=[decision("alice")]), approved)
    check_update(
        pending_status(denials=[decision("bob", comment="no")]),
        pending_status(phase="Denied", denials=[decision("bob", comment="no")]),
    )
    check_update(
        pending_status(),
        pending_status(phase="Expired"),
        now=datetime.datetime(2026, 11, 28, 12, 10, tzinfo=datetime.UTC),
    )
    check_update(
        approved,
        {**approved, "phase": "Expired"},
        now=datetime.datetime(2026, 11, 28, 12, 15, tzinfo=datetime.UTC),
    )


def test_denied_cannot_be_reopened() -> None:
    denied = pending_status(phase="Denied", denials=[decision("bob", comment="no")])
    with pytest.raises(approvals.ForbiddenChange) as caught:
        check_update(denied, {**denied, "phase": "Pending"})
    assert caught.value.message == (
        "access request 'buyer-x7k2q' is Denied and cannot be re-opened or changed to Pending; "
        "the agent must file a new request"
    )


def test_approval_needs_quorum_and_no_denial() -> None:
    with pytest.raises(approvals.ForbiddenChange) as caught:
        alice = decision("alice", under=[QUORUM_OF_TWO])
        check_update(
            pending_status(approvals=[alice]),
            pending_status(
                phase="Approved", approvals=[alice], grantedUntil="2026-11-28T12:15:00Z"
            ),
            grant=QUORUM_OF_TWO,
        )
    assert caught.value.message == (
        "access request 'buyer-x7k2q' has 1 of the 2 distinct approvals it needs under its "
        "grants as they are now"
    )
    with pytest.raises(approvals.ForbiddenChange) as caught:
        check_update(
            pending_status(),
            pending_status(
                phase="Approved",
                approvals=[decision("alice")],
                denials=[decision("bob", comment="no")],
                grantedUntil="2026-11-28T12:15:00Z",
            ),
        )
    assert caught.value.message == (
        "access request 'buyer-x7k2q' has a denial and cannot be approved (one denial decides)"
    )
    with pytest.raises(approvals.ForbiddenChange) as caught:
        check_update(
            pending_status(approvals=[decision("alice")]),
            pending_status(phase="Approved", approvals=[decision("alice")]),
            grant=None,
        )
    assert caught.value.message == (
        "access request 'buyer-x7k2q' can no longer be approved: its capabilities are no longer "
        "granted with approval Required"
    )


def test_granted_until_is_bounded_by_duration() -> None:
    with pytest.raises(approvals.ForbiddenChange) as caught:
        check_update(
            pending_status(approvals=[decision("alice")]),
            pending_status(
                phase="Approved",
                approvals=[decision("alice")],
                grantedUntil="2026-11-28T18:00:00Z",
            ),
        )
    assert caught.value.message == (
        "status.grantedUntil 2026-11-28T18:00:00Z is later than the approval time plus the "
        "requested 15m (2026-11-28T12:15:00Z)"
    )


def test_expiry_cannot_be_early_and_deadlines_are_fixed() -> None:
    with pytest.raises(approvals.ForbiddenChange) as caught:
        check_update(pending_status(), pending_status(phase="Expired"))
    assert caught.value.message == (
        "access request 'buyer-x7k2q' cannot expire before its deadline 2026-11-28T12:10:00Z"
    )
    with pytest.raises(approvals.ForbiddenChange) as caught:
        check_update(pending_status(), pending_status(expiresAt="2026-11-29T00:00:00Z"))
    assert (
        caught.value.message == "status.expiresAt of access request 'buyer-x7k2q' cannot be changed"
    )
    with pytest.raises(approvals.ForbiddenChange) as caught:
        check_update(pending_status(), pending_status(phase="Denied"))
    assert caught.value.message == "access request 'buyer-x7k2q' has no denial and cannot be Denied"
    with pytest.raises(approvals.ForbiddenChange) as caught:
        check_update(pending_status(), pending_status(grantedUntil="2026-11-28T12:15:00Z"))
    assert caught.value.message == "status.grantedUntil is set only when a request is approved"
    with pytest.raises(approvals.ForbiddenChange) as caught:
        check_update(None, {"phase": "Approved"})
    assert caught.value.message == (
        "access request 'buyer-x7k2q': phase transition new -> Approved is not allowed"
    )


# --- evaluation ----------------------------------------------------------------------------


def evaluate(
    request: accessrequests.AccessRequest,
    *,
    grant: grants.CapabilityGrant | None = make_grant(),  # noqa: B008 - immutable in use
    now: datetime.datetime = NOW,
) -> accessrequests.AccessRequestStatus:
    return approvals.evaluate(
        request,
        resolved=resolved_under(grant),
        pending_timeout=approvals.DEFAULT_PENDING_TIMEOUT,
        now=now,
    )


def test_new_request_becomes_pending_with_deadline_from_creation() -> None:
    result = evaluate(make_request(), now=NOW + datetime.timedelta(seconds=3))
    assert result.phase == "Pending"
    assert result.expires_at == datetime.datetime(2026, 11, 28, 12, 10, tzinfo=datetime.UTC)
    assert result.observed_generation == 1
    (condition,) = result.conditions
    assert (condition.type, condition.status, condition.reason, condition.message) == (
        "Granted",
        "False",
        "AwaitingApproval",
        "0 of 1 approvals; expires at 2026-11-28T12:10:00Z",
    )
    # Evaluating the written status again changes nothing (no patch, no event storm).
    again = evaluate(make_request(status=result.to_api()), now=NOW + datetime.timedelta(seconds=9))
    assert again == result


def test_quorum_of_two_distinct_approvers() -> None:
    under = [QUORUM_OF_TWO]
    one = make_request(status=pending_status(approvals=[decision("alice", under=under)]))
    assert evaluate(one, grant=QUORUM_OF_TWO).phase == "Pending"
    later = NOW + datetime.timedelta(minutes=1)
    two = make_request(
        status=pending_status(
            approvals=[decision("alice", under=under), decision("carol", at=later, under=under)]
        )
    )
    result = evaluate(two, grant=QUORUM_OF_TWO)
    assert result.phase == "Approved"
    assert result.granted_until == later + datetime.timedelta(minutes=15)
    assert result.conditions[0].message == (
        "approved by alice, carol; access until 2026-11-28T12:16:00Z"
    )


def test_one_denial_wins() -> None:
    request = make_request(
        status=pending_status(
            approvals=[decision("alice")], denials=[decision("bob", comment="too much")]
        )
    )
    result = evaluate(request)
    assert result.phase == "Denied"
    assert result.granted_until is None
    assert result.conditions[0].message == 'denied by bob; reason: "too much"'


def test_pending_expires_and_approved_ends() -> None:
    expired = evaluate(
        make_request(status=pending_status()),
        now=datetime.datetime(2026, 11, 28, 12, 10, tzinfo=datetime.UTC),
    )
    assert expired.phase == "Expired"
    assert expired.conditions[0].reason == "RequestExpired"
    approved = evaluate(make_request(status=pending_status(approvals=[decision("alice")])))
    assert approved.phase == "Approved"
    ended = evaluate(
        make_request(status=approved.to_api()),
        now=datetime.datetime(2026, 11, 28, 12, 15, tzinfo=datetime.UTC),
    )
    assert ended.phase == "Expired"
    assert ended.conditions[0].reason == "GrantEnded"
    assert approvals.next_deadline(approved) == datetime.datetime(
        2026, 11, 28, 12, 15, tzinfo=datetime.UTC
    )
    assert approvals.next_deadline(ended) is None


def test_withdrawn_grant_never_approves() -> None:
    result = evaluate(
        make_request(status=pending_status(approvals=[decision("alice")])), grant=None
    )
    assert result.phase == "Pending"
    assert result.conditions[0].reason == "NoLongerGrantable"


def test_evaluated_status_passes_the_status_check() -> None:
    request = make_request(status=pending_status(approvals=[decision("alice")]))
    result = evaluate(request)
    approvals.check_status_update(
        old=request, new=result, resolved=resolved_under(make_grant()), now=NOW
    )


# --- token exchange ----------------------------------------------------------------------


# --- events -------------------------------------------------------------------------------


def test_events_carry_justification_and_approve_command() -> None:
    events = approvals.planned_events(make_request(status=pending_status()), now=NOW)
    assert [(e.key, e.on, e.reason) for e in events] == [
        ("requested-accessrequest", "AccessRequest", "AccessRequested"),
        ("requested-agent", "Agent", "AccessRequested"),
    ]
    assert events[0].message == (
        "Agent buyer requests payments.authorize for 15m | approve: kubectl agentauth approve "
        'buyer-x7k2q -n shop | deny: kubectl agentauth deny buyer-x7k2q -n shop --reason "..." '
        '| context: invoice="INV-42" | justification from the requester: "Pay invoice INV-42 of '
        '120 EUR"'
    )
    assert events[1].message.startswith("buyer-x7k2q: Agent buyer requests")


def test_events_follow_decisions_and_skip_stale() -> None:
    denied = make_request(
        status=pending_status(phase="Denied", denials=[decision("bob", comment="no")])
    )
    keys = [e.key for e in approvals.planned_events(denied, now=NOW)]
    assert keys == [
        "requested-accessrequest",
        "requested-agent",
        "denied-accessrequest",
        "denied-agent",
    ]
    assert approvals.planned_events(denied, now=NOW + datetime.timedelta(hours=2)) == []
    assert approvals.planned_events(make_request(), now=NOW) == []
    ended = make_request(
        status={
            "phase": "Expired",
            "approvals": [decision("alice", comment="ok")],
            "grantedUntil": "2026-11-28T12:15:00Z",
        }
    )
    reasons = [e.reason for e in approvals.planned_events(ended, now=NOW)]
    assert reasons == [
        "AccessRequested",
        "AccessRequested",
        "ApprovalRecorded",
        "AccessApproved",
        "AccessApproved",
        "AccessEnded",
    ]
    expired = make_request(status=pending_status(phase="Expired"))
    assert approvals.planned_events(expired, now=NOW)[-1].reason == "AccessRequestExpired"


def test_exchange_never_widens_an_approval_to_a_pattern() -> None:
    """Regression: an approved request for payments.authorize must not grant scope payments.*."""
    from agentauth.domain import errors, exchanging

    agent = make_agent()
    grant = make_grant(
        capabilities=[{"name": "payments.*", "approval": "Required", "maxDuration": "1h"}]
    )
    approved = make_request(
        status={
            "phase": "Approved",
            "approvals": [decision("alice")],
            "grantedUntil": "2026-11-28T12:15:00Z",
        }
    )
    held = approvals.domain_capabilities.effective_capabilities(agent, [grant], now=NOW)

    def scope(requested: tuple[str, ...]) -> tuple[str, ...]:
        return exchanging.select_scope(
            agent=agent, held=held, requests=[approved], requested=requested, now=NOW
        ).scope

    assert scope(("payments.authorize",)) == ("payments.authorize",)
    with pytest.raises(errors.InvalidScope):
        scope(("payments.*",))


def test_each_grant_of_a_request_needs_its_own_quorum_under_its_current_identity() -> None:
    """A request spanning two grants: approvals count per grant, under that grant's UID and
    approvers; re-creating one of the grants voids the approvals for the whole request."""
    pay = make_grant("pay", capabilities=[{"name": "payments.authorize", "approval": "Required"}])
    refund = make_grant(
        "refund",
        capabilities=[{"name": "payments.refund", "approval": "Required"}],
        approvers={"users": ["alice", "carol"], "minApprovals": 2},
    )
    both = [pay, refund]
    request = make_request(
        capabilities=["payments.authorize", "payments.refund"],
        status=pending_status(
            approvals=[decision("alice", under=both), decision("carol", under=both)]
        ),
    )
    resolved = approvals.resolve_existing(
        request=request, agent=make_agent(), all_grants=both, now=NOW
    )
    assert resolved.min_approvals == 2
    status = approvals.evaluate(
        request,
        resolved=resolved,
        pending_timeout=approvals.DEFAULT_PENDING_TIMEOUT,
        now=NOW,
    )
    assert status.phase == "Approved"
    recreated = refund.model_copy(deep=True)
    recreated.metadata.uid = "uid-refund-again"
    now_resolved = approvals.resolve_existing(
        request=request, agent=make_agent(), all_grants=[pay, recreated], now=NOW
    )
    approved = make_request(
        capabilities=["payments.authorize", "payments.refund"], status=status.to_api()
    )
    approvals.require_still_approved(approved, resolved=resolved)
    with pytest.raises(approvals.ApprovalWithdrawn) as caught:
        approvals.require_still_approved(approved, resolved=now_resolved)
    assert caught.value.message == (
        "the approvals of access request 'buyer-x7k2q' were given under grants that no longer "
        "exist as they were (deleted, re-created, or their approvers changed)"
    )
    withdrawn = approvals.evaluate(
        approved,
        resolved=now_resolved,
        pending_timeout=approvals.DEFAULT_PENDING_TIMEOUT,
        now=NOW,
    )
    assert (withdrawn.phase, withdrawn.conditions[0].reason) == ("Expired", "ApprovalWithdrawn")
    approvals.check_status_update(old=approved, new=withdrawn, resolved=now_resolved, now=NOW)
    with pytest.raises(approvals.ForbiddenChange):  # not while the approvals still hold
        approvals.check_status_update(old=approved, new=withdrawn, resolved=resolved, now=NOW)
    events = approvals.planned_events(approved.model_copy(update={"status": withdrawn}), now=NOW)
    assert events[-1].reason == "ApprovalWithdrawn"
