"""Claim policies for federation tests (what a cluster admin would put in ``claimPolicy``)."""

from __future__ import annotations

import json

from agentauth.domain import claimpolicy


def allowing(*namespaces: str) -> claimpolicy.ClaimPolicy:
    """A policy that lets ``namespaces`` claim any AWS role and any GCP service account."""
    return claimpolicy.parse(
        json.dumps(
            [
                {
                    "namespaces": list(namespaces),
                    "aws": {"roleArns": ["arn:*:iam::*:role/*"]},
                    "gcp": {"serviceAccounts": ["*@*"]},
                }
            ]
        )
    )
