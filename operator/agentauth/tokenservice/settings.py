"""The token service's settings: one typed, immutable object read from flags and environment.

Guarantees: every field has one environment variable (``AGENTAUTH_*``) and one flag, a flag wins
over the environment which wins over the default; values are validated when the object is built
(``SettingsError`` names the flag and variable) before anything listens or connects.
:data:`ENVIRONMENT_VARIABLES` is the complete set of variables read (the chart test holds the
Deployment to it). The watched namespaces use the controller's variable and list syntax
(``AGENTAUTH_WATCH_NAMESPACES``, comma-separated), so one chart value feeds both components and the
token service sees every namespace the controller reconciles; the retired singular
``AGENTAUTH_WATCH_NAMESPACE`` is refused rather than ignored (ignoring it would silently widen the
caches to the whole cluster).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import urllib.parse
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Literal, get_args

from agentauth.domain import claimpolicy, delegation, keys, tokens

DEFAULT_NAMESPACE = "agentauth-system"
DEFAULT_CLUSTER_ISSUER = "https://kubernetes.default.svc.cluster.local"
LogLevel = Literal["debug", "info", "warning", "error"]
LOG_LEVELS: tuple[str, ...] = get_args(LogLevel)
RETIRED_WATCH_NAMESPACE = "AGENTAUTH_WATCH_NAMESPACE"
MAX_TIMEOUT_SECONDS = 300.0


class SettingsError(ValueError):
    """A setting has a value the token service cannot run with."""


@dataclasses.dataclass(frozen=True, kw_only=True)
class Settings:
    """Everything the token service needs; each field names its flag and variable."""

    issuer: str
    """``--issuer`` / ``AGENTAUTH_ISSUER`` (required): ``iss`` of agent tokens, the audience
    projected service-account tokens must carry, and the base of the RFC 8414 metadata."""

    public_url: str = ""
    """``--public-url`` / ``AGENTAUTH_TOKEN_SERVICE_URL`` (default: the issuer): the base URL
    clients use; endpoints in the metadata are built from it."""

    trust_domain: str = ""
    """``--trust-domain`` / ``AGENTAUTH_TRUST_DOMAIN`` (default: the issuer's host name)."""

    listen_host: str = "0.0.0.0"  # noqa: S104 - a server in a pod listens on all interfaces
    """``--listen-host`` / ``AGENTAUTH_LISTEN_HOST``."""

    listen_port: int = 8443
    """``--listen-port`` / ``AGENTAUTH_LISTEN_PORT`` (0 picks a free port)."""

    tls_cert: Path | None = None
    """``--tls-cert`` / ``AGENTAUTH_TLS_CERT``: PEM certificate chain; HTTPS when set."""

    tls_key: Path | None = None
    """``--tls-key`` / ``AGENTAUTH_TLS_KEY``: PEM private key for ``tls_cert``."""

    namespace: str = DEFAULT_NAMESPACE
    """``--controller-namespace`` / ``AGENTAUTH_CONTROLLER_NAMESPACE``: where the issuer-key
    Secret ``agentauth-issuer-keys`` (data key ``keys.json``) lives."""

    watch_namespaces: tuple[str, ...] = ()
    """``--watch-namespace NS`` (repeatable) / ``AGENTAUTH_WATCH_NAMESPACES`` (comma-separated,
    the controller's variable): restrict the Agent, grant, AccessRequest, ToolServer and pod
    caches to these namespaces (default: the whole cluster). The chart passes
    ``controller.watchNamespaces`` to both components."""

    kubeconfig: Path | None = None
    """``--kubeconfig`` / ``KUBECONFIG``: default in-cluster, then ``~/.kube/config``."""

    cluster_issuer: str = DEFAULT_CLUSTER_ISSUER
    """``--cluster-issuer`` / ``AGENTAUTH_CLUSTER_ISSUER``: the ``iss`` of the cluster's
    service-account tokens."""

    cluster_jwks_url: str | None = None
    """``--cluster-jwks-url`` / ``AGENTAUTH_CLUSTER_JWKS_URL``: where the cluster's
    service-account signing keys are published (default: the API server's ``/openid/v1/jwks``,
    read with the service's own credentials)."""

    token_review: bool = False
    """``--token-review`` / ``AGENTAUTH_TOKEN_REVIEW`` (``true``/``false``): verify service-account
    tokens with a TokenReview API call instead of locally against the JWKS. TokenReview sees
    revocation (a deleted pod or service account) at the cost of one API call per exchange; local
    verification is fast and the pod cache still refuses tokens of deleted pods."""

    trusted_issuers: tuple[delegation.TrustedIssuer, ...] = ()
    """``--trusted-issuers`` / ``AGENTAUTH_TRUSTED_ISSUERS``: JSON list of
    ``{"issuer", "jwks_url", "audience"}`` whose user tokens may be delegated to agents; each
    may add ``"require_may_act": false`` to accept user tokens without a ``may_act`` claim
    (default ``true``: the user token must name the acting agent)."""

    trusted_ca_file: Path | None = None
    """``--trusted-ca-file`` / ``AGENTAUTH_TRUSTED_CA_FILE``: extra CA bundle for fetching the
    trusted issuers' JWKS (default: the system trust store)."""

    claim_policy: claimpolicy.ClaimPolicy = dataclasses.field(
        default_factory=claimpolicy.ClaimPolicy
    )
    """``--claim-policy`` / ``AGENTAUTH_CLAIM_POLICY`` (the controller reads the same variable):
    the cluster admin's JSON policy of which namespaces may claim which cloud identities and
    resource URIs (chart value ``claimPolicy``, see ``agentauth.domain.claimpolicy``). Default:
    no namespace may claim a cloud identity; resource URIs unrestricted."""

    rate_limit_per_second: float = 20.0
    """``--rate-limit`` / ``AGENTAUTH_RATE_LIMIT``: token requests per agent per second; Ask
    requests have a budget of the same size of their own."""

    rate_limit_burst: int = 40
    """``--rate-limit-burst`` / ``AGENTAUTH_RATE_LIMIT_BURST``: bucket size per agent (token
    requests, and separately Ask requests)."""

    client_rate_limit_per_second: float = 50.0
    """``--client-rate-limit`` / ``AGENTAUTH_CLIENT_RATE_LIMIT``: token-endpoint requests per
    client address per second, counted before the request is parsed (so a flood of bad tokens is
    limited too); ``0`` turns this limit off (e.g. behind a proxy that hides client addresses)."""

    client_rate_limit_burst: int = 100
    """``--client-rate-limit-burst`` / ``AGENTAUTH_CLIENT_RATE_LIMIT_BURST``: bucket size per
    client address."""

    introspection_rate_limit_per_second: float = 50.0
    """``--introspection-rate-limit`` / ``AGENTAUTH_INTROSPECTION_RATE_LIMIT``: introspection
    requests per authenticated caller (agent or service account) per second. Requests are also
    counted per client address against ``--client-rate-limit`` before the caller is
    authenticated."""

    introspection_rate_limit_burst: int = 100
    """``--introspection-rate-limit-burst`` / ``AGENTAUTH_INTROSPECTION_RATE_LIMIT_BURST``: bucket
    size per introspection caller."""

    max_body_bytes: int = 64 * 1024
    """``--max-body-bytes`` / ``AGENTAUTH_MAX_BODY_BYTES``: larger requests get 413."""

    header_timeout: float = 10.0
    """``--header-timeout`` / ``AGENTAUTH_HEADER_TIMEOUT``: seconds a connection may take to send
    a complete request head (from being opened, or from its previous response) before it is
    closed; also how long an idle kept-alive connection stays open."""

    body_timeout: float = 10.0
    """``--body-timeout`` / ``AGENTAUTH_BODY_TIMEOUT``: seconds a request body may take to arrive
    once its head did (408 ``invalid_request`` after that)."""

    aws_sts_test_endpoint: str | None = None
    """``--aws-sts-test-endpoint`` / ``AGENTAUTH_AWS_STS_TEST_ENDPOINT`` (tests only)."""

    gcp_certs_url: str = "https://www.googleapis.com/oauth2/v1/certs"
    """``--gcp-certs-url`` / ``AGENTAUTH_GCP_CERTS_URL``: Google's ID-token certificates
    (override for tests only)."""

    api_timeout: float = 5.0
    """``--api-timeout`` / ``AGENTAUTH_API_TIMEOUT`` (seconds): the deadline of every call to the
    Kubernetes API, and of filing an access request as a whole (past it the agent gets 503 with
    ``Retry-After`` and may retry with the same ``Idempotency-Key``)."""

    shutdown_delay: float = 0.0
    """``--shutdown-delay`` / ``AGENTAUTH_SHUTDOWN_DELAY`` (seconds): after SIGTERM, ``/readyz``
    fails at once but requests are still accepted this long, for load balancers that route by
    readiness. In Kubernetes the chart's ``preStop`` hook does this job instead (endpoints drop a
    terminating pod without waiting for its probe), so the chart leaves this at 0."""

    workers: int = 1
    """``--workers`` / ``AGENTAUTH_WORKERS``: worker processes serving the one listening port
    (``SO_REUSEPORT``: the kernel spreads connections over them), a whole number or ``auto``:
    the CPUs this container may use (its cgroup CPU quota rounded down, else the CPUs it may run
    on; at least 1), at most :data:`MAX_WORKERS`. The workers of a replica share their replay
    caches and rate limits and answer ``/readyz`` together; each keeps its own caches (memory
    and watches per worker: docs/operations.md, "Worker processes"). Default 1."""

    shutdown_timeout: float = 5.0
    """``--shutdown-timeout`` / ``AGENTAUTH_SHUTDOWN_TIMEOUT`` (seconds): once the service stops
    accepting, open long-polls are answered at once and in-flight requests get this long to
    finish; anything still running then is cancelled."""
    token_algorithm: str = tokens.ALGORITHM
    """``--token-algorithm`` / ``AGENTAUTH_TOKEN_ALGORITHM`` (``EdDSA`` or ``Ed25519``, default
    ``EdDSA``): the ``alg`` name agent tokens are issued under and that ``/jwks`` publishes with
    each key. Both names are Ed25519 signatures and both are always accepted on input;
    ``EdDSA`` verifies with pyjwt, joserfc, jwcrypto and the JavaScript ``jose`` package, while
    pyjwt refuses ``Ed25519`` (see docs/token-exchange.md). Every replica must use the same."""

    log_format: Literal["json", "text"] = "json"
    """``--log-format`` / ``AGENTAUTH_LOG_FORMAT``."""

    log_level: LogLevel = "info"
    """``--log-level`` / ``AGENTAUTH_LOG_LEVEL`` (``debug``, ``info``, ``warning``, ``error``;
    case-insensitive): the least severe log record written to stderr. Audit lines (stdout) are
    not affected: every decision is audited at any level."""

    def __post_init__(self) -> None:
        parsed = urllib.parse.urlsplit(self.issuer)
        if parsed.scheme not in ("https", "http") or not parsed.hostname or parsed.query:
            raise SettingsError(
                f"--issuer / AGENTAUTH_ISSUER {self.issuer!r} must be an absolute URL"
            )
        object.__setattr__(self, "issuer", self.issuer.rstrip("/"))
        if not self.public_url:
            object.__setattr__(self, "public_url", self.issuer)
        object.__setattr__(self, "public_url", self.public_url.rstrip("/"))
        if not self.trust_domain:
            object.__setattr__(self, "trust_domain", parsed.hostname)
        if (self.tls_cert is None) != (self.tls_key is None):
            raise SettingsError("--tls-cert and --tls-key must be given together")
        if self.rate_limit_per_second <= 0 or self.rate_limit_burst < 1:
            raise SettingsError("--rate-limit must be > 0 and --rate-limit-burst >= 1")
        if self.introspection_rate_limit_per_second <= 0 or self.introspection_rate_limit_burst < 1:
            raise SettingsError(
                "--introspection-rate-limit must be > 0 and --introspection-rate-limit-burst >= 1"
            )
        if not (0 < self.header_timeout <= 300) or not (0 < self.body_timeout <= 300):
            raise SettingsError("--header-timeout and --body-timeout must be in (0, 300] seconds")
        if self.client_rate_limit_per_second < 0 or self.client_rate_limit_burst < 1:
            raise SettingsError(
                "--client-rate-limit must be >= 0 (0: off) and --client-rate-limit-burst >= 1"
            )
        if not 1 <= self.workers <= MAX_WORKERS:
            raise SettingsError(f"--workers / AGENTAUTH_WORKERS must be 1 to {MAX_WORKERS} or auto")
        for name, flag in (
            ("api_timeout", "--api-timeout"),
            ("shutdown_timeout", "--shutdown-timeout"),
        ):
            if not 0 < getattr(self, name) <= MAX_TIMEOUT_SECONDS:
                raise SettingsError(
                    f"{flag} must be more than 0 and at most {MAX_TIMEOUT_SECONDS:g} seconds"
                )
        if not 0 <= self.shutdown_delay <= MAX_TIMEOUT_SECONDS:
            raise SettingsError(
                f"--shutdown-delay must be between 0 and {MAX_TIMEOUT_SECONDS:g} seconds"
            )
        if self.token_algorithm not in tokens.ALGORITHMS:
            raise SettingsError(
                f"--token-algorithm / AGENTAUTH_TOKEN_ALGORITHM: {self.token_algorithm!r} is not "
                "one of " + ", ".join(tokens.ALGORITHMS)
            )
        if self.log_level not in LOG_LEVELS:
            raise SettingsError(
                f"--log-level / AGENTAUTH_LOG_LEVEL: {self.log_level!r} is not one of "
                + ", ".join(LOG_LEVELS)
            )

    @property
    def token_endpoint(self) -> str:
        return f"{self.public_url}/oauth2/token"

    @property
    def key_secret(self) -> tuple[str, str]:
        return self.namespace, keys.SECRET_NAME


MAX_WORKERS = 64


def available_cpus(*, cgroup: Path = Path("/sys/fs/cgroup")) -> int:
    """The CPUs this process may use: its cgroup's CPU quota (v2 ``cpu.max``, v1
    ``cpu.cfs_quota_us``/``cpu.cfs_period_us``) rounded down, and no more than the CPUs it may
    run on; at least 1, at most :data:`MAX_WORKERS`."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    quota: float | None = None
    try:
        limit, period = (cgroup / "cpu.max").read_text().split()[:2]
        if limit != "max":
            quota = int(limit) / int(period)
    except (OSError, ValueError):
        try:
            limit_us = int((cgroup / "cpu" / "cpu.cfs_quota_us").read_text())
            period_us = int((cgroup / "cpu" / "cpu.cfs_period_us").read_text())
            if limit_us > 0 and period_us > 0:
                quota = limit_us / period_us
        except (OSError, ValueError):
            pass
    found = cpus or 1
    if quota is not None:
        found = min(found, int(quota))
    return max(1, min(found, MAX_WORKERS))


def _parse_trusted(raw: str) -> tuple[delegation.TrustedIssuer, ...]:
    try:
        entries = json.loads(raw)
        parsed = []
        for e in entries:
            require_may_act = e.get("require_may_act", True)
            if not isinstance(require_may_act, bool) or set(e) - _TRUSTED_KEYS:
                raise ValueError("unknown key or non-boolean require_may_act")
            parsed.append(
                delegation.TrustedIssuer(
                    issuer=str(e["issuer"]),
                    jwks_url=str(e["jwks_url"]),
                    audience=str(e["audience"]),
                    require_may_act=require_may_act,
                )
            )
        return tuple(parsed)
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise SettingsError(
            "--trusted-issuers / AGENTAUTH_TRUSTED_ISSUERS must be a JSON list of "
            '{"issuer", "jwks_url", "audience"} with an optional boolean "require_may_act"'
        ) from exc


_TRUSTED_KEYS = frozenset({"issuer", "jwks_url", "audience", "require_may_act"})


def _bool(raw: str) -> bool:
    if raw.lower() in ("1", "true", "yes", "on"):
        return True
    if raw.lower() in ("0", "false", "no", "off", ""):
        return False
    raise SettingsError(f"{raw!r} is not a boolean (true/false)")


_FIELDS: dict[str, tuple[str, str]] = {
    # field: (flag, environment variable)
    "issuer": ("--issuer", "AGENTAUTH_ISSUER"),
    "public_url": ("--public-url", "AGENTAUTH_TOKEN_SERVICE_URL"),
    "trust_domain": ("--trust-domain", "AGENTAUTH_TRUST_DOMAIN"),
    "listen_host": ("--listen-host", "AGENTAUTH_LISTEN_HOST"),
    "listen_port": ("--listen-port", "AGENTAUTH_LISTEN_PORT"),
    "tls_cert": ("--tls-cert", "AGENTAUTH_TLS_CERT"),
    "tls_key": ("--tls-key", "AGENTAUTH_TLS_KEY"),
    "namespace": ("--controller-namespace", "AGENTAUTH_CONTROLLER_NAMESPACE"),
    "watch_namespaces": ("--watch-namespace", "AGENTAUTH_WATCH_NAMESPACES"),
    "kubeconfig": ("--kubeconfig", "KUBECONFIG"),
    "cluster_issuer": ("--cluster-issuer", "AGENTAUTH_CLUSTER_ISSUER"),
    "cluster_jwks_url": ("--cluster-jwks-url", "AGENTAUTH_CLUSTER_JWKS_URL"),
    "token_review": ("--token-review", "AGENTAUTH_TOKEN_REVIEW"),
    "trusted_issuers": ("--trusted-issuers", "AGENTAUTH_TRUSTED_ISSUERS"),
    "trusted_ca_file": ("--trusted-ca-file", "AGENTAUTH_TRUSTED_CA_FILE"),
    "claim_policy": ("--claim-policy", "AGENTAUTH_CLAIM_POLICY"),
    "rate_limit_per_second": ("--rate-limit", "AGENTAUTH_RATE_LIMIT"),
    "rate_limit_burst": ("--rate-limit-burst", "AGENTAUTH_RATE_LIMIT_BURST"),
    "client_rate_limit_per_second": ("--client-rate-limit", "AGENTAUTH_CLIENT_RATE_LIMIT"),
    "client_rate_limit_burst": (
        "--client-rate-limit-burst",
        "AGENTAUTH_CLIENT_RATE_LIMIT_BURST",
    ),
    "introspection_rate_limit_per_second": (
        "--introspection-rate-limit",
        "AGENTAUTH_INTROSPECTION_RATE_LIMIT",
    ),
    "introspection_rate_limit_burst": (
        "--introspection-rate-limit-burst",
        "AGENTAUTH_INTROSPECTION_RATE_LIMIT_BURST",
    ),
    "max_body_bytes": ("--max-body-bytes", "AGENTAUTH_MAX_BODY_BYTES"),
    "header_timeout": ("--header-timeout", "AGENTAUTH_HEADER_TIMEOUT"),
    "body_timeout": ("--body-timeout", "AGENTAUTH_BODY_TIMEOUT"),
    "aws_sts_test_endpoint": ("--aws-sts-test-endpoint", "AGENTAUTH_AWS_STS_TEST_ENDPOINT"),
    "gcp_certs_url": ("--gcp-certs-url", "AGENTAUTH_GCP_CERTS_URL"),
    "token_algorithm": ("--token-algorithm", "AGENTAUTH_TOKEN_ALGORITHM"),
    "log_format": ("--log-format", "AGENTAUTH_LOG_FORMAT"),
    "log_level": ("--log-level", "AGENTAUTH_LOG_LEVEL"),
    "api_timeout": ("--api-timeout", "AGENTAUTH_API_TIMEOUT"),
    "shutdown_delay": ("--shutdown-delay", "AGENTAUTH_SHUTDOWN_DELAY"),
    "shutdown_timeout": ("--shutdown-timeout", "AGENTAUTH_SHUTDOWN_TIMEOUT"),
    "workers": ("--workers", "AGENTAUTH_WORKERS"),
}
_LISTS = frozenset({"watch_namespaces"})

ENVIRONMENT_VARIABLES: frozenset[str] = frozenset(env for _flag, env in _FIELDS.values())
"""Every environment variable the token service reads."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add one flag per setting (all optional; the environment supplies the rest)."""
    for name, (flag, env) in _FIELDS.items():
        if name in _LISTS:
            parser.add_argument(
                flag, dest=name, action="append", default=None, help=f"repeatable (env {env})"
            )
        else:
            parser.add_argument(flag, dest=name, default=None, help=f"(env {env})")


def from_sources(
    *, args: argparse.Namespace | None = None, environ: Mapping[str, str] | None = None
) -> Settings:
    """Build ``Settings`` from parsed flags over environment over defaults."""
    env = os.environ if environ is None else environ
    if env.get(RETIRED_WATCH_NAMESPACE):
        raise SettingsError(
            f"{RETIRED_WATCH_NAMESPACE} is no longer read: set AGENTAUTH_WATCH_NAMESPACES "
            "(comma-separated, as for the controller) or --watch-namespace (repeatable)"
        )
    raw: dict[str, str] = {}
    for name, (_flag, variable) in _FIELDS.items():
        value = getattr(args, name, None) if args is not None else None
        if isinstance(value, list):  # a repeatable flag: joined like its variable
            value = ",".join(value)
        if value is None:
            value = env.get(variable)
        if name == "kubeconfig" and value and os.pathsep in value:
            value = value.split(os.pathsep)[0]
        if value is not None and value != "":
            raw[name] = str(value)
    if "issuer" not in raw:
        raise SettingsError("--issuer / AGENTAUTH_ISSUER is required")
    converted: dict[str, object] = {}
    try:
        for name, value in raw.items():
            if name in (
                "listen_port",
                "rate_limit_burst",
                "client_rate_limit_burst",
                "introspection_rate_limit_burst",
                "max_body_bytes",
            ):
                converted[name] = int(value)
            elif name in (
                "rate_limit_per_second",
                "client_rate_limit_per_second",
                "introspection_rate_limit_per_second",
                "header_timeout",
                "body_timeout",
                "api_timeout",
                "shutdown_delay",
                "shutdown_timeout",
            ):
                converted[name] = float(value)
            elif name in ("tls_cert", "tls_key", "kubeconfig", "trusted_ca_file"):
                converted[name] = Path(value)
            elif name == "token_review":
                converted[name] = _bool(value)
            elif name == "workers":
                converted[name] = available_cpus() if value == "auto" else int(value)
            elif name == "trusted_issuers":
                converted[name] = _parse_trusted(value)
            elif name == "claim_policy":
                try:
                    converted[name] = claimpolicy.parse(value)
                except claimpolicy.PolicyError as exc:
                    raise SettingsError(f"--claim-policy / AGENTAUTH_CLAIM_POLICY: {exc}") from None
            elif name in _LISTS:
                converted[name] = tuple(p.strip() for p in value.split(",") if p.strip())
            elif name == "log_level":
                converted[name] = value.lower()
            elif name == "log_format":
                if value not in ("json", "text"):
                    raise SettingsError("--log-format must be json or text")
                converted[name] = value
            else:
                converted[name] = value
    except ValueError as exc:
        if isinstance(exc, SettingsError):
            raise
        flag, variable = _FIELDS[name]
        raise SettingsError(f"{flag} / {variable}: {value!r} is not valid") from exc
    return Settings(**converted)  # type: ignore[arg-type]


def parse_args(argv: Sequence[str] | None = None) -> Settings:
    parser = argparse.ArgumentParser(prog="agentauth token-service")
    add_arguments(parser)
    return from_sources(args=parser.parse_args(argv))
