"""``agentauth.domain.filing``: Idempotency-Key parsing, request and slot names, slot rules."""

from __future__ import annotations

import datetime
import re

import pytest

from agentauth.domain import filing

NOW = datetime.datetime(2026, 5, 1, 12, 0, tzinfo=datetime.UTC)
DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")


@pytest.mark.parametrize(
    ("header", "key"),
    [
        (None, None),
        ('"8e03978e-40d5-43e8-bc93-6894a57f9324"', "8e03978e-40d5-43e8-bc93-6894a57f9324"),
        ("8e03978e-40d5-43e8", "8e03978e-40d5-43e8"),
        ('"with space and \\"quote\\" and \\\\"', 'with space and "quote" and \\'),
        ('  "padded"  ', "padded"),
        ("x" * 255, "x" * 255),
    ],
)
def test_idempotency_keys_accepted(header: str | None, key: str | None) -> None:
    assert filing.parse_idempotency_key(header) == key


@pytest.mark.parametrize(
    ("header", "message"),
    [
        ("", "Idempotency-Key must be a quoted string or a token of visible ASCII"),
        ("two words", "Idempotency-Key must be a quoted string or a token of visible ASCII"),
        ("caf\u00e9", "Idempotency-Key must be a quoted string or a token of visible ASCII"),
        ('"', "Idempotency-Key: the string has no closing quote"),
        ('"open', "Idempotency-Key: the string has no closing quote"),
        ('"a"b', "Idempotency-Key: nothing may follow the closing quote"),
        ('"a\\nb"', 'Idempotency-Key: only \\" and \\\\ may be escaped'),
        ('"tab\there"', "Idempotency-Key must be printable ASCII"),
        ('""', "Idempotency-Key must have 1 to 255 characters"),
        ("x" * 256, "Idempotency-Key must have 1 to 255 characters"),
    ],
)
def test_malformed_idempotency_keys_are_refused_with_the_reason(header: str, message: str) -> None:
    with pytest.raises(filing.InvalidIdempotencyKey) as caught:
        filing.parse_idempotency_key(header)
    assert str(caught.value) == message


def name(**overrides: str) -> str:
    arguments = {"namespace": "shop", "agent_name": "buyer", "agent_uid": "uid-1", "key": "k"}
    return filing.request_name(**{**arguments, **overrides})


def test_request_names_are_per_agent_incarnation_and_key() -> None:
    assert name() == name()  # a retry finds the same request
    assert name().startswith("buyer-")
    assert len(name()) == len("buyer-") + filing.REQUEST_HASH_LENGTH
    assert DNS_SUBDOMAIN.match(name())
    # anything about the agent or the key changes it: no one can aim at another's request
    others = {
        name(key="k2"),
        name(agent_uid="uid-2"),  # the same Agent name, re-created
        name(namespace="other"),
        name(agent_name="seller"),
    }
    assert name() not in others and len(others) == 4


def test_request_names_of_agents_with_prefix_names_never_collide() -> None:
    # "buyer" and "buyer-x" share a prefix; the fixed-length hash keeps their names apart
    short = {name(key=str(i)) for i in range(200)}
    longer = {name(agent_name="buyer-x", key=str(i)) for i in range(200)}
    assert not short & longer


def test_request_digest_tells_a_retry_from_a_different_request() -> None:
    def digest(**overrides: object) -> str:
        arguments: dict[str, object] = {
            "capabilities": ["payments.approve"],
            "justification": "invoice 42",
            "duration": None,
            "context": {"invoice": "42"},
        }
        return filing.request_digest(**{**arguments, **overrides})  # type: ignore[arg-type]

    assert digest() == digest()
    assert digest().startswith("sha256:")
    assert digest() != digest(justification="invoice 43")
    assert digest() != digest(duration="5m")
    assert digest() != digest(context={"invoice": "43"})
    assert digest() != digest(capabilities=["payments.refund"])


def test_slot_names_are_per_agent_incarnation() -> None:
    first = filing.slot_name(agent_name="buyer", agent_uid="uid-1", index=7)
    assert first == filing.slot_name(agent_name="buyer", agent_uid="uid-1", index=7)
    assert first.startswith("buyer-jit-") and first.endswith("-07")
    assert DNS_SUBDOMAIN.match(first)
    assert first != filing.slot_name(agent_name="buyer", agent_uid="uid-2", index=7)


def slot(holder: str = "buyer-abc", *, age: float = 60.0) -> filing.Slot:
    return filing.Slot(
        name="buyer-jit-x-00",
        holder=holder,
        acquired_at=NOW - datetime.timedelta(seconds=age),
        resource_version="7",
    )


@pytest.mark.parametrize(
    ("candidate", "holder", "free"),
    [
        (slot(holder=""), "unknown", True),  # released
        (slot(), "decided", True),  # decisions are final
        (slot(), "undecided", False),
        (slot(), "unknown", False),  # not looked up: counted as held
        (slot(age=60), "absent", True),  # the filing that took it never created it
        (slot(age=5), "absent", False),  # it may still be creating it
    ],
)
def test_slot_is_free(candidate: filing.Slot, holder: filing.HolderState, free: bool) -> None:
    assert filing.slot_is_free(candidate, holder=holder, now=NOW) is free


def test_a_slot_holder_is_looked_up_only_after_its_grace() -> None:
    assert not filing.slot_needs_lookup(slot(age=5), now=NOW)
    assert filing.slot_needs_lookup(slot(age=31), now=NOW)
    unreadable = filing.Slot(name="s", holder="h", acquired_at=None, resource_version="1")
    assert filing.slot_needs_lookup(unreadable, now=NOW)


def test_slot_leases_round_trip() -> None:
    lease = filing.slot_lease(
        name="buyer-jit-x-03",
        namespace="shop",
        agent_name="buyer",
        agent_uid="uid-1",
        holder="buyer-abc",
        now=NOW,
        api_version="agentauth.dev/v1alpha1",
        resource_version="12",
    )
    assert lease["metadata"]["labels"] == {filing.SLOT_LABEL: "uid-1"}
    (owner,) = lease["metadata"]["ownerReferences"]
    assert (owner["kind"], owner["name"], owner["uid"]) == ("Agent", "buyer", "uid-1")
    assert lease["spec"]["acquireTime"] == "2026-05-01T12:00:00.000000Z"
    assert filing.Slot.from_api({**lease, "metadata": {**lease["metadata"]}}) == filing.Slot(
        name="buyer-jit-x-03", holder="buyer-abc", acquired_at=NOW, resource_version="12"
    )
