"""The ``Agent`` resource: one AI agent's identity.

Guarantees: an Agent that parses has a DNS-1123 name, a token TTL within (0, 1h], a bounded
delegation depth and only Ed25519 public keys.
"""

from __future__ import annotations

from typing import Literal

import pydantic

from agentauth.domain import durations
from agentauth.domain.models import common


class Delegation(common.ApiModel):
    """Whether this agent may act on someone else's behalf (RFC 8693 chain of agency)."""

    allowed: bool = pydantic.Field(
        default=False,
        description=(
            "Allow this agent to be the actor in a token exchange on behalf of a user or another "
            "agent. Off by default."
        ),
    )
    max_depth: int = pydantic.Field(
        default=3,
        ge=1,
        le=10,
        description="The deepest nested 'act' chain a token issued to this agent may carry.",
    )


class AwsFederation(common.ApiModel):
    """AWS identities that may act as this agent (signed sts:GetCallerIdentity)."""

    role_arns: list[str] = pydantic.Field(
        default_factory=list,
        description=(
            "IAM role ARNs, such as arn:aws:iam::123456789012:role/research-agent; '*' matches "
            "any run of characters within one ARN field (never ':' or '/'). Assumed-role "
            "sessions match their role."
        ),
    )
    account_ids: list[str] = pydantic.Field(
        default_factory=list,
        description="If set, the caller's AWS account must be one of these 12-digit IDs.",
    )


class GcpFederation(common.ApiModel):
    """Google service accounts that may act as this agent (Google-signed ID tokens)."""

    service_accounts: list[str] = pydantic.Field(
        default_factory=list,
        description="Service account e-mails, such as agent@project.iam.gserviceaccount.com.",
    )
    project_ids: list[str] = pydantic.Field(
        default_factory=list,
        description="If set, the token's Compute Engine project must be one of these.",
    )


class Federation(common.ApiModel):
    """Cloud workload identities that may exchange their credentials for this agent's tokens."""

    aws: AwsFederation | None = pydantic.Field(default=None, description="AWS IAM identities.")
    gcp: GcpFederation | None = pydantic.Field(default=None, description="GCP identities.")


class PublicKey(common.ApiModel):
    """An Ed25519 public key in JWK form (RFC 8037), for agents that run outside the cluster."""

    kty: Literal["OKP"] = pydantic.Field(description="Key type; only OKP (Ed25519) is accepted.")
    crv: Literal["Ed25519"] = pydantic.Field(description="Curve; only Ed25519 is accepted.")
    x: str = pydantic.Field(
        min_length=43,
        max_length=43,
        pattern=r"^[A-Za-z0-9_-]{43}$",
        description="The base64url-encoded 32-byte public key.",
    )
    kid: str = pydantic.Field(min_length=1, max_length=128, description="Key ID.")
    alg: Literal["EdDSA", "Ed25519"] | None = pydantic.Field(
        default=None, description="EdDSA or its RFC 9864 name Ed25519, if given."
    )
    use: Literal["sig"] | None = pydantic.Field(default=None, description="sig, if given.")


class PublicKeySet(common.ApiModel):
    """A JWK Set (RFC 7517) of the agent's registered keys."""

    keys: list[PublicKey] = pydantic.Field(
        default_factory=list, max_length=16, description="The registered public keys."
    )


class AgentSpec(common.ApiModel):
    """What a cluster admin declares about an agent."""

    service_account_name: common.DNSSubdomain | None = pydantic.Field(
        default=None,
        description=(
            "The ServiceAccount whose pods may act as this agent. Pods must also carry the label "
            "agentauth.dev/agent=<agent name>. Leave empty for agents that only use registered "
            "keys or cloud federation."
        ),
    )
    pod_selector: common.LabelSelector | None = pydantic.Field(
        default=None,
        description="Further labels a pod must match to act as this agent.",
    )
    description: str = pydantic.Field(
        default="",
        max_length=1024,
        description="What the agent does, for people reviewing its access.",
    )
    owner: str | None = pydantic.Field(
        default=None,
        max_length=253,
        description="Who is accountable for the agent: a person, team or e-mail address.",
    )
    token_ttl: common.TokenTTL = pydantic.Field(
        default=common.DEFAULT_TOKEN_TTL,
        alias="tokenTTL",
        description=(
            "Lifetime of the agent tokens issued to this agent, at most 1h. Default 2m: a token "
            "verified offline outlives suspension or grant removal by at most this long."
        ),
    )
    delegation: Delegation = pydantic.Field(
        default_factory=Delegation,
        description="Chain-of-agency settings.",
    )
    federation: Federation | None = pydantic.Field(
        default=None, description="Cloud identities (AWS, GCP) that may act as this agent."
    )
    public_keys: PublicKeySet | None = pydantic.Field(
        default=None,
        description=(
            "Ed25519 public keys (a JWKS) with which an agent outside the cluster signs its "
            "token-request assertions."
        ),
    )
    suspended: bool = pydantic.Field(
        default=False,
        description="Stop issuing tokens to this agent; introspection reports its tokens inactive.",
    )

    @pydantic.field_validator("token_ttl")
    @classmethod
    def _ttl_within_bound(cls, value: str) -> str:
        if durations.parse_duration(value) > common.MAX_TOKEN_TTL:
            raise ValueError(f"tokenTTL {value!r} exceeds the maximum of 1h")
        return value


ApprovalMode = Literal["Automatic", "Required"]


class EffectiveCapability(common.ApiModel):
    """A capability the agent holds, and where it comes from."""

    name: common.CapabilityPattern = pydantic.Field(description="The capability name.")
    grant: str = pydantic.Field(description="The CapabilityGrant it comes from.")
    approval: ApprovalMode = pydantic.Field(
        description="Automatic: in every token. Required: only after a person approves a request."
    )
    max_duration: common.Duration | None = pydantic.Field(
        default=None, description="Longest access window an approval may open."
    )
    expires_at: common.Timestamp | None = pydantic.Field(
        default=None, description="When the grant stops applying, if it expires."
    )


class AgentStatus(common.ApiModel):
    """What the controller observed and computed."""

    agent_id: str | None = pydantic.Field(
        default=None,
        alias="agentID",
        description="The agent identifier, the 'sub' of its tokens: aauth:<name>.<ns>@<domain>.",
    )
    capabilities: list[EffectiveCapability] = pydantic.Field(
        default_factory=list, description="Effective capabilities with their source grant."
    )
    conditions: list[common.Condition] = common.conditions_field(
        "Ready says whether pods can exchange credentials for this agent's tokens, and why not."
    )
    observed_generation: int | None = pydantic.Field(
        default=None, description="The .metadata.generation this status was computed from."
    )


class Agent(common.ApiModel):
    """An AI agent's first-class identity."""

    model_config = pydantic.ConfigDict(extra="ignore")

    api_version: Literal["agentauth.dev/v1alpha1"] = "agentauth.dev/v1alpha1"
    kind: Literal["Agent"] = "Agent"
    metadata: common.ObjectMeta = pydantic.Field(default_factory=common.ObjectMeta)
    spec: AgentSpec
    status: AgentStatus | None = None

    @pydantic.field_validator("metadata")
    @classmethod
    def _name_is_label(cls, value: common.ObjectMeta) -> common.ObjectMeta:
        if value.name is not None:
            common._check_dns_label(value.name)
        return value
