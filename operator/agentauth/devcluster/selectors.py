"""Label and field selectors, parsed once per request and matched against stored objects.

Label selectors support the full set-based grammar (``a=b``, ``a==b``, ``a!=b``, ``a in (x,y)``,
``a notin (x)``, ``a``, ``!a``); field selectors support ``=``, ``==`` and ``!=`` on any dotted
path (``metadata.name``, ``metadata.namespace``, ``involvedObject.uid``, ``status.phase``).
A malformed selector raises :class:`SelectorError`, answered as 400 BadRequest.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any


class SelectorError(ValueError):
    pass


@dataclasses.dataclass(frozen=True)
class Requirement:
    key: str
    operator: str  # "=", "!=", "in", "notin", "exists", "!"
    values: tuple[str, ...] = ()

    def matches(self, labels: dict[str, str]) -> bool:
        present = self.key in labels
        if self.operator == "exists":
            return present
        if self.operator == "!":
            return not present
        if self.operator in ("=", "in"):
            return present and labels[self.key] in self.values
        # "!=" and "notin" match objects without the label too, as upstream.
        return not present or labels[self.key] not in self.values


_KEY = r"[A-Za-z0-9](?:[-A-Za-z0-9_./]*[A-Za-z0-9])?"
_SET = re.compile(rf"^\s*({_KEY})\s+(in|notin)\s*\(([^)]*)\)\s*")
_EQ = re.compile(rf"^\s*({_KEY})\s*(==|=|!=)\s*([-A-Za-z0-9_.]*)\s*")
_EXISTS = re.compile(rf"^\s*(!?)\s*({_KEY})\s*")


def parse_labels(text: str) -> tuple[Requirement, ...]:
    requirements: list[Requirement] = []
    rest = text.strip()
    while rest:
        match = _SET.match(rest)
        if match:
            values = tuple(v.strip() for v in match.group(3).split(",") if v.strip())
            requirements.append(Requirement(match.group(1), match.group(2), values))
        else:
            match = _EQ.match(rest)
            if match:
                operator = "!=" if match.group(2) == "!=" else "="
                requirements.append(Requirement(match.group(1), operator, (match.group(3),)))
            else:
                match = _EXISTS.match(rest)
                if not match or not match.group(2):
                    raise SelectorError(f"unable to parse requirement: {rest!r}")
                operator = "!" if match.group(1) else "exists"
                requirements.append(Requirement(match.group(2), operator))
        rest = rest[match.end() :]
        if rest.startswith(","):
            rest = rest[1:]
        elif rest:
            raise SelectorError(f"unable to parse requirement: found '{rest}', expected: ','")
    return tuple(requirements)


@dataclasses.dataclass(frozen=True)
class FieldRequirement:
    path: tuple[str, ...]
    negated: bool
    value: str

    def matches(self, obj: dict[str, Any]) -> bool:
        current: Any = obj
        for part in self.path:
            current = current.get(part) if isinstance(current, dict) else None
        text = (
            ""
            if current is None
            else str(current).lower()
            if isinstance(current, bool)
            else str(current)
        )
        return (text != self.value) if self.negated else (text == self.value)


def parse_fields(text: str) -> tuple[FieldRequirement, ...]:
    requirements: list[FieldRequirement] = []
    for term in (t.strip() for t in text.split(",")):
        if not term:
            continue
        if "!=" in term:
            key, value = term.split("!=", 1)
            negated = True
        elif "==" in term:
            key, value = term.split("==", 1)
            negated = False
        elif "=" in term:
            key, value = term.split("=", 1)
            negated = False
        else:
            raise SelectorError(f"invalid selector: '{text}'; can't understand '{term}'")
        requirements.append(FieldRequirement(tuple(key.strip().split(".")), negated, value.strip()))
    return tuple(requirements)


@dataclasses.dataclass(frozen=True)
class Filter:
    """What a list or watch request selects: namespace, labels and fields."""

    namespace: str | None = None
    labels: tuple[Requirement, ...] = ()
    fields: tuple[FieldRequirement, ...] = ()

    def matches(self, obj: dict[str, Any]) -> bool:
        metadata = obj.get("metadata") or {}
        if self.namespace is not None and metadata.get("namespace", "") != self.namespace:
            return False
        if self.labels:
            labels = metadata.get("labels") or {}
            if not all(req.matches(labels) for req in self.labels):
                return False
        return all(req.matches(obj) for req in self.fields)


def make_filter(namespace: str | None, label_selector: str, field_selector: str) -> Filter:
    return Filter(namespace, parse_labels(label_selector), parse_fields(field_selector))


def matches_label_selector(selector: dict[str, Any] | None, labels: dict[str, str]) -> bool:
    """A ``metav1.LabelSelector`` object (matchLabels/matchExpressions) against labels."""
    if not selector:
        return True
    for key, value in (selector.get("matchLabels") or {}).items():
        if labels.get(key) != value:
            return False
    for expression in selector.get("matchExpressions") or ():
        operator = str(expression.get("operator", ""))
        key = str(expression.get("key", ""))
        values = tuple(str(v) for v in expression.get("values") or ())
        mapping = {"In": "in", "NotIn": "notin", "Exists": "exists", "DoesNotExist": "!"}
        if operator not in mapping or not Requirement(key, mapping[operator], values).matches(
            labels
        ):
            return False
    return True
