"""agentauth: Kubernetes-native identity for AI agents."""

__version__ = "0.1.0"
