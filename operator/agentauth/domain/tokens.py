"""Agent tokens: RFC 9068 JWT access tokens signed with the issuer's current Ed25519 key.

Guarantees:
- Minted tokens carry ``typ: at+jwt``, the configured algorithm name (``EdDSA`` by default,
  or ``Ed25519``, its RFC 9864 name: ``ALGORITHMS``) and the current ``kid``, and are signed by
  pyjwt (``jose.sign``); the claims are exactly those of DESIGN.md (``iss, sub, aud, exp, iat,
  nbf, jti, client_id, scope, agent`` and where they apply ``cnf``, ``act``, ``pod``).
- A lifetime is never longer than ``MAX_LIFETIME`` (1 h); callers pass the already-clamped one.
- The tokens of one ``Template`` (what a decision's tokens say, checked and built once) differ
  only in ``exp``, ``iat``, ``nbf``, ``jti`` (16 fresh random bytes each) and the signature.
- ``verify`` accepts an Ed25519 signature under either name with a key of our key set, requires
  ``typ: at+jwt``, our ``iss``, ``exp`` (and honours ``nbf``/``iat``) with at most ``leeway``
  seconds, and the agent claims; everything else raises ``errors.InvalidGrant`` (a
  ``jose.JoseError`` for JWS and registered-claim failures).

Why ``EdDSA`` is the default: of the libraries resource servers use, pyjwt (2.x) knows only
``EdDSA``, while joserfc, jwcrypto and the JavaScript ``jose`` package verify both names
(``tests/interop`` measures it).  ``Ed25519`` is for verifiers that require the fully
specified name.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from agentauth.domain import clockskew, errors, jose, keys

TOKEN_TYPE = "at+jwt"
ALGORITHM = "EdDSA"
"""The default algorithm name of issued tokens."""
ALGORITHMS: tuple[str, ...] = ("EdDSA", "Ed25519")
"""Names an agent token may be issued (and is accepted) under: RFC 8037 and RFC 9864."""
DEFAULT_LIFETIME = timedelta(minutes=2)
MAX_LIFETIME = keys.MAX_TOKEN_LIFETIME
_MAX_SECONDS = MAX_LIFETIME.total_seconds()
DEFAULT_LEEWAY = float(clockskew.LEEWAY_SECONDS)
SUBJECT_PREFIX = "aauth:"


def agent_subject(*, name: str, namespace: str, trust_domain: str) -> str:
    """``aauth:<name>.<namespace>@<trust-domain>`` (DESIGN.md: agent identifier)."""
    return f"{SUBJECT_PREFIX}{name}.{namespace}@{trust_domain}"


@dataclass(frozen=True, slots=True)
class AgentRef:
    name: str
    namespace: str
    uid: str

    def claim(self) -> dict[str, str]:
        return {"name": self.name, "namespace": self.namespace, "uid": self.uid}


@dataclass(frozen=True, slots=True)
class IssuedToken:
    """A signed token and its claims. The claims are to be read only: their nested members
    (``agent``, ``pod``, ``act``, ``cnf``, ...) are shared with the other tokens of their
    :class:`Template`."""

    token: str
    claims: dict[str, Any]
    expires_in: int
    kid: str


@dataclass(frozen=True, slots=True)
class Template:
    """What the tokens of one decision say apart from their times and ``jti``: checked and
    built once (:func:`template`), then signed with new times for each token
    (:func:`issue_from`). ``claims`` is shared by those tokens and never changed."""

    claims: Mapping[str, Any]
    expires_in: int
    algorithm: str


def template(
    *,
    issuer: str,
    subject: str,
    agent: AgentRef,
    audience: str | Sequence[str],
    scope: Sequence[str],
    lifetime: timedelta,
    client_id: str,
    cnf_jwk: Mapping[str, Any] | None = None,
    act: Mapping[str, Any] | None = None,
    pod: Mapping[str, str] | None = None,
    extra_claims: Mapping[str, Any] | None = None,
    algorithm: str = ALGORITHM,
) -> Template:
    """The claims of :func:`issue` that do not change from one token to the next, checked:
    ``algorithm`` one of :data:`ALGORITHMS`, ``lifetime`` positive (at most
    :data:`MAX_LIFETIME` is used). ``extra_claims`` never replace a claim of DESIGN.md."""
    if algorithm not in ALGORITHMS:
        raise ValueError(f"agent tokens are signed with one of {ALGORITHMS}, not {algorithm!r}")
    seconds = lifetime.total_seconds()
    if seconds <= 0:
        raise errors.InvalidRequest("token lifetime must be positive")
    claims: dict[str, Any] = {
        "iss": issuer,
        "sub": subject,
        "aud": audience if isinstance(audience, str) else list(audience),
        "client_id": client_id,
        "scope": " ".join(scope),
        "agent": {"name": agent.name, "namespace": agent.namespace, "uid": agent.uid},
    }
    if cnf_jwk is not None:
        public = {k: v for k, v in cnf_jwk.items() if k not in ("d", "p", "q", "dp", "dq", "qi")}
        claims["cnf"] = {"jwk": public, "jkt": jose.jwk_thumbprint(public)}
    if act is not None:
        claims["act"] = dict(act)
    if pod is not None:
        claims["pod"] = dict(pod)
    if extra_claims:
        for name, value in extra_claims.items():
            claims.setdefault(name, value)
    return Template(claims=claims, expires_in=int(min(seconds, _MAX_SECONDS)), algorithm=algorithm)


def issue_from(template: Template, *, keyset: keys.KeySet, now: datetime) -> IssuedToken:
    """Sign one token of ``template`` with the current key: issued at ``now``, expiring
    ``template.expires_in`` seconds later, with a new ``jti``."""
    signing = keyset.signing_key()
    iat = int(now.timestamp())
    claims = {
        **template.claims,  # first: the times below replace any extra claim of the same name
        "exp": iat + template.expires_in,
        "iat": iat,
        "nbf": iat,
        # secrets.token_urlsafe(16) is os.urandom(16) in base64url, through three more calls
        "jti": jose.b64url_encode(os.urandom(16)),
    }
    token = jose.sign_with_header(
        claims,
        key=signing.private_key,
        alg=template.algorithm,
        header=jose.header_segment(alg=template.algorithm, kid=signing.kid, typ=TOKEN_TYPE),
    )
    return IssuedToken(token=token, claims=claims, expires_in=template.expires_in, kid=signing.kid)


def issue(
    *,
    keyset: keys.KeySet,
    issuer: str,
    subject: str,
    agent: AgentRef,
    audience: str | Sequence[str],
    scope: Sequence[str],
    lifetime: timedelta,
    now: datetime,
    client_id: str,
    cnf_jwk: Mapping[str, Any] | None = None,
    act: Mapping[str, Any] | None = None,
    pod: Mapping[str, str] | None = None,
    extra_claims: Mapping[str, Any] | None = None,
    algorithm: str = ALGORITHM,
) -> IssuedToken:
    """Mint and sign one agent token. ``subject`` is the agent's identifier, or under
    delegation the user's ``sub`` (the agent then appears in ``act``); ``client_id`` is the
    agent's identifier (the OAuth client that the token was issued to); ``algorithm`` one of
    :data:`ALGORITHMS`."""
    return issue_from(
        template(
            issuer=issuer,
            subject=subject,
            agent=agent,
            audience=audience,
            scope=scope,
            lifetime=lifetime,
            client_id=client_id,
            cnf_jwk=cnf_jwk,
            act=act,
            pod=pod,
            extra_claims=extra_claims,
            algorithm=algorithm,
        ),
        keyset=keyset,
        now=now,
    )


@dataclass(frozen=True, slots=True)
class AgentTokenClaims:
    """A verified agent token."""

    claims: dict[str, Any]
    agent: AgentRef
    scope: tuple[str, ...]
    kid: str

    @property
    def subject(self) -> str:
        return str(self.claims["sub"])

    @property
    def act(self) -> dict[str, Any] | None:
        act = self.claims.get("act")
        return act if isinstance(act, dict) else None

    @property
    def expires_at(self) -> int:
        return int(self.claims["exp"])


def verify(
    token: str,
    *,
    public_keys: jose.PublicKeySet,
    issuer: str,
    now: datetime | float,
    audience: str | None = None,
    leeway: float = DEFAULT_LEEWAY,
) -> AgentTokenClaims:
    """Verify one of our agent tokens (signature, typ, iss, exp/nbf/iat, optional aud).

    ``now`` is an aware datetime or epoch seconds."""
    parsed = jose.verify(token, keys=public_keys, allowed_algorithms=ALGORITHMS)
    if parsed.header.get("typ") != TOKEN_TYPE:
        raise errors.InvalidGrant("token is not an at+jwt access token")
    claims = parsed.payload
    jose.check_registered_claims(
        claims,
        issuers=(issuer,),
        audience=audience,
        now=now.timestamp() if isinstance(now, datetime) else now,
        leeway=leeway,
    )
    agent = claims.get("agent")
    scope = claims.get("scope", "")
    if (
        not isinstance(agent, dict)
        or not all(isinstance(agent.get(k), str) for k in ("name", "namespace", "uid"))
        or not isinstance(scope, str)
        or not isinstance(claims.get("sub"), str)
    ):
        raise errors.InvalidGrant("token is missing agent claims")
    return AgentTokenClaims(
        claims=claims,
        agent=AgentRef(name=agent["name"], namespace=agent["namespace"], uid=agent["uid"]),
        scope=tuple(scope.split()),
        kid=str(parsed.header["kid"]),
    )
