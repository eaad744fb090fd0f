"""Service-account tokens for the embedded control plane: signing key, TokenRequest, OIDC discovery.

Guarantees:

- Tokens are JWTs signed RS256 with an RSA-2048 key generated once and persisted as
  ``<directory>/sa.key`` (PKCS#8 PEM, mode 0600), like kube-apiserver's
  ``--service-account-key-file``; a restarted dev cluster therefore keeps accepting the tokens it
  issued. The JWS header carries ``kid``, the RFC 7638 thumbprint of the public key, which also
  names the key in the JWKS.
- Claims are the real server's: ``iss``, ``sub`` (``system:serviceaccount:NS:NAME``), ``aud``
  (always a list), ``exp``, ``iat``, ``nbf``, ``jti`` and ``kubernetes.io`` with ``namespace``,
  ``serviceaccount {name, uid}`` and, when bound, ``pod {name, uid}`` or ``secret {name, uid}``.
- :meth:`ServiceAccountTokenIssuer.verify` fails closed: only ``RS256`` is accepted (explicit
  allow-list), the ``kid`` must be ours, and ``iss``, ``aud``, ``exp``, ``iat``, ``nbf``, ``sub``
  must be present and valid. It does not check that the service account or bound object still
  exists; that is ``authn.Authenticator``'s job, because it needs the store.
- :func:`token_request` follows ``pkg/registry/core/serviceaccount/storage/token.go``: the same
  defaults (audiences default to the API audiences, i.e. the issuer; ``expirationSeconds``
  defaults to 3600, minimum 600), the same error codes and messages.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from agentauth.devcluster import types

#: The only JWS algorithm this issuer signs with or accepts.
ALGORITHM = "RS256"
#: Same bounds as kube-apiserver's TokenRequest validation.
MIN_EXPIRATION_SECONDS = 600
MAX_EXPIRATION_SECONDS = 1 << 32
DEFAULT_EXPIRATION_SECONDS = 3600
KEY_FILE_NAME = "sa.key"

_REQUIRED_CLAIMS = ["iss", "sub", "aud", "exp", "iat", "nbf"]


class InvalidToken(Exception):
    """A service-account token failed verification (signature, alg, kid, iss, aud, exp, nbf)."""


class TokenRequestError(types.StatusError):
    """A refused TokenRequest; ``code``/``reason``/``message`` form the ``Status`` body."""


def _b64url_uint(value: int) -> str:
    raw = value.to_bytes((value.bit_length() + 7) // 8 or 1, "big")
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def _load_or_create_key(path: Path) -> rsa.RSAPrivateKey:
    if path.exists():
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
        if not isinstance(key, rsa.RSAPrivateKey):
            raise ValueError(f"{path} does not hold an RSA private key")
        return key
    path.parent.mkdir(parents=True, exist_ok=True)
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    # O_EXCL: two processes racing on one directory must not overwrite each other's key.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(pem)
    return key


def format_timestamp(moment: datetime) -> str:
    """RFC 3339 in UTC with a ``Z``, second precision, as Kubernetes serialises ``metav1.Time``."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class ServiceAccountTokenIssuer:
    """Signs and verifies service-account JWTs for one issuer URL."""

    def __init__(self, *, issuer: str, directory: Path) -> None:
        self.issuer = issuer
        self._key = _load_or_create_key(directory / KEY_FILE_NAME)
        self._public_key = self._key.public_key()
        numbers = self._public_key.public_numbers()
        self._public_jwk = {
            "e": _b64url_uint(numbers.e),
            "kty": "RSA",
            "n": _b64url_uint(numbers.n),
        }
        # RFC 7638: SHA-256 over the required members in lexicographic order, no whitespace.
        canonical = json.dumps(self._public_jwk, sort_keys=True, separators=(",", ":"))
        digest = hashlib.sha256(canonical.encode("ascii")).digest()
        self.kid = base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")

    @property
    def api_audiences(self) -> list[str]:
        """The audiences the API server itself accepts (kube's ``--api-audiences`` default)."""
        return [self.issuer]

    def mint(
        self,
        *,
        namespace: str,
        service_account: dict[str, Any],
        audiences: list[str],
        expiration_seconds: int,
        bound_object: dict[str, Any] | None,
    ) -> tuple[str, datetime]:
        """Sign a token for ``service_account``; returns the token and its expiry.

        ``bound_object`` is the Pod or Secret the token is bound to (a stored object, or a
        reference with ``kind``, ``name`` and ``uid``), or ``None``.
        """
        if not audiences:
            raise ValueError("a service-account token needs at least one audience")
        metadata = service_account.get("metadata") or {}
        name = str(metadata.get("name", ""))
        uid = str(metadata.get("uid", ""))
        now = datetime.now(UTC).replace(microsecond=0)
        expires = now + timedelta(seconds=expiration_seconds)
        private: dict[str, Any] = {
            "namespace": namespace,
            "serviceaccount": {"name": name, "uid": uid},
        }
        if bound_object is not None:
            kind = str(bound_object.get("kind", ""))
            bound_meta = bound_object.get("metadata") or bound_object
            ref = {"name": str(bound_meta.get("name", "")), "uid": str(bound_meta.get("uid", ""))}
            if kind == "Pod":
                private["pod"] = ref
            elif kind == "Secret":
                private["secret"] = ref
            else:
                raise ValueError(f"cannot bind a token to a {kind or 'kindless object'}")
        claims = {
            "iss": self.issuer,
            "sub": f"system:serviceaccount:{namespace}:{name}",
            "aud": list(audiences),
            "exp": int(expires.timestamp()),
            "iat": int(now.timestamp()),
            "nbf": int(now.timestamp()),
            "jti": str(uuid.uuid4()),
            "kubernetes.io": private,
        }
        token = jwt.encode(claims, self._key, algorithm=ALGORITHM, headers={"kid": self.kid})
        return token, expires

    def verify(self, token: str, *, audiences: Sequence[str] | None = None) -> dict[str, Any]:
        """Return the claims of a token this issuer signed, or raise :class:`InvalidToken`.

        ``audiences`` defaults to the API audiences (the issuer): the token's ``aud`` must
        intersect it, as kube-apiserver requires of every bearer token it accepts.
        """
        wanted = list(self.api_audiences if audiences is None else audiences)
        if not wanted:
            raise InvalidToken("no audiences to verify against")
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as exc:
            raise InvalidToken(f"malformed token: {exc}") from exc
        if header.get("alg") != ALGORITHM:
            raise InvalidToken(f"unexpected signing algorithm {header.get('alg')!r}")
        if header.get("kid") != self.kid:
            raise InvalidToken("token signed by an unknown key")
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                self._public_key,
                algorithms=[ALGORITHM],
                issuer=self.issuer,
                audience=wanted,
                options={"require": _REQUIRED_CLAIMS},
            )
        except jwt.PyJWTError as exc:
            raise InvalidToken(str(exc)) from exc
        private = claims.get("kubernetes.io")
        if not isinstance(private, dict) or not isinstance(private.get("serviceaccount"), dict):
            raise InvalidToken("token has no kubernetes.io service-account claims")
        if not isinstance(claims["aud"], list):
            raise InvalidToken("aud must be a list")
        return claims

    def jwks(self) -> dict[str, Any]:
        return {"keys": [{"use": "sig", "alg": ALGORITHM, "kid": self.kid, **self._public_jwk}]}

    def openid_configuration(self) -> dict[str, Any]:
        # The same document kube-apiserver serves (pkg/serviceaccount/openidmetadata.go).
        return {
            "issuer": self.issuer,
            "jwks_uri": self.issuer.rstrip("/") + "/openid/v1/jwks",
            "response_types_supported": ["id_token"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": [ALGORITHM],
        }


def _invalid(name: str, causes: list[tuple[str, str]]) -> TokenRequestError:
    rendered = [f"{field}: {message}" for field, message in causes]
    detail = rendered[0] if len(rendered) == 1 else "[" + ", ".join(rendered) + "]"
    return TokenRequestError(
        422,
        "Invalid",
        f'TokenRequest.authentication.k8s.io "{name}" is invalid: {detail}',
        causes=[
            {"reason": "FieldValueInvalid", "message": message, "field": field}
            for field, message in causes
        ],
    )


def _int_field(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def token_request(
    *,
    issuer: ServiceAccountTokenIssuer,
    reader: types.ObjectReader,
    namespace: str,
    service_account_name: str,
    body: dict[str, Any],
) -> dict[str, Any]:
    """Serve ``POST .../serviceaccounts/NAME/token``: validate, mint, return the TokenRequest."""
    if not isinstance(body, dict):
        raise TokenRequestError(400, "BadRequest", "the body of a TokenRequest must be an object")
    if body.get("kind", "TokenRequest") != "TokenRequest" or body.get(
        "apiVersion", "authentication.k8s.io/v1"
    ) not in ("authentication.k8s.io/v1", "authentication.k8s.io/v1beta1"):
        raise TokenRequestError(
            400,
            "BadRequest",
            f"expected kind TokenRequest in authentication.k8s.io/v1, got kind "
            f"{body.get('kind')!r} in {body.get('apiVersion')!r}",
        )
    metadata = body.get("metadata") or {}
    spec = body.get("spec") or {}
    if not isinstance(metadata, dict) or not isinstance(spec, dict):
        raise TokenRequestError(400, "BadRequest", "metadata and spec must be objects")
    if metadata.get("name") and metadata["name"] != service_account_name:
        raise _invalid(
            service_account_name,
            [
                (
                    "metadata.name",
                    f'Invalid value: "{metadata["name"]}": '
                    "must match the service account name if specified",
                )
            ],
        )
    if metadata.get("namespace") and metadata["namespace"] != namespace:
        raise _invalid(
            service_account_name,
            [
                (
                    "metadata.namespace",
                    f'Invalid value: "{metadata["namespace"]}": '
                    "must match the service account namespace if specified",
                )
            ],
        )

    service_account = reader.get(
        group="", resource="serviceaccounts", namespace=namespace, name=service_account_name
    )
    if service_account is None:
        raise TokenRequestError(
            404, "NotFound", f'serviceaccounts "{service_account_name}" not found'
        )

    audiences = spec.get("audiences") or issuer.api_audiences
    if not isinstance(audiences, list) or not all(isinstance(a, str) and a for a in audiences):
        raise _invalid(
            "", [("spec.audiences", "Invalid value: must be a list of non-empty strings")]
        )
    expiration = spec.get("expirationSeconds")
    if expiration is None:
        expiration = DEFAULT_EXPIRATION_SECONDS
    if not _int_field(expiration):
        raise _invalid(
            "", [("spec.expirationSeconds", f"Invalid value: {expiration!r}: must be an integer")]
        )
    if expiration < MIN_EXPIRATION_SECONDS:
        raise _invalid(
            "",
            [
                (
                    "spec.expirationSeconds",
                    f"Invalid value: {expiration}: may not specify a duration less than 10 minutes",
                )
            ],
        )
    if expiration > MAX_EXPIRATION_SECONDS:
        raise _invalid(
            "",
            [
                (
                    "spec.expirationSeconds",
                    f"Invalid value: {expiration}: "
                    "may not specify a duration larger than 2^32 seconds",
                )
            ],
        )

    bound: dict[str, Any] | None = None
    ref = spec.get("boundObjectRef")
    if ref is not None:
        bound = _resolve_bound_object(
            reader=reader, namespace=namespace, service_account_name=service_account_name, ref=ref
        )

    token, expires = issuer.mint(
        namespace=namespace,
        service_account=service_account,
        audiences=list(audiences),
        expiration_seconds=expiration,
        bound_object=bound,
    )
    out_spec: dict[str, Any] = {"audiences": list(audiences), "expirationSeconds": expiration}
    if ref is not None:
        out_spec["boundObjectRef"] = ref
    return {
        "kind": "TokenRequest",
        "apiVersion": "authentication.k8s.io/v1",
        "metadata": {
            "name": service_account_name,
            "namespace": namespace,
            "creationTimestamp": format_timestamp(datetime.now(UTC)),
        },
        "spec": out_spec,
        "status": {"token": token, "expirationTimestamp": format_timestamp(expires)},
    }


def _resolve_bound_object(
    *, reader: types.ObjectReader, namespace: str, service_account_name: str, ref: Any
) -> dict[str, Any]:
    if not isinstance(ref, dict):
        raise TokenRequestError(400, "BadRequest", "spec.boundObjectRef must be an object")
    kind = str(ref.get("kind", ""))
    api_version = str(ref.get("apiVersion", "") or "v1")
    group, _, version = api_version.rpartition("/")
    if group != "" or kind not in ("Pod", "Secret"):
        raise TokenRequestError(
            400, "BadRequest", f"cannot bind token to object of type {group}/{version}, Kind={kind}"
        )
    name = ref.get("name")
    if not isinstance(name, str) or not name:
        raise _invalid("", [("spec.boundObjectRef.name", "Required value")])
    resource = "pods" if kind == "Pod" else "secrets"
    stored = reader.get(group="", resource=resource, namespace=namespace, name=name)
    if stored is None:
        raise TokenRequestError(404, "NotFound", f'{resource} "{name}" not found')
    stored_meta = stored.get("metadata") or {}
    if kind == "Pod":
        pod_sa = (stored.get("spec") or {}).get("serviceAccountName") or "default"
        if pod_sa != service_account_name:
            raise TokenRequestError(
                400,
                "BadRequest",
                f'cannot bind token for serviceaccount "{service_account_name}" to pod running '
                "with different serviceaccount name.",
            )
    uid = ref.get("uid")
    if uid and uid != stored_meta.get("uid"):
        raise TokenRequestError(
            409,
            "Conflict",
            f'Operation cannot be fulfilled on {kind} "{name}": the UID in the bound object '
            f"reference ({uid}) does not match the UID in record. The object might have been "
            "deleted and then recreated",
        )
    return {"kind": kind, "metadata": {"name": name, "uid": str(stored_meta.get("uid", ""))}}
