"""The agentauth controller: Kopf handlers that turn Agent and CapabilityGrant manifests into
agent identities, own the issuer keys and serve the pod admission webhooks.

Handlers are thin (parse, call ``agentauth.domain``, patch or respond); see ``main.run``.
"""
