"""The attack run's stack: the embedded control plane and two token-service replicas on loopback.

What the chart runs by default, in one process: two ``agentauth token-service`` instances
(``tokenservice.app.serve``, each with its own caches and replay caches) against one API server,
a namespace with agents, pods, service accounts, grants and the issuer keys, plus loopback
stand-ins for the outside world: an identity provider's JWKS, AWS STS (SigV4 checked with
botocore's signer) and Google's certificates and metadata server. Replica ``a`` verifies
service-account tokens against the cluster JWKS, replica ``b`` with TokenReview, so both paths
are attacked.

Clients are real: the SDK's ``AgentClient`` with a :class:`Recorder` transport (what a network
attacker captures), ``httpx`` for raw requests, real TokenRequest tokens bound to real pods.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import threading
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import botocore.session
import httpx
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric import ed25519

from agentauth.devcluster import server
from agentauth.domain import delegation, keys, signatures, tokens
from agentauth.sdk import client as sdk_client
from agentauth.tokenservice import settings as settings_module
from tests import stack
from tests.domain import tokenkit
from tests.domain.federation import policies
from tests.domain.federation.loopback_clouds import (
    AwsPrincipal,
    LoopbackGoogle,
    LoopbackSts,
    make_google_key,
    serving,
)
from tests.sdk.loopback import ServerThread

ISSUER = "https://agentauth.attack.test"
TRUST_DOMAIN = "agentauth.attack.test"
IDP_ISSUER = "https://login.attack.test"
IDP_AUDIENCE = "agentauth"
ROLE = AwsPrincipal(
    access_key_id="ASIAATTACKROLE00001",
    secret_access_key="attack-run-role-secret",
    arn="arn:aws:sts::123456789012:assumed-role/research-agent/i-0attack",
    account="123456789012",
)
GCP_SERVICE_ACCOUNT = "agent@research-prod.iam.gserviceaccount.com"
TOOL_URI = "https://tools.attack.test/docs"


def agent_id(name: str, namespace: str) -> str:
    return tokens.agent_subject(name=name, namespace=namespace, trust_domain=TRUST_DOMAIN)


class Recorder(httpx.HTTPTransport):
    """The load balancer in front of the replicas, as an httpx transport: clients address the
    public URL (the issuer, which is what they sign), the request goes to ``upstream``. It keeps
    a copy of every request: what an attacker on the path (a log, a proxy, a compromised
    sidecar) would capture."""

    def __init__(self, upstream: str) -> None:
        super().__init__()
        self.upstream = httpx.URL(upstream)
        self.requests: list[httpx.Request] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        request.read()
        self.requests.append(request)
        forwarded = httpx.Request(
            request.method,
            request.url.copy_with(
                scheme=self.upstream.scheme, host=self.upstream.host, port=self.upstream.port
            ),
            headers=request.headers,
            content=request.content,
        )
        return super().handle_request(forwarded)

    def last(self, path: str) -> httpx.Request:
        return next(r for r in reversed(self.requests) if r.url.path == path)


def replay(request: httpx.Request, base: str) -> httpx.Response:
    """Send a captured request, byte for byte, to another replica."""
    headers = {k: v for k, v in request.headers.items() if k.lower() not in ("host",)}
    return httpx.request(
        request.method,
        base + request.url.raw_path.decode(),
        headers=headers,
        content=request.content,
    )


def signed_post(
    base: str,
    path: str,
    *,
    body: bytes,
    key: ed25519.Ed25519PrivateKey | None,
    content_type: str = "application/x-www-form-urlencoded",
    token: str | None = None,
    extra_headers: dict[str, str] | None = None,
    hwk: bool = False,
) -> httpx.Response:
    """POST ``body`` to ``base + path``, RFC 9421-signed with ``key`` (as the SDK signs: the
    public URL is the issuer's) and, with ``token``, ``Authorization: Bearer`` covered and the
    token as ``Signature-Key`` (``sig=jwt``; ``hwk`` presents the signing key itself)."""
    headers = {"Content-Type": content_type, **(extra_headers or {})}
    components = None
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
        components = (*signatures.BASE_COMPONENTS, "authorization")
    if key is not None:
        headers.update(
            signatures.sign_request(
                method="POST",
                url=ISSUER + path,
                headers=headers,
                body=body,
                private_key=key,
                signature_key_header=(
                    signatures.signature_key_jwt(token)
                    if token is not None and not hwk
                    else signatures.signature_key_hwk(key)
                ),
                components=components,
            )
        )
    return httpx.post(base + path, headers=headers, content=body)


@dataclasses.dataclass
class Replica:
    name: str
    thread: stack.TokenServiceThread

    @property
    def url(self) -> str:
        return self.thread.url


@dataclasses.dataclass
class Stack:
    cluster: server.DevCluster
    api: Any
    namespace: str
    keyset: keys.KeySet
    a: Replica
    b: Replica
    idp: tokenkit.ClusterIssuer
    sts: LoopbackSts
    google: LoopbackGoogle
    registered_key: ed25519.Ed25519PrivateKey
    directory: Path
    common: dict[str, Any]

    @contextlib.contextmanager
    def replica(self, name: str, **extra: Any) -> Iterator[Replica]:
        """One more replica with ``extra`` settings (small limits and timeouts), for a test."""
        thread = stack.TokenServiceThread(
            settings(self.cluster, self.namespace, **self.common, **extra)
        ).start()
        try:
            stack.wait_for(lambda: ready(thread.url), timeout=30, message=f"{name} readyz")
            yield Replica(name, thread)
        finally:
            thread.stop()

    def sa_token(self, *, account: str = "research-sa", pod: str = "research-0") -> str:
        """A projected service-account token, as the kubelet mounts it into ``pod``."""
        return stack.request_token(
            self.api,
            namespace=self.namespace,
            account=account,
            audience=ISSUER,
            pod=pod,
            expiration_seconds=600,
        )

    def token_file(self, name: str, **kw: str) -> Path:
        path = self.directory / f"{name}-{uuid.uuid4().hex[:6]}.token"
        path.write_text(self.sa_token(**kw))
        return path

    def agent_client(
        self, replica: Replica, *, recorder: Recorder | None = None, **kw: str
    ) -> sdk_client.AgentClient:
        """The SDK in the research pod (or another pod with ``account``/``pod``), talking to
        ``replica`` through the load balancer ``recorder``."""
        return sdk_client.AgentClient(
            issuer=ISSUER,
            token_url=ISSUER,
            subject_token_source=sdk_client.ServiceAccountTokenFile(self.token_file("sdk", **kw)),
            transport=recorder if recorder is not None else Recorder(replica.url),
        )

    def user_token(self, **claims: Any) -> str:
        now = datetime.now(UTC)
        base = {
            "iss": IDP_ISSUER,
            "sub": "jane@attack.test",
            "aud": IDP_AUDIENCE,
            "iat": int(now.timestamp()),
            "exp": int((now + timedelta(minutes=10)).timestamp()),
            "scope": "document.read",
            "may_act": {"sub": agent_id("research", self.namespace)},
        }
        base.update(claims)
        return self.idp.sign({k: v for k, v in base.items() if v is not None})

    def mint(self, *, name: str = "research", uid: str, **kw: Any) -> str:
        """An agent token signed with the issuer's real key (what a replica mints)."""
        subject = agent_id(name, self.namespace)
        now = kw.pop("now", datetime.now(UTC))
        return tokens.issue(
            keyset=self.keyset,
            issuer=ISSUER,
            subject=kw.pop("subject", subject),
            agent=tokens.AgentRef(name=name, namespace=self.namespace, uid=uid),
            audience=kw.pop("audience", ISSUER),
            scope=kw.pop("scope", ("document.read",)),
            lifetime=kw.pop("lifetime", timedelta(minutes=2)),
            now=now,
            client_id=subject,
            **kw,
        ).token

    def agent_uid(self, name: str) -> str:
        from kubernetes import client

        obj = client.CustomObjectsApi(self.api).get_namespaced_custom_object(
            "agentauth.dev", "v1alpha1", self.namespace, "agents", name
        )
        return str(obj["metadata"]["uid"])

    def botocore_session(self) -> Any:
        session = botocore.session.Session()
        session.set_credentials(ROLE.access_key_id, ROLE.secret_access_key)
        return session


def settings(
    cluster: server.DevCluster,
    namespace: str,
    *,
    idp_jwks_url: str,
    sts: LoopbackSts,
    google: LoopbackGoogle,
    **extra: Any,
) -> settings_module.Settings:
    return settings_module.Settings(
        issuer=ISSUER,
        cluster_issuer=cluster.issuer,
        kubeconfig=cluster.kubeconfig_path,
        namespace=namespace,
        watch_namespaces=(namespace,),
        listen_host="127.0.0.1",
        listen_port=0,
        trusted_issuers=(
            delegation.TrustedIssuer(
                issuer=IDP_ISSUER, jwks_url=idp_jwks_url, audience=IDP_AUDIENCE
            ),
        ),
        aws_sts_test_endpoint=sts.url,
        gcp_certs_url=google.certs_url,
        # The whole suite comes from 127.0.0.1: the per-address limit would count every test
        # against one bucket (the limit itself is tested on a replica of its own).
        # The cluster admin lets this namespace claim the loopback clouds' identities.
        claim_policy=policies.allowing(namespace),
        **{"client_rate_limit_per_second": 1000.0, "client_rate_limit_burst": 2000, **extra},
    )


def _objects(
    namespace: str, keyset: keys.KeySet, registered: ed25519.Ed25519PrivateKey
) -> list[dict[str, Any]]:
    def agent(name: str, **spec: Any) -> dict[str, Any]:
        return {
            "apiVersion": "agentauth.dev/v1alpha1",
            "kind": "Agent",
            "metadata": {"name": name, "namespace": namespace},
            "spec": spec,
        }

    def pod(name: str, account: str, agent_name: str | None) -> list[dict[str, Any]]:
        labels = {"agentauth.dev/agent": agent_name} if agent_name else {"app": name}
        return [
            {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {"name": name, "namespace": namespace, "labels": labels},
                "spec": {
                    "serviceAccountName": account,
                    "containers": [{"name": "main", "image": "busybox"}],
                },
            }
        ]

    def account(name: str) -> dict[str, Any]:
        return {
            "apiVersion": "v1",
            "kind": "ServiceAccount",
            "metadata": {"name": name, "namespace": namespace},
        }

    jwk = {**signatures.public_jwk(registered), "kid": "registered-1"}
    return [
        account("research-sa"),
        account("helper-sa"),
        account("reborn-sa"),
        account("resource-sa"),
        agent(
            "research",
            serviceAccountName="research-sa",
            delegation={"allowed": True, "maxDepth": 2},
            federation={
                "aws": {"roleArns": ["arn:aws:iam::123456789012:role/research-agent"]},
                "gcp": {"serviceAccounts": [GCP_SERVICE_ACCOUNT]},
            },
        ),
        agent("helper", serviceAccountName="helper-sa", delegation={"allowed": True}),
        agent("reborn", serviceAccountName="reborn-sa"),
        agent("outside", publicKeys={"keys": [jwk]}),
        *pod("research-0", "research-sa", "research"),
        *pod("helper-0", "helper-sa", "helper"),
        *pod("reborn-0", "reborn-sa", "reborn"),
        *pod("resource-0", "resource-sa", None),  # a resource server that introspects
        {
            "apiVersion": "agentauth.dev/v1alpha1",
            "kind": "CapabilityGrant",
            "metadata": {"name": "docs", "namespace": namespace},
            "spec": {
                "agents": {"names": ["research", "helper", "reborn", "outside"]},
                "capabilities": [{"name": "document.read"}],
            },
        },
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": keys.SECRET_NAME, "namespace": namespace},
            "data": keyset.to_secret_data(),
        },
    ]


def ready(url: str) -> bool:
    try:
        return httpx.get(f"{url}/readyz", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


@contextlib.contextmanager
def running(
    cluster: server.DevCluster, kubectl: stack.Kubectl, api: Any, directory: Path
) -> Iterator[Stack]:
    namespace = f"atk-{uuid.uuid4().hex[:8]}"
    keyset = keys.generate_keyset(now=datetime.now(UTC) - timedelta(minutes=1))
    registered = ed25519.Ed25519PrivateKey.generate()
    idp = tokenkit.ClusterIssuer(issuer=IDP_ISSUER)
    sts = LoopbackSts()
    sts.add(ROLE)
    google = LoopbackGoogle(make_google_key("attack-1"))
    idp_server = ServerThread()
    replicas: list[stack.TokenServiceThread] = []
    kubectl("create", "namespace", namespace)
    try:
        stack.apply(kubectl, _objects(namespace, keyset, registered))
        jwks_app = web.Application()

        async def jwks(_: web.Request) -> web.Response:
            return web.json_response(idp.jwks())

        jwks_app.router.add_get("/jwks", jwks)
        idp_url = idp_server.serve_aiohttp(jwks_app)
        with serving(sts.server), serving(google.server):
            common = {"idp_jwks_url": f"{idp_url}/jwks", "sts": sts, "google": google}
            for extra in ({}, {"token_review": True}):
                thread = stack.TokenServiceThread(settings(cluster, namespace, **common, **extra))
                replicas.append(thread.start())
            for thread in replicas:
                stack.wait_for(lambda t=thread: ready(t.url), timeout=30, message="readyz")
            yield Stack(
                cluster=cluster,
                api=api,
                namespace=namespace,
                keyset=keyset,
                a=Replica("a", replicas[0]),
                b=Replica("b", replicas[1]),
                idp=idp,
                sts=sts,
                google=google,
                registered_key=registered,
                directory=directory,
                common=common,
            )
    finally:
        for thread in replicas:
            thread.stop()
        idp_server.close()
        kubectl("delete", "namespace", namespace, "--wait=false")


class Records(logging.Handler):
    """Every record of a logger (and its children) while installed, for assertions."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []
        self._lock2 = threading.Lock()

    def emit(self, record: logging.LogRecord) -> None:
        with self._lock2:
            self.records.append(record)


@contextlib.contextmanager
def recording(*names: str) -> Iterator[Records]:
    handler = Records()
    loggers = [logging.getLogger(name) for name in names]
    saved = [(lg, lg.level) for lg in loggers]
    for lg in loggers:
        lg.addHandler(handler)
        lg.setLevel(logging.DEBUG if lg.name != "agentauth.audit" else logging.INFO)
    try:
        yield handler
    finally:
        for lg, level in saved:
            lg.removeHandler(handler)
            lg.setLevel(level)
