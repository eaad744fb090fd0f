"""AgentClient against a loopback token service: exchange, cache, single flight, errors,
Ask API, JIT access requests, delegation and registered keys."""

from __future__ import annotations

import asyncio
import os
import stat
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from agentauth.domain import jose
from agentauth.sdk import AgentClient, errors, generate_key_pair, load_private_key
from tests.sdk.loopback import AGENT_ID, LoopbackIssuer, ServerThread, wait_for

AUDIENCE = "https://docs.example.test"


@pytest.fixture(scope="module")
def server() -> Iterator[ServerThread]:
    thread = ServerThread()
    yield thread
    thread.close()


@pytest.fixture
def issuer(server: ServerThread) -> LoopbackIssuer:
    return LoopbackIssuer(server)


@pytest.fixture
def token_file(tmp_path: Path, issuer: LoopbackIssuer) -> Path:
    path = tmp_path / "token"
    path.write_text("sa-token-1\n")
    issuer.service_account_tokens.add("sa-token-1")
    return path


class FakeClock:
    """An injectable clock (the SDK takes ``clock=``); real servers still use real time."""

    def __init__(self) -> None:
        import time

        self.now = time.time()

    def __call__(self) -> float:
        return self.now


def _client(issuer: LoopbackIssuer, token_file: Path, **kwargs: object) -> AgentClient:
    env = {
        "AGENTAUTH_AGENT": "reporter",
        "AGENTAUTH_NAMESPACE": "team-a",
        "AGENTAUTH_ISSUER": issuer.issuer,
        "AGENTAUTH_TOKEN_URL": issuer.url,
        "AGENTAUTH_TOKEN_FILE": str(token_file),
    }
    return AgentClient.from_environment(env, **kwargs)


def test_from_environment_requires_the_webhook_variables() -> None:
    with pytest.raises(errors.ConfigurationError) as caught:
        AgentClient.from_environment({"AGENTAUTH_ISSUER": "https://x"})
    assert caught.value.description == (
        "missing environment variable(s) AGENTAUTH_TOKEN_URL, AGENTAUTH_TOKEN_FILE; is the pod "
        "labelled agentauth.dev/agent=<agent>?"
    )


def test_token_url_accepts_base_or_endpoint(issuer: LoopbackIssuer, token_file: Path) -> None:
    client = AgentClient(
        issuer=issuer.issuer,
        token_url=issuer.token_endpoint,
        subject_token_source=lambda: None,  # type: ignore[arg-type,return-value]
    )
    assert (client.base_url, client.token_endpoint) == (issuer.url, issuer.token_endpoint)


def test_exchanged_token_is_bound_to_the_in_memory_key(
    issuer: LoopbackIssuer, token_file: Path
) -> None:
    with _client(issuer, token_file) as client:
        assert client.agent_name == "reporter" and client.namespace == "team-a"
        info = client.token_info(audience=AUDIENCE)
        claims = jose.parse(info.access_token).payload
        assert claims["aud"] == AUDIENCE
        assert claims["cnf"]["jkt"] == client.jkt
        assert claims["cnf"]["jwk"] == client.public_jwk
        assert info.scope == ("document.list", "document.read")
        assert info.expires_at - info.issued_at == 300
    other = _client(issuer, token_file)
    assert other.jkt != client.jkt  # a fresh key per client/process


def test_service_account_token_is_reread_on_every_exchange(
    issuer: LoopbackIssuer, token_file: Path
) -> None:
    client = _client(issuer, token_file)
    client.token(audience=AUDIENCE)
    token_file.write_text("sa-token-2")
    issuer.service_account_tokens.add("sa-token-2")
    client.token(audience=AUDIENCE, force_refresh=True)
    assert issuer.subject_tokens_seen == ["sa-token-1", "sa-token-2"]


def test_cache_per_audience_and_scope_with_refresh_at_80_percent(
    issuer: LoopbackIssuer, token_file: Path
) -> None:
    clock = FakeClock()
    client = _client(issuer, token_file, clock=clock)
    first = client.token(audience=AUDIENCE)
    assert client.token(audience=AUDIENCE) == first
    assert client.token(audience=AUDIENCE, scope=["document.read"]) != first
    assert client.token(audience=AUDIENCE, scope="document.read") == client.token(
        audience=AUDIENCE, scope=["document.read", "document.read"]
    )
    assert client.token(audience="https://other.example.test") != first
    assert issuer.exchange_count == 3
    clock.now += 0.79 * 300
    assert client.token(audience=AUDIENCE) == first
    assert issuer.exchange_count == 3
    clock.now += 0.02 * 300
    assert client.token(audience=AUDIENCE) != first
    assert issuer.exchange_count == 4


def test_concurrent_async_callers_share_one_exchange(
    issuer: LoopbackIssuer, token_file: Path
) -> None:
    client = _client(issuer, token_file)
    issuer.hold_exchanges()

    async def scenario() -> list[str]:
        calls = [asyncio.ensure_future(client.atoken(audience=AUDIENCE)) for _ in range(10)]
        await asyncio.to_thread(issuer.exchange_started.wait, 10)
        issuer.release_exchanges()
        results = await asyncio.gather(*calls)
        await client.aclose()
        return results

    results = asyncio.run(scenario())
    assert len(set(results)) == 1
    assert issuer.exchange_count == 1


def test_concurrent_threads_share_one_exchange(issuer: LoopbackIssuer, token_file: Path) -> None:
    client = _client(issuer, token_file)
    issuer.hold_exchanges()
    results: list[str] = []
    threads = [
        threading.Thread(target=lambda: results.append(client.token(audience=AUDIENCE)))
        for _ in range(6)
    ]
    for thread in threads:
        thread.start()
    assert issuer.exchange_started.wait(10)
    issuer.release_exchanges()
    for thread in threads:
        thread.join(10)
    assert len(results) == 6 and len(set(results)) == 1
    assert issuer.exchange_count == 1


def test_errors_carry_the_rfc_code_and_description(
    issuer: LoopbackIssuer, token_file: Path
) -> None:
    client = _client(issuer, token_file)
    with pytest.raises(errors.InvalidScopeError) as scope_error:
        client.token(audience=AUDIENCE, scope=["payments.authorize"])
    assert (scope_error.value.error, scope_error.value.status) == ("invalid_scope", 400)
    assert scope_error.value.description == "capability payments.authorize is not granted"
    token_file.write_text("revoked")
    with pytest.raises(errors.InvalidGrantError) as grant_error:
        client.token(audience=AUDIENCE)
    assert str(grant_error.value) == "invalid_grant: service-account token is not valid"
    token_file.write_text("")
    with pytest.raises(errors.ConfigurationError) as empty:
        client.token(audience=AUDIENCE)
    assert empty.value.description == f"service-account token file {token_file} is empty"
    token_file.write_text("sa-token-1")
    with pytest.raises(errors.TransportError) as transport:
        AgentClient.from_environment(
            {
                "AGENTAUTH_ISSUER": "http://127.0.0.1:9",
                "AGENTAUTH_TOKEN_URL": "http://127.0.0.1:9",
                "AGENTAUTH_TOKEN_FILE": str(token_file),
            }
        ).token()
    assert transport.value.error == "transport_error"


def test_error_mapping_for_non_json_and_rate_limits() -> None:
    limited = errors.from_response(
        status=429,
        body={"error": "rate_limited", "error_description": "slow down"},
        headers={"retry-after": "3"},
    )
    assert isinstance(limited, errors.RateLimitedError) and limited.retry_after == 3.0
    unknown = errors.from_response(status=502, body=None, headers={})
    assert isinstance(unknown, errors.ServerError) and unknown.error == "http_502"


def test_ask_and_is_allowed(issuer: LoopbackIssuer, token_file: Path) -> None:
    client = _client(issuer, token_file)
    answer = client.ask("may I read the quarterly report?")
    assert (answer.allowed, answer.capability, answer.audit_id) == (
        True,
        "document.read",
        "audit-1",
    )
    assert client.is_allowed("document.read") is True
    assert client.is_allowed("payments.authorize") is False
    assert client.check("payments.authorize").approval_required is True
    assert asyncio.run(client.ais_allowed("document.list")) is True


def test_request_access_waits_for_approval(issuer: LoopbackIssuer, token_file: Path) -> None:
    client = _client(issuer, token_file)
    before = client.token()

    def approver() -> None:
        assert issuer.request_filed.wait(10)
        wait_for(lambda: bool(issuer.requests))
        issuer.approve(next(iter(issuer.requests)))

    thread = threading.Thread(target=approver)
    thread.start()
    state = client.request_access(
        ["payments.authorize"], justification="pay invoice 42", duration="15m", wait=20
    )
    thread.join(10)
    assert state.approved and state.capabilities == ("payments.authorize",)
    after = client.token()
    assert after != before  # cache invalidated on approval
    assert "payments.authorize" in jose.parse(after).payload["scope"].split()


def test_request_access_denied_and_pending(issuer: LoopbackIssuer, token_file: Path) -> None:
    client = _client(issuer, token_file)
    pending = client.request_access(["document.write"], justification="fix typo")
    assert pending.phase == "Pending"
    assert client.access_request(pending.name).phase == "Pending"
    issuer.approve(pending.name, phase="Denied")

    async def file_and_wait() -> None:
        issuer.request_filed.clear()
        task = asyncio.ensure_future(
            client.arequest_access(["document.write"], justification="again", wait=20)
        )
        await asyncio.to_thread(issuer.request_filed.wait, 10)
        name = next(n for n in issuer.requests if n != pending.name)
        await asyncio.to_thread(issuer.approve, name, phase="Denied")
        await task

    with pytest.raises(errors.AccessRequestDeniedError) as caught:
        asyncio.run(file_and_wait())
    assert caught.value.phase == "Denied"
    with pytest.raises(errors.InvalidScopeError) as invalid:
        client.request_access(["document.read"], justification="x")
    assert invalid.value.description == "capability document.read cannot be requested"
    with pytest.raises(errors.NotFoundError):
        client.access_request("nope")


def test_delegate_builds_a_chain_of_agency(issuer: LoopbackIssuer, token_file: Path) -> None:
    client = _client(issuer, token_file)
    delegated = client.delegate("user:alice@example.com", scope=["document.read"])
    claims = jose.parse(delegated.access_token).payload
    assert claims["sub"] == "alice@example.com"
    assert claims["act"] == {"sub": AGENT_ID}
    assert claims["scope"] == "document.read"
    assert claims["cnf"]["jkt"] == client.jkt
    async_delegated = asyncio.run(client.adelegate("user:bob@example.com"))
    assert jose.parse(async_delegated.access_token).payload["sub"] == "bob@example.com"


def test_registered_key_agent(issuer: LoopbackIssuer, tmp_path: Path) -> None:
    pair = generate_key_pair(private_key_path=tmp_path / "agent.pem")
    assert stat.S_IMODE(os.stat(pair.private_key_path).st_mode) == 0o600
    assert set(pair.jwks["keys"][0]) == {"kty", "crv", "x", "kid", "alg", "use"}
    issuer.registered_jwks = pair.jwks
    client = AgentClient.from_private_key(
        agent_id=AGENT_ID,
        issuer=issuer.issuer,
        token_url=issuer.url,
        private_key_file=pair.private_key_path,
    )
    token = client.token(audience=AUDIENCE)
    assert jose.parse(token).payload["cnf"]["jkt"] == client.jkt
    assert client.token(audience=AUDIENCE, force_refresh=True) != token  # a fresh jti each time
    stranger = AgentClient.from_private_key(
        agent_id=AGENT_ID,
        issuer=issuer.issuer,
        token_url=issuer.url,
        private_key=load_private_key(
            generate_key_pair(private_key_path=tmp_path / "other.pem").private_key_path
        ),
    )
    with pytest.raises(errors.InvalidClientError) as caught:
        stranger.token()
    assert caught.value.description.endswith("is not registered for this agent")


def test_key_files_are_protected(tmp_path: Path) -> None:
    pair = generate_key_pair(private_key_path=tmp_path / "agent.pem")
    with pytest.raises(errors.ConfigurationError) as exists:
        generate_key_pair(private_key_path=pair.private_key_path)
    assert exists.value.description == (
        f"{pair.private_key_path} already exists; refusing to overwrite a private key"
    )
    assert generate_key_pair(private_key_path=pair.private_key_path, overwrite=True).kid != pair.kid
    os.chmod(pair.private_key_path, 0o644)
    with pytest.raises(errors.ConfigurationError) as loose:
        load_private_key(pair.private_key_path)
    assert loose.value.description == (
        f"private key {pair.private_key_path} is accessible by group or others (mode 0o644); "
        "chmod 600 it"
    )
    not_a_key = tmp_path / "garbage.pem"
    not_a_key.write_text("hello")
    not_a_key.chmod(0o600)
    with pytest.raises(errors.ConfigurationError) as garbage:
        load_private_key(not_a_key)
    assert garbage.value.description == f"{not_a_key} is not a PEM private key"


def test_a_cancelled_caller_does_not_cancel_the_shared_exchange(
    issuer: LoopbackIssuer, token_file: Path
) -> None:
    client = _client(issuer, token_file)
    issuer.hold_exchanges()

    async def scenario() -> str:
        first = asyncio.ensure_future(client.atoken(audience=AUDIENCE))
        second = asyncio.ensure_future(client.atoken(audience=AUDIENCE))
        await asyncio.to_thread(issuer.exchange_started.wait, 10)
        first.cancel()
        issuer.release_exchanges()
        token = await second
        await client.aclose()
        assert first.cancelled()
        return token

    assert asyncio.run(scenario())
    assert issuer.exchange_count == 1
