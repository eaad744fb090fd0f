"""Shared building blocks of the agentauth custom resources.

Guarantees: every model serialises with the camelCase field names of the Kubernetes API
(``by_alias=True``) and parses both the API form and Python field names; validation errors carry
messages a cluster admin can act on. Constants here are the single source for the generated CRDs.
"""

from __future__ import annotations

import datetime
import json
import re
from typing import Annotated, Any, Literal

import pydantic
from pydantic import alias_generators

from agentauth.domain import durations

GROUP = "agentauth.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
CATEGORY = "agentauth"
AGENT_LABEL = "agentauth.dev/agent"
MAX_TOKEN_TTL = datetime.timedelta(hours=1)
DEFAULT_TOKEN_TTL = "2m"
"""Short, so that suspension and grant removal reach offline verifiers within minutes too."""

DNS1123_LABEL_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
DNS1123_SUBDOMAIN_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
CAPABILITY_PATTERN = r"^[a-z][a-z0-9_-]*(\.[a-z][a-z0-9_-]*)+$"
CAPABILITY_GRANT_PATTERN = r"^[a-z][a-z0-9_-]*((\.[a-z][a-z0-9_-]*)+|(\.[a-z][a-z0-9_-]*)*\.\*)$"

_DNS1123_LABEL = re.compile(DNS1123_LABEL_PATTERN)
_DNS1123_SUBDOMAIN = re.compile(DNS1123_SUBDOMAIN_PATTERN)
_CAPABILITY = re.compile(CAPABILITY_PATTERN)
_CAPABILITY_GRANT = re.compile(CAPABILITY_GRANT_PATTERN)


def _check_dns_label(value: str) -> str:
    if len(value) > 63 or not _DNS1123_LABEL.match(value):
        raise ValueError(
            f"{value!r} is not a DNS-1123 label: at most 63 lower-case alphanumeric characters "
            "or '-', starting and ending with an alphanumeric character"
        )
    return value


def _check_dns_subdomain(value: str) -> str:
    if len(value) > 253 or not _DNS1123_SUBDOMAIN.match(value):
        raise ValueError(
            f"{value!r} is not a DNS-1123 subdomain: lower-case alphanumeric characters, '-' "
            "or '.', starting and ending with an alphanumeric character"
        )
    return value


def _check_capability(value: str) -> str:
    if not _CAPABILITY.match(value):
        raise ValueError(
            f"{value!r} is not a capability name: expected '<resource>.<action>' in lower case, "
            "such as 'document.read'"
        )
    return value


def _check_capability_grant(value: str) -> str:
    if not _CAPABILITY_GRANT.match(value):
        raise ValueError(
            f"{value!r} is not a capability name: expected '<resource>.<action>' in lower case, "
            "such as 'document.read', or a trailing wildcard such as 'document.*'"
        )
    return value


def _check_duration(value: str) -> str:
    durations.parse_duration(value)
    return value


def cel_rule(rule: str, message: str) -> dict[str, str]:
    """One ``x-kubernetes-validations`` entry: a CEL ``rule`` over ``self`` and the ``message`` the
    API server returns when it is false (written for the person who wrote the manifest)."""
    return {"rule": rule, "message": message}


def cel_matches(pattern: str) -> str:
    """CEL testing ``self`` against ``pattern`` (RE2 syntax; a JSON string is a CEL literal)."""
    return f"self.matches({json.dumps(pattern)})"


def validations(*rules: dict[str, str]) -> dict[str, Any]:
    """``json_schema_extra`` carrying CEL rules into the generated CRD schema."""
    return {"x-kubernetes-validations": list(rules)}


DNS_LABEL_MESSAGE = (
    "must be a DNS-1123 label: at most 63 lower-case letters, digits or '-', starting and ending "
    "with a letter or digit"
)
DNS_SUBDOMAIN_MESSAGE = (
    "must be a DNS-1123 subdomain: lower-case letters, digits, '-' or '.', starting and ending "
    "with a letter or digit"
)
CAPABILITY_MESSAGE = (
    "must be a capability name '<resource>.<action>' in lower case, such as 'document.read'"
)
CAPABILITY_GRANT_MESSAGE = (
    "must be a capability name '<resource>.<action>' in lower case, such as 'document.read', or "
    "end in a wildcard such as 'document.*'"
)
DURATION_MESSAGE = (
    "must be a duration such as '300s', '5m', '1h' or '1h30m' (whole hours, minutes and seconds, "
    "in that order), greater than zero"
)
# Go and CEL durations accept every string durations.PATTERN admits, so a rule can compare them
# once the pattern holds (the guard keeps a malformed value from becoming an evaluation error).
DURATION_RULE = (
    f"{cel_matches(durations.PATTERN)} && size(self) >= {durations.MIN_LENGTH} && "
    "duration(self) > duration('0s')"
)
DURATION_MAX_LENGTH = 24


def bounded_duration_rule(*, field: str, maximum: str) -> dict[str, str]:
    """A CEL upper bound for a duration field (true while the value is malformed: the duration
    rule reports that)."""
    return cel_rule(
        f"!{cel_matches(durations.PATTERN)} || size(self) < {durations.MIN_LENGTH} || "
        f"duration(self) <= duration('{maximum}')",
        f"{field} must be at most {maximum}",
    )


def _string_schema(*, max_length: int, rules: list[dict[str, str]]) -> dict[str, Any]:
    return {"type": "string", "maxLength": max_length, "x-kubernetes-validations": rules}


# Formats are CEL rules with a message rather than bare `pattern`s: the API server then says what
# a valid value looks like instead of printing the regular expression.
DNSLabel = Annotated[
    str,
    pydantic.AfterValidator(_check_dns_label),
    pydantic.WithJsonSchema(
        _string_schema(
            max_length=63,
            rules=[cel_rule(cel_matches(DNS1123_LABEL_PATTERN), DNS_LABEL_MESSAGE)],
        )
    ),
]
DNSSubdomain = Annotated[
    str,
    pydantic.AfterValidator(_check_dns_subdomain),
    pydantic.WithJsonSchema(
        _string_schema(
            max_length=253,
            rules=[cel_rule(cel_matches(DNS1123_SUBDOMAIN_PATTERN), DNS_SUBDOMAIN_MESSAGE)],
        )
    ),
]
CapabilityName = Annotated[
    str,
    pydantic.AfterValidator(_check_capability),
    pydantic.WithJsonSchema(
        _string_schema(
            max_length=253, rules=[cel_rule(cel_matches(CAPABILITY_PATTERN), CAPABILITY_MESSAGE)]
        )
    ),
]
CapabilityPattern = Annotated[
    str,
    pydantic.AfterValidator(_check_capability_grant),
    pydantic.WithJsonSchema(
        _string_schema(
            max_length=253,
            rules=[cel_rule(cel_matches(CAPABILITY_GRANT_PATTERN), CAPABILITY_GRANT_MESSAGE)],
        )
    ),
]
Duration = Annotated[
    str,
    pydantic.AfterValidator(_check_duration),
    pydantic.WithJsonSchema(
        _string_schema(
            max_length=DURATION_MAX_LENGTH, rules=[cel_rule(DURATION_RULE, DURATION_MESSAGE)]
        )
    ),
]


# An agent token's lifetime: a duration of at most 1h (MAX_TOKEN_TTL); the Agent model checks
# the bound too, with its own message.
TokenTTL = Annotated[
    str,
    pydantic.AfterValidator(_check_duration),
    pydantic.WithJsonSchema(
        _string_schema(
            max_length=DURATION_MAX_LENGTH,
            rules=[
                cel_rule(DURATION_RULE, DURATION_MESSAGE),
                bounded_duration_rule(field="tokenTTL", maximum="1h"),
            ],
        )
    ),
]
Timestamp = Annotated[
    datetime.datetime,
    pydantic.WithJsonSchema({"type": "string", "format": "date-time"}),
]


class ApiModel(pydantic.BaseModel):
    """Base for every API object part: camelCase on the wire, unknown fields refused."""

    model_config = pydantic.ConfigDict(
        alias_generator=alias_generators.to_camel,
        populate_by_name=True,
        extra="forbid",
        frozen=False,
    )

    def to_api(self) -> dict[str, Any]:
        """The JSON-ready API form: camelCase, ``None`` fields omitted, timestamps in RFC 3339."""
        return self.model_dump(by_alias=True, exclude_none=True, mode="json")


ConditionStatus = Literal["True", "False", "Unknown"]


class Condition(ApiModel):
    """One observation of the object's state, shaped like Kubernetes ``metav1.Condition``."""

    type: str = pydantic.Field(
        max_length=316,
        description="Type of condition in CamelCase, for example Ready.",
    )
    status: ConditionStatus = pydantic.Field(description="True, False or Unknown.")
    reason: str = pydantic.Field(
        max_length=1024,
        description="A CamelCase reason for the condition's last transition, for machines.",
    )
    message: str = pydantic.Field(
        default="",
        max_length=32768,
        description="A human-readable message about the transition.",
    )
    last_transition_time: Timestamp = pydantic.Field(
        description="When the condition last changed status.",
    )
    observed_generation: int | None = pydantic.Field(
        default=None,
        ge=0,
        description="The .metadata.generation the condition was computed from.",
    )


CONDITIONS_SCHEMA_EXTRA: dict[str, Any] = {
    "x-kubernetes-list-type": "map",
    "x-kubernetes-list-map-keys": ["type"],
}


def conditions_field(description: str) -> Any:
    """A ``conditions`` list field keyed by ``type``, as Kubernetes API conventions ask."""
    return pydantic.Field(
        default_factory=list,
        description=description,
        json_schema_extra=CONDITIONS_SCHEMA_EXTRA,
    )


def set_condition(conditions: list[Condition], new: Condition) -> list[Condition]:
    """Return ``conditions`` with ``new`` replacing the one of its type.

    ``lastTransitionTime`` keeps its old value when the status did not change, so a reconcile that
    observes the same state again does not look like a transition.
    """
    result: list[Condition] = []
    replaced = False
    for existing in conditions:
        if existing.type != new.type:
            result.append(existing)
            continue
        replaced = True
        if existing.status == new.status:
            result.append(
                new.model_copy(update={"last_transition_time": existing.last_transition_time})
            )
        else:
            result.append(new)
    if not replaced:
        result.append(new)
    return result


class LabelSelectorRequirement(ApiModel):
    """One ``matchExpressions`` entry of a Kubernetes label selector."""

    model_config = pydantic.ConfigDict(
        json_schema_extra=validations(
            cel_rule(
                "self.operator in ['In', 'NotIn'] ? (has(self.values) && size(self.values) > 0)"
                " : (!has(self.values) || size(self.values) == 0)",
                "operators In and NotIn need at least one value; Exists and DoesNotExist take none",
            )
        )
    )

    key: str = pydantic.Field(description="The label key the selector applies to.")
    operator: Literal["In", "NotIn", "Exists", "DoesNotExist"] = pydantic.Field(
        description="In, NotIn, Exists or DoesNotExist."
    )
    values: list[str] = pydantic.Field(
        default_factory=list,
        description="Values for In and NotIn; must be empty for Exists and DoesNotExist.",
    )

    @pydantic.model_validator(mode="after")
    def _values_fit_operator(self) -> LabelSelectorRequirement:
        if self.operator in ("In", "NotIn") and not self.values:
            raise ValueError(f"operator {self.operator} needs at least one value")
        if self.operator in ("Exists", "DoesNotExist") and self.values:
            raise ValueError(f"operator {self.operator} takes no values")
        return self


class LabelSelector(ApiModel):
    """A Kubernetes label selector; an empty selector matches everything."""

    match_labels: dict[str, str] = pydantic.Field(
        default_factory=dict, description="Labels that must all be present with these values."
    )
    match_expressions: list[LabelSelectorRequirement] = pydantic.Field(
        default_factory=list, description="Requirements that must all hold."
    )

    def matches(self, labels: dict[str, str]) -> bool:
        """Whether ``labels`` satisfy this selector (Kubernetes semantics)."""
        for key, value in self.match_labels.items():
            if labels.get(key) != value:
                return False
        for requirement in self.match_expressions:
            present = requirement.key in labels
            if requirement.operator == "In":
                if not present or labels[requirement.key] not in requirement.values:
                    return False
            elif requirement.operator == "NotIn":
                if present and labels[requirement.key] in requirement.values:
                    return False
            elif requirement.operator == "Exists":
                if not present:
                    return False
            elif present:
                return False
        return True


class ObjectMeta(ApiModel):
    """The subset of ``metav1.ObjectMeta`` agentauth reads; the rest is preserved, not modelled."""

    model_config = pydantic.ConfigDict(extra="allow")

    name: str | None = None
    namespace: str | None = None
    uid: str | None = None
    generation: int | None = None
    resource_version: str | None = None
    labels: dict[str, str] = pydantic.Field(default_factory=dict)
    annotations: dict[str, str] = pydantic.Field(default_factory=dict)
    creation_timestamp: datetime.datetime | None = None
    deletion_timestamp: datetime.datetime | None = None


def field_path(location: tuple[int | str, ...]) -> str:
    """A pydantic error location as the API's field path, e.g. ``spec.capabilities[0].name``."""
    path = ""
    for part in location:
        if isinstance(part, int):
            path += f"[{part}]"
        else:
            path += f".{part}" if path else str(part)
    return path


def describe_errors(error: pydantic.ValidationError) -> list[tuple[str, str]]:
    """``(field path, message)`` for each problem, without pydantic's 'Value error, ' prefix."""
    described = []
    for item in error.errors():
        message = str(item["msg"])
        message = message.removeprefix("Value error, ")
        described.append((field_path(tuple(item["loc"])), message))
    return described
