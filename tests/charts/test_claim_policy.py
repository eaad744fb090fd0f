"""The chart's ``claimPolicy`` reaches both components as the same policy, and bad values stop
``helm install`` before anything runs."""

from __future__ import annotations

from typing import Any

import helm_python as helm
import pytest

from agentauth.domain import claimpolicy
from tests.charts import chart
from tests.charts.test_components import _settings

POLICY: dict[str, Any] = {
    "restrictResourceURIs": True,
    "rules": [
        {
            "namespaces": ["team-a", "team-b"],
            "aws": {"roleArns": ["arn:aws:iam::111122223333:role/team-a-*"]},
            "gcp": {"serviceAccounts": ["*@team-a-prod.iam.gserviceaccount.com"]},
            "resourceURIs": ["https://tools.team-a.example/"],
        }
    ],
}


def test_both_components_read_the_same_claim_policy() -> None:
    objects = chart.render({"claimPolicy": POLICY})
    controller = _settings(objects, "agentauth-controller")
    tokens = _settings(objects, "agentauth-token-service")
    expected = claimpolicy.ClaimPolicy.model_validate(POLICY)
    assert controller.claim_policy == tokens.claim_policy == expected


def test_the_default_lets_no_namespace_federate() -> None:
    objects = chart.render({})
    for component in ("agentauth-controller", "agentauth-token-service"):
        assert _settings(objects, component).claim_policy == claimpolicy.NO_CLAIMS


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"claimPolicy": {"rules": [{"aws": {"roleArns": []}}]}}, "namespaces"),
        ({"claimPolicy": {"rules": [{"namespaces": ["Team_A"]}]}}, "namespaces"),
        ({"claimPolicy": {"rules": [{"namespaces": ["a"], "aws": {"roleArns": ["x"]}}]}}, "x"),
        ({"claimPolicy": {"restrictResourceURIs": "yes"}}, "restrictResourceURIs"),
        ({"claimPolicy": {"rules": [{"namespaces": ["a"], "owner": "me"}]}}, "owner"),
    ],
)
def test_schema_refuses_a_bad_claim_policy(values: dict[str, Any], message: str) -> None:
    with pytest.raises(helm.HelmValuesError) as caught:
        chart.render(values)
    assert message in str(caught.value)
