"""The one clock-skew allowance every verifier in agentauth uses.

Guarantee: a credential is accepted at most ``LEEWAY_SECONDS`` after its ``exp`` and at most
``LEEWAY_SECONDS`` before its ``nbf``/``iat`` (or an RFC 9421 ``created``, an AWS
``X-Amz-Date``), whoever issued it: Kubernetes service-account tokens, user tokens, our own agent
tokens (as bearer, subject or actor token, at introspection), RFC 7523 client assertions, request
signatures, AWS signed requests and GCP ID tokens. Nothing passes a larger leeway; a verifier
that must be stricter passes a smaller one.

Five seconds covers NTP-synchronised hosts (cluster nodes, cloud metadata servers, identity
providers) while keeping an expired token from being honoured for more than a few seconds.
"""

from __future__ import annotations

from typing import Final

LEEWAY_SECONDS: Final = 5
"""Seconds of clock skew tolerated on ``exp``, ``nbf``, ``iat`` and similar timestamps."""
