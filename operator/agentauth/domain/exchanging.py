"""The RFC 8693 token-exchange decision, as pure functions over a snapshot of the caches.

The HTTP layer verifies the presented credential (``serviceaccounts``, ``tokens``, federation),
builds a ``Snapshot`` of its caches and calls into this module; nothing here performs I/O.

Rules (each failure raises a typed ``errors.OAuthError``):

- Pod binding (Kubernetes service-account tokens): the token's pod must exist in the cache with
  the same uid, the token's service account must exist with the uid the token names (a service
  account deleted and created again under its name does not accept its predecessor's tokens), the
  pod must carry ``agentauth.dev/agent=<agent>``, run as the token's service account, which must
  be the Agent's ``serviceAccountName``, and match the Agent's ``podSelector``.
- Agent usability: the Agent must exist, not be suspended and not be being deleted. If the
  controller published ``Ready=False`` the exchange is refused with its reason, except for
  ``NoCapabilities`` (capabilities are recomputed here from the grant cache, which may be newer
  than the status). An Agent without status (not yet reconciled) is usable: every check that
  ``Ready`` summarises (service account, pod, capabilities) is repeated here against the caches.
- Scope: capabilities are computed with ``capabilities.effective_capabilities`` from the cached
  grants, never read from ``Agent.status`` (a deleted grant takes effect immediately). A requested
  scope may only narrow what is held (``invalid_scope`` otherwise). Without a requested scope the
  token gets every held ``Automatic`` capability. A ``Required`` capability is included only while
  an ``Approved`` AccessRequest of this agent that lists it has a ``grantedUntil`` in the future;
  the token then expires no later than that ``grantedUntil``.
- Audience: ``audience``/``resource`` must be our issuer or the ``resourceURI`` of a ToolServer
  in the agent's own namespace that holds that URI alone (``invalid_target`` otherwise: no such
  ToolServer, one the cluster's claim policy does not allow, or a URI claimed by ToolServers in
  several places, see :mod:`agentauth.domain.toolservers`). A token for a ToolServer names it in
  its ``tool_server`` claim (``{namespace, name, uid}``), which resource servers check against
  their own identity; for a ToolServer without a requested scope the scope is further narrowed
  to the capabilities its tools need.
- Lifetime: min(requested ``expires_in``, the Agent's ``tokenTTL``, 1 h, ``grantedUntil``, and the
  subject token's own expiry for delegated tokens).
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from agentauth.domain import (
    approvals,
    capabilities,
    claimpolicy,
    durations,
    errors,
    jose,
    serviceaccounts,
    tokens,
    toolservers,
)
from agentauth.domain.models import (
    AGENT_LABEL,
    AccessRequest,
    Agent,
    CapabilityGrant,
    EffectiveCapability,
    ToolServer,
)

GRANT_TYPE_TOKEN_EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"
TOKEN_TYPE_JWT = "urn:ietf:params:oauth:token-type:jwt"
TOKEN_TYPE_ID_TOKEN = "urn:ietf:params:oauth:token-type:id_token"
TOKEN_TYPE_AWS = "urn:agentauth:params:token-type:aws-signed-request"
TOKEN_TYPE_ACCESS_TOKEN = "urn:ietf:params:oauth:token-type:access_token"
SUBJECT_TOKEN_TYPES = (TOKEN_TYPE_JWT, TOKEN_TYPE_ID_TOKEN, TOKEN_TYPE_AWS, TOKEN_TYPE_ACCESS_TOKEN)
ACTOR_TOKEN_TYPES = (TOKEN_TYPE_ACCESS_TOKEN, TOKEN_TYPE_JWT)
MAX_SCOPE_ENTRIES = 64
READY_REASONS_RECOMPUTED = frozenset({"NoCapabilities"})
_SINGLE_VALUED = (
    "grant_type",
    "subject_token",
    "subject_token_type",
    "actor_token",
    "actor_token_type",
    "scope",
    "audience",
    "requested_token_type",
    "expires_in",
)


# -- request parsing ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Target:
    """What the client asks the token to be: scope, audience, lifetime (all optional)."""

    scope: tuple[str, ...] | None = None
    audience: str | None = None
    requested_lifetime: timedelta | None = None
    may_act: str | None = None
    """An agent identifier allowed to present the issued token as a delegation's subject."""


@dataclass(frozen=True, slots=True)
class ExchangeRequest:
    """A syntactically valid RFC 8693 token-exchange request."""

    subject_token: str
    subject_token_type: str
    actor_token: str | None = None
    actor_token_type: str | None = None
    target: Target = field(default_factory=Target)


def parse_scope(raw: str) -> tuple[str, ...]:
    """Split a space-separated ``scope``; every entry must be a capability name or pattern."""
    entries = tuple(dict.fromkeys(raw.split()))
    if len(entries) > MAX_SCOPE_ENTRIES:
        raise errors.InvalidScope(f"scope has more than {MAX_SCOPE_ENTRIES} entries")
    for entry in entries:
        concrete = entry[:-2] + ".x" if entry.endswith(".*") else entry
        if not capabilities.is_capability_name(concrete):
            raise errors.InvalidScope(f"scope entry {entry!r} is not a capability name")
    return entries


def parse_request(form: Mapping[str, Sequence[str]]) -> ExchangeRequest:
    """Validate the form parameters of ``POST /oauth2/token`` for a token exchange."""
    repeated = any(len(values) > 1 for values in form.values())  # most requests repeat none
    for name in _SINGLE_VALUED if repeated else ():
        if len(form.get(name, ())) > 1:
            raise errors.InvalidRequest(f"parameter {name} is repeated")

    def one(name: str) -> str | None:
        values = form.get(name)
        return values[0] if values else None

    grant_type = one("grant_type")
    if not grant_type:
        raise errors.InvalidRequest("missing parameter: grant_type")
    if grant_type != GRANT_TYPE_TOKEN_EXCHANGE:
        raise errors.UnsupportedGrantType(f"grant_type {grant_type!r} is not supported")
    subject_token, subject_token_type = one("subject_token"), one("subject_token_type")
    if not subject_token:
        raise errors.InvalidRequest("missing parameter: subject_token")
    if not subject_token_type:
        raise errors.InvalidRequest("missing parameter: subject_token_type")
    if subject_token_type not in SUBJECT_TOKEN_TYPES:
        raise errors.UnsupportedTokenType(
            f"subject_token_type {subject_token_type!r} is not supported"
        )
    actor_token, actor_token_type = one("actor_token"), one("actor_token_type")
    if actor_token and not actor_token_type:
        raise errors.InvalidRequest("missing parameter: actor_token_type")
    if actor_token_type and not actor_token:
        raise errors.InvalidRequest("actor_token_type given without actor_token")
    if actor_token_type and actor_token_type not in ACTOR_TOKEN_TYPES:
        raise errors.UnsupportedTokenType(f"actor_token_type {actor_token_type!r} is not supported")
    requested_type = one("requested_token_type")
    if requested_type not in (None, TOKEN_TYPE_ACCESS_TOKEN, TOKEN_TYPE_JWT):
        raise errors.InvalidRequest(f"requested_token_type {requested_type!r} is not supported")
    return ExchangeRequest(
        subject_token=subject_token,
        subject_token_type=subject_token_type,
        actor_token=actor_token or None,
        actor_token_type=actor_token_type or None,
        target=parse_target(form),
    )


def _one(form: Mapping[str, Sequence[str]], name: str) -> str | None:
    values = form.get(name)
    return values[0] if values else None


_SECONDS = re.compile(r"[0-9]{1,9}")
_LABEL = r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?"
_AGENT_ID = re.compile(rf"aauth:{_LABEL}\.{_LABEL}@[A-Za-z0-9.-]{{1,253}}")


def parse_target(form: Mapping[str, Sequence[str]]) -> Target:
    """``scope``, ``audience``/``resource`` (RFC 8707) and ``expires_in`` of a token request."""
    repeated = any(len(values) > 1 for values in form.values())  # most requests repeat none
    for name in ("scope", "audience", "expires_in", "may_act") if repeated else ():
        if len(form.get(name, ())) > 1:
            raise errors.InvalidRequest(f"parameter {name} is repeated")
    raw_scope = _one(form, "scope")
    scope = parse_scope(raw_scope) or None if raw_scope is not None else None
    targets = [*form.get("audience", ()), *form.get("resource", ())]
    if len(set(targets)) > 1:
        raise errors.InvalidTarget("only one audience/resource may be requested per token")
    lifetime = None
    raw_lifetime = _one(form, "expires_in")
    if raw_lifetime is not None:
        # ASCII digits only (str.isdigit accepts '²'), and bounded before timedelta sees it.
        if _SECONDS.fullmatch(raw_lifetime) is None or int(raw_lifetime) <= 0:
            raise errors.InvalidRequest("expires_in must be a positive number of seconds")
        lifetime = min(timedelta(seconds=int(raw_lifetime)), tokens.MAX_LIFETIME)
    may_act = _one(form, "may_act")
    if may_act is not None and _AGENT_ID.fullmatch(may_act) is None:
        raise errors.InvalidRequest(
            "may_act must be an agent identifier such as aauth:<name>.<namespace>@<trust-domain>"
        )
    return Target(
        scope=scope,
        audience=targets[0] if targets else None,
        requested_lifetime=lifetime,
        may_act=may_act,
    )


# -- the snapshot ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Pod:
    """The fields of a pod that binding needs."""

    namespace: str
    name: str
    uid: str
    labels: Mapping[str, str]
    service_account: str
    terminating: bool = False

    @classmethod
    def from_api(cls, obj: Mapping[str, Any]) -> Pod:
        meta, spec = obj.get("metadata") or {}, obj.get("spec") or {}
        return cls(
            namespace=str(meta.get("namespace", "")),
            name=str(meta.get("name", "")),
            uid=str(meta.get("uid", "")),
            labels=dict(meta.get("labels") or {}),
            service_account=str(
                spec.get("serviceAccountName") or spec.get("serviceAccount") or "default"
            ),
            terminating=meta.get("deletionTimestamp") is not None,
        )


Key = tuple[str, str]


class Snapshot:
    """What the caches hold, indexed for the decisions of this module.

    Built from whole collections (tests, benchmarks, ``MemoryState``) or kept current one object at
    a time (``put_*``: the token service's watch events), so a change costs what the changed
    object costs, never a rebuild of the cluster. Every decision of this module is a synchronous
    function of one ``Snapshot``, and changes are applied on the same event loop between
    decisions, so each decision sees one consistent state.

    Per-request lookups are by key: the Agent and pod by (namespace, name), the grants of one
    namespace (:meth:`grants_in`), the access requests of one Agent, the ToolServers claiming one
    resource URI (:meth:`tool_servers_claiming`), the Agents with ``spec.federation``
    (:meth:`federated_agents`). What an Agent holds (:meth:`held`) and its requests as they stand
    (:meth:`access_requests_of`) are memoised per Agent object and are recomputed when that
    Agent, a grant of its namespace or one of its requests changes, or the next grant expires.
    """

    def __init__(
        self,
        *,
        agents: Mapping[Key, Agent] | None = None,
        grants: Iterable[CapabilityGrant] = (),
        access_requests: Iterable[AccessRequest] = (),
        tool_servers: Iterable[ToolServer] = (),
        pods: Mapping[Key, Pod] | None = None,
        claim_policy: claimpolicy.ClaimPolicy | None = None,
        service_accounts: Mapping[Key, str] | None = None,
    ) -> None:
        self.claim_policy = claim_policy if claim_policy is not None else claimpolicy.ClaimPolicy()
        """Who may claim which resource URI (and cloud identity): the token service's setting."""
        self.agents: dict[Key, Agent] = {}
        self.pods: dict[Key, Pod] = dict(pods or {})
        self.service_accounts: dict[Key, str] = dict(service_accounts or {})
        """The uid of each service account of the watched namespaces, by (namespace, name)."""
        self._federated: dict[Key, Agent] = {}
        self._grants: dict[str, dict[str, CapabilityGrant]] = {}
        self._grants_sorted: dict[str, tuple[CapabilityGrant, ...]] = {}
        self._grants_version: dict[str, int] = {}
        self._requests: dict[Key, dict[str, AccessRequest]] = {}
        self._requests_version: dict[Key, int] = {}
        self._request_agent: dict[Key, Key] = {}
        self._tool_servers: dict[Key, ToolServer] = {}
        self._by_uri: dict[str | None, dict[Key, ToolServer]] = {}
        self._tick = 0
        self._held: dict[Key, tuple[Agent, int, datetime | None, list[EffectiveCapability]]] = {}
        self._counted: dict[Key, tuple[Agent, int, int, datetime | None, list[AccessRequest]]] = {}
        self._scopes: dict[Key, tuple[object, object, object, object, ScopeDecision]] = {}
        self._decisions: dict[Key, _MemoisedDecision] = {}
        self._bindings: dict[Key, _Binding] = {}
        for key, agent in (agents or {}).items():
            self.put_agent(key, agent)
        for grant in grants:
            self.put_grant(_key_of(grant), grant)
        for request in access_requests:
            self.put_access_request(_key_of(request), request)
        for server in tool_servers:
            self.put_tool_server(_key_of(server), server)

    # -- reading -------------------------------------------------------------------------------

    def agent(self, namespace: str, name: str) -> Agent | None:
        return self.agents.get((namespace, name))

    @property
    def grants(self) -> list[CapabilityGrant]:
        """Every grant (a new list, O(grants): per-request code uses :meth:`grants_in`)."""
        return [g for by_name in self._grants.values() for g in by_name.values()]

    @property
    def access_requests(self) -> list[AccessRequest]:
        """Every access request (a new list; per-request code uses :meth:`access_requests_of`)."""
        return [r for by_name in self._requests.values() for r in by_name.values()]

    @property
    def tool_servers(self) -> list[ToolServer]:
        """Every ToolServer (a new list; per-request code uses :meth:`tool_servers_claiming`)."""
        return list(self._tool_servers.values())

    def grants_in(self, namespace: str) -> Sequence[CapabilityGrant]:
        """The grants of ``namespace``, sorted by name."""
        found = self._grants_sorted.get(namespace)
        if found is None:
            by_name = self._grants.get(namespace, {})
            found = tuple(by_name[name] for name in sorted(by_name))
            self._grants_sorted[namespace] = found
        return found

    def tool_servers_claiming(self, uri: str | None) -> list[ToolServer]:
        """The ToolServers whose normalised ``resourceURI`` is that of ``uri`` (every namespace,
        before the claim policy); none when ``uri`` is ``None`` or cannot be normalised."""
        if uri is None:
            return []
        try:
            wanted = claimpolicy.normalize_resource_uri(uri)
        except ValueError:
            return []
        return list(self._by_uri.get(wanted, {}).values())

    def federated_agents(self) -> list[Agent]:
        """The Agents with a ``spec.federation`` (the only ones a cloud identity can match)."""
        return list(self._federated.values())

    def sizes(self) -> dict[str, int]:
        return {
            "agents": len(self.agents),
            "capabilitygrants": sum(len(by_name) for by_name in self._grants.values()),
            "accessrequests": len(self._request_agent),
            "toolservers": len(self._tool_servers),
            "pods": len(self.pods),
        }

    # -- keeping current -----------------------------------------------------------------------

    def put_agent(self, key: Key, agent: Agent | None) -> None:
        """Store (or with ``None`` remove) the Agent at ``key``."""
        if agent is None:
            self.agents.pop(key, None)
            self._federated.pop(key, None)
            self._held.pop(key, None)
            self._counted.pop(key, None)
            self._scopes.pop(key, None)
            self._decisions.pop(key, None)
            return
        self.agents[key] = agent
        if agent.spec.federation is not None:
            self._federated[key] = agent
        else:
            self._federated.pop(key, None)

    def put_grant(self, key: Key, grant: CapabilityGrant | None) -> None:
        namespace, name = key
        if grant is None:
            if self._grants.get(namespace, {}).pop(name, None) is None:
                return
        else:
            self._grants.setdefault(namespace, {})[name] = grant
        self._grants_sorted.pop(namespace, None)
        self._tick += 1
        self._grants_version[namespace] = self._tick

    def put_access_request(self, key: Key, request: AccessRequest | None) -> None:
        previous = self._request_agent.pop(key, None)
        if previous is not None:
            self._requests.get(previous, {}).pop(key[1], None)
            self._touch_requests(previous)
        if request is not None:
            owner = (key[0], request.spec.agent)
            self._requests.setdefault(owner, {})[key[1]] = request
            self._request_agent[key] = owner
            self._touch_requests(owner)

    def _touch_requests(self, owner: Key) -> None:
        self._tick += 1
        self._requests_version[owner] = self._tick
        if not self._requests.get(owner, True):
            del self._requests[owner]

    def put_tool_server(self, key: Key, server: ToolServer | None) -> None:
        previous = self._tool_servers.pop(key, None)
        if previous is not None:
            self._by_uri.get(toolservers.normalized_uri(previous), {}).pop(key, None)
        if server is not None:
            self._tool_servers[key] = server
            self._by_uri.setdefault(toolservers.normalized_uri(server), {})[key] = server

    def put_pod(self, key: Key, pod: Pod | None) -> None:
        if pod is None:
            self.pods.pop(key, None)
            self._bindings.pop(key, None)
        else:
            self.pods[key] = pod

    def put_service_account(self, key: Key, uid: str | None) -> None:
        if uid is None:
            self.service_accounts.pop(key, None)
        else:
            self.service_accounts[key] = uid

    # -- derived, memoised ---------------------------------------------------------------------

    def held(self, agent: Agent, *, now: datetime) -> list[EffectiveCapability]:
        """``capabilities.effective_capabilities`` over the grants of the Agent's namespace,
        memoised per Agent object until a grant of its namespace changes or the next one
        expires."""
        key = (agent.metadata.namespace or "", agent.metadata.name or "")
        version = self._grants_version.get(key[0], 0)
        cached = self._held.get(key)
        if (
            cached is not None
            and _same_selection(cached[0], agent)
            and cached[1] == version
            and (cached[2] is None or now < cached[2])
        ):
            return cached[3]
        grants = self.grants_in(key[0])
        result = capabilities.effective_capabilities(agent, grants, now=now)
        self._held[key] = (agent, version, capabilities.next_expiry(grants, now=now), result)
        return result

    def access_requests_of(
        self, agent: Agent, *, now: datetime | None = None
    ) -> list[AccessRequest]:
        """The access requests of this Agent object, as they stand under this snapshot's grants.

        Only requests filed for this very object (``spec.agentUID``, stamped by the admission
        webhook, equals the Agent's uid): an Agent deleted and created again under its name, in
        the same second or not, inherits nothing, and a request without the stamp belongs to no
        one. An ``Approved`` request stays Approved only while its approvals still hold under the
        grants as they are in this snapshot (``approvals.require_still_approved``: each approval was
        given under the same grant object, by UID, with the same approvers and quorum); otherwise
        it is returned with the status the controller writes for it (``approvals.evaluate``:
        Expired, reason ``ApprovalWithdrawn``), at once, without waiting for the controller. So
        deleting a grant voids every approval given under it, even if a grant of the same name
        is created again. ``now`` (default: the current time) decides which grants have expired.
        """
        key = (agent.metadata.namespace or "", agent.metadata.name or "")
        moment = now if now is not None else datetime.now(UTC)
        grants_version = self._grants_version.get(key[0], 0)
        requests_version = self._requests_version.get(key, 0)
        cached = self._counted.get(key)
        if (
            cached is not None
            and _same_selection(cached[0], agent)
            and cached[1] == grants_version
            and cached[2] == requests_version
            and (cached[3] is None or moment < cached[3])
        ):
            return cached[4]
        grants = self.grants_in(key[0])
        resolutions: dict[tuple[tuple[str, ...], str], approvals.ResolvedRequest | None] = {}
        counted = [
            _as_it_stands(request, agent=agent, grants=grants, now=moment, memo=resolutions)
            for request in self._requests.get(key, {}).values()
            if request.spec.agent_uid and request.spec.agent_uid == agent.metadata.uid
        ]
        self._counted[key] = (
            agent,
            grants_version,
            requests_version,
            capabilities.next_expiry(grants, now=moment),
            counted,
        )
        return counted

    def select_scope(
        self,
        agent: Agent,
        *,
        requested: tuple[str, ...] | None,
        now: datetime,
        restrict_to: Sequence[str] | None = None,
    ) -> ScopeDecision:
        """:func:`select_scope` over what ``agent`` holds and its requests as they stand,
        memoised per Agent for its last (``requested``, ``restrict_to``): the same inputs give
        the same decision until an approval it relies on ends (its ``granted_until``)."""
        held = self.held(agent, now=now)
        requests = self.access_requests_of(agent, now=now)
        key = (agent.metadata.namespace or "", agent.metadata.name or "")
        restricted = tuple(restrict_to) if restrict_to is not None else None
        cached = self._scopes.get(key)
        if (
            cached is not None
            and cached[0] is held
            and cached[1] is requests
            and cached[2] == requested
            and cached[3] == restricted
            and (cached[4].granted_until is None or now < cached[4].granted_until)
        ):
            return cached[4]
        decision = select_scope(
            agent=agent,
            held=held,
            requests=requests,
            requested=requested,
            now=now,
            restrict_to=restrict_to,
        )
        self._scopes[key] = (held, requests, requested, restricted, decision)
        return decision

    def _memo_state(self, key: Key) -> tuple[int, int, datetime | None]:
        """What the memoised results for the Agent at ``key`` were computed under: the version
        of its namespace's grants, the version of its requests, and the first moment they stop
        holding (the next grant expiry), as :meth:`held` and :meth:`access_requests_of` check."""
        held, counted = self._held.get(key), self._counted.get(key)
        ends = [
            end
            for end in (held[2] if held else None, counted[3] if counted else None)
            if end is not None
        ]
        return (
            self._grants_version.get(key[0], 0),
            self._requests_version.get(key, 0),
            min(ends) if ends else None,
        )


@dataclass(frozen=True, slots=True)
class _MemoisedDecision:
    """A decision of :func:`decide_for_agent` and everything it was a function of."""

    key: Key
    agent: Agent
    pod: Pod | None
    request: tuple[Target, str, str]
    grants_version: int
    requests_version: int
    until: datetime | None
    decision: Decision

    def holds(self, *, request: tuple[Target, str, str], snapshot: Snapshot, now: datetime) -> bool:
        """Whether :attr:`decision` is still the answer to ``request`` at ``now``, for the Agent
        and pod objects it was made for (the caller compares those): the same request, the
        namespace's grants and the Agent's requests unchanged, the next grant expiry not
        passed."""
        return (
            self.request == request
            and self.grants_version == snapshot._grants_version.get(self.key[0], 0)
            and self.requests_version == snapshot._requests_version.get(self.key, 0)
            and (self.until is None or now < self.until)
        )


def _same_selection(cached: Agent, agent: Agent) -> bool:
    """Whether a result computed for ``cached`` holds for ``agent``: what grants select by
    (namespace, name, labels) and the uid requests are filed for are the same (a status write
    changes neither)."""
    if cached is agent:
        return True
    old, new = cached.metadata, agent.metadata
    return (
        old.uid == new.uid
        and old.name == new.name
        and old.namespace == new.namespace
        and old.labels == new.labels
    )


def _key_of(obj: AccessRequest | CapabilityGrant | ToolServer) -> Key:
    return (obj.metadata.namespace or "", obj.metadata.name or "")


def _as_it_stands(
    request: AccessRequest,
    *,
    agent: Agent,
    grants: Sequence[CapabilityGrant],
    now: datetime,
    memo: dict[tuple[tuple[str, ...], str], approvals.ResolvedRequest | None],
) -> AccessRequest:
    """``request``, or for an Approved one whose approvals no longer hold, a copy with the
    status the controller will write (Expired, ``ApprovalWithdrawn``). ``memo`` keeps the
    resolution per (capabilities, duration): an agent's requests mostly ask the same."""
    status = request.status
    if status is None or status.phase != "Approved":
        return request
    asked = (tuple(request.spec.capabilities), request.spec.duration)
    if asked not in memo:
        try:
            memo[asked] = approvals.resolve_existing(
                request=request, agent=agent, all_grants=grants, now=now
            )
        except approvals.RequestClosed:
            memo[asked] = None
    resolved = memo[asked]
    try:
        approvals.require_still_approved(request, resolved=resolved)
    except approvals.ApprovalWithdrawn:
        pass
    else:
        return request
    withdrawn = approvals.evaluate(
        request,
        resolved=resolved,
        pending_timeout=approvals.DEFAULT_PENDING_TIMEOUT,
        now=now,
    )
    return request.model_copy(update={"status": withdrawn})


def agent_label(agent: Agent) -> str:
    return f"{agent.metadata.namespace}/{agent.metadata.name}"


# -- binding and usability ---------------------------------------------------------------------


@dataclass(slots=True)
class _Binding:
    """A binding of :func:`bind_pod` and the objects it was a function of, and the last
    memoised decision (:func:`decide_for_agent`) for the Agent and pod it bound: the one field
    written after creation, so that a pod's next exchange finds both in one look-up."""

    identity: serviceaccounts.ServiceAccountIdentity
    pod: Pod
    agent_key: Key
    agent: Agent
    account_key: Key
    account_uid: str
    decision: _MemoisedDecision | None = None


def bind_pod(
    identity: serviceaccounts.ServiceAccountIdentity, snapshot: Snapshot
) -> tuple[Agent, Pod]:
    """The Agent the pod behind a verified service-account token acts as.

    A binding is a function of the identity, the pod, the Agent the pod names and the service
    account's uid, and of nothing else: it is kept per pod with those objects, and reused while
    the snapshot holds the very same objects (every watch event stores a new object, so any
    change to one of them binds again).
    """
    bound = _binding(identity, snapshot)
    return bound.agent, bound.pod


def _binding(identity: serviceaccounts.ServiceAccountIdentity, snapshot: Snapshot) -> _Binding:
    pod_key = (identity.namespace, identity.pod_name)
    bound = snapshot._bindings.get(pod_key)
    if (
        bound is not None
        and (bound.identity is identity or bound.identity == identity)
        and snapshot.pods.get(pod_key) is bound.pod
        and snapshot.agents.get(bound.agent_key) is bound.agent
        and snapshot.service_accounts.get(bound.account_key) is bound.account_uid
    ):
        return bound
    agent, pod = _bind_pod(identity, snapshot)
    account_key = (identity.namespace, identity.service_account)
    bound = snapshot._bindings[pod_key] = _Binding(
        identity=identity,
        pod=pod,
        agent_key=(identity.namespace, pod.labels[AGENT_LABEL]),
        agent=agent,
        account_key=account_key,
        account_uid=snapshot.service_accounts[account_key],
    )
    return bound


def _bind_pod(
    identity: serviceaccounts.ServiceAccountIdentity, snapshot: Snapshot
) -> tuple[Agent, Pod]:
    where = f"{identity.namespace}/{identity.pod_name}"
    pod = snapshot.pods.get((identity.namespace, identity.pod_name))
    if pod is None or pod.uid != identity.pod_uid:
        raise errors.InvalidGrant(f"pod {where} bound to the token no longer exists")
    if pod.terminating:
        # Kubernetes stops accepting the pod's bound tokens at deletion too (authn rechecks it).
        raise errors.InvalidGrant(f"pod {where} bound to the token is being deleted")
    agent_name = pod.labels.get(AGENT_LABEL)
    if not agent_name:
        raise errors.InvalidGrant(f"pod {where} has no {AGENT_LABEL} label")
    agent = snapshot.agent(identity.namespace, agent_name)
    if agent is None:
        raise errors.InvalidGrant(f"agent {identity.namespace}/{agent_name} does not exist")
    if pod.service_account != identity.service_account or (
        agent.spec.service_account_name != identity.service_account
    ):
        raise errors.InvalidGrant(
            f"service account {identity.service_account} is not the service account of agent "
            f"{agent_label(agent)}"
        )
    selector = agent.spec.pod_selector
    if selector is not None and not selector.matches(dict(pod.labels)):
        raise errors.InvalidGrant(
            f"pod {where} does not match the podSelector of agent {agent_label(agent)}"
        )
    check_service_account_current(identity, snapshot)
    return agent, pod


def check_service_account_current(
    identity: serviceaccounts.ServiceAccountIdentity, snapshot: Snapshot
) -> None:
    """The token's service account still exists with the uid the token was minted for.

    Kubernetes keeps projected tokens of a deleted service account verifiable by signature until
    they expire; a service account created again under the same name is a new identity, and its
    predecessor's tokens (which carry the old uid) must not act for it.
    """
    current = snapshot.service_accounts.get((identity.namespace, identity.service_account))
    if (
        current is None
        or not identity.service_account_uid
        or not hmac.compare_digest(current, identity.service_account_uid)
    ):
        raise errors.InvalidGrant(
            f"service account {identity.namespace}/{identity.service_account} of the token no "
            "longer exists (deleted, or created again under the same name)"
        )


def check_agent_usable(agent: Agent) -> None:
    """Refuse suspended, deleted or not-Ready agents (see the module docstring)."""
    if agent.metadata.deletion_timestamp is not None:
        raise errors.InvalidGrant(f"agent {agent_label(agent)} is being deleted")
    if agent.spec.suspended:
        raise errors.InvalidGrant(f"agent {agent_label(agent)} is suspended")
    status = agent.status
    if status is None:
        return
    for condition in status.conditions:
        if condition.type == "Ready":
            if condition.status == "False" and condition.reason not in READY_REASONS_RECOMPUTED:
                raise errors.InvalidGrant(
                    f"agent {agent_label(agent)} is not ready: {condition.reason}"
                )
            return


# -- scope -------------------------------------------------------------------------------------


def covers(pattern: str, wanted: str) -> bool:
    """Whether a held ``pattern`` covers the requested name or narrower pattern ``wanted``."""
    if pattern == wanted:
        return True
    prefix = pattern[:-1]
    return pattern.endswith(".*") and wanted.startswith(prefix) and len(wanted) > len(prefix)


@dataclass(frozen=True, slots=True)
class ScopeDecision:
    scope: tuple[str, ...]
    granted_until: datetime | None
    access_requests: tuple[str, ...] = ()


def approved_until(
    wanted: str, requests: Iterable[AccessRequest], *, now: datetime
) -> tuple[datetime, str] | None:
    """The latest ``grantedUntil`` of an approved, unexpired request listing ``wanted``."""
    best: tuple[datetime, str] | None = None
    for request in requests:
        status = request.status
        if status is None or status.phase != "Approved" or status.granted_until is None:
            continue
        until = _aware(status.granted_until)
        if until <= now or request.metadata.deletion_timestamp is not None:
            continue
        # Exact names only: approving payments.authorize must never yield a payments.* scope.
        if wanted in request.spec.capabilities and (best is None or until > best[0]):
            best = (until, request.metadata.name or "")
    return best


def select_scope(
    *,
    agent: Agent,
    held: Sequence[EffectiveCapability],
    requests: Sequence[AccessRequest],
    requested: tuple[str, ...] | None,
    now: datetime,
    restrict_to: Sequence[str] | None = None,
) -> ScopeDecision:
    """The token's scope per the module rules; ``restrict_to`` is a ToolServer's capabilities."""
    if requested is None:
        candidates: list[str] = (
            list(dict.fromkeys(restrict_to))
            if restrict_to is not None
            else [e.name for e in held if e.approval == "Automatic"]
            + [
                c
                for r in requests
                for c in r.spec.capabilities
                if any(e.approval == "Required" and covers(e.name, c) for e in held)
            ]
        )
        strict = False
    else:
        candidates, strict = list(requested), True
    scope: list[str] = []
    until: datetime | None = None
    used: list[str] = []
    for wanted in dict.fromkeys(candidates):
        matching = [e for e in held if covers(e.name, wanted)]
        if any(e.approval == "Automatic" for e in matching):
            scope.append(wanted)
            continue
        approval = approved_until(wanted, requests, now=now) if matching else None
        if approval is not None:
            scope.append(wanted)
            until = approval[0] if until is None else min(until, approval[0])
            used.append(approval[1])
            continue
        if strict and not matching:
            raise errors.InvalidScope(
                f"capability {wanted} is not granted to agent {agent_label(agent)}"
            )
        if strict:
            raise errors.InvalidScope(
                f"capability {wanted} requires approval: file an AccessRequest for agent "
                f"{agent_label(agent)}"
            )
    return ScopeDecision(scope=tuple(scope), granted_until=until, access_requests=tuple(used))


@functools.lru_cache(maxsize=256)
def _ttl(text: str) -> timedelta:
    """An Agent's ``tokenTTL``, at most :data:`tokens.MAX_LIFETIME`."""
    return min(durations.parse_duration(text), tokens.MAX_LIFETIME)


def token_lifetime(
    *,
    requested: timedelta | None,
    agent: Agent,
    now: datetime,
    not_after: Iterable[datetime | None] = (),
) -> timedelta:
    """min(requested, the Agent's tokenTTL, 1 h, every ``not_after`` - now); at least 1 s."""
    lifetime = _ttl(agent.spec.token_ttl)
    if requested is not None and requested < lifetime:
        lifetime = requested
    for bound in not_after:
        if bound is not None:
            lifetime = min(lifetime, _aware(bound) - now)
    seconds = int(lifetime.total_seconds())
    if seconds < 1:
        raise errors.InvalidGrant("the requested access ends before a token could be used")
    return timedelta(seconds=seconds)


def resolve_audience(
    audience: str | None,
    *,
    issuer: str,
    tool_servers: Iterable[ToolServer],
    namespace: str,
    policy: claimpolicy.ClaimPolicy,
) -> tuple[str, ToolServer | None]:
    """Our issuer by default; otherwise the ToolServer in ``namespace`` that holds the named
    ``resourceURI`` alone.

    Only the agent's own namespace counts: capability names are not namespaced, so a grant in
    one namespace must never open another namespace's ToolServer. And the URI must not be
    claimed by any other ToolServer, here or in another namespace (contested: no token for
    anyone, so whoever squats a URI, before or after its owner, gets nothing for it), nor be
    outside what ``policy`` lets the namespace claim.
    """
    if audience is None or audience.rstrip("/") == issuer.rstrip("/"):
        return issuer, None
    not_ours = errors.InvalidTarget(
        f"{audience} is not the resource URI of a ToolServer in namespace {namespace}"
    )
    servers = list(tool_servers)
    claiming = toolservers.claimants(audience, servers, policy=policy)
    own = [server for server in claiming if server.metadata.namespace == namespace]
    if not own:
        raise not_ours
    if len(claiming) > 1:
        raise errors.InvalidTarget(
            f"resource URI {audience} is claimed by {len(claiming)} ToolServers; no token is "
            "issued for it while it is contested (see the Ready condition of the ToolServers in "
            f"namespace {namespace})"
        )
    server = own[0]
    return server.spec.resource_uri, server


# -- decisions ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Decision:
    """Everything needed to mint one agent token."""

    agent: Agent
    subject: str
    client_id: str
    scope: tuple[str, ...]
    audience: str
    lifetime: timedelta
    pod: Pod | None = None
    act: dict[str, Any] | None = None
    may_act: str | None = None
    access_requests: tuple[str, ...] = ()
    tool_server: ToolServer | None = None
    """The ToolServer ``audience`` belongs to; required unless the audience is our issuer."""
    templates: dict[tuple[str, str], tokens.Template] = field(
        default_factory=dict, init=False, compare=False, repr=False
    )
    """What :func:`mint` signs for this decision, per (issuer, algorithm), made at its first
    token."""


def tool_server_claim(server: ToolServer) -> dict[str, str]:
    """The ``tool_server`` claim of a token minted for ``server``."""
    return {
        "namespace": server.metadata.namespace or "",
        "name": server.metadata.name or "",
        "uid": server.metadata.uid or "",
    }


def decide_for_agent(
    *,
    agent: Agent,
    target: Target,
    snapshot: Snapshot,
    issuer: str,
    trust_domain: str,
    now: datetime,
    pod: Pod | None = None,
) -> Decision:
    """Decide a token for ``agent`` acting as itself (pod, cloud or registered-key identity)."""
    check_agent_usable(agent)
    # Without a ToolServer or an approval's end, a decision is a function of the Agent and pod
    # objects, the request, the grants of the namespace and the Agent's requests (their
    # versions) and of the time only through the next grant expiry: while all of these are the
    # same, so is the decision (the memoised scope and holdings it came from would be reused).
    memo_key = (agent.metadata.namespace or "", agent.metadata.name or "")
    request = (target, issuer, trust_domain)
    if target.audience is None:
        cached = snapshot._decisions.get(memo_key)
        if (
            cached is not None
            and cached.agent is agent
            and cached.pod is pod
            and cached.holds(request=request, snapshot=snapshot, now=now)
        ):
            return cached.decision
    audience, server = (
        (issuer, None)  # what resolve_audience answers for no audience, without the look-ups
        if target.audience is None
        else resolve_audience(
            target.audience,
            issuer=issuer,
            tool_servers=snapshot.tool_servers_claiming(target.audience),
            namespace=agent.metadata.namespace or "",
            policy=snapshot.claim_policy,
        )
    )
    scope = snapshot.select_scope(
        agent,
        requested=target.scope,
        now=now,
        restrict_to=[t.capability for t in server.spec.tools] if server is not None else None,
    )
    lifetime = token_lifetime(
        requested=target.requested_lifetime,
        agent=agent,
        now=now,
        not_after=(scope.granted_until,),
    )
    agent_id = capabilities.agent_id(
        name=agent.metadata.name or "",
        namespace=agent.metadata.namespace or "",
        trust_domain=trust_domain,
    )
    decision = Decision(
        agent=agent,
        subject=agent_id,
        client_id=agent_id,
        scope=scope.scope,
        audience=audience,
        lifetime=lifetime,
        pod=pod,
        access_requests=scope.access_requests,
        may_act=target.may_act,
        tool_server=server,
    )
    if server is None and scope.granted_until is None:
        grants_version, requests_version, until = snapshot._memo_state(memo_key)
        snapshot._decisions[memo_key] = _MemoisedDecision(
            key=memo_key,
            agent=agent,
            pod=pod,
            request=request,
            grants_version=grants_version,
            requests_version=requests_version,
            until=until,
            decision=decision,
        )
    return decision


def decide_for_service_account(
    *,
    identity: serviceaccounts.ServiceAccountIdentity,
    target: Target,
    snapshot: Snapshot,
    issuer: str,
    trust_domain: str,
    now: datetime,
) -> Decision:
    """Pod binding, then ``decide_for_agent``.

    The binding keeps the Agent's memoised decision (see ``decide_for_agent``), reused under the
    same conditions (:meth:`_MemoisedDecision.holds`): the binding holds the very Agent and pod
    objects it was made for (so ``check_agent_usable``, a function of the Agent object, passed
    for them)."""
    bound = _binding(identity, snapshot)
    memo = bound.decision
    if (
        memo is not None
        and target.audience is None
        and memo.holds(request=(target, issuer, trust_domain), snapshot=snapshot, now=now)
    ):
        return memo.decision
    decision = decide_for_agent(
        agent=bound.agent,
        target=target,
        snapshot=snapshot,
        issuer=issuer,
        trust_domain=trust_domain,
        now=now,
        pod=bound.pod,
    )
    memo = snapshot._decisions.get(
        (bound.agent.metadata.namespace or "", bound.agent.metadata.name or "")
    )
    bound.decision = memo if memo is not None and memo.decision is decision else None
    return decision


def mint(
    decision: Decision,
    *,
    keyset: Any,
    issuer: str,
    now: datetime,
    cnf_jwk: Mapping[str, Any] | None = None,
    algorithm: str = tokens.ALGORITHM,
) -> tokens.IssuedToken:
    """Sign the token ``decision`` describes (``algorithm``: the name in its ``alg``).

    A token for any audience but our issuer names its ToolServer (``tool_server``); a decision
    without one is a bug and is refused rather than minted unnamed. What the token says apart
    from its times is a function of the decision (immutable), ``issuer``, ``algorithm`` and
    ``cnf_jwk``: without ``cnf_jwk`` it is made once per decision and kept on it, so a memoised
    decision mints from it again.
    """
    if cnf_jwk is not None:
        return tokens.issue_from(
            _template(decision, issuer=issuer, cnf_jwk=cnf_jwk, algorithm=algorithm),
            keyset=keyset,
            now=now,
        )
    template = decision.templates.get((issuer, algorithm))
    if template is None:
        template = _template(decision, issuer=issuer, cnf_jwk=None, algorithm=algorithm)
        decision.templates[(issuer, algorithm)] = template
    return tokens.issue_from(template, keyset=keyset, now=now)


def _template(
    decision: Decision, *, issuer: str, cnf_jwk: Mapping[str, Any] | None, algorithm: str
) -> tokens.Template:
    agent = decision.agent
    extra: dict[str, Any] = {}
    if decision.may_act:
        extra["may_act"] = {"sub": decision.may_act}
    if decision.tool_server is not None:
        extra["tool_server"] = tool_server_claim(decision.tool_server)
    elif decision.audience.rstrip("/") != issuer.rstrip("/"):
        raise errors.ServerError(
            f"refusing to mint a token for audience {decision.audience} without naming its "
            "ToolServer"
        )
    return tokens.template(
        issuer=issuer,
        subject=decision.subject,
        agent=tokens.AgentRef(
            name=agent.metadata.name or "",
            namespace=agent.metadata.namespace or "",
            uid=agent.metadata.uid or "",
        ),
        audience=decision.audience,
        scope=decision.scope,
        lifetime=decision.lifetime,
        client_id=decision.client_id,
        cnf_jwk=cnf_jwk,
        act=decision.act,
        pod={"name": decision.pod.name, "uid": decision.pod.uid} if decision.pod else None,
        extra_claims=extra or None,
        algorithm=algorithm,
    )


# -- validity of tokens we issued (introspection, bearer authentication) -----------------------


def check_token_current(
    claims: tokens.AgentTokenClaims, *, snapshot: Snapshot, now: datetime
) -> Agent:
    """Whether a verified agent token is still backed by the caches: its Agent exists with the
    same uid and is usable, the pod it was issued to (``pod`` claim) still exists with the same
    uid and is not being deleted, and every scope entry is still held (and, for ``Required``
    capabilities, still approved). Returns the Agent; raises ``InvalidGrant`` otherwise."""
    ref = claims.agent
    agent = snapshot.agent(ref.namespace, ref.name)
    if agent is None or agent.metadata.uid != ref.uid:
        raise errors.InvalidGrant(f"agent {ref.namespace}/{ref.name} no longer exists")
    check_agent_usable(agent)
    named = claims.claims.get("tool_server")
    if named is not None:
        _check_tool_server_current(named, claims=claims, snapshot=snapshot)
    pod_claim = claims.claims.get("pod")
    if pod_claim is not None:
        name = pod_claim.get("name") if isinstance(pod_claim, Mapping) else None
        uid = pod_claim.get("uid") if isinstance(pod_claim, Mapping) else None
        pod = snapshot.pods.get((ref.namespace, name)) if isinstance(name, str) else None
        if pod is None or pod.uid != uid or pod.terminating:
            raise errors.InvalidGrant(
                f"pod {ref.namespace}/{name} the token was issued to no longer exists"
            )
    held = snapshot.held(agent, now=now)
    requests = snapshot.access_requests_of(agent, now=now)
    for entry in claims.scope:
        matching = [e for e in held if covers(e.name, entry)]
        if any(e.approval == "Automatic" for e in matching):
            continue
        if matching and approved_until(entry, requests, now=now) is not None:
            continue
        raise errors.InvalidGrant(f"capability {entry} is no longer granted")
    return agent


def _check_tool_server_current(
    named: Any, *, claims: tokens.AgentTokenClaims, snapshot: Snapshot
) -> None:
    """The token's ToolServer must still exist (same uid) and still hold its audience alone."""
    if not isinstance(named, Mapping):
        raise errors.InvalidGrant("the token's tool_server claim is malformed")
    namespace, name = str(named.get("namespace", "")), str(named.get("name", ""))
    aud = claims.claims.get("aud")
    audience = aud if isinstance(aud, str) else ""
    try:
        _, server = resolve_audience(
            audience,
            issuer="",
            tool_servers=snapshot.tool_servers_claiming(audience),
            namespace=namespace,
            policy=snapshot.claim_policy,
        )
    except errors.InvalidTarget:
        server = None
    if (
        server is None
        or server.metadata.name != name
        or (server.metadata.uid or "") != str(named.get("uid", ""))
    ):
        raise errors.InvalidGrant(
            f"ToolServer {namespace}/{name} the token was issued for no longer holds {audience}"
        )


def introspect(
    token: str,
    *,
    public_keys: jose.PublicKeySet,
    issuer: str,
    snapshot: Snapshot,
    now: datetime,
) -> dict[str, Any]:
    """RFC 7662 response: the claims with ``active: true``, or exactly ``{"active": false}`` for
    anything invalid, expired, signed by a dropped key, or no longer backed by the caches."""
    try:
        claims = tokens.verify(token, public_keys=public_keys, issuer=issuer, now=now)
        check_token_current(claims, snapshot=snapshot, now=now)
    except errors.OAuthError:
        return {"active": False}
    return {"active": True, "token_type": "Bearer", **claims.claims}


def audit_fingerprint(token: str) -> str:
    """A short, non-reversible handle of a presented token for audit lines (never the token)."""
    return hashlib.sha256(token.encode("utf-8", "replace")).hexdigest()[:16]


def _aware(moment: datetime) -> datetime:
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)
