"""The agentauth agent SDK: identity, tokens, signing, Ask API and just-in-time access.

Stable public API (framework adapters build on it)::

    from agentauth.sdk import AgentClient, AgentAuth, JustInTime, aiohttp_middleware, errors

    client = AgentClient.from_environment()          # inside a pod labelled as an agent
    token = client.token(audience="https://docs.example")
    http = httpx.Client(auth=AgentAuth(client, audience="https://docs.example"))

No kopf or Kubernetes client import happens here; see docs/sdk.md.
"""

from agentauth.sdk import errors
from agentauth.sdk.auth import (
    AgentAuth,
    Challenge,
    JustInTime,
    aiohttp_middleware,
    parse_bearer_challenge,
)
from agentauth.sdk.client import (
    AccessRequestState,
    AgentClient,
    AgentToken,
    AskAnswer,
    ServiceAccountTokenFile,
    SubjectToken,
    SubjectTokenSource,
)
from agentauth.sdk.keys import KeyPair, generate_key_pair, load_private_key

__all__ = [
    "AccessRequestState",
    "AgentAuth",
    "AgentClient",
    "AgentToken",
    "AskAnswer",
    "Challenge",
    "JustInTime",
    "KeyPair",
    "ServiceAccountTokenFile",
    "SubjectToken",
    "SubjectTokenSource",
    "aiohttp_middleware",
    "errors",
    "generate_key_pair",
    "load_private_key",
    "parse_bearer_challenge",
]
