"""The agentauth token service: RFC 8693 exchange, discovery, introspection and the Ask API.

Stateless HTTP service (aiohttp); every piece of state lives in the Kubernetes API and is read
through list+watch caches. ``app.build_app`` builds the application, ``app.serve`` runs it.
"""
