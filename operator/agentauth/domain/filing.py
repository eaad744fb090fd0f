"""Filing just-in-time access requests safely with many token-service replicas: pure rules.

Two properties must hold however many replicas serve the agents, so both rest on the one thing
every replica shares and that is atomic: the API server's create-if-absent on a name.

Idempotency. An agent may retry a filing (a timeout, a 503, a replica that went away). The
``Idempotency-Key`` request header (draft-ietf-httpapi-idempotency-key-header: a Structured Field
string; a bare token is accepted too) names the logical request; the AccessRequest's name is
derived from it, *and from the agent's identity*:

    <agent name>-<base32(sha256(namespace, agent name, agent uid, key))[:REQUEST_HASH_LENGTH]>

so a retry of the same key creates nothing new (the API server answers 409, the existing request
is returned), one agent cannot name, guess or collide with another agent's requests (another
agent's name, namespace or uid gives other names; the hash is fixed-length, so the agent name
prefix is unambiguous), and a re-created Agent (new uid) never finds its predecessor's. A key
re-used for a different request (``request_digest`` differs) is refused, never answered with the
old request.

The pending cap. At most ``capacity`` undecided requests per agent. Each undecided request holds
one of ``capacity`` slots, Leases with deterministic names (``slot_name``) whose holder is the
request's name; taking a slot is a create-if-absent (or a compare-and-swap on a slot whose holder
is decided or gone), so two replicas can never both take the same slot, and no request is filed
without one. A slot is free again once its holder is decided: decisions are final, so a cache
that says "decided" is never wrong (a stale one only errs towards "held").
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

IDEMPOTENCY_KEY_HEADER = "Idempotency-Key"
MAX_IDEMPOTENCY_KEY_LENGTH = 255
REQUEST_HASH_LENGTH = 16
"""Characters of base32 (80 bits) in a request name: collisions are out of reach."""
SLOT_HOLDER_GRACE = datetime.timedelta(seconds=30)
"""A slot whose holder request is not (yet) visible is held this long after it was taken: the
filing that took it may still be creating the request."""
SLOT_LABEL = "agentauth.dev/pending-slot-of"
"""On slot Leases: the uid of the Agent whose pending requests they count."""
LEASE_TIME_FORMAT = "%Y-%m-%dT%H:%M:%S.%fZ"

HolderState = Literal["undecided", "decided", "absent", "unknown"]


class InvalidIdempotencyKey(ValueError):
    """The ``Idempotency-Key`` header is malformed; the message says how."""


def parse_idempotency_key(header: str | None) -> str | None:
    """The key in an ``Idempotency-Key`` header value, None when the header is absent.

    Accepted: a Structured Field string (``"..."``, RFC 9651 section 3.3.3: printable ASCII,
    ``\\"`` and ``\\\\`` escapes) or a bare token of visible ASCII; 1 to
    :data:`MAX_IDEMPOTENCY_KEY_LENGTH` characters once unquoted.
    """
    if header is None:
        return None
    text = header.strip(" \t")
    if text.startswith('"'):
        key = _sf_string(text)
    else:
        if not text or any(not "!" <= c <= "~" or c in '"\\' for c in text):
            raise InvalidIdempotencyKey(
                f"{IDEMPOTENCY_KEY_HEADER} must be a quoted string or a token of visible ASCII"
            )
        key = text
    if not 0 < len(key) <= MAX_IDEMPOTENCY_KEY_LENGTH:
        raise InvalidIdempotencyKey(
            f"{IDEMPOTENCY_KEY_HEADER} must have 1 to {MAX_IDEMPOTENCY_KEY_LENGTH} characters"
        )
    return key


def _sf_string(text: str) -> str:
    out: list[str] = []
    index = 1
    while index < len(text):
        char = text[index]
        if char == "\\":
            if index + 1 >= len(text) or text[index + 1] not in '"\\':
                raise InvalidIdempotencyKey(
                    f'{IDEMPOTENCY_KEY_HEADER}: only \\" and \\\\ may be escaped'
                )
            out.append(text[index + 1])
            index += 2
            continue
        if char == '"':
            if index != len(text) - 1:
                raise InvalidIdempotencyKey(
                    f"{IDEMPOTENCY_KEY_HEADER}: nothing may follow the closing quote"
                )
            return "".join(out)
        if not " " <= char <= "~":
            raise InvalidIdempotencyKey(f"{IDEMPOTENCY_KEY_HEADER} must be printable ASCII")
        out.append(char)
        index += 1
    raise InvalidIdempotencyKey(f"{IDEMPOTENCY_KEY_HEADER}: the string has no closing quote")


def _b32(digest: bytes) -> str:
    return base64.b32encode(digest).decode("ascii").lower().rstrip("=")


def request_name(*, namespace: str, agent_name: str, agent_uid: str, key: str) -> str:
    """The AccessRequest name for ``key`` filed by this agent (see the module docstring)."""
    material = json.dumps([namespace, agent_name, agent_uid, key], separators=(",", ":"))
    digest = hashlib.sha256(material.encode("utf-8")).digest()
    return f"{agent_name}-{_b32(digest)[:REQUEST_HASH_LENGTH]}"


def request_digest(
    *,
    capabilities: Sequence[str],
    justification: str,
    duration: str | None,
    context: Mapping[str, Any],
) -> str:
    """A fingerprint of what was asked, to tell a retry from a different request under one key."""
    canonical = json.dumps(
        {
            "capabilities": list(capabilities),
            "justification": justification,
            "duration": duration,
            "context": dict(context),
        },
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=True,
    )
    return "sha256:" + hashlib.sha256(canonical.encode("ascii")).hexdigest()


def slot_name(*, agent_name: str, agent_uid: str, index: int) -> str:
    """The name of the ``index``-th pending slot of this incarnation of the agent."""
    tag = _b32(hashlib.sha256(agent_uid.encode("utf-8")).digest())[:8]
    return f"{agent_name}-jit-{tag}-{index:02d}"


@dataclass(frozen=True, slots=True)
class Slot:
    """A slot Lease as read from the API server."""

    name: str
    holder: str
    acquired_at: datetime.datetime | None
    resource_version: str

    @classmethod
    def from_api(cls, lease: Mapping[str, Any]) -> Slot:
        metadata = lease.get("metadata") or {}
        spec = lease.get("spec") or {}
        acquired: datetime.datetime | None
        try:
            acquired = datetime.datetime.strptime(
                str(spec.get("acquireTime") or ""), LEASE_TIME_FORMAT
            ).replace(tzinfo=datetime.UTC)
        except ValueError:
            acquired = None
        return cls(
            name=str(metadata.get("name") or ""),
            holder=str(spec.get("holderIdentity") or ""),
            acquired_at=acquired,
            resource_version=str(metadata.get("resourceVersion") or ""),
        )


def slot_needs_lookup(slot: Slot, *, now: datetime.datetime) -> bool:
    """Whether a slot whose holder the cache does not know must be looked up in the API
    (its grace has passed), rather than counted as held."""
    return slot.acquired_at is None or now - slot.acquired_at >= SLOT_HOLDER_GRACE


def slot_is_free(slot: Slot, *, holder: HolderState, now: datetime.datetime) -> bool:
    """May this slot be taken over? ``holder`` is what is known of the holder request:
    ``undecided``/``decided`` (cache or API), ``absent`` (the API says 404), ``unknown`` (not in
    the cache and not looked up)."""
    if not slot.holder or holder == "decided":
        return True
    if holder == "absent":
        # not found: free once the filing that took the slot has had time to create it
        return slot_needs_lookup(slot, now=now)
    return False


def slot_lease(
    *,
    name: str,
    namespace: str,
    agent_name: str,
    agent_uid: str,
    holder: str,
    now: datetime.datetime,
    api_version: str,
    resource_version: str | None = None,
) -> dict[str, Any]:
    """The Lease that records ``holder`` in slot ``name``; owned by the Agent, so deleting the
    Agent deletes its slots."""
    metadata: dict[str, Any] = {
        "name": name,
        "namespace": namespace,
        "labels": {SLOT_LABEL: agent_uid},
        "ownerReferences": [
            {"apiVersion": api_version, "kind": "Agent", "name": agent_name, "uid": agent_uid}
        ],
    }
    if resource_version is not None:
        metadata["resourceVersion"] = resource_version
    return {
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": metadata,
        "spec": {
            "holderIdentity": holder,
            "acquireTime": now.astimezone(datetime.UTC).strftime(LEASE_TIME_FORMAT),
        },
    }
