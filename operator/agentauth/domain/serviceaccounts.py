"""Verification of projected Kubernetes service-account tokens (the workload's credential).

Guarantees (all failures raise ``errors.InvalidGrant``, or ``errors.InvalidRequest`` for an
oversized token; ``jose.UnknownKeyId`` when the ``kid`` is not in the cluster JWKS so the caller
may refetch it once):
- explicit algorithm allow-list (``ALLOWED_ALGORITHMS``: RS*/PS*/ES*/EdDSA; ``none``/``HS*`` never),
- ``iss`` must equal the cluster issuer, ``aud`` must contain our issuer, ``exp`` is required,
  ``nbf``/``iat`` may not be in the future; each with at most ``clockskew.LEEWAY_SECONDS``,
- the token must be a pod-bound token (``kubernetes.io.pod``) for a service account whose
  ``sub`` agrees with the ``kubernetes.io`` claims, so a token cannot claim another identity.
- Every check above runs on every presentation. What a pod presents again (its projected token
  is the same for most of an hour) is not decoded again: the :data:`DECODED_TOKENS` tokens that
  verified most recently are kept decoded (base64url and JSON are a function of the token's
  text alone; the least recently presented goes first). Their signature is verified against
  the key set of the call and their times (``exp``, ``nbf``, ``iat``) against its time, as on
  first presentation; whether their ``iss`` and ``aud`` hold is a function of the text and the
  call's issuer and audience, so it is kept with the issuer and audience it was found for, and
  a call with another issuer or audience checks the claims again.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from agentauth.domain import clockskew, errors, jose

ALLOWED_ALGORITHMS = frozenset(
    {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "EdDSA", "Ed25519"}
)
MAX_LEEWAY = float(clockskew.LEEWAY_SECONDS)


@dataclass(frozen=True, slots=True)
class ServiceAccountIdentity:
    """Who a verified service-account token says the caller is."""

    namespace: str
    service_account: str
    service_account_uid: str
    pod_name: str
    pod_uid: str
    expires_at: int
    jti: str | None

    @property
    def username(self) -> str:
        return f"system:serviceaccount:{self.namespace}:{self.service_account}"


def _str_field(obj: Any, key: str) -> str:
    value = obj.get(key) if isinstance(obj, dict) else None
    if not isinstance(value, str) or not value:
        raise errors.InvalidGrant(f"service-account token has no kubernetes.io {key}")
    return value


def verify_service_account_token(
    token: str,
    *,
    jwks: jose.PublicKeySet,
    issuer: str,
    audience: str,
    now: datetime,
    leeway: float = MAX_LEEWAY,
) -> ServiceAccountIdentity:
    """Verify a projected service-account token locally against the cluster's JWKS.

    ``issuer`` is the cluster's service-account issuer; ``audience`` our own issuer URL.
    """
    within = min(leeway, MAX_LEEWAY)
    # Taken out, and put back last when it verifies again: the least recently presented token
    # is the first to go, so tokens presented once cannot push out the ones pods keep using.
    known = _decoded.pop(token, None)
    if known is not None:
        # the header passed the allow-list and named its kid: only the key and signature remain
        jose.verify_signature(known.parsed, alg=known.alg, key=jwks.get(known.kid))
        if known.issuer == issuer and known.audience == audience:
            known.validity.check(now=now.timestamp(), leeway=within)
            _decoded[token] = known
            return known.identity
        parsed, identity, (alg, kid) = known.parsed, known.identity, (known.alg, known.kid)
    else:
        parsed = jose.parse(token)
        alg, kid = jose.verify_parsed(parsed, keys=jwks, allowed_algorithms=ALLOWED_ALGORITHMS)
        identity = None
    validity = jose.check_registered_claims(
        parsed.payload, issuers=(issuer,), audience=audience, now=now.timestamp(), leeway=within
    )
    if identity is None:
        identity = identity_from_claims(parsed.payload)
        if len(_decoded) >= DECODED_TOKENS:
            _decoded.pop(next(iter(_decoded)), None)  # the oldest first
    _decoded[token] = _Verified(
        parsed=parsed,
        alg=alg,
        kid=kid,
        identity=identity,
        issuer=issuer,
        audience=audience,
        validity=validity,
    )
    return identity


@dataclass(frozen=True, slots=True)
class _Verified:
    """A token that verified: decoded, its header's allowed ``alg`` and ``kid``, its identity,
    and the issuer and audience its claims were last found to hold for, with their times
    (``validity``) to check at each call."""

    parsed: jose.ParsedJWS
    alg: str
    kid: str
    identity: ServiceAccountIdentity
    issuer: str
    audience: str
    validity: jose.Validity


DECODED_TOKENS = 1024
"""Service-account tokens kept decoded after they verified (a few KiB each): see the module
docstring. Only tokens that verified enter, so garbage cannot push the others out."""

_decoded: dict[str, _Verified] = {}


def identity_from_claims(claims: dict[str, Any]) -> ServiceAccountIdentity:
    """Extract the pod-bound identity from verified claims (also used after a TokenReview)."""
    k8s = claims.get("kubernetes.io")
    if not isinstance(k8s, dict):
        raise errors.InvalidGrant("token is not a Kubernetes service-account token")
    namespace = _str_field(k8s, "namespace")
    sa = k8s.get("serviceaccount")
    sa_name, sa_uid = _str_field(sa, "name"), _str_field(sa, "uid")
    pod = k8s.get("pod")
    if not isinstance(pod, dict):
        raise errors.InvalidGrant("service-account token is not bound to a pod")
    if claims.get("sub") != f"system:serviceaccount:{namespace}:{sa_name}":
        raise errors.InvalidGrant("service-account token subject does not match its claims")
    jti = claims.get("jti")
    return ServiceAccountIdentity(
        namespace=namespace,
        service_account=sa_name,
        service_account_uid=sa_uid,
        pod_name=_str_field(pod, "name"),
        pod_uid=_str_field(pod, "uid"),
        expires_at=int(claims["exp"]),
        jti=jti if isinstance(jti, str) else None,
    )


POD_NAME_EXTRA = "authentication.kubernetes.io/pod-name"
POD_UID_EXTRA = "authentication.kubernetes.io/pod-uid"


def identity_from_token_review(status: dict[str, Any], *, audience: str) -> ServiceAccountIdentity:
    """The identity of a TokenReview ``status`` (``authenticated`` must be true, ``audience``
    among the audiences the API server confirmed, the user a service account, and the token bound
    to a pod).

    The review asks for ``audience`` in ``spec.audiences``; the confirmed ``status.audiences`` is
    checked as well, so an authenticator that ignores requested audiences cannot make a token
    minted for another service acceptable here.
    """
    if status.get("authenticated") is not True:
        raise errors.InvalidGrant("the cluster rejected the service-account token")
    confirmed = status.get("audiences")
    if not isinstance(confirmed, list) or audience not in confirmed:
        raise errors.InvalidGrant(
            f"the cluster did not confirm that the service-account token is meant for {audience}"
        )
    user = status.get("user") or {}
    username = str(user.get("username", ""))
    parts = username.split(":")
    if len(parts) != 4 or parts[:2] != ["system", "serviceaccount"]:
        raise errors.InvalidGrant("token is not a Kubernetes service-account token")
    extra = user.get("extra") or {}
    pod_name, pod_uid = extra.get(POD_NAME_EXTRA) or [], extra.get(POD_UID_EXTRA) or []
    if len(pod_name) != 1 or len(pod_uid) != 1:
        raise errors.InvalidGrant("service-account token is not bound to a pod")
    return ServiceAccountIdentity(
        namespace=parts[2],
        service_account=parts[3],
        service_account_uid=str(user.get("uid", "")),
        pod_name=str(pod_name[0]),
        pod_uid=str(pod_uid[0]),
        expires_at=0,
        jti=None,
    )
