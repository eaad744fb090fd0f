"""The ``AccessRequest`` resource: a just-in-time request for sensitive capabilities.

Guarantees: a request that parses names an agent (DNS-1123 label), at least one capability, a
non-empty bounded justification and a positive duration. ``spec.requester``, ``spec.agentUID``
and the approvals in status (with the grants each was given under) are written only by
agentauth's admission webhook and controller.
"""

from __future__ import annotations

from typing import Literal

import pydantic

from agentauth.domain.models import common

MAX_JUSTIFICATION = 2000
DEFAULT_DURATION = "15m"

Phase = Literal["Pending", "Approved", "Denied", "Expired"]
PHASES: tuple[Phase, ...] = ("Pending", "Approved", "Denied", "Expired")


class Requester(common.ApiModel):
    """The authenticated Kubernetes identity that created the request (stamped by admission)."""

    username: str = pydantic.Field(description="The authenticated user name.")
    uid: str | None = pydantic.Field(default=None, description="The user's UID, if any.")
    groups: list[str] = pydantic.Field(default_factory=list, description="The user's groups.")


class AccessRequestSpec(common.ApiModel):
    """What an agent asks for, and why."""

    agent: common.DNSLabel = pydantic.Field(description="The Agent (same namespace) asking.")
    capabilities: list[common.CapabilityName] = pydantic.Field(
        min_length=1, max_length=32, description="The capabilities requested."
    )
    justification: str = pydantic.Field(
        min_length=1,
        max_length=MAX_JUSTIFICATION,
        description="Why the agent needs them, in plain text, shown to approvers.",
        json_schema_extra=common.validations(
            common.cel_rule(
                common.cel_matches(r"\S"), "justification must not be blank: say why it is needed"
            )
        ),
    )
    duration: common.Duration = pydantic.Field(
        default=DEFAULT_DURATION,
        description="How long access lasts once approved; at most the grant's maxDuration.",
    )
    context: dict[str, str] = pydantic.Field(
        default_factory=dict,
        description="Details for approvers, such as the resource or amount involved.",
    )
    requester: Requester | None = pydantic.Field(
        default=None,
        description="Set by the admission webhook from the authenticated caller; immutable.",
    )
    agent_uid: str | None = pydantic.Field(
        default=None,
        alias="agentUID",
        max_length=128,
        description=(
            "Set by the admission webhook: the UID of the Agent the request was filed for; "
            "immutable. The request applies to that Agent object only, never to one re-created "
            "under the same name."
        ),
    )

    @pydantic.field_validator("justification")
    @classmethod
    def _justification_not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("justification must not be blank")
        return value


class GrantBinding(common.ApiModel):
    """A CapabilityGrant a decision was made under: its identity and its approver policy then."""

    name: str = pydantic.Field(max_length=253, description="The grant's name.")
    uid: str = pydantic.Field(max_length=128, description="The grant's metadata.uid.")
    policy: str = pydantic.Field(
        max_length=128,
        description=(
            "Fingerprint of the grant's spec.approvers (users, groups, minApprovals) at decision "
            "time; the approval counts only while the grant's approvers are unchanged."
        ),
    )


class Decision(common.ApiModel):
    """One approval or denial, by an authenticated Kubernetes user."""

    user: str = pydantic.Field(description="The authenticated user who decided.")
    groups: list[str] = pydantic.Field(default_factory=list, description="That user's groups.")
    time: common.Timestamp = pydantic.Field(description="When the decision was recorded.")
    comment: str = pydantic.Field(
        default="", max_length=1024, description="The approver's comment or the denial reason."
    )
    grants: list[GrantBinding] = pydantic.Field(
        default_factory=list,
        max_length=32,
        description=(
            "Stamped by the admission webhook: the grants this decision was made under. An "
            "approval counts only while each of them exists with the same UID and approvers."
        ),
    )


class AccessRequestStatus(common.ApiModel):
    """Where the request stands."""

    phase: Phase | None = pydantic.Field(
        default=None, description="Pending, Approved, Denied or Expired."
    )
    approvals: list[Decision] = pydantic.Field(
        default_factory=list, description="Approvals recorded, one per distinct user."
    )
    denials: list[Decision] = pydantic.Field(
        default_factory=list, description="Denials recorded; one denial decides the request."
    )
    expires_at: common.Timestamp | None = pydantic.Field(
        default=None, description="When a pending request expires unanswered."
    )
    granted_until: common.Timestamp | None = pydantic.Field(
        default=None, description="When approved access ends."
    )
    conditions: list[common.Condition] = common.conditions_field("Conditions of the request.")
    observed_generation: int | None = pydantic.Field(
        default=None, description="The .metadata.generation this status was computed from."
    )


class AccessRequest(common.ApiModel):
    """A just-in-time request for capabilities that need a person's approval."""

    model_config = pydantic.ConfigDict(extra="ignore")

    api_version: Literal["agentauth.dev/v1alpha1"] = "agentauth.dev/v1alpha1"
    kind: Literal["AccessRequest"] = "AccessRequest"
    metadata: common.ObjectMeta = pydantic.Field(default_factory=common.ObjectMeta)
    spec: AccessRequestSpec
    status: AccessRequestStatus | None = None
