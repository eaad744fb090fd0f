"""Cost of AAuth request signing and bound-request verification.

Measures, in one run and on one core:

- ``raw``: the crypto floor -- one Ed25519 verification of the agent token's JWS plus one
  Ed25519 verification of the request's RFC 9421 signature base (``cryptography``);
- ``verify cold``: what a resource server does per request, ``ResourceVerifier.verify_with_keys``:
  JWT parse/verify (pyjwt)/claims, ``Signature-Key`` parse, RFC 9421 base (joined directly by
  ``domain/signaturebase.py``, the library's byte for byte), digest, replay cache, audience and
  capability check.  Every request carries a distinct
  token bound to a distinct agent key, so neither the verified-token cache nor the per-key
  caches help: this is the figure the target is about;
- ``verify warm``: the same, but every request presents the same (already verified) token,
  as one agent does between token refreshes: the verified-token cache skips the token's
  signature and claim checks (the request signature, digest and replay checks still run);
- ``verify same token, cache off``: the warm requests through a verifier without the token
  cache -- every check in full, one token for all requests (the earlier version of this
  bench measured exactly this);
- ``sign``: ``signatures.sign_request`` for the same request (what the SDK adds per request);
- ``stripped``: a lower bound for a verifier that builds the base with the library
  (``http-message-signatures``): parse the token and the signature fields, build the base with
  the library, run the two Ed25519 verifications -- and nothing else (no claim, window,
  coverage, digest or replay checks), on the cold requests;
- ``stripped, base joined by hand``: the same with the base joined by an f-string from the
  received fields: the lower bound for agentauth's verifier, which joins the base itself.

Targets (issues 10 and 16): verify cold <= 1.5 x raw and verify warm <= 1.1 x raw, in the same
run.  Run: ``.venv/bin/python bench/signatures_bench.py``.
"""

from __future__ import annotations

import argparse
import base64
import gc
import json
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import http_message_signatures as hms
from cryptography.hazmat.primitives.asymmetric import ed25519
from http_sf.compat import InnerList

from agentauth.domain import jose, keys, signatures, tokens
from agentauth.verify import JwksCache, ResourceVerifier

ISSUER = "https://agentauth.bench"
AUDIENCE = "https://docs.example.bench"
URL = "https://docs.example.bench/v1/documents/42?view=full"
BODY = b'{"title": "quarterly report", "owner": "finance"}'


def _interleaved(
    rounds: int, count: int, runs: dict[str, Callable[[int], None]]
) -> dict[str, float]:
    """Best per-operation CPU time (us) of each run over ``rounds`` interleaved loops.

    CPU time of this process (not wall time) and interleaving keep the figures comparable on
    a shared, busy machine: every loop of every run sees the same conditions.
    """
    best = dict.fromkeys(runs, float("inf"))
    for _ in range(rounds):
        for name, run in runs.items():
            gc.collect()
            start = time.process_time()
            run(count)
            best[name] = min(best[name], (time.process_time() - start) / count * 1e6)
    return best


def main() -> None:
    parser = argparse.ArgumentParser()
    # Many short interleaved loops: the best loop of each run is taken, so a burst of
    # noise from a neighbour on a shared host spoils a few loops rather than the figure.
    parser.add_argument("--count", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=40)
    args = parser.parse_args()
    count, rounds = args.count, args.rounds

    now = datetime.now(tz=UTC)
    keyset = keys.generate_keyset(now=now)
    public_keys = keyset.public_keys()

    def bound_token(agent_key: ed25519.Ed25519PrivateKey) -> str:
        return tokens.issue(
            keyset=keyset,
            issuer=ISSUER,
            subject="aauth:reporter.team-a@cluster.local",
            agent=tokens.AgentRef(name="reporter", namespace="team-a", uid="u1"),
            audience=AUDIENCE,
            scope=["document.read", "document.write"],
            lifetime=timedelta(minutes=5),
            now=now,
            client_id="aauth:reporter.team-a@cluster.local",
            cnf_jwk=signatures.public_jwk(agent_key),
            extra_claims={"tool_server": {"namespace": "team-a", "name": "docs", "uid": "ts-1"}},
        ).token

    base_headers = {"Content-Type": "application/json"}

    def sign_with(agent_key: ed25519.Ed25519PrivateKey, signature_key: str) -> dict[str, str]:
        return signatures.sign_request(
            method="POST",
            url=URL,
            headers=base_headers,
            body=BODY,
            private_key=agent_key,
            signature_key_header=signature_key,
        )

    # Distinct requests (each signature is accepted once by the replay cache).
    total = count * rounds + 10
    agent_key = ed25519.Ed25519PrivateKey.generate()
    token = bound_token(agent_key)
    signature_key = signatures.signature_key_jwt(token)
    warm_requests = [{**base_headers, **sign_with(agent_key, signature_key)} for _ in range(total)]
    cold_requests = []
    for _ in range(total):
        key = ed25519.Ed25519PrivateKey.generate()
        cold_requests.append(
            {**base_headers, **sign_with(key, signatures.signature_key_jwt(bound_token(key)))}
        )
    verifier = ResourceVerifier(
        issuer=ISSUER,
        audience=AUDIENCE,
        tool_server="team-a/docs",
        jwks=JwksCache(jwks=keyset.public_jwks()),
    )
    principal = verifier.verify_with_keys(
        method="POST",
        url=URL,
        headers=warm_requests[-1],
        body=BODY,
        keys=public_keys,
        required=["document.write"],
    )
    assert principal.bound and principal.jkt == signatures.jwk_thumbprint(
        signatures.public_jwk(agent_key)
    )

    # The crypto floor: the same two Ed25519 verifications, nothing else.
    parsed = jose.parse(token)
    issuer_key = public_keys.get(str(parsed.header["kid"]))
    assert isinstance(issuer_key, ed25519.Ed25519PublicKey)
    agent_public = agent_key.public_key()
    sample = warm_requests[-2]
    request_signature = base64.b64decode(sample["Signature"].split(":")[1])
    base_lines = [
        '"@method": POST',
        '"@authority": docs.example.bench',
        '"@path": /v1/documents/42',
        f'"signature-key": {signature_key}',
        f'"content-digest": {sample["Content-Digest"]}',
        '"@signature-params": '
        + sample["Signature-Input"].removeprefix(f"{signatures.SIGNATURE_LABEL}="),
    ]
    signature_base = "\n".join(base_lines).encode()
    agent_public.verify(request_signature, signature_base)  # the floor verifies the real base

    def raw(n: int) -> None:
        for _ in range(n):
            issuer_key.verify(parsed.signature, parsed.signing_input)
            agent_public.verify(request_signature, signature_base)

    uncached = ResourceVerifier(
        issuer=ISSUER,
        audience=AUDIENCE,
        tool_server="team-a/docs",
        jwks=JwksCache(jwks=keyset.public_jwks()),
        token_cache_size=0,
    )

    def verifying(
        requests: list[dict[str, str]], *, using: ResourceVerifier = verifier
    ) -> Callable[[int], None]:
        cursor = iter(requests)

        def run(n: int) -> None:
            for _ in range(n):
                using.verify_with_keys(
                    method="POST",
                    url=URL,
                    headers=next(cursor),
                    body=BODY,
                    keys=public_keys,
                    required=["document.write"],
                )

        return run

    class _AgentKey(hms.HTTPSignatureKeyResolver):
        def resolve_public_key(self, key_id: str) -> ed25519.Ed25519PublicKey:
            return agent_public

    library = hms.HTTPMessageVerifier(
        signature_algorithm=hms.algorithms.ED25519, key_resolver=_AgentKey()
    )
    library.max_clock_skew = timedelta(days=1)
    message = signatures._Request(  # the same adapter verify_request uses
        method="POST", url=URL, headers=signatures._FieldLines(list(sample.items()))
    )

    def library_only(n: int) -> None:
        for _ in range(n):
            library.verify(message, max_age=None)

    # The part of our verification the issue mandates from the library: its signature-base
    # builder, on the same sample (no parsing, no crypto).
    builder = hms.HTTPMessageVerifier(signature_algorithm=hms.algorithms.ED25519, key_resolver=None)
    sample_input = builder._parse_signature_dictionary(sample["Signature-Input"])[
        signatures.SIGNATURE_LABEL
    ]
    assert isinstance(sample_input, InnerList)
    covered_ids = list(sample_input)
    signed_params = dict(sample_input.params)
    covered_message = signatures._Request(
        method="POST",
        url=URL,
        headers=signatures._FieldLines(
            [(k, v) for k, v in sample.items() if k in ("Signature-Key", "Content-Digest")]
        ),
    )
    built = builder._build_signature_base(
        covered_message, covered_component_ids=covered_ids, signature_params=signed_params
    )
    assert built[0].encode() == signature_base

    def base_only(n: int) -> None:
        for _ in range(n):
            builder._build_signature_base(
                covered_message, covered_component_ids=covered_ids, signature_params=signed_params
            )

    def token_only(n: int) -> None:
        for _ in range(n):
            tokens.verify(token, public_keys=public_keys, issuer=ISSUER, now=now)

    def sign(n: int) -> None:
        for _ in range(n):
            sign_with(agent_key, signature_key)

    # The two stripped pipelines (see the module docstring) over the cold requests.
    authority, path = "docs.example.bench", "/v1/documents/42"
    covered_names = ("Signature-Key", "Content-Digest")

    def stripped_parts(headers: dict[str, str]) -> tuple[bytes, ed25519.Ed25519PublicKey]:
        token_text = headers["Signature-Key"].split('"')[1]
        header_b64, payload_b64, signature_b64 = token_text.split(".")
        payload = json.loads(jose.b64url_decode(payload_b64))
        issuer = public_keys.get(json.loads(jose.b64url_decode(header_b64))["kid"])
        assert isinstance(issuer, ed25519.Ed25519PublicKey)
        issuer.verify(jose.b64url_decode(signature_b64), f"{header_b64}.{payload_b64}".encode())
        agent = ed25519.Ed25519PublicKey.from_public_bytes(
            jose.b64url_decode(payload["cnf"]["jwk"]["x"])
        )
        _, _, value = headers["Signature"].partition("=")
        return base64.b64decode(value.strip(":")), agent

    def stripped_library(headers: dict[str, str]) -> None:
        signature, agent = stripped_parts(headers)
        # agentauth's own fast reading of Signature-Input (the library's parser costs more).
        parsed_input = signatures._fast_signature_input(
            headers["Signature-Input"], headers["Signature"]
        )
        assert parsed_input is not None
        lines = [(name, headers[name]) for name in covered_names]
        base, _, _ = builder._build_signature_base(
            signatures._Request(method="POST", url=URL, headers=signatures._FieldLines(lines)),
            covered_component_ids=list(parsed_input.components),
            signature_params=parsed_input.params,
        )
        agent.verify(signature, base.encode())

    def stripped_by_hand(headers: dict[str, str]) -> None:
        signature, agent = stripped_parts(headers)
        base = (
            f'"@method": POST\n"@authority": {authority}\n"@path": {path}\n'
            f'"signature-key": {headers["Signature-Key"]}\n'
            f'"content-digest": {headers["Content-Digest"]}\n'
            f'"@signature-params": {headers["Signature-Input"].removeprefix("sig=")}'
        )
        agent.verify(signature, base.encode())

    stripped_by_hand(cold_requests[0])
    stripped_library(cold_requests[0])

    def over_cold(check: Callable[[dict[str, str]], None]) -> Callable[[int], None]:
        cursor = iter(cold_requests * 2)

        def run(n: int) -> None:
            for _ in range(n):
                check(next(cursor))

        return run

    gc.collect()
    gc.freeze()  # the prepared requests are inputs, not garbage the runs should sweep
    best = _interleaved(
        rounds,
        count,
        {
            "raw": raw,
            "cold": verifying(cold_requests),
            "warm": verifying(warm_requests),
            "same": verifying(list(warm_requests), using=uncached),
            "sign": sign,
            "library": library_only,
            "base": base_only,
            "token": token_only,
            "stripped": over_cold(stripped_library),
            "by_hand": over_cold(stripped_by_hand),
        },
    )
    raw_us, cold_us, warm_us, sign_us = best["raw"], best["cold"], best["warm"], best["sign"]
    cold, warm = cold_us / raw_us, warm_us / raw_us
    print(f"requests per loop: {count}, loops: {rounds} (best CPU-time loop reported)")
    print(f"raw floor (2 x Ed25519 verify):          {raw_us:8.1f} us/request")
    print(
        f"verify cold (distinct token + key):      {cold_us:8.1f} us/request  -> {cold:.2f}x floor"
    )
    print(
        f"verify warm (same token, cache hit):     {warm_us:8.1f} us/request  -> {warm:.2f}x floor"
    )
    same_us = best["same"]
    print(
        f"verify same token, cache off:            {same_us:8.1f} us/request"
        f"  -> {same_us / raw_us:.2f}x floor (the workload the first version of this bench ran)"
    )
    print(f"sign request (9421, jwt key):            {sign_us:8.1f} us/request")
    print(f"target verify cold <= 1.5x floor: {'MET' if cold <= 1.5 else 'MISSED'}")
    print(f"target verify warm <= 1.1x floor: {'MET' if warm <= 1.1 else 'MISSED'}")
    print("where the time goes (same run):")
    print(f"  http-message-signatures verify() alone (1 Ed25519 inside): {best['library']:8.1f} us")
    print(f"  its _build_signature_base alone (no parsing, no crypto):    {best['base']:8.1f} us")
    print(f"  agent-token verification alone (1 Ed25519 inside):         {best['token']:8.1f} us")
    stripped, by_hand = best["stripped"] / raw_us, best["by_hand"] / raw_us
    print("lower bounds on the cold requests (parse + 2 Ed25519 verifications, no checks at all):")
    print(
        f"  base built by http-message-signatures (reference):               "
        f"{best['stripped']:8.1f} us -> {stripped:.2f}x floor"
    )
    print(
        f"  base joined by hand (what agentauth's verifier does):            "
        f"{best['by_hand']:8.1f} us -> {by_hand:.2f}x floor"
    )
    figures = {
        "raw_floor_us": round(raw_us, 1),
        "verify_cold_us": round(cold_us, 1),
        "verify_cold_ratio": round(cold, 2),
        "verify_warm_us": round(warm_us, 1),
        "verify_warm_ratio": round(warm, 2),
        "sign_us": round(sign_us, 1),
        "stripped_library_base_ratio": round(stripped, 2),
        "stripped_hand_joined_base_ratio": round(by_hand, 2),
        "target_cold_ratio": 1.5,
        "target_warm_ratio": 1.1,
    }
    print(json.dumps(figures))  # bench/run.py reads the last stdout line


if __name__ == "__main__":
    main()
