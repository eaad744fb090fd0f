"""The chart's token-service replicas, its RBAC and the docs that describe them agree.

The chart runs several replicas that share nothing; the security model says why that is safe
(every credential is bound to the key that will hold the token, so a replay to another replica
yields nothing). These tests hold the rendered chart, values.yaml, the chart README and
docs/operations.md to one replica count, and the RBAC to what the token service reads.
"""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from tests.charts import chart

ROOT = Path(__file__).resolve().parents[2]


def _default_replicas() -> int:
    values = yaml.safe_load((chart.CHART / "values.yaml").read_text())
    return int(values["tokenService"]["replicaCount"])


def test_rendered_replicas_match_values_and_every_document() -> None:
    replicas = _default_replicas()
    deployment = chart.one(chart.render(), "Deployment", "agentauth-token-service")
    assert deployment["spec"]["replicas"] == replicas >= 2
    readme = (chart.CHART / "README.md").read_text()
    assert f"token-service Deployment ({replicas} replicas" in readme
    assert re.search(rf"\| `tokenService\.replicaCount` \| `{replicas}` \|", readme)
    operations = (ROOT / "docs" / "operations.md").read_text()
    assert f"(default {replicas}, PDB" in operations
    # Every document that speaks of several replicas says why they need no shared store.
    for text in (readme, operations, (ROOT / "docs" / "security-model.md").read_text()):
        assert "no shared store" in text or "No shared store" in text


def test_token_service_may_read_pods_and_service_accounts_and_nothing_more() -> None:
    role = chart.one(chart.render(), "ClusterRole", "agentauth-token-service")
    verbs = {
        (group, resource): sorted(rule["verbs"])
        for rule in role["rules"]
        for group in rule["apiGroups"]
        for resource in rule["resources"]
    }
    assert verbs[("", "pods")] == ["get", "list", "watch"]
    assert verbs[("", "serviceaccounts")] == ["get", "list", "watch"]
    assert ("", "secrets") not in verbs  # the issuer-key Secret: a Role, by name only
    assert ("authentication.k8s.io", "tokenreviews") not in verbs  # only with useTokenReview
