"""Pydantic models of the agentauth custom resources: the single source of truth for the CRDs.

``agentauth crds`` generates ``crds/*.yaml`` from these classes; the API server and the Python
code therefore agree on every field, default and bound.
"""

from agentauth.domain.models.accessrequests import (
    AccessRequest,
    AccessRequestSpec,
    AccessRequestStatus,
    Decision,
    Phase,
    Requester,
)
from agentauth.domain.models.agents import (
    Agent,
    AgentSpec,
    AgentStatus,
    ApprovalMode,
    AwsFederation,
    Delegation,
    EffectiveCapability,
    Federation,
    GcpFederation,
    PublicKey,
    PublicKeySet,
)
from agentauth.domain.models.common import (
    AGENT_LABEL,
    API_VERSION,
    GROUP,
    VERSION,
    Condition,
    LabelSelector,
    ObjectMeta,
    set_condition,
)
from agentauth.domain.models.grants import (
    AgentSelection,
    Approvers,
    CapabilityGrant,
    CapabilityGrantSpec,
    CapabilityGrantStatus,
    CapabilitySpec,
)
from agentauth.domain.models.toolservers import Tool, ToolServer, ToolServerSpec, ToolServerStatus

__all__ = [
    "AGENT_LABEL",
    "API_VERSION",
    "GROUP",
    "VERSION",
    "AccessRequest",
    "AccessRequestSpec",
    "AccessRequestStatus",
    "Agent",
    "AgentSelection",
    "AgentSpec",
    "AgentStatus",
    "ApprovalMode",
    "Approvers",
    "AwsFederation",
    "CapabilityGrant",
    "CapabilityGrantSpec",
    "CapabilityGrantStatus",
    "CapabilitySpec",
    "Condition",
    "Decision",
    "Delegation",
    "EffectiveCapability",
    "Federation",
    "GcpFederation",
    "LabelSelector",
    "ObjectMeta",
    "Phase",
    "PublicKey",
    "PublicKeySet",
    "Requester",
    "Tool",
    "ToolServer",
    "ToolServerSpec",
    "ToolServerStatus",
    "set_condition",
]
