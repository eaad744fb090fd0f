# One image for both components: `agentauth controller` and `agentauth token-service`
# (the chart sets the command). Non-root, no build tools or caches in the final stage.
#
#   docker build -t ghcr.io/agentauth/agentauth:0.1.0 .

FROM python:3.11-slim AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY operator ./operator
# The `operator` extra: the controller's and token service's server dependencies (the base
# distribution, agentauth-k8s, is only the agent SDK); aws/gcp for workload-identity federation.
RUN python -m venv /opt/agentauth \
 && /opt/agentauth/bin/pip install --upgrade pip \
 && /opt/agentauth/bin/pip install ".[operator,aws,gcp]"

FROM python:3.11-slim
LABEL org.opencontainers.image.title="agentauth" \
      org.opencontainers.image.description="Kubernetes-native identity for AI agents" \
      org.opencontainers.image.licenses="Apache-2.0"
ENV PATH=/opt/agentauth/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
COPY --from=build /opt/agentauth /opt/agentauth
# The chart runs with readOnlyRootFilesystem and an emptyDir at /tmp; uid/gid 65532 matches its
# securityContext (runAsNonRoot needs a numeric USER).
RUN groupadd --system --gid 65532 agentauth \
 && useradd --system --uid 65532 --gid 65532 --no-create-home --shell /usr/sbin/nologin agentauth
USER 65532:65532
WORKDIR /tmp
EXPOSE 8080 9443
ENTRYPOINT ["agentauth"]
CMD ["--help"]
