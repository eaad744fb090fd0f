"""Chain of agency (RFC 8693 section 4.1): an agent acting on behalf of a user or another agent.

Guarantees (each failure raises a typed ``errors.OAuthError``):
- The subject token is either one of our agent tokens (verified with our keys, its ``aud`` our
  issuer: a token minted for a ToolServer is that ToolServer's, not a credential here; and still
  backed by the caches) or a token of a configured trusted user-token issuer (verified against
  that issuer's JWKS with an explicit algorithm allow-list, its configured audience, ``exp``
  required, with ``clockskew.LEEWAY_SECONDS``).
- A user token's ``sub`` may not look like an agent identifier (``aauth:`` in any case) nor hold
  control characters, so a delegated token's ``sub`` can never pass for an agent's.
- A user token must carry ``may_act`` naming the actor, unless its issuer is configured with
  ``require_may_act: false`` (then any agent that allows delegation may act for its users, within
  the user token's scope and its own capabilities).
- The actor token is one of our own, undelegated agent tokens (``act`` absent) for our issuer;
  its Agent must be usable and allow delegation (``unauthorized_client`` otherwise).
- Depth: the new ``act`` chain may be at most the actor Agent's ``delegation.maxDepth`` deep.
- ``may_act`` in the subject token, when present, must name the actor's ``sub``.
- A key-bound subject token (``cnf``) counts only with proof that its holder consents: the
  request is signed by the bound key, or the token's ``may_act`` names the actor (its holder
  asked for that with the ``may_act`` request parameter). A stolen bound token therefore cannot be
  presented as the subject by another agent.
- Scope = subject scope ∩ actor's usable capabilities ∩ requested; a requested capability outside
  that intersection is ``invalid_scope``. A user token without a ``scope`` claim delegates nothing
  (fail closed), so its exchanges need no scope and yield an empty one.
- The result has ``sub`` = the subject, ``act`` = ``{sub: actor, act: <subject's act>}``, the
  actor's ``agent`` claim, and never outlives the subject token.
"""

from __future__ import annotations

import hmac
import unicodedata
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from agentauth.domain import errors, exchanging, jose, tokens
from agentauth.domain.models import Agent

USER_TOKEN_ALGORITHMS = frozenset(
    {"RS256", "RS384", "RS512", "PS256", "ES256", "ES384", "EdDSA", "Ed25519"}
)


@dataclass(frozen=True, slots=True)
class TrustedIssuer:
    """A user-token issuer whose tokens may be the subject of a delegation."""

    issuer: str
    jwks_url: str
    audience: str
    require_may_act: bool = True
    """Refuse this issuer's user tokens that do not name the actor in ``may_act``."""


@dataclass(frozen=True, slots=True)
class Subject:
    """A verified subject token."""

    sub: str
    scope: tuple[str, ...]
    act: dict[str, Any] | None
    may_act: dict[str, Any] | None
    expires_at: datetime
    ours: bool
    bound_jkt: str | None = None
    require_may_act: bool = False
    """A user token of an issuer that requires ``may_act``: refused without one."""
    """The RFC 7638 thumbprint the token is bound to (``cnf.jkt``), if any."""


def chain_depth(act: Mapping[str, Any] | None) -> int:
    """How many actors a nested ``act`` claim names (0 for none)."""
    depth = 0
    while isinstance(act, Mapping):
        depth += 1
        act = act.get("act")
        if depth > 64:  # malformed or hostile nesting; the bound check below refuses it
            break
    return depth


def _scope_of(claims: Mapping[str, Any]) -> tuple[str, ...]:
    scope = claims.get("scope")
    if isinstance(scope, str):
        return tuple(scope.split())
    scp = claims.get("scp")
    if isinstance(scp, list):
        return tuple(str(s) for s in scp)
    return ()


def peek_issuer(token: str) -> str:
    """The unverified ``iss`` of a JWT, used only to choose the keys to verify it with."""
    iss = jose.parse(token).payload.get("iss")
    if not isinstance(iss, str):
        raise errors.InvalidGrant("token has no iss claim")
    return iss


def verify_subject(
    token: str,
    *,
    issuer: str,
    our_keys: jose.PublicKeySet,
    trusted: Iterable[TrustedIssuer],
    trusted_keys: Mapping[str, jose.PublicKeySet],
    snapshot: exchanging.Snapshot,
    now: datetime,
) -> Subject:
    """Verify an access-token subject: ours (and still current) or a trusted user issuer's."""
    iss = peek_issuer(token)
    if iss == issuer:
        claims = tokens.verify(token, public_keys=our_keys, issuer=issuer, audience=issuer, now=now)
        exchanging.check_token_current(claims, snapshot=snapshot, now=now)
        raw = claims.claims
        return Subject(
            sub=claims.subject,
            scope=claims.scope,
            act=claims.act,
            may_act=raw.get("may_act") if isinstance(raw.get("may_act"), dict) else None,
            expires_at=datetime.fromtimestamp(claims.expires_at, tz=UTC),
            ours=True,
            bound_jkt=_bound_jkt(raw),
        )
    config = next((t for t in trusted if t.issuer == iss), None)
    keys = trusted_keys.get(iss)
    if config is None or keys is None:
        raise errors.InvalidGrant("token issuer is not trusted")
    parsed = jose.verify(token, keys=keys, allowed_algorithms=USER_TOKEN_ALGORITHMS)
    payload = parsed.payload
    jose.check_registered_claims(
        payload,
        issuers=(config.issuer,),
        audience=config.audience,
        now=now.timestamp(),
        leeway=tokens.DEFAULT_LEEWAY,
    )
    sub = payload.get("sub")
    if not isinstance(sub, str) or not sub:
        raise errors.InvalidGrant("subject token has no sub claim")
    folded = unicodedata.normalize("NFKC", sub).strip().lower()
    if folded.startswith(tokens.SUBJECT_PREFIX) or not sub.isprintable():
        raise errors.InvalidGrant(
            f"the user token's sub must not look like an agent identifier ({tokens.SUBJECT_PREFIX}"
            "...) or contain control characters"
        )
    act, may_act = payload.get("act"), payload.get("may_act")
    return Subject(
        sub=sub,
        scope=_scope_of(payload),
        act=act if isinstance(act, dict) else None,
        may_act=may_act if isinstance(may_act, dict) else None,
        expires_at=datetime.fromtimestamp(int(payload["exp"]), tz=UTC),
        ours=False,
        bound_jkt=_bound_jkt(payload),
        require_may_act=config.require_may_act,
    )


def _bound_jkt(claims: Mapping[str, Any]) -> str | None:
    cnf = claims.get("cnf")
    if cnf is None:
        return None
    jkt = cnf.get("jkt") if isinstance(cnf, Mapping) else None
    if not isinstance(jkt, str) or not jkt:
        raise errors.InvalidGrant("token has a malformed cnf claim")
    return jkt


def intersect(left: Iterable[str], right: Iterable[str]) -> tuple[str, ...]:
    """Pattern-aware intersection: for each pair, the narrower entry when one covers the other."""
    result: dict[str, None] = {}
    right = tuple(right)
    for a in left:
        for b in right:
            if exchanging.covers(a, b):
                result[b] = None
            elif exchanging.covers(b, a):
                result[a] = None
    return tuple(result)


def decide(
    *,
    subject: Subject,
    actor: tokens.AgentTokenClaims,
    target: exchanging.Target,
    snapshot: exchanging.Snapshot,
    issuer: str,
    now: datetime,
    signer_jkt: str | None = None,
) -> exchanging.Decision:
    """The delegated token's decision per the module rules; ``actor`` is already verified.

    ``signer_jkt`` is the thumbprint of the key that signed the request (RFC 9421), if any.
    """
    if actor.act is not None:
        raise errors.InvalidGrant("actor_token must be the actor's own token, not a delegated one")
    agent: Agent = exchanging.check_token_current(actor, snapshot=snapshot, now=now)
    label = exchanging.agent_label(agent)
    if not agent.spec.delegation.allowed:
        raise errors.UnauthorizedClient(f"agent {label} does not allow delegation")
    depth = chain_depth(subject.act) + 1
    if depth > agent.spec.delegation.max_depth:
        raise errors.InvalidGrant(
            f"delegation depth {depth} exceeds maxDepth {agent.spec.delegation.max_depth} "
            f"of agent {label}"
        )
    if subject.may_act is None and subject.require_may_act:
        raise errors.InvalidGrant(
            "the user token has no may_act naming the actor; its issuer requires one"
        )
    if subject.may_act is not None and subject.may_act.get("sub") != actor.subject:
        raise errors.InvalidGrant("the subject token's may_act does not name the actor")
    if (
        subject.bound_jkt is not None
        and subject.may_act is None
        and (signer_jkt is None or not hmac.compare_digest(signer_jkt, subject.bound_jkt))
    ):
        raise errors.InvalidGrant(
            "the subject token is bound to a key (cnf): it can be the subject of a delegation "
            "only when its may_act names the actor or the request is signed with that key"
        )
    if subject.sub == actor.subject:
        raise errors.InvalidRequest("subject and actor are the same identity")
    audience, server = exchanging.resolve_audience(
        target.audience,
        issuer=issuer,
        tool_servers=snapshot.tool_servers_claiming(target.audience),
        namespace=agent.metadata.namespace or "",
        policy=snapshot.claim_policy,
    )
    usable = exchanging.select_scope(
        agent=agent,
        held=snapshot.held(agent, now=now),
        requests=snapshot.access_requests_of(agent),
        requested=None,
        now=now,
    )
    allowed = intersect(subject.scope, usable.scope)
    if target.scope is not None:
        for wanted in target.scope:
            if not any(exchanging.covers(entry, wanted) for entry in allowed):
                raise errors.InvalidScope(
                    f"capability {wanted} is not in both the subject token's scope and the "
                    f"capabilities of agent {label}"
                )
        scope = target.scope
    elif server is not None:
        scope = intersect(allowed, [t.capability for t in server.spec.tools])
    else:
        scope = allowed
    lifetime = exchanging.token_lifetime(
        requested=target.requested_lifetime,
        agent=agent,
        now=now,
        not_after=(subject.expires_at, usable.granted_until),
    )
    act: dict[str, Any] = {"sub": actor.subject}
    if subject.act is not None:
        act["act"] = subject.act
    return exchanging.Decision(
        agent=agent,
        subject=subject.sub,
        client_id=actor.subject,
        scope=scope,
        audience=audience,
        lifetime=lifetime,
        act=act,
        access_requests=usable.access_requests,
        may_act=target.may_act,
        tool_server=server,
    )
