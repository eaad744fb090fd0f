"""The demo agent: what code inside a pod labelled ``agentauth.dev/agent`` does with the SDK.

Run by ``demo/run.py`` through ``agentauth dev run-as-pod``, so it sees exactly what a container
sees: ``AGENTAUTH_TOKEN_FILE`` (its projected, kubelet-rotated service-account token),
``AGENTAUTH_ISSUER``, ``AGENTAUTH_TOKEN_URL`` and ``AGENTAUTH_CA_FILE`` (the dev CA). The demo
adds ``DEMO_RESOURCE_URL``/``DEMO_RESOURCE_AUDIENCE`` (the finance tool server the runner
started) and ``DEMO_USER_TOKEN`` (a user's token from the demo identity provider).

Each step prints one line; the line announcing the AccessRequest is what the runner waits for
before it approves as ``alice``. Exits non-zero at the first step that does not go as shown.
"""

from __future__ import annotations

import base64
import json
import os
import sys
import threading
import time
from typing import Any

import httpx

from agentauth.sdk import AgentAuth, AgentClient
from agentauth.sdk import errors as sdk_errors

APPROVAL_TIMEOUT_SECONDS = 45.0


def say(message: str) -> None:
    print(message, flush=True)


def claims_of(token: str) -> dict[str, Any]:
    """The JWT's claims, decoded for display only (the servers verify them)."""
    payload = token.split(".")[1]
    decoded: dict[str, Any] = json.loads(
        base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))
    )
    return decoded


def fail(message: str) -> None:
    print(f"FAILED: {message}", flush=True)
    sys.exit(1)


def main() -> int:
    resource_url = os.environ["DEMO_RESOURCE_URL"]
    audience = os.environ["DEMO_RESOURCE_AUDIENCE"]
    user_token = os.environ["DEMO_USER_TOKEN"]
    client = AgentClient.from_environment()

    # 1. Exchange the projected service-account token (RFC 8693) for an agent token.
    info = client.token_info()
    claims = claims_of(info.access_token)
    say(
        f"exchanged the projected token for an agent token: sub={claims['sub']} "
        f'scope="{claims["scope"]}" expires in {int(info.expires_at - info.issued_at)}s'
    )
    shown: dict[str, Any] = {
        k: claims[k] for k in ("iss", "sub", "aud", "scope", "agent", "pod") if k in claims
    }
    shown["cnf.jkt"] = claims.get("cnf", {}).get("jkt")
    say(f"  claims: {json.dumps(shown)}")

    # 2. The Ask API, in plain language.
    answer = client.ask("Can I read the quarterly budget report?")
    say(
        f'asked "Can I read the quarterly budget report?" -> allowed={answer.allowed} '
        f"capability={answer.capability} confidence={answer.confidence:.2f}"
    )
    if not answer.allowed:
        fail(f"expected the Ask API to allow document.read: {answer.reason}")

    http = httpx.Client(auth=AgentAuth(client, audience=audience), timeout=30)

    # 3. An allowed action: the finance tool server verifies the token and the signature.
    read = http.get(f"{resource_url}/documents/q3-budget")
    if read.status_code != 200:
        fail(f"reading a document: HTTP {read.status_code} {read.text}")
    say(f"read document q3-budget from the tool server (HTTP 200): {read.json()['title']}")

    # 4. A sensitive one, without approval: refused, naming the missing capability.
    pay = http.post(f"{resource_url}/payments", json={"invoice": "INV-2291", "amount": "1250.00"})
    challenge = pay.headers.get("WWW-Authenticate", "")
    if pay.status_code != 403 or "payments.authorize" not in challenge:
        fail(f"expected 403 insufficient_scope for payments.authorize, got {pay.status_code}")
    say(f"tried payments.authorize -> HTTP 403 {pay.json()['error']}: approval required")

    # 5. Just-in-time access: file an AccessRequest and wait for a person.
    filed = client.request_access(
        ["payments.authorize"],
        justification="Pay invoice INV-2291 from Acme Corp (USD 1,250), ticket FIN-482",
        duration="15m",
        context={"invoice": "INV-2291", "amount": "1250.00", "currency": "USD"},
    )
    say(f"filed AccessRequest {client.namespace}/{filed.name} for payments.authorize; waiting")
    deadline = time.monotonic() + APPROVAL_TIMEOUT_SECONDS
    state = filed
    while state.phase == "Pending" and time.monotonic() < deadline:
        threading.Event().wait(0.2)  # a demo polling its request, not test synchronisation
        state = client.access_request(filed.name)
    if not state.approved:
        fail(f"AccessRequest {filed.name} ended {state.phase}")
    client.invalidate(all_audiences=True)
    approvals = state.raw.get("approvals") or (state.raw.get("status") or {}).get("approvals") or []
    approvers = ", ".join(str(a.get("user", a)) for a in approvals if isinstance(a, dict))
    say(
        f"AccessRequest {filed.name} is Approved"
        + (f" by {approvers}" if approvers else "")
        + f" until {state.granted_until}"
    )

    # 6. The sensitive action again, with a fresh token that now carries the capability.
    pay = http.post(f"{resource_url}/payments", json={"invoice": "INV-2291", "amount": "1250.00"})
    if pay.status_code != 200:
        fail(f"paying after approval: HTTP {pay.status_code} {pay.text}")
    say(f"authorized payment {pay.json()['payment']} (HTTP 200) with payments.authorize")

    # 7. Chain of agency: act for a user, with the user's scope intersected with ours.
    user = claims_of(user_token)
    try:
        delegated = client.delegate(user_token, scope=["document.read"], audience=audience)
    except sdk_errors.AgentAuthError as exc:
        fail(f"delegation refused: {exc}")
    chain = claims_of(delegated.access_token)
    say(
        f'delegated for {user["sub"]}: sub={chain["sub"]} scope="{chain["scope"]}" '
        f"act={json.dumps(chain.get('act'))}"
    )
    as_user = httpx.Client(timeout=30)
    request = as_user.build_request("GET", f"{resource_url}/documents/q3-budget")
    from agentauth.sdk import auth as sdk_auth

    request.read()
    sdk_auth.sign_http_request(client, request, delegated.access_token)
    read = as_user.send(request)
    if read.status_code != 200:
        fail(f"reading as {user['sub']}: HTTP {read.status_code} {read.text}")
    say(f"read q3-budget on behalf of {read.json()['read_for']} acting as {read.json()['actor']}")
    client.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
