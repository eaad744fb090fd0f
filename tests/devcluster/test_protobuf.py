"""Decoding kubectl's protobuf request bodies for the built-in kinds it sends that way."""

from __future__ import annotations

import pytest

from agentauth.devcluster import protobuf


def _field(number: int, payload: bytes) -> bytes:
    return bytes([number << 3 | 2, len(payload)]) + payload


def _envelope(api_version: str, kind: str, raw: bytes) -> bytes:
    type_meta = _field(1, api_version.encode()) + _field(2, kind.encode())
    return protobuf.MAGIC + _field(1, type_meta) + _field(2, raw)


def test_configmap_as_kubectl_sends_it() -> None:
    # Bytes captured from `kubectl create configmap x --from-literal=a=b`.
    body = (
        b'k8s\x00\n\x0f\n\x02v1\x12\tConfigMap\x12\x1b\n\x11\n\x01x\x12\x00\x1a\x00"\x00*'
        b'\x002\x008\x00B\x00\x12\x06\n\x01a\x12\x01b\x1a\x00"\x00'
    )
    assert protobuf.decode(body) == {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "x"},
        "data": {"a": "b"},
    }


def test_role_binding() -> None:
    metadata = _field(1, _field(1, b"rb") + _field(3, b"ns"))
    subject = _field(2, _field(1, b"User") + _field(3, b"alice"))
    role_ref = _field(
        3, _field(1, b"rbac.authorization.k8s.io") + _field(2, b"Role") + _field(3, b"r")
    )
    decoded = protobuf.decode(
        _envelope("rbac.authorization.k8s.io/v1", "RoleBinding", metadata + subject + role_ref)
    )
    assert decoded["subjects"] == [{"kind": "User", "name": "alice"}]
    assert decoded["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "Role",
        "name": "r",
    }
    assert decoded["metadata"] == {"name": "rb", "namespace": "ns"}


def test_unsupported_bodies() -> None:
    with pytest.raises(protobuf.ProtobufError) as raised:
        protobuf.decode(b"{}")
    assert str(raised.value) == (
        "provided data does not appear to be a protobuf message, expected prefix [107 56 115 0]"
    )
    with pytest.raises(protobuf.ProtobufError) as raised:
        protobuf.decode(_envelope("v1", "Pod", b""))
    assert str(raised.value) == "protobuf bodies of v1 Pod are not supported; send application/json"
    with pytest.raises(protobuf.ProtobufError) as raised:
        protobuf.decode(protobuf.MAGIC + b"\x0a\xff")
    assert str(raised.value) == "truncated varint"


def test_delete_options_in_protobuf() -> None:
    # What typed clients (Helm's uninstall) send with a delete: propagationPolicy Background.
    type_meta = b"\x0a\x0emeta.k8s.io/v1\x12\x0dDeleteOptions"
    raw = b"\x22\x0aBackground\x2a\x03All"
    envelope = b"\x0a" + bytes([len(type_meta)]) + type_meta + b"\x12" + bytes([len(raw)]) + raw
    assert protobuf.decode(protobuf.MAGIC + envelope) == {
        "propagationPolicy": "Background",
        "dryRun": ["All"],
        "apiVersion": "meta.k8s.io/v1",
        "kind": "DeleteOptions",
    }


def _varint(value: int) -> bytes:
    out = b""
    while True:
        low, value = value & 0x7F, value >> 7
        if not value:
            return out + bytes([low])
        out += bytes([low | 0x80])


def _length_delimited(number: int, payload: bytes) -> bytes:
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        # metadata (a message) sent as a varint of 2**40: bytes(n) would allocate a terabyte
        (
            _varint(1 << 3 | 0) + _varint(1 << 40),
            "wire type 0 where a length-delimited field is expected",
        ),
        # metadata.name as a varint
        (
            _length_delimited(1, _varint(1 << 3 | 0) + _varint(1 << 30)),
            "wire type 0 where a length-delimited field is expected",
        ),
        # metadata.name that is not UTF-8
        (
            _length_delimited(1, _length_delimited(1, b"\xff\xfe")),
            "string field is not valid UTF-8",
        ),
        # data (a map) entry as a fixed 32-bit value
        (_varint(2 << 3 | 5) + b"\x00\x00\x00\x00", "wire type 5 where a map entry is expected"),
        # a fixed 64-bit field cut short
        (_varint(9 << 3 | 1) + b"\x00\x00", "truncated field"),
    ],
)
def test_malformed_fields_are_errors_never_allocations_or_crashes(raw: bytes, message: str) -> None:
    with pytest.raises(protobuf.ProtobufError) as raised:
        protobuf.decode(_envelope("v1", "ConfigMap", raw))
    assert str(raised.value) == message
