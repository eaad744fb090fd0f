"""Install the Helm chart into a real cluster with real Helm rendering and real kubectl.

``helm-python-sdk`` embeds Helm's Go engine but ships no ``helm`` binary, so this renders the
chart exactly as ``helm template`` would and applies the result with ``kubectl apply
--server-side``: the CRDs first (Helm's ``crds/`` directory), then everything else.

Usage: python hack/kind_install.py KUBECONFIG IMAGE_REPOSITORY IMAGE_TAG ISSUER_URL
"""

from __future__ import annotations

import pathlib
import subprocess
import sys

import helm_python as helm
import yaml

ROOT = pathlib.Path(__file__).resolve().parents[1]
CHART = ROOT / "charts" / "agentauth"
NAMESPACE = "agentauth-system"
KUBECTL = pathlib.Path(sys.executable).parent / "kubectl"


def main(argv: list[str]) -> int:
    kubeconfig, repository, tag, issuer = argv
    kubectl = [str(KUBECTL), "--kubeconfig", kubeconfig]
    subprocess.run([*kubectl, "apply", "--server-side", "-f", str(CHART / "crds")], check=True)
    namespace = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}}
    values = {
        "image": {"repository": repository, "tag": tag, "pullPolicy": "Never"},
        "issuer": {"url": issuer},
    }
    rendered = helm.Chart.load(CHART).render(
        values, name="agentauth", namespace=NAMESPACE, is_install=True
    )
    documents = [namespace]
    for path, text in sorted(rendered.items()):
        if not path.endswith("NOTES.txt"):
            documents += [doc for doc in yaml.safe_load_all(text) if isinstance(doc, dict)]
    subprocess.run(
        [*kubectl, "apply", "--server-side", "-f", "-"],
        input=yaml.safe_dump_all(documents),
        text=True,
        check=True,
    )
    for deployment in ("agentauth-controller", "agentauth-token-service"):
        subprocess.run(
            [
                *kubectl,
                "rollout",
                "status",
                f"deployment/{deployment}",
                "-n",
                NAMESPACE,
                "--timeout=180s",
            ],
            check=True,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
