"""The token service's HTTP application (aiohttp): thin handlers over the domain layer.

Routes (DESIGN.md): ``POST /oauth2/token`` (RFC 8693 exchange; RFC 7523 client assertions with
``grant_type=client_credentials``), ``GET /.well-known/oauth-authorization-server`` (RFC 8414;
no OpenID Connect discovery document: agentauth is not an OpenID Provider), ``GET /jwks``,
``POST /oauth2/introspect``
(RFC 7662), ``POST /v1/ask``, ``GET /metrics``, ``/healthz``, ``/readyz``.

Every handler parses, calls a pure function of ``agentauth.domain`` and answers. Errors are
``errors.OAuthError`` rendered as RFC 6749 section 5.2 JSON with their HTTP status (token
endpoint answers, issued or denied, name their audit line in ``X-Agentauth-Audit-Id``; and
``Retry-After`` for 429, ``WWW-Authenticate`` for 401 on bearer-protected routes); bodies larger
than ``settings.max_body_bytes`` get 413 ``invalid_request``. Bodies are read by ``bodies``
(deadline, bounded ``gzip``/``deflate``, UTF-8 only: every malformed body is a 4xx RFC error,
audited at the token endpoint) and the server is hardened by ``hardening`` (request-head
deadline, no tracebacks for client errors). Token responses carry ``Cache-Control: no-store``.
``/readyz`` is 200 only once every cache synced and a signing key is loaded.

Rate limits (per replica): token requests per client address and per agent, Ask per agent,
introspection per client address and per authenticated caller.

Subject token dispatch (``subject_token_type``):
- ``urn:ietf:params:oauth:token-type:jwt``: a projected Kubernetes service-account token,
  verified locally against the cluster JWKS (refetched once on an unknown ``kid``) or by
  TokenReview (``settings.token_review``), then bound to its pod (``domain.exchanging``).
- ``urn:ietf:params:oauth:token-type:id_token`` / ``urn:agentauth:params:token-type:aws-signed-
  request``: cloud federation, see the seams below.
- ``urn:ietf:params:oauth:token-type:access_token`` with an ``actor_token``: chain of agency
  (``domain.delegation``).

Collaborating modules:
- Federation: ``agentauth.tokenservice.federation.verify_gcp_subject_token(token, *, settings)``
  and ``verify_aws_subject_token(token, *, settings, replay_cache, http_session)`` return a
  ``FederatedIdentity``; ``agentauth.domain.federation.matching.match_agent(identity, agents)``
  names the Agent.
- AAuth: ``agentauth.domain.signatures.verify_request`` — when a token request carries
  ``Signature-Input``/``Signature``/``Signature-Key`` headers, the signature must verify (once:
  signatures are replay-checked) and the issued token is bound to the signing key
  (``cnf: {jwk, jkt}``). A key-bound token presented to ``/v1/ask``, ``/v1/access-requests`` or
  as ``actor_token`` needs a request signed by its key.
  ``agentauth.domain.assertions.verify_client_assertion`` — ``grant_type=client_credentials`` with
  an RFC 7523 ``client_assertion`` signed by a key in the Agent's ``spec.publicKeys``, naming in
  ``cnf.jkt`` the key that signs the request. AWS and GCP subject tokens name that key too, so
  every credential is bound to the key that will hold its token: a replay to another replica
  (whose replay caches never saw it) yields nothing the replayer can use. A refused request's
  signature is forgotten (``ServiceContext.forget_signature``), so garbage cannot fill the cache.
- JIT: ``agentauth.tokenservice.accessrequests.add_routes(app, *, context)`` adds
  ``POST /v1/access-requests`` and ``GET /v1/access-requests/{name}``. ``context`` is a
  ``ServiceContext``: ``settings``, ``state`` (``snapshot()``, ``changed`` condition for
  long-polls), ``kube`` (the API client, ``None`` without a cluster), ``now()`` and
  ``await context.authenticate(request)`` which checks the caller's ``Authorization: Bearer``
  agent token (signature, issuer, audience = our issuer, expiry, Agent still present and usable,
  scope still held) and returns an ``Authenticated(claims, agent)`` or raises ``InvalidToken``.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import hmac
import json
import logging
import math
import sys
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from aiohttp import http_exceptions, web, web_protocol

from agentauth.domain import (
    asking,
    assertions,
    delegation,
    errors,
    exchanging,
    jose,
    keys,
    serviceaccounts,
    signatures,
    tokens,
)
from agentauth.domain.federation import aws as aws_federation
from agentauth.domain.federation import matching
from agentauth.domain.models import Agent
from agentauth.kube import client as kubeclient
from agentauth.kube import config as kubeconfig
from agentauth.kube import jsontext
from agentauth.tokenservice import bodies, federation, hardening, observability, ratelimit
from agentauth.tokenservice import settings as settings_module
from agentauth.tokenservice import shared as shared_module
from agentauth.tokenservice import state as state_module

log = logging.getLogger(__name__)

GRANT_TYPE_CLIENT_CREDENTIALS = "client_credentials"
FORM_CONTENT_TYPE = bodies.FORM_CONTENT_TYPE
NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}
SIGNATURE_KEY = web.RequestKey("agentauth_signature_replay_key", str)
AUDIT_HEADER = "X-Agentauth-Audit-Id"
"""Token-endpoint answers (issued or denied) name their audit line here; the body stays RFC 6749."""


@dataclass(frozen=True, slots=True)
class Authenticated:
    """A caller authenticated by its agent token."""

    claims: tokens.AgentTokenClaims
    agent: Agent
    token: str


class ServiceContext:
    """What route plug-ins (access requests) get: settings, state, API client, authentication."""

    def __init__(
        self,
        *,
        settings: settings_module.Settings,
        state: state_module.ServiceState,
        kube: kubeclient.KubeClient | None,
        metrics: observability.Metrics,
        shared: shared_module.WorkerShared | None = None,
        worker: int = 0,
    ) -> None:
        self.settings = settings
        self.state = state
        self.kube = kube
        self.metrics = metrics
        self.shared = shared
        """What the workers of this replica share (``None`` with one worker); ``worker`` is this
        process's index among them."""
        self.worker = worker
        # Every request signature is accepted once (within its 60 s window), per replica (all
        # its workers). The signature of a refused request is forgotten again
        # (``forget_signature``): anyone can sign garbage with a key of their own, and must not
        # fill the cache with it.
        self.signature_replay: assertions.ReplayCache = (
            shared.signature_replay if shared is not None else assertions.InMemoryReplayCache()
        )

    def readiness(self) -> dict[str, Any]:
        """``state.readiness()`` of this worker, and with several workers the replica's: ready
        only when every worker is (each publishes its own readiness, see ``serve``)."""
        report = dict(self.state.readiness())
        if self.shared is None:
            return report
        self.shared.board.set(self.worker, bool(report["ready"]))
        waiting = self.shared.board.not_ready()
        if report["ready"] and waiting:
            report = {
                "ready": False,
                "reason": "workers not ready: " + ", ".join(str(index) for index in waiting),
            }
        return {**report, "worker": self.worker}

    @staticmethod
    def now() -> datetime:
        return datetime.now(UTC)

    def keyset(self) -> keys.KeySet:
        keyset = self.state.keyset()
        if keyset is None:
            raise errors.TemporarilyUnavailable("the issuer signing keys are not loaded yet")
        return keyset

    async def verify_signed_request(
        self, request: web.Request, *, now: datetime
    ) -> signatures.VerifiedRequest | None:
        """The RFC 9421 signature of ``request`` (verified, accepted once); None if unsigned."""
        if "Signature-Input" not in request.headers and "Signature" not in request.headers:
            return None
        try:
            verified = signatures.verify_request(
                method=request.method,
                url=self.settings.public_url + request.rel_url.path_qs,
                headers=[(k, v) for k, v in request.raw_headers],
                body=await bodies.read(
                    request,
                    timeout=self.settings.body_timeout,
                    max_bytes=self.settings.max_body_bytes,
                ),
                now=now.timestamp(),
            )
        except signatures.SignatureError as exc:
            raise errors.InvalidRequest(f"request signature is invalid: {exc.reason}") from None
        try:
            self.signature_replay.remember(
                "sig|" + verified.replay_id.hex(),
                expires_at=now.timestamp() + 2 * signatures.MAX_AGE_SECONDS,
                now=now.timestamp(),
            )
        except assertions.Replayed:
            raise errors.InvalidRequest("request signature was already used (replay)") from None
        request[SIGNATURE_KEY] = "sig|" + verified.replay_id.hex()
        return verified

    def forget_signature(self, request: web.Request) -> None:
        """The request was refused: its signature need not be remembered (see ``__init__``)."""
        key = request.get(SIGNATURE_KEY)
        if key is not None:
            self.signature_replay.forget(key)

    @staticmethod
    def require_possession(
        claims: Mapping[str, Any], signed: signatures.VerifiedRequest | None, *, what: str
    ) -> None:
        """A key-bound token (``cnf``) counts only with a request signed by its key.

        Raises ``InvalidGrant`` naming ``what`` (the token's role) otherwise, so a stolen bound
        token is worth nothing without the private key it is bound to.
        """
        cnf = claims.get("cnf")
        if cnf is None:
            return
        jkt = cnf.get("jkt") if isinstance(cnf, Mapping) else None
        if not isinstance(jkt, str) or not jkt:
            raise errors.InvalidGrant(f"{what} has a malformed cnf claim")
        if signed is None:
            raise errors.InvalidGrant(
                f"{what} is bound to a key (cnf): sign the request with that key (RFC 9421)"
            )
        if not hmac.compare_digest(signed.jkt, jkt):
            raise errors.InvalidGrant(f"the request is not signed by the key {what} is bound to")

    async def authenticate(self, request: web.Request) -> Authenticated:
        """Verify ``Authorization: Bearer <agent token>``; ``InvalidToken`` (401) otherwise."""
        header = request.headers.get("Authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise errors.InvalidToken(
                "missing bearer agent token",
                headers={"WWW-Authenticate": 'Bearer realm="agentauth"'},
            )
        now = self.now()
        try:
            claims = tokens.verify(
                token.strip(),
                public_keys=self.keyset().public_keys(),
                issuer=self.settings.issuer,
                audience=self.settings.issuer,
                now=now,
            )
            agent = exchanging.check_token_current(claims, snapshot=self.state.snapshot(), now=now)
            self.require_possession(
                claims.claims,
                await self.verify_signed_request(request, now=now),
                what="the agent token",
            )
        except (errors.InvalidGrant, errors.InvalidRequest) as exc:
            raise errors.InvalidToken(
                exc.description,
                headers={
                    "WWW-Authenticate": 'Bearer realm="agentauth", error="invalid_token", '
                    f'error_description="{_header_safe(exc.description)}"'
                },
            ) from None
        return Authenticated(claims=claims, agent=agent, token=token.strip())


def _header_safe(text: str) -> str:
    """``text`` as RFC 6749 allows in ``error_description`` (%x20-21 / %x23-5B / %x5D-7E).

    Descriptions can echo attacker input (a token's ``kid``); anything else, quotes and
    backslashes included, becomes '?', so it can never close the quoted string and add
    parameters to the challenge.
    """
    return "".join(c if " " <= c <= "~" and c not in '"\\' else "?" for c in text)


def json_response(
    body: Mapping[str, Any], *, status: int = 200, headers: Mapping[str, str] = NO_STORE
) -> web.Response:
    """``web.json_response`` (``application/json; charset=utf-8``) by :mod:`kube.jsontext`
    (orjson), a quarter of its cost on the token endpoint."""
    return web.Response(
        body=jsontext.encode_bytes(body),
        status=status,
        headers=headers,
        content_type="application/json",
        charset="utf-8",
    )


def _first(form: Mapping[str, Sequence[str]], name: str) -> str | None:
    values = form.get(name)
    return values[0] if values else None


class TokenService:
    """The handlers. One instance per application."""

    def __init__(self, context: ServiceContext) -> None:
        self.context = context
        self.settings = context.settings
        self.state = context.state
        self.metrics = context.metrics
        shared = context.shared
        budgets = ratelimit.budgets(self.settings)

        def local(name: str) -> ratelimit.Buckets:
            budget = budgets[name]
            return ratelimit.TokenBuckets(
                rate=budget.rate, burst=budget.burst, refusal=budget.refusal
            )

        # Workers share their buckets (one budget per replica); a single process keeps its own.
        self.buckets: ratelimit.Buckets = shared.buckets if shared is not None else local("agent")
        self.client_buckets: ratelimit.Buckets | None = None
        if self.settings.client_rate_limit_per_second > 0:
            self.client_buckets = shared.client_buckets if shared is not None else local("client")
        self.ask_buckets: ratelimit.Buckets = (
            shared.ask_buckets if shared is not None else local("ask")
        )
        self.introspection_buckets: ratelimit.Buckets = (
            shared.introspection_buckets if shared is not None else local("introspection")
        )
        self._federation_settings = federation.FederationSettings(
            issuer=self.settings.issuer,
            aws_sts_test_endpoint=self.settings.aws_sts_test_endpoint,
            gcp_certs_url=self.settings.gcp_certs_url,
        )
        self._aws_replay: aws_federation.ReplayCache = (
            shared.aws_replay if shared is not None else aws_federation.InMemoryReplayCache()
        )
        self._assertion_replay: assertions.ReplayCache = (
            shared.assertion_replay if shared is not None else assertions.InMemoryReplayCache()
        )

    # -- helpers -----------------------------------------------------------------------------

    async def _form(self, request: web.Request) -> dict[str, list[str]]:
        return await bodies.form(
            request, timeout=self.settings.body_timeout, max_bytes=self.settings.max_body_bytes
        )

    def _json(
        self, body: Mapping[str, Any], *, status: int = 200, headers: Mapping[str, str] = NO_STORE
    ) -> web.Response:
        return json_response(body, status=status, headers=headers)

    # -- token endpoint ----------------------------------------------------------------------

    async def token(self, request: web.Request) -> web.Response:
        started = time.perf_counter()
        subject_type = "unknown"
        fields: dict[str, Any] = {"client_ip": request.remote}
        if self.client_buckets is not None:
            # Before the body is read or any token looked at: refusing is cheap, and a refused
            # request is counted in the metrics but not audited (an audit line per request of a
            # flood would be the amplification the limit is there to stop).
            try:
                self.client_buckets.take(request.remote or "unknown")
            except errors.RateLimited as exc:
                self.metrics.exchange_done(result=exc.error, subject_type=subject_type, seconds=0.0)
                raise
        try:
            form = await self._form(request)
            grant_type = (form.get("grant_type") or [""])[0]
            subject_type = (form.get("subject_token_type") or [grant_type or "unknown"])[0]
            if subject_type not in exchanging.SUBJECT_TOKEN_TYPES:
                subject_type = "client_assertion" if grant_type == "client_credentials" else "other"
            now = self.context.now()
            keyset = self.context.keyset()
            snapshot = self.state.snapshot()
            # a signed request is checked before anything in it is acted upon
            signed = await self.context.verify_signed_request(request, now=now)
            cnf = signed.public_jwk if signed is not None else None
            if grant_type == GRANT_TYPE_CLIENT_CREDENTIALS:
                decision, holder = self._client_assertion(
                    form, snapshot=snapshot, now=now, signed=signed
                )
                cnf = holder or cnf
            else:
                assertions.reject_grant_type(grant_type)
                exchange = exchanging.parse_request(form)
                decision = await self._exchange(
                    exchange, snapshot=snapshot, now=now, fields=fields, signed=signed
                )
            fields["agent_name"] = exchanging.agent_label(decision.agent)
            self.buckets.take(fields["agent_name"])
            issued = exchanging.mint(
                decision,
                keyset=keyset,
                issuer=self.settings.issuer,
                now=now,
                cnf_jwk=cnf,
                algorithm=self.settings.token_algorithm,
            )
        except errors.OAuthError as exc:
            fields.update(error=exc.error, error_description=exc.description)
            exc.headers[AUDIT_HEADER] = observability.audit(
                "denied", subject_token_type=subject_type, **fields
            )
            self.metrics.exchange_done(
                result=exc.error, subject_type=subject_type, seconds=time.perf_counter() - started
            )
            raise
        claims = issued.claims
        audit_id = observability.audit(
            "issued",
            subject_token_type=subject_type,
            agent=claims["agent"],
            sub=claims["sub"],
            act=claims.get("act"),
            scope=claims["scope"],
            aud=claims["aud"],
            jti=claims["jti"],
            exp=claims["exp"],
            kid=issued.kid,
            access_requests=list(decision.access_requests) or None,
            **fields,
        )
        self.metrics.exchange_done(
            result="issued", subject_type=subject_type, seconds=time.perf_counter() - started
        )
        body: dict[str, Any] = {
            "access_token": issued.token,
            "issued_token_type": exchanging.TOKEN_TYPE_ACCESS_TOKEN,
            "token_type": "Bearer",
            "expires_in": issued.expires_in,
            "scope": claims["scope"],
        }
        return self._json(body, headers={**NO_STORE, AUDIT_HEADER: audit_id})

    async def _exchange(
        self,
        exchange: exchanging.ExchangeRequest,
        *,
        snapshot: exchanging.Snapshot,
        now: datetime,
        fields: dict[str, Any],
        signed: signatures.VerifiedRequest | None,
    ) -> exchanging.Decision:
        kind = exchange.subject_token_type
        fields["subject"] = exchanging.audit_fingerprint(exchange.subject_token)
        if exchange.actor_token is not None:
            return await self._delegate(exchange, snapshot=snapshot, now=now, signed=signed)
        if kind == exchanging.TOKEN_TYPE_JWT:
            try:
                identity = await self._service_account(exchange.subject_token, now=now)
            except errors.InvalidGrant:
                # a self-signed agent assertion sent here gets the AAuth module's pointer to
                # the right grant instead of a bare verification failure (checked only on
                # failure: the happy path does not parse the token twice)
                assertions.reject_as_subject_token(exchange.subject_token)
                raise
            fields["pod"] = f"{identity.namespace}/{identity.pod_name}"
            return exchanging.decide_for_service_account(
                identity=identity,
                target=exchange.target,
                snapshot=snapshot,
                issuer=self.settings.issuer,
                trust_domain=self.settings.trust_domain,
                now=now,
            )
        if kind in (exchanging.TOKEN_TYPE_ID_TOKEN, exchanging.TOKEN_TYPE_AWS):
            agent = await self._federated_agent(
                exchange, snapshot=snapshot, fields=fields, signed=signed
            )
            return exchanging.decide_for_agent(
                agent=agent,
                target=exchange.target,
                snapshot=snapshot,
                issuer=self.settings.issuer,
                trust_domain=self.settings.trust_domain,
                now=now,
            )
        raise errors.InvalidRequest(
            "actor_token is required when subject_token_type is an access token"
        )

    async def _service_account(
        self, token: str, *, now: datetime
    ) -> serviceaccounts.ServiceAccountIdentity:
        if len(token) > jose.MAX_TOKEN_BYTES:
            raise errors.InvalidRequest(f"token exceeds {jose.MAX_TOKEN_BYTES} bytes")
        if self.settings.token_review:
            jose.parse(token)  # refuse garbage before spending an API call on it
            return await self.state.review_token(token)

        def verify(keyset: jose.PublicKeySet) -> serviceaccounts.ServiceAccountIdentity:
            return serviceaccounts.verify_service_account_token(
                token,
                jwks=keyset,
                issuer=self.settings.cluster_issuer,
                audience=self.settings.issuer,
                now=now,
            )

        try:
            return verify(await self.state.cluster_keys(refresh=False))
        except jose.UnknownKeyId:
            # the cluster may have rotated its keys; RemoteKeys rate-limits the refetch
            return verify(await self.state.cluster_keys(refresh=True))

    async def _federated_agent(
        self,
        exchange: exchanging.ExchangeRequest,
        *,
        snapshot: exchanging.Snapshot,
        fields: dict[str, Any],
        signed: signatures.VerifiedRequest | None,
    ) -> Agent:
        # Both cloud credentials name the key that must sign this request (and hold the token).
        signer_jkt = signed.jkt if signed is not None else None
        if exchange.subject_token_type == exchanging.TOKEN_TYPE_ID_TOKEN:
            identity = await federation.verify_gcp_subject_token(
                exchange.subject_token, settings=self._federation_settings, signer_jkt=signer_jkt
            )
        else:
            identity = await federation.verify_aws_subject_token(
                exchange.subject_token,
                settings=self._federation_settings,
                replay_cache=self._aws_replay,
                signer_jkt=signer_jkt,
            )
        fields["federated"] = identity.describe()
        return matching.match_agent(
            identity, snapshot.federated_agents(), policy=self.settings.claim_policy
        )

    async def _delegate(
        self,
        exchange: exchanging.ExchangeRequest,
        *,
        snapshot: exchanging.Snapshot,
        now: datetime,
        signed: signatures.VerifiedRequest | None,
    ) -> exchanging.Decision:
        if exchange.subject_token_type != exchanging.TOKEN_TYPE_ACCESS_TOKEN:
            raise errors.InvalidRequest(
                "with an actor_token the subject_token_type must be "
                f"{exchanging.TOKEN_TYPE_ACCESS_TOKEN}"
            )
        assert exchange.actor_token is not None  # noqa: S101 - checked by the caller
        our_keys = self.context.keyset().public_keys()
        try:
            actor = tokens.verify(
                exchange.actor_token,
                public_keys=our_keys,
                issuer=self.settings.issuer,
                audience=self.settings.issuer,
                now=now,
            )
        except errors.OAuthError as exc:
            raise exc.about("actor_token") from None
        # The actor is who presents this request: a bound actor token needs its key's signature.
        self.context.require_possession(actor.claims, signed, what="actor_token")
        subject_issuer = delegation.peek_issuer(exchange.subject_token)
        trusted_keys: dict[str, jose.PublicKeySet] = {}
        if subject_issuer != self.settings.issuer:
            found = await self.state.trusted_keys(subject_issuer, refresh=False)
            if found is not None:
                trusted_keys[subject_issuer] = found

        def verify_subject() -> delegation.Subject:
            return delegation.verify_subject(
                exchange.subject_token,
                issuer=self.settings.issuer,
                our_keys=our_keys,
                trusted=self.settings.trusted_issuers,
                trusted_keys=trusted_keys,
                snapshot=snapshot,
                now=now,
            )

        try:
            try:
                subject = verify_subject()
            except jose.UnknownKeyId:
                if subject_issuer == self.settings.issuer:
                    raise
                refreshed = await self.state.trusted_keys(subject_issuer, refresh=True)
                if refreshed is None:
                    raise
                trusted_keys[subject_issuer] = refreshed
                subject = verify_subject()
        except errors.OAuthError as exc:
            raise exc.about("subject_token") from None
        return delegation.decide(
            subject=subject,
            actor=actor,
            target=exchange.target,
            snapshot=snapshot,
            issuer=self.settings.issuer,
            now=now,
            signer_jkt=signed.jkt if signed is not None else None,
        )

    def _client_assertion(
        self,
        form: Mapping[str, Sequence[str]],
        *,
        snapshot: exchanging.Snapshot,
        now: datetime,
        signed: signatures.VerifiedRequest | None,
    ) -> tuple[exchanging.Decision, dict[str, str] | None]:
        """The decision for a registered-key agent, and the JWK its token is bound to when that
        is not the request's signing key (:attr:`assertions.VerifiedAssertion.holder_jwk`)."""
        assertion = (form.get("client_assertion") or [""])[0]
        assertions.check_assertion_type(_first(form, "client_assertion_type"))
        if not assertion:
            raise errors.InvalidRequest("missing parameter: client_assertion")
        agent_id = assertions.peek_issuer(assertion)
        name = assertions.agent_name_from_identifier(
            agent_id, trust_domain=self.settings.trust_domain
        )
        agent = snapshot.agent(name.namespace, name.name)
        if agent is None or agent.spec.public_keys is None:
            raise errors.InvalidClient(f"agent {name.namespace}/{name.name} has no registered keys")
        verified = assertions.verify_client_assertion(
            assertion=assertion,
            agent_id=agent_id,
            public_keys=agent.spec.public_keys.to_api(),
            token_endpoint=self.settings.token_endpoint,
            now=now.timestamp(),
            replay_cache=self._assertion_replay,
            signer_jkt=signed.jkt if signed is not None else None,
            client_id=_first(form, "client_id"),
        )
        decision = exchanging.decide_for_agent(
            agent=agent,
            target=exchanging.parse_target(form),
            snapshot=snapshot,
            issuer=self.settings.issuer,
            trust_domain=self.settings.trust_domain,
            now=now,
        )
        return decision, verified.holder_jwk

    # -- discovery, keys, introspection ------------------------------------------------------

    def metadata_document(self) -> dict[str, Any]:
        base = self.settings.public_url
        return {
            "issuer": self.settings.issuer,
            "token_endpoint": self.settings.token_endpoint,
            "jwks_uri": f"{base}/jwks",
            "introspection_endpoint": f"{base}/oauth2/introspect",
            "grant_types_supported": [
                exchanging.GRANT_TYPE_TOKEN_EXCHANGE,
                GRANT_TYPE_CLIENT_CREDENTIALS,
            ],
            "token_endpoint_auth_methods_supported": ["none", "private_key_jwt"],
            "token_endpoint_auth_signing_alg_values_supported": list(tokens.ALGORITHMS),
            # Not a registered client-auth method: callers present a bearer agent token or a
            # service-account token for this issuer (RFC 7662 section 2.1 asks for some).
            "introspection_endpoint_auth_methods_supported": ["bearer"],
            "response_types_supported": ["token"],
            "token_types_supported": list(exchanging.SUBJECT_TOKEN_TYPES),
            "ask_endpoint": f"{base}/v1/ask",
            "access_requests_endpoint": f"{base}/v1/access-requests",
        }

    async def metadata(self, request: web.Request) -> web.Response:
        return self._json(self.metadata_document(), headers={"Cache-Control": "max-age=300"})

    async def jwks(self, request: web.Request) -> web.Response:
        return self._json(
            self.context.keyset().public_jwks(algorithm=self.settings.token_algorithm),
            headers={"Cache-Control": "max-age=60"},
        )

    async def _introspection_caller(self, request: web.Request, *, now: datetime) -> str:
        """RFC 7662 section 2.1: introspection callers authenticate (no token scanning).

        Accepted: ``Authorization: Bearer`` with one of our agent tokens (a bound one with its
        key's signature, as everywhere) or a Kubernetes service-account token whose audience is
        our issuer (a resource server running in the cluster). Returns who called, for the audit
        line; raises ``InvalidToken`` (401) otherwise.
        """
        challenge = {"WWW-Authenticate": 'Bearer realm="agentauth"'}
        scheme, _, credential = request.headers.get("Authorization", "").partition(" ")
        credential = credential.strip()
        if scheme.lower() != "bearer" or not credential:
            raise errors.InvalidToken(
                "introspection needs authorization: a bearer agent token or a "
                "service-account token for this issuer",
                headers=challenge,
            )
        try:
            issuer = delegation.peek_issuer(credential)
        except errors.OAuthError as exc:
            raise errors.InvalidToken(exc.description, headers=challenge) from None
        if issuer == self.settings.issuer:
            caller = await self.context.authenticate(request)
            return exchanging.agent_label(caller.agent)
        try:
            identity = await self._service_account(credential, now=now)
            # The signature outlives the pod and the service account: a token of a deleted pod
            # (or of a service account created again under its name) is no caller.
            await self.state.confirm_identity(identity)
        except (errors.InvalidGrant, errors.InvalidRequest) as exc:
            raise errors.InvalidToken(
                f"introspection caller: {exc.description}", headers=challenge
            ) from None
        return f"system:serviceaccount:{identity.namespace}:{identity.service_account}"

    async def introspect(self, request: web.Request) -> web.Response:
        if self.client_buckets is not None:
            # per address before any token is verified, then per authenticated caller
            self.client_buckets.take(request.remote or "unknown")
        caller = await self._introspection_caller(request, now=self.context.now())
        self.introspection_buckets.take(caller)
        form = await self._form(request)
        token = (form.get("token") or [""])[0]
        if not token:
            raise errors.InvalidRequest("missing parameter: token")
        answer = exchanging.introspect(
            token,
            public_keys=self.context.keyset().public_keys(),
            issuer=self.settings.issuer,
            snapshot=self.state.snapshot(),
            now=self.context.now(),
        )
        active = bool(answer["active"])
        self.metrics.introspections.labels(active=str(active).lower()).inc()
        observability.audit(
            "introspected",
            caller=caller,
            active=active,
            jti=answer.get("jti"),
            token=None if active else exchanging.audit_fingerprint(token),
        )
        return self._json(answer)

    # -- Ask ---------------------------------------------------------------------------------

    async def ask(self, request: web.Request) -> web.Response:
        caller = await self.context.authenticate(request)
        self.ask_buckets.take(exchanging.agent_label(caller.agent))
        body = await bodies.json_value(
            request, timeout=self.settings.body_timeout, max_bytes=self.settings.max_body_bytes
        )
        try:
            asked = asking.parse_request(body)
        except asking.InvalidAsk as exc:
            raise errors.InvalidRequest(exc.message) from None
        question, action = asked.question, asked.action
        answer = asking.answer_question(
            question,
            action=action,
            agent=caller.agent,
            snapshot=self.state.snapshot(),
            now=self.context.now(),
        )
        outcome = (
            "allowed"
            if answer.allowed
            else "approval_required"
            if answer.approval_required
            else "not_allowed"
        )
        self.metrics.asks.labels(outcome=outcome).inc()
        audit_id = observability.audit(
            "asked",
            agent=caller.claims.agent.claim(),
            sub=caller.claims.subject,
            jti=caller.claims.claims.get("jti"),
            question=question,
            action=action,
            context=asked.context or None,
            capability=answer.capability,
            outcome=outcome,
            confidence=answer.confidence,
            clauses=[
                {"text": c.text, "decision": c.decision, "capability": c.capability}
                for c in answer.clauses
            ]
            if len(answer.clauses) > 1
            else None,
        )
        return self._json({**answer.body(), "audit_id": audit_id})

    # -- probes and metrics ------------------------------------------------------------------

    async def healthz(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def readyz(self, request: web.Request) -> web.Response:
        report = self.context.readiness()
        ready = bool(report.pop("ready"))
        body = {"status": "ready" if ready else "not ready", **report}
        return web.json_response(body, status=200 if ready else 503)

    async def metrics_endpoint(self, request: web.Request) -> web.Response:
        shared = self.context.shared
        if shared is None:
            body = self.metrics.render()
        else:  # the replica's: this worker's live values, its siblings' last published
            siblings = {
                index: snapshot
                for index in range(shared.workers)
                if index != self.context.worker
                and (snapshot := shared.metrics.read(index)) is not None
            }
            body = self.metrics.render(worker=self.context.worker, siblings=siblings)
        return web.Response(body=body, headers={"Content-Type": "text/plain; version=0.0.4"})


CONTEXT_KEY = web.AppKey("context", ServiceContext)
SERVICE_KEY = web.AppKey("service", TokenService)
MAX_BODY_KEY = web.AppKey("max_body", int)


@web.middleware
async def oauth_errors(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """Render ``OAuthError`` (and 413) as RFC 6749 JSON; never leak internals on a crash."""
    try:
        return await handler(request)
    except errors.OAuthError as exc:
        # a refused request had no effect: its replay can gain nothing, so forget its signature
        request.app[CONTEXT_KEY].forget_signature(request)
        return web.json_response(
            exc.to_json(), status=exc.status, headers={**NO_STORE, **exc.headers}
        )
    except web.HTTPRequestEntityTooLarge:
        return web.json_response(
            {
                "error": "invalid_request",
                "error_description": f"request body exceeds {request.app[MAX_BODY_KEY]} bytes",
            },
            status=413,
            headers=NO_STORE,
        )
    except web.HTTPClientError as exc:
        # aiohttp's own refusals (unknown path, wrong method, ...) in the same RFC 6749 shape
        headers = {k: v for k, v in exc.headers.items() if k.lower() in ("allow", "retry-after")}
        return web.json_response(
            {"error": "invalid_request", "error_description": exc.reason.lower()},
            status=exc.status,
            headers={**NO_STORE, **headers},
        )
    except web.HTTPException:
        raise
    except (web_protocol.RequestPayloadError, http_exceptions.HttpProcessingError):
        # the body could not be read as sent (broken chunked framing, connection cut short)
        return web.json_response(
            {"error": "invalid_request", "error_description": "the request body is malformed"},
            status=400,
            headers=NO_STORE,
        )
    except Exception:
        log.exception("unhandled error in %s %s", request.method, request.path)
        return web.json_response(
            {"error": "server_error", "error_description": "internal error"}, status=500
        )


def build_app(
    *,
    settings: settings_module.Settings,
    state: state_module.ServiceState,
    kube: kubeclient.KubeClient | None = None,
    shared: shared_module.WorkerShared | None = None,
    worker: int = 0,
) -> web.Application:
    """The aiohttp application over ``state`` (``KubeState`` or ``MemoryState``); ``shared`` and
    ``worker`` for one of several worker processes (``agentauth.tokenservice.workers``)."""
    app = web.Application(
        client_max_size=settings.max_body_bytes,
        middlewares=[oauth_errors],
        handler_args=hardening.handler_args(header_timeout=settings.header_timeout),
    )
    metrics = observability.Metrics(state.cache_sizes)
    context = ServiceContext(
        settings=settings, state=state, kube=kube, metrics=metrics, shared=shared, worker=worker
    )
    service = TokenService(context)
    app[CONTEXT_KEY] = context
    app[MAX_BODY_KEY] = settings.max_body_bytes
    app[SERVICE_KEY] = service
    app.router.add_post("/oauth2/token", service.token)
    # RFC 8414 only. No /.well-known/openid-configuration: agentauth is no OpenID Provider
    # (no authorization endpoint, no ID tokens, no RS256), so no valid OIDC discovery document
    # exists for it; clients that try OIDC discovery first (MCP, authlib) fall back to RFC 8414.
    app.router.add_get("/.well-known/oauth-authorization-server", service.metadata)
    app.router.add_get("/jwks", service.jwks)
    app.router.add_post("/oauth2/introspect", service.introspect)
    app.router.add_post("/v1/ask", service.ask)
    app.router.add_get("/metrics", service.metrics_endpoint)
    app.router.add_get("/healthz", service.healthz)
    app.router.add_get("/readyz", service.readyz)
    # Imported here: the routes module builds on ServiceContext from this module.
    from agentauth.tokenservice import accessrequests

    accessrequests.add_routes(app, context=context)
    return app


def _bound_url(runner: web.AppRunner, settings: settings_module.Settings) -> str:
    port = settings.listen_port
    for address in runner.addresses:
        port = int(address[1])
        break
    scheme = "https" if settings.tls_cert else "http"
    return f"{scheme}://{settings.listen_host}:{port}"


def ssl_context(settings: settings_module.Settings) -> Any:
    if settings.tls_cert is None or settings.tls_key is None:
        return None
    from agentauth.tokenservice import tlsreload

    # Follows renewed certificate files (cert-manager) without a restart.
    return tlsreload.serving_context(settings.tls_cert, settings.tls_key)


async def serve(
    settings: settings_module.Settings,
    *,
    stop: asyncio.Event,
    started: Callable[[str], None] | None = None,
    sync_timeout: float = 60.0,
    shared: shared_module.WorkerShared | None = None,
    worker: int = 0,
) -> None:
    """Run the token service against the Kubernetes API until ``stop`` is set.

    With ``shared`` this is worker ``worker`` of several (``agentauth.tokenservice.workers``): it
    binds the port with ``SO_REUSEPORT`` beside its siblings, shares their replay caches and
    rate limits, and publishes its readiness on the shared board (``/readyz`` of any worker is
    the replica's). Each worker keeps its own caches (list+watch).

    The listener starts at once (``/healthz`` answers, ``/readyz`` is 503 until the caches
    synced); ``started`` receives the base URL once listening (useful with ``listen_port=0``).

    Shutdown, once ``stop`` is set: ``/readyz`` fails at once; after ``settings.shutdown_delay``
    seconds of serving as usual (0 by default) the listener closes, idle keep-alive connections
    are closed, every open long-poll is answered at once with its current state (the client
    polls again, through the load balancer, on a replica still serving), and in-flight requests
    get ``settings.shutdown_timeout`` seconds to finish before they are cancelled.
    """
    kube = kubeclient.KubeClient(kubeconfig.load(settings.kubeconfig), timeout=settings.api_timeout)
    state = state_module.KubeState(kube, settings)
    app = build_app(settings=settings, state=state, kube=kube, shared=shared, worker=worker)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=settings.shutdown_timeout)
    await runner.setup()
    site = web.TCPSite(
        runner,
        settings.listen_host,
        settings.listen_port,
        ssl_context=ssl_context(settings),
        reuse_port=True if shared is not None else None,
    )
    publishing: asyncio.Task[None] | None = None
    try:
        await state.start()
        await site.start()
        if shared is not None:
            publishing = asyncio.create_task(_publish_readiness(app[CONTEXT_KEY], shared, stop))
        if started is not None:
            started(_bound_url(runner, settings))
        stopping = asyncio.ensure_future(stop.wait())
        synced = asyncio.ensure_future(state.wait_synced(sync_timeout))
        await asyncio.wait({stopping, synced}, return_when=asyncio.FIRST_COMPLETED)
        if synced.done() and not synced.cancelled() and synced.exception() is None:
            freeze_heap()
        synced.cancel()
        with contextlib.suppress(asyncio.CancelledError, TimeoutError):
            await synced  # not synced in time: /readyz stays 503 and says why
        await stopping
        state.drain()
        if shared is not None:
            shared.board.set(worker, False)  # the replica is not ready once any worker drains
        log.info(
            "stopping: not ready any more; closing the listener in %gs", settings.shutdown_delay
        )
        if settings.shutdown_delay > 0:
            await asyncio.sleep(settings.shutdown_delay)  # time for load balancers to notice
    finally:
        state.drain()
        if shared is not None:
            shared.board.set(worker, False)
        if publishing is not None:
            publishing.cancel()
        started_cleanup = time.monotonic()
        await runner.cleanup()
        log.info("stopped serving in %.2fs", time.monotonic() - started_cleanup)
        await state.stop()
        await kube.close()


def freeze_heap() -> None:
    """Move every object alive now (the caches as first listed, the modules) out of the garbage
    collector's generations (``gc.freeze``), once the caches have synced.

    A full collection walks every tracked object: with 10,000 Agents, grants and pods cached,
    hundreds of thousands of them, a pause of tens of milliseconds in the middle of whichever
    request triggered it. Frozen objects are still freed by reference counting when a watch
    event replaces them; only cycles among them would outlive their use, and the caches hold
    none. A collection first, so garbage of the start-up is not frozen with them.
    """
    gc.collect()
    gc.freeze()


READINESS_INTERVAL = 0.2
"""Seconds between two publications of a worker's readiness on the shared board."""


METRICS_INTERVAL = 1.0
"""Seconds between two publications of a worker's metrics snapshot: how old a sibling's figures
may be in a scrape (Prometheus scrapes every 15 to 60 s)."""


async def _publish_readiness(
    context: ServiceContext, shared: shared_module.WorkerShared, stop: asyncio.Event
) -> None:
    """Keep this worker's flag on the board current (``context.readiness`` writes it), so the
    replica's ``/readyz`` is right whichever worker a probe reaches, and its metrics snapshot
    on the metrics board (every :data:`METRICS_INTERVAL`), so the replica's ``/metrics`` is."""
    published = -math.inf
    while True:
        context.readiness()
        if time.monotonic() - published >= METRICS_INTERVAL or stop.is_set():
            try:
                shared.metrics.publish(context.worker, context.metrics.snapshot())
            except (ValueError, errors.TemporarilyUnavailable) as exc:
                log.warning("cannot publish this worker's metrics: %s", exc)
            published = time.monotonic()
        if stop.is_set():
            return  # its last figures stay on the board for the siblings still serving
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), READINESS_INTERVAL)


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": self.formatTime(record),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry)


def configure_logging(settings: settings_module.Settings, *, stream: Any = None) -> logging.Handler:
    """Logs at ``settings.log_level`` and above on ``stream`` (default stderr; JSON lines for
    ``log_format=json``), for the whole process; called once, by ``run``. Audit lines, already
    JSON, go to stdout through their own logger (``observability.install_audit_sink``), one per
    decision at any level. Returns the handler installed on the root logger."""
    handler = logging.StreamHandler(stream)
    if settings.log_format == "json":
        handler.setFormatter(_JsonFormatter())
    root = logging.getLogger()
    root.setLevel(settings.log_level.upper())
    root.addHandler(handler)
    return handler


def run(settings: settings_module.Settings) -> int:
    """``agentauth token-service``: serve until SIGINT/SIGTERM. Returns the exit code."""
    import signal

    configure_logging(settings)
    observability.install_audit_sink(sys.stdout)
    if settings.workers > 1:
        from agentauth.tokenservice import workers

        return workers.supervise(settings, serve=serve)

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
        await serve(settings, stop=stop, started=lambda url: log.info("token service on %s", url))

    asyncio.run(main())
    return 0
