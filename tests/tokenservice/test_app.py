"""The token service over real HTTP on loopback, fed by in-memory state (real keys, real tokens).

Every bad input of the issue has a test asserting status, RFC error code and description.
"""

from __future__ import annotations

import json
import logging
import re
import threading
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import jwt
import pytest
from aiohttp import web

from agentauth.domain import delegation, exchanging, keys, tokens
from agentauth.tokenservice import app as service_app
from agentauth.tokenservice import settings as settings_module
from agentauth.tokenservice import state as state_module
from tests.domain import tokenkit

ISSUER = "https://agentauth.example.test"
USER_ISSUER = "https://login.example.test"
JWT = exchanging.TOKEN_TYPE_JWT
ACCESS = exchanging.TOKEN_TYPE_ACCESS_TOKEN
EXCHANGE = exchanging.GRANT_TYPE_TOKEN_EXCHANGE


def now() -> datetime:
    return datetime.now(UTC)


@pytest.fixture(scope="module")
def cluster() -> tokenkit.ClusterIssuer:
    return tokenkit.ClusterIssuer()


@pytest.fixture(scope="module")
def idp() -> tokenkit.ClusterIssuer:
    return tokenkit.ClusterIssuer(issuer=USER_ISSUER)


@pytest.fixture(scope="module")
def keyset() -> keys.KeySet:
    return keys.generate_keyset(now=now() - timedelta(minutes=1))


def world(**kw: Any) -> exchanging.Snapshot:
    agents = kw.pop(
        "agents",
        [
            tokenkit.agent(delegation={"allowed": True, "maxDepth": 2}),
            tokenkit.agent("tool", uid="tool-uid", service_account="tool-sa"),
        ],
    )
    pods = kw.pop(
        "pods",
        [
            tokenkit.pod(),
            tokenkit.pod(
                "tool-0", uid="tool-pod-uid", agent_label="tool", service_account="tool-sa"
            ),
            tokenkit.pod("unlabelled-0", uid="unlabelled-uid", agent_label=None),
            tokenkit.pod("wrong-0", uid="wrong-uid", agent_label="tool"),
        ],
    )
    grants = kw.pop(
        "grants",
        [
            tokenkit.grant("base", capabilities=tokenkit.STANDARD_CAPABILITIES),
            tokenkit.grant("tool", agents=["tool"], capabilities=[{"name": "document.read"}]),
        ],
    )
    return tokenkit.snapshot(agents=agents, pods=pods, grants=grants, **kw)


class Service:
    def __init__(
        self, base: str, state: state_module.MemoryState, http: aiohttp.ClientSession
    ) -> None:
        self.base = base
        self.state = state
        self.http = http

    async def post(self, path: str, data: Any = None, **kw: Any) -> tuple[int, dict[str, Any], Any]:
        async with self.http.post(self.base + path, data=data, **kw) as response:
            return response.status, dict(response.headers), await response.json()

    async def get(self, path: str) -> tuple[int, dict[str, Any], Any]:
        async with self.http.get(self.base + path) as response:
            body = await response.text()
            try:
                parsed: Any = json.loads(body)
            except ValueError:
                parsed = body
            return response.status, dict(response.headers), parsed

    async def exchange(self, token: str, /, **extra: str) -> tuple[int, dict[str, Any], Any]:
        form = {"grant_type": EXCHANGE, "subject_token": token, "subject_token_type": JWT}
        form.update(extra)
        return await self.post("/oauth2/token", data={k: v for k, v in form.items() if v != ""})


async def start(
    *,
    keyset: keys.KeySet | None,
    cluster: tokenkit.ClusterIssuer,
    idp: tokenkit.ClusterIssuer,
    **settings: Any,
) -> tuple[web.AppRunner, Service]:
    config = settings_module.Settings(
        issuer=ISSUER,
        cluster_issuer=tokenkit.CLUSTER_ISSUER,
        trusted_issuers=(
            delegation.TrustedIssuer(issuer=USER_ISSUER, jwks_url="unused", audience="agentauth"),
        ),
        **settings,
    )
    state = state_module.MemoryState(
        snapshot=world(),
        keyset=keyset,
        cluster_jwks=cluster.jwks(),
        trusted_jwks={USER_ISSUER: idp.jwks()},
    )
    runner = web.AppRunner(service_app.build_app(settings=config, state=state))
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    return runner, Service(f"http://127.0.0.1:{port}", state, aiohttp.ClientSession())


@pytest.fixture
async def service(
    keyset: keys.KeySet, cluster: tokenkit.ClusterIssuer, idp: tokenkit.ClusterIssuer
) -> AsyncIterator[Service]:
    runner, svc = await start(keyset=keyset, cluster=cluster, idp=idp)
    yield svc
    await svc.http.close()
    await runner.cleanup()


def sa_token(cluster: tokenkit.ClusterIssuer, **kw: Any) -> str:
    kw.setdefault("now", now())
    kw.setdefault("audience", ISSUER)
    return cluster.token(**kw)


# -- success -----------------------------------------------------------------------------


async def test_exchange_issues_an_agent_token_verifiable_with_the_jwks(
    service: Service, cluster: tokenkit.ClusterIssuer
) -> None:
    status, headers, body = await service.exchange(sa_token(cluster))
    assert status == 200, body
    assert headers["Cache-Control"] == "no-store"
    assert re.fullmatch(r"[0-9a-f]{32}", headers[service_app.AUDIT_HEADER])
    assert body["token_type"] == "Bearer"
    assert body["issued_token_type"] == ACCESS
    assert body["expires_in"] == 120  # the default tokenTTL
    assert body["scope"] == "document.read document.write"
    _, _, jwks = await service.get("/jwks")
    key = jwt.PyJWK(jwks["keys"][0])
    claims = jwt.decode(
        body["access_token"], key, algorithms=["EdDSA"], audience=ISSUER, issuer=ISSUER
    )
    assert claims["sub"] == "aauth:research.team-a@agentauth.example.test"
    assert claims["pod"] == {"name": "research-0", "uid": "pod-uid-1"}
    assert jwt.get_unverified_header(body["access_token"])["typ"] == "at+jwt"


async def test_metadata_documents(service: Service) -> None:
    status, _, doc = await service.get("/.well-known/oauth-authorization-server")
    assert status == 200
    assert doc["issuer"] == ISSUER
    assert doc["token_endpoint"] == f"{ISSUER}/oauth2/token"
    assert doc["jwks_uri"] == f"{ISSUER}/jwks"
    assert EXCHANGE in doc["grant_types_supported"]


# -- bad inputs --------------------------------------------------------------------------


def claims_of(cluster: tokenkit.ClusterIssuer, **kw: Any) -> dict[str, Any]:
    kw.setdefault("now", now())
    kw.setdefault("audience", ISSUER)
    return cluster.claims(**kw)


BAD_TOKENS: dict[str, tuple[Callable[[tokenkit.ClusterIssuer], str], str]] = {
    "alg none": (lambda c: c.alg_none(claims_of(c)), "token algorithm 'none' is not allowed"),
    "hs256 keyed with the public key": (
        lambda c: c.hs256_with_public_key(claims_of(c)),
        "token algorithm 'HS256' is not allowed",
    ),
    "unknown kid": (
        lambda c: c.sign(claims_of(c), kid="rotated-away"),
        "token signed with unknown key id 'rotated-away'",
    ),
    "expired": (
        lambda c: c.sign(claims_of(c, now=now() - timedelta(hours=1))),
        "token has expired",
    ),
    "not yet valid": (
        lambda c: c.sign(claims_of(c, now=now() + timedelta(minutes=5))),
        "token is not yet valid",
    ),
    "wrong aud": (
        lambda c: c.sign(claims_of(c, audience="https://other.example")),
        "token audience does not include this issuer",
    ),
    "wrong iss": (
        lambda c: c.sign({**claims_of(c), "iss": "https://evil.example"}),
        "token issuer is not trusted",
    ),
    "tampered payload": (
        lambda c: ".".join(
            [
                c.sign(claims_of(c)).split(".")[0],
                tokenkit.b64(json.dumps({**claims_of(c), "sub": "x"}).encode()),
                c.sign(claims_of(c)).split(".")[2],
            ]
        ),
        "token signature is invalid",
    ),
    "deleted pod": (
        lambda c: c.sign(claims_of(c, pod="gone-0", pod_uid="gone")),
        "pod team-a/gone-0 bound to the token no longer exists",
    ),
    "pod not labelled": (
        lambda c: c.sign(claims_of(c, pod="unlabelled-0", pod_uid="unlabelled-uid")),
        "pod team-a/unlabelled-0 has no agentauth.dev/agent label",
    ),
    "pod labelled for another agent": (
        lambda c: c.sign(claims_of(c, pod="wrong-0", pod_uid="wrong-uid")),
        "service account research-sa is not the service account of agent team-a/tool",
    ),
    "service-account mismatch": (
        lambda c: c.sign(claims_of(c, service_account="intruder-sa")),
        "service account intruder-sa is not the service account of agent team-a/research",
    ),
    "garbage base64": (lambda c: "e30.!!!!.e30", "token is not valid base64url"),
}


@pytest.mark.parametrize("case", sorted(BAD_TOKENS))
async def test_bad_subject_tokens(
    case: str, service: Service, cluster: tokenkit.ClusterIssuer
) -> None:
    make, description = BAD_TOKENS[case]
    status, headers, body = await service.exchange(make(cluster))
    assert (status, body) == (400, {"error": "invalid_grant", "error_description": description})
    assert headers["Cache-Control"] == "no-store"


async def test_one_megabyte_token_is_refused_before_parsing(service: Service) -> None:
    status, _, body = await service.exchange("a" * (1024 * 1024))
    assert (status, body) == (
        413,
        {"error": "invalid_request", "error_description": "request body exceeds 65536 bytes"},
    )


async def test_token_just_over_the_jwt_size_bound(service: Service) -> None:
    status, _, body = await service.exchange("a" * 20000)
    assert (status, body) == (
        400,
        {"error": "invalid_request", "error_description": "token exceeds 16384 bytes"},
    )


@pytest.mark.parametrize(
    ("form", "status", "error", "description"),
    [
        (
            {"subject_token_type": "urn:example:saml"},
            400,
            "unsupported_token_type",
            "subject_token_type 'urn:example:saml' is not supported",
        ),
        ({"subject_token": ""}, 400, "invalid_request", "missing parameter: subject_token"),
        (
            {"subject_token_type": ""},
            400,
            "invalid_request",
            "missing parameter: subject_token_type",
        ),
        ({"grant_type": ""}, 400, "invalid_request", "missing parameter: grant_type"),
        (
            {"grant_type": "password"},
            400,
            "unsupported_grant_type",
            "grant_type 'password' is not supported",
        ),
        (
            {"scope": "payments.refund"},
            400,
            "invalid_scope",
            "capability payments.refund is not granted to agent team-a/research",
        ),
        (
            {"audience": "https://unknown.example"},
            400,
            "invalid_target",
            "https://unknown.example is not the resource URI of a ToolServer in namespace team-a",
        ),
    ],
)
async def test_bad_requests(
    form: dict[str, str],
    status: int,
    error: str,
    description: str,
    service: Service,
    cluster: tokenkit.ClusterIssuer,
) -> None:
    got_status, _, body = await service.exchange(sa_token(cluster), **form)
    assert (got_status, body) == (status, {"error": error, "error_description": description})


async def test_denials_are_audited_under_the_returned_audit_id(
    service: Service, cluster: tokenkit.ClusterIssuer, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="agentauth.audit"):
        status, headers, _ = await service.exchange(sa_token(cluster), scope="payments.refund")
    assert status == 400
    audit_id = headers[service_app.AUDIT_HEADER]
    assert re.fullmatch(r"[0-9a-f]{32}", audit_id)
    lines = [json.loads(r.message) for r in caplog.records if r.name == "agentauth.audit"]
    (line,) = [entry for entry in lines if entry["audit_id"] == audit_id]
    assert line["decision"] == "denied"
    assert line["error"] == "invalid_scope"
    assert line["pod"] == "team-a/research-0"
    assert sa_token(cluster) not in json.dumps(line)  # never the presented token


async def test_json_body_is_refused(service: Service) -> None:
    status, _, body = await service.post("/oauth2/token", json={"grant_type": EXCHANGE})
    assert (status, body) == (
        400,
        {
            "error": "invalid_request",
            "error_description": "the request body must be application/x-www-form-urlencoded",
        },
    )


@pytest.mark.parametrize(
    ("token_type", "status", "error", "description"),
    [
        (exchanging.TOKEN_TYPE_ID_TOKEN, 400, "invalid_grant", "the GCP ID token is not a JWT"),
        (
            exchanging.TOKEN_TYPE_AWS,
            400,
            "invalid_request",
            "the AWS signed request is not base64url-encoded JSON",
        ),
    ],
)
async def test_cloud_subject_tokens_are_dispatched_to_federation(
    token_type: str, status: int, error: str, description: str, service: Service
) -> None:
    got = await service.exchange("garbage", subject_token_type=token_type)
    assert (got[0], got[2]) == (status, {"error": error, "error_description": description})


# -- state changes take effect at once ---------------------------------------------------


async def test_introspection_requires_an_authenticated_caller(
    service: Service, cluster: tokenkit.ClusterIssuer
) -> None:
    _, _, body = await service.exchange(sa_token(cluster))
    token = body["access_token"]
    missing = await service.post("/oauth2/introspect", data={"token": token})
    assert (missing[0], missing[1]["WWW-Authenticate"], missing[2]) == (
        401,
        'Bearer realm="agentauth"',
        {
            "error": "invalid_token",
            "error_description": "introspection needs authorization: a bearer agent token or a "
            "service-account token for this issuer",
        },
    )
    wrong_audience = sa_token(cluster, audience="https://elsewhere.example")
    refused = await service.post(
        "/oauth2/introspect",
        data={"token": token},
        headers={"Authorization": f"Bearer {wrong_audience}"},
    )
    assert (refused[0], refused[2]["error"]) == (401, "invalid_token")
    assert refused[2]["error_description"].startswith("introspection caller: ")
    as_agent = await service.post(
        "/oauth2/introspect", data={"token": token}, headers={"Authorization": f"Bearer {token}"}
    )
    assert (as_agent[0], as_agent[2]["active"]) == (200, True)


async def test_suspension_and_grant_deletion_take_effect_for_exchange_and_introspection(
    service: Service, cluster: tokenkit.ClusterIssuer
) -> None:
    _, _, body = await service.exchange(sa_token(cluster))
    token = body["access_token"]
    # The caller authenticates (RFC 7662 section 2.1): here a resource server's SA token.
    caller = {"Authorization": f"Bearer {sa_token(cluster, pod='tool-0', pod_uid='tool-pod-uid')}"}
    status, _, answer = await service.post(
        "/oauth2/introspect", data={"token": token}, headers=caller
    )
    assert (status, answer["active"], answer["scope"]) == (
        200,
        True,
        "document.read document.write",
    )

    await service.state.update(snapshot=world(agents=[tokenkit.agent(suspended=True)]))
    status, _, body = await service.exchange(sa_token(cluster))
    assert (status, body["error_description"]) == (400, "agent team-a/research is suspended")
    assert (await service.post("/oauth2/introspect", data={"token": token}, headers=caller))[2] == {
        "active": False
    }

    await service.state.update(snapshot=world(grants=[]))
    assert (await service.post("/oauth2/introspect", data={"token": token}, headers=caller))[2] == {
        "active": False
    }
    _, _, body = await service.exchange(sa_token(cluster))
    assert body["scope"] == ""


# -- chain of agency ---------------------------------------------------------------------


async def agent_token(service: Service, cluster: tokenkit.ClusterIssuer, **kw: Any) -> str:
    _, _, body = await service.exchange(sa_token(cluster, **kw))
    token: str = body["access_token"]
    return token


def user_token(idp: tokenkit.ClusterIssuer, **claims: Any) -> str:
    base = {
        "iss": USER_ISSUER,
        "sub": "alice@example.test",
        "aud": "agentauth",
        "exp": int((now() + timedelta(minutes=10)).timestamp()),
        "iat": int(now().timestamp()),
        "scope": "document.read",
        # the user names the agent that may act for it (required by default)
        "may_act": {"sub": "aauth:research.team-a@agentauth.example.test"},
    }
    return idp.sign({k: v for k, v in {**base, **claims}.items() if v is not None})


async def delegate(service: Service, subject: str, actor: str) -> tuple[int, dict[str, Any], Any]:
    return await service.post(
        "/oauth2/token",
        data={
            "grant_type": EXCHANGE,
            "subject_token": subject,
            "subject_token_type": ACCESS,
            "actor_token": actor,
            "actor_token_type": ACCESS,
        },
    )


async def test_delegation_over_http(
    service: Service, cluster: tokenkit.ClusterIssuer, idp: tokenkit.ClusterIssuer
) -> None:
    actor = await agent_token(service, cluster)
    status, _, body = await delegate(service, user_token(idp), actor)
    assert status == 200, body
    claims = jwt.decode(body["access_token"], options={"verify_signature": False})
    assert claims["sub"] == "alice@example.test"
    assert claims["act"] == {"sub": "aauth:research.team-a@agentauth.example.test"}
    assert claims["scope"] == "document.read"


async def test_act_nesting_beyond_the_bound(
    service: Service, cluster: tokenkit.ClusterIssuer, idp: tokenkit.ClusterIssuer
) -> None:
    actor = await agent_token(service, cluster)
    nested = user_token(idp, act={"sub": "aauth:a.team-a@x", "act": {"sub": "aauth:b.team-a@x"}})
    status, _, body = await delegate(service, nested, actor)
    assert (status, body) == (
        400,
        {
            "error": "invalid_grant",
            "error_description": "delegation depth 3 exceeds maxDepth 2 of agent team-a/research",
        },
    )


async def test_actor_whose_agent_forbids_delegation(
    service: Service, cluster: tokenkit.ClusterIssuer, idp: tokenkit.ClusterIssuer
) -> None:
    actor = await agent_token(
        service, cluster, service_account="tool-sa", pod="tool-0", pod_uid="tool-pod-uid"
    )
    status, _, body = await delegate(service, user_token(idp), actor)
    assert (status, body) == (
        400,
        {
            "error": "unauthorized_client",
            "error_description": "agent team-a/tool does not allow delegation",
        },
    )


async def test_access_token_subject_without_actor(
    service: Service, idp: tokenkit.ClusterIssuer
) -> None:
    status, _, body = await service.exchange(user_token(idp), subject_token_type=ACCESS)
    assert (status, body) == (
        400,
        {
            "error": "invalid_request",
            "error_description": (
                "actor_token is required when subject_token_type is an access token"
            ),
        },
    )


# -- Ask ---------------------------------------------------------------------------------


async def test_ask_requires_a_bearer_agent_token(service: Service) -> None:
    status, headers, body = await service.post("/v1/ask", json={"question": "open the report"})
    assert (status, body) == (
        401,
        {"error": "invalid_token", "error_description": "missing bearer agent token"},
    )
    assert headers["WWW-Authenticate"] == 'Bearer realm="agentauth"'


async def test_ask_answers_and_audits(
    service: Service, cluster: tokenkit.ClusterIssuer, caplog: pytest.LogCaptureFixture
) -> None:
    token = await agent_token(service, cluster)
    auth = {"Authorization": f"Bearer {token}"}
    with caplog.at_level(logging.INFO, logger="agentauth.audit"):
        status, _, body = await service.post(
            "/v1/ask", json={"question": "can I open the report document?"}, headers=auth
        )
    assert status == 200
    assert (body["allowed"], body["capability"], body["approval_required"]) == (
        True,
        "document.read",
        False,
    )
    audit = [json.loads(r.message) for r in caplog.records if r.name == "agentauth.audit"]
    assert audit[-1]["audit_id"] == body["audit_id"]
    assert audit[-1]["decision"] == "asked"
    _, _, body = await service.post("/v1/ask", json={"action": "payments.authorize"}, headers=auth)
    assert (body["allowed"], body["approval_required"]) == (False, True)
    _, _, body = await service.post(
        "/v1/ask", json={"question": "restart the cluster"}, headers=auth
    )
    assert (body["allowed"], body["capability"]) == (False, None)


async def test_ask_records_the_context_in_the_audit_line(
    service: Service, cluster: tokenkit.ClusterIssuer, caplog: pytest.LogCaptureFixture
) -> None:
    token = await agent_token(service, cluster)
    auth = {"Authorization": f"Bearer {token}"}
    context = {"invoice": "INV-42", "amount": "120 EUR"}
    with caplog.at_level(logging.INFO, logger="agentauth.audit"):
        status, _, body = await service.post(
            "/v1/ask", json={"action": "payments.authorize", "context": context}, headers=auth
        )
        _, _, plain = await service.post(
            "/v1/ask", json={"action": "payments.authorize"}, headers=auth
        )
    assert status == 200
    # The answer does not depend on the context (capabilities are not conditional).
    assert {k: v for k, v in body.items() if k != "audit_id"} == {
        k: v for k, v in plain.items() if k != "audit_id"
    }
    audit = {
        line["audit_id"]: line
        for line in (json.loads(r.message) for r in caplog.records if r.name == "agentauth.audit")
    }
    assert audit[body["audit_id"]]["context"] == context
    assert audit[body["audit_id"]]["action"] == "payments.authorize"
    assert "context" not in audit[plain["audit_id"]]


@pytest.mark.parametrize(
    ("body", "description"),
    [
        ([1, 2], "the request body must be a JSON object"),
        ({}, 'give either "question" or "action"'),
        ({"question": "   "}, 'give either "question" or "action"'),
        ({"action": "Document.Read"}, "action 'Document.Read' is not a capability name"),
        ({"question": "x" * 2001}, "question exceeds 2000 characters"),
        ({"question": ""}, 'give either "question" or "action"'),
        (
            {"question": "open the report\x00"},
            "question contains the control character U+0000: send plain text",
        ),
        (
            {"question": "open the \x1b[2Jreport"},
            "question contains the control character U+001B: send plain text",
        ),
        (
            {"question": "open the \u202ereport"},
            "question contains the control character U+202E: send plain text",
        ),
        (
            {"actoin": "document.read"},
            'unknown field \'actoin\': the body has "question" or "action", and optionally '
            '"context"',
        ),
        (
            {"action": "document.read", "context": ["invoice"]},
            '"context" must be an object of strings',
        ),
        (
            {"action": "document.read", "context": {"amount": 120}},
            "context value for 'amount' must be a string",
        ),
        (
            {"action": "document.read", "context": {"bad key": "x"}},
            "context key 'bad key' is invalid: use at most 63 letters, digits, '-', '_' or '.', "
            "starting and ending with a letter or digit",
        ),
        (
            {"action": "document.read", "context": {f"k{i}": "v" for i in range(17)}},
            "context has 17 entries, at most 16 are allowed",
        ),
        (
            {"action": "document.read", "context": {"note": "x" * 257}},
            "context value for 'note' must be plain text of at most 256 characters",
        ),
    ],
)
async def test_ask_refuses_bad_bodies(
    service: Service, cluster: tokenkit.ClusterIssuer, body: Any, description: str
) -> None:
    token = await agent_token(service, cluster)
    status, _, answer = await service.post(
        "/v1/ask", json=body, headers={"Authorization": f"Bearer {token}"}
    )
    assert (status, answer) == (400, {"error": "invalid_request", "error_description": description})


async def test_ask_refuses_100_kb_of_text(
    service: Service, cluster: tokenkit.ClusterIssuer
) -> None:
    token = await agent_token(service, cluster)
    status, _, answer = await service.post(
        "/v1/ask",
        json={"question": "open the report " * 6400},
        headers={"Authorization": f"Bearer {token}"},
    )
    assert (status, answer) == (
        413,
        {"error": "invalid_request", "error_description": "request body exceeds 65536 bytes"},
    )


@pytest.mark.parametrize(
    "question",
    [
        "¿Puedo abrir el informe?",
        "Darf ich den Bericht löschen?",
        "报告",
        "delete the report document",
        "send the report document to my personal gmail",
    ],
)
async def test_ask_answers_other_languages_and_dangerous_questions_not_covered(
    service: Service, cluster: tokenkit.ClusterIssuer, question: str
) -> None:
    token = await agent_token(service, cluster)
    status, _, body = await service.post(
        "/v1/ask", json={"question": question}, headers={"Authorization": f"Bearer {token}"}
    )
    assert status == 200
    assert (body["allowed"], body["decision"], body["capability"]) == (False, "not_covered", None)


async def test_ask_answers_each_clause_and_how_to_request_approval(
    service: Service, cluster: tokenkit.ClusterIssuer
) -> None:
    token = await agent_token(service, cluster)
    status, _, body = await service.post(
        "/v1/ask",
        json={"question": "open the report document and then pay the invoice"},
        headers={"Authorization": f"Bearer {token}"},
    )
    assert status == 200
    assert (body["allowed"], body["decision"], body["capability"]) == (
        False,
        "approval_required",
        "payments.authorize",
    )
    assert [(c["capability"], c["decision"]) for c in body["clauses"]] == [
        ("document.read", "allowed"),
        ("payments.authorize", "approval_required"),
    ]
    assert body["clauses"][0]["description"] == "Read documents"
    assert body["approval_request"] == {
        "method": "POST",
        "path": "/v1/access-requests",
        "body": {
            "capabilities": ["payments.authorize"],
            "justification": "<why the agent needs this now>",
        },
    }


# -- probes, metrics, rate limit ---------------------------------------------------------


async def test_readyz_needs_keys_and_metrics_count_exchanges(
    cluster: tokenkit.ClusterIssuer, idp: tokenkit.ClusterIssuer, keyset: keys.KeySet
) -> None:
    runner, svc = await start(keyset=None, cluster=cluster, idp=idp)
    try:
        assert (await svc.get("/healthz"))[0] == 200
        assert (await svc.get("/readyz"))[0] == 503
        status, _, body = await svc.exchange(sa_token(cluster))
        assert (status, body["error"]) == (503, "temporarily_unavailable")
        await svc.state.update(keyset=keyset)
        assert (await svc.get("/readyz"))[0] == 200
        assert (await svc.exchange(sa_token(cluster)))[0] == 200
        _, _, metrics = await svc.get("/metrics")
        assert (
            f'agentauth_token_exchanges_total{{result="issued",subject_type="{JWT}"}} 1.0'
            in metrics
        )
        unavailable = 'result="temporarily_unavailable"'
        assert (
            f'agentauth_token_exchanges_total{{{unavailable},subject_type="{JWT}"}} 1.0' in metrics
        )
        assert 'agentauth_cache_objects{cache="agents"} 2.0' in metrics
    finally:
        await svc.http.close()
        await runner.cleanup()


async def test_readyz_says_why_it_is_not_ready_and_fails_first_when_shutting_down(
    cluster: tokenkit.ClusterIssuer, idp: tokenkit.ClusterIssuer, keyset: keys.KeySet
) -> None:
    runner, svc = await start(keyset=None, cluster=cluster, idp=idp)
    try:
        status, _, body = await svc.get("/readyz")
        assert (status, body) == (503, {"status": "not ready", "reason": "no signing key"})
        await svc.state.update(keyset=keyset)
        assert (await svc.get("/readyz"))[::2] == (200, {"status": "ready"})
        svc.state.drain()  # serve() does this first on SIGTERM, then stops accepting
        status, _, body = await svc.get("/readyz")
        assert (status, body) == (503, {"status": "not ready", "reason": "shutting down"})
        assert (await svc.exchange(sa_token(cluster)))[0] == 200  # still serving meanwhile
    finally:
        await svc.http.close()
        await runner.cleanup()


async def test_per_agent_rate_limit(
    cluster: tokenkit.ClusterIssuer, idp: tokenkit.ClusterIssuer, keyset: keys.KeySet
) -> None:
    runner, svc = await start(
        keyset=keyset, cluster=cluster, idp=idp, rate_limit_per_second=0.1, rate_limit_burst=2
    )
    try:
        assert [(await svc.exchange(sa_token(cluster)))[0] for _ in range(2)] == [200, 200]
        status, headers, body = await svc.exchange(sa_token(cluster))
        assert status == 429
        assert body == {
            "error": "rate_limited",
            "error_description": "too many token requests for team-a/research; retry in 10 s",
        }
        assert headers["Retry-After"] == "10"
        other = sa_token(cluster, service_account="tool-sa", pod="tool-0", pod_uid="tool-pod-uid")
        assert (await svc.exchange(other))[0] == 200  # buckets are per agent
    finally:
        await svc.http.close()
        await runner.cleanup()


async def test_per_client_rate_limit_counts_requests_that_reach_no_decision(
    cluster: tokenkit.ClusterIssuer,
    idp: tokenkit.ClusterIssuer,
    keyset: keys.KeySet,
    caplog: pytest.LogCaptureFixture,
) -> None:
    runner, svc = await start(
        keyset=keyset,
        cluster=cluster,
        idp=idp,
        client_rate_limit_per_second=0.25,
        client_rate_limit_burst=3,
    )
    try:
        # Garbage that is refused before any agent is known still spends the client's budget.
        refused = [(await svc.exchange("not-a-jwt"))[2]["error"] for _ in range(2)]
        assert refused == ["invalid_grant", "invalid_grant"]
        garbage = await svc.post(
            "/oauth2/token", data="%%%", headers={"Content-Type": "text/plain"}
        )
        assert garbage[0] == 400
        # Those three were decided (and audited); from here on only refusals by the limit follow.
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="agentauth.audit"):
            status, headers, body = await svc.exchange("not-a-jwt")
            # A valid request from the same address is limited too: the limit is per address.
            valid = await svc.exchange(sa_token(cluster))
        assert (status, body) == (
            429,
            {
                "error": "rate_limited",
                "error_description": "too many token requests from 127.0.0.1; retry in 4 s",
            },
        )
        assert headers["Retry-After"] == "4"
        assert headers["Cache-Control"] == "no-store"
        assert headers["Content-Type"].startswith("application/json")
        assert valid[0] == 429
        # Refusals are counted, never audited (a line per request of a flood is amplification).
        # Only this thread's records: this service runs on the test's loop, while other suites'
        # session-scoped token services (their own threads) may audit at the same moment.
        here = threading.get_ident()
        assert [r for r in caplog.records if r.name == "agentauth.audit" and r.thread == here] == []
        _, _, metrics = await svc.get("/metrics")
        assert (
            'agentauth_token_exchanges_total{result="rate_limited",subject_type="unknown"} 2.0'
            in metrics
        )
        # Only the token endpoint is limited this way.
        assert (await svc.get("/jwks"))[0] == 200
    finally:
        await svc.http.close()
        await runner.cleanup()


async def test_per_client_rate_limit_can_be_turned_off(
    cluster: tokenkit.ClusterIssuer, idp: tokenkit.ClusterIssuer, keyset: keys.KeySet
) -> None:
    runner, svc = await start(
        keyset=keyset, cluster=cluster, idp=idp, client_rate_limit_per_second=0
    )
    try:
        statuses = {(await svc.exchange("not-a-jwt"))[0] for _ in range(120)}
        assert statuses == {400}
    finally:
        await svc.http.close()
        await runner.cleanup()


async def test_issued_tokens_verify_with_our_own_verifier(
    service: Service, cluster: tokenkit.ClusterIssuer, keyset: keys.KeySet
) -> None:
    token = await agent_token(service, cluster)
    verified = tokens.verify(
        token, public_keys=keyset.public_keys(), issuer=ISSUER, now=now(), audience=ISSUER
    )
    assert verified.agent.name == "research"


# -- AAuth seams: signed token requests (cnf) and registered-key client assertions ------


async def signed_exchange(
    service: Service, token: str, key: Any, *, tamper: bool = False
) -> tuple[int, dict[str, Any], Any]:
    return await signed_post(
        service,
        {"grant_type": EXCHANGE, "subject_token": token, "subject_token_type": JWT},
        key,
        tamper=tamper,
    )


async def signed_post(
    service: Service, form: dict[str, str], key: Any, *, tamper: bool = False
) -> tuple[int, dict[str, Any], Any]:
    """POST ``form`` to the token endpoint, signed (RFC 9421, ``sig=hwk``) with ``key``."""
    from urllib.parse import urlencode

    from agentauth.domain import signatures

    body = urlencode(form).encode()
    headers = {"Content-Type": "application/x-www-form-urlencoded"}
    headers.update(
        signatures.sign_request(
            method="POST",
            url=f"{ISSUER}/oauth2/token",
            headers=headers,
            body=body,
            private_key=key,
            signature_key_header=signatures.signature_key_hwk(key),
        )
    )
    if tamper:
        body = body.replace(b"token-exchange", b"token-exchangE")
    return await service.post("/oauth2/token", data=body, headers=headers)


async def test_signed_token_request_binds_the_token_to_the_key(
    service: Service, cluster: tokenkit.ClusterIssuer
) -> None:
    from cryptography.hazmat.primitives.asymmetric import ed25519

    from agentauth.domain import jose

    key = ed25519.Ed25519PrivateKey.generate()
    status, _, body = await signed_exchange(service, sa_token(cluster), key)
    assert status == 200, body
    claims = jwt.decode(body["access_token"], options={"verify_signature": False})
    jwk = jose.ed25519_jwk(key.public_key())
    assert claims["cnf"] == {"jwk": jwk, "jkt": jose.jwk_thumbprint(jwk)}
    status, _, body = await signed_exchange(service, sa_token(cluster), key, tamper=True)
    assert status == 400
    assert body["error"] == "invalid_request"
    assert body["error_description"].startswith("request signature is invalid: ")


async def test_registered_key_agent_uses_a_client_assertion(service: Service) -> None:
    import time as clock

    from cryptography.hazmat.primitives.asymmetric import ed25519

    from agentauth.domain import assertions, jose

    key = ed25519.Ed25519PrivateKey.generate()
    jwk = {**jose.ed25519_jwk(key.public_key()), "kid": "k1"}
    outside = tokenkit.agent(
        "outside", uid="outside-uid", service_account=None, publicKeys={"keys": [jwk]}
    )
    await service.state.update(
        snapshot=world(
            agents=[outside],
            grants=[
                tokenkit.grant("o", agents=["outside"], capabilities=[{"name": "document.read"}])
            ],
        )
    )
    agent_id = "aauth:outside.team-a@agentauth.example.test"
    assertion = assertions.create_client_assertion(
        private_key=key,
        kid="k1",
        agent_id=agent_id,
        token_endpoint=f"{ISSUER}/oauth2/token",
        now=clock.time(),
        cnf_jkt=jose.jwk_thumbprint(jose.ed25519_jwk(key.public_key())),
    )
    form = {
        "grant_type": "client_credentials",
        "client_assertion_type": assertions.CLIENT_ASSERTION_TYPE,
        "client_assertion": assertion,
    }
    status, _, body = await signed_post(service, form, key)  # signed by the key it names
    assert status == 200, body
    claims = jwt.decode(body["access_token"], options={"verify_signature": False})
    assert claims["sub"] == agent_id
    assert claims["cnf"]["jkt"] == jose.jwk_thumbprint(jose.ed25519_jwk(key.public_key()))
    status, _, misplaced = await service.exchange(assertion)  # as an RFC 8693 subject_token
    assert (status, misplaced) == (
        400,
        {
            "error": "invalid_request",
            "error_description": "agent assertions must be sent as client_assertion (RFC 7523) "
            "with grant_type=client_credentials, not as a subject_token",
        },
    )
    status, _, body = await signed_post(service, form, key)  # replayed in a fresh signature
    assert (status, body) == (
        401,
        {"error": "invalid_client", "error_description": "assertion jti has already been used"},
    )


async def test_refused_signed_requests_do_not_fill_the_replay_cache(
    keyset: keys.KeySet, cluster: tokenkit.ClusterIssuer, idp: tokenkit.ClusterIssuer
) -> None:
    """Anyone can sign garbage with a key of their own: refused requests are forgotten, so a
    flood of them cannot fill a replica's signature cache (which then refuses everyone)."""
    from cryptography.hazmat.primitives.asymmetric import ed25519

    runner, svc = await start(keyset=keyset, cluster=cluster, idp=idp)
    try:
        remembered = runner.app[service_app.CONTEXT_KEY].signature_replay
        for _ in range(20):
            status, _, body = await signed_exchange(
                svc, "not-a-token", ed25519.Ed25519PrivateKey.generate()
            )
            assert (status, body["error"]) == (400, "invalid_grant")
        assert len(remembered) == 0
        key = ed25519.Ed25519PrivateKey.generate()
        form = {
            "grant_type": EXCHANGE,
            "subject_token": sa_token(cluster),
            "subject_token_type": JWT,
        }
        status, _, _ = await signed_post(svc, form, key)
        assert status == 200
        assert len(remembered) == 1  # an accepted signature is remembered for its window
    finally:
        await svc.http.close()
        await runner.cleanup()
