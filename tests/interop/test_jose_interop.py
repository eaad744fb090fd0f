"""Agent tokens and client assertions against independent JOSE implementations, both ways.

We sign, they verify: tokens issued by the real token service over HTTP, with its ``/jwks``,
are verified by pyjwt, joserfc, jwcrypto (PyPI) and the JavaScript ``jose`` package (npm), for
each issued-token algorithm (``EdDSA``, the default, and ``Ed25519``, RFC 9864).  The measured
table is the reason for the default: pyjwt knows only ``EdDSA``.

They sign, we verify: RFC 7523 client assertions signed by joserfc, jwcrypto and ``jose`` under
both algorithm names, with and without ``kid``, are accepted by the token service.
"""

from __future__ import annotations

import json
import time
import uuid
import warnings
from datetime import UTC, datetime
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519
from joserfc import jwk as joserfc_jwk
from joserfc import jwt as joserfc_jwt
from jwcrypto import jwk as jwcrypto_jwk
from jwcrypto import jwt as jwcrypto_jwt

from agentauth.domain import assertions, exchanging, signatures
from tests.domain import tokenkit
from tests.interop.conftest import ISSUER, OUTSIDE_AGENT, TokenService, js, private_jwk

LIBRARIES = ("pyjwt", "joserfc", "jwcrypto", "jose (npm)")


def _agent_token(service: TokenService, cluster: tokenkit.ClusterIssuer) -> str:
    response = httpx.post(
        service.token_endpoint,
        data={
            "grant_type": exchanging.GRANT_TYPE_TOKEN_EXCHANGE,
            "subject_token": cluster.token(now=datetime.now(UTC)),
            "subject_token_type": exchanging.TOKEN_TYPE_JWT,
        },
    )
    assert response.status_code == 200, response.text
    token: str = response.json()["access_token"]
    return token


def _verified_by(token: str, jwks: dict[str, Any], alg: str) -> dict[str, bool | str]:
    """Whether each library verifies ``token`` (signature, iss, aud) with the published JWKS:
    ``True``, or the library's refusal."""
    outcome: dict[str, bool | str] = {}
    try:
        key_set = jwt.PyJWKSet.from_dict(jwks)
        jwt.decode(token, key_set.keys[0].key, algorithms=[alg], audience=ISSUER, issuer=ISSUER)
        outcome["pyjwt"] = True
    except jwt.PyJWTError as exc:
        outcome["pyjwt"] = f"{type(exc).__name__}: {exc}"
    try:
        with warnings.catch_warnings():
            # joserfc verifies EdDSA and warns that RFC 9864 deprecates the name.
            warnings.simplefilter("ignore")
            decoded = joserfc_jwt.decode(
                token, joserfc_jwk.KeySet.import_key_set(jwks), algorithms=[alg]
            )
        joserfc_jwt.JWTClaimsRegistry(
            iss={"essential": True, "value": ISSUER}, aud={"essential": True, "value": ISSUER}
        ).validate(decoded.claims)
        outcome["joserfc"] = True
    except Exception as exc:  # the library's refusal, whatever its type
        outcome["joserfc"] = f"{type(exc).__name__}: {exc}"
    try:
        jwcrypto_jwt.JWT(
            jwt=token,
            key=jwcrypto_jwk.JWKSet.from_json(json.dumps(jwks)),
            algs=[alg],
            check_claims={"iss": ISSUER, "aud": ISSUER, "exp": None},
        )
        outcome["jwcrypto"] = True
    except Exception as exc:  # the library's refusal, whatever its type
        outcome["jwcrypto"] = f"{type(exc).__name__}: {exc}"
    (result,) = js(
        {"op": "jose.verify", "token": token, "jwks": jwks, "issuer": ISSUER, "audience": ISSUER}
    )
    outcome["jose (npm)"] = True if result["ok"] and result["alg"] == alg else result["error"]
    return outcome


def test_the_default_algorithm_verifies_with_every_library(
    service: TokenService, cluster: tokenkit.ClusterIssuer
) -> None:
    assert service.algorithm == "EdDSA"
    token = _agent_token(service, cluster)
    jwks = httpx.get(f"{service.url}/jwks").json()
    assert {key["alg"] for key in jwks["keys"]} == {"EdDSA"}
    assert jwt.get_unverified_header(token)["alg"] == "EdDSA"
    assert _verified_by(token, jwks, "EdDSA") == dict.fromkeys(LIBRARIES, True)


def test_which_library_verifies_which_algorithm_name(
    services: dict[str, TokenService], cluster: tokenkit.ClusterIssuer
) -> None:
    measured = {}
    for alg, service in services.items():
        token = _agent_token(service, cluster)
        jwks = httpx.get(f"{service.url}/jwks").json()
        assert jwt.get_unverified_header(token)["alg"] == alg
        assert {key["alg"] for key in jwks["keys"]} == {alg}
        measured[alg] = {name: ok is True for name, ok in _verified_by(token, jwks, alg).items()}
    # pyjwt 2.x has no "Ed25519" algorithm (nor loads a JWK that names it): hence the default.
    assert measured == {
        "EdDSA": dict.fromkeys(LIBRARIES, True),
        "Ed25519": {**dict.fromkeys(LIBRARIES, True), "pyjwt": False},
    }


def test_joserfc_warns_about_eddsa_and_not_about_ed25519(
    services: dict[str, TokenService], cluster: tokenkit.ClusterIssuer
) -> None:
    for alg, expect_warning in (("EdDSA", True), ("Ed25519", False)):
        token = _agent_token(services[alg], cluster)
        key_set = joserfc_jwk.KeySet.import_key_set(services[alg].jwks())
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            joserfc_jwt.decode(token, key_set, algorithms=[alg])
        assert any("RFC 9864" in str(w.message) for w in caught) is expect_warning


# --------------------------------------------------------------------------- they sign


def _claims() -> dict[str, Any]:
    now = int(time.time())
    return {
        "iss": OUTSIDE_AGENT,
        "sub": OUTSIDE_AGENT,
        "aud": "",  # set per service
        "iat": now,
        "exp": now + 60,
        "jti": str(uuid.uuid4()),
    }


def _signed_by(
    library: str, *, key: ed25519.Ed25519PrivateKey, alg: str, kid: str | None, audience: str
) -> str:
    claims = {**_claims(), "aud": audience}
    header: dict[str, Any] = {"typ": "JWT"} | ({"kid": kid} if kid else {})
    jwk = private_jwk(key)
    if library == "joserfc":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return joserfc_jwt.encode(
                {**header, "alg": alg}, claims, joserfc_jwk.OKPKey.import_key(jwk), algorithms=[alg]
            )
    if library == "jwcrypto":
        token = jwcrypto_jwt.JWT(header={**header, "alg": alg}, claims=claims)
        token.make_signed_token(jwcrypto_jwk.JWK(**jwk))
        signed: str = token.serialize()
        return signed
    (result,) = js({"op": "jose.sign", "alg": alg, "jwk": jwk, "header": header, "payload": claims})
    assert result["ok"], result
    signed_by_jose: str = result["token"]
    return signed_by_jose


@pytest.mark.parametrize("library", ["joserfc", "jwcrypto", "jose (npm)"])
@pytest.mark.parametrize("alg", ["EdDSA", "Ed25519"])
@pytest.mark.parametrize("with_kid", [True, False], ids=["kid", "no kid"])
def test_client_assertions_signed_by_independent_libraries_are_accepted(
    service: TokenService,
    outside_key: ed25519.Ed25519PrivateKey,
    library: str,
    alg: str,
    with_kid: bool,
) -> None:
    kid = signatures.jwk_thumbprint(signatures.public_jwk(outside_key)) if with_kid else None
    assertion = _signed_by(
        library, key=outside_key, alg=alg, kid=kid, audience=service.token_endpoint
    )
    assert jwt.get_unverified_header(assertion)["alg"] == alg
    response = httpx.post(
        service.token_endpoint,
        data={
            "grant_type": "client_credentials",
            "client_assertion_type": assertions.CLIENT_ASSERTION_TYPE,
            "client_assertion": assertion,
        },
    )
    assert response.status_code == 200, response.text
    issued = jwt.decode(response.json()["access_token"], options={"verify_signature": False})
    assert issued["sub"] == OUTSIDE_AGENT
