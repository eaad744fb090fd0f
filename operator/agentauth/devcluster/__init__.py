"""The embedded Kubernetes control plane behind ``agentauth dev`` and the integration tests.

For development and tests only, never for production: a real cluster (kind, or any conformant
one) is the production target.
"""
