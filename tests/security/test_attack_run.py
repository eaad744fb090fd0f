"""The attack run of issue 14 (findings 6, 7, 8, 10, 11, 12, 13, 15 and what lies next to them),
replayed against the real stack: two token-service replicas on the dev cluster, real
TokenRequest tokens bound to real pods, real HTTP.

Each test asserts the refusal (status, RFC error, description) the fix gives; on the code before
the fix each of these requests got through (or answered 500, or hung on to its connection).
"""

from __future__ import annotations

import gzip
import json
import select
import socket
import time
import urllib.parse
import zlib
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import jwt
import pytest

from agentauth.domain import assertions, signatures
from agentauth.tokenservice import settings as settings_module
from tests import stack
from tests.security import realstack
from tests.security.realstack import ISSUER, TOOL_URI, Replica, Stack, signed_post

LEEWAY = 5
"""``LEEWAY`` (asserted in ``test_default_timeouts_and_limits``); a literal here
so that this module also runs against code without the constant."""
EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"
JWT = "urn:ietf:params:oauth:token-type:jwt"
ACCESS = "urn:ietf:params:oauth:token-type:access_token"
FORM = "application/x-www-form-urlencoded"
RFC_ERRORS = {
    "invalid_request",
    "invalid_client",
    "invalid_grant",
    "unauthorized_client",
    "unsupported_grant_type",
    "invalid_scope",
    "invalid_target",
    "unsupported_token_type",
    "invalid_token",
    "insufficient_scope",
    "rate_limited",
    "not_found",
}


def claims(token: str) -> dict[str, Any]:
    return dict(jwt.decode(token, options={"verify_signature": False}))


def exchange(replica: Replica, sa_token: str, **form: str) -> httpx.Response:
    """An unsigned RFC 8693 exchange (the token is unbound: a plain bearer token)."""
    return httpx.post(
        f"{replica.url}/oauth2/token",
        data={"grant_type": EXCHANGE, "subject_token": sa_token, "subject_token_type": JWT, **form},
    )


def agent_token(attack: Stack, replica: Replica, **pod: str) -> str:
    response = exchange(replica, attack.sa_token(**pod))
    assert response.status_code == 200, response.text
    return str(response.json()["access_token"])


def delegate(replica: Replica, subject: str, actor: str) -> httpx.Response:
    return httpx.post(
        f"{replica.url}/oauth2/token",
        data={
            "grant_type": EXCHANGE,
            "subject_token": subject,
            "subject_token_type": ACCESS,
            "actor_token": actor,
            "actor_token_type": ACCESS,
        },
    )


def refusal(response: httpx.Response) -> tuple[int, str, str]:
    body = response.json()
    return response.status_code, body["error"], body["error_description"]


def introspect(replica: Replica, token: str, *, caller: str) -> httpx.Response:
    return httpx.post(
        f"{replica.url}/oauth2/introspect",
        data={"token": token},
        headers={"Authorization": f"Bearer {caller}"},
    )


# -- finding 6: a subject token minted for another audience ---------------------------------------


def test_delegation_refuses_a_subject_token_minted_for_another_audience(attack: Stack) -> None:
    actor = agent_token(attack, attack.a)  # research, which allows delegation
    for_tool = attack.mint(name="helper", uid=attack.agent_uid("helper"), audience=TOOL_URI)
    for replica in (attack.a, attack.b):
        assert refusal(delegate(replica, for_tool, actor)) == (
            400,
            "invalid_grant",
            "subject_token: token audience does not include this issuer",
        )
    # the same subject meant for the token service is accepted: the audience was the reason
    for_us = attack.mint(
        name="helper",
        uid=attack.agent_uid("helper"),
        extra_claims={"may_act": {"sub": realstack.agent_id("research", attack.namespace)}},
    )
    assert delegate(attack.a, for_us, actor).status_code == 200


# -- finding 7: one small leeway everywhere -------------------------------------------------------


def test_expired_tokens_and_assertions_are_refused_beyond_the_shared_leeway(attack: Stack) -> None:
    past = datetime.now(UTC) - timedelta(minutes=2, seconds=LEEWAY + 5)
    expired_actor = attack.mint(uid=attack.agent_uid("research"), now=past)  # exp 10 s ago
    assert claims(expired_actor)["exp"] < time.time() - LEEWAY
    user = attack.user_token()
    for replica in (attack.a, attack.b):
        assert refusal(delegate(replica, user, expired_actor)) == (
            400,
            "invalid_grant",
            "actor_token: token has expired",
        )
    actor = agent_token(attack, attack.a)
    expired_user = attack.user_token(exp=int(time.time()) - LEEWAY - 5)
    assert refusal(delegate(attack.b, expired_user, actor)) == (
        400,
        "invalid_grant",
        "subject_token: token has expired",
    )
    expired_subject = attack.mint(
        name="helper",
        uid=attack.agent_uid("helper"),
        now=past,
        extra_claims={"may_act": {"sub": realstack.agent_id("research", attack.namespace)}},
    )
    assert refusal(delegate(attack.a, expired_subject, actor)) == (
        400,
        "invalid_grant",
        "subject_token: token has expired",
    )
    # an RFC 7523 assertion that expired 10 s ago (the leeway there was 30 s)
    key = attack.registered_key
    assertion = assertions.create_client_assertion(
        private_key=key,
        kid="registered-1",
        agent_id=realstack.agent_id("outside", attack.namespace),
        token_endpoint=f"{ISSUER}/oauth2/token",
        now=time.time() - 60 - LEEWAY - 5,
        lifetime=60,
        cnf_jkt=signatures.jwk_thumbprint(signatures.public_jwk(key)),
    )
    body = urllib.parse.urlencode(
        {
            "grant_type": "client_credentials",
            "client_assertion_type": assertions.CLIENT_ASSERTION_TYPE,
            "client_assertion": assertion,
        }
    ).encode()
    assert refusal(signed_post(attack.b.url, "/oauth2/token", body=body, key=key)) == (
        401,
        "invalid_client",
        "assertion has expired",
    )
    # introspection: an agent token 10 s past exp is inactive at both replicas
    caller = attack.sa_token(account="resource-sa", pod="resource-0")
    for replica in (attack.a, attack.b):
        answer = introspect(replica, expired_actor, caller=caller)
        assert (answer.status_code, answer.json()) == (200, {"active": False})


# -- finding 8: a service account created again under its name ------------------------------------


def test_tokens_of_a_service_account_created_again_are_refused(
    attack: Stack, kubectl: stack.Kubectl
) -> None:
    old = attack.sa_token(account="reborn-sa", pod="reborn-0")
    for replica in (attack.a, attack.b):  # a: JWKS, b: TokenReview
        assert exchange(replica, old).status_code == 200
    kubectl("delete", "serviceaccount", "reborn-sa", "-n", attack.namespace)
    kubectl("create", "serviceaccount", "reborn-sa", "-n", attack.namespace)

    def refused(replica: Replica) -> Callable[[], bool]:
        return lambda: exchange(replica, old).status_code == 400

    for replica in (attack.a, attack.b):
        stack.wait_for(refused(replica), timeout=10, message=f"{replica.name} refuses")
    assert refusal(exchange(attack.a, old)) == (
        400,
        "invalid_grant",
        f"service account {attack.namespace}/reborn-sa of the token no longer exists (deleted, "
        "or created again under the same name)",
    )
    assert refusal(exchange(attack.b, old))[:2] == (400, "invalid_grant")
    fresh = attack.sa_token(account="reborn-sa", pod="reborn-0")  # what the kubelet re-projects
    for replica in (attack.a, attack.b):
        assert exchange(replica, fresh).status_code == 200


# -- finding 10: introspection callers whose pod is gone ------------------------------------------


def test_introspection_refuses_callers_whose_pod_is_gone(
    attack: Stack, kubectl: stack.Kubectl
) -> None:
    namespace = attack.namespace
    stack.apply(
        kubectl,
        [
            {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {"name": "caller-0", "namespace": namespace, "labels": {"a": "b"}},
                "spec": {
                    "serviceAccountName": "resource-sa",
                    "containers": [{"name": "main", "image": "busybox"}],
                },
            },
            {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {
                    "name": "research-1",
                    "namespace": namespace,
                    "labels": {"agentauth.dev/agent": "research"},
                },
                "spec": {
                    "serviceAccountName": "research-sa",
                    "containers": [{"name": "main", "image": "busybox"}],
                },
            },
        ],
    )
    resource_server = attack.sa_token(account="resource-sa", pod="caller-0")
    stack.wait_for(
        lambda: exchange(attack.a, attack.sa_token(pod="research-1")).status_code == 200,
        message="research-1 in the pod cache",
    )
    doomed_agent = agent_token(attack, attack.a, pod="research-1")
    target = agent_token(attack, attack.a)
    for replica in (attack.a, attack.b):
        assert introspect(replica, target, caller=resource_server).json()["active"] is True
        assert introspect(replica, target, caller=doomed_agent).json()["active"] is True
    kubectl("delete", "pod", "caller-0", "research-1", "-n", namespace)

    def caller_refused(replica: Replica, caller: str) -> Callable[[], bool]:
        return lambda: introspect(replica, target, caller=caller).status_code == 401

    for replica in (attack.a, attack.b):
        stack.wait_for(caller_refused(replica, resource_server), timeout=10, message="refused")
        stack.wait_for(caller_refused(replica, doomed_agent), timeout=10, message="refused")
        status, error, description = refusal(introspect(replica, target, caller=resource_server))
        assert (status, error) == (401, "invalid_token")
        assert description in (
            f"introspection caller: pod {namespace}/caller-0 bound to the token no longer exists",
            f"introspection caller: pod {namespace}/caller-0 bound to the token is being deleted",
            # replica b reviews tokens with the API server, which refuses them first
            "introspection caller: the cluster rejected the service-account token",
        )
        assert refusal(introspect(replica, target, caller=doomed_agent)) == (
            401,
            "invalid_token",
            f"pod {namespace}/research-1 the token was issued to no longer exists",
        )
        # the agent token of the deleted pod is no longer active for anyone either
        live = attack.sa_token(account="resource-sa", pod="resource-0")
        assert introspect(replica, doomed_agent, caller=live).json() == {"active": False}


# -- finding 11: user tokens ----------------------------------------------------------------------


def test_user_tokens_cannot_pose_as_agents_nor_serve_an_agent_they_do_not_name(
    attack: Stack,
) -> None:
    actor = agent_token(attack, attack.a)  # research
    helper_id = realstack.agent_id("helper", attack.namespace)
    posing = (
        helper_id,
        "AAUTH:helper." + attack.namespace,
        "\uff41auth:helper",  # a fullwidth 'a': NFKC folds it to 'aauth:'
        "jane\n@attack.test",
    )
    for sub in posing:
        assert refusal(delegate(attack.a, attack.user_token(sub=sub), actor)) == (
            400,
            "invalid_grant",
            "subject_token: the user token's sub must not look like an agent identifier "
            "(aauth:...) or contain control characters",
        )
    assert refusal(delegate(attack.b, attack.user_token(may_act=None), actor)) == (
        400,
        "invalid_grant",
        "the user token has no may_act naming the actor; its issuer requires one",
    )
    assert refusal(delegate(attack.b, attack.user_token(may_act={"sub": helper_id}), actor)) == (
        400,
        "invalid_grant",
        "the subject token's may_act does not name the actor",
    )
    granted = delegate(attack.a, attack.user_token(), actor)
    assert granted.status_code == 200, granted.text
    on_behalf = claims(granted.json()["access_token"])
    assert on_behalf["sub"] == "jane@attack.test"
    assert on_behalf["act"] == {"sub": realstack.agent_id("research", attack.namespace)}


# -- findings 12 and 13: slow clients and floods --------------------------------------------------


def test_default_timeouts_and_limits() -> None:
    from agentauth.domain import clockskew

    assert clockskew.LEEWAY_SECONDS == LEEWAY
    defaults = settings_module.Settings(issuer=ISSUER)
    assert (defaults.header_timeout, defaults.body_timeout) == (10.0, 10.0)
    assert (
        defaults.introspection_rate_limit_per_second,
        defaults.introspection_rate_limit_burst,
    ) == (50.0, 100)


def _trickle_until_closed(
    sockets: list[socket.socket], *, trickling: int, deadline: float
) -> list[socket.socket]:
    """Send a header line every quarter second on the first ``trickling`` sockets (the others
    send nothing) until the server closes them or ``deadline``; returns those still open."""
    still_open = {sock: index for index, sock in enumerate(sockets)}
    while still_open and time.monotonic() < deadline:
        for sock, index in list(still_open.items()):
            if index < trickling:
                try:
                    sock.sendall(b"X-Slow: 1\r\n")
                except OSError:  # reset or broken pipe: the server closed it
                    del still_open[sock]
        readable, _, _ = select.select(list(still_open), [], [], 0.25)
        for sock in readable:
            try:
                data = sock.recv(4096)
            except OSError:
                data = b""
            if data == b"":
                still_open.pop(sock, None)
    return list(still_open)


def test_slow_clients_are_cut_off_and_floods_are_limited(attack: Stack) -> None:
    limited = attack.replica(
        "limited",
        header_timeout=1.0,
        body_timeout=1.0,
        introspection_rate_limit_per_second=0.01,
        introspection_rate_limit_burst=3,
        rate_limit_per_second=0.01,
        rate_limit_burst=2,
    )
    with limited as replica:
        host, port = urllib.parse.urlsplit(replica.url).netloc.split(":")
        # finding 12: 40 connections trickling header bytes, and 4 that send nothing at all
        sockets = [socket.create_connection((host, int(port))) for _ in range(44)]
        started = time.monotonic()
        for sock in sockets[:40]:
            sock.sendall(b"POST /oauth2/token HTTP/1.1\r\nHost: x\r\n")
        # the header deadline (1 s), and slack for a loaded machine
        left_open = _trickle_until_closed(sockets, trickling=40, deadline=started + 7.0)
        for sock in sockets:
            sock.close()
        assert left_open == [], f"{len(left_open)} slow connections still open after 7 s"
        # a body that does not arrive is a 408 with the RFC error, not a held handler
        with socket.create_connection((host, int(port))) as sock:
            sock.sendall(
                b"POST /oauth2/token HTTP/1.1\r\nHost: x\r\nContent-Type: "
                + FORM.encode()
                + b"\r\nContent-Length: 100\r\n\r\ngrant_type"
            )
            sock.settimeout(8)
            answer = sock.recv(4096).decode()
        assert answer.startswith("HTTP/1.1 408 "), answer
        assert json.loads(answer.split("\r\n\r\n", 1)[1]) == {
            "error": "invalid_request",
            "error_description": "the request body did not arrive within 1 s",
        }
        # finding 13: introspection is limited per authenticated caller
        caller = attack.sa_token(account="resource-sa", pod="resource-0")
        target = agent_token(attack, attack.a)
        answers = [introspect(replica, target, caller=caller) for _ in range(4)]
        assert [a.status_code for a in answers] == [200, 200, 200, 429]
        assert answers[3].json()["error"] == "rate_limited"
        assert (
            answers[3]
            .json()["error_description"]
            .startswith(
                f"too many introspection requests from system:serviceaccount:{attack.namespace}:"
                "resource-sa; retry in "
            )
        )
        assert int(answers[3].headers["Retry-After"]) >= 1
        # and Ask per agent, from a budget of its own
        bearer = {"Authorization": f"Bearer {target}"}
        asks = [
            httpx.post(f"{replica.url}/v1/ask", json={"action": "document.read"}, headers=bearer)
            for _ in range(3)
        ]
        assert [a.status_code for a in asks] == [200, 200, 429]
        assert (
            asks[2]
            .json()["error_description"]
            .startswith(f"too many Ask requests for {attack.namespace}/research; retry in ")
        )


# -- finding 15: malformed requests are 4xx with the RFC error, audited, without a traceback ------


def _gzip_bomb() -> bytes:
    return gzip.compress(b"a=" + b"0" * (2 * 1024 * 1024))


BODIES: dict[str, tuple[bytes, dict[str, str]]] = {
    "invalid utf-8": (b"grant_type=\xff\xfe", {"Content-Type": FORM}),
    "invalid utf-8 in a percent-escape": (b"grant_type=%ff%fe", {"Content-Type": FORM}),
    "charset=bogus": (b"grant_type=x", {"Content-Type": f"{FORM}; charset=bogus"}),
    "charset=utf-16": (
        "grant_type=x".encode("utf-16"),
        {"Content-Type": f"{FORM}; charset=utf-16"},
    ),
    "charset=latin-1": (b"grant_type=\xe9", {"Content-Type": f"{FORM}; charset=latin-1"}),
    "corrupt gzip": (
        b"\x1f\x8b\x08\x00garbage",
        {"Content-Type": FORM, "Content-Encoding": "gzip"},
    ),
    "truncated gzip": (
        gzip.compress(b"grant_type=x")[:-6],
        {"Content-Type": FORM, "Content-Encoding": "gzip"},
    ),
    "gzip bomb": (_gzip_bomb(), {"Content-Type": FORM, "Content-Encoding": "gzip"}),
    "deflate garbage": (b"garbage", {"Content-Type": FORM, "Content-Encoding": "deflate"}),
    "brotli": (b"garbage", {"Content-Type": FORM, "Content-Encoding": "br"}),
    "zstd": (b"garbage", {"Content-Type": FORM, "Content-Encoding": "zstd"}),
    "two codings": (
        gzip.compress(gzip.compress(b"a=b")),
        {"Content-Type": FORM, "Content-Encoding": "gzip, gzip"},
    ),
    "multipart": (b"--x\r\n\r\n--x--\r\n", {"Content-Type": "multipart/form-data; boundary=x"}),
    "no content type": (b"grant_type=x", {}),
    "json to a form endpoint": (b'{"token": "x"}', {"Content-Type": "application/json"}),
    "too many fields": (
        "&".join(f"f{i}=v" for i in range(200)).encode(),
        {"Content-Type": FORM},
    ),
    "nul bytes": (b"grant_type=\x00\x00&token=\x00", {"Content-Type": FORM}),
    "deeply nested json": (b"[" * 5000 + b"]" * 5000, {"Content-Type": "application/json"}),
    "NaN json": (b'{"action": NaN}', {"Content-Type": "application/json"}),
    "json with a BOM": (b'\xef\xbb\xbf{"action": "x"}', {"Content-Type": "application/json"}),
    "json in utf-16": (
        '{"action": "document.read"}'.encode("utf-16"),
        {"Content-Type": "application/json"},
    ),
    "not json": (b"action=document.read", {"Content-Type": "application/json"}),
    "empty": (b"", {"Content-Type": FORM}),
    "zlib bytes without a coding": (zlib.compress(b"grant_type=x"), {"Content-Type": FORM}),
}

RAW_REQUESTS: dict[str, bytes] = {
    "bad request line": b"GARBAGE\r\n\r\n",
    "header without a colon": b"POST /oauth2/token HTTP/1.1\r\nHost: x\r\nNoColon\r\n\r\n",
    "oversized header": b"POST /oauth2/token HTTP/1.1\r\nHost: x\r\nX-Big: "
    + b"a" * 20000
    + b"\r\n\r\n",
    "bad chunk size": b"POST /oauth2/token HTTP/1.1\r\nHost: x\r\nContent-Type: "
    + FORM.encode()
    + b"\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nab\r\n0\r\n\r\n",
    "conflicting lengths": b"POST /oauth2/token HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n"
    b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    "non-ascii method": b"P\xc3\x96ST /oauth2/token HTTP/1.1\r\nHost: x\r\n\r\n",
    "control character in a header": b"POST /v1/ask HTTP/1.1\r\nHost: x\r\n"
    b"Authorization: Bearer \x01x.y.z\r\nContent-Length: 0\r\n\r\n",
}
"""Requests that are not HTTP: aiohttp's parser answers them (400, text) before any endpoint."""


def _raw(replica: Replica, request: bytes) -> str:
    host, port = urllib.parse.urlsplit(replica.url).netloc.split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(request)
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
    return received.decode("latin-1")


def test_every_endpoint_answers_malformed_input_with_a_4xx_rfc_error(attack: Stack) -> None:
    replica = attack.a
    bearer = agent_token(attack, replica)  # unbound: the body is reached without a signature
    caller = attack.sa_token(account="resource-sa", pod="resource-0")
    endpoints: dict[str, dict[str, str]] = {
        "/oauth2/token": {},
        "/oauth2/introspect": {"Authorization": f"Bearer {caller}"},
        "/v1/ask": {"Authorization": f"Bearer {bearer}"},
        "/v1/access-requests": {"Authorization": f"Bearer {bearer}"},
    }
    with realstack.recording("agentauth", "aiohttp") as logs:
        answers: list[tuple[str, httpx.Response]] = []
        for path, auth in endpoints.items():
            for case, (body, headers) in BODIES.items():
                response = httpx.post(
                    f"{replica.url}{path}", content=body, headers={**headers, **auth}
                )
                answers.append((f"{path} {case}", response))
        odd = {
            "unknown path": httpx.get(f"{replica.url}/nothing-here"),
            "wrong method": httpx.get(f"{replica.url}/oauth2/token"),
            "long-poll wait not a number": httpx.get(
                f"{replica.url}/v1/access-requests/x?wait=abc",
                headers={"Authorization": f"Bearer {bearer}"},
            ),
            "long-poll unknown request": httpx.get(
                f"{replica.url}/v1/access-requests/no-such-request",
                headers={"Authorization": f"Bearer {bearer}"},
            ),
            "bearer garbage": httpx.post(
                f"{replica.url}/v1/ask", json={}, headers={"Authorization": "Bearer x.y.z"}
            ),
            "bearer of a foreign issuer": httpx.post(
                f"{replica.url}/oauth2/introspect",
                data={"token": "x"},
                headers={"Authorization": f"Bearer {attack.user_token()}"},
            ),
            "signature garbage": httpx.post(
                f"{replica.url}/oauth2/token",
                data={"grant_type": EXCHANGE},
                headers={"Signature-Input": "sig=(", "Signature": "sig=:!!:"},
            ),
        }
        answers.extend(odd.items())
        for case, response in answers:
            assert response.headers.get("Content-Type", "").startswith("application/json"), (
                case,
                response.status_code,
                response.text[:300],
            )
            body = response.json()
            if response.status_code == 200:
                # a well-formed introspection of a garbage token: RFC 7662's inactive answer
                assert (case.startswith("/oauth2/introspect"), body) == (True, {"active": False})
                continue
            assert 400 <= response.status_code < 500, (case, response.status_code, response.text)
            assert body["error"] in RFC_ERRORS, (case, body)
            if case.startswith("/oauth2/token"):
                assert response.headers.get("X-Agentauth-Audit-Id"), case
        for case, request in RAW_REQUESTS.items():
            answer = _raw(replica, request)
            status = int(answer.split(" ", 2)[1])
            assert 400 <= status < 500, (case, answer[:200])
    token_cases = [r for c, r in answers if c.startswith("/oauth2/token ")]
    audited = {
        json.loads(r.getMessage())["audit_id"]
        for r in logs.records
        if r.name == "agentauth.audit" and json.loads(r.getMessage()).get("decision") == "denied"
    }
    assert {r.headers["X-Agentauth-Audit-Id"] for r in token_cases} <= audited
    tracebacks = [r for r in logs.records if r.exc_info is not None]
    assert tracebacks == [], [f"{r.name}: {r.getMessage()}" for r in tracebacks]
    errors = [r for r in logs.records if r.levelname in ("ERROR", "CRITICAL")]
    assert errors == [], [f"{r.name}: {r.getMessage()}" for r in errors]


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("charset=bogus", (415, "invalid_request", "charset 'bogus' is not supported; send UTF-8")),
        (
            "invalid utf-8",
            (400, "invalid_request", "the request body is not valid UTF-8"),
        ),
        (
            "invalid utf-8 in a percent-escape",
            (400, "invalid_request", "a form field is not valid UTF-8 once percent-decoded"),
        ),
        (
            "corrupt gzip",
            (400, "invalid_request", "the request body is truncated compressed data"),
        ),
        (
            "deflate garbage",
            (400, "invalid_request", "the request body is not valid compressed data"),
        ),
        ("gzip bomb", (413, "invalid_request", "request body exceeds 65536 bytes")),
        (
            "zstd",
            (
                415,
                "invalid_request",
                "content coding 'zstd' is not supported; use gzip, deflate or none",
            ),
        ),
        (
            "too many fields",
            (400, "invalid_request", "the request body has more than 64 form fields"),
        ),
    ],
)
def test_malformed_token_requests_get_exact_errors(
    attack: Stack, case: str, expected: tuple[int, str, str]
) -> None:
    body, headers = BODIES[case]
    assert refusal(httpx.post(f"{attack.b.url}/oauth2/token", content=body, headers=headers)) == (
        expected
    )
