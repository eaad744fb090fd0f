"""Admission webhooks over real HTTPS: rules, selectors, TLS, failure policy, patches, denials."""

from __future__ import annotations

import asyncio
import json
import ssl
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from agentauth.devcluster import admission, types
from tests.devcluster.fixtures import security_store, security_webhook

ALICE = types.UserInfo(
    username="alice", uid="u-1", groups=("system:authenticated",), extra={"k": ("v",)}
)
POD_KIND = {"group": "", "version": "v1", "kind": "Pod"}


@pytest.fixture(scope="module")
def authority() -> security_webhook.Authority:
    return security_webhook.make_authority("webhook-ca")


@pytest.fixture(scope="module")
def other_authority() -> security_webhook.Authority:
    return security_webhook.make_authority("someone-else")


@pytest.fixture(scope="module")
def server_context(authority: security_webhook.Authority) -> ssl.SSLContext:
    return security_webhook.make_server_ssl_context(
        authority, dns_names=["webhook.team-a.svc"], ips=["127.0.0.1"]
    )


@pytest.fixture
async def webhook(server_context: ssl.SSLContext) -> AsyncIterator[security_webhook.WebhookServer]:
    async with security_webhook.WebhookServer(server_context) as server:
        yield server


@pytest.fixture
def store() -> security_store.MemoryStore:
    store = security_store.MemoryStore()
    store.put({"kind": "Namespace", "metadata": {"name": "team-a", "labels": {"env": "prod"}}})
    store.put({"kind": "Namespace", "metadata": {"name": "team-b", "labels": {"env": "dev"}}})
    return store


def _hook(
    name: str,
    client_config: dict[str, Any],
    *,
    operations: list[str] | None = None,
    resources: list[str] | None = None,
    **extra: Any,
) -> dict[str, Any]:
    return {
        "name": name,
        "admissionReviewVersions": ["v1"],
        "sideEffects": "None",
        "clientConfig": client_config,
        "rules": [
            {
                "operations": operations or ["CREATE", "UPDATE"],
                "apiGroups": [""],
                "apiVersions": ["v1"],
                "resources": resources or ["pods"],
            }
        ],
        **extra,
    }


def _url(
    server: security_webhook.WebhookServer, path: str, authority: security_webhook.Authority
) -> dict[str, Any]:
    return {"url": server.url + path, "caBundle": authority.ca_bundle}


def _configure(
    store: security_store.MemoryStore, kind: str, name: str, *hooks: dict[str, Any]
) -> None:
    store.put(
        {
            "apiVersion": "admissionregistration.k8s.io/v1",
            "kind": kind,
            "metadata": {"name": name},
            "webhooks": list(hooks),
        }
    )


def _pod(
    name: str = "worker", namespace: str = "team-a", labels: dict[str, str] | None = None
) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace, "labels": labels or {"app": "agent"}},
        "spec": {"containers": [{"name": "main", "image": "busybox"}]},
    }


def _attrs(
    verb: str = "create",
    namespace: str = "team-a",
    name: str = "worker",
    subresource: str = "",
    resource: str = "pods",
) -> types.RequestAttributes:
    return types.RequestAttributes(
        verb=verb,
        resource_request=True,
        api_group="",
        api_version="v1",
        resource=resource,
        subresource=subresource,
        namespace=namespace,
        name=name,
    )


async def _mutate(
    chain: admission.AdmissionChain, obj: dict[str, Any] | None, **kwargs: Any
) -> dict[str, Any] | None:
    params: dict[str, Any] = {
        "operation": "CREATE",
        "attributes": _attrs(),
        "kind": POD_KIND,
        "obj": obj,
        "old_obj": None,
        "user": ALICE,
        "dry_run": False,
    }
    params.update(kwargs)
    return await chain.mutate(**params)


async def _validate(
    chain: admission.AdmissionChain, obj: dict[str, Any] | None, **kwargs: Any
) -> None:
    params: dict[str, Any] = {
        "operation": "CREATE",
        "attributes": _attrs(),
        "kind": POD_KIND,
        "obj": obj,
        "old_obj": None,
        "user": ALICE,
        "dry_run": False,
    }
    params.update(kwargs)
    await chain.validate(**params)


async def _denied(awaitable: Any) -> admission.AdmissionDenied:
    with pytest.raises(admission.AdmissionDenied) as caught:
        await awaitable
    return caught.value


# -- mutation and the AdmissionReview request ---------------------------------------------------


async def test_mutating_webhook_patch_is_applied_and_request_is_complete(
    webhook: security_webhook.WebhookServer,
    authority: security_webhook.Authority,
    store: security_store.MemoryStore,
) -> None:
    webhook.on(
        "/mutate",
        lambda request: {
            **security_webhook.json_patch(
                [
                    # "~1" escapes the "/" inside a label key (RFC 6901).
                    {
                        "op": "add",
                        "path": "/metadata/labels/agentauth.dev~1agent",
                        "value": "planner",
                    },
                    {"op": "replace", "path": "/spec/containers/0/image", "value": "busybox:1.36"},
                    {"op": "remove", "path": "/metadata/labels/app"},
                    {
                        "op": "add",
                        "path": "/spec/containers/-",
                        "value": {"name": "sidecar", "image": "x"},
                    },
                    {"op": "test", "path": "/spec/containers/1/name", "value": "sidecar"},
                ]
            ),
            "warnings": ["image pinned"],
        },
    )
    _configure(
        store,
        "MutatingWebhookConfiguration",
        "agentauth",
        _hook("pods.agentauth.dev", _url(webhook, "/mutate", authority)),
    )
    chain = admission.AdmissionChain(reader=store)
    original = _pod()
    warnings: list[str] = []
    mutated = await _mutate(chain, original, warnings=warnings)
    assert mutated is not None
    assert mutated["metadata"]["labels"] == {"agentauth.dev/agent": "planner"}
    assert mutated["spec"]["containers"] == [
        {"name": "main", "image": "busybox:1.36"},
        {"name": "sidecar", "image": "x"},
    ]
    assert original == _pod()  # the caller's object is not modified in place
    assert warnings == ["image pinned"]

    ((path, review),) = webhook.calls
    assert path == "/mutate"
    assert review["apiVersion"] == "admission.k8s.io/v1" and review["kind"] == "AdmissionReview"
    request = review["request"]
    assert request["uid"]
    assert request["kind"] == POD_KIND and request["requestKind"] == POD_KIND
    assert request["resource"] == {"group": "", "version": "v1", "resource": "pods"}
    assert (request["name"], request["namespace"], request["operation"]) == (
        "worker",
        "team-a",
        "CREATE",
    )
    assert request["userInfo"] == {
        "username": "alice",
        "uid": "u-1",
        "groups": ["system:authenticated"],
        "extra": {"k": ["v"]},
    }
    assert request["object"] == _pod() and request["oldObject"] is None
    assert request["dryRun"] is False
    assert request["options"] == {"apiVersion": "meta.k8s.io/v1", "kind": "CreateOptions"}
    assert "subResource" not in request


async def test_update_and_delete_carry_old_object(
    webhook: security_webhook.WebhookServer,
    authority: security_webhook.Authority,
    store: security_store.MemoryStore,
) -> None:
    webhook.on("/v", lambda request: security_webhook.allow())
    _configure(
        store,
        "ValidatingWebhookConfiguration",
        "v",
        _hook(
            "v.agentauth.dev",
            _url(webhook, "/v", authority),
            operations=["*"],
            resources=["pods", "pods/status"],
        ),
    )
    chain = admission.AdmissionChain(reader=store)
    old, new = _pod(labels={"v": "1"}), _pod(labels={"v": "2"})
    await _validate(
        chain,
        new,
        operation="UPDATE",
        old_obj=old,
        attributes=_attrs("update", subresource="status"),
    )
    await _validate(chain, None, operation="DELETE", old_obj=old, attributes=_attrs("delete"))
    update, delete = (review["request"] for _, review in webhook.calls)
    assert (update["object"], update["oldObject"], update["subResource"]) == (new, old, "status")
    assert update["options"]["kind"] == "UpdateOptions"
    assert (delete["object"], delete["oldObject"], delete["operation"]) == (None, old, "DELETE")
    assert delete["options"]["kind"] == "DeleteOptions"


async def test_reinvocation_if_needed(
    webhook: security_webhook.WebhookServer,
    authority: security_webhook.Authority,
    store: security_store.MemoryStore,
) -> None:
    def first(request: dict[str, Any]) -> dict[str, Any]:
        # Changes the object itself: that alone must not cause its own reinvocation.
        return security_webhook.json_patch(
            [{"op": "add", "path": "/metadata/annotations", "value": {"first": "seen"}}]
        )

    def second(request: dict[str, Any]) -> dict[str, Any]:
        return security_webhook.json_patch(
            [{"op": "add", "path": "/metadata/labels/second", "value": "yes"}]
        )

    webhook.on("/first", first)
    webhook.on("/second", second)
    webhook.on("/never", first)
    # Configurations run in name order: "a-*" before "b-*".
    _configure(
        store,
        "MutatingWebhookConfiguration",
        "a-first",
        _hook(
            "first.agentauth.dev", _url(webhook, "/first", authority), reinvocationPolicy="IfNeeded"
        ),
        _hook(
            "never.agentauth.dev", _url(webhook, "/never", authority), reinvocationPolicy="Never"
        ),
    )
    _configure(
        store,
        "MutatingWebhookConfiguration",
        "b-second",
        _hook("second.agentauth.dev", _url(webhook, "/second", authority)),
    )
    chain = admission.AdmissionChain(reader=store)
    mutated = await _mutate(chain, _pod())
    assert mutated is not None and mutated["metadata"]["labels"]["second"] == "yes"
    assert [path for path, _ in webhook.calls] == ["/first", "/never", "/second", "/first"]
    # The reinvoked webhook sees the object as the later webhook left it.
    assert (
        webhook.calls_to("/first")[1]["request"]["object"]["metadata"]["labels"]["second"] == "yes"
    )
    # Without a later change, an IfNeeded webhook runs once, even though it patched itself.
    store.delete("MutatingWebhookConfiguration", "b-second")
    webhook.calls.clear()
    mutated = await _mutate(chain, _pod())
    assert mutated is not None and mutated["metadata"]["annotations"] == {"first": "seen"}
    assert [path for path, _ in webhook.calls] == ["/first", "/never"]


# -- denial, failure policy, TLS, timeouts ------------------------------------------------------


async def test_denial_carries_the_webhook_message_and_code(
    webhook: security_webhook.WebhookServer,
    authority: security_webhook.Authority,
    store: security_store.MemoryStore,
) -> None:
    webhook.on(
        "/deny",
        lambda r: {
            "allowed": False,
            "status": {
                "code": 403,
                "reason": "Forbidden",
                "message": "agents may not run privileged",
            },
        },
    )
    webhook.on("/bare", lambda r: {"allowed": False})
    webhook.on(
        "/reason-only",
        lambda r: {"allowed": False, "status": {"code": 200, "reason": "NotAllowed"}},
    )
    chain = admission.AdmissionChain(reader=store)
    # failurePolicy Ignore applies to call failures, never to an explicit denial.
    _configure(
        store,
        "ValidatingWebhookConfiguration",
        "deny",
        _hook("pods.agentauth.dev", _url(webhook, "/deny", authority), failurePolicy="Ignore"),
    )
    denied = await _denied(_validate(chain, _pod()))
    assert (denied.code, denied.reason, denied.message) == (
        403,
        "Forbidden",
        'admission webhook "pods.agentauth.dev" denied the request: agents may not run privileged',
    )
    _configure(
        store,
        "ValidatingWebhookConfiguration",
        "deny",
        _hook("bare.agentauth.dev", _url(webhook, "/bare", authority)),
    )
    denied = await _denied(_validate(chain, _pod()))
    assert (denied.code, denied.reason, denied.message) == (
        400,
        "",
        'admission webhook "bare.agentauth.dev" denied the request without explanation',
    )
    _configure(
        store,
        "MutatingWebhookConfiguration",
        "deny",
        _hook("why.agentauth.dev", _url(webhook, "/reason-only", authority)),
    )
    store.delete("ValidatingWebhookConfiguration", "deny")
    denied = await _denied(_mutate(chain, _pod()))
    assert (denied.code, denied.reason, denied.message) == (
        400,
        "NotAllowed",
        'admission webhook "why.agentauth.dev" denied the request: NotAllowed',
    )


async def test_validating_webhooks_first_denial_in_declared_order(
    webhook: security_webhook.WebhookServer,
    authority: security_webhook.Authority,
    store: security_store.MemoryStore,
) -> None:
    webhook.on("/ok", lambda r: security_webhook.allow())
    webhook.on("/no1", lambda r: {"allowed": False, "status": {"message": "one"}})
    webhook.on("/no2", lambda r: {"allowed": False, "status": {"message": "two"}})
    _configure(
        store,
        "ValidatingWebhookConfiguration",
        "v",
        _hook("ok", _url(webhook, "/ok", authority)),
        _hook("no1", _url(webhook, "/no1", authority)),
        _hook("no2", _url(webhook, "/no2", authority)),
    )
    denied = await _denied(_validate(admission.AdmissionChain(reader=store), _pod()))
    assert denied.message == 'admission webhook "no1" denied the request: one'
    assert sorted(path for path, _ in webhook.calls) == ["/no1", "/no2", "/ok"]


async def test_wrong_ca_fails_closed_or_is_ignored(
    webhook: security_webhook.WebhookServer,
    other_authority: security_webhook.Authority,
    store: security_store.MemoryStore,
) -> None:
    webhook.on(
        "/mutate",
        lambda r: security_webhook.json_patch(
            [{"op": "add", "path": "/metadata/labels/x", "value": "y"}]
        ),
    )
    chain = admission.AdmissionChain(reader=store)
    _configure(
        store,
        "MutatingWebhookConfiguration",
        "m",
        _hook("pods.agentauth.dev", _url(webhook, "/mutate", other_authority)),
    )
    denied = await _denied(_mutate(chain, _pod()))
    assert denied.code == 500 and denied.reason == "InternalError"
    prefix = (
        'Internal error occurred: failed calling webhook "pods.agentauth.dev": '
        "failed to call webhook: "
        f'Post "{webhook.url}/mutate?timeout=10s": '
    )
    assert denied.message.startswith(prefix)
    assert "CERTIFICATE_VERIFY_FAILED" in denied.message
    assert webhook.calls == []  # the handshake failed before any request was sent
    _configure(
        store,
        "MutatingWebhookConfiguration",
        "m",
        _hook(
            "pods.agentauth.dev", _url(webhook, "/mutate", other_authority), failurePolicy="Ignore"
        ),
    )
    assert await _mutate(chain, _pod()) == _pod()


async def test_host_name_is_verified(
    webhook: security_webhook.WebhookServer,
    authority: security_webhook.Authority,
    store: security_store.MemoryStore,
) -> None:
    webhook.on("/v", lambda r: security_webhook.allow())
    # The certificate is valid for 127.0.0.1 and webhook.team-a.svc, not for "localhost".
    config = {"url": f"https://localhost:{webhook.port}/v", "caBundle": authority.ca_bundle}
    _configure(store, "ValidatingWebhookConfiguration", "v", _hook("v", config))
    denied = await _denied(_validate(admission.AdmissionChain(reader=store), _pod()))
    assert denied.code == 500
    assert "CERTIFICATE_VERIFY_FAILED" in denied.message and "localhost" in denied.message


async def test_timeout_fails_closed_or_is_ignored(
    webhook: security_webhook.WebhookServer,
    authority: security_webhook.Authority,
    store: security_store.MemoryStore,
) -> None:
    webhook.on("/hang", lambda r: security_webhook.allow())
    chain = admission.AdmissionChain(reader=store)
    _configure(
        store,
        "ValidatingWebhookConfiguration",
        "slow",
        _hook("slow.agentauth.dev", _url(webhook, "/hang", authority), timeoutSeconds=1),
        _hook(
            "slow-ignored.agentauth.dev",
            _url(webhook, "/hang", authority),
            timeoutSeconds=1,
            failurePolicy="Ignore",
        ),
    )
    denied = await _denied(_validate(chain, _pod()))
    assert (denied.code, denied.reason, denied.message) == (
        500,
        "InternalError",
        'Internal error occurred: failed calling webhook "slow.agentauth.dev": '
        "failed to call webhook: "
        f'Post "{webhook.url}/hang?timeout=1s": context deadline exceeded',
    )
    assert len(webhook.calls_to("/hang")) == 2


@pytest.mark.parametrize(
    ("response", "message"),
    [
        (
            {"raw": b"not json"},
            "received invalid webhook response: Expecting value: line 1 column 1 (char 0)",
        ),
        (
            {
                "raw": b'{"apiVersion": "admission.k8s.io/v1beta1", "kind": "AdmissionReview", '
                b'"response": {}}'
            },
            "expected webhook response of admission.k8s.io/v1, Kind=AdmissionReview, "
            "got admission.k8s.io/v1beta1, "
            "Kind=AdmissionReview",
        ),
        ({"uid": "someone-elses"}, 'expected response.uid="{uid}", got "someone-elses"'),
        (
            {"allowed": True, "patch": "W10=", "patchType": "Merge"},
            'expected patchType "JSONPatch", got "Merge"',
        ),
        (
            {"allowed": True, "patch": "%%%", "patchType": "JSONPatch"},
            "received undecodable patch in webhook response: ",
        ),
    ],
)
async def test_malformed_responses_are_call_failures(
    webhook: security_webhook.WebhookServer,
    authority: security_webhook.Authority,
    store: security_store.MemoryStore,
    response: dict[str, Any],
    message: str,
) -> None:
    webhook.on("/m", lambda r: response)
    _configure(
        store,
        "MutatingWebhookConfiguration",
        "m",
        _hook("m.agentauth.dev", _url(webhook, "/m", authority)),
    )
    denied = await _denied(_mutate(admission.AdmissionChain(reader=store), _pod()))
    uid = webhook.calls[0][1]["request"]["uid"]
    expected = (
        'Internal error occurred: failed calling webhook "m.agentauth.dev": '
        + message.format(uid=uid)
    )
    assert denied.code == 500
    assert denied.message.startswith(expected)


async def test_validating_webhook_may_not_patch_and_bad_patches_fail(
    webhook: security_webhook.WebhookServer,
    authority: security_webhook.Authority,
    store: security_store.MemoryStore,
) -> None:
    webhook.on(
        "/patch",
        lambda r: security_webhook.json_patch([{"op": "remove", "path": "/metadata/nothing"}]),
    )
    _configure(
        store, "ValidatingWebhookConfiguration", "v", _hook("v", _url(webhook, "/patch", authority))
    )
    chain = admission.AdmissionChain(reader=store)
    denied = await _denied(_validate(chain, _pod()))
    assert denied.message == (
        'Internal error occurred: failed calling webhook "v": '
        "validating webhook may not return response.patch"
    )
    store.delete("ValidatingWebhookConfiguration", "v")
    # A patch that does not apply is an internal error even with failurePolicy Ignore.
    _configure(
        store,
        "MutatingWebhookConfiguration",
        "m",
        _hook("m", _url(webhook, "/patch", authority), failurePolicy="Ignore"),
    )
    denied = await _denied(_mutate(chain, _pod()))
    assert (denied.code, denied.message) == (
        500,
        'Internal error occurred: failed calling webhook "m": JSON patch could not be applied: '
        "Unable to remove nonexistent key: nothing: missing value",
    )


async def test_dry_run_requires_side_effect_free_webhooks(
    webhook: security_webhook.WebhookServer,
    authority: security_webhook.Authority,
    store: security_store.MemoryStore,
) -> None:
    webhook.on("/v", lambda r: security_webhook.allow())
    chain = admission.AdmissionChain(reader=store)
    _configure(
        store,
        "ValidatingWebhookConfiguration",
        "v",
        _hook("unsafe", _url(webhook, "/v", authority), sideEffects="Unknown"),
    )
    denied = await _denied(_validate(chain, _pod(), dry_run=True))
    assert (denied.code, denied.reason, denied.message) == (
        400,
        "BadRequest",
        'admission webhook "unsafe" does not support dry run',
    )
    assert webhook.calls == []
    _configure(
        store,
        "ValidatingWebhookConfiguration",
        "v",
        _hook("safe", _url(webhook, "/v", authority), sideEffects="NoneOnDryRun"),
    )
    await _validate(chain, _pod(), dry_run=True)
    assert webhook.calls[0][1]["request"]["dryRun"] is True


# -- selection: rules, namespaceSelector, objectSelector -----------------------------------------


async def test_selectors_decide_who_is_called(
    webhook: security_webhook.WebhookServer,
    authority: security_webhook.Authority,
    store: security_store.MemoryStore,
) -> None:
    webhook.on("/prod", lambda r: security_webhook.allow())
    webhook.on("/agents", lambda r: security_webhook.allow())
    webhook.on("/not-system", lambda r: security_webhook.allow())
    _configure(
        store,
        "ValidatingWebhookConfiguration",
        "v",
        _hook(
            "prod",
            _url(webhook, "/prod", authority),
            namespaceSelector={"matchLabels": {"env": "prod"}},
        ),
        _hook(
            "agents",
            _url(webhook, "/agents", authority),
            objectSelector={
                "matchExpressions": [{"key": "agentauth.dev/agent", "operator": "Exists"}]
            },
        ),
        _hook(
            "not-system",
            _url(webhook, "/not-system", authority),
            namespaceSelector={
                "matchExpressions": [
                    {
                        "key": "kubernetes.io/metadata.name",
                        "operator": "NotIn",
                        "values": ["team-b"],
                    }
                ]
            },
        ),
    )
    chain = admission.AdmissionChain(reader=store)
    await _validate(chain, _pod(namespace="team-a"), attributes=_attrs(namespace="team-a"))
    assert sorted(path for path, _ in webhook.calls) == ["/not-system", "/prod"]
    webhook.calls.clear()
    await _validate(
        chain,
        _pod(namespace="team-b", labels={"agentauth.dev/agent": "p"}),
        attributes=_attrs(namespace="team-b"),
    )
    assert [path for path, _ in webhook.calls] == ["/agents"]
    webhook.calls.clear()
    # An UPDATE matches the objectSelector if the old object matched it.
    await _validate(
        chain,
        _pod(namespace="team-b"),
        operation="UPDATE",
        attributes=_attrs("update", namespace="team-b"),
        old_obj=_pod(namespace="team-b", labels={"agentauth.dev/agent": "p"}),
    )
    assert [path for path, _ in webhook.calls] == ["/agents"]
    webhook.calls.clear()
    # Rules: DELETE is not among the hooks' operations, so nothing is called.
    await _validate(chain, None, operation="DELETE", old_obj=_pod(), attributes=_attrs("delete"))
    assert webhook.calls == []


async def test_namespace_objects_match_on_their_own_labels(
    webhook: security_webhook.WebhookServer,
    authority: security_webhook.Authority,
    store: security_store.MemoryStore,
) -> None:
    webhook.on("/ns", lambda r: security_webhook.allow())
    hook = _hook(
        "ns",
        _url(webhook, "/ns", authority),
        resources=["namespaces"],
        namespaceSelector={"matchLabels": {"env": "prod"}},
    )
    hook["rules"][0]["scope"] = "Cluster"
    _configure(store, "ValidatingWebhookConfiguration", "v", hook)
    chain = admission.AdmissionChain(reader=store)
    ns_kind = {"group": "", "version": "v1", "kind": "Namespace"}
    for labels in ({"env": "prod"}, {"env": "dev"}):
        namespace = {
            "apiVersion": "v1",
            "kind": "Namespace",
            "metadata": {"name": "new", "labels": labels},
        }
        await _validate(
            chain,
            namespace,
            kind=ns_kind,
            attributes=_attrs(namespace="new", name="new", resource="namespaces"),
        )
    (called,) = webhook.calls_to("/ns")
    assert called["request"]["object"]["metadata"]["labels"] == {"env": "prod"}
    assert "namespace" not in called["request"]


@pytest.mark.parametrize(
    ("rule", "operation", "attributes", "matches"),
    [
        ({"resources": ["pods"]}, "CREATE", _attrs(), True),
        ({"resources": ["pods"]}, "UPDATE", _attrs(subresource="status"), False),
        ({"resources": ["pods/status"]}, "UPDATE", _attrs(subresource="status"), True),
        ({"resources": ["pods/*"]}, "UPDATE", _attrs(subresource="status"), True),
        # As upstream's rules.Matcher: "/*" matches the main resource too.
        ({"resources": ["pods/*"]}, "UPDATE", _attrs(), True),
        ({"resources": ["*"]}, "UPDATE", _attrs(), True),
        ({"resources": ["*"]}, "UPDATE", _attrs(subresource="status"), False),
        ({"resources": ["*/status"]}, "UPDATE", _attrs(subresource="status"), True),
        ({"resources": ["*/*"]}, "UPDATE", _attrs(subresource="status"), True),
        ({"resources": ["pods"], "operations": ["*"]}, "CONNECT", _attrs(), True),
        ({"resources": ["pods"], "operations": ["CREATE"]}, "DELETE", _attrs(), False),
        ({"resources": ["pods"], "apiGroups": ["apps"]}, "CREATE", _attrs(), False),
        ({"resources": ["pods"], "apiVersions": ["v2"]}, "CREATE", _attrs(), False),
        ({"resources": ["pods"], "scope": "Namespaced"}, "CREATE", _attrs(), True),
        ({"resources": ["pods"], "scope": "Cluster"}, "CREATE", _attrs(), False),
        ({"resources": ["pods"], "scope": "Cluster"}, "CREATE", _attrs(namespace=""), True),
        (
            {"resources": ["namespaces"], "scope": "Namespaced"},
            "CREATE",
            _attrs(resource="namespaces", namespace="x"),
            False,
        ),
        (
            {"resources": ["namespaces"], "scope": "Cluster"},
            "CREATE",
            _attrs(resource="namespaces", namespace="x"),
            True,
        ),
        ({"resources": "pods"}, "CREATE", _attrs(), False),  # malformed: matches nothing
    ],
)
def test_rule_matching(
    rule: dict[str, Any], operation: str, attributes: types.RequestAttributes, matches: bool
) -> None:
    full = {
        "operations": ["CREATE", "UPDATE", "DELETE"],
        "apiGroups": [""],
        "apiVersions": ["v1"],
        **rule,
    }
    assert admission.matches_any_rule([full], operation=operation, attributes=attributes) is matches


# -- service references -----------------------------------------------------------------------


async def test_service_reference_resolution(
    webhook: security_webhook.WebhookServer,
    authority: security_webhook.Authority,
    store: security_store.MemoryStore,
) -> None:
    webhook.on("/svc", lambda r: security_webhook.allow())
    service_ref = {"namespace": "team-a", "name": "webhook", "port": 443, "path": "/svc"}
    _configure(
        store,
        "ValidatingWebhookConfiguration",
        "v",
        _hook("svc", {"service": service_ref, "caBundle": authority.ca_bundle}),
    )
    chain = admission.AdmissionChain(reader=store)
    denied = await _denied(_validate(chain, _pod()))
    assert denied.message == (
        'Internal error occurred: failed calling webhook "svc": failed to call webhook: '
        'Post "https://webhook.team-a.svc:443/svc": service "webhook" not found'
    )
    # 1. In-process registration. TLS is verified for webhook.team-a.svc, not 127.0.0.1.
    chain.register_service(namespace="team-a", name="webhook", port=443, target_port=webhook.port)
    await _validate(chain, _pod())
    assert len(webhook.calls) == 1
    chain.unregister_service(namespace="team-a", name="webhook", port=443)
    # 2. The stored Service's numeric targetPort on loopback.
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "webhook", "namespace": "team-a"},
        "spec": {"ports": [{"port": 443, "targetPort": webhook.port}]},
    }
    store.put(service)
    await _validate(chain, _pod())
    assert len(webhook.calls) == 2
    # 3. The dev-endpoint annotation wins over the port mapping.
    service["spec"]["ports"] = [{"port": 443, "targetPort": "https"}]
    denied = await _denied(_validate(chain, _pod()))
    assert 'named targetPort "https" cannot be resolved in the dev cluster' in denied.message
    service["metadata"]["annotations"] = {"agentauth.dev/dev-endpoint": f"127.0.0.1:{webhook.port}"}
    await _validate(chain, _pod())
    assert len(webhook.calls) == 3


async def test_service_certificate_must_name_the_service(
    webhook: security_webhook.WebhookServer,
    authority: security_webhook.Authority,
    store: security_store.MemoryStore,
) -> None:
    webhook.on("/svc", lambda r: security_webhook.allow())
    # The serving certificate names webhook.team-a.svc; a service called "other" must not accept it.
    _configure(
        store,
        "ValidatingWebhookConfiguration",
        "v",
        _hook(
            "svc",
            {
                "service": {"namespace": "team-a", "name": "other", "path": "/svc"},
                "caBundle": authority.ca_bundle,
            },
        ),
    )
    chain = admission.AdmissionChain(reader=store)
    chain.register_service(namespace="team-a", name="other", target_port=webhook.port)
    denied = await _denied(_validate(chain, _pod()))
    assert "CERTIFICATE_VERIFY_FAILED" in denied.message and "other.team-a.svc" in denied.message
    assert webhook.calls == []


@pytest.mark.parametrize(
    ("client_config", "message"),
    [
        (
            {"url": "http://127.0.0.1:1/x"},
            'webhook URL "http://127.0.0.1:1/x" must be an https URL with a host',
        ),
        ({}, "clientConfig needs a url or a service with name and namespace"),
        ({"url": "https://127.0.0.1:1/", "caBundle": "***"}, "invalid caBundle: "),
        ({"url": "https://127.0.0.1:1/", "caBundle": "aGVsbG8="}, "invalid caBundle: "),
    ],
)
async def test_bad_client_configs_fail_closed(
    store: security_store.MemoryStore, client_config: dict[str, Any], message: str
) -> None:
    _configure(store, "ValidatingWebhookConfiguration", "v", _hook("bad", client_config))
    denied = await _denied(_validate(admission.AdmissionChain(reader=store), _pod()))
    assert denied.code == 500
    assert denied.message.startswith(
        'Internal error occurred: failed calling webhook "bad": ' + message
    )


async def test_no_configurations_means_no_change(store: security_store.MemoryStore) -> None:
    chain = admission.AdmissionChain(reader=store)
    assert await _mutate(chain, _pod()) == _pod()
    assert await _mutate(chain, None, operation="DELETE", old_obj=_pod()) is None
    await _validate(chain, _pod())


# -- end to end: kubectl -> embedded control plane -> webhook over HTTPS ------------------------


async def test_webhook_round_trip_through_the_server(
    dev_cluster: Any,
    kube_api: Any,
    kubectl: Any,
    namespace: str,
    webhook: security_webhook.WebhookServer,
    authority: security_webhook.Authority,
) -> None:
    from kubernetes import client

    webhook.on(
        "/mutate",
        lambda r: security_webhook.json_patch(
            [
                {
                    "op": "add",
                    "path": "/metadata/labels/stamped-by",
                    "value": r["userInfo"]["username"],
                }
            ]
        ),
    )
    webhook.on(
        "/validate",
        lambda r: (
            {
                "allowed": False,
                "status": {"code": 403, "reason": "Forbidden", "message": "no privileged agents"},
            }
            if r["object"]["metadata"]["labels"].get("privileged") == "true"
            else security_webhook.allow()
        ),
    )
    scope = {"matchLabels": {"kubernetes.io/metadata.name": namespace}}
    admissionregistration = client.AdmissionregistrationV1Api(kube_api)
    name = f"e2e-{namespace}"
    admissionregistration.create_mutating_webhook_configuration(
        {
            "metadata": {"name": name},
            "webhooks": [
                _hook(
                    "stamp.agentauth.dev",
                    _url(webhook, "/mutate", authority),
                    namespaceSelector=scope,
                )
            ],
        }
    )
    admissionregistration.create_validating_webhook_configuration(
        {
            "metadata": {"name": name},
            "webhooks": [
                _hook(
                    "deny.agentauth.dev",
                    _url(webhook, "/validate", authority),
                    namespaceSelector=scope,
                )
            ],
        }
    )
    kubectl(
        "create", "rolebinding", "alice-edit", "--clusterrole=edit", "--user=alice", "-n", namespace
    )
    kubectl_path = Path(sys.executable).parent / "kubectl"

    async def create(labels: dict[str, str]) -> tuple[int, str, str]:
        # kubectl runs as a child process while this event loop keeps serving the webhook.
        manifest = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "p-" + "-".join(labels.values()), "labels": labels},
            "spec": {"containers": [{"name": "c", "image": "x"}]},
        }
        process = await asyncio.create_subprocess_exec(
            str(kubectl_path),
            "--kubeconfig",
            str(dev_cluster.kubeconfig_path),
            "--context",
            "alice",
            "create",
            "-n",
            namespace,
            "-f",
            "-",
            "-o",
            "json",
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(
            process.communicate(json.dumps(manifest).encode()), timeout=60
        )
        assert process.returncode is not None
        return process.returncode, out.decode(), err.decode()

    try:
        code, out, err = await create({"app": "ok"})
        assert code == 0, err
        assert json.loads(out)["metadata"]["labels"] == {"app": "ok", "stamped-by": "alice"}
        mutate_request = webhook.calls_to("/mutate")[0]["request"]
        assert mutate_request["userInfo"]["username"] == "alice"
        assert mutate_request["namespace"] == namespace and mutate_request["operation"] == "CREATE"
        # The validating webhook saw the object after mutation.
        assert (
            webhook.calls_to("/validate")[0]["request"]["object"]["metadata"]["labels"][
                "stamped-by"
            ]
            == "alice"
        )

        code, out, err = await create({"privileged": "true"})
        assert code == 1
        assert err.strip() == (
            'Error from server (Forbidden): error when creating "STDIN": admission webhook '
            '"deny.agentauth.dev" denied the request: no privileged agents'
        )
        assert (
            client.CoreV1Api(kube_api).list_namespaced_pod(namespace).items[0].metadata.name
            == "p-ok"
        )
    finally:
        admissionregistration.delete_mutating_webhook_configuration(name)
        admissionregistration.delete_validating_webhook_configuration(name)
