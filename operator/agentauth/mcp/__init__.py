"""MCP authorization with agentauth (needs the ``mcp`` extra: ``pip install agentauth-k8s[mcp]``).

Server side: :func:`agentauth.mcp.server.protect`; client side:
:func:`agentauth.mcp.client.connect`.  ``agentauth.mcp.metadata`` has no ``mcp`` dependency.
See docs/mcp.md.
"""
