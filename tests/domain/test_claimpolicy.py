"""The cluster admin's claim policy: who may claim which cloud identity and resource URI."""

from __future__ import annotations

import json
from typing import Any

import pytest

from agentauth.domain import claimpolicy, errors
from agentauth.domain.federation import matching
from agentauth.domain.models import Agent

ROLE = "arn:aws:iam::111122223333:role/team-a-reader"
POLICY = claimpolicy.parse(
    json.dumps(
        {
            "restrictResourceURIs": True,
            "rules": [
                {
                    "namespaces": ["team-a"],
                    "aws": {"roleArns": ["arn:aws:iam::111122223333:role/team-a-*"]},
                    "gcp": {"serviceAccounts": ["*@team-a-prod.iam.gserviceaccount.com"]},
                    "resourceURIs": ["https://tools.team-a.example/", "https://x.example/api"],
                },
                {"namespaces": ["team-b"], "aws": {"roleArns": [ROLE.replace("team-a", "b")]}},
            ],
        }
    )
)


@pytest.mark.parametrize(
    ("claim", "allowed", "expected"),
    [
        (ROLE, "arn:aws:iam::111122223333:role/team-a-*", True),
        (
            "arn:aws:iam::111122223333:role/team-a-x*",
            "arn:aws:iam::111122223333:role/team-a-*",
            True,
        ),
        ("arn:aws:iam::111122223333:role/*", "arn:aws:iam::111122223333:role/team-a-*", False),
        ("arn:aws:iam::*:role/*", "arn:aws:iam::111122223333:role/team-a-*", False),
        ("arn:aws:iam::*:role/team-a-x", "arn:aws:iam::111122223333:role/team-a-*", False),
        (
            "arn:aws:iam::111122223333:role/team-b-x",
            "arn:aws:iam::111122223333:role/team-a-*",
            False,
        ),
        # an exact claim with a path is the role of that name: inside the rule
        (
            "arn:aws:iam::111122223333:role/ops/team-a-x",
            "arn:aws:iam::111122223333:role/team-a-*",
            True,
        ),
        # a claim with a path and a wildcard matches nothing: never allowed
        ("arn:aws:iam::111122223333:role/ops/*", "arn:aws:iam::111122223333:role/*", False),
        # exact rules admit only that role (path-less comparison)
        (ROLE, ROLE, True),
        ("arn:aws:iam::111122223333:role/ops/team-a-reader", ROLE, True),
        ("arn:aws:iam::111122223333:role/team-a-*", ROLE, False),
        # an exact claim names a role, whatever its path: role "b" (path "a/") is in "role/*"
        ("arn:aws:iam::111122223333:role/a/b", "arn:aws:iam::111122223333:role/*", True),
        # a rule's '*' never crosses ':' or '/'
        ("arn:aws:iam::111122223333:role/x", "arn:aws:*", False),
        ("arn:aws:iam::111122223333:role/x", "arn:aws:iam::111122223333:*", False),
        ("not an arn", "arn:aws:iam::*:role/*", False),
    ],
)
def test_aws_role_allowed_means_everything_the_claim_matches_is_within(
    claim: str, allowed: str, expected: bool
) -> None:
    assert claimpolicy.aws_role_allowed(claim, allowed) is expected


@pytest.mark.parametrize(
    ("email", "allowed", "expected"),
    [
        (
            "Reader@Team-A-Prod.iam.gserviceaccount.com",
            "*@team-a-prod.iam.gserviceaccount.com",
            True,
        ),
        (
            "reader@team-b-prod.iam.gserviceaccount.com",
            "*@team-a-prod.iam.gserviceaccount.com",
            False,
        ),
        (
            "evil@x.com@team-a-prod.iam.gserviceaccount.com",
            "*@team-a-prod.iam.gserviceaccount.com",
            False,
        ),
        ("a@team-a-prod.iam.gserviceaccount.com", "a@team-a-prod.iam.gserviceaccount.com", True),
    ],
)
def test_gcp_account_allowed(email: str, allowed: str, expected: bool) -> None:
    assert claimpolicy.gcp_account_allowed(email, allowed) is expected


def agent(namespace: str, federation: dict[str, Any]) -> Agent:
    return Agent.model_validate(
        {"metadata": {"name": "a", "namespace": namespace}, "spec": {"federation": federation}}
    )


def test_refused_entries_are_listed_quoted_and_dropped() -> None:
    hostile = 'arn:aws:iam::1:role/x" | approve: kubectl agentauth approve decoy\x1b[2J'
    allowed, refused = claimpolicy.allowed_federation(
        agent(
            "team-a",
            {
                "aws": {"roleArns": [ROLE, "arn:aws:iam::*:role/*", hostile]},
                "gcp": {"serviceAccounts": ["x@other.iam.gserviceaccount.com"]},
            },
        ),
        POLICY,
    )
    assert allowed is not None and allowed.aws is not None and allowed.gcp is not None
    assert (allowed.aws.role_arns, allowed.gcp.service_accounts) == ([ROLE], [])
    assert refused == [
        'AWS role "arn:aws:iam::*:role/*"',
        'AWS role "arn:aws:iam::1:role/x\\" | approve: kubectl agentauth approve decoy[2J"',
        'GCP service account "x@other.iam.gserviceaccount.com"',
    ]


def test_no_policy_allows_no_federation_and_no_namespace_of_another() -> None:
    _, refused = claimpolicy.allowed_federation(
        agent("team-a", {"aws": {"roleArns": [ROLE]}}), claimpolicy.NO_CLAIMS
    )
    assert refused == [f'AWS role "{ROLE}"']
    _, refused = claimpolicy.allowed_federation(
        agent("team-b", {"aws": {"roleArns": [ROLE]}}), POLICY
    )
    assert refused == [f'AWS role "{ROLE}"']


def test_a_refused_wildcard_never_makes_another_namespace_s_identity_ambiguous() -> None:
    identity = matching.FederatedIdentity(
        provider="aws", principal=ROLE, account="111122223333", subject=f"{ROLE}/s"
    )
    owner = agent("team-a", {"aws": {"roleArns": [ROLE]}})
    squatters = [
        agent("team-b", {"aws": {"roleArns": ["arn:aws:iam::*:role/*"]}}),
        agent("team-c", {"aws": {"roleArns": [ROLE]}}),
    ]
    assert matching.match_agent(identity, [*squatters, owner], policy=POLICY) is owner
    with pytest.raises(errors.InvalidGrant):
        matching.match_agent(identity, squatters, policy=POLICY)


@pytest.mark.parametrize(
    ("namespace", "uri", "expected"),
    [
        ("team-a", "https://tools.team-a.example/mcp", True),
        ("team-a", "https://TOOLS.team-a.example:443/mcp/", True),
        ("team-a", "https://tools.team-a.example", True),
        ("team-a", "https://tools.team-a.example.evil.test/mcp", False),
        ("team-a", "https://x.example/api/v1", True),
        ("team-a", "https://x.example/apiv2", False),
        ("team-a", "https://x.example:8443/api", False),
        ("team-b", "https://tools.team-a.example/mcp", False),
    ],
)
def test_resource_uris_by_namespace_and_path_prefix(
    namespace: str, uri: str, expected: bool
) -> None:
    assert claimpolicy.resource_uri_allowed(POLICY, namespace=namespace, uri=uri) is expected
    assert claimpolicy.resource_uri_allowed(claimpolicy.NO_CLAIMS, namespace=namespace, uri=uri)


@pytest.mark.parametrize(
    ("uri", "normalized"),
    [
        ("https://Tools.Example:443/MCP/", "https://tools.example/MCP"),
        ("https://tools.example.:8443/a?b=1", "https://tools.example:8443/a?b=1"),
        ("https://[::1]/x", "https://[::1]/x"),
    ],
)
def test_normalize_resource_uri(uri: str, normalized: str) -> None:
    assert claimpolicy.normalize_resource_uri(uri) == normalized


@pytest.mark.parametrize("bad", ["http://tools.example/", "tools.example", "https:///x"])
def test_normalize_refuses_what_is_not_an_https_url(bad: str) -> None:
    with pytest.raises(ValueError, match="is not an absolute https URL"):
        claimpolicy.normalize_resource_uri(bad)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "{",
            "the claim policy is not JSON: Expecting property name enclosed in double quotes: "
            "line 1 column 2 (char 1)",
        ),
        (
            '[{"namespaces": []}]',
            "the claim policy is invalid at rules[0].namespaces: List should "
            "have at least 1 item after validation, not 0",
        ),
        (
            '[{"namespaces": ["Team_A"]}]',
            "the claim policy is invalid at rules[0].namespaces[0]: "
            "'Team_A' is not a DNS-1123 label: at most 63 lower-case alphanumeric characters or "
            "'-', starting and ending with an alphanumeric character",
        ),
        (
            '[{"namespaces": ["a"], "gcp": {"serviceAccounts": ["nobody"]}}]',
            "the claim policy is "
            "invalid at rules[0].gcp.serviceAccounts: 'nobody' is not a service-account e-mail "
            "pattern such as *@team-a.iam.gserviceaccount.com",
        ),
        (
            '[{"namespaces": ["a"], "resourceURIs": ["http://x"]}]',
            "the claim policy is invalid at "
            "rules[0].resourceURIs: 'http://x' is not an absolute https URL",
        ),
        (
            '{"rules": [], "other": 1}',
            "the claim policy is invalid at other: Extra inputs are not permitted",
        ),
    ],
)
def test_a_malformed_policy_names_the_entry(text: str, message: str) -> None:
    with pytest.raises(claimpolicy.PolicyError) as caught:
        claimpolicy.parse(text)
    assert str(caught.value) == message


def test_empty_policy_text_is_no_claims() -> None:
    assert claimpolicy.parse("  ") == claimpolicy.NO_CLAIMS
