"""The controller's settings: one typed, immutable object read from flags and environment.

Guarantees:
- Every setting has exactly one environment variable (``AGENTAUTH_*``, listed per field) and one
  command-line flag; a flag given on the command line wins over the environment, which wins over
  the default.
- Values are validated when the object is built: a bad value raises :class:`SettingsError`
  naming the flag, the environment variable and what is accepted, before anything connects to
  the cluster.
- ``projected_token_expiry`` is never below 600 s (the kubelet rejects shorter projected tokens)
  and ``key_retention`` never below the longest agent-token lifetime (``keys.MAX_TOKEN_LIFETIME``),
  so a rotated-out key stays published while tokens it signed can still be presented.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import os
import urllib.parse
from collections.abc import Mapping, Sequence

from agentauth.domain import claimpolicy, durations
from agentauth.domain import keys as domain_keys

MIN_PROJECTED_TOKEN_EXPIRY = datetime.timedelta(seconds=600)
DEFAULT_NAMESPACE = "agentauth-system"
DEFAULT_WEBHOOK_SERVICE = "agentauth-controller"
DEFAULT_MUTATING_WEBHOOK = "agentauth-pods"
DEFAULT_VALIDATING_WEBHOOK = "agentauth-pods"
WEBHOOK_TLS_SECRET = "agentauth-webhook-tls"
LOG_LEVELS = ("debug", "info", "warning", "error")
NOTIFY_FORMATS = ("json", "slack")


class SettingsError(ValueError):
    """A setting has a value the controller cannot run with."""


@dataclasses.dataclass(frozen=True, kw_only=True)
class Settings:
    """Everything the controller needs to know; see each field for its flag and variable."""

    issuer: str
    """``--issuer`` / ``AGENTAUTH_ISSUER`` (required): the token issuer URL (``iss`` of agent
    tokens, audience of the projected service-account tokens the webhook injects)."""

    token_service_url: str
    """``--token-service-url`` / ``AGENTAUTH_TOKEN_SERVICE_URL`` (default: the issuer): base URL
    of the token service as pods reach it. Pods get ``AGENTAUTH_TOKEN_URL`` =
    ``<this>/oauth2/token`` (see :attr:`token_endpoint`)."""

    trust_domain: str
    """``--trust-domain`` / ``AGENTAUTH_TRUST_DOMAIN`` (default: the issuer's host name): the
    ``@<trust-domain>`` part of agent identifiers ``aauth:<name>.<namespace>@<trust-domain>``."""

    namespace: str = DEFAULT_NAMESPACE
    """``--controller-namespace`` / ``AGENTAUTH_CONTROLLER_NAMESPACE`` (falls back to
    ``POD_NAMESPACE``, then ``agentauth-system``): where the issuer-key Secret and the webhook
    TLS Secret live."""

    watch_namespaces: tuple[str, ...] = ()
    """``--watch-namespace NS`` (repeatable) / ``AGENTAUTH_WATCH_NAMESPACES`` (comma-separated):
    namespaces whose Agents and grants are reconciled. Empty means the whole cluster."""

    key_rotation_interval: datetime.timedelta = domain_keys.DEFAULT_ROTATION_INTERVAL
    """``--key-rotation-interval`` / ``AGENTAUTH_KEY_ROTATION_INTERVAL`` (default ``24h``): age
    at which the current issuer key is retired and a new one made current."""

    key_retention: datetime.timedelta = domain_keys.DEFAULT_RETENTION
    """``--key-retention`` / ``AGENTAUTH_KEY_RETENTION`` (default ``2h``, at least ``1h``): how
    long a retired key stays in the JWKS before it is dropped."""

    key_check_interval: datetime.timedelta = datetime.timedelta(minutes=1)
    """``--key-check-interval`` / ``AGENTAUTH_KEY_CHECK_INTERVAL`` (default ``1m``): how often the
    controller re-reads the key Secret and rotates or retires keys that are due."""

    projected_token_expiry: datetime.timedelta = datetime.timedelta(hours=1)
    """``--projected-token-expiry`` / ``AGENTAUTH_PROJECTED_TOKEN_EXPIRY`` (default ``1h``, at
    least ``600s``): ``expirationSeconds`` of the injected service-account token projection."""

    access_request_expiry: datetime.timedelta = datetime.timedelta(minutes=10)
    """``--access-request-expiry`` / ``AGENTAUTH_ACCESS_REQUEST_EXPIRY`` (default ``10m``): how
    long a pending AccessRequest waits for a decision before it expires."""

    webhook_host: str = "0.0.0.0"  # noqa: S104 - the webhook must be reachable from the API server
    """``--webhook-host`` / ``AGENTAUTH_WEBHOOK_HOST`` (default ``0.0.0.0``): listen address of
    the admission webhook server."""

    webhook_port: int = 9443
    """``--webhook-port`` / ``AGENTAUTH_WEBHOOK_PORT`` (default ``9443``; ``0`` picks a free
    port, for tests and ``agentauth dev``)."""

    webhook_cert_dir: str | None = None
    """``--webhook-cert-dir`` / ``AGENTAUTH_WEBHOOK_CERT_DIR`` (default unset): a directory with
    ``tls.crt`` and ``tls.key`` issued by someone else (cert-manager). When set, the controller
    serves those files and does not touch ``caBundle``; when unset it manages its own CA in the
    ``agentauth-webhook-tls`` Secret and patches ``caBundle`` into the webhook configurations."""

    webhook_service: str = DEFAULT_WEBHOOK_SERVICE
    """``--webhook-service`` / ``AGENTAUTH_WEBHOOK_SERVICE`` (default ``agentauth-controller``):
    the Service in front of the webhook; its DNS names go into the serving certificate."""

    webhook_extra_hosts: tuple[str, ...] = ()
    """``--webhook-extra-host`` (repeatable) / ``AGENTAUTH_WEBHOOK_EXTRA_HOSTS`` (comma-separated):
    extra DNS names or IP addresses for the serving certificate (``127.0.0.1`` in dev)."""

    mutating_webhook_configuration: str = DEFAULT_MUTATING_WEBHOOK
    """``--mutating-webhook-configuration`` / ``AGENTAUTH_MUTATING_WEBHOOK_CONFIGURATION``:
    name of the chart-installed MutatingWebhookConfiguration whose ``caBundle`` is patched."""

    validating_webhook_configuration: str = DEFAULT_VALIDATING_WEBHOOK
    """``--validating-webhook-configuration`` / ``AGENTAUTH_VALIDATING_WEBHOOK_CONFIGURATION``:
    name of the chart-installed ValidatingWebhookConfiguration whose ``caBundle`` is patched."""

    health_host: str = "0.0.0.0"  # noqa: S104 - probes come from the kubelet
    """``--health-host`` / ``AGENTAUTH_HEALTH_HOST``: listen address of ``/healthz``."""

    health_port: int = 8080
    """``--health-port`` / ``AGENTAUTH_HEALTH_PORT`` (default ``8080``; ``0`` disables): Kopf's
    liveness endpoint, served at ``/healthz``."""

    kubeconfig: str | None = None
    """``--kubeconfig`` / ``KUBECONFIG`` (default: in-cluster service account, else
    ``~/.kube/config``): credentials the controller uses to talk to the API server."""

    claim_policy: claimpolicy.ClaimPolicy = dataclasses.field(
        default_factory=claimpolicy.ClaimPolicy
    )
    """``--claim-policy`` / ``AGENTAUTH_CLAIM_POLICY`` (the token service reads the same
    variable): the cluster admin's JSON policy of which namespaces may claim which cloud
    identities and resource URIs (chart value ``claimPolicy``, see
    ``agentauth.domain.claimpolicy``); claims it does not allow are reported on the Agent or
    ToolServer and ignored."""

    workers: int = 32
    """``--workers`` / ``AGENTAUTH_WORKERS`` (default 32): concurrent reconciles. Each waits on up
    to three API round trips (status patch, Events), so it is concurrency, not CPU: at 8, 3,000
    Agents took four times as long to become Ready as at 32 (``bench/controller_bench.py``)."""

    log_level: str = "info"
    """``--log-level`` / ``AGENTAUTH_LOG_LEVEL`` (``debug``, ``info``, ``warning`` or ``error``,
    case-insensitive; default ``info``): the least severe record the controller (and Kopf) log on
    stderr. Applied once at startup by ``agentauth controller``."""

    notify_webhook_url: str | None = dataclasses.field(default=None, repr=False)
    """``--notify-webhook-url`` / ``AGENTAUTH_NOTIFY_WEBHOOK_URL`` (default unset: no
    notifications): where approvers are notified of AccessRequests (a Slack incoming webhook, or
    any endpoint taking JSON). A credential: the chart reads it from a Secret, and it is never
    logged or shown in Events."""

    notify_format: str = "json"
    """``--notify-format`` / ``AGENTAUTH_NOTIFY_FORMAT`` (``json`` or ``slack``; default ``json``):
    the payload shape (``docs/jit.md#notifications``)."""

    notify_attempts: int = 5
    """``--notify-attempts`` / ``AGENTAUTH_NOTIFY_ATTEMPTS`` (default 5, at least 1): delivery
    attempts per notification before it is recorded as failed."""

    notify_backoff: float = 1.0
    """``--notify-backoff`` / ``AGENTAUTH_NOTIFY_BACKOFF`` (seconds, default 1): the wait after the
    first failed attempt; it doubles each time, up to 60 s."""

    @property
    def token_endpoint(self) -> str:
        """What pods get as ``AGENTAUTH_TOKEN_URL``: the RFC 8693 token endpoint."""
        return self.token_service_url.rstrip("/") + "/oauth2/token"

    @property
    def clusterwide(self) -> bool:
        return not self.watch_namespaces

    def webhook_dns_names(self) -> tuple[str, ...]:
        """Names the serving certificate is valid for (Service DNS forms, then extra hosts)."""
        svc, ns = self.webhook_service, self.namespace
        return (
            svc,
            f"{svc}.{ns}",
            f"{svc}.{ns}.svc",
            f"{svc}.{ns}.svc.cluster.local",
            *self.webhook_extra_hosts,
        )

    def __post_init__(self) -> None:
        parsed = urllib.parse.urlsplit(self.issuer)
        if parsed.scheme != "https" or not parsed.hostname:
            raise SettingsError(
                f"--issuer / AGENTAUTH_ISSUER: {self.issuer!r} is not an https:// URL"
            )
        if urllib.parse.urlsplit(self.token_service_url).scheme not in ("https", "http"):
            raise SettingsError(
                "--token-service-url / AGENTAUTH_TOKEN_SERVICE_URL: "
                f"{self.token_service_url!r} is not an http(s) URL"
            )
        if self.projected_token_expiry < MIN_PROJECTED_TOKEN_EXPIRY:
            raise SettingsError(
                "--projected-token-expiry / AGENTAUTH_PROJECTED_TOKEN_EXPIRY: must be at least "
                "600s (the kubelet rejects shorter projected tokens)"
            )
        if self.key_retention < domain_keys.MAX_TOKEN_LIFETIME:
            raise SettingsError(
                "--key-retention / AGENTAUTH_KEY_RETENTION: must be at least 1h (the longest "
                "agent-token lifetime), or tokens would outlive their verification key"
            )
        for name, port in (("webhook-port", self.webhook_port), ("health-port", self.health_port)):
            if not 0 <= port <= 65535:
                raise SettingsError(f"--{name}: {port} is not a TCP port")
        if self.workers < 1:
            raise SettingsError("--workers / AGENTAUTH_WORKERS: must be at least 1")
        if self.notify_webhook_url is not None and urllib.parse.urlsplit(
            self.notify_webhook_url
        ).scheme not in ("https", "http"):
            # Never echo the value: it is a credential.
            raise SettingsError(
                "--notify-webhook-url / AGENTAUTH_NOTIFY_WEBHOOK_URL: not an http(s) URL"
            )
        if self.notify_format not in NOTIFY_FORMATS:
            raise SettingsError(
                f"--notify-format / AGENTAUTH_NOTIFY_FORMAT: {self.notify_format!r} is not one of "
                + ", ".join(NOTIFY_FORMATS)
            )
        if self.notify_attempts < 1:
            raise SettingsError("--notify-attempts / AGENTAUTH_NOTIFY_ATTEMPTS: must be at least 1")
        if not 0 <= self.notify_backoff <= 3600:
            raise SettingsError(
                "--notify-backoff / AGENTAUTH_NOTIFY_BACKOFF: must be between 0 and 3600 seconds"
            )
        if self.log_level not in LOG_LEVELS:
            raise SettingsError(
                f"--log-level / AGENTAUTH_LOG_LEVEL: {self.log_level!r} is not one of "
                + ", ".join(LOG_LEVELS)
            )


# (flag, environment variable, field, kind); kind says how the text is parsed.
_OPTIONS: tuple[tuple[str, str, str, str], ...] = (
    ("--issuer", "AGENTAUTH_ISSUER", "issuer", "str"),
    ("--token-service-url", "AGENTAUTH_TOKEN_SERVICE_URL", "token_service_url", "str"),
    ("--trust-domain", "AGENTAUTH_TRUST_DOMAIN", "trust_domain", "str"),
    ("--controller-namespace", "AGENTAUTH_CONTROLLER_NAMESPACE", "namespace", "str"),
    ("--watch-namespace", "AGENTAUTH_WATCH_NAMESPACES", "watch_namespaces", "list"),
    (
        "--key-rotation-interval",
        "AGENTAUTH_KEY_ROTATION_INTERVAL",
        "key_rotation_interval",
        "duration",
    ),
    ("--key-retention", "AGENTAUTH_KEY_RETENTION", "key_retention", "duration"),
    ("--key-check-interval", "AGENTAUTH_KEY_CHECK_INTERVAL", "key_check_interval", "duration"),
    (
        "--projected-token-expiry",
        "AGENTAUTH_PROJECTED_TOKEN_EXPIRY",
        "projected_token_expiry",
        "duration",
    ),
    (
        "--access-request-expiry",
        "AGENTAUTH_ACCESS_REQUEST_EXPIRY",
        "access_request_expiry",
        "duration",
    ),
    ("--webhook-host", "AGENTAUTH_WEBHOOK_HOST", "webhook_host", "str"),
    ("--webhook-port", "AGENTAUTH_WEBHOOK_PORT", "webhook_port", "int"),
    ("--webhook-cert-dir", "AGENTAUTH_WEBHOOK_CERT_DIR", "webhook_cert_dir", "str"),
    ("--webhook-service", "AGENTAUTH_WEBHOOK_SERVICE", "webhook_service", "str"),
    ("--webhook-extra-host", "AGENTAUTH_WEBHOOK_EXTRA_HOSTS", "webhook_extra_hosts", "list"),
    (
        "--mutating-webhook-configuration",
        "AGENTAUTH_MUTATING_WEBHOOK_CONFIGURATION",
        "mutating_webhook_configuration",
        "str",
    ),
    (
        "--validating-webhook-configuration",
        "AGENTAUTH_VALIDATING_WEBHOOK_CONFIGURATION",
        "validating_webhook_configuration",
        "str",
    ),
    ("--health-host", "AGENTAUTH_HEALTH_HOST", "health_host", "str"),
    ("--health-port", "AGENTAUTH_HEALTH_PORT", "health_port", "int"),
    ("--kubeconfig", "KUBECONFIG", "kubeconfig", "str"),
    ("--workers", "AGENTAUTH_WORKERS", "workers", "int"),
    ("--claim-policy", "AGENTAUTH_CLAIM_POLICY", "claim_policy", "claim_policy"),
    ("--log-level", "AGENTAUTH_LOG_LEVEL", "log_level", "lower"),
    ("--notify-webhook-url", "AGENTAUTH_NOTIFY_WEBHOOK_URL", "notify_webhook_url", "str"),
    ("--notify-format", "AGENTAUTH_NOTIFY_FORMAT", "notify_format", "lower"),
    ("--notify-attempts", "AGENTAUTH_NOTIFY_ATTEMPTS", "notify_attempts", "int"),
    ("--notify-backoff", "AGENTAUTH_NOTIFY_BACKOFF", "notify_backoff", "float"),
)

ENVIRONMENT_VARIABLES: frozenset[str] = frozenset(
    {env for _flag, env, _field, _kind in _OPTIONS} | {"POD_NAMESPACE"}
)
"""Every environment variable the controller reads."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the controller's flags to ``parser`` (the CLI's ``agentauth controller``)."""
    for flag, env, field, kind in _OPTIONS:
        help_text = f"see Settings.{field} in agentauth.controller.settings (environment: {env})"
        if kind == "list":
            parser.add_argument(flag, dest=field, action="append", default=None, help=help_text)
        else:
            parser.add_argument(flag, dest=field, default=None, help=help_text)


def from_sources(
    args: argparse.Namespace | None = None, *, environ: Mapping[str, str] | None = None
) -> Settings:
    """Build :class:`Settings` from parsed flags (winning) and the environment."""
    env = os.environ if environ is None else environ
    values: dict[str, object] = {}
    for flag, env_name, field, kind in _OPTIONS:
        raw: object = getattr(args, field, None) if args is not None else None
        if raw is None and env.get(env_name):
            text = env[env_name]
            raw = [part for part in text.split(",") if part.strip()] if kind == "list" else text
        if raw is None:
            continue
        values[field] = _convert(raw, kind=kind, flag=flag, env_name=env_name)
    if "namespace" not in values and env.get("POD_NAMESPACE"):
        values["namespace"] = env["POD_NAMESPACE"]
    return build(**values)


def build(**values: object) -> Settings:
    """Settings from keyword values, filling the issuer-derived defaults."""
    issuer = values.get("issuer")
    if not isinstance(issuer, str) or not issuer:
        raise SettingsError("--issuer / AGENTAUTH_ISSUER is required (the token issuer URL)")
    values.setdefault("token_service_url", issuer)
    values.setdefault("trust_domain", urllib.parse.urlsplit(issuer).hostname or "")
    return Settings(**values)  # type: ignore[arg-type]


def _convert(raw: object, *, kind: str, flag: str, env_name: str) -> object:
    try:
        if kind == "list":
            parts = raw if isinstance(raw, Sequence) and not isinstance(raw, str) else [raw]
            return tuple(str(part).strip() for part in parts if str(part).strip())
        text = str(raw)
        if kind == "int":
            return int(text)
        if kind == "float":
            return float(text)
        if kind == "duration":
            return durations.parse_duration(text)
        if kind == "lower":
            return text.strip().lower()
        if kind == "claim_policy":
            return claimpolicy.parse(text)
        return text
    except ValueError as exc:
        raise SettingsError(f"{flag} / {env_name}: {exc}") from exc
