"""Registered-key agents: self-signed JWT client assertions (RFC 7523 ``private_key_jwt``).

An agent that runs outside Kubernetes registers Ed25519 public keys in its Agent's
``spec.publicKeys`` (a JWKS).  It authenticates at ``POST /oauth2/token`` with

    grant_type=client_credentials
    client_id=aauth:<name>.<namespace>@<trust-domain>            (optional; must equal iss)
    client_assertion_type=urn:ietf:params:oauth:client-assertion-type:jwt-bearer
    client_assertion=<JWT signed with a registered key, naming in cnf.jkt the key that signs
                      this request (RFC 9421)>

Choice (documented in docs/aauth.md): RFC 7523 *client assertion* (section 2.2), not a
``jwt`` subject token.  The assertion authenticates the agent as an OAuth client, which is what
it is; a ``urn:ietf:params:oauth:token-type:jwt`` subject token is reserved for the Kubernetes
service-account token, and :func:`reject_as_subject_token` refuses a self-signed assertion sent
there with an explicit ``invalid_request``.  The RFC 7523 section 2.1 *grant* form
(``grant_type=urn:ietf:params:oauth:grant-type:jwt-bearer``) is refused the same way.

Guarantees of :func:`verify_client_assertion` (every failure is ``errors.InvalidClient``,
RFC 7523 section 3.2, with a fixed description):

- header ``alg`` is ``EdDSA`` or its RFC 9864 name ``Ed25519`` (``none``, ``HS*``, ``RS*``,
  ``ES*`` ... are refused by name);
- the key is found by ``kid`` (a registered key's ``kid`` or, when it has none, its RFC 7638
  thumbprint) among the Agent's registered keys, and it must be an OKP/Ed25519 key (RSA and
  symmetric ``oct`` keys are refused by name); an assertion without ``kid`` (authlib's
  ``PrivateKeyJWT`` sends none) is accepted only when the Agent has exactly one registered key;
- ``iss`` = ``sub`` = the agent identifier; ``aud`` is (or contains) the token endpoint URL;
- ``exp`` is required and in the future, ``iat`` is required and not in the future,
  ``exp - iat`` is at most five minutes, and ``exp`` is at most five minutes (+ leeway) away;
- the assertion is bound to the key that will hold the token, in one of two ways:

  * its ``cnf`` claim (RFC 7800) carries ``jkt``, the RFC 7638 thumbprint of a key, and the
    token request must be signed (RFC 9421) by exactly that key, whose thumbprint the caller
    passes as ``signer_jkt`` (what the SDK does, with a key generated in memory);
  * it has no ``cnf``: then the token is bound to the registered key that signed the assertion
    (:attr:`VerifiedAssertion.holder_jwk`), and a signed request must be signed by that same key
    (what a plain RFC 7523 client such as authlib's ``PrivateKeyJWT`` gets).

  Either way a captured assertion is worth nothing without a private key its owner holds:
  replayed (to any token-service replica) it yields a token only the original holder can use,
  and presented in a request signed by any other key it is refused. The binding is checked
  before the ``jti`` is recorded, so a refused replay does not spend the holder's assertion;
- ``jti`` is required and accepted once per replica (the replay cache remembers it until
  ``exp`` + leeway); the binding above is what makes a replay to another replica harmless.
"""

from __future__ import annotations

import hmac
import json
import secrets
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from cryptography.hazmat.primitives.asymmetric import ed25519

from agentauth.domain import clockskew, errors, jose, tokens

CLIENT_ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
"""RFC 7523 section 2.2 ``client_assertion_type``."""

JWT_BEARER_GRANT = "urn:ietf:params:oauth:grant-type:jwt-bearer"
"""RFC 7523 section 2.1 grant type; refused (we use the client-assertion form)."""

MAX_ASSERTION_LIFETIME = 300
"""An assertion may be valid for at most five minutes."""

LEEWAY = clockskew.LEEWAY_SECONDS
"""Clock skew tolerated on ``exp``/``iat``/``nbf`` (seconds): the one leeway of every verifier."""

_ALGORITHM = "EdDSA"
_ALGORITHMS = jose.ED25519_ALGORITHMS  # EdDSA and Ed25519 (RFC 9864)


class Replayed(Exception):
    """The key was already remembered by the replay cache."""


class ReplayCache(Protocol):
    """Remembers one-time values (assertion ``jti``, request signatures) until they expire."""

    def remember(self, key: str, *, expires_at: float, now: float) -> None:
        """Record ``key`` until ``expires_at``; raise :class:`Replayed` if it is already there."""

    def forget(self, key: str) -> None:
        """Drop ``key`` (its request was refused, so replaying it gains nothing)."""


class InMemoryReplayCache:
    """A process-local :class:`ReplayCache` (thread-safe).

    Fails closed when full: with ``max_entries`` live entries a new key raises
    ``errors.TemporarilyUnavailable`` instead of evicting one that might be replayed.
    Several token-service replicas each hold their own cache: it is defence in depth. What makes
    a replay to another replica harmless is that every credential is bound to the key that will
    hold the resulting token (see :func:`verify_client_assertion`).
    """

    def __init__(self, *, max_entries: int = 100_000) -> None:
        self._entries: dict[str, float] = {}
        self._max_entries = max_entries
        self._lock = threading.Lock()

    def remember(self, key: str, *, expires_at: float, now: float) -> None:
        with self._lock:
            seen = self._entries.get(key)
            if seen is not None and seen > now:
                raise Replayed(key)
            if len(self._entries) >= self._max_entries:
                self._entries = {k: v for k, v in self._entries.items() if v > now}
                if len(self._entries) >= self._max_entries:
                    raise errors.TemporarilyUnavailable("replay cache is full; retry shortly")
            self._entries[key] = expires_at

    def forget(self, key: str) -> None:
        with self._lock:
            self._entries.pop(key, None)

    def __len__(self) -> int:
        return len(self._entries)


@dataclass(frozen=True, slots=True)
class AgentName:
    name: str
    namespace: str


@dataclass(frozen=True, slots=True)
class VerifiedAssertion:
    """A verified client assertion."""

    agent_id: str
    kid: str
    jti: str
    expires_at: int
    claims: dict[str, Any]
    holder_jwk: dict[str, str] | None = None
    """The public JWK the issued token must be bound to when the token request is not signed
    (the registered key that signed a ``cnf``-less assertion); ``None`` when the request's own
    signing key holds the token."""


def agent_name_from_identifier(identifier: str, *, trust_domain: str) -> AgentName:
    """Split ``aauth:<name>.<namespace>@<trust-domain>``; raise ``InvalidClient`` otherwise.

    Agent names and namespaces are DNS-1123 labels (no dots), so the split is unambiguous.
    """
    prefix = tokens.SUBJECT_PREFIX
    suffix = f"@{trust_domain}"
    if not identifier.startswith(prefix) or not identifier.endswith(suffix):
        raise errors.InvalidClient(
            f"assertion issuer must be an agent identifier {prefix}<name>.<namespace>{suffix}"
        )
    local = identifier[len(prefix) : -len(suffix)]
    name, dot, namespace = local.partition(".")
    if not dot or not name or not namespace or "." in namespace:
        raise errors.InvalidClient(
            f"assertion issuer must be an agent identifier {prefix}<name>.<namespace>{suffix}"
        )
    return AgentName(name=name, namespace=namespace)


def peek_issuer(assertion: str) -> str:
    """The assertion's unverified ``iss`` so the caller can look up the Agent (and its keys).

    Nothing is trusted from it before :func:`verify_client_assertion` succeeds.
    """
    parsed = _parse(assertion)
    iss = parsed.payload.get("iss")
    if not isinstance(iss, str) or not iss:
        raise errors.InvalidClient("assertion has no iss claim")
    return iss


def check_assertion_type(client_assertion_type: str | None) -> None:
    """Require the RFC 7523 client assertion type."""
    if client_assertion_type != CLIENT_ASSERTION_TYPE:
        raise errors.InvalidClient(f"client_assertion_type must be {CLIENT_ASSERTION_TYPE}")


def reject_grant_type(grant_type: str) -> None:
    """Refuse the RFC 7523 section 2.1 grant form with a pointer to the supported form."""
    if grant_type == JWT_BEARER_GRANT:
        raise errors.UnsupportedGrantType(
            "agent assertions are accepted as RFC 7523 client_assertion with "
            "grant_type=client_credentials, not as a jwt-bearer grant"
        )


def reject_as_subject_token(subject_token: str) -> None:
    """Refuse a self-signed agent assertion presented as an RFC 8693 ``subject_token``.

    Call it for ``subject_token_type=urn:ietf:params:oauth:token-type:jwt`` before the
    Kubernetes verifier: a token whose ``iss`` is an ``aauth:`` identifier is one of ours.
    """
    try:
        payload = jose.parse(subject_token).payload
    except errors.OAuthError:
        return  # not a JWT at all: the regular verifier reports it
    iss = payload.get("iss")
    if isinstance(iss, str) and iss.startswith(tokens.SUBJECT_PREFIX):
        raise errors.InvalidRequest(
            "agent assertions must be sent as client_assertion (RFC 7523) with "
            "grant_type=client_credentials, not as a subject_token"
        )


def registered_key(public_keys: Mapping[str, Any], kid: str) -> ed25519.Ed25519PublicKey:
    """The registered Ed25519 key with ``kid`` (or thumbprint ``kid``); ``InvalidClient`` if
    absent or not an Ed25519 key."""
    keys = public_keys.get("keys")
    if not isinstance(keys, list):
        raise errors.InvalidClient("agent has no registered public keys")
    for jwk in keys:
        if not isinstance(jwk, Mapping):
            continue
        kty = jwk.get("kty")
        jwk_kid = jwk.get("kid")
        if jwk_kid is None and kty == "OKP":
            try:
                jwk_kid = jose.jwk_thumbprint(jwk)
            except (KeyError, ValueError):
                jwk_kid = None
        if jwk_kid != kid:
            continue
        if kty == "RSA":
            raise errors.InvalidClient(
                f"registered key {kid!r} is an RSA key; only Ed25519 (OKP) keys are accepted"
            )
        if kty == "oct":
            raise errors.InvalidClient(
                f"registered key {kid!r} is a symmetric (HMAC) key; only Ed25519 (OKP) keys "
                "are accepted"
            )
        if kty != "OKP" or jwk.get("crv") != "Ed25519":
            raise errors.InvalidClient(f"registered key {kid!r} is not an Ed25519 (OKP) key")
        try:
            key = jose.public_key_from_jwk(jwk)
        except ValueError:
            raise errors.InvalidClient(f"registered key {kid!r} is malformed") from None
        if not isinstance(key, ed25519.Ed25519PublicKey):
            raise errors.InvalidClient(f"registered key {kid!r} is not an Ed25519 (OKP) key")
        return key
    raise errors.InvalidClient(f"assertion key {kid!r} is not registered for this agent")


def _only_kid(public_keys: Mapping[str, Any]) -> str:
    """The ``kid`` (or RFC 7638 thumbprint) of the Agent's one registered key, for an
    assertion that names none; ``InvalidClient`` when there is not exactly one."""
    keys = public_keys.get("keys")
    registered = [jwk for jwk in keys if isinstance(jwk, Mapping)] if isinstance(keys, list) else []
    if len(registered) != 1:
        raise errors.InvalidClient(
            f"assertion header has no kid and the agent has {len(registered)} registered keys: "
            "name the signing key in kid"
        )
    kid = registered[0].get("kid")
    if isinstance(kid, str) and kid:
        return kid
    try:
        return jose.jwk_thumbprint(registered[0])
    except (KeyError, ValueError):
        raise errors.InvalidClient("the agent's registered key is malformed") from None


def _parse(assertion: str) -> jose.ParsedJWS:
    try:
        return jose.parse(assertion)
    except errors.OAuthError as exc:
        raise errors.InvalidClient(f"client_assertion is malformed: {exc.description}") from None


def verify_client_assertion(
    *,
    assertion: str,
    agent_id: str,
    public_keys: Mapping[str, Any],
    token_endpoint: str,
    now: float,
    replay_cache: ReplayCache,
    signer_jkt: str | None,
    client_id: str | None = None,
) -> VerifiedAssertion:
    """Verify a registered-key agent's client assertion (see the module docstring).

    ``agent_id`` is the identifier of the Agent looked up from :func:`peek_issuer`;
    ``public_keys`` its ``spec.publicKeys`` as a JWKS mapping (``PublicKeySet.to_api()``);
    ``signer_jkt`` the thumbprint of the key whose RFC 9421 signature over the token request
    verified (``None`` for an unsigned request).
    """
    parsed = _parse(assertion)
    alg = parsed.header.get("alg")
    if not isinstance(alg, str) or alg not in _ALGORITHMS:
        raise errors.InvalidClient(
            f"assertion algorithm {alg!r} is not allowed; use EdDSA or Ed25519"
        )
    kid = parsed.header.get("kid")
    if kid is None:
        kid = _only_kid(public_keys)
    if not isinstance(kid, str) or not kid:
        raise errors.InvalidClient("assertion header kid must be a non-empty string")
    key = registered_key(public_keys, kid)
    try:
        jose.verify_signature(parsed, alg=alg, key=key)
    except errors.OAuthError:
        raise errors.InvalidClient("assertion signature is invalid") from None

    claims = parsed.payload
    iss, sub = claims.get("iss"), claims.get("sub")
    if iss != agent_id or sub != agent_id:
        raise errors.InvalidClient("assertion iss and sub must both be the agent identifier")
    if client_id is not None and client_id != agent_id:
        raise errors.InvalidClient("client_id does not match the assertion issuer")
    aud = claims.get("aud")
    audiences = [aud] if isinstance(aud, str) else aud if isinstance(aud, list) else []
    if token_endpoint not in audiences:
        raise errors.InvalidClient(
            f"assertion audience must be the token endpoint {token_endpoint}"
        )
    exp, iat = claims.get("exp"), claims.get("iat")
    if not isinstance(exp, int | float) or isinstance(exp, bool):
        raise errors.InvalidClient("assertion has no exp claim")
    if not isinstance(iat, int | float) or isinstance(iat, bool):
        raise errors.InvalidClient("assertion has no iat claim")
    if now >= exp + LEEWAY:
        raise errors.InvalidClient("assertion has expired")
    nbf = claims.get("nbf", iat)
    if iat > now + LEEWAY or (_is_number(nbf) and nbf > now + LEEWAY):
        raise errors.InvalidClient("assertion is not yet valid")
    if exp - iat > MAX_ASSERTION_LIFETIME or exp > now + MAX_ASSERTION_LIFETIME + LEEWAY:
        raise errors.InvalidClient(
            f"assertion lifetime exceeds {MAX_ASSERTION_LIFETIME // 60} minutes: set exp to at "
            f"most iat + {MAX_ASSERTION_LIFETIME} (authlib: expires_in={MAX_ASSERTION_LIFETIME})"
        )
    jti = claims.get("jti")
    if not isinstance(jti, str) or not jti or len(jti) > 256:
        raise errors.InvalidClient("assertion has no jti claim")
    holder_jwk = check_binding(claims, signer_jkt=signer_jkt, assertion_key=key)
    try:
        replay_cache.remember(f"assertion|{agent_id}|{jti}", expires_at=exp + LEEWAY, now=now)
    except Replayed:
        raise errors.InvalidClient("assertion jti has already been used") from None
    return VerifiedAssertion(
        agent_id=agent_id,
        kid=kid,
        jti=jti,
        expires_at=int(exp),
        claims=dict(claims),
        holder_jwk=holder_jwk,
    )


def check_binding(
    claims: Mapping[str, Any],
    *,
    signer_jkt: str | None,
    assertion_key: ed25519.Ed25519PublicKey,
) -> dict[str, str] | None:
    """Bind the assertion to the key that will hold the token (see the module docstring).

    Returns the JWK the token must be bound to when that is not the request's signing key (an
    unsigned request with a ``cnf``-less assertion: the registered ``assertion_key``), else
    ``None``; raises ``InvalidClient`` when the binding does not hold."""
    cnf = claims.get("cnf")
    if cnf is None:
        holder = jose.ed25519_jwk(assertion_key)
        if signer_jkt is None:
            return holder
        if not hmac.compare_digest(jose.jwk_thumbprint(holder), signer_jkt):
            raise errors.InvalidClient(
                "the token request is signed by a key the assertion does not name: put that "
                "key's RFC 7638 thumbprint in the assertion's cnf.jkt, or sign with the "
                "registered key"
            )
        return None
    jkt = cnf.get("jkt") if isinstance(cnf, Mapping) else None
    if not isinstance(jkt, str) or not jkt:
        raise errors.InvalidClient(
            "assertion cnf must carry jkt: the thumbprint of the key that signs the token request"
        )
    if signer_jkt is None:
        raise errors.InvalidClient(
            "the token request must be signed (RFC 9421) by the key the assertion names in cnf.jkt"
        )
    if not hmac.compare_digest(jkt, signer_jkt):
        raise errors.InvalidClient(
            "the token request is not signed by the key the assertion names in cnf.jkt"
        )
    return None


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def create_client_assertion(
    *,
    private_key: ed25519.Ed25519PrivateKey,
    kid: str,
    agent_id: str,
    token_endpoint: str,
    now: float,
    cnf_jkt: str,
    lifetime: int = 60,
    jti: str | None = None,
) -> str:
    """Sign a client assertion (what the SDK sends); ``lifetime`` is capped at five minutes.

    ``cnf_jkt`` is the RFC 7638 thumbprint of the key that will sign the token request (and
    hold the token): the SDK's per-process request-signing key, or the registered key itself.
    """
    issued_at = int(now)
    claims = {
        "iss": agent_id,
        "sub": agent_id,
        "aud": token_endpoint,
        "iat": issued_at,
        "exp": issued_at + min(lifetime, MAX_ASSERTION_LIFETIME),
        "jti": jti if jti is not None else secrets.token_urlsafe(16),
        "cnf": {"jkt": cnf_jkt},
    }
    header = {"alg": _ALGORITHM, "kid": kid, "typ": "JWT"}
    signing_input = (
        jose.b64url_encode(json.dumps(header, separators=(",", ":")).encode())
        + "."
        + jose.b64url_encode(json.dumps(claims, separators=(",", ":")).encode())
    )
    signature = private_key.sign(signing_input.encode("ascii"))
    return f"{signing_input}.{jose.b64url_encode(signature)}"
