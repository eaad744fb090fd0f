"""Approver notifications, end to end: a real HTTP receiver on loopback, the real controller.

Real here: the controller (with its AccessRequest webhooks) and the token service on the session
dev cluster (:mod:`tests.e2e.jitkit`), the agent filing over HTTP with its pod's token, alice
approving with real ``kubectl agentauth``, and a ``ThreadingHTTPServer`` on 127.0.0.1 that
records every POST and answers with the status the test scripts. Nothing of ours is patched: the
controller is configured through its settings as the chart configures it.
"""

from __future__ import annotations

import dataclasses
import json
import re
import threading
from collections.abc import Iterator
from http import server as http_server
from typing import Any

import pytest
from kubernetes import client

from agentauth.controller import settings as controller_settings
from agentauth.devcluster import server
from tests import stack
from tests.e2e import jitkit

pytestmark = pytest.mark.slow

HOSTILE = "Pay INV-7 now\n<!channel> *approved by admin* <https://evil.example|click here>"


class Receiver:
    """A loopback webhook: records (path, body) and answers with the next scripted status."""

    def __init__(self) -> None:
        self.received: list[tuple[str, dict[str, Any], str]] = []
        self.statuses: dict[str, list[int]] = {}
        self.lock = threading.Lock()
        receiver = self

        class Handler(http_server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers.get("Content-Length", "0"))).decode()
                body = json.loads(raw)
                request = _request_name(body)
                with receiver.lock:
                    receiver.received.append((self.path, body, raw))
                    scripted = receiver.statuses.get(request) or []
                    status = scripted.pop(0) if scripted else 200
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http_server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks/approvers"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def bodies(self, request: str) -> list[dict[str, Any]]:
        with self.lock:
            return [body for _path, body, _raw in self.received if _request_name(body) == request]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _request_name(body: dict[str, Any]) -> str:
    if "request" in body:
        return str(body["request"]["name"])
    found = re.search(r"([a-z0-9-]+/)([a-z0-9.-]+) \(", body.get("text", ""))
    return found.group(2) if found else ""


class NotifyingEnv(jitkit.JitEnv):
    """The JIT stack with the controller's notification settings set, as the chart sets them."""

    def __init__(self, cluster: server.DevCluster, api: client.ApiClient, url: str) -> None:
        super().__init__(cluster, api)
        self.notify_url = url
        self.notify_format = "json"

    def controller_settings(self) -> controller_settings.Settings:
        return dataclasses.replace(
            super().controller_settings(),
            notify_webhook_url=self.notify_url,
            notify_format=self.notify_format,
            notify_attempts=3,
            notify_backoff=0.05,
        )


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    found = Receiver()
    yield found
    found.close()


@pytest.fixture(scope="module")
def env(
    dev_cluster: server.DevCluster, kube_api: client.ApiClient, receiver: Receiver
) -> Iterator[NotifyingEnv]:
    environment = NotifyingEnv(dev_cluster, kube_api, receiver.url)
    environment.start()
    yield environment
    environment.stop()


def _file(agent: jitkit.AgentClient, justification: str = "Pay invoice INV-42") -> str:
    response = agent.file(
        {
            "capabilities": ["payments.authorize"],
            "justification": justification,
            "duration": "10m",
            "context": {"invoice": "INV-42", "amount": "120 EUR"},
        }
    )
    assert response.status_code == 201, response.text
    return str(response.json()["name"])


def _events(env: NotifyingEnv, namespace: str, name: str) -> list[Any]:
    items = client.CoreV1Api(env.api).list_namespaced_event(namespace).items
    return [e for e in items if e.involved_object.name == name]


def _plugin(env: NotifyingEnv, *args: str, user: str) -> None:
    stack.run_kubectl(
        "agentauth",
        *args,
        kubeconfig=env.cluster.kubeconfig_path,
        context=user,
        env=stack.plugin_environment(env.cluster.kubeconfig_path),
    )


def test_approvers_hear_of_the_request_and_of_the_decision(
    env: NotifyingEnv, receiver: Receiver, namespace: str
) -> None:
    setup = jitkit.setup_agent(env.api, namespace)
    agent = jitkit.AgentClient(env, setup)
    agent.wait_ready()
    name = _file(agent, HOSTILE)

    pending = jitkit.wait_for(
        lambda: next(
            (b for b in receiver.bodies(name) if b["type"] == "accessrequest.pending"), None
        ),
        timeout=30,
        message="pending notification",
    )
    request = client.CustomObjectsApi(env.api).get_namespaced_custom_object(
        jitkit.GROUP, jitkit.VERSION, namespace, "accessrequests", name
    )
    agent_id = f"aauth:buyer.{namespace}@example.test"  # JitEnv's trust domain
    assert pending["request"] == {
        "name": name,
        "namespace": namespace,
        "uid": request["metadata"]["uid"],
    }
    assert pending["agent"] == {"name": "buyer", "namespace": namespace, "id": agent_id}
    assert pending["capabilities"] == ["payments.authorize"]
    assert pending["duration"] == "10m"
    # Untrusted text: one line, as written otherwise; flagged as untrusted.
    assert pending["justification"] == " ".join(HOSTILE.split())
    assert "justification" in pending["untrusted"]
    assert pending["context"] == {"amount": "120 EUR", "invoice": "INV-42"}
    assert pending["expiresAt"] == request["status"]["expiresAt"]
    assert pending["commands"] == {
        "approve": f"kubectl agentauth approve {name} -n {namespace}",
        "deny": f'kubectl agentauth deny {name} -n {namespace} --reason "..."',
    }

    _plugin(env, "approve", name, "-n", namespace, "--comment", "checked", user="alice")
    approved = jitkit.wait_for(
        lambda: next(
            (b for b in receiver.bodies(name) if b["type"] == "accessrequest.approved"), None
        ),
        timeout=30,
        message="approved notification",
    )
    assert approved["decision"] == {"outcome": "Approved", "by": ["alice"], "comments": ["checked"]}
    assert approved["grantedUntil"]
    assert approved["commands"] == {}
    # Never a token: no JWT, no bearer credential, in anything sent.
    with receiver.lock:
        raw = [text for _path, body, text in receiver.received if _request_name(body) == name]
    assert not any(re.search(r"eyJ[\w-]+\.[\w-]+\.", text) for text in raw)
    assert not any("Bearer" in text for text in raw)
    # Each delivery is recorded once, as an Event on the request.
    notified = jitkit.wait_for(
        lambda: (lambda found: found if len(found) == 2 else None)(
            [e for e in _events(env, namespace, name) if e.reason == "ApproversNotified"]
        ),
        timeout=30,
        message="ApproversNotified events",
    )
    assert sorted(e.message for e in notified) == [
        "approvers notified (approved) through the json webhook",
        "approvers notified (pending) through the json webhook",
    ]
    assert [b["type"] for b in receiver.bodies(name)] == [
        "accessrequest.pending",
        "accessrequest.approved",
    ]


def test_a_failing_webhook_is_retried_then_recorded_as_a_warning(
    env: NotifyingEnv, receiver: Receiver, namespace: str
) -> None:
    setup = jitkit.setup_agent(env.api, namespace, agent="flaky")
    agent = jitkit.AgentClient(env, setup)
    agent.wait_ready()
    name = _file(agent)
    delivered = jitkit.wait_for(
        lambda: next(
            (e for e in _events(env, namespace, name) if e.reason == "ApproversNotified"), None
        ),
        timeout=30,
        message="first delivery",
    )
    assert delivered.type == "Normal"
    # The decision's delivery meets 500 at every attempt (3): it is recorded as failed.
    with receiver.lock:
        receiver.statuses[name] = [500, 500, 500]
    _plugin(env, "deny", name, "-n", namespace, "--reason", "not this month", user="alice")
    warning = jitkit.wait_for(
        lambda: next(
            (e for e in _events(env, namespace, name) if e.reason == "NotificationFailed"), None
        ),
        timeout=30,
        message="NotificationFailed event",
    )
    assert warning.type == "Warning"
    assert warning.message == "could not notify approvers (denied): HTTP 500 after 3 attempt(s)"
    assert receiver.url not in warning.message
    denied = [b for b in receiver.bodies(name) if b["type"] == "accessrequest.denied"]
    assert len(denied) == 3
    assert denied[0]["decision"] == {
        "outcome": "Denied",
        "by": ["alice"],
        "reason": "not this month",
    }


def test_a_4xx_is_not_retried_and_a_recovering_webhook_gets_it(
    env: NotifyingEnv, receiver: Receiver, namespace: str
) -> None:
    setup = jitkit.setup_agent(env.api, namespace, agent="twice")
    agent = jitkit.AgentClient(env, setup)
    agent.wait_ready()
    first = _file(agent)
    jitkit.wait_for(lambda: receiver.bodies(first), timeout=30, message="first request notified")
    second = _file(agent, "second invoice")
    jitkit.wait_for(lambda: receiver.bodies(second), timeout=30, message="second notified")
    with receiver.lock:
        receiver.statuses[first] = [400]
        receiver.statuses[second] = [503, 200]
    _plugin(env, "approve", first, "-n", namespace, user="alice")
    _plugin(env, "approve", second, "-n", namespace, user="alice")
    warning = jitkit.wait_for(
        lambda: next(
            (e for e in _events(env, namespace, first) if e.reason == "NotificationFailed"), None
        ),
        timeout=30,
        message="4xx recorded",
    )
    assert warning.message == "could not notify approvers (approved): HTTP 400 after 1 attempt(s)"
    jitkit.wait_for(
        lambda: (
            len([e for e in _events(env, namespace, second) if e.reason == "ApproversNotified"])
            == 2
        ),
        timeout=30,
        message="second delivered after a retry",
    )
    assert [b["type"] for b in receiver.bodies(second)] == [
        "accessrequest.pending",
        "accessrequest.approved",
        "accessrequest.approved",
    ]


def test_slack_payload_and_no_repeat_after_a_restart(
    env: NotifyingEnv, receiver: Receiver, namespace: str
) -> None:
    env.notify_format = "slack"
    env.restart_controller()
    try:
        setup = jitkit.setup_agent(env.api, namespace, agent="slacker")
        agent = jitkit.AgentClient(env, setup)
        agent.wait_ready()
        name = _file(agent, HOSTILE)
        message = jitkit.wait_for(
            lambda: next(iter(receiver.bodies(name)), None), timeout=30, message="slack message"
        )
        assert message["text"] == (
            f"Access request needs a decision: {namespace}/{name} (slacker wants "
            "payments.authorize)"
        )
        parsed = [
            block["text"]["text"]
            for block in message["blocks"]
            if block.get("text", {}).get("type") == "mrkdwn"
        ] + [
            field["text"]
            for block in message["blocks"]
            for field in block.get("fields", [])
            if field["type"] == "mrkdwn"
        ]
        # The agent's text never reaches a block Slack parses (no mention, no link).
        assert not any("<!channel>" in text or "evil.example" in text for text in parsed)
        plain = [
            block["text"]["text"]
            for block in message["blocks"]
            if block.get("text", {}).get("type") == "plain_text"
        ]
        assert f"Justification (written by the agent, unverified): {' '.join(HOSTILE.split())}" in (
            plain
        )
        assert f"Approve: `kubectl agentauth approve {name} -n {namespace}`" in parsed[0]

        # A restarted controller finds the delivery recorded and does not send it again.
        jitkit.wait_for(
            lambda: any(e.reason == "ApproversNotified" for e in _events(env, namespace, name)),
            timeout=30,
            message="delivery recorded",
        )
        env.restart_controller()
        controller = env.controller
        assert controller is not None and controller.controller is not None
        reconciled = controller.controller.reconciled
        jitkit.wait_for(
            lambda: reconciled["accessrequest"] >= 1, timeout=30, message="requests reconciled"
        )
        other = _file(agent, "after the restart")
        jitkit.wait_for(lambda: receiver.bodies(other), timeout=30, message="new request sent")
        assert len(receiver.bodies(name)) == 1
    finally:
        env.notify_format = "json"
        env.restart_controller()
