"""``kubectl agentauth check [--wait DURATION]``: is the install healthy, and if not, what to do.

Like ``cmctl check api``. Each check prints ``ok``, ``FAIL`` (with a ``fix:`` line) or ``skip``;
the exit status is 0 only when nothing failed. ``--wait`` repeats the whole check until it passes
or the time is up (then exits 1 with the last results).

What is checked, in order:

1. the CRDs are served (discovery of ``agentauth.dev/v1alpha1`` lists all four kinds);
2. the chart's webhook configurations exist and every webhook has a CA bundle holding a
   certificate that is valid now;
3. the webhooks are reachable: a dry-run create of a pod labelled as an agent must be answered by
   agentauth's webhook (admitted or refused by it), not fail with "failed calling webhook";
4. the controller and token-service Deployments (chart labels, any namespace) have ready replicas;
   with none in the cluster (``agentauth dev`` runs both in one process) this is ``skip``;
5. the token service at the issuer URL (the webhook configuration's ``agentauth.dev/issuer``
   annotation, or ``--issuer``) answers ``/readyz`` and publishes at least one key in its JWKS,
   verified against ``--issuer-ca`` / ``AGENTAUTH_CA_FILE`` or the system trust store.

The dry run writes nothing (``dryRun=All``); everything else only reads.
"""

from __future__ import annotations

import argparse
import base64
import dataclasses
import datetime
import os
import ssl
import time
import uuid
from collections.abc import Callable
from typing import Any

import httpx
from cryptography import x509
from kubernetes import client as k8s_client
from kubernetes.client import exceptions as k8s_exceptions
from urllib3 import exceptions as urllib3_exceptions

from agentauth.domain import durations
from agentauth.domain.models import common
from agentauth.kubectl_plugin import commands
from agentauth.kubectl_plugin.errors import PluginError

Command = Callable[..., argparse.ArgumentParser]
KINDS = ("agents", "capabilitygrants", "accessrequests", "toolservers")
PART_OF = "app.kubernetes.io/part-of=agentauth"
ISSUER_ANNOTATION = "agentauth.dev/issuer"
NAMESPACE_ANNOTATION = "agentauth.dev/namespace"
RETRY_SECONDS = 2.0


def add_commands(command: Command) -> None:
    check = command(
        "check",
        cmd_check,
        "check the install: CRDs, webhooks and their CA, controller, token service, issuer keys",
    )
    check.add_argument(
        "--wait",
        metavar="DURATION",
        help="keep checking until healthy or this long has passed (e.g. 2m)",
    )
    check.add_argument(
        "--issuer", help="the issuer URL to probe (default: the one the chart recorded)"
    )
    check.add_argument(
        "--issuer-ca",
        default=os.environ.get("AGENTAUTH_CA_FILE") or None,
        help="CA bundle for the issuer's HTTPS certificate (default: $AGENTAUTH_CA_FILE)",
    )


@dataclasses.dataclass(frozen=True)
class Result:
    name: str
    state: str  # "ok", "FAIL" or "skip"
    detail: str
    fix: str = ""


class _Checker:
    def __init__(self, ctx: commands.Context) -> None:
        self.ctx = ctx
        self.api = ctx.conn.api_client
        self.webhooks: list[Any] = []
        self.issuer: str | None = ctx.options.issuer

    def _api(self, function: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        try:
            return function(*args, **kwargs)
        except (urllib3_exceptions.HTTPError, OSError) as error:
            raise PluginError(
                f"cannot reach the API server {self.ctx.conn.cluster.get('server')} "
                f"(context {self.ctx.conn.context!r}): {error}"
            ) from error

    def crds(self) -> Result:
        name = "CRDs served"
        try:
            found = self._api(
                self.api.call_api,
                f"/apis/{common.GROUP}/{common.VERSION}",
                "GET",
                auth_settings=["BearerToken"],
                response_types_map={200: "object"},
                _return_http_data_only=True,
            )
        except k8s_exceptions.ApiException as error:
            if error.status == 404:
                return Result(
                    name,
                    "FAIL",
                    f"the API server does not serve {common.GROUP}/{common.VERSION}",
                    "install the CRDs: kubectl apply --server-side -f charts/agentauth/crds/",
                )
            return Result(name, "FAIL", f"discovery failed: HTTP {error.status} {error.reason}")
        served = {r.get("name") for r in (found or {}).get("resources", [])}
        missing = [kind for kind in KINDS if kind not in served]
        if missing:
            return Result(
                name,
                "FAIL",
                f"not served: {', '.join(missing)}",
                "apply the CRDs of this version: kubectl apply --server-side -f "
                "charts/agentauth/crds/",
            )
        return Result(name, "ok", f"{', '.join(KINDS)} ({common.GROUP}/{common.VERSION})")

    def webhook_ca(self) -> Result:
        name = "Webhook CA bundles"
        admission = k8s_client.AdmissionregistrationV1Api(self.api)
        try:
            mutating = self._api(
                admission.list_mutating_webhook_configuration, label_selector=PART_OF
            ).items
            validating = self._api(
                admission.list_validating_webhook_configuration, label_selector=PART_OF
            ).items
        except k8s_exceptions.ApiException as error:
            return Result(
                name,
                "FAIL",
                f"cannot list webhook configurations: HTTP {error.status} {error.reason}",
                "run check as a user who may list mutating/validatingwebhookconfigurations",
            )
        configurations = [*mutating, *validating]
        if not mutating:
            return Result(
                name,
                "FAIL",
                "no agentauth MutatingWebhookConfiguration (label " + PART_OF + ")",
                "install the chart: helm install agentauth charts/agentauth -n agentauth-system",
            )
        annotations = mutating[0].metadata.annotations or {}
        self.issuer = self.issuer or annotations.get(ISSUER_ANNOTATION)
        now = datetime.datetime.now(datetime.UTC)
        problems, earliest = [], None
        for configuration in configurations:
            for webhook in configuration.webhooks or []:
                self.webhooks.append(webhook)
                where = f"{configuration.metadata.name}/{webhook.name}"
                bundle = webhook.client_config.ca_bundle
                if not bundle:
                    problems.append(f"{where} has no caBundle")
                    continue
                try:
                    certificates = x509.load_pem_x509_certificates(base64.b64decode(bundle))
                except ValueError:
                    problems.append(f"{where}: caBundle is not a PEM certificate")
                    continue
                for certificate in certificates:
                    end = certificate.not_valid_after_utc
                    if end <= now or certificate.not_valid_before_utc > now:
                        problems.append(f"{where}: CA certificate not valid now (until {end})")
                    earliest = end if earliest is None else min(earliest, end)
        if problems:
            return Result(
                name,
                "FAIL",
                "; ".join(problems),
                "the controller patches the CA bundle when it starts (or cert-manager's "
                "cainjector, with webhook.certManager.enabled): check that it runs, e.g. "
                "kubectl -n agentauth-system logs deploy/agentauth-controller",
            )
        return Result(
            name,
            "ok",
            f"{len(self.webhooks)} webhooks in "
            f"{', '.join(c.metadata.name for c in configurations)}; CA valid until "
            f"{earliest:%Y-%m-%d}",
        )

    def webhook_reachable(self) -> Result:
        name = "Webhooks reachable"
        if not self.webhooks:
            return Result(name, "skip", "no webhook configuration to call")
        probe = f"agentauth-check-{uuid.uuid4().hex[:8]}"
        pod = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": probe, "labels": {"agentauth.dev/agent": probe}},
            "spec": {"containers": [{"name": "probe", "image": "agentauth.invalid/probe:0"}]},
        }
        core = k8s_client.CoreV1Api(self.api)
        try:
            self._api(core.create_namespaced_pod, self.ctx.namespace, pod, dry_run="All")
        except k8s_exceptions.ApiException as error:
            message = _message(error)
            if "failed calling webhook" in message:
                return Result(
                    name,
                    "FAIL",
                    message,
                    "the API server cannot call the controller's webhook: check the controller "
                    "is ready and its Service/URL and CA bundle match "
                    "(kubectl -n agentauth-system get endpoints)",
                )
            if "denied the request" in message and "agentauth.dev" in message:
                return Result(name, "ok", "pod admission answered by agentauth (dry run, refused)")
            return Result(
                name,
                "FAIL",
                f"dry-run pod create in namespace {self.ctx.namespace!r} failed: {message}",
                "run check as a user who may create pods, or with -n NAMESPACE where you may",
            )
        return Result(name, "ok", "pod admission answered by agentauth (dry run)")

    def deployments(self) -> list[Result]:
        apps = k8s_client.AppsV1Api(self.api)
        results = []
        for component, title in (("controller", "Controller"), ("token-service", "Token service")):
            name = f"{title} ready"
            try:
                found = self._api(
                    apps.list_deployment_for_all_namespaces,
                    label_selector=f"{PART_OF},app.kubernetes.io/component={component}",
                ).items
            except k8s_exceptions.ApiException as error:
                results.append(
                    Result(name, "skip", f"cannot list deployments: HTTP {error.status}")
                )
                continue
            if not found:
                results.append(
                    Result(
                        name,
                        "skip",
                        "no Deployment in the cluster (agentauth dev runs it in process)",
                    )
                )
                continue
            for deployment in found:
                where = f"{deployment.metadata.namespace}/{deployment.metadata.name}"
                want = deployment.spec.replicas or 0
                ready = (deployment.status.ready_replicas or 0) if deployment.status else 0
                if ready < 1:
                    results.append(
                        Result(
                            name,
                            "FAIL",
                            f"{where}: {ready}/{want} replicas ready",
                            f"kubectl -n {deployment.metadata.namespace} describe deployment "
                            f"{deployment.metadata.name}; kubectl -n "
                            f"{deployment.metadata.namespace} logs deploy/"
                            f"{deployment.metadata.name}",
                        )
                    )
                else:
                    results.append(Result(name, "ok", f"{where}: {ready}/{want} replicas ready"))
        return results

    def issuer_checks(self) -> list[Result]:
        if not self.issuer:
            return [
                Result(
                    "Token service /readyz",
                    "skip",
                    "issuer unknown (no agentauth.dev/issuer annotation; pass --issuer URL)",
                )
            ]
        issuer = self.issuer.rstrip("/")
        ca = self.ctx.options.issuer_ca
        try:
            verify = ssl.create_default_context(cafile=ca)
        except (OSError, ssl.SSLError) as error:
            raise PluginError(f"cannot load the CA bundle {ca}: {error}") from error
        with httpx.Client(verify=verify, timeout=5.0) as http:
            try:
                ready = http.get(f"{issuer}/readyz")
            except httpx.HTTPError as error:
                fix = f"is {issuer} reachable from here?"
                if "CERTIFICATE_VERIFY_FAILED" in str(error):
                    fix = (
                        "the issuer's certificate is not trusted here: pass --issuer-ca FILE (or "
                        "set AGENTAUTH_CA_FILE) with the CA that signed it"
                    )
                return [Result("Token service /readyz", "FAIL", f"{issuer}: {error}", fix)]
            results = []
            if ready.status_code != 200:
                results.append(
                    Result(
                        "Token service /readyz",
                        "FAIL",
                        f"{issuer}/readyz answered HTTP {ready.status_code}: {ready.text[:200]}",
                        "its caches have not synced: check its logs and RBAC",
                    )
                )
            else:
                results.append(Result("Token service /readyz", "ok", f"{issuer}/readyz 200"))
            try:
                jwks = http.get(f"{issuer}/jwks").json()
                keys = [k for k in jwks.get("keys", []) if isinstance(k, dict)]
            except (httpx.HTTPError, ValueError, AttributeError) as error:
                keys, problem = [], str(error)
            else:
                problem = "the JWKS is empty"
            if keys:
                results.append(
                    Result("Issuer keys", "ok", f"{len(keys)} key(s) published at {issuer}/jwks")
                )
            else:
                results.append(
                    Result(
                        "Issuer keys",
                        "FAIL",
                        f"{issuer}/jwks: {problem}",
                        "the controller creates the keys (Secret agentauth-issuer-keys) when it "
                        "starts: check that it runs",
                    )
                )
            return results

    def run(self) -> list[Result]:
        results = [self.crds(), self.webhook_ca(), self.webhook_reachable()]
        results += self.deployments()
        results += self.issuer_checks()
        return results


def _message(error: k8s_exceptions.ApiException) -> str:
    import json

    try:
        body = json.loads(error.body or "")
    except (TypeError, ValueError):
        body = {}
    return str((body or {}).get("message") or error.reason or "").strip()


def _print(ctx: commands.Context, results: list[Result]) -> None:
    width = max(len(r.name) for r in results) + 2
    for result in results:
        ctx.print(f"{result.name:<{width}}{result.state:<6}{result.detail}")
        if result.fix:
            ctx.print(f"{'':<{width}}fix:  {result.fix}")


def cmd_check(ctx: commands.Context) -> int:
    wait = 0.0
    if ctx.options.wait is not None:
        try:
            wait = durations.parse_duration(ctx.options.wait).total_seconds()
        except ValueError as error:
            raise PluginError(f"--wait: {error}") from error
    deadline = time.monotonic() + wait
    while True:
        results = _Checker(ctx).run()
        failed = [r for r in results if r.state == "FAIL"]
        if not failed or time.monotonic() >= deadline:
            break
        ctx.note(f"not healthy yet ({failed[0].name}: {failed[0].detail}); checking again")
        time.sleep(min(RETRY_SECONDS, max(0.0, deadline - time.monotonic())))
    _print(ctx, results)
    if failed:
        ctx.note(f"{len(failed)} check(s) failed")
        return 1
    return 0
