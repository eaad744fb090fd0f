"""Dynamic admission: mutating then validating webhooks, called like kube-apiserver calls them.

Guarantees:

- Webhook configurations (``admissionregistration.k8s.io/v1`` Mutating/Validating
  WebhookConfigurations) and namespaces are read from the store at call time, so creating,
  changing or deleting a configuration takes effect on the next request.
- A webhook is called when its ``rules`` match (operations incl. ``*``; apiGroups/apiVersions
  incl. ``*``; resources with kube's subresource forms ``*``, ``pods``, ``pods/status``,
  ``pods/*``, ``*/status``, ``*/*``; ``scope``), its ``namespaceSelector`` matches the request's
  namespace labels (cluster-scoped requests skip it; namespaces match on their own labels; every
  namespace carries ``kubernetes.io/metadata.name``) and its ``objectSelector`` matches the new or
  the old object's labels.
- Calls are ``AdmissionReview`` ``admission.k8s.io/v1`` POSTs over HTTPS only, with ``userInfo``,
  ``object``, ``oldObject``, ``dryRun`` and ``options``, ``?timeout=Ns`` appended as upstream, a
  client timeout of ``timeoutSeconds`` (default 10), and TLS verified against ``caBundle`` (or the
  system roots when it is empty) *and* the host name: the URL's host for ``clientConfig.url``,
  ``NAME.NAMESPACE.svc`` for ``clientConfig.service``, exactly what a real API server checks.
- A response must be an ``admission.k8s.io/v1`` ``AdmissionReview`` echoing the request ``uid``;
  anything else, a TLS failure, a refused connection or a timeout is a *call failure*:
  ``failurePolicy: Ignore`` skips the webhook, ``Fail`` (the default) rejects the request with
  500 ``Internal error occurred: failed calling webhook "NAME": failed to call webhook: ...``.
- A denial (``allowed: false``) always rejects, whatever the failure policy, with
  ``admission webhook "NAME" denied the request: MESSAGE`` and the webhook's ``status.code``
  (at least 400, like upstream's ``ToStatusErr``) and ``status.reason``.
- Mutating webhooks run one after another in configuration-name order; a ``JSONPatch`` response
  (base64) is applied as RFC 6902 to a copy of the object (``patching.json_patch``). With
  ``reinvocationPolicy: IfNeeded`` a webhook that ran before a later webhook changed the object is
  called once more. Validating webhooks run concurrently; the first denial in declared order wins.
- A dry-run request reaches only webhooks declaring ``sideEffects: None`` or ``NoneOnDryRun``; any
  other matching webhook fails the request with 400, as upstream.
- ``warnings`` from responses are appended to the caller's list when one is passed.

Service references in the dev cluster. Nothing is scheduled in the embedded control plane, so a
``clientConfig.service`` has no pod behind a cluster IP. It is resolved to a loopback address, in
this order:

1. an in-process registration, :meth:`AdmissionChain.register_service` (what tests and
   ``agentauth dev`` use when their webhook server listens on an ephemeral port);
2. the stored Service's annotation ``agentauth.dev/dev-endpoint: "HOST:PORT"``;
3. the stored Service itself: every dev "pod" runs on loopback, so the Service's endpoint for the
   referenced ``port`` is ``127.0.0.1:<targetPort>`` (numeric targetPort, defaulting to the port).
   The chart's own Service therefore works unchanged when the controller's webhook server listens
   on its targetPort on loopback.

In every case TLS is still verified for ``NAME.NAMESPACE.svc``, so the serving certificate the
controller makes for its Service is checked exactly as on a real cluster.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import copy
import dataclasses
import json
import logging
import ssl
import uuid
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import urlsplit

import aiohttp

from agentauth.devcluster import patching, rbac, types

ADMISSION_GROUP = "admissionregistration.k8s.io"
REVIEW_API_VERSION = "admission.k8s.io/v1"
DEV_ENDPOINT_ANNOTATION = "agentauth.dev/dev-endpoint"
DEFAULT_TIMEOUT_SECONDS = 10
_MAX_RESPONSE_BYTES = 3 * 1024 * 1024
_OPTIONS_KIND = {"CREATE": "CreateOptions", "UPDATE": "UpdateOptions", "DELETE": "DeleteOptions"}

log = logging.getLogger(__name__)


class AdmissionDenied(Exception):
    """The request is rejected by admission; ``code``/``reason``/``message`` form the ``Status``."""

    def __init__(
        self, code: int, reason: str, message: str, *, details: dict[str, Any] | None = None
    ) -> None:
        super().__init__(message)
        self.code = code
        self.reason = reason
        self.message = message
        self.details = details


class _CallFailed(Exception):
    """A webhook could not be called or answered nonsense: subject to ``failurePolicy``."""


@dataclasses.dataclass(frozen=True)
class _Webhook:
    configuration: str
    spec: dict[str, Any]

    @property
    def name(self) -> str:
        return str(self.spec.get("name", ""))

    @property
    def ignores_failures(self) -> bool:
        return bool(self.spec.get("failurePolicy", "Fail") == "Ignore")

    @property
    def reinvoke_if_needed(self) -> bool:
        return self.spec.get("reinvocationPolicy") == "IfNeeded"


@dataclasses.dataclass(frozen=True)
class _Request:
    operation: str
    attributes: types.RequestAttributes
    kind: dict[str, Any]
    old_obj: dict[str, Any] | None
    user: types.UserInfo
    dry_run: bool


def _labels(obj: Mapping[str, Any] | None) -> dict[str, str]:
    if not obj:
        return {}
    labels = (obj.get("metadata") or {}).get("labels") or {}
    return {str(k): str(v) for k, v in labels.items()} if isinstance(labels, dict) else {}


def _split_resource(pattern: str) -> tuple[str, str]:
    resource, _, subresource = pattern.partition("/")
    return resource, subresource


def _rule_matches(rule: Any, operation: str, attributes: types.RequestAttributes) -> bool:
    """``k8s.io/apiserver/pkg/admission/plugin/webhook/predicates/rules.Matcher``."""
    if not isinstance(rule, dict):
        return False
    operations = rule.get("operations") or []
    groups = rule.get("apiGroups") or []
    versions = rule.get("apiVersions") or []
    resources = rule.get("resources") or []
    if not all(isinstance(x, list) for x in (operations, groups, versions, resources)):
        return False
    if "*" not in operations and operation not in operations:
        return False
    if "*" not in groups and attributes.api_group not in groups:
        return False
    if "*" not in versions and attributes.api_version not in versions:
        return False
    resource_matched = False
    for pattern in resources:
        if not isinstance(pattern, str):
            continue
        resource, subresource = _split_resource(pattern)
        if resource in ("*", attributes.resource) and subresource in ("*", attributes.subresource):
            resource_matched = True
            break
    if not resource_matched:
        return False
    scope = rule.get("scope", "*")
    is_namespace_object = attributes.resource == "namespaces"
    if scope == "Namespaced":
        return not is_namespace_object and bool(attributes.namespace)
    if scope == "Cluster":
        return is_namespace_object or not attributes.namespace
    return bool(scope == "*")


def _decode_ca_bundle(value: Any) -> str | None:
    if not value:
        return None
    try:
        return base64.b64decode(str(value), validate=True).decode("ascii")
    except (binascii.Error, UnicodeDecodeError) as exc:
        raise _CallFailed(f"invalid caBundle: {exc}") from exc


class AdmissionChain:
    """Runs the stored admission webhook configurations against one request."""

    def __init__(self, *, reader: types.ObjectReader) -> None:
        self._reader = reader
        self._services: dict[tuple[str, str, int], tuple[str, int]] = {}
        self._ssl_contexts: dict[str | None, ssl.SSLContext] = {}

    def register_service(
        self,
        *,
        namespace: str,
        name: str,
        port: int = 443,
        host: str = "127.0.0.1",
        target_port: int,
    ) -> None:
        """Route webhook calls for Service ``namespace/name:port`` to ``host:target_port``."""
        self._services[(namespace, name, port)] = (host, target_port)

    def unregister_service(self, *, namespace: str, name: str, port: int = 443) -> None:
        self._services.pop((namespace, name, port), None)

    # -- public API -------------------------------------------------------------------------

    async def mutate(
        self,
        *,
        operation: str,
        attributes: types.RequestAttributes,
        kind: dict[str, Any],
        obj: dict[str, Any] | None,
        old_obj: dict[str, Any] | None,
        user: types.UserInfo,
        dry_run: bool,
        warnings: list[str] | None = None,
    ) -> dict[str, Any] | None:
        """Run the mutating webhooks; return the patched object (``None`` when ``obj`` is)."""
        request = _Request(operation, attributes, kind, old_obj, user, dry_run)
        webhooks = self._webhooks("mutatingwebhookconfigurations")
        current = copy.deepcopy(obj) if obj is not None else None
        # The object as each webhook left it: if a later webhook changed it, an IfNeeded webhook
        # runs once more (patches build new objects, so these snapshots are never mutated).
        left: dict[int, Any] = {}
        for index, webhook in enumerate(webhooks):
            if self._matches(webhook, request, current):
                current = await self._call_mutating(webhook, request, current, warnings)
                left[index] = current
        reinvoke = [
            (index, webhook)
            for index, webhook in enumerate(webhooks)
            if index in left and webhook.reinvoke_if_needed and left[index] != current
        ]
        for _, webhook in reinvoke:
            if self._matches(webhook, request, current):
                current = await self._call_mutating(webhook, request, current, warnings)
        return current

    async def validate(
        self,
        *,
        operation: str,
        attributes: types.RequestAttributes,
        kind: dict[str, Any],
        obj: dict[str, Any] | None,
        old_obj: dict[str, Any] | None,
        user: types.UserInfo,
        dry_run: bool,
        warnings: list[str] | None = None,
    ) -> None:
        """Run the validating webhooks concurrently; raise :class:`AdmissionDenied` to reject."""
        request = _Request(operation, attributes, kind, old_obj, user, dry_run)
        matching = [
            webhook
            for webhook in self._webhooks("validatingwebhookconfigurations")
            if self._matches(webhook, request, obj)
        ]
        if not matching:
            return
        results = await asyncio.gather(
            *(self._call_validating(webhook, request, obj) for webhook in matching),
            return_exceptions=True,
        )
        for result in results:
            if isinstance(result, BaseException):
                raise result
            if warnings is not None:
                warnings.extend(result)

    # -- selection --------------------------------------------------------------------------

    def _webhooks(self, resource: str) -> list[_Webhook]:
        configurations = sorted(
            self._reader.list(group=ADMISSION_GROUP, resource=resource),
            key=lambda item: str((item.get("metadata") or {}).get("name", "")),
        )
        found: list[_Webhook] = []
        for configuration in configurations:
            name = str((configuration.get("metadata") or {}).get("name", ""))
            hooks = configuration.get("webhooks") or []
            if isinstance(hooks, list):
                found.extend(_Webhook(name, hook) for hook in hooks if isinstance(hook, dict))
        return found

    def _matches(self, webhook: _Webhook, request: _Request, obj: dict[str, Any] | None) -> bool:
        rules = webhook.spec.get("rules") or []
        if not isinstance(rules, list) or not any(
            _rule_matches(rule, request.operation, request.attributes) for rule in rules
        ):
            return False
        object_selector = webhook.spec.get("objectSelector")
        if object_selector and not (
            rbac.label_selector_matches(object_selector, _labels(obj))
            or rbac.label_selector_matches(object_selector, _labels(request.old_obj))
        ):
            return False
        namespace_selector = webhook.spec.get("namespaceSelector")
        if namespace_selector:
            labels = self._namespace_labels(request, obj)
            if labels is not None and not rbac.label_selector_matches(namespace_selector, labels):
                return False
        return True

    def _namespace_labels(
        self, request: _Request, obj: dict[str, Any] | None
    ) -> dict[str, str] | None:
        """Labels the namespaceSelector sees; ``None`` means the selector does not apply."""
        attributes = request.attributes
        if attributes.resource == "namespaces" and not attributes.subresource:
            # A namespace is matched on its own labels (the new ones, or the old on delete).
            labels = _labels(obj if obj is not None else request.old_obj)
            labels.setdefault("kubernetes.io/metadata.name", attributes.name)
            return labels
        if not attributes.namespace:
            return None
        stored = self._reader.get(
            group="", resource="namespaces", namespace=None, name=attributes.namespace
        )
        labels = _labels(stored)
        # The real server stamps this label on every namespace; tolerate stores that do not.
        labels["kubernetes.io/metadata.name"] = attributes.namespace
        return labels

    # -- calling ----------------------------------------------------------------------------

    def _review(self, request: _Request, obj: dict[str, Any] | None) -> dict[str, Any]:
        attributes = request.attributes
        name = attributes.name or str(
            ((obj or request.old_obj or {}).get("metadata") or {}).get("name", "")
        )
        resource = {
            "group": attributes.api_group,
            "version": attributes.api_version,
            "resource": attributes.resource,
        }
        body: dict[str, Any] = {
            "uid": str(uuid.uuid4()),
            "kind": dict(request.kind),
            "resource": resource,
            "requestKind": dict(request.kind),
            "requestResource": resource,
            "name": name,
            "operation": request.operation,
            "userInfo": request.user.to_api(),
            "object": obj,
            "oldObject": request.old_obj,
            "dryRun": request.dry_run,
        }
        if attributes.subresource:
            body["subResource"] = attributes.subresource
            body["requestSubResource"] = attributes.subresource
        if attributes.namespace and attributes.resource != "namespaces":
            body["namespace"] = attributes.namespace
        options_kind = _OPTIONS_KIND.get(request.operation)
        if options_kind:
            body["options"] = {"apiVersion": "meta.k8s.io/v1", "kind": options_kind}
        return {"apiVersion": REVIEW_API_VERSION, "kind": "AdmissionReview", "request": body}

    async def _call_mutating(
        self,
        webhook: _Webhook,
        request: _Request,
        obj: dict[str, Any] | None,
        warnings: list[str] | None,
    ) -> dict[str, Any] | None:
        outcome = await self._call(webhook, request, obj, mutating=True)
        if outcome is None:
            return obj
        response, patch = outcome
        if warnings is not None:
            warnings.extend(response)
        if patch is None:
            return obj
        try:
            patched = patching.json_patch(obj, patch)
        except patching.PatchError as exc:
            # Upstream answers a patch that does not apply with an internal error, whatever the
            # failure policy: the webhook did answer, its answer is unusable.
            failed = (
                f'failed calling webhook "{webhook.name}": '
                f"JSON patch could not be applied: {exc.message}"
            )
            raise AdmissionDenied(
                500,
                "InternalError",
                f"Internal error occurred: {failed}",
                details={"causes": [{"message": failed}]},
            ) from exc
        if not isinstance(patched, dict):
            failed = f'failed calling webhook "{webhook.name}": the patched object is not an object'
            raise AdmissionDenied(
                500,
                "InternalError",
                f"Internal error occurred: {failed}",
                details={"causes": [{"message": failed}]},
            )
        return patched

    async def _call_validating(
        self, webhook: _Webhook, request: _Request, obj: dict[str, Any] | None
    ) -> list[str]:
        outcome = await self._call(webhook, request, obj, mutating=False)
        return [] if outcome is None else outcome[0]

    async def _call(
        self, webhook: _Webhook, request: _Request, obj: dict[str, Any] | None, *, mutating: bool
    ) -> tuple[list[str], Any] | None:
        """Call one webhook. ``None`` if a failure was ignored; else (warnings, patch-or-None)."""
        side_effects = webhook.spec.get("sideEffects")
        if request.dry_run and side_effects not in ("None", "NoneOnDryRun"):
            raise AdmissionDenied(
                400, "BadRequest", f'admission webhook "{webhook.name}" does not support dry run'
            )
        try:
            return await self._exchange(webhook, request, obj, mutating=mutating)
        except _CallFailed as exc:
            message = f'failed calling webhook "{webhook.name}": {exc}'
            if webhook.ignores_failures:
                log.warning(
                    "ignoring admission webhook failure (failurePolicy Ignore): %s", message
                )
                return None
            # NewInternalError: the failure is repeated as the Status's only cause.
            raise AdmissionDenied(
                500,
                "InternalError",
                f"Internal error occurred: {message}",
                details={"causes": [{"message": message}]},
            ) from exc

    async def _exchange(
        self, webhook: _Webhook, request: _Request, obj: dict[str, Any] | None, *, mutating: bool
    ) -> tuple[list[str], Any]:
        versions = webhook.spec.get("admissionReviewVersions") or []
        if isinstance(versions, list) and versions and "v1" not in versions:
            raise _CallFailed(
                f"webhook does not accept known AdmissionReview versions {versions!r}, "
                "only v1 is sent"
            )
        timeout = webhook.spec.get("timeoutSeconds", DEFAULT_TIMEOUT_SECONDS)
        if not isinstance(timeout, int) or isinstance(timeout, bool) or not 1 <= timeout <= 30:
            timeout = DEFAULT_TIMEOUT_SECONDS
        client_config = webhook.spec.get("clientConfig") or {}
        if not isinstance(client_config, dict):
            raise _CallFailed("clientConfig must be an object")
        url, connect_url, server_hostname = self._endpoint(client_config)
        display_url = f"{url}{'&' if '?' in url else '?'}timeout={timeout}s"
        target = f"{connect_url}{'&' if '?' in connect_url else '?'}timeout={timeout}s"
        context = self._ssl_context(_decode_ca_bundle(client_config.get("caBundle")))
        review = self._review(request, obj)
        try:
            async with (
                aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout)) as session,
                session.post(
                    target,
                    json=review,
                    ssl=context,
                    server_hostname=server_hostname,
                    headers={"Accept": "application/json"},
                ) as response,
            ):
                if response.status != 200:
                    text = (await response.content.read(4096)).decode("utf-8", "replace")
                    raise _CallFailed(
                        "failed to call webhook: the server responded with "
                        f"HTTP {response.status}: {text}"
                    )
                raw = await response.content.read(_MAX_RESPONSE_BYTES + 1)
        except TimeoutError as exc:
            raise _CallFailed(
                f'failed to call webhook: Post "{display_url}": context deadline exceeded'
            ) from exc
        except aiohttp.ClientError as exc:
            raise _CallFailed(f'failed to call webhook: Post "{display_url}": {exc}') from exc
        if len(raw) > _MAX_RESPONSE_BYTES:
            raise _CallFailed("failed to call webhook: response body too large")
        return self._interpret(webhook, review, raw, mutating=mutating)

    def _interpret(
        self, webhook: _Webhook, review: dict[str, Any], raw: bytes, *, mutating: bool
    ) -> tuple[list[str], Any]:
        try:
            body = json.loads(raw)
        except ValueError as exc:
            raise _CallFailed(f"received invalid webhook response: {exc}") from exc
        if not isinstance(body, dict):
            raise _CallFailed("received invalid webhook response: not an object")
        if body.get("apiVersion") != REVIEW_API_VERSION or body.get("kind") != "AdmissionReview":
            raise _CallFailed(
                f"expected webhook response of {REVIEW_API_VERSION}, Kind=AdmissionReview, got "
                f"{body.get('apiVersion')}, Kind={body.get('kind')}"
            )
        response = body.get("response")
        if not isinstance(response, dict):
            raise _CallFailed("webhook response was absent")
        expected_uid = review["request"]["uid"]
        if response.get("uid") != expected_uid:
            raise _CallFailed(
                f'expected response.uid="{expected_uid}", got "{response.get("uid")}"'
            )
        warnings = [str(w) for w in response.get("warnings") or [] if isinstance(w, str)]
        if response.get("allowed") is not True:
            status = response.get("status") or {}
            if not isinstance(status, dict):
                status = {}
            code = status.get("code")
            if not isinstance(code, int) or isinstance(code, bool) or code < 400:
                code = 400
            reason = str(status.get("reason") or "")
            denied_by = f'admission webhook "{webhook.name}" denied the request'
            if status.get("message"):
                message = f"{denied_by}: {status['message']}"
            elif reason:
                message = f"{denied_by}: {reason}"
            else:
                message = f"{denied_by} without explanation"
            # ToStatusErr keeps the webhook's own details (causes, retryAfterSeconds ...).
            details = status.get("details")
            raise AdmissionDenied(
                code, reason, message, details=details if isinstance(details, dict) else None
            )
        encoded = response.get("patch")
        if not encoded:
            return warnings, None
        if not mutating:
            raise _CallFailed("validating webhook may not return response.patch")
        if response.get("patchType") != "JSONPatch":
            raise _CallFailed(f'expected patchType "JSONPatch", got "{response.get("patchType")}"')
        try:
            patch = json.loads(base64.b64decode(str(encoded), validate=True))
        except (binascii.Error, ValueError) as exc:
            raise _CallFailed(f"received undecodable patch in webhook response: {exc}") from exc
        return warnings, patch

    def _endpoint(self, client_config: dict[str, Any]) -> tuple[str, str, str]:
        """(URL as reported in errors, URL actually dialled, TLS server name to verify)."""
        url = client_config.get("url")
        service = client_config.get("service")
        if url and service:
            raise _CallFailed("exactly one of url or service must be set in clientConfig")
        if url:
            parts = urlsplit(str(url))
            if parts.scheme != "https" or not parts.hostname:
                raise _CallFailed(f'webhook URL "{url}" must be an https URL with a host')
            return str(url), str(url), parts.hostname
        if not isinstance(service, dict) or not service.get("name") or not service.get("namespace"):
            raise _CallFailed("clientConfig needs a url or a service with name and namespace")
        namespace, name = str(service["namespace"]), str(service["name"])
        port = service.get("port", 443)
        if not isinstance(port, int) or isinstance(port, bool):
            raise _CallFailed(f"invalid service port {port!r}")
        path = str(service.get("path") or "/")
        if not path.startswith("/"):
            path = "/" + path
        server_name = f"{name}.{namespace}.svc"
        display = f"https://{server_name}:{port}{path}"
        host, target_port = self._resolve_service(
            namespace=namespace, name=name, port=port, display=display
        )
        host_part = f"[{host}]" if ":" in host else host
        return display, f"https://{host_part}:{target_port}{path}", server_name

    def _resolve_service(
        self, *, namespace: str, name: str, port: int, display: str
    ) -> tuple[str, int]:
        registered = self._services.get((namespace, name, port))
        if registered is not None:
            return registered
        stored = self._reader.get(group="", resource="services", namespace=namespace, name=name)
        if stored is None:
            raise _CallFailed(
                f'failed to call webhook: Post "{display}": service "{name}" not found'
            )
        annotations = (stored.get("metadata") or {}).get("annotations") or {}
        endpoint = (
            annotations.get(DEV_ENDPOINT_ANNOTATION) if isinstance(annotations, dict) else None
        )
        if endpoint:
            host, _, port_text = str(endpoint).rpartition(":")
            if not host or not port_text.isdigit():
                raise _CallFailed(
                    f"failed to call webhook: annotation "
                    f'{DEV_ENDPOINT_ANNOTATION}="{endpoint}" is not HOST:PORT'
                )
            return host.strip("[]"), int(port_text)
        for service_port in (stored.get("spec") or {}).get("ports") or []:
            if isinstance(service_port, dict) and service_port.get("port") == port:
                target = service_port.get("targetPort", port)
                if isinstance(target, int) and not isinstance(target, bool):
                    return "127.0.0.1", target
                raise _CallFailed(
                    f'failed to call webhook: Post "{display}": named targetPort "{target}" '
                    "cannot be resolved in the dev cluster; use a number or the "
                    f"{DEV_ENDPOINT_ANNOTATION} annotation"
                )
        raise _CallFailed(
            f'failed to call webhook: Post "{display}": service "{name}" has no port {port}'
        )

    def _ssl_context(self, ca_pem: str | None) -> ssl.SSLContext:
        context = self._ssl_contexts.get(ca_pem)
        if context is not None:
            return context
        try:
            if ca_pem is None:
                context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
            else:
                context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cadata=ca_pem)
        except ssl.SSLError as exc:
            raise _CallFailed(f"invalid caBundle: {exc}") from exc
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        self._ssl_contexts[ca_pem] = context
        return context


def matches_any_rule(
    rules: Sequence[Any], *, operation: str, attributes: types.RequestAttributes
) -> bool:
    """Whether a webhook's ``rules`` select this request (exposed for the server's own use)."""
    return any(_rule_matches(rule, operation, attributes) for rule in rules)
