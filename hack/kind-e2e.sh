#!/usr/bin/env bash
# End-to-end on a real cluster: create a kind cluster, build and load the image, install the chart,
# run the real-cluster suite (tests/kind) against it. Skips (exit 0, with the reason) where Docker
# or kind is absent, as on the project's CI machines.
set -euo pipefail
cd "$(dirname "$0")/.."

CLUSTER=${KIND_CLUSTER:-agentauth-e2e}
REPOSITORY=${IMAGE_REPOSITORY:-agentauth}
TAG=${IMAGE_TAG:-e2e}
ISSUER=${AGENTAUTH_E2E_ISSUER:-https://agentauth.e2e.test}
BIN=.venv/bin

if ! command -v docker >/dev/null 2>&1 || ! docker info >/dev/null 2>&1; then
  echo "kind-e2e skipped: no running Docker engine on this machine (kind needs one)."
  echo "The same flows run against the embedded control plane in 'make test'."
  exit 0
fi
if ! command -v kind >/dev/null 2>&1; then
  echo "kind-e2e skipped: 'kind' is not installed (https://kind.sigs.k8s.io/docs/user/quick-start/)."
  exit 0
fi

kind get clusters | grep -qx "$CLUSTER" || kind create cluster --name "$CLUSTER" --wait 120s
trap 'kind delete cluster --name "$CLUSTER"' EXIT
docker build -t "$REPOSITORY:$TAG" .
kind load docker-image "$REPOSITORY:$TAG" --name "$CLUSTER"
KUBECONFIG_FILE=$(mktemp)
kind get kubeconfig --name "$CLUSTER" > "$KUBECONFIG_FILE"
"$BIN/python" hack/kind_install.py "$KUBECONFIG_FILE" "$REPOSITORY" "$TAG" "$ISSUER"
AGENTAUTH_E2E_KUBECONFIG="$KUBECONFIG_FILE" AGENTAUTH_E2E_ISSUER="$ISSUER" \
  "$BIN/python" -m pytest tests/kind -q -p no:cacheprovider
