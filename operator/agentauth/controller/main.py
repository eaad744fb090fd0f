"""Run the controller: Kopf (embedded), the admission webhook server, key rotation, workers.

Guarantees:
- ``run`` returns when ``stop`` is set (or on SIGINT/SIGTERM when Kopf owns the main thread),
  after stopping Kopf, the webhook server, the workers and the timers; it leaves nothing running.
- Every handler module in :data:`HANDLER_MODULES` is imported before Kopf starts, so its
  decorators register.
- Kopf's own settings are set in one place, :func:`configure` (a startup hook): standalone (no
  peering objects; one active controller is ensured by the Deployment's Recreate strategy, see
  the chart), no runtime scanning for new CRDs/namespaces, Events only for warnings and errors.
- Agents, CapabilityGrants and ServiceAccounts are mirrored by the controller's own informers
  (``informers.py``: Kopf's watching costs too much per object at 10,000 of each); everything
  else Kopf watches.
- ``ready`` is set only once every informer has its first listing (and Kopf has started).
- On stop, the Events of status writes already made are still posted (up to
  :data:`EVENT_FLUSH_SECONDS`), so nothing that a restart would not post again is lost.
- The issuer keys exist before anything else starts (create-if-absent), so the token service can
  sign as soon as the controller has run once.
- Kopf's time-based event batching (``settings.queueing.batch_window``) is not set: the Kopf we
  run has removed the batching (the setting is a deprecated no-op that only warns), so it adds
  nothing to the decision-to-agent latency; ``tests/controller/test_kopf_settings.py`` checks.
- :func:`configure_logging` (called once by ``agentauth controller``, never by ``run``, so tests
  and ``agentauth dev`` keep their own logging) applies ``settings.log_level``.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import logging
from pathlib import Path
from types import ModuleType
from typing import Any

import kopf

from agentauth.controller import keys, runtime, webhooks
from agentauth.controller import settings as controller_settings
from agentauth.kube import client as kube
from agentauth.kube import config as kube_config

logger = logging.getLogger("agentauth.controller")

# Every module with Kopf handlers or admission handlers. Add new ones here (and only here).
HANDLER_MODULES = (
    "agentauth.controller.agents",
    "agentauth.controller.grants",
    "agentauth.controller.pods",
    "agentauth.controller.accessrequests",
    "agentauth.controller.toolservers",
)


def import_handlers() -> list[ModuleType]:
    """Import :data:`HANDLER_MODULES` (their decorators register with Kopf as they load)."""
    return [importlib.import_module(name) for name in HANDLER_MODULES]


# How long a stopping controller waits for the Events of its last status writes.
EVENT_FLUSH_SECONDS = 10.0

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def configure_logging(
    settings: controller_settings.Settings, *, stream: Any = None
) -> logging.Handler:
    """Log records at ``settings.log_level`` and above to ``stream`` (default stderr), for the
    whole process (Kopf included). Returns the handler it installed on the root logger."""
    root = logging.getLogger()
    root.setLevel(settings.log_level.upper())
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    root.addHandler(handler)
    return handler


@kopf.on.startup()
async def configure(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    """Kopf's settings, all of them in one place."""
    settings.peering.standalone = True
    settings.scanning.disabled = True
    settings.posting.level = logging.WARNING
    settings.posting.reporting_component = runtime.COMPONENT
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    settings.watching.connect_timeout = 10
    settings.networking.request_timeout = 30
    settings.networking.connect_timeout = 10


@kopf.on.login()
async def login(memo: kopf.Memo, **_: Any) -> kopf.ConnectionInfo:
    """Kopf uses the same credentials as the rest of the controller."""
    ctl: runtime.Controller = memo.controller
    cfg = ctl.api.config
    return kopf.ConnectionInfo(
        server=cfg.server,
        ca_path=str(cfg.ca_file) if cfg.ca_file else None,
        ca_data=cfg.ca_data,
        insecure=cfg.insecure,
        token=cfg.bearer_token(),
        scheme="Bearer" if cfg.bearer_token() else None,
        certificate_path=str(cfg.client_cert_file) if cfg.client_cert_file else None,
        private_key_path=str(cfg.client_key_file) if cfg.client_key_file else None,
        default_namespace=ctl.settings.namespace,
    )


async def run(
    settings: controller_settings.Settings,
    *,
    stop: asyncio.Event | None = None,
    ready: asyncio.Event | None = None,
    on_started: Any = None,
) -> None:
    """Run the controller until ``stop`` is set; ``ready`` is set once the webhooks serve,
    Kopf has started and every informer has its first listing. ``on_started(controller)``
    (optional) is called with the run's :class:`runtime.Controller` (tests and ``agentauth dev``
    read ``webhook_port`` from it)."""
    modules = import_handlers()
    cfg = kube_config.load(Path(settings.kubeconfig) if settings.kubeconfig else None)
    stop_flag = stop if stop is not None else asyncio.Event()
    async with kube.KubeClient(cfg) as api:
        ctl = runtime.Controller(settings=settings, api=api)
        for module in modules:
            register = getattr(module, "register", None)
            if callable(register):
                register(ctl)
        await keys.ensure_keyset(api, namespace=settings.namespace, now=runtime.utcnow())
        server = webhooks.WebhookServer(ctl)
        ctl.webhook_port = await server.start()
        ctl.webhook_ca = server.ca_pem
        tasks = [asyncio.create_task(informer.run()) for informer in ctl.informers.values()]
        tasks += [asyncio.create_task(ctl.work()) for _ in range(settings.workers)]
        tasks.append(asyncio.create_task(keys.keep_rotating(ctl)))
        tasks.append(asyncio.create_task(server.keep_ca_bundles()))
        kopf_ready = asyncio.Event()

        async def signal_ready() -> None:
            await kopf_ready.wait()
            await ctl.wait_synced()  # not ready while the mirrors are still filling
            if on_started is not None:
                on_started(ctl)
            if ready is not None:
                ready.set()

        tasks.append(asyncio.create_task(signal_ready()))
        liveness = (
            f"http://{settings.health_host}:{settings.health_port}/healthz"
            if settings.health_port
            else None
        )
        try:
            await kopf.operator(
                clusterwide=settings.clusterwide,
                namespaces=list(settings.watch_namespaces),
                standalone=True,
                stop_flag=stop_flag,
                ready_flag=kopf_ready,
                memo=kopf.Memo(controller=ctl),
                liveness_endpoint=liveness,
            )
        finally:
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
            await ctl.flush_events(timeout=EVENT_FLUSH_SECONDS)
            ctl.cancel_timers()
            await server.stop()
