"""CRD validation rules (``x-kubernetes-validations``) evaluated with a real CEL implementation.

kube-apiserver compiles each rule of a CRD's structural schema with cel-go and evaluates it with
``self`` bound to the value at that node, after OpenAPI validation and defaulting. This module
does the same with ``cel-python`` (``celpy``, a full CEL implementation from the package index):

- a rule is evaluated for every value present at its node (each list item, each map value);
- a false result is reported as kube-apiserver reports it:
  ``<path>: Invalid value: "<schema type>": <message>`` (``message``, else
  ``failed rule: <rule>``); ``fieldPath`` moves the error to that child; ``reason`` picks the
  cause (``FieldValueForbidden``, ``FieldValueRequired``, ``FieldValueDuplicate``);
- an evaluation error is ``<path>: Invalid value: "<type>": <error> evaluating rule: <rule>``,
  and a rule that does not compile fails the same way (a real server refuses such a CRD);
- when OpenAPI validation already found a blocking error (wrong type, unsupported enum value,
  missing required field, too long, too many) no rule runs and one error says so, with the real
  server's wording.

Transition rules (``oldSelf``) are not evaluated: agentauth's CRDs do not use them.

Subtrees whose schema has no rule are not walked (which nodes have rules below them is computed
once per schema node). A rule's outcome depends only on the rule and the value at its node (CEL
is pure and ``self`` is its only variable here), so outcomes are memoised by (rule, value as
JSON): re-validating an unchanged spec on every status write, or ten thousand objects with the
same spec, evaluates each rule once (cel-python interprets the parse tree: milliseconds per
evaluation).
"""

from __future__ import annotations

import functools
import json
import logging
from typing import Any

import celpy
from celpy import adapter, celparser, celtypes, evaluation

from agentauth.devcluster import schema
from agentauth.kube import jsontext

# celpy logs every evaluation error with a traceback; the error is reported to the client.
logging.getLogger("celpy").setLevel(logging.CRITICAL)

RULES = "x-kubernetes-validations"
_BLOCKING = frozenset(
    {"FieldValueNotSupported", "FieldValueRequired", "FieldValueTooLong", "FieldValueTooMany"}
)
NOT_CHECKED = (
    "some validation rules were not checked because the object was invalid; correct the "
    "existing errors to complete validation"
)
_ENVIRONMENT = celpy.Environment()


class RuleError(Exception):
    """A rule that does not compile."""


@functools.lru_cache(maxsize=1024)
def _program(rule: str) -> celpy.Runner:
    try:
        return _ENVIRONMENT.program(_ENVIRONMENT.compile(rule))
    except celparser.CELParseError as error:
        raise RuleError(f"compilation failed: {error}") from error


def _blocking(errors: list[schema.FieldError]) -> bool:
    # The dev schema validator reports type mismatches as FieldValueInvalid with kube's wording.
    return any(e.reason in _BLOCKING or " in body must be of type " in e.detail for e in errors)


def validate(
    obj: Any, openapi: dict[str, Any], *, schema_errors: list[schema.FieldError]
) -> list[schema.FieldError]:
    """The rule failures of ``obj`` under ``openapi`` (empty when every rule holds)."""
    if not _has_rules(openapi):
        return []
    if _blocking(schema_errors):
        return [
            schema.FieldError("FieldValueInvalid", "<nil>", f'Invalid value: "null": {NOT_CHECKED}')
        ]
    errors: list[schema.FieldError] = []
    _walk(obj, openapi, "", errors, root=True)
    return errors


# id(schema node) -> (node, whether it or a descendant has rules). Schema nodes live as long as
# their CRD version; the node is kept to tell a reused id from the same node.
_RULES_BELOW: dict[int, tuple[Any, bool]] = {}
_RULES_BELOW_MAX = 100_000


def _has_rules(node: Any) -> bool:
    if not isinstance(node, dict):
        return False
    known = _RULES_BELOW.get(id(node))
    if known is not None and known[0] is node:
        return known[1]
    children = list((node.get("properties") or {}).values())
    children += [
        node[key] for key in ("items", "additionalProperties") if isinstance(node.get(key), dict)
    ]
    below = [_has_rules(child) for child in children]  # every child, so each gets cached
    found = bool(node.get(RULES)) or any(below)
    if len(_RULES_BELOW) >= _RULES_BELOW_MAX:
        _RULES_BELOW.clear()
    _RULES_BELOW[id(node)] = (node, found)
    return found


def _walk(
    value: Any, node: dict[str, Any], path: str, errors: list[schema.FieldError], *, root: bool
) -> None:
    if value is None or not _has_rules(node):
        return  # no rule below this node: nothing to evaluate in the value
    for rule in node.get(RULES) or ():
        failure = _check(rule, value, node, path)
        if failure is not None:
            errors.append(failure)
    if isinstance(value, dict):
        properties = node.get("properties") or {}
        for key, child in value.items():
            if root and key in ("apiVersion", "kind", "metadata"):
                continue
            where = f"{path}.{key}" if path else key
            if key in properties:
                _walk(child, properties[key], where, errors, root=False)
            elif isinstance(node.get("additionalProperties"), dict):
                _walk(child, node["additionalProperties"], where, errors, root=False)
    elif isinstance(value, list) and isinstance(node.get("items"), dict):
        for index, item in enumerate(value):
            _walk(item, node["items"], f"{path}[{index}]", errors, root=False)


def _type_of(node: dict[str, Any]) -> str:
    return str(node.get("type") or "object")


# What evaluating a rule gave: None when it held, else the error's detail (the rule failed
# when the detail is _FALSE).
_FALSE = ""


@functools.lru_cache(maxsize=16384)
def _outcome(text: str, value_json: str) -> str | None:
    try:
        result = _program(text).evaluate({"self": adapter.json_to_cel(json.loads(value_json))})
    except RuleError as error:
        return f"{error} for rule: {text}"
    except evaluation.CELEvalError as error:
        return f"{_eval_message(error)} evaluating rule: {text}"
    if isinstance(result, evaluation.CELEvalError):
        return f"{_eval_message(result)} evaluating rule: {text}"
    if isinstance(result, celtypes.BoolType):
        return None if bool(result) else _FALSE
    return f"rule did not evaluate to a bool: {text}"


def _check(
    rule: dict[str, Any], value: Any, node: dict[str, Any], path: str
) -> schema.FieldError | None:
    text = str(rule.get("rule", ""))
    shown = _type_of(node)
    detail = _outcome(text, jsontext.encode(value))
    if detail is None:
        return None
    if detail != _FALSE:
        return schema.invalid(path, shown, detail)
    message = str(rule.get("message") or f"failed rule: {text}")
    field_path = str(rule.get("fieldPath") or "")
    where = f"{path}{field_path}" if field_path.startswith(("[", ".")) else path
    reason = str(rule.get("reason") or "FieldValueInvalid")
    if reason == "FieldValueForbidden":
        return schema.FieldError(reason, where, f"Forbidden: {message}")
    if reason == "FieldValueRequired":
        return schema.FieldError(reason, where, f"Required value: {message}")
    if reason == "FieldValueDuplicate":
        return schema.FieldError(reason, where, f'Duplicate value: "{shown}": {message}')
    return schema.invalid(where, shown, message)


def _eval_message(error: Exception) -> str:
    args = getattr(error, "args", ())
    return str(args[0]) if args else str(error)
