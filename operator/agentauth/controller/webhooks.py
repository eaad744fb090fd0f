"""The controller's admission webhook server (HTTPS, AdmissionReview v1) and its TLS/CA upkeep.

Why not Kopf's admission support: Kopf's ``settings.admission.managed`` owns the webhook
configurations (it rewrites their ``webhooks`` lists from the handlers), while the chart installs
them with our object selectors, namespace selectors, failure policies and, for cert-manager, the
CA-injection annotation. Here the chart owns the configurations and the controller only keeps
their ``caBundle`` current, which needs nothing but ``get``/``patch`` on those two names.

Guarantees:
- One server per controller run; handlers are registered by path with :func:`admission` at import
  time (``pods.py``: ``/mutate/pods``, ``/validate/pods``; ``accessrequests.py``:
  ``/mutate/accessrequests``, ``/validate/accessrequests``) and called with the controller and the
  AdmissionReview ``request``.
- A handler returns :class:`Allowed` (optionally with a JSONPatch) or raises :class:`Denied`;
  any other exception is answered as a denial with code 500 (fail closed), never as allowed.
- Malformed reviews get HTTP 400, unknown paths 404, both with a plain-text reason.
- Slow clients cannot hold connections: a request head must arrive within
  :data:`HEADER_TIMEOUT_SECONDS` of the connection opening (or of the previous response) and a
  body within :data:`BODY_TIMEOUT_SECONDS` of its head, or the connection is closed (a body too
  late is answered 408). The API server sends whole reviews at once and waits 10 s at most.
- Without ``webhook_cert_dir`` the CA comes from ``tls.ensure`` and is patched into the chart's
  Mutating/ValidatingWebhookConfiguration on start and every minute after (a ``helm upgrade``
  that resets ``caBundle`` is repaired within a minute). With it (cert-manager), certificates are
  read from the directory and ``caBundle`` is left to cert-manager's CA injector.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import json
import logging
import ssl
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, cast

from aiohttp import web

from agentauth.controller import runtime, tls
from agentauth.controller import settings as controller_settings
from agentauth.kube import client as kube

logger = logging.getLogger("agentauth.controller.webhooks")

MUTATING = kube.Resource(
    "admissionregistration.k8s.io", "v1", "mutatingwebhookconfigurations", namespaced=False
)
VALIDATING = kube.Resource(
    "admissionregistration.k8s.io", "v1", "validatingwebhookconfigurations", namespaced=False
)
CA_BUNDLE_REFRESH_SECONDS = 60.0


@dataclasses.dataclass(frozen=True)
class Allowed:
    """Admit the object, applying ``patch`` (RFC 6902) when given."""

    patch: list[dict[str, Any]] | None = None
    warnings: tuple[str, ...] = ()


class Denied(Exception):
    """Reject the request; ``message`` is what ``kubectl`` shows the person."""

    def __init__(self, message: str, *, code: int = 403, reason: str = "Forbidden") -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.reason = reason


Handler = Callable[[runtime.Controller, dict[str, Any]], Awaitable[Allowed]]
_HANDLERS: dict[str, Handler] = {}


def admission(path: str) -> Callable[[Handler], Handler]:
    """Register ``handler`` for AdmissionReviews POSTed to ``path``."""

    def decorate(handler: Handler) -> Handler:
        if path in _HANDLERS and _HANDLERS[path] is not handler:
            raise ValueError(f"two admission handlers for {path}")
        _HANDLERS[path] = handler
        return handler

    return decorate


def _response(uid: str, outcome: Allowed | Denied) -> dict[str, Any]:
    body: dict[str, Any] = {"uid": uid}
    if isinstance(outcome, Denied):
        body["allowed"] = False
        body["status"] = {
            "code": outcome.code,
            "reason": outcome.reason,
            "message": outcome.message,
        }
    else:
        body["allowed"] = True
        if outcome.patch:
            body["patchType"] = "JSONPatch"
            body["patch"] = base64.b64encode(json.dumps(outcome.patch).encode()).decode("ascii")
        if outcome.warnings:
            body["warnings"] = list(outcome.warnings)
    return {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "response": body}


HEADER_TIMEOUT_SECONDS = 10.0
BODY_TIMEOUT_SECONDS = 10.0


class WebhookServer:
    """HTTPS server for the registered admission handlers."""

    def __init__(self, ctl: runtime.Controller) -> None:
        self._ctl = ctl
        self._runner: web.AppRunner | None = None
        self.port: int | None = None
        self.ca_pem: bytes | None = None

    async def _handle(self, request: web.Request) -> web.Response:
        handler = _HANDLERS.get(request.path)
        if handler is None:
            return web.Response(status=404, text=f"no admission webhook at {request.path}")
        try:
            raw = await asyncio.wait_for(request.read(), BODY_TIMEOUT_SECONDS)
        except TimeoutError:
            timed_out = web.Response(status=408, text="the AdmissionReview did not arrive in time")
            # Answered, then closed at once: no lingering read of what the client trickles.
            await timed_out.prepare(request)
            await timed_out.write_eof()
            request.protocol.force_close()
            return timed_out
        try:
            review = json.loads(raw)
            admission_request = review["request"]
            uid = str(admission_request["uid"])
            if review.get("kind") != "AdmissionReview" or not isinstance(admission_request, dict):
                raise ValueError("not an AdmissionReview")
        except (ValueError, KeyError, TypeError) as exc:
            return web.Response(status=400, text=f"malformed AdmissionReview: {exc}")
        outcome: Allowed | Denied
        try:
            outcome = await handler(self._ctl, admission_request)
        except Denied as denied:
            outcome = denied
        except Exception as exc:  # fail closed: an unexpected error never admits
            logger.exception("admission handler %s failed", request.path)
            outcome = Denied(f"agentauth webhook error: {exc}", code=500, reason="InternalError")
        return web.json_response(_response(uid, outcome))

    def _ssl_context(self, settings: controller_settings.Settings, material: Any) -> ssl.SSLContext:
        if settings.webhook_cert_dir:
            directory = Path(settings.webhook_cert_dir)
            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            context.minimum_version = ssl.TLSVersion.TLSv1_2
            context.load_cert_chain(directory / "tls.crt", directory / "tls.key")
            return context
        if not isinstance(material, tls.Material):
            raise RuntimeError("webhook TLS material missing: no cert dir and no managed CA")
        return material.ssl_context()

    async def start(self) -> int:
        """Serve; returns the bound port. Patches caBundle first when managing the CA."""
        settings = self._ctl.settings
        material: tls.Material | None = None
        if not settings.webhook_cert_dir:
            material = await tls.ensure(
                self._ctl.api,
                namespace=settings.namespace,
                secret_name=controller_settings.WEBHOOK_TLS_SECRET,
                hosts=settings.webhook_dns_names(),
                now=runtime.utcnow(),
            )
            self.ca_pem = material.ca_crt
            await self.patch_ca_bundles()
        # aiohttp's keep-alive timer runs from the connection's start (or the previous response)
        # until a complete request head arrives: it is the header deadline.
        app = web.Application(
            client_max_size=3 * 1024 * 1024,
            handler_args={"keepalive_timeout": HEADER_TIMEOUT_SECONDS},
        )
        app.router.add_post("/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(
            self._runner,
            settings.webhook_host,
            settings.webhook_port,
            ssl_context=self._ssl_context(settings, material),
        )
        await site.start()
        addresses = self._runner.addresses
        self.port = int(addresses[0][1]) if addresses else settings.webhook_port
        logger.info("admission webhooks serving HTTPS on port %s", self.port)
        return self.port

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def patch_ca_bundles(self) -> None:
        """Put our CA into every webhook of the two chart-installed configurations."""
        if self.ca_pem is None:
            return
        bundle = base64.b64encode(self.ca_pem).decode("ascii")
        settings = self._ctl.settings
        for resource, name in (
            (MUTATING, settings.mutating_webhook_configuration),
            (VALIDATING, settings.validating_webhook_configuration),
        ):
            try:
                config = await self._ctl.api.get(resource, name)
            except kube.ApiError as exc:
                if exc.code == 404:
                    logger.warning("%s %s not found: not patching caBundle", resource.plural, name)
                    continue
                raise
            operations: list[dict[str, Any]] = []
            for index, webhook in enumerate(config.get("webhooks") or []):
                if (webhook.get("clientConfig") or {}).get("caBundle") == bundle:
                    continue
                operations += [
                    {"op": "test", "path": f"/webhooks/{index}/name", "value": webhook["name"]},
                    {
                        "op": "add",
                        "path": f"/webhooks/{index}/clientConfig/caBundle",
                        "value": bundle,
                    },
                ]
            if operations:
                # The client's patch accepts any JSON body; a JSONPatch is a list.
                await self._ctl.api.patch(resource, name, cast(Any, operations), patch_type="json")
                logger.info("patched caBundle into %s %s", resource.plural, name)

    async def keep_ca_bundles(self) -> None:
        while True:
            await asyncio.sleep(CA_BUNDLE_REFRESH_SECONDS)
            try:
                await self.patch_ca_bundles()
            except kube.ApiError as exc:
                logger.warning("cannot patch caBundle: %s", exc)
                self._ctl.failures.append(f"caBundle: {exc}")
