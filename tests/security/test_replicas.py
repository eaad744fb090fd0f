"""Replay across replicas: a captured credential yields nothing useful at another replica.

The chart runs two token-service replicas and each keeps its own replay caches, so a request
captured on its way to one replica and sent to the other is caught by no cache. Every credential
the token service accepts is therefore bound to the key that will hold the resulting token
(issue 14, "Replay across replicas"): replayed as captured, a request yields a token bound to
its original sender's key, which the attacker cannot use; re-signed with the attacker's key, it
is refused.
"""

from __future__ import annotations

import time
import urllib.parse
import uuid

import httpx
import jwt
from cryptography.hazmat.primitives.asymmetric import ed25519

from agentauth.domain import signatures
from agentauth.sdk import aws as sdk_aws
from agentauth.sdk import client as sdk_client
from agentauth.sdk import gcp as sdk_gcp
from tests.security import realstack
from tests.security.realstack import ISSUER, Recorder, Stack, replay, signed_post

TOKEN = "/oauth2/token"


def claims(token: str) -> dict[str, object]:
    return dict(jwt.decode(token, options={"verify_signature": False}))


def attacker_key() -> ed25519.Ed25519PrivateKey:
    return ed25519.Ed25519PrivateKey.generate()


def assert_useless_to_the_attacker(stolen: str, attack: Stack) -> None:
    """A token bound to someone else's key gets the attacker nothing at either replica."""
    key = attacker_key()
    for replica in (attack.a, attack.b):
        for hwk, refusal in (
            (
                False,
                "request signature is invalid: signature does not verify with the presented key",
            ),
            (True, "the request is not signed by the key the agent token is bound to"),
        ):
            signed = signed_post(
                replica.url,
                "/v1/ask",
                body=b'{"action": "document.read"}',
                key=key,
                content_type="application/json",
                token=stolen,
                hwk=hwk,
            )
            assert (signed.status_code, signed.json()["error_description"]) == (401, refusal)
        bare = httpx.post(
            f"{replica.url}/v1/ask",
            json={"action": "document.read"},
            headers={"Authorization": f"Bearer {stolen}"},
        )
        assert bare.status_code == 401, bare.text


def form_of(request: httpx.Request) -> dict[str, str]:
    return dict(urllib.parse.parse_qsl(request.content.decode()))


def test_replayed_service_account_exchange_yields_a_token_only_its_sender_can_use(
    attack: Stack,
) -> None:
    recorder = Recorder(attack.a.url)
    victim = attack.agent_client(attack.a, recorder=recorder)
    assert claims(victim.token())["cnf"]["jkt"] == victim.jkt  # type: ignore[index]
    captured = recorder.last(TOKEN)
    again = replay(captured, attack.a.url)  # the replica that saw it remembers the signature
    assert (again.status_code, again.json()["error_description"]) == (
        400,
        "request signature was already used (replay)",
    )
    elsewhere = replay(captured, attack.b.url)  # the other replica never saw it
    assert elsewhere.status_code == 200, elsewhere.text
    stolen = elsewhere.json()["access_token"]
    assert claims(stolen)["cnf"]["jkt"] == victim.jkt  # type: ignore[index]
    assert_useless_to_the_attacker(stolen, attack)


def test_captured_client_assertion_is_refused_with_any_other_key(attack: Stack) -> None:
    """Finding 4: a registered-key assertion yields a token only for the key it names."""
    recorder = Recorder(attack.a.url)
    victim = sdk_client.AgentClient.from_private_key(
        agent_id=realstack.agent_id("outside", attack.namespace),
        issuer=ISSUER,
        token_url=ISSUER,
        private_key=attack.registered_key,
        kid="registered-1",
        transport=recorder,
    )
    token = victim.token()
    assert claims(token)["cnf"]["jkt"] == victim.jkt  # type: ignore[index]
    captured = recorder.last(TOKEN)
    assertion = form_of(captured)
    body = urllib.parse.urlencode(assertion).encode()
    for replica in (attack.b, attack.a):
        resigned = signed_post(replica.url, TOKEN, body=body, key=attacker_key())
        assert (resigned.status_code, resigned.json()) == (
            401,
            {
                "error": "invalid_client",
                "error_description": "the token request is not signed by the key the "
                "assertion names in cnf.jkt",
            },
        )
        unsigned = signed_post(replica.url, TOKEN, body=body, key=None)
        assert (unsigned.status_code, unsigned.json()["error_description"]) == (
            401,
            "the token request must be signed (RFC 9421) by the key the assertion names in cnf.jkt",
        )
    elsewhere = replay(captured, attack.b.url)
    assert elsewhere.status_code == 200, elsewhere.text
    assert claims(elsewhere.json()["access_token"])["cnf"]["jkt"] == victim.jkt  # type: ignore[index]
    assert_useless_to_the_attacker(elsewhere.json()["access_token"], attack)


def test_a_captured_plain_rfc7523_assertion_yields_a_token_only_the_registered_key_can_use(
    attack: Stack,
) -> None:
    """An assertion without cnf (authlib's PrivateKeyJWT) binds the token to the registered key
    itself: replayed unsigned at either replica it yields nothing the attacker can use, and a
    request signed by the attacker's key is refused."""
    now = int(time.time())
    agent = realstack.agent_id("outside", attack.namespace)
    assertion = jwt.encode(
        {
            "iss": agent,
            "sub": agent,
            "aud": f"{ISSUER}/oauth2/token",
            "iat": now,
            "exp": now + 120,
            "jti": uuid.uuid4().hex,
        },
        attack.registered_key,
        algorithm="EdDSA",
        headers={"kid": "registered-1"},
    )
    body = urllib.parse.urlencode(
        {
            "grant_type": "client_credentials",
            "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
            "client_assertion": assertion,
        }
    ).encode()
    resigned = signed_post(attack.b.url, TOKEN, body=body, key=attacker_key())
    assert (resigned.status_code, resigned.json()["error_description"]) == (
        401,
        "the token request is signed by a key the assertion does not name: put that key's "
        "RFC 7638 thumbprint in the assertion's cnf.jkt, or sign with the registered key",
    )
    registered = signatures.public_jwk(attack.registered_key)
    issued = signed_post(attack.a.url, TOKEN, body=body, key=None)
    assert issued.status_code == 200, issued.text
    token = issued.json()["access_token"]
    assert claims(token)["cnf"] == {  # type: ignore[index]
        "jwk": registered,
        "jkt": signatures.jwk_thumbprint(registered),
    }
    assert_useless_to_the_attacker(token, attack)
    replayed = signed_post(attack.b.url, TOKEN, body=body, key=None)
    assert replayed.status_code == 200, replayed.text
    assert claims(replayed.json()["access_token"])["cnf"]["jkt"] == signatures.jwk_thumbprint(  # type: ignore[index]
        registered
    )
    assert_useless_to_the_attacker(replayed.json()["access_token"], attack)


def test_captured_aws_signed_request_is_refused_with_any_other_key(attack: Stack) -> None:
    recorder = Recorder(attack.a.url)
    victim = sdk_client.AgentClient(
        issuer=ISSUER,
        token_url=ISSUER,
        subject_token_source=sdk_aws.AwsSubjectTokenSource(
            issuer=ISSUER, session=attack.botocore_session(), endpoint_url=attack.sts.url
        ),
        transport=recorder,
    )
    token = victim.token()
    assert claims(token)["agent"]["name"] == "research"  # type: ignore[index]
    captured = recorder.last(TOKEN)
    forwarded = attack.sts.requests_received
    body = urllib.parse.urlencode(form_of(captured)).encode()
    resigned = signed_post(attack.b.url, TOKEN, body=body, key=attacker_key())
    assert (resigned.status_code, resigned.json()) == (
        400,
        {
            "error": "invalid_grant",
            "error_description": "the token request is not signed by the key the AWS signed "
            "request names in X-AgentAuth-Key-Thumbprint",
        },
    )
    assert attack.sts.requests_received == forwarded  # refused before STS was asked
    elsewhere = replay(captured, attack.b.url)
    assert elsewhere.status_code == 200, elsewhere.text
    assert_useless_to_the_attacker(elsewhere.json()["access_token"], attack)


def test_captured_gcp_id_token_is_refused_with_any_other_key(attack: Stack) -> None:
    recorder = Recorder(attack.a.url)
    victim = sdk_client.AgentClient(
        issuer=ISSUER,
        token_url=ISSUER,
        subject_token_source=sdk_gcp.GcpSubjectTokenSource(
            issuer=ISSUER, metadata_host=attack.google.host
        ),
        transport=recorder,
    )
    token = victim.token()
    assert claims(token)["agent"]["name"] == "research"  # type: ignore[index]
    captured = recorder.last(TOKEN)
    id_token = form_of(captured)["subject_token"]
    assert claims(id_token)["aud"] == f"{ISSUER}#jkt={victim.jkt}"
    body = urllib.parse.urlencode(form_of(captured)).encode()
    for replica in (attack.a, attack.b):
        resigned = signed_post(replica.url, TOKEN, body=body, key=attacker_key())
        assert resigned.status_code == 400, resigned.text
        assert resigned.json()["error_description"] == (
            "the GCP ID token's audience is not this issuer bound to the key that signs this "
            "request (<issuer>#jkt=<RFC 7638 thumbprint>)"
        )
    elsewhere = replay(captured, attack.b.url)
    assert elsewhere.status_code == 200, elsewhere.text
    assert_useless_to_the_attacker(elsewhere.json()["access_token"], attack)
