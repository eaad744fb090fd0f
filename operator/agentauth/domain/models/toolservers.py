"""The ``ToolServer`` resource: a protected resource (an MCP server or API) and its tools.

Guarantees: ``resourceURI`` is an absolute https URL without a fragment (RFC 8707) made of RFC 3986
URI characters only (so it is safe to show on a terminal), tool names are unique and each maps to a
valid capability name.
"""

from __future__ import annotations

import re
from typing import Literal

import pydantic

from agentauth.domain.models import common

# What the API server checks of resourceURI (the model's validator checks the same pattern).
# An absolute https URL of RFC 3986 characters: no userinfo, fragment, spaces, quotes or control
# characters (a URI is shown to people and compared as a string).
RESOURCE_URI_PATTERN = (
    r"^https://[A-Za-z0-9._~!$&'()*+,;=%:\[\]-]+([/?][A-Za-z0-9._~:/?@!$&'()*+,;=%\[\]-]*)?$"
)
_RESOURCE_URI = re.compile(RESOURCE_URI_PATTERN)


class Tool(common.ApiModel):
    """A tool the server exposes and the capability a caller needs to use it."""

    name: str = pydantic.Field(
        min_length=1,
        max_length=128,
        pattern=r"^[A-Za-z0-9_.-]+$",
        description="The tool's name as the server publishes it (MCP tools/list).",
    )
    capability: common.CapabilityName = pydantic.Field(
        description="The capability a token must carry to call the tool."
    )
    description: str = pydantic.Field(default="", max_length=1024, description="What it does.")


class ToolServerSpec(common.ApiModel):
    """Where the server lives and what its tools need."""

    resource_uri: str = pydantic.Field(
        alias="resourceURI",
        max_length=2048,
        json_schema_extra=common.validations(
            common.cel_rule(
                common.cel_matches(RESOURCE_URI_PATTERN),
                "resourceURI must be an absolute https URL of URI characters (no userinfo, "
                "fragment, spaces, quotes or control characters), such as "
                "https://tools.example.com/mcp",
            )
        ),
        description=(
            "The server's resource identifier (RFC 8707), an https URL of URI characters (RFC "
            "3986; no fragment, spaces, quotes or control characters); tokens for this server "
            "carry it as their audience. One URI belongs to one ToolServer: a URI two "
            "ToolServers name is contested and no token is issued for it."
        ),
    )
    description: str = pydantic.Field(default="", max_length=1024, description="What it serves.")
    tools: list[Tool] = pydantic.Field(
        default_factory=list,
        max_length=512,
        description="Tools and the capability each needs; names are unique.",
        # Unique names as the API server checks list maps (no CEL cost over 512 items).
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"]},
    )

    @pydantic.field_validator("resource_uri")
    @classmethod
    def _absolute_https(cls, value: str) -> str:
        if not _RESOURCE_URI.fullmatch(value):
            raise ValueError(
                f"resourceURI {value!r} must be an absolute https URL of URI characters (no "
                "userinfo, fragment, spaces, quotes or control characters)"
            )
        return value

    @pydantic.field_validator("tools")
    @classmethod
    def _unique_tools(cls, value: list[Tool]) -> list[Tool]:
        seen: set[str] = set()
        for tool in value:
            if tool.name in seen:
                raise ValueError(f"tool {tool.name!r} is listed twice")
            seen.add(tool.name)
        return value


class ToolServerStatus(common.ApiModel):
    """What the controller published."""

    metadata_url: str | None = pydantic.Field(
        default=None,
        alias="metadataURL",
        description="The RFC 9728 protected-resource metadata URL clients discover.",
    )
    conditions: list[common.Condition] = common.conditions_field("Ready and other conditions.")
    observed_generation: int | None = pydantic.Field(
        default=None, description="The .metadata.generation this status was computed from."
    )


class ToolServer(common.ApiModel):
    """A protected resource whose tools require capabilities."""

    model_config = pydantic.ConfigDict(extra="ignore")

    api_version: Literal["agentauth.dev/v1alpha1"] = "agentauth.dev/v1alpha1"
    kind: Literal["ToolServer"] = "ToolServer"
    metadata: common.ObjectMeta = pydantic.Field(default_factory=common.ObjectMeta)
    spec: ToolServerSpec
    status: ToolServerStatus | None = None
