"""Approver notifications: each AccessRequest transition POSTed to the configured webhook.

Configured by ``notify_webhook_url`` (``AGENTAUTH_NOTIFY_WEBHOOK_URL``; the chart reads it from a
Secret) and ``notify_format`` (``json`` or ``slack``). Off when no URL is set.

Guarantees:
- What is sent is :mod:`agentauth.domain.notifications`' payload for the request's state (needs a
  decision, approved, denied, expired, access ended): no token, no credential, never the URL.
- Each (request UID, kind) is delivered at most once per controller run, and across restarts: a
  delivery is recorded as the Event ``<request>.<uid8>.notified-<kind>`` (reason
  ``ApproversNotified``), which is looked up before sending.
- Delivery runs in the background and never delays reconciling. Transport errors, HTTP 408, 429
  and 5xx are retried with exponential backoff (``notify_backoff`` seconds, doubling, at most
  60 s) up to ``notify_attempts`` attempts; any other 4xx is final. A delivery that fails is
  recorded as a Warning Event ``NotificationFailed`` on the AccessRequest saying why (HTTP status
  or error class, never the URL), and is not retried until the controller restarts.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import weakref
from collections.abc import Mapping
from typing import Any

import httpx

from agentauth.controller import runtime
from agentauth.domain import notifications
from agentauth.domain.models import AccessRequest
from agentauth.kube import client as kube

logger = logging.getLogger(__name__)

TIMEOUT_SECONDS = 10.0
MAX_BACKOFF_SECONDS = 60.0
RETRY_STATUSES = frozenset({408, 429})
SENT_REASON = "ApproversNotified"
FAILED_REASON = "NotificationFailed"


class DeliveryFailed(Exception):
    """The webhook did not take the notification; the message is safe to show (no URL)."""


class Notifier:
    """Background delivery for one controller run."""

    def __init__(self, ctl: runtime.Controller) -> None:
        settings = ctl.settings
        self.ctl = ctl
        self.url = settings.notify_webhook_url
        self.fmt: notifications.Format = settings.notify_format  # type: ignore[assignment]
        self.attempts = settings.notify_attempts
        self.backoff = settings.notify_backoff
        self._claimed: set[tuple[str, str]] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    def schedule(
        self,
        request: AccessRequest,
        *,
        request_body: Mapping[str, Any],
        agent_id: str | None,
        now: datetime.datetime,
    ) -> None:
        if not self.url:
            return
        uid = str((request_body.get("metadata") or {}).get("uid", ""))
        for notification in notifications.planned(request, agent_id=agent_id, now=now):
            claim = (uid, notification.key)
            if claim in self._claimed:
                continue
            self._claimed.add(claim)
            task = asyncio.get_running_loop().create_task(
                self._deliver(notification, request_body=request_body, uid=uid)
            )
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _deliver(
        self,
        notification: notifications.Notification,
        *,
        request_body: Mapping[str, Any],
        uid: str,
    ) -> None:
        meta = request_body.get("metadata") or {}
        namespace = str(meta.get("namespace", ""))
        record = f"{meta.get('name')}.{uid[:8]}.notified-{notification.key}"
        try:
            await self.ctl.api.get(kube.EVENTS, record, namespace=namespace)
            return  # delivered before a restart
        except kube.ApiError as exc:
            if exc.code != 404:
                logger.warning("cannot check notification record %s: %s", record, exc)
        try:
            await self._post(notifications.payload(notification, fmt=self.fmt))
        except DeliveryFailed as failure:
            logger.warning(
                "approver notification %s for AccessRequest %s/%s failed: %s",
                notification.key,
                namespace,
                meta.get("name"),
                failure,
            )
            await self._event(
                request_body,
                name=f"{meta.get('name')}.{uid[:8]}.notify-failed-{notification.key}",
                kind="Warning",
                reason=FAILED_REASON,
                message=f"could not notify approvers ({notification.key}): {failure}",
            )
            return
        await self._event(
            request_body,
            name=record,
            kind="Normal",
            reason=SENT_REASON,
            message=f"approvers notified ({notification.key}) through the {self.fmt} webhook",
        )

    async def _post(self, body: dict[str, Any]) -> None:
        if not self.url:
            raise DeliveryFailed("no webhook URL configured")
        problem = "no attempt made"
        async with httpx.AsyncClient(timeout=TIMEOUT_SECONDS, follow_redirects=False) as http:
            for attempt in range(1, self.attempts + 1):
                try:
                    response = await http.post(self.url, json=body)
                except httpx.HTTPError as exc:
                    # The exception text can contain the URL: report its class only.
                    problem = f"{type(exc).__name__} after {attempt} attempt(s)"
                else:
                    if response.status_code < 300:
                        return
                    problem = f"HTTP {response.status_code} after {attempt} attempt(s)"
                    if response.status_code < 500 and response.status_code not in RETRY_STATUSES:
                        raise DeliveryFailed(problem)
                if attempt < self.attempts:
                    delay = min(self.backoff * 2 ** (attempt - 1), MAX_BACKOFF_SECONDS)
                    await asyncio.sleep(delay)
        raise DeliveryFailed(problem)

    async def _event(
        self, request_body: Mapping[str, Any], *, name: str, kind: str, reason: str, message: str
    ) -> None:
        meta = request_body.get("metadata") or {}
        stamp = runtime.utcnow().astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        document = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"name": name, "namespace": meta.get("namespace")},
            "involvedObject": {
                "apiVersion": str(request_body.get("apiVersion", "agentauth.dev/v1alpha1")),
                "kind": "AccessRequest",
                "name": meta.get("name"),
                "namespace": meta.get("namespace"),
                "uid": meta.get("uid"),
            },
            "type": kind,
            "reason": reason,
            "message": message[:1024],
            "source": {"component": runtime.COMPONENT},
            "reportingComponent": runtime.COMPONENT,
            "reportingInstance": runtime.COMPONENT,
            "firstTimestamp": stamp,
            "lastTimestamp": stamp,
            "count": 1,
        }
        try:
            await self.ctl.api.create(kube.EVENTS, document, namespace=str(meta.get("namespace")))
        except kube.ApiError as exc:
            if exc.code != 409:
                logger.warning("cannot post Event %s: %s", reason, exc)


_notifiers: weakref.WeakKeyDictionary[runtime.Controller, Notifier] = weakref.WeakKeyDictionary()


def notifier(ctl: runtime.Controller) -> Notifier:
    """The controller run's notifier (created on first use)."""
    found = _notifiers.get(ctl)
    if found is None:
        found = _notifiers[ctl] = Notifier(ctl)
    return found
