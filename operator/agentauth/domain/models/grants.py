"""The ``CapabilityGrant`` resource: scoped capabilities given to agents.

Guarantees: a grant that parses names at least one capability and selects agents by name or
selector; Automatic capabilities never carry a maxDuration, Required ones always do (defaulted).
"""

from __future__ import annotations

from typing import Literal

import pydantic

from agentauth.domain.models import agents, common

DEFAULT_MAX_DURATION = "1h"


class AgentSelection(common.ApiModel):
    """Which agents in the grant's namespace receive its capabilities."""

    model_config = pydantic.ConfigDict(
        json_schema_extra=common.validations(
            common.cel_rule(
                "(has(self.names) && size(self.names) > 0) || has(self.selector)",
                "set agents.names or agents.selector: a grant must say which agents it applies to",
            )
        )
    )

    names: list[common.DNSLabel] = pydantic.Field(
        default_factory=list, max_length=256, description="Agent names, in the grant's namespace."
    )
    selector: common.LabelSelector | None = pydantic.Field(
        default=None, description="A label selector over Agents in the grant's namespace."
    )

    @pydantic.model_validator(mode="after")
    def _selects_something(self) -> AgentSelection:
        if not self.names and self.selector is None:
            raise ValueError("set agents.names or agents.selector")
        return self


class CapabilitySpec(common.ApiModel):
    """One capability granted."""

    model_config = pydantic.ConfigDict(
        json_schema_extra=common.validations(
            common.cel_rule(
                "!has(self.maxDuration) || self.approval == 'Required'",
                "maxDuration applies only to capabilities with approval Required",
            )
        )
    )

    name: common.CapabilityPattern = pydantic.Field(
        description=(
            "'<resource>.<action>' such as payments.authorize, or a wildcard like 'document.*'."
        )
    )
    description: str = pydantic.Field(
        default="",
        max_length=1024,
        description="What the capability allows; the Ask API matches questions against it.",
    )
    examples: list[str] = pydantic.Field(
        default_factory=list,
        max_length=32,
        description="Example requests in plain language that need this capability (Ask API).",
    )
    approval: agents.ApprovalMode = pydantic.Field(
        default="Automatic",
        description="Automatic (always in tokens) or Required (a person approves each use).",
    )
    max_duration: common.Duration | None = pydantic.Field(
        default=None,
        description=(
            "For approval Required: the longest access window one approval opens. Default 1h."
        ),
    )

    @pydantic.model_validator(mode="after")
    def _duration_fits_mode(self) -> CapabilitySpec:
        if self.approval == "Automatic" and self.max_duration is not None:
            raise ValueError("maxDuration applies only to capabilities with approval Required")
        if self.approval == "Required" and self.max_duration is None:
            self.max_duration = DEFAULT_MAX_DURATION
        return self


class Approvers(common.ApiModel):
    """Who may approve just-in-time requests for this grant's Required capabilities."""

    users: list[str] = pydantic.Field(
        default_factory=list, description="Kubernetes user names allowed to approve."
    )
    groups: list[str] = pydantic.Field(
        default_factory=list, description="Kubernetes groups whose members may approve."
    )
    min_approvals: int = pydantic.Field(
        default=1, ge=1, le=10, description="Distinct approvers needed to approve a request."
    )


class CapabilityGrantSpec(common.ApiModel):
    """Capabilities, the agents that receive them and who approves sensitive ones."""

    agents: AgentSelection = pydantic.Field(description="The agents that receive the capabilities.")
    capabilities: list[CapabilitySpec] = pydantic.Field(
        min_length=1, max_length=256, description="The capabilities granted."
    )
    approvers: Approvers | None = pydantic.Field(
        default=None,
        description=(
            "Approvers for Required capabilities. People allowed verb 'approve' on this grant by "
            "RBAC may approve as well."
        ),
    )
    expires_at: common.Timestamp | None = pydantic.Field(
        default=None, description="When the grant stops applying (RFC 3339)."
    )


class CapabilityGrantStatus(common.ApiModel):
    """What the controller resolved."""

    matched_agents: list[str] = pydantic.Field(
        default_factory=list, description="Names of the Agents this grant currently applies to."
    )
    conditions: list[common.Condition] = common.conditions_field(
        "Active says whether the grant currently applies, and why not."
    )
    observed_generation: int | None = pydantic.Field(
        default=None, description="The .metadata.generation this status was computed from."
    )


class CapabilityGrant(common.ApiModel):
    """Scoped capabilities granted to agents, never a blanket role."""

    model_config = pydantic.ConfigDict(extra="ignore")

    api_version: Literal["agentauth.dev/v1alpha1"] = "agentauth.dev/v1alpha1"
    kind: Literal["CapabilityGrant"] = "CapabilityGrant"
    metadata: common.ObjectMeta = pydantic.Field(default_factory=common.ObjectMeta)
    spec: CapabilityGrantSpec
    status: CapabilityGrantStatus | None = None
