"""The issuer's signing keys in the Secret ``agentauth-issuer-keys`` (data key ``keys.json``).

Guarantees:
- :func:`ensure_keyset` is create-if-absent: it reads the Secret, and only when there is none
  creates one; losing the create race (409 AlreadyExists) reads and returns the winner's keys, so
  any number of controllers starting together end with one keyset.
- :func:`rotate_once` writes with the Secret's ``resourceVersion`` (optimistic concurrency): two
  writers never both rotate; the loser re-reads on its next round. It writes only when the domain
  rotation (:func:`agentauth.domain.keys.rotate`) changed something, and posts an Event on the
  Secret saying which key is current and which were dropped.
- A Secret that does not parse is never overwritten (that would invalidate every token in
  flight): the controller logs and reports it and leaves the repair to a person.
- Nothing but this module writes the Secret; the token service only reads it.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
from typing import Any

from agentauth.controller import runtime
from agentauth.domain import agents as domain_agents
from agentauth.domain import keys as domain_keys
from agentauth.kube import client as kube

logger = logging.getLogger("agentauth.controller.keys")

LABELS = {"app.kubernetes.io/part-of": "agentauth", "app.kubernetes.io/component": "issuer-keys"}


async def _read(api: kube.KubeClient, namespace: str) -> dict[str, Any] | None:
    return await api.get_or_none(kube.SECRETS, domain_keys.SECRET_NAME, namespace=namespace)


async def ensure_keyset(
    api: kube.KubeClient, *, namespace: str, now: datetime.datetime
) -> domain_keys.KeySet:
    """The issuer keyset, creating the Secret if there is none (see module guarantees)."""
    secret = await _read(api, namespace)
    if secret is None:
        body = {
            "apiVersion": "v1",
            "kind": "Secret",
            "type": "Opaque",
            "metadata": {"name": domain_keys.SECRET_NAME, "namespace": namespace, "labels": LABELS},
            "data": domain_keys.generate_keyset(now=now).to_secret_data(),
        }
        try:
            secret = await api.create(kube.SECRETS, body, namespace=namespace)
            logger.info("created issuer keys in Secret %s/%s", namespace, domain_keys.SECRET_NAME)
        except kube.ApiError as exc:
            if exc.code != 409:
                raise
            secret = await _read(api, namespace)  # another controller won the race: use its keys
            if secret is None:
                raise
    return domain_keys.KeySet.from_secret_data(secret.get("data") or {})


async def rotate_once(ctl: runtime.Controller, *, now: datetime.datetime) -> domain_keys.KeySet:
    """Rotate and retire keys that are due at ``now``; returns the keyset now in the Secret."""
    settings = ctl.settings
    namespace = settings.namespace
    secret = await _read(ctl.api, namespace)
    if secret is None:
        return await ensure_keyset(ctl.api, namespace=namespace, now=now)
    keyset = domain_keys.KeySet.from_secret_data(secret.get("data") or {})
    rotated = domain_keys.rotate(
        keyset,
        now=now,
        rotation_interval=settings.key_rotation_interval,
        retention=settings.key_retention,
    )
    if rotated is keyset:
        return keyset
    secret["data"] = {**(secret.get("data") or {}), **rotated.to_secret_data()}
    try:
        written = await ctl.api.replace(kube.SECRETS, secret, namespace=namespace)
    except kube.ApiError as exc:
        if exc.code == 409:  # someone else wrote it first; their keys win, we re-read next round
            logger.info("issuer keys changed concurrently; keeping the other writer's version")
            return domain_keys.KeySet.from_secret_data(
                (await _read(ctl.api, namespace) or {}).get("data") or {}
            )
        raise
    before = {k.kid for k in keyset.keys}
    after = {k.kid for k in rotated.keys}
    current = rotated.signing_key().kid
    parts = []
    if current != keyset.signing_key().kid:
        parts.append(f"new signing key {current}")
    if before - after:
        parts.append("dropped retired keys " + ", ".join(sorted(before - after)))
    await ctl.post_event(
        body=written,
        kind="Secret",
        event=domain_agents.Event(
            "Normal", "IssuerKeysRotated", "Issuer keys: " + "; ".join(parts)
        ),
    )
    return rotated


async def keep_rotating(ctl: runtime.Controller) -> None:
    """Run :func:`rotate_once` every ``key_check_interval`` until cancelled."""
    interval = ctl.settings.key_check_interval.total_seconds()
    while True:
        try:
            await rotate_once(ctl, now=runtime.utcnow())
        except asyncio.CancelledError:
            raise
        except domain_keys.KeySetError as exc:
            logger.error("issuer key Secret is unusable, not touching it: %s", exc)
            ctl.failures.append(f"issuer keys: {exc}")
        except Exception as exc:
            logger.warning("issuer key rotation failed, retrying: %s", exc)
            ctl.failures.append(f"issuer keys: {exc}")
        await asyncio.sleep(interval)
