"""Cloud federation costs: what an AWS or GCP exchange spends before the agent token is minted.

The issue names no target figures; these are measured so regressions are visible:

- ``aws_validate_per_s``: decode + strict validation of a botocore-signed request (pure domain).
- ``aws_round_trip_ms``: the adapter end to end (validation, replay cache, aiohttp POST, STS
  answer parsing) against the loopback STS that recomputes SigV4 with botocore: p50/p99. The
  loopback STS runs in this process, so this is an upper bound on our own overhead plus a
  Python SigV4 check; real STS adds its network latency.
- ``gcp_verify_per_s``: google-auth ``verify_token`` (RS256) with cached certificates, through
  the adapter (worker-thread hop included), sequentially.
- ``match_1000_agents_us``: ``match_agent`` over 1000 Agents, per call.

Prints one JSON line last (see bench/run.py).
"""

from __future__ import annotations

import asyncio
import datetime
import json
import pathlib
import statistics
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))

import botocore.session
from tests.domain.federation.loopback_clouds import (
    KEY_THUMBPRINT,
    AwsPrincipal,
    LoopbackGoogle,
    LoopbackSts,
    google_id_token,
    make_google_key,
    serving,
)

from agentauth.domain import claimpolicy
from agentauth.domain.federation import aws, matching
from agentauth.domain.models import Agent
from agentauth.sdk import aws as sdk_aws
from agentauth.tokenservice import federation

ISSUER = "https://agentauth.example.com"
PRINCIPAL = AwsPrincipal(
    "ASIABENCH0000000001",
    "bench-secret",
    "arn:aws:sts::123456789012:assumed-role/research-agent/bench",
    "123456789012",
)


def bench_validate(token: str, seconds: float = 2.0) -> float:
    count, started = 0, time.perf_counter()
    deadline = started + seconds
    while time.perf_counter() < deadline:
        for _ in range(100):
            aws.validate_signed_request(
                aws.decode_subject_token(token),
                issuer=ISSUER,
                now=datetime.datetime.now(datetime.UTC),
                signer_jkt=KEY_THUMBPRINT,
                test_endpoint="http://127.0.0.1:1/",
            )
        count += 100
    return count / (time.perf_counter() - started)


async def bench_aws_round_trip(sts: LoopbackSts, session: object, n: int = 300) -> list[float]:
    settings = federation.FederationSettings(issuer=ISSUER, aws_sts_test_endpoint=sts.url)
    cache = aws.InMemoryReplayCache()
    tokens = [
        sdk_aws.aws_subject_token(
            issuer=ISSUER, key_thumbprint=KEY_THUMBPRINT, session=session, endpoint_url=sts.url
        )
        for _ in range(n)
    ]
    import aiohttp

    latencies = []
    async with aiohttp.ClientSession() as http:
        for token in tokens:
            started = time.perf_counter()
            await federation.verify_aws_subject_token(
                token,
                settings=settings,
                replay_cache=cache,
                signer_jkt=KEY_THUMBPRINT,
                http_session=http,
            )
            latencies.append((time.perf_counter() - started) * 1000)
    return latencies


async def bench_gcp(google: LoopbackGoogle, n: int = 500) -> float:
    settings = federation.FederationSettings(issuer=ISSUER, gcp_certs_url=google.certs_url)
    token = google_id_token(google.signing_key, aud=f"{ISSUER}#jkt={KEY_THUMBPRINT}")
    # warm the cache
    await federation.verify_gcp_subject_token(token, settings=settings, signer_jkt=KEY_THUMBPRINT)
    started = time.perf_counter()
    for _ in range(n):
        await federation.verify_gcp_subject_token(
            token, settings=settings, signer_jkt=KEY_THUMBPRINT
        )
    return n / (time.perf_counter() - started)


def bench_match(n_agents: int = 1000, calls: int = 200) -> float:
    agents = [
        Agent.model_validate(
            {
                "metadata": {"name": f"a{i}", "namespace": "agents"},
                "spec": {
                    "federation": {"aws": {"roleArns": [f"arn:aws:iam::123456789012:role/r{i}"]}}
                },
            }
        )
        for i in range(n_agents)
    ]
    identity = matching.FederatedIdentity(
        provider="aws",
        principal=f"arn:aws:iam::123456789012:role/r{n_agents - 1}",
        account="123456789012",
        subject="s",
    )
    # The namespace may claim any AWS role (the claim policy is part of every match).
    policy = claimpolicy.parse(
        json.dumps([{"namespaces": ["agents"], "aws": {"roleArns": ["arn:*:iam::*:role/*"]}}])
    )
    started = time.perf_counter()
    for _ in range(calls):
        matching.match_agent(identity, agents, policy=policy)
    return (time.perf_counter() - started) / calls * 1e6


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * fraction))]


def main() -> None:
    session = botocore.session.Session()
    session.set_credentials(PRINCIPAL.access_key_id, PRINCIPAL.secret_access_key)
    sts = LoopbackSts()
    sts.add(PRINCIPAL)
    google = LoopbackGoogle(make_google_key("bench"))
    token = sdk_aws.aws_subject_token(
        issuer=ISSUER,
        key_thumbprint=KEY_THUMBPRINT,
        session=session,
        endpoint_url="http://127.0.0.1:1/",
    )
    results: dict[str, object] = {"aws_validate_per_s": round(bench_validate(token))}
    with serving(sts.server), serving(google.server):
        latencies = asyncio.run(bench_aws_round_trip(sts, session))
        results["aws_round_trip_ms"] = {
            "p50": round(statistics.median(latencies), 2),
            "p99": round(percentile(latencies, 0.99), 2),
        }
        results["gcp_verify_per_s"] = round(asyncio.run(bench_gcp(google)))
    results["match_1000_agents_us"] = round(bench_match(), 1)
    print(json.dumps(results))


if __name__ == "__main__":
    main()
