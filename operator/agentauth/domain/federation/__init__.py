"""Cloud workload federation verifiers (pure): AWS signed ``GetCallerIdentity`` requests and
Google-signed ID tokens, and the rule that maps a verified identity to exactly one Agent.

- ``aws``: strict validation of the signed-request subject token before it is forwarded to STS,
  the replay cache, and parsing/mapping of STS's answer.
- ``gcp``: the claim checks google-auth leaves to its caller.
- ``matching``: ``FederatedIdentity`` and ``match_agent``.

No I/O happens here; ``agentauth.tokenservice.federation`` forwards to STS and fetches Google's
certificates.
"""
