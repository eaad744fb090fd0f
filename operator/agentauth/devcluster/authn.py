"""Bearer-token authentication for the embedded control plane.

Guarantees:

- Static tokens (the kubeconfig users) are compared with :func:`hmac.compare_digest` against
  every configured token, so timing does not reveal a prefix match.
- Service-account tokens are accepted only if ``ServiceAccountTokenIssuer.verify`` accepts them
   (signature, ``RS256`` only, ``iss``, ``aud``, ``exp``, ``nbf``) *and* the service
  account still exists with the uid in the token *and*, for bound tokens, the pod or secret still
  exists with the uid in the token and (for a pod) is not past its deletion timestamp. Deleting
  the pod therefore revokes every token bound to it, as on a real cluster.
- Every failure raises :class:`Unauthenticated`; nothing returns a bool. The messages follow
  kube-apiserver's token-authenticator errors (they surface in ``TokenReview.status.error``).
- Service-account users look like the real ones: ``system:serviceaccount:NS:NAME``, uid the
  service account's uid, groups ``system:serviceaccounts``, ``system:serviceaccounts:NS``,
  ``system:authenticated``, and ``extra`` ``authentication.kubernetes.io/pod-name``/``pod-uid`` and
  ``authentication.kubernetes.io/credential-id`` (``JTI=<jti>``).
"""

from __future__ import annotations

import hmac
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from agentauth.devcluster import serviceaccounts, types

AUTHENTICATED_GROUP = "system:authenticated"
UNAUTHENTICATED_GROUP = "system:unauthenticated"
#: The user a server may map credential-less requests to, if it allows anonymous requests.
ANONYMOUS = types.UserInfo(username="system:anonymous", groups=(UNAUTHENTICATED_GROUP,))


class Unauthenticated(Exception):
    """The credentials did not authenticate; the server answers 401 without revealing why."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def _with_authenticated_group(user: types.UserInfo) -> types.UserInfo:
    if AUTHENTICATED_GROUP in user.groups:
        return user
    return types.UserInfo(
        username=user.username,
        uid=user.uid,
        groups=(*user.groups, AUTHENTICATED_GROUP),
        extra=user.extra,
    )


def _parse_timestamp(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


class Authenticator:
    """Turns an ``Authorization`` header (or a bare token, for TokenReview) into a user."""

    def __init__(
        self,
        *,
        static_tokens: Mapping[str, types.UserInfo],
        token_issuer: serviceaccounts.ServiceAccountTokenIssuer,
        reader: types.ObjectReader,
    ) -> None:
        self._static_tokens = [
            (token.encode("utf-8"), _with_authenticated_group(user))
            for token, user in static_tokens.items()
        ]
        self._issuer = token_issuer
        self._reader = reader

    @property
    def api_audiences(self) -> list[str]:
        return self._issuer.api_audiences

    def authenticate(self, authorization: str | None) -> types.UserInfo:
        """Authenticate an HTTP ``Authorization`` header value against the API audiences."""
        if authorization is None or not authorization.strip():
            raise Unauthenticated("no credentials provided")
        scheme, _, token = authorization.strip().partition(" ")
        # kube-apiserver lower-cases the scheme and refuses empty tokens the same way.
        if scheme.lower() != "bearer":
            raise Unauthenticated("unsupported authorization scheme")
        token = token.strip()
        if not token:
            raise Unauthenticated("invalid bearer token")
        user, _ = self.authenticate_token(token, audiences=None)
        return user

    def authenticate_token(
        self, token: str, *, audiences: Sequence[str] | None
    ) -> tuple[types.UserInfo, list[str]]:
        """Authenticate a bare token for ``audiences`` (``None``: the API audiences).

        Returns the user and the audiences the token is valid for (the intersection), as
        ``TokenReview.status.audiences`` reports them.
        """
        wanted = list(audiences if audiences else self.api_audiences)
        static_user = self._match_static(token)
        if static_user is not None:
            # Static tokens are audience-agnostic: like kube's WrapAudienceAgnosticToken they are
            # valid only for the API server's own audiences.
            matched = [audience for audience in wanted if audience in self.api_audiences]
            if not matched:
                raise Unauthenticated("token audiences is invalid for the target audiences")
            return static_user, matched
        if token.count(".") != 2:
            raise Unauthenticated("invalid bearer token")
        try:
            claims = self._issuer.verify(token, audiences=wanted)
        except serviceaccounts.InvalidToken as exc:
            raise Unauthenticated(f"invalid bearer token, {exc}") from exc
        user = self._service_account_user(claims)
        matched = [audience for audience in wanted if audience in claims["aud"]]
        return user, matched

    def _match_static(self, token: str) -> types.UserInfo | None:
        presented = token.encode("utf-8")
        found: types.UserInfo | None = None
        # Compare against every token (no early exit) so the loop's timing is input-independent.
        for candidate, user in self._static_tokens:
            if hmac.compare_digest(candidate, presented):
                found = user
        return found

    def _service_account_user(self, claims: dict[str, Any]) -> types.UserInfo:
        private = claims["kubernetes.io"]
        namespace = private.get("namespace")
        sa_ref = private["serviceaccount"]
        name = sa_ref.get("name")
        if not isinstance(namespace, str) or not isinstance(name, str) or not namespace or not name:
            raise Unauthenticated("invalid bearer token, service account claims are incomplete")
        if claims.get("sub") != f"system:serviceaccount:{namespace}:{name}":
            raise Unauthenticated("invalid bearer token, sub does not match the service account")
        service_account = self._reader.get(
            group="", resource="serviceaccounts", namespace=namespace, name=name
        )
        if service_account is None:
            raise Unauthenticated(f'invalid bearer token, serviceaccounts "{name}" not found')
        sa_uid = str((service_account.get("metadata") or {}).get("uid", ""))
        if sa_uid != sa_ref.get("uid"):
            raise Unauthenticated(
                f"invalid bearer token, service account UID ({sa_uid}) does not match claim "
                f"({sa_ref.get('uid')})"
            )
        extra: dict[str, tuple[str, ...]] = {}
        pod_ref = private.get("pod")
        if pod_ref is not None:
            pod = self._live_bound_object(namespace=namespace, resource="pods", ref=pod_ref)
            extra["authentication.kubernetes.io/pod-name"] = (str(pod_ref["name"]),)
            extra["authentication.kubernetes.io/pod-uid"] = (str(pod_ref["uid"]),)
            deletion = (pod.get("metadata") or {}).get("deletionTimestamp")
            if deletion and _parse_timestamp(str(deletion)) <= datetime.now(UTC):
                raise Unauthenticated(
                    "invalid bearer token, service account token has been invalidated"
                )
        secret_ref = private.get("secret")
        if secret_ref is not None:
            self._live_bound_object(namespace=namespace, resource="secrets", ref=secret_ref)
        if claims.get("jti"):
            extra["authentication.kubernetes.io/credential-id"] = (f"JTI={claims['jti']}",)
        return types.UserInfo(
            username=f"system:serviceaccount:{namespace}:{name}",
            uid=sa_uid,
            groups=(
                "system:serviceaccounts",
                f"system:serviceaccounts:{namespace}",
                AUTHENTICATED_GROUP,
            ),
            extra=extra,
        )

    def _live_bound_object(self, *, namespace: str, resource: str, ref: Any) -> dict[str, Any]:
        if not isinstance(ref, dict) or not ref.get("name") or not ref.get("uid"):
            raise Unauthenticated(f"invalid bearer token, malformed {resource} binding")
        stored = self._reader.get(
            group="", resource=resource, namespace=namespace, name=str(ref["name"])
        )
        if stored is None:
            raise Unauthenticated(
                "invalid bearer token, service account token has been invalidated"
            )
        uid = (stored.get("metadata") or {}).get("uid")
        if uid != ref["uid"]:
            kind = "pod" if resource == "pods" else "secret"
            raise Unauthenticated(
                f"invalid bearer token, {kind} UID ({uid}) does not match claim ({ref['uid']})"
            )
        return stored
