"""The ``kubectl agentauth`` subcommands.

Guarantees:
- ``approve`` and ``deny`` append one decision to the request's status through the ``status``
  subresource; the name recorded is whatever user the API server authenticated (agentauth's
  admission webhook stamps it from ``userInfo``), never a string the plugin sends, and the
  webhook refuses users who may not decide (with the reason printed verbatim).
- Every command exits 0 on success and 1 on failure, with ``error: <sentence>`` on stderr.
- ``token decode`` never claims a token is valid; ``token verify`` checks signature, ``typ``,
  ``iss``, ``exp``/``nbf`` (and ``aud`` if given) against the JWKS the issuer publishes.
"""

from __future__ import annotations

import argparse
import datetime
import ssl
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

import httpx
from kubernetes import client as k8s_client
from kubernetes.client import exceptions as k8s_exceptions
from urllib3 import exceptions as urllib3_exceptions

import agentauth
from agentauth.domain import approvals, display, errors, jose, tokens
from agentauth.domain.models import common
from agentauth.kubectl_plugin import connection, output
from agentauth.kubectl_plugin.errors import (
    PluginError,
    from_api_error,
    from_connection_error,
    is_admission_denial,
)
from agentauth.sdk import errors as sdk_errors
from agentauth.sdk import keys as sdk_keys

PHASE_ORDER = {"Pending": 0, None: 0, "Approved": 1, "Denied": 2, "Expired": 3}
MAX_DECISION_ATTEMPTS = 5
ISSUER_METADATA_PATH = "/.well-known/oauth-authorization-server"


class Context:
    """What a command needs: parsed options, output streams, the clock, a lazy API connection."""

    def __init__(self, options: argparse.Namespace, *, stdout: TextIO, stderr: TextIO) -> None:
        self.options = options
        self.stdout = stdout
        self.stderr = stderr
        self.now = datetime.datetime.now(datetime.UTC)
        self._connection: connection.Connection | None = None

    @property
    def conn(self) -> connection.Connection:
        if self._connection is None:
            try:
                self._connection = connection.connect(self.options)
            except connection.KubeconfigError as error:
                raise PluginError(str(error)) from error
        return self._connection

    @property
    def namespace(self) -> str:
        return self.conn.namespace

    def custom(self) -> k8s_client.CustomObjectsApi:
        return k8s_client.CustomObjectsApi(self.conn.api_client)

    def call(
        self,
        function: Callable[..., Any],
        *args: Any,
        action: str,
        what: str,
        namespace: str | None,
        **kwargs: Any,
    ) -> Any:
        """Call the API, translating failures into :class:`PluginError` sentences."""
        try:
            return function(*args, **kwargs)
        except k8s_exceptions.ApiException as error:
            raise from_api_error(
                error, action=action, what=what, namespace=namespace, context=self.conn.context
            ) from error
        except (urllib3_exceptions.HTTPError, OSError) as error:
            raise from_connection_error(
                error,
                server=str(self.conn.cluster.get("server")),
                context=self.conn.context,
                action=action,
                what=what,
                timeout=self.conn.request_timeout,
            ) from error

    def print(self, text: str = "") -> None:
        self.stdout.write(text + "\n")

    def note(self, text: str) -> None:
        self.stderr.write(text + "\n")


# --- access requests ------------------------------------------------------------------------


def _list(ctx: Context, plural: str, *, all_namespaces: bool) -> list[dict[str, Any]]:
    api = ctx.custom()
    if all_namespaces:
        result = ctx.call(
            api.list_cluster_custom_object,
            common.GROUP,
            common.VERSION,
            plural,
            action="list",
            what=plural,
            namespace=None,
        )
    else:
        result = ctx.call(
            api.list_namespaced_custom_object,
            common.GROUP,
            common.VERSION,
            ctx.namespace,
            plural,
            action="list",
            what=plural,
            namespace=ctx.namespace,
        )
    items: list[dict[str, Any]] = result.get("items", [])
    return items


def _namespaces_holding(ctx: Context, name: str) -> list[str]:
    """Namespaces with an AccessRequest called ``name`` that this user may list (else [])."""
    try:
        found = ctx.custom().list_cluster_custom_object(
            common.GROUP,
            common.VERSION,
            "accessrequests",
            field_selector=f"metadata.name={name}",
        )
    except (k8s_exceptions.ApiException, urllib3_exceptions.HTTPError, OSError):
        return []
    return sorted(
        {i["metadata"].get("namespace", "") for i in found.get("items", [])} - {ctx.namespace}
    )


def _get_request(ctx: Context, name: str) -> dict[str, Any]:
    try:
        obj: dict[str, Any] = ctx.call(
            ctx.custom().get_namespaced_custom_object,
            common.GROUP,
            common.VERSION,
            ctx.namespace,
            "accessrequests",
            name,
            action="read",
            what=f"access request {name!r}",
            namespace=ctx.namespace,
        )
    except PluginError as error:
        cause = error.__cause__
        if not (isinstance(cause, k8s_exceptions.ApiException) and cause.status == 404):
            raise
        elsewhere = _namespaces_holding(ctx, name)
        if not elsewhere:
            raise
        command = getattr(ctx.options, "command", None) or "describe"
        raise PluginError(
            f"access request {name!r} not found in namespace {ctx.namespace!r}; it exists in "
            f"namespace {', '.join(repr(ns) for ns in elsewhere)}: pass -n, e.g. "
            f"'kubectl agentauth {command} {name} -n {elsewhere[0]}'"
        ) from error
    return obj


def _request_sort_key(item: dict[str, Any]) -> tuple[int, str, str]:
    status = item.get("status") or {}
    phase = status.get("phase")
    meta = item.get("metadata", {})
    if phase in ("Pending", None):
        # Pending: the one that expires first is the most urgent.
        return (0, str(status.get("expiresAt") or ""), meta.get("name", ""))
    # Decided: newest first (inverted timestamp ordering through a negated sort string).
    created = output.parse_time(meta.get("creationTimestamp"))
    stamp = f"{10**12 - int(created.timestamp()):013d}" if created else ""
    return (PHASE_ORDER.get(phase, 4), stamp, meta.get("name", ""))


def cmd_requests(ctx: Context) -> int:
    options = ctx.options
    items = _list(ctx, "accessrequests", all_namespaces=options.all_namespaces)
    if not options.all:
        items = [i for i in items if (i.get("status") or {}).get("phase") in ("Pending", None)]
    items.sort(key=_request_sort_key)
    if options.output:
        output.dump(output.as_list(items), fmt=options.output, stream=ctx.stdout)
        return 0
    if not items:
        scope = "any namespace" if options.all_namespaces else f"namespace {ctx.namespace!r}"
        kind = "access requests" if options.all else "pending access requests"
        ctx.note(f"No {kind} in {scope}.")
        return 0
    headers = ["NAME", "AGENT", "PHASE", "CAPABILITIES", "APPROVALS", "EXPIRES", "AGE"]
    headers.append("JUSTIFICATION")
    if options.all_namespaces:
        headers.insert(0, "NAMESPACE")
    rows = []
    for item in items:
        meta, spec, status = item["metadata"], item.get("spec", {}), item.get("status") or {}
        phase = status.get("phase") or "New"
        if phase == "Approved":
            expires = "until " + output.until(status.get("grantedUntil"), now=ctx.now)
        elif phase == "Pending":
            expires = output.until(status.get("expiresAt"), now=ctx.now)
        else:
            expires = "-"
        row = [
            meta.get("name", ""),
            spec.get("agent", ""),
            phase,
            ",".join(spec.get("capabilities", [])),
            str(len(status.get("approvals", []))),
            expires,
            output.age(meta.get("creationTimestamp"), now=ctx.now),
            # Written by the requester: quoted, so it cannot pass for our own text.
            display.quote(spec.get("justification", ""), limit=approvals.MAX_JUSTIFICATION),
        ]
        if options.all_namespaces:
            row.insert(0, meta.get("namespace", ""))
        rows.append(row)
    ctx.print(output.table(headers, rows, width=output.terminal_width(), flexible="JUSTIFICATION"))
    return 0


def _events_for(ctx: Context, *, kind: str, name: str, namespace: str) -> list[Any]:
    core = k8s_client.CoreV1Api(ctx.conn.api_client)
    result = ctx.call(
        core.list_namespaced_event,
        namespace,
        action="list events for",
        what=f"{kind} {name!r}",
        namespace=namespace,
    )
    events = [
        event
        for event in result.items
        if event.involved_object.kind == kind and event.involved_object.name == name
    ]

    def moment(event: Any) -> datetime.datetime:
        stamp = event.last_timestamp or event.event_time or event.metadata.creation_timestamp
        return output.parse_time(stamp) or ctx.now

    events.sort(key=moment)
    return events


def cmd_describe(ctx: Context) -> int:
    item = _get_request(ctx, ctx.options.name)
    if ctx.options.output:
        output.dump(item, fmt=ctx.options.output, stream=ctx.stdout)
        return 0
    meta, spec, status = item["metadata"], item.get("spec", {}), item.get("status") or {}
    name, namespace = meta.get("name", ""), meta.get("namespace", ctx.namespace)
    requester = spec.get("requester") or {}
    agent_id = _agent_id(ctx, spec.get("agent", ""), namespace=namespace)
    lines = [
        f"Name:           {name}",
        f"Namespace:      {namespace}",
        f"Agent:          {spec.get('agent', '')} ({agent_id})",
        f"Filed by:       {display.clean(requester.get('username', '<not stamped>'))}",
        f"Capabilities:   {', '.join(spec.get('capabilities', []))}",
        f"Duration:       {spec.get('duration', '')}",
        f"Phase:          {status.get('phase') or 'New'}",
        f"Created:        {meta.get('creationTimestamp', '')} "
        f"({output.age(meta.get('creationTimestamp'), now=ctx.now)} ago)",
    ]
    if status.get("expiresAt"):
        lines.append(
            f"Expires At:     {status['expiresAt']} "
            f"({output.until(status['expiresAt'], now=ctx.now)})"
        )
    if status.get("grantedUntil"):
        lines.append(
            f"Granted Until:  {status['grantedUntil']} "
            f"({output.until(status['grantedUntil'], now=ctx.now)})"
        )
    # What the requester and approvers wrote is shown quoted (display.quote: one line, escaped,
    # control characters and terminal escapes removed), never as lines of our own layout.
    limit = approvals.MAX_JUSTIFICATION
    lines.append(f"Justification:  {display.quote(spec.get('justification', ''), limit=limit)}")
    if spec.get("context"):
        lines.append("Context:")
        lines.extend(
            f"  {display.clean(key, limit=63)}: {display.quote(value)}"
            for key, value in sorted(spec["context"].items())
        )
    for title, key in (("Approvals", "approvals"), ("Denials", "denials")):
        entries = status.get(key) or []
        lines.append(f"{title + ':':<16}<none>" if not entries else f"{title}:")
        for entry in entries:
            comment = (
                f"; comment: {display.quote(entry.get('comment'), limit=approvals.MAX_COMMENT)}"
                if entry.get("comment")
                else ""
            )
            lines.append(
                f"  {display.clean(entry.get('user'))} at {display.clean(entry.get('time'))}"
                f"{comment}"
            )
    conditions = status.get("conditions") or []
    if conditions:
        lines.append("Conditions:")
        for condition in conditions:
            lines.append(
                f"  {display.clean(condition.get('type'))}={display.clean(condition.get('status'))}"
                f" ({display.clean(condition.get('reason'))}): "
                f"{display.clean(condition.get('message', ''), limit=2048)}"
            )
    if status.get("phase") == "Pending":
        lines.append("To decide:")
        lines.append(f"  {approvals.approve_command(name=name, namespace=namespace)}")
        lines.append(f"  {approvals.deny_command(name=name, namespace=namespace)}")
    events = _events_for(ctx, kind="AccessRequest", name=name, namespace=namespace)
    lines.append(f"{'Events:':<16}<none>" if not events else "Events:")
    if events:
        rows = [
            [
                event.type or "",
                event.reason or "",
                output.age(
                    event.last_timestamp or event.event_time or event.metadata.creation_timestamp,
                    now=ctx.now,
                ),
                event.message or "",
            ]
            for event in events
        ]
        table = output.table(
            ["TYPE", "REASON", "AGE", "MESSAGE"],
            rows,
            width=max(40, output.terminal_width() - 2),
            flexible="MESSAGE",
        )
        lines.extend(f"  {line}" for line in table.splitlines())
    ctx.print("\n".join(lines))
    return 0


def _agent_id(ctx: Context, agent: str, *, namespace: str) -> str:
    """The asking Agent's ID from its status, or why it cannot be shown."""
    try:
        found = ctx.custom().get_namespaced_custom_object(
            common.GROUP, common.VERSION, namespace, "agents", agent
        )
    except k8s_exceptions.ApiException as error:
        if error.status == 404:
            return "no such Agent in this namespace"
        return f"agent ID not readable: HTTP {error.status}"
    except (urllib3_exceptions.HTTPError, OSError):
        return "agent ID not readable"
    return str((found.get("status") or {}).get("agentID") or "agent ID not assigned yet")


def _decide(ctx: Context, *, kind: approvals.DecisionKind) -> int:
    name = ctx.options.name
    comment = ctx.options.comment if kind == "Approve" else ctx.options.reason
    verb = "approve" if kind == "Approve" else "deny"
    try:
        comment = approvals.validate_comment(comment or "", kind=kind)
    except approvals.ApprovalError as error:
        raise PluginError(error.message) from error
    field = "approvals" if kind == "Approve" else "denials"
    what = f"access request {name!r}"
    api = ctx.custom()
    for _attempt in range(MAX_DECISION_ATTEMPTS):
        item = _get_request(ctx, name)
        status = item.setdefault("status", {}) or {}
        item["status"] = status
        phase = status.get("phase")
        if phase is None:
            raise PluginError(
                f"cannot {verb} {what}: the agentauth controller has not processed it yet "
                "(no phase); is the controller running? Try again in a moment"
            )
        if phase != "Pending":
            raise PluginError(
                f"cannot {verb} {what}: it is {phase}; only Pending requests can be approved "
                "or denied"
            )
        # ``user`` and ``time`` are placeholders: the admission webhook replaces them with the
        # authenticated caller and the server's clock, and refuses the write if it cannot.
        status.setdefault(field, []).append(
            {"user": "", "time": ctx.now.strftime("%Y-%m-%dT%H:%M:%SZ"), "comment": comment}
        )
        try:
            result = api.replace_namespaced_custom_object_status(
                common.GROUP,
                common.VERSION,
                ctx.namespace,
                "accessrequests",
                name,
                item,
            )
        except k8s_exceptions.ApiException as error:
            # A write race (resourceVersion conflict) is retried; a webhook's 409 (closed,
            # already decided) is the answer.
            if error.status == 409 and not is_admission_denial(error):
                continue
            raise from_api_error(
                error, action=verb, what=what, namespace=ctx.namespace, context=ctx.conn.context
            ) from error
        except (urllib3_exceptions.HTTPError, OSError) as error:
            raise from_connection_error(
                error,
                server=str(ctx.conn.cluster.get("server")),
                context=ctx.conn.context,
                action=verb,
                what=what,
                timeout=ctx.conn.request_timeout,
            ) from error
        recorded = (result.get("status") or {}).get(field) or [{}]
        user = recorded[-1].get("user") or "you"
        done = "approved" if kind == "Approve" else "denied"
        ctx.print(f"accessrequest {ctx.namespace}/{name} {done} by {user}")
        return 0
    raise PluginError(
        f"cannot {verb} {what}: it kept changing while we were writing; run the command again"
    )


def cmd_approve(ctx: Context) -> int:
    return _decide(ctx, kind="Approve")


def cmd_deny(ctx: Context) -> int:
    return _decide(ctx, kind="Deny")


# --- agents --------------------------------------------------------------------------------


def cmd_agents(ctx: Context) -> int:
    options = ctx.options
    items = _list(ctx, "agents", all_namespaces=options.all_namespaces)
    items.sort(key=lambda i: (i["metadata"].get("namespace", ""), i["metadata"].get("name", "")))
    if options.output:
        output.dump(output.as_list(items), fmt=options.output, stream=ctx.stdout)
        return 0
    if not items:
        scope = "any namespace" if options.all_namespaces else f"namespace {ctx.namespace!r}"
        ctx.note(f"No agents in {scope}.")
        return 0
    headers = ["NAME", "READY", "REASON", "SERVICEACCOUNT", "AGE", "CAPABILITIES"]
    if options.all_namespaces:
        headers.insert(0, "NAMESPACE")
    rows = []
    for item in items:
        meta, spec, status = item["metadata"], item.get("spec", {}), item.get("status") or {}
        ready = next((c for c in status.get("conditions", []) if c.get("type") == "Ready"), None)
        capabilities = [
            c["name"] + (" (approval)" if c.get("approval") == "Required" else "")
            for c in status.get("capabilities", [])
        ]
        row = [
            meta.get("name", ""),
            ready.get("status", "Unknown") if ready else "Unknown",
            ready.get("reason", "") if ready else "",
            spec.get("serviceAccountName") or "-",
            output.age(meta.get("creationTimestamp"), now=ctx.now),
            ", ".join(capabilities) or "<none>",
        ]
        if options.all_namespaces:
            row.insert(0, meta.get("namespace", ""))
        rows.append(row)
    ctx.print(output.table(headers, rows, width=output.terminal_width(), flexible="CAPABILITIES"))
    return 0


# --- tokens -------------------------------------------------------------------------------


def _read_token(value: str) -> str:
    token = sys.stdin.read() if value == "-" else value
    return token.strip()


def cmd_token_decode(ctx: Context) -> int:
    token = _read_token(ctx.options.jwt)
    try:
        parsed = jose.parse(token)
    except errors.OAuthError as error:
        raise PluginError(f"not a JWT: {error.description}") from error
    document = {"header": parsed.header, "payload": parsed.payload}
    output.dump(document, fmt=ctx.options.output or "json", stream=ctx.stdout)
    ctx.note(
        "note: decoded only; the signature was NOT checked (use 'kubectl agentauth token verify')"
    )
    return 0


def _fetch_json(client: httpx.Client, url: str, *, what: str) -> dict[str, Any]:
    try:
        response = client.get(url)
    except httpx.HTTPError as error:
        if "CERTIFICATE_VERIFY_FAILED" in str(error):
            raise PluginError(
                f"cannot fetch {what} from {url}: its HTTPS certificate is not signed by a CA "
                "trusted here; pass --issuer-ca FILE (or set AGENTAUTH_CA_FILE) with the CA "
                "that signed it"
            ) from error
        raise PluginError(f"cannot fetch {what} from {url}: {error}") from error
    if response.status_code != 200:
        raise PluginError(f"cannot fetch {what} from {url}: HTTP {response.status_code}")
    try:
        document = response.json()
    except ValueError as error:
        raise PluginError(f"{what} at {url} is not JSON") from error
    if not isinstance(document, dict):
        raise PluginError(f"{what} at {url} is not a JSON object")
    return document


def cmd_token_verify(ctx: Context) -> int:
    token = _read_token(ctx.options.jwt)
    issuer = ctx.options.issuer
    if not issuer:
        try:
            claimed = jose.parse(token).payload.get("iss")
        except errors.OAuthError as error:
            raise PluginError(f"not a JWT: {error.description}") from error
        raise PluginError(
            "pass --issuer URL (or set AGENTAUTH_ISSUER): the issuer you trust. The token "
            f"claims iss={claimed!r}; pass that only if it is your agentauth token service"
        )
    verify = ssl.create_default_context(cafile=ctx.options.issuer_ca)
    with httpx.Client(verify=verify, timeout=10.0) as client:
        metadata = _fetch_json(
            client, issuer.rstrip("/") + ISSUER_METADATA_PATH, what="the issuer's metadata"
        )
        jwks_uri = metadata.get("jwks_uri")
        if not isinstance(jwks_uri, str):
            raise PluginError(f"the issuer's metadata at {issuer} has no jwks_uri")
        jwks = _fetch_json(client, jwks_uri, what="the issuer's JWKS")
    try:
        verified = tokens.verify(
            token,
            public_keys=jose.PublicKeySet.from_jwks(jwks),
            issuer=issuer,
            now=ctx.now,
            audience=ctx.options.audience,
        )
    except errors.OAuthError as error:
        raise PluginError(f"token is NOT valid: {error.description or error.error}") from error
    if ctx.options.output:
        output.dump(verified.claims, fmt=ctx.options.output, stream=ctx.stdout)
        return 0
    expires = datetime.datetime.fromtimestamp(verified.expires_at, datetime.UTC)
    ctx.print(f"token is valid (signed by key {verified.kid} of {issuer})")
    ctx.print(f"  subject:  {verified.subject}")
    ctx.print(f"  agent:    {verified.agent.namespace}/{verified.agent.name}")
    ctx.print(f"  scope:    {' '.join(verified.scope) or '<none>'}")
    ctx.print(f"  audience: {verified.claims.get('aud')}")
    ctx.print(f"  expires:  {expires:%Y-%m-%dT%H:%M:%SZ} ({output.until(expires, now=ctx.now)})")
    return 0


# --- keys and version ----------------------------------------------------------------------


def cmd_keys_generate(ctx: Context) -> int:
    try:
        pair = sdk_keys.generate_key_pair(
            private_key_path=Path(ctx.options.out), overwrite=ctx.options.force
        )
    except sdk_errors.AgentAuthError as error:
        raise PluginError(error.description or str(error)) from error
    except OSError as error:
        raise PluginError(f"cannot write the private key to {ctx.options.out}: {error}") from error
    snippet = {"spec": {"publicKeys": pair.jwks}}
    if ctx.options.output == "json":
        output.dump(pair.jwks, fmt="json", stream=ctx.stdout)
    else:
        ctx.note(f"wrote private key {pair.private_key_path} (mode 0600), kid {pair.kid}")
        ctx.note("add the public key to the Agent (kubectl edit agent NAME):")
        output.dump(snippet, fmt="yaml", stream=ctx.stdout)
    return 0


def cmd_version(ctx: Context) -> int:
    info: dict[str, Any] = {"clientVersion": {"agentauth": agentauth.__version__}}
    if not ctx.options.client:
        # GET /version (VersionApi asks for "/version/", which not every server answers).
        answer = ctx.call(
            ctx.conn.api_client.call_api,
            "/version",
            "GET",
            auth_settings=["BearerToken"],
            response_types_map={200: "object"},
            _return_http_data_only=True,
            action="read",
            what="the server version",
            namespace=None,
        )
        info["serverVersion"] = {"gitVersion": str((answer or {}).get("gitVersion", "unknown"))}
    if ctx.options.output:
        output.dump(info, fmt=ctx.options.output, stream=ctx.stdout)
        return 0
    ctx.print(f"kubectl-agentauth {agentauth.__version__}")
    if "serverVersion" in info:
        ctx.print(f"Kubernetes API server {info['serverVersion']['gitVersion']}")
    return 0
