"""The RFC 9421 signature base of a request, joined directly for the components agentauth uses.

``http-message-signatures`` stays the reference: this module only covers the plain shapes every
signer emits, and answers ``None`` for anything else so that the caller hands the message to
the library (which then builds the base or raises its own error).

Guarantees of :func:`build`:

- when it returns a base, that base is byte for byte what the library's
  ``HTTPMessageVerifier._build_signature_base`` returns for the same method, URL, field lines,
  covered component identifiers and signature parameters (``tests/domain/test_signaturebase.py``
  compares the two over generated requests: every derived component below, field components,
  parameters, query strings, percent-encoded and raw non-ASCII paths, obsolete line folding,
  repeated field lines, empty values and bodies);
- it covers the derived components ``@method``, ``@authority``, ``@scheme``, ``@target-uri``,
  ``@request-target``, ``@path`` and ``@query``, and HTTP fields named without parameters;
- it returns ``None`` (fall back to the library) for a parameterised or repeated component,
  ``@query-param``, ``@status``, ``@signature-params``, ``set-cookie``, a missing field, a URL
  outside the plain RFC 3986 grammar (IP literals included), a method that is not an upper-case
  token, and any value with line breaks, control characters or non-ASCII text -- so it can only
  ever be stricter than the library, never more lenient.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

DERIVED_COMPONENTS = frozenset(
    {"@method", "@authority", "@scheme", "@target-uri", "@request-target", "@path", "@query"}
)
"""Derived components built here; every other one goes to the library."""

# The library's URL grammar (http_message_signatures._url) minus IP literals, which it checks
# with ``ipaddress``: the same character classes, so every URL matched here is one the library
# accepts, split into the same parts.  Each part's characters exclude the delimiter that ends
# it, so possessive quantifiers (no backtracking, four times faster) match what the library's
# pattern matches.
_UNRESERVED = r"A-Za-z0-9._~\-"
_CHARS = _UNRESERVED + r"!$&'()*+,;="
_PCT = r"%[0-9A-Fa-f]{2}"
_URL = re.compile(
    r"([A-Za-z][A-Za-z0-9+.\-]*+)://"
    rf"(?:(?:[{_CHARS}:]++|{_PCT})*+@)?"
    rf"((?:[{_CHARS}]++|{_PCT})++)"
    r"(?::([0-9]*+))?"
    rf"(/(?:[{_CHARS}:@/]++|{_PCT})*+)?"
    rf"(?:\?((?:[{_CHARS}:@/?]++|{_PCT})*+))?"
    rf"(?:\#(?:[{_CHARS}:@/?]++|{_PCT})*+)?"
)
_DEFAULT_PORTS = {"http": "80", "https": "443"}
# An RFC 9110 token in upper case: what the library accepts as a method and prints unchanged.
_METHOD = re.compile(r"[A-Z0-9!#$%&'*+.^_`|~\-]+")
_COMMON_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


def _field_values(
    lines: Sequence[tuple[str, str]], names: Sequence[str]
) -> dict[str, list[str]] | None:
    """The lines of each covered field (by lower-case name), in order, from one pass."""
    wanted: dict[str, list[str]] = {name: [] for name in names if name[0] != "@"}
    if not wanted:
        return wanted
    for line_name, value in lines:
        found = wanted.get(line_name.lower())
        if found is not None:
            if "\r" in value or "\n" in value:
                return None  # obsolete folding and bare CR/LF: the library's rules apply
            found.append(value)
    return wanted


def _field_value(values: list[str]) -> str | None:
    """The library's value of a field from its lines: each trimmed, joined by ", "."""
    if not values:
        return None
    joined = ", ".join([value.strip(" \t") for value in values])
    # RFC 9421 section 2.5: HTAB is allowed inside a field value, nothing else below 0x20,
    # and the base is ASCII.
    if not joined.isascii() or not joined.replace("\t", " ").isprintable():
        return None
    return joined


def build(
    *,
    method: str,
    url: str,
    lines: Sequence[tuple[str, str]],
    components: Sequence[str],
    signature_params: str,
) -> tuple[bytes, dict[str, str]] | None:
    """The signature base and the covered values by serialised identifier (``@signature-params``
    last, as the library returns them), or ``None``.

    ``components`` are the covered component names (none parameterised, lower case, as the
    ``Signature-Input`` lists them); ``signature_params`` is the serialised inner list with its
    parameters exactly as the library serialises it (the caller has checked that the received
    text is in that canonical form).  ``lines`` are the field lines as received.
    """
    if len(set(components)) != len(components) or not (
        method in _COMMON_METHODS or _METHOD.fullmatch(method)
    ):
        return None
    # The library parses the URL of every request, covered or not, and refuses a bad one.
    parts = _URL.fullmatch(url)
    fields = _field_values(lines, components)
    if parts is None or fields is None:
        return None
    scheme, host, port, path, query = parts.group(1, 2, 3, 4, 5)
    covered: dict[str, str] = {}
    for name in components:
        if name.startswith("@"):
            if name == "@method":
                value = method
            elif name == "@path":
                value = path or "/"
            elif name == "@query":
                value = "?" + (query or "")
            elif name == "@authority":
                value = host.lower()
                if port and port.lstrip("0") != _DEFAULT_PORTS.get(scheme.lower()):
                    value = f"{value}:{port}"
            elif name == "@scheme":
                value = scheme.lower()
            elif name == "@request-target":
                if method == "CONNECT":
                    value = host if port is None else f"{host}:{port}"
                else:
                    value = (path or "/") + ("" if query is None else "?" + query)
            elif name == "@target-uri":
                authority = host if port is None else f"{host}:{port}"
                target_path = (path or "") if method == "OPTIONS" else (path or "/")
                suffix = "" if query is None else "?" + query
                value = f"{scheme}://{authority}{target_path}{suffix}"
            else:
                return None
        else:
            if name == "set-cookie":
                return None
            found = _field_value(fields[name])
            if found is None:
                return None
            value = found
        covered[f'"{name}"'] = value
    covered['"@signature-params"'] = signature_params
    base = "\n".join(f"{identifier}: {value}" for identifier, value in covered.items())
    return base.encode("ascii"), covered
