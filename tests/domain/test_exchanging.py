"""The exchange decision: request parsing, pod binding, agent usability, scope, audience,
lifetime and introspection, over real snapshots (real models, real keys)."""

from __future__ import annotations

import dataclasses
from datetime import timedelta

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519

from agentauth.domain import errors, exchanging, jose, keys, serviceaccounts, tokens
from agentauth.domain.models import AccessRequest, Agent, CapabilityGrant
from tests.domain import tokenkit
from tests.domain.tokenkit import ISSUER, NOW, TRUST_DOMAIN

JWT = exchanging.TOKEN_TYPE_JWT
IDENTITY = serviceaccounts.ServiceAccountIdentity(
    namespace="team-a",
    service_account="research-sa",
    service_account_uid="sa-uid-1",
    pod_name="research-0",
    pod_uid="pod-uid-1",
    expires_at=0,
    jti=None,
)


def decide(
    snapshot: exchanging.Snapshot,
    *,
    identity: serviceaccounts.ServiceAccountIdentity = IDENTITY,
    **target: object,
) -> exchanging.Decision:
    return exchanging.decide_for_service_account(
        identity=identity,
        target=exchanging.Target(**target),  # type: ignore[arg-type]
        snapshot=snapshot,
        issuer=ISSUER,
        trust_domain=TRUST_DOMAIN,
        now=NOW,
    )


def refused(kind: type[errors.OAuthError], snapshot: exchanging.Snapshot, **kw: object) -> str:
    with pytest.raises(kind) as caught:
        decide(snapshot, **kw)  # type: ignore[arg-type]
    assert type(caught.value) is kind
    return caught.value.description


# -- request parsing ---------------------------------------------------------------------


def form(**values: str | list[str]) -> dict[str, list[str]]:
    base: dict[str, list[str]] = {
        "grant_type": [exchanging.GRANT_TYPE_TOKEN_EXCHANGE],
        "subject_token": ["t"],
        "subject_token_type": [JWT],
    }
    for key, value in values.items():
        if value == "":
            base.pop(key, None)
        else:
            base[key] = value if isinstance(value, list) else [value]
    return base


@pytest.mark.parametrize(
    ("values", "kind", "description"),
    [
        ({"grant_type": ""}, errors.InvalidRequest, "missing parameter: grant_type"),
        (
            {"grant_type": "password"},
            errors.UnsupportedGrantType,
            "grant_type 'password' is not supported",
        ),
        ({"subject_token": ""}, errors.InvalidRequest, "missing parameter: subject_token"),
        (
            {"subject_token_type": ""},
            errors.InvalidRequest,
            "missing parameter: subject_token_type",
        ),
        (
            {"subject_token_type": "urn:example:saml"},
            errors.UnsupportedTokenType,
            "subject_token_type 'urn:example:saml' is not supported",
        ),
        ({"actor_token": "a"}, errors.InvalidRequest, "missing parameter: actor_token_type"),
        (
            {"subject_token": ["a", "b"]},
            errors.InvalidRequest,
            "parameter subject_token is repeated",
        ),
        (
            {"scope": "Document.READ"},
            errors.InvalidScope,
            "scope entry 'Document.READ' is not a capability name",
        ),
        (
            {"audience": "https://a.example", "resource": "https://b.example"},
            errors.InvalidTarget,
            "only one audience/resource may be requested per token",
        ),
        (
            {"expires_in": "-5"},
            errors.InvalidRequest,
            "expires_in must be a positive number of seconds",
        ),
    ],
)
def test_malformed_requests(
    values: dict[str, str], kind: type[errors.OAuthError], description: str
) -> None:
    with pytest.raises(kind) as caught:
        exchanging.parse_request(form(**values))
    assert caught.value.description == description


def test_well_formed_request() -> None:
    parsed = exchanging.parse_request(
        form(scope="document.read  document.read", resource="https://tool.example", expires_in="60")
    )
    assert parsed.target == exchanging.Target(
        ("document.read",), "https://tool.example", timedelta(seconds=60)
    )


# -- pod binding -------------------------------------------------------------------------


def test_bound_pod_gets_the_agents_automatic_capabilities() -> None:
    decision = decide(tokenkit.snapshot())
    assert decision.subject == "aauth:research.team-a@example.test"
    assert decision.scope == ("document.read", "document.write")
    assert decision.audience == ISSUER
    assert decision.lifetime == timedelta(minutes=2)  # the default tokenTTL
    assert decision.pod is not None and decision.pod.uid == "pod-uid-1"


def test_token_of_a_deleted_pod() -> None:
    assert (
        refused(errors.InvalidGrant, tokenkit.snapshot(pods=[]))
        == "pod team-a/research-0 bound to the token no longer exists"
    )
    recreated = tokenkit.snapshot(pods=[tokenkit.pod(uid="new-uid")])
    assert (
        refused(errors.InvalidGrant, recreated)
        == "pod team-a/research-0 bound to the token no longer exists"
    )


def test_token_of_a_terminating_pod() -> None:
    terminating = exchanging.Pod.from_api(
        {
            "metadata": {
                "namespace": "team-a",
                "name": "research-0",
                "uid": "pod-uid-1",
                "labels": {"agentauth.dev/agent": "research"},
                "deletionTimestamp": "2026-11-28T12:00:00Z",
            },
            "spec": {"serviceAccountName": "research-sa"},
        }
    )
    assert terminating.terminating
    assert (
        refused(errors.InvalidGrant, tokenkit.snapshot(pods=[terminating]))
        == "pod team-a/research-0 bound to the token is being deleted"
    )


def test_pod_without_the_agent_label() -> None:
    snapshot = tokenkit.snapshot(pods=[tokenkit.pod(agent_label=None)])
    assert (
        refused(errors.InvalidGrant, snapshot)
        == "pod team-a/research-0 has no agentauth.dev/agent label"
    )


def test_pod_labelled_for_another_agent() -> None:
    other = tokenkit.agent("billing", uid="agent-uid-2", service_account="billing-sa")
    snapshot = tokenkit.snapshot(
        agents=[tokenkit.agent(), other], pods=[tokenkit.pod(agent_label="billing")]
    )
    assert (
        refused(errors.InvalidGrant, snapshot)
        == "service account research-sa is not the service account of agent team-a/billing"
    )


def test_pod_labelled_for_an_agent_that_does_not_exist() -> None:
    snapshot = tokenkit.snapshot(pods=[tokenkit.pod(agent_label="ghost")])
    assert refused(errors.InvalidGrant, snapshot) == "agent team-a/ghost does not exist"


def test_service_account_mismatch() -> None:
    snapshot = tokenkit.snapshot(agents=[tokenkit.agent(service_account="other-sa")])
    assert (
        refused(errors.InvalidGrant, snapshot)
        == "service account research-sa is not the service account of agent team-a/research"
    )


def test_pod_selector_must_match() -> None:
    snapshot = tokenkit.snapshot(
        agents=[tokenkit.agent(podSelector={"matchLabels": {"role": "worker"}})]
    )
    assert (
        refused(errors.InvalidGrant, snapshot)
        == "pod team-a/research-0 does not match the podSelector of agent team-a/research"
    )
    matching = tokenkit.snapshot(
        agents=[tokenkit.agent(podSelector={"matchLabels": {"role": "worker"}})],
        pods=[tokenkit.pod(labels={"role": "worker"})],
    )
    assert decide(matching).scope


# -- agent usability ---------------------------------------------------------------------


def test_suspended_agent() -> None:
    snapshot = tokenkit.snapshot(agents=[tokenkit.agent(suspended=True)])
    assert refused(errors.InvalidGrant, snapshot) == "agent team-a/research is suspended"


def test_agent_not_ready_is_refused_with_the_controllers_reason() -> None:
    snapshot = tokenkit.snapshot(
        agents=[tokenkit.agent(ready="False", ready_reason="ServiceAccountNotFound")]
    )
    assert (
        refused(errors.InvalidGrant, snapshot)
        == "agent team-a/research is not ready: ServiceAccountNotFound"
    )


def test_no_capabilities_reason_is_recomputed_and_no_status_is_usable() -> None:
    stale = tokenkit.snapshot(agents=[tokenkit.agent(ready="False", ready_reason="NoCapabilities")])
    assert decide(stale).scope == ("document.read", "document.write")
    assert decide(tokenkit.snapshot(agents=[tokenkit.agent(ready=None)])).scope


# -- scope -------------------------------------------------------------------------------


def test_down_scoping() -> None:
    assert decide(tokenkit.snapshot(), scope=("document.read",)).scope == ("document.read",)


def test_scope_escalation_is_invalid_scope() -> None:
    description = refused(errors.InvalidScope, tokenkit.snapshot(), scope=("document.delete",))
    assert description == "capability document.delete is not granted to agent team-a/research"


def test_capability_needing_approval_without_one() -> None:
    description = refused(errors.InvalidScope, tokenkit.snapshot(), scope=("payments.authorize",))
    assert (
        description
        == "capability payments.authorize requires approval: file an AccessRequest for agent "
        "team-a/research"
    )


def test_approved_access_request_adds_the_capability_and_bounds_exp() -> None:
    until = NOW + timedelta(minutes=2)
    approved = tokenkit.access_request(
        "ar-1", capabilities=["payments.authorize"], granted_until=until
    )
    snapshot = tokenkit.snapshot(access_requests=[approved])
    decision = decide(snapshot, scope=("payments.authorize",))
    assert decision.scope == ("payments.authorize",)
    assert decision.lifetime == timedelta(minutes=2)
    assert decision.access_requests == ("ar-1",)
    default = decide(snapshot)
    assert default.scope == ("document.read", "document.write", "payments.authorize")
    assert default.lifetime == timedelta(minutes=2)


def test_approvals_of_a_deleted_agent_do_not_pass_to_its_namesake() -> None:
    """A request counts only for the Agent object it was filed for (spec.agentUID), whatever the
    timestamps or ownerReferences say (kubectl delete --cascade=orphan strips the latter)."""
    until = NOW + timedelta(minutes=2)

    def filed(name: str, *, agent_uid: str, **metadata: object) -> AccessRequest:
        body = tokenkit.access_request(
            name, capabilities=["payments.authorize"], granted_until=until, agent_uid=agent_uid
        ).to_api()
        body["metadata"].update(metadata)
        return AccessRequest.model_validate(body)

    # Filed for the predecessor in the very second the successor was created, orphaned.
    orphaned = filed("ar-orphaned", agent_uid="old-agent-uid", creationTimestamp=NOW.isoformat())
    unstamped = AccessRequest.model_validate(
        {
            **filed("ar-unstamped", agent_uid="x").to_api(),
            "spec": {
                "agent": "research",
                "capabilities": ["payments.authorize"],
                "justification": "quarter close",
            },
        }
    )
    successor_body = tokenkit.agent(uid="new-agent-uid").to_api()
    successor_body["metadata"]["creationTimestamp"] = NOW.isoformat()
    successor = Agent.model_validate(successor_body)
    snapshot = tokenkit.snapshot(agents=[successor], access_requests=[orphaned, unstamped])
    assert snapshot.access_requests_of(successor, now=NOW) == []
    assert refused(errors.InvalidScope, snapshot, scope=("payments.authorize",)) == (
        "capability payments.authorize requires approval: file an AccessRequest for agent "
        "team-a/research"
    )
    same = tokenkit.agent(uid="old-agent-uid")
    assert [r.metadata.name for r in snapshot.access_requests_of(same, now=NOW)] == ["ar-orphaned"]


def test_approvals_die_with_their_grant_and_its_approver_policy() -> None:
    """Deleting a grant voids every approval made under it, even when a grant of the same name
    (new UID) is created again; changing who approves (or the quorum) voids them too."""
    until = NOW + timedelta(minutes=2)
    original = tokenkit.grant("base", capabilities=tokenkit.STANDARD_CAPABILITIES)
    approved = tokenkit.access_request(
        "ar-1", capabilities=["payments.authorize"], granted_until=until, under=[original]
    )
    agent = tokenkit.agent()
    assert decide(tokenkit.snapshot(access_requests=[approved]), scope=("payments.authorize",))
    recreated = CapabilityGrant.model_validate(
        {**original.to_api(), "metadata": {**original.to_api()["metadata"], "uid": "uid-new"}}
    )
    stricter = CapabilityGrant.model_validate(
        {
            **original.to_api(),
            "spec": {
                **original.to_api()["spec"],
                "approvers": {"users": ["carol", "dave"], "minApprovals": 2},
            },
        }
    )
    for grant in (recreated, stricter):
        snapshot = tokenkit.snapshot(grants=[grant], access_requests=[approved])
        (seen,) = snapshot.access_requests_of(agent, now=NOW)
        assert seen.status is not None
        assert (seen.status.phase, seen.status.conditions[0].reason) == (
            "Expired",
            "ApprovalWithdrawn",
        )
        assert refused(errors.InvalidScope, snapshot, scope=("payments.authorize",)) == (
            "capability payments.authorize requires approval: file an AccessRequest for agent "
            "team-a/research"
        )


@pytest.mark.parametrize(
    "request_",
    [
        tokenkit.access_request(
            "old", capabilities=["payments.authorize"], granted_until=NOW - timedelta(seconds=1)
        ),
        tokenkit.access_request("pending", capabilities=["payments.authorize"], phase="Pending"),
        tokenkit.access_request(
            "denied",
            capabilities=["payments.authorize"],
            phase="Denied",
            granted_until=NOW + timedelta(hours=1),
        ),
        tokenkit.access_request(
            "other",
            capabilities=["payments.authorize"],
            agent_name="billing",
            granted_until=NOW + timedelta(hours=1),
        ),
    ],
)
def test_unusable_access_requests_do_not_count(request_: object) -> None:
    snapshot = tokenkit.snapshot(access_requests=[request_])  # type: ignore[list-item]
    assert decide(snapshot).scope == ("document.read", "document.write")
    refused(errors.InvalidScope, snapshot, scope=("payments.authorize",))


def test_wildcard_grant_covers_concrete_requests() -> None:
    snapshot = tokenkit.snapshot(
        grants=[tokenkit.grant("wild", capabilities=[{"name": "document.*"}])]
    )
    assert decide(snapshot, scope=("document.archive",)).scope == ("document.archive",)
    assert decide(snapshot).scope == ("document.*",)
    refused(errors.InvalidScope, snapshot, scope=("payments.refund",))


def test_deleted_or_expired_grant_takes_effect_immediately() -> None:
    assert decide(tokenkit.snapshot(grants=[]), scope=None).scope == ()
    expired = tokenkit.grant(
        "old", capabilities=tokenkit.STANDARD_CAPABILITIES, expires_at=NOW - timedelta(seconds=1)
    )
    refused(errors.InvalidScope, tokenkit.snapshot(grants=[expired]), scope=("document.read",))


# -- lifetime and audience ---------------------------------------------------------------


def test_lifetime_is_the_minimum_of_requested_ttl_and_one_hour() -> None:
    snapshot = tokenkit.snapshot(agents=[tokenkit.agent(tokenTTL="1h")])
    assert decide(snapshot).lifetime == timedelta(hours=1)
    assert decide(snapshot, requested_lifetime=timedelta(seconds=90)).lifetime == timedelta(
        seconds=90
    )
    assert decide(snapshot, requested_lifetime=timedelta(hours=3)).lifetime == timedelta(hours=1)


def test_tool_server_audience_narrows_scope_to_its_tools() -> None:
    server = tokenkit.tool_server(
        "docs",
        "https://docs.example.test/mcp",
        {"read_doc": "document.read", "pay": "payments.authorize"},
    )
    snapshot = tokenkit.snapshot(tool_servers=[server])
    decision = decide(snapshot, audience="https://docs.example.test/mcp")
    assert decision.audience == "https://docs.example.test/mcp"
    assert decision.scope == ("document.read",)


def test_unknown_audience_is_invalid_target() -> None:
    description = refused(
        errors.InvalidTarget, tokenkit.snapshot(), audience="https://nowhere.example"
    )
    assert description == (
        "https://nowhere.example is not the resource URI of a ToolServer in namespace team-a"
    )


def test_a_token_for_a_toolserver_names_it_and_a_contested_uri_gets_none() -> None:
    uri = "https://docs.example.test/mcp"
    own = tokenkit.tool_server("docs", uri, {"read_doc": "document.read"})
    own.metadata.uid = "ts-own"
    decision = decide(tokenkit.snapshot(tool_servers=[own]), audience=uri)
    assert decision.tool_server is own
    issued = exchanging.mint(decision, keyset=tokenkit.issuer_keys(), issuer=ISSUER, now=NOW)
    assert issued.claims["tool_server"] == {"namespace": "team-a", "name": "docs", "uid": "ts-own"}
    # Another namespace names the same URI (spelt differently): nobody gets a token for it.
    squat = tokenkit.tool_server("squat", "https://DOCS.example.test:443/mcp/", {}, "team-b")
    contested = tokenkit.snapshot(tool_servers=[own, squat])
    assert refused(errors.InvalidTarget, contested, audience=uri) == (
        f"resource URI {uri} is claimed by 2 ToolServers; no token is issued for it while it is "
        "contested (see the Ready condition of the ToolServers in namespace team-a)"
    )
    # A ToolServer only in another namespace is never ours.
    theirs = tokenkit.snapshot(tool_servers=[squat])
    assert refused(errors.InvalidTarget, theirs, audience=uri) == (
        f"{uri} is not the resource URI of a ToolServer in namespace team-a"
    )


def test_minting_for_a_toolserver_audience_without_naming_it_is_refused() -> None:
    decision = decide(tokenkit.snapshot())
    unnamed = dataclasses.replace(decision, audience="https://docs.example.test/mcp")
    with pytest.raises(errors.ServerError) as caught:
        exchanging.mint(unnamed, keyset=tokenkit.issuer_keys(), issuer=ISSUER, now=NOW)
    assert caught.value.description == (
        "refusing to mint a token for audience https://docs.example.test/mcp without naming its "
        "ToolServer"
    )


TIMES = ("exp", "iat", "nbf", "jti")


def test_tokens_of_one_memoised_decision_differ_in_their_times_jti_and_bound_key() -> None:
    snapshot, keyset = tokenkit.snapshot(), tokenkit.issuer_keys()
    decision = decide(snapshot)
    assert decide(snapshot) is decision  # memoised: every token of the pod is minted from it

    def mint(**kw: object) -> tokens.IssuedToken:
        args: dict[str, object] = {"keyset": keyset, "issuer": ISSUER, "now": NOW, **kw}
        return exchanging.mint(decision, **args)  # type: ignore[arg-type]

    first, later = mint(), mint(now=NOW + timedelta(seconds=30))
    assert first.claims["jti"] != later.claims["jti"]
    assert later.claims["iat"] == later.claims["nbf"] == first.claims["iat"] + 30
    assert later.claims["exp"] == first.claims["exp"] + 30 == later.claims["iat"] + 120
    assert {k: v for k, v in later.claims.items() if k not in TIMES} == {
        k: v for k, v in first.claims.items() if k not in TIMES
    }
    for issued in (first, later):
        verified = tokens.verify(
            issued.token, public_keys=keyset.public_keys(), issuer=ISSUER, now=issued.claims["iat"]
        )
        assert verified.claims == issued.claims
    # A proof-of-possession key is the request's own: never kept for the next token.
    holders = [ed25519.Ed25519PrivateKey.generate().public_key() for _ in range(2)]
    for holder in holders:
        cnf = mint(cnf_jwk=jose.ed25519_jwk(holder)).claims["cnf"]
        assert cnf["jkt"] == jose.jwk_thumbprint(jose.ed25519_jwk(holder))
    assert "cnf" not in mint().claims
    # Each algorithm name signs under its own header; each issuer checks the audience anew.
    assert jwt.get_unverified_header(mint(algorithm="Ed25519").token)["alg"] == "Ed25519"
    assert jwt.get_unverified_header(mint().token)["alg"] == "EdDSA"
    with pytest.raises(errors.ServerError) as caught:
        mint(issuer="https://other.example.test")
    assert caught.value.description == (
        f"refusing to mint a token for audience {ISSUER} without naming its ToolServer"
    )


# -- introspection -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def keyset() -> keys.KeySet:
    return tokenkit.issuer_keys()


def minted(keyset: keys.KeySet, snapshot: exchanging.Snapshot) -> str:
    return exchanging.mint(decide(snapshot), keyset=keyset, issuer=ISSUER, now=NOW).token


def introspect(
    token: str, keyset: keys.KeySet, snapshot: exchanging.Snapshot, **kw: object
) -> dict[str, object]:
    return exchanging.introspect(
        token,
        public_keys=keyset.public_keys(),
        issuer=ISSUER,
        snapshot=snapshot,
        now=kw.get("now", NOW),  # type: ignore[arg-type]
    )


def test_introspection_active_for_a_current_token(keyset: keys.KeySet) -> None:
    snapshot = tokenkit.snapshot()
    answer = introspect(minted(keyset, snapshot), keyset, snapshot)
    assert answer["active"] is True
    assert answer["scope"] == "document.read document.write"


def test_introspection_inactive_cases(keyset: keys.KeySet) -> None:
    snapshot = tokenkit.snapshot()
    token = minted(keyset, snapshot)
    assert introspect(token, keyset, snapshot, now=NOW + timedelta(minutes=6)) == {"active": False}
    assert introspect(
        token, keyset, tokenkit.snapshot(agents=[tokenkit.agent(suspended=True)])
    ) == {"active": False}
    assert introspect(token, keyset, tokenkit.snapshot(agents=[])) == {"active": False}
    assert introspect(
        token, keyset, tokenkit.snapshot(agents=[tokenkit.agent(uid="recreated")])
    ) == {"active": False}
    assert introspect(token, keyset, tokenkit.snapshot(grants=[])) == {"active": False}
    assert introspect(token, tokenkit.issuer_keys(), snapshot) == {"active": False}  # key retired
    assert introspect("garbage", keyset, snapshot) == {"active": False}


def test_a_toolserver_token_is_inactive_once_its_toolserver_is_replaced_or_contested(
    keyset: keys.KeySet,
) -> None:
    uri = "https://docs.example.test/mcp"
    own = tokenkit.tool_server("docs", uri, {"read_doc": "document.read"})
    own.metadata.uid = "ts-1"
    snapshot = tokenkit.snapshot(tool_servers=[own])
    token = exchanging.mint(
        decide(snapshot, audience=uri), keyset=keyset, issuer=ISSUER, now=NOW
    ).token
    assert introspect(token, keyset, snapshot)["active"] is True
    recreated = tokenkit.tool_server("docs", uri, {"read_doc": "document.read"})
    recreated.metadata.uid = "ts-2"
    squat = tokenkit.tool_server("docs", uri, {}, "team-b")
    for changed in ([recreated], [own, squat], []):
        assert introspect(token, keyset, tokenkit.snapshot(tool_servers=changed)) == {
            "active": False
        }
