"""Security review of the pure domain checks (real crypto, no I/O).

Tests marked ``xfail(strict=True)`` demonstrate open findings (see the review report); the others
pin checks the review verified to be correct.
"""

from __future__ import annotations

import datetime
import json
import math
import time

import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519

from agentauth.domain import approvals, assertions, delegation, errors, exchanging, jose
from agentauth.domain.models import accessrequests, agents, grants
from tests.domain import tokenkit

ISSUER = "https://agentauth.example.test"
TOKEN_ENDPOINT = f"{ISSUER}/oauth2/token"
AGENT_ID = "aauth:robot.team-a@example.test"


def sign_assertion(claims: dict[str, object], key: ed25519.Ed25519PrivateKey) -> str:
    header = {"alg": "EdDSA", "kid": "k1", "typ": "JWT"}
    # json.dumps writes NaN/Infinity literals, which json.loads (and so jose.parse) accepts
    signing_input = (
        jose.b64url_encode(json.dumps(header).encode())
        + "."
        + jose.b64url_encode(json.dumps(claims).encode())
    )
    return f"{signing_input}.{jose.b64url_encode(key.sign(signing_input.encode()))}"


def registered(key: ed25519.Ed25519PrivateKey) -> dict[str, object]:
    return {"keys": [{**jose.ed25519_jwk(key.public_key()), "kid": "k1"}]}


# -- findings ----------------------------------------------------------------------------------


def test_nan_exp_is_refused() -> None:
    claims = {"iss": ISSUER, "aud": ISSUER, "exp": math.nan}
    with pytest.raises(errors.InvalidGrant):
        jose.check_registered_claims(
            claims, issuers=(ISSUER,), audience=ISSUER, now=time.time(), leeway=60
        )


def test_client_assertion_with_nan_exp_is_invalid_client() -> None:
    key = ed25519.Ed25519PrivateKey.generate()
    now = time.time()
    assertion = sign_assertion(
        {
            "iss": AGENT_ID,
            "sub": AGENT_ID,
            "aud": TOKEN_ENDPOINT,
            "iat": int(now),
            "exp": math.nan,
            "jti": "j-1",
        },
        key,
    )
    with pytest.raises(errors.InvalidClient):
        assertions.verify_client_assertion(
            assertion=assertion,
            agent_id=AGENT_ID,
            public_keys=registered(key),
            token_endpoint=TOKEN_ENDPOINT,
            now=now,
            replay_cache=assertions.InMemoryReplayCache(),
            signer_jkt=None,
        )


def test_deeply_nested_payload_is_invalid_grant() -> None:
    header = jose.b64url_encode(b'{"alg":"EdDSA","kid":"k"}')
    payload = jose.b64url_encode(b"[" * 5000 + b"]" * 5000)
    with pytest.raises(errors.InvalidGrant):
        jose.parse(f"{header}.{payload}.AA")


def test_agent_cannot_target_a_tool_server_of_another_namespace() -> None:
    now = datetime.datetime.now(datetime.UTC)
    agent = tokenkit.agent()  # team-a/research
    grant = tokenkit.grant("self-made", capabilities=[{"name": "payments.authorize"}])
    server = tokenkit.tool_server(
        "payments",
        "https://payments.team-b.example.test/mcp",
        {"pay": "payments.authorize"},
        namespace="team-b",
    )
    snapshot = tokenkit.snapshot(agents=[agent], grants=[grant], tool_servers=[server])
    with pytest.raises(errors.InvalidTarget):
        exchanging.decide_for_agent(
            agent=agent,
            target=exchanging.Target(audience="https://payments.team-b.example.test/mcp"),
            snapshot=snapshot,
            issuer=ISSUER,
            trust_domain="example.test",
            now=now,
        )


# -- verified correct --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "header",
    [
        {"alg": "none", "kid": "k"},
        {"alg": "HS256", "kid": "k"},
        {"alg": "RS256", "kid": "k"},  # not in the EdDSA allow-list of agent tokens
        {"alg": "EdDSA"},  # no kid
    ],
)
def test_agent_token_verifier_refuses_foreign_algorithms_and_missing_kid(
    header: dict[str, str],
) -> None:
    keyset = tokenkit.issuer_keys()
    token = (
        jose.b64url_encode(json.dumps(header).encode())
        + "."
        + jose.b64url_encode(b'{"iss":"x"}')
        + ".AA"
    )
    with pytest.raises(errors.InvalidGrant):
        jose.verify(token, keys=keyset.public_keys(), allowed_algorithms=("EdDSA",))


def test_missing_exp_and_wrong_audience_are_refused() -> None:
    now = time.time()
    with pytest.raises(errors.InvalidGrant, match="no exp claim"):
        jose.check_registered_claims(
            {"iss": ISSUER, "aud": ISSUER}, issuers=(ISSUER,), audience=ISSUER, now=now, leeway=0
        )
    with pytest.raises(errors.InvalidGrant, match="audience"):
        jose.check_registered_claims(
            {"iss": ISSUER, "aud": "https://elsewhere", "exp": now + 60},
            issuers=(ISSUER,),
            audience=ISSUER,
            now=now,
            leeway=0,
        )


def test_hostile_act_nesting_is_bounded() -> None:
    act: dict[str, object] = {"sub": "x"}
    for _ in range(500):
        act = {"sub": "x", "act": act}
    assert delegation.chain_depth(act) == 65


def test_approving_an_exact_capability_never_yields_its_wildcard() -> None:
    now = datetime.datetime.now(datetime.UTC)
    agent = tokenkit.agent()
    grant = tokenkit.grant("pay", capabilities=[{"name": "payments.*", "approval": "Required"}])
    request = tokenkit.access_request(
        "r1",
        capabilities=["payments.authorize"],
        granted_until=now + datetime.timedelta(minutes=10),
        under=[grant],
    )
    snapshot = tokenkit.snapshot(agents=[agent], grants=[grant], access_requests=[request])
    with pytest.raises(errors.InvalidScope):
        exchanging.select_scope(
            agent=agent,
            held=snapshot.held(agent, now=now),
            requests=snapshot.access_requests_of(agent),
            requested=("payments.*",),
            now=now,
        )
    decision = exchanging.select_scope(
        agent=agent,
        held=snapshot.held(agent, now=now),
        requests=snapshot.access_requests_of(agent),
        requested=("payments.authorize",),
        now=now,
    )
    assert decision.scope == ("payments.authorize",)
    assert decision.granted_until == now + datetime.timedelta(minutes=10)


def _request(phase: str | None = None) -> accessrequests.AccessRequest:
    body: dict[str, object] = {
        "metadata": {"name": "buy-1", "namespace": "shop"},
        "spec": {
            "agent": "buyer",
            "capabilities": ["payments.authorize"],
            "justification": "invoice 7",
            "duration": "15m",
            "requester": {"username": "system:serviceaccount:agentauth:token-service"},
            "agentUID": "u",
        },
    }
    if phase is not None:
        body["status"] = {
            "phase": phase,
            "expiresAt": "2026-11-28T12:10:00Z",
            "denials": [{"user": "bob", "time": "2026-11-28T12:01:00Z"}]
            if phase == "Denied"
            else [],
        }
    return accessrequests.AccessRequest.model_validate(body)


def test_agent_service_account_cannot_approve_even_when_its_group_is_an_approver() -> None:
    agent = agents.Agent.model_validate(
        {
            "metadata": {"name": "buyer", "namespace": "shop", "uid": "u"},
            "spec": {"serviceAccountName": "buyer-sa"},
        }
    )
    grant = grants.CapabilityGrant.model_validate(
        {
            "metadata": {"name": "payments", "namespace": "shop"},
            "spec": {
                "agents": {"names": ["buyer"]},
                "capabilities": [{"name": "payments.authorize", "approval": "Required"}],
                "approvers": {"groups": ["system:serviceaccounts:shop"]},
            },
        }
    )
    now = datetime.datetime(2026, 11, 28, 12, 0, tzinfo=datetime.UTC)
    request = _request("Pending")
    resolved = approvals.resolve_existing(request=request, agent=agent, all_grants=[grant], now=now)
    decider = approvals.Identity(
        username="system:serviceaccount:shop:buyer-sa",
        groups=("system:serviceaccounts", "system:serviceaccounts:shop"),
    )
    with pytest.raises(approvals.SelfApproval):
        approvals.require_may_decide(
            request=request,
            agent=agent,
            resolved=resolved,
            decider=decider,
            kind="Approve",
            reviews={},
        )


def test_a_denied_request_cannot_be_reopened_or_approved() -> None:
    old = _request("Denied")
    now = datetime.datetime(2026, 11, 28, 12, 2, tzinfo=datetime.UTC)
    for phase in ("Pending", "Approved"):
        new = (old.status or accessrequests.AccessRequestStatus()).model_copy(
            update={"phase": phase}
        )
        with pytest.raises(approvals.ForbiddenChange):
            approvals.check_status_update(old=old, new=new, resolved=None, now=now)
