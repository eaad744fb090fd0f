"""Issuer keys in the Secret: create-if-absent under a race, rotation and retirement."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import datetime
import json
from pathlib import Path

import pytest

from agentauth.controller import keys, runtime
from agentauth.domain import keys as domain_keys
from agentauth.kube import client as kube
from agentauth.kube import config as kube_config
from tests.conftest import Kubectl
from tests.controller.conftest import ControllerThread, Install, events_for, free_port, get_json


def stored_keyset(kubectl: Kubectl, namespace: str) -> domain_keys.KeySet:
    secret = get_json(kubectl, "secret", "agentauth-issuer-keys", "-n", namespace)
    return domain_keys.KeySet.from_secret_data(secret["data"])


def test_two_controllers_starting_together_end_with_one_keyset(
    kubectl: Kubectl, install: Install
) -> None:
    assert (
        get_json(kubectl, "secret", "agentauth-issuer-keys", "-n", install.system_namespace) is None
    )
    first = ControllerThread(install.settings)
    second = ControllerThread(dataclasses.replace(install.settings, webhook_port=free_port()))
    first.launch()
    second.launch()
    try:
        for running in (first, second):
            assert running.wait_ready(30)
            assert running.errors == []
        keyset = stored_keyset(kubectl, install.system_namespace)
        assert len(keyset.keys) == 1
        tls = get_json(kubectl, "secret", "agentauth-webhook-tls", "-n", install.system_namespace)
        assert set(tls["data"]) == {"ca.crt", "ca.key", "tls.crt", "tls.key"}
    finally:
        first.stop()
        second.stop()


def sa_client(install: Install) -> kube.KubeClient:
    return kube.KubeClient(kube_config.load(Path(install.kubeconfig)))


async def test_create_race_reads_the_winner(kubectl: Kubectl, install: Install) -> None:
    kubectl(
        "delete",
        "secret",
        "agentauth-issuer-keys",
        "-n",
        install.system_namespace,
        "--ignore-not-found",
    )
    now = runtime.utcnow()
    async with sa_client(install) as one, sa_client(install) as two:
        results = await asyncio.gather(
            keys.ensure_keyset(one, namespace=install.system_namespace, now=now),
            keys.ensure_keyset(two, namespace=install.system_namespace, now=now),
        )
    kids = [r.signing_key().kid for r in results]
    assert kids[0] == kids[1]
    assert stored_keyset(kubectl, install.system_namespace).signing_key().kid == kids[0]


async def test_rotation_then_retirement(kubectl: Kubectl, install: Install) -> None:
    ns = install.system_namespace
    async with sa_client(install) as api:
        ctl = runtime.Controller(settings=install.settings, api=api)
        original = await keys.ensure_keyset(api, namespace=ns, now=runtime.utcnow())
        old_kid = original.signing_key().kid
        created = original.signing_key().created_at

        unchanged = await keys.rotate_once(ctl, now=created + datetime.timedelta(hours=23))
        assert [k.kid for k in unchanged.keys] == [old_kid]

        rotation_time = created + datetime.timedelta(hours=25)
        rotated = await keys.rotate_once(ctl, now=rotation_time)
        new_kid = rotated.signing_key().kid
        assert new_kid != old_kid
        stored = stored_keyset(kubectl, ns)
        assert {k.kid: k.retired_at for k in stored.keys} == {old_kid: rotation_time, new_kid: None}
        assert [k["kid"] for k in stored.public_jwks()["keys"]] == [new_kid, old_kid]

        # Still published while tokens it signed may live (retention 2h >= 1h max lifetime).
        kept = await keys.rotate_once(ctl, now=rotation_time + datetime.timedelta(hours=1))
        assert {k.kid for k in kept.keys} == {old_kid, new_kid}
        dropped = await keys.rotate_once(
            ctl, now=rotation_time + datetime.timedelta(hours=2, seconds=1)
        )
        assert [k.kid for k in dropped.keys] == [new_kid]
        assert [k.kid for k in stored_keyset(kubectl, ns).keys] == [new_kid]

    assert events_for(kubectl, namespace=ns, name="agentauth-issuer-keys", kind="Secret") == [
        ("Normal", "IssuerKeysRotated", f"Issuer keys: new signing key {new_kid}"),
        ("Normal", "IssuerKeysRotated", f"Issuer keys: dropped retired keys {old_kid}"),
    ]


async def test_malformed_secret_is_never_overwritten(kubectl: Kubectl, install: Install) -> None:
    ns = install.system_namespace
    garbage = base64.b64encode(json.dumps({"version": 1, "keys": "nope"}).encode()).decode()
    kubectl(
        "patch",
        "secret",
        "agentauth-issuer-keys",
        "-n",
        ns,
        "--type",
        "merge",
        "-p",
        json.dumps({"data": {"keys.json": garbage}}),
    )
    async with sa_client(install) as api:
        ctl = runtime.Controller(settings=install.settings, api=api)
        with pytest.raises(domain_keys.KeySetError, match="malformed issuer key Secret"):
            await keys.rotate_once(ctl, now=runtime.utcnow())
    secret = get_json(kubectl, "secret", "agentauth-issuer-keys", "-n", ns)
    assert secret["data"]["keys.json"] == garbage
