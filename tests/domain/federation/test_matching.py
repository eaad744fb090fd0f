"""Exactly one Agent may claim a cloud identity (pure)."""

from __future__ import annotations

from typing import Any

import pytest

from agentauth.domain import errors
from agentauth.domain.federation import matching
from agentauth.domain.models import Agent
from tests.domain.federation import policies

ROLE = "arn:aws:iam::123456789012:role/research-agent"
AWS_IDENTITY = matching.FederatedIdentity(
    provider="aws",
    principal=ROLE,
    account="123456789012",
    subject="arn:aws:sts::123456789012:assumed-role/research-agent/i-0abc",
)
EVERYWHERE = policies.allowing("agents", "team")
GCP_IDENTITY = matching.FederatedIdentity(
    provider="gcp",
    principal="agent@research-prod.iam.gserviceaccount.com",
    account="research-prod",
    subject="1133",
)


def agent(name: str, federation: dict[str, Any] | None, namespace: str = "agents") -> Agent:
    spec: dict[str, Any] = {} if federation is None else {"federation": federation}
    return Agent.model_validate({"metadata": {"name": name, "namespace": namespace}, "spec": spec})


def test_the_one_claiming_agent_is_returned() -> None:
    agents = [
        agent("plain", None),
        agent("gcp-only", {"gcp": {"serviceAccounts": [GCP_IDENTITY.principal]}}),
        agent("researcher", {"aws": {"roleArns": [ROLE]}}),
    ]
    assert (
        matching.match_agent(AWS_IDENTITY, agents, policy=EVERYWHERE).metadata.name == "researcher"
    )
    assert matching.match_agent(GCP_IDENTITY, agents, policy=EVERYWHERE).metadata.name == "gcp-only"


def test_no_claiming_agent_names_the_identity() -> None:
    with pytest.raises(errors.InvalidGrant) as caught:
        matching.match_agent(
            AWS_IDENTITY, [agent("other", {"aws": {"roleArns": [ROLE + "x"]}})], policy=EVERYWHERE
        )
    assert caught.value.description == (
        "no Agent's spec.federation admits AWS role arn:aws:iam::123456789012:role/research-agent "
        "(that the cluster's claim policy allows its namespace to claim)"
    )


def test_two_claiming_agents_is_an_error_naming_both() -> None:
    agents = [
        agent("b", {"aws": {"roleArns": ["arn:aws:iam::123456789012:role/research-*"]}}),
        agent("a", {"aws": {"roleArns": [ROLE]}}, namespace="team"),
    ]
    with pytest.raises(errors.InvalidGrant) as caught:
        matching.match_agent(AWS_IDENTITY, agents, policy=EVERYWHERE)
    assert caught.value.description == (
        "AWS role arn:aws:iam::123456789012:role/research-agent is admitted by more than one "
        "Agent (agents/b, team/a); exactly one Agent may claim a cloud identity"
    )


@pytest.mark.parametrize(
    ("aws_rules", "claims"),
    [
        ({"roleArns": [ROLE]}, True),
        ({"roleArns": [ROLE], "accountIds": ["123456789012"]}, True),
        ({"roleArns": [ROLE], "accountIds": ["210987654321"]}, False),
        (
            {"roleArns": ["arn:aws:iam::*:role/research-agent"], "accountIds": ["210987654321"]},
            False,
        ),
        ({"accountIds": ["123456789012"]}, False),  # accountIds only narrows
        ({}, False),
    ],
)
def test_aws_rules(aws_rules: dict[str, Any], claims: bool) -> None:
    assert matching.claims(agent("a", {"aws": aws_rules}), AWS_IDENTITY) is claims


@pytest.mark.parametrize(
    ("gcp_rules", "identity_project", "claims"),
    [
        (
            {"serviceAccounts": ["Agent@research-prod.iam.gserviceaccount.com"]},
            "research-prod",
            True,
        ),
        (
            {"serviceAccounts": ["other@research-prod.iam.gserviceaccount.com"]},
            "research-prod",
            False,
        ),
        (
            {"serviceAccounts": [GCP_IDENTITY.principal], "projectIds": ["research-prod"]},
            "research-prod",
            True,
        ),
        (
            {"serviceAccounts": [GCP_IDENTITY.principal], "projectIds": ["research-dev"]},
            "research-prod",
            False,
        ),
        (
            {"serviceAccounts": [GCP_IDENTITY.principal], "projectIds": ["research-prod"]},
            None,
            False,
        ),
        ({"projectIds": ["research-prod"]}, "research-prod", False),
    ],
)
def test_gcp_rules(gcp_rules: dict[str, Any], identity_project: str | None, claims: bool) -> None:
    identity = matching.FederatedIdentity(
        provider="gcp", principal=GCP_IDENTITY.principal, account=identity_project, subject="1"
    )
    assert matching.claims(agent("a", {"gcp": gcp_rules}), identity) is claims


def test_unlisted_project_error_names_the_project() -> None:
    agents = [
        agent("a", {"gcp": {"serviceAccounts": [GCP_IDENTITY.principal], "projectIds": ["x"]}})
    ]
    with pytest.raises(errors.InvalidGrant) as caught:
        matching.match_agent(GCP_IDENTITY, agents, policy=EVERYWHERE)
    assert caught.value.description == (
        "no Agent's spec.federation admits GCP service account "
        "agent@research-prod.iam.gserviceaccount.com in project research-prod (that the "
        "cluster's claim policy allows its namespace to claim)"
    )


def test_an_aws_identity_never_matches_gcp_rules_and_back() -> None:
    both = agent("a", {"gcp": {"serviceAccounts": [ROLE]}, "aws": {"roleArns": ["*"]}})
    assert not matching.claims(both, AWS_IDENTITY)
    assert not matching.claims(both, GCP_IDENTITY)
