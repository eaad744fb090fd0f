"""Pure domain logic: models, capabilities, tokens, federation verifiers, approvals, signatures.

Nothing in this package performs I/O or imports kopf, aiohttp, httpx or the Kubernetes client;
the import-linter contracts in ``pyproject.toml`` enforce it.
"""
