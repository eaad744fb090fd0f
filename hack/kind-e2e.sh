#!/usr/bin/env bash
# End-to-end on a real cluster: create a kind cluster, build and load the image, install the chart,
# run the end-to-end suite against it. Skips (exit 0, with the reason) where Docker is absent.
set -euo pipefail
cd "$(dirname "$0")/.."

CLUSTER=${KIND_CLUSTER:-agentauth-e2e}
IMAGE=${IMAGE:-agentauth:e2e}
BIN=.venv/bin

if ! command -v docker >/dev/null 2>&1 || ! docker info >/dev/null 2>&1; then
  echo "kind-e2e skipped: no running Docker engine on this machine (kind needs one)."
  echo "The same suite runs against the embedded control plane in 'make test'."
  exit 0
fi
if ! command -v kind >/dev/null 2>&1; then
  echo "kind-e2e skipped: 'kind' is not installed (https://kind.sigs.k8s.io/docs/user/quick-start/)."
  exit 0
fi

kind get clusters | grep -qx "$CLUSTER" || kind create cluster --name "$CLUSTER" --wait 120s
trap 'kind delete cluster --name "$CLUSTER"' EXIT
docker build -t "$IMAGE" .
kind load docker-image "$IMAGE" --name "$CLUSTER"
KUBECONFIG_FILE=$(mktemp)
kind get kubeconfig --name "$CLUSTER" > "$KUBECONFIG_FILE"
"$BIN/helm" upgrade --install agentauth charts/agentauth \
  --kubeconfig "$KUBECONFIG_FILE" --namespace agentauth-system --create-namespace \
  --set image.repository="${IMAGE%%:*}" --set image.tag="${IMAGE##*:}" --set image.pullPolicy=Never \
  --wait --timeout 180s
AGENTAUTH_E2E_KUBECONFIG="$KUBECONFIG_FILE" "$BIN/python" -m pytest tests/e2e -q
