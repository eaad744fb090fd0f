"""Issuer key set: generation, rotation and retention, Secret round trip, JWKS."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime, timedelta

import pytest

from agentauth.domain import jose, keys

T0 = datetime(2026, 1, 1, tzinfo=UTC)
DAY = timedelta(days=1)
RETENTION = timedelta(hours=2)


def test_generated_keyset_has_one_current_key_whose_kid_is_its_thumbprint() -> None:
    keyset = keys.generate_keyset(now=T0)
    current = keyset.signing_key()
    assert keyset.keys == (current,)
    assert current.kid == jose.jwk_thumbprint(jose.ed25519_jwk(current.public_key))


def test_secret_round_trip_preserves_keys_and_dates() -> None:
    keyset = keys.rotate(
        keys.generate_keyset(now=T0), now=T0 + DAY, rotation_interval=DAY, retention=RETENTION
    )
    data = keyset.to_secret_data()
    assert list(data) == [keys.SECRET_DATA_KEY]
    restored = keys.KeySet.from_secret_data(data)
    assert [k.kid for k in restored.keys] == [k.kid for k in keyset.keys]
    assert [(k.created_at, k.retired_at) for k in restored.keys] == [
        (k.created_at, k.retired_at) for k in keyset.keys
    ]
    assert restored.signing_key().kid == keyset.signing_key().kid


def test_public_jwks_has_no_private_material_and_lists_current_first() -> None:
    keyset = keys.rotate(
        keys.generate_keyset(now=T0), now=T0 + DAY, rotation_interval=DAY, retention=RETENTION
    )
    jwks = keyset.public_jwks()
    assert jwks["keys"][0]["kid"] == keyset.signing_key().kid
    for jwk in jwks["keys"]:
        assert set(jwk) == {"kty", "crv", "x", "kid", "use", "alg"}
        assert jwk["alg"] == "EdDSA"


def test_rotation_waits_for_the_interval_then_keeps_retired_key_for_retention() -> None:
    first = keys.generate_keyset(now=T0)
    assert (
        keys.rotate(
            first, now=T0 + DAY - timedelta(seconds=1), rotation_interval=DAY, retention=RETENTION
        )
        is first
    )
    rotated = keys.rotate(first, now=T0 + DAY, rotation_interval=DAY, retention=RETENTION)
    assert len(rotated.keys) == 2
    assert rotated.signing_key().kid != first.signing_key().kid
    old = first.signing_key().kid
    assert rotated.verification_key(old) is not None
    still = keys.rotate(
        rotated,
        now=T0 + DAY + RETENTION - timedelta(seconds=1),
        rotation_interval=DAY,
        retention=RETENTION,
    )
    assert old in {k.kid for k in still.keys}
    dropped = keys.rotate(
        rotated, now=T0 + DAY + RETENTION, rotation_interval=DAY, retention=RETENTION
    )
    assert [k.kid for k in dropped.keys] == [rotated.signing_key().kid]
    with pytest.raises(jose.UnknownKeyId, match="unknown key id"):
        dropped.verification_key(old)


def test_retention_shorter_than_the_longest_token_is_refused() -> None:
    with pytest.raises(keys.KeySetError, match="shorter than the max token lifetime"):
        keys.rotate(
            keys.generate_keyset(now=T0),
            now=T0,
            rotation_interval=DAY,
            retention=timedelta(minutes=59),
        )


def test_malformed_secret_data_is_refused() -> None:
    with pytest.raises(keys.KeySetError, match="malformed issuer key Secret: KeyError"):
        keys.KeySet.from_secret_data({})
    bad = base64.b64encode(json.dumps({"keys": [{"kid": "x", "privateKey": "AAAA"}]}).encode())
    with pytest.raises(keys.KeySetError, match="malformed issuer key Secret"):
        keys.KeySet.from_secret_data({keys.SECRET_DATA_KEY: bad.decode()})


def test_secret_with_a_kid_that_does_not_match_its_key_is_refused() -> None:
    data = keys.generate_keyset(now=T0).to_secret_data()
    document = json.loads(base64.b64decode(data[keys.SECRET_DATA_KEY]))
    document["keys"][0]["kid"] = "forged"
    forged = base64.b64encode(json.dumps(document).encode()).decode()
    with pytest.raises(keys.KeySetError, match="kid does not match the key's thumbprint"):
        keys.KeySet.from_secret_data({keys.SECRET_DATA_KEY: forged})
