"""Chain of agency: user -> agent -> tool, depth bounds, may_act, scope intersection."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

from agentauth.domain import delegation, errors, exchanging, jose, keys, tokens
from tests.domain import tokenkit
from tests.domain.tokenkit import ISSUER, NOW, TRUST_DOMAIN

USER_ISSUER = "https://login.example.test"
USER_AUDIENCE = "agentauth"
TRUSTED = (
    delegation.TrustedIssuer(
        issuer=USER_ISSUER, jwks_url=f"{USER_ISSUER}/jwks", audience=USER_AUDIENCE
    ),
)


@pytest.fixture(scope="module")
def idp() -> tokenkit.ClusterIssuer:
    return tokenkit.ClusterIssuer(issuer=USER_ISSUER)


@pytest.fixture(scope="module")
def keyset() -> keys.KeySet:
    return tokenkit.issuer_keys()


def world(
    *, research: dict[str, Any] | None = None, tool: dict[str, Any] | None = None
) -> exchanging.Snapshot:
    research_agent = tokenkit.agent(
        delegation=research if research is not None else {"allowed": True}
    )
    tool_agent = tokenkit.agent(
        "tool",
        uid="tool-uid",
        service_account="tool-sa",
        delegation=tool if tool is not None else {"allowed": True},
    )
    return tokenkit.snapshot(
        agents=[research_agent, tool_agent],
        grants=[
            tokenkit.grant("base", capabilities=tokenkit.STANDARD_CAPABILITIES),
            tokenkit.grant("tool", agents=["tool"], capabilities=[{"name": "document.read"}]),
        ],
    )


def agent_token(keyset: keys.KeySet, name: str, uid: str, **kw: Any) -> str:
    sub = tokens.agent_subject(name=name, namespace="team-a", trust_domain=TRUST_DOMAIN)
    return tokens.issue(
        keyset=keyset,
        issuer=ISSUER,
        subject=kw.pop("subject", sub),
        agent=tokens.AgentRef(name=name, namespace="team-a", uid=uid),
        audience=kw.pop("audience", ISSUER),
        scope=kw.pop("scope", ("document.read", "document.write")),
        lifetime=timedelta(minutes=5),
        now=NOW,
        client_id=sub,
        **kw,
    ).token


def user_token(idp: tokenkit.ClusterIssuer, **claims: Any) -> str:
    base = {
        "iss": USER_ISSUER,
        "sub": "alice@example.test",
        "aud": USER_AUDIENCE,
        "exp": int((NOW + timedelta(minutes=2)).timestamp()),
        "iat": int(NOW.timestamp()),
        "scope": "document.read document.write payments.authorize",
        # the user names the agent that may act for it (required by default)
        "may_act": {"sub": "aauth:research.team-a@example.test"},
    }
    base.update(claims)
    return idp.sign({k: v for k, v in base.items() if v is not None})


def delegate(
    subject_token: str,
    actor_token: str,
    *,
    keyset: keys.KeySet,
    idp: tokenkit.ClusterIssuer,
    snapshot: exchanging.Snapshot,
    scope: tuple[str, ...] | None = None,
) -> exchanging.Decision:
    subject = delegation.verify_subject(
        subject_token,
        issuer=ISSUER,
        our_keys=keyset.public_keys(),
        trusted=TRUSTED,
        trusted_keys={USER_ISSUER: jose.PublicKeySet.from_jwks(idp.jwks())},
        snapshot=snapshot,
        now=NOW,
    )
    actor = tokens.verify(
        actor_token, public_keys=keyset.public_keys(), issuer=ISSUER, now=NOW, audience=ISSUER
    )
    return delegation.decide(
        subject=subject,
        actor=actor,
        target=exchanging.Target(scope=scope),
        snapshot=snapshot,
        issuer=ISSUER,
        now=NOW,
    )


def test_agent_acts_for_a_user(keyset: keys.KeySet, idp: tokenkit.ClusterIssuer) -> None:
    snapshot = world()
    decision = delegate(
        user_token(idp),
        agent_token(keyset, "research", "agent-uid-1"),
        keyset=keyset,
        idp=idp,
        snapshot=snapshot,
    )
    assert decision.subject == "alice@example.test"
    assert decision.act == {"sub": "aauth:research.team-a@example.test"}
    assert decision.client_id == "aauth:research.team-a@example.test"
    # payments.authorize is in the user's scope but needs approval for the agent: not delegated
    assert decision.scope == ("document.read", "document.write")
    assert decision.lifetime == timedelta(minutes=2)  # never outlives the user's token


def test_tool_exchanges_again_and_nests_one_level(
    keyset: keys.KeySet, idp: tokenkit.ClusterIssuer
) -> None:
    snapshot = world()
    first = delegate(
        user_token(idp),
        agent_token(keyset, "research", "agent-uid-1"),
        keyset=keyset,
        idp=idp,
        snapshot=snapshot,
    )
    on_behalf = exchanging.mint(first, keyset=keyset, issuer=ISSUER, now=NOW).token
    second = delegate(
        on_behalf,
        agent_token(keyset, "tool", "tool-uid", scope=("document.read",)),
        keyset=keyset,
        idp=idp,
        snapshot=snapshot,
    )
    assert second.subject == "alice@example.test"
    assert second.act == {
        "sub": "aauth:tool.team-a@example.test",
        "act": {"sub": "aauth:research.team-a@example.test"},
    }
    assert second.scope == ("document.read",)


def test_depth_beyond_max_depth(keyset: keys.KeySet, idp: tokenkit.ClusterIssuer) -> None:
    snapshot = world(tool={"allowed": True, "maxDepth": 1})
    deep = user_token(idp, act={"sub": "aauth:research.team-a@example.test"})
    with pytest.raises(errors.InvalidGrant) as caught:
        delegate(
            deep,
            agent_token(keyset, "tool", "tool-uid", scope=("document.read",)),
            keyset=keyset,
            idp=idp,
            snapshot=snapshot,
        )
    assert caught.value.description == "delegation depth 2 exceeds maxDepth 1 of agent team-a/tool"


def test_actor_whose_agent_forbids_delegation(
    keyset: keys.KeySet, idp: tokenkit.ClusterIssuer
) -> None:
    snapshot = world(research={"allowed": False})
    with pytest.raises(errors.UnauthorizedClient) as caught:
        delegate(
            user_token(idp),
            agent_token(keyset, "research", "agent-uid-1"),
            keyset=keyset,
            idp=idp,
            snapshot=snapshot,
        )
    assert caught.value.description == "agent team-a/research does not allow delegation"
    assert caught.value.error == "unauthorized_client"


def test_may_act_must_name_the_actor(keyset: keys.KeySet, idp: tokenkit.ClusterIssuer) -> None:
    snapshot = world()
    actor = agent_token(keyset, "research", "agent-uid-1")
    allowed = user_token(idp, may_act={"sub": "aauth:research.team-a@example.test"})
    assert delegate(allowed, actor, keyset=keyset, idp=idp, snapshot=snapshot).act
    other = user_token(idp, may_act={"sub": "aauth:someone.else@example.test"})
    with pytest.raises(errors.InvalidGrant) as caught:
        delegate(other, actor, keyset=keyset, idp=idp, snapshot=snapshot)
    assert caught.value.description == "the subject token's may_act does not name the actor"


def test_scope_is_the_intersection_and_escalation_is_refused(
    keyset: keys.KeySet, idp: tokenkit.ClusterIssuer
) -> None:
    snapshot = world()
    actor = agent_token(keyset, "research", "agent-uid-1")
    narrow_user = user_token(idp, scope="document.read")
    assert delegate(narrow_user, actor, keyset=keyset, idp=idp, snapshot=snapshot).scope == (
        "document.read",
    )
    with pytest.raises(errors.InvalidScope) as caught:
        delegate(
            narrow_user, actor, keyset=keyset, idp=idp, snapshot=snapshot, scope=("document.write",)
        )
    assert caught.value.description == (
        "capability document.write is not in both the subject token's scope and the "
        "capabilities of agent team-a/research"
    )
    no_scope = user_token(idp, scope=None)
    assert delegate(no_scope, actor, keyset=keyset, idp=idp, snapshot=snapshot).scope == ()


def test_untrusted_issuer_and_wrong_audience(
    keyset: keys.KeySet, idp: tokenkit.ClusterIssuer
) -> None:
    snapshot = world()
    actor = agent_token(keyset, "research", "agent-uid-1")
    with pytest.raises(errors.InvalidGrant) as caught:
        delegate(
            user_token(idp, iss="https://evil.example"),
            actor,
            keyset=keyset,
            idp=idp,
            snapshot=snapshot,
        )
    assert caught.value.description == "token issuer is not trusted"
    with pytest.raises(errors.InvalidGrant) as caught:
        delegate(
            user_token(idp, aud="someone-else"), actor, keyset=keyset, idp=idp, snapshot=snapshot
        )
    assert caught.value.description == "token audience does not include this issuer"


def test_delegated_token_cannot_be_an_actor(
    keyset: keys.KeySet, idp: tokenkit.ClusterIssuer
) -> None:
    snapshot = world()
    delegated_actor = agent_token(keyset, "research", "agent-uid-1", act={"sub": "x"})
    with pytest.raises(errors.InvalidGrant) as caught:
        delegate(user_token(idp), delegated_actor, keyset=keyset, idp=idp, snapshot=snapshot)
    assert (
        caught.value.description == "actor_token must be the actor's own token, not a delegated one"
    )


def test_subject_agent_token_must_still_be_current(
    keyset: keys.KeySet, idp: tokenkit.ClusterIssuer
) -> None:
    subject = agent_token(keyset, "research", "agent-uid-1")
    actor = agent_token(keyset, "tool", "tool-uid", scope=("document.read",))
    snapshot = world()
    assert delegate(subject, actor, keyset=keyset, idp=idp, snapshot=snapshot).act == {
        "sub": "aauth:tool.team-a@example.test"
    }
    suspended = tokenkit.snapshot(
        agents=[
            tokenkit.agent(suspended=True),
            tokenkit.agent(
                "tool", uid="tool-uid", service_account="tool-sa", delegation={"allowed": True}
            ),
        ],
        grants=list(snapshot.grants),
    )
    with pytest.raises(errors.InvalidGrant) as caught:
        delegate(subject, actor, keyset=keyset, idp=idp, snapshot=suspended)
    assert caught.value.description == "agent team-a/research is suspended"


def test_chain_depth() -> None:
    assert delegation.chain_depth(None) == 0
    assert delegation.chain_depth({"sub": "a", "act": {"sub": "b"}}) == 2
