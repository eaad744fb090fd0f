"""The controller's admission webhook server closes connections of slow clients (slowloris):
a request head trickled a byte at a time is cut at the header deadline, a body trickled after
its head is answered 408 and cut at the body deadline."""

from __future__ import annotations

import pytest

from agentauth.controller import webhooks
from tests import slowclients
from tests.e2e.conftest import Stack

pytestmark = pytest.mark.slow


def test_a_head_sent_a_byte_at_a_time_is_cut_at_the_deadline(dev_stack: Stack) -> None:
    head = b"POST /mutate/pods HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: " + b"a" * 400 + b"\r\n"
    outcome = slowclients.trickle(dev_stack.stack.webhook_port, head=head, interval=0.05)
    assert outcome.closed_after is not None, "the webhook server never closed the connection"
    deadline = webhooks.HEADER_TIMEOUT_SECONDS
    assert deadline * 0.9 <= outcome.closed_after < deadline + 5
    assert not outcome.sent_everything
    assert outcome.answer == b""


def test_a_body_sent_a_byte_at_a_time_is_answered_408_and_cut(dev_stack: Stack) -> None:
    body = b'{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{}}' * 4
    head = (
        b"POST /mutate/pods HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n"
    )
    outcome = slowclients.trickle(
        dev_stack.stack.webhook_port, prefix=head, head=b"", body=body, interval=0.05
    )
    assert outcome.closed_after is not None
    assert outcome.closed_after < webhooks.BODY_TIMEOUT_SECONDS + 5
    assert not outcome.sent_everything
    assert outcome.answer.startswith(b"HTTP/1.1 408 Request Timeout\r\n")
    assert outcome.answer.endswith(b"the AdmissionReview did not arrive in time")
