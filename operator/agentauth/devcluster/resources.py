"""The registry of resource types the embedded API server serves.

Built-in kinds are declared once here; CustomResourceDefinitions add kinds at runtime. The
registry is the single source for discovery documents, OpenAPI documents, request routing and
RBAC attributes, so what ``kubectl api-resources`` shows is exactly what the server accepts.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Iterator
from typing import Any

ALL_VERBS = ("create", "delete", "deletecollection", "get", "list", "patch", "update", "watch")
CREATE_ONLY = ("create",)


@dataclasses.dataclass(frozen=True)
class ResourceType:
    """One served resource (plural) in one group, with every version it is served at."""

    group: str
    versions: tuple[str, ...]
    plural: str
    singular: str
    kind: str
    namespaced: bool
    verbs: tuple[str, ...] = ALL_VERBS
    short_names: tuple[str, ...] = ()
    categories: tuple[str, ...] = ()
    subresources: tuple[str, ...] = ()
    # Kinds with a status subresource split writes: the main resource ignores status and the
    # status subresource ignores everything else, and only spec changes bump generation.
    status_subresource: bool = False
    # For CRDs: version name -> openAPIV3Schema, and version name -> additionalPrinterColumns.
    schemas: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict, compare=False)
    printer_columns: dict[str, list[dict[str, Any]]] = dataclasses.field(
        default_factory=dict, compare=False
    )
    custom: bool = False
    # Kinds that exist only as a request (reviews): created, answered, never stored.
    virtual: bool = False
    # Bump generation on every change outside metadata/status (true for CRDs and most kinds).
    tracks_generation: bool = True

    @property
    def storage_version(self) -> str:
        return self.versions[0]

    def api_version(self, version: str | None = None) -> str:
        chosen = version or self.storage_version
        return f"{self.group}/{chosen}" if self.group else chosen

    @property
    def group_resource(self) -> str:
        """``plural.group`` as Kubernetes error messages name resources."""
        return f"{self.plural}.{self.group}" if self.group else self.plural

    def schema(self, version: str) -> dict[str, Any] | None:
        return self.schemas.get(version)

    def columns(self, version: str) -> list[dict[str, Any]]:
        return list(self.printer_columns.get(version, []))


def _core(
    plural: str,
    kind: str,
    *,
    namespaced: bool = True,
    short: tuple[str, ...] = (),
    subresources: tuple[str, ...] = (),
    status: bool = False,
    generation: bool = False,
) -> ResourceType:
    return ResourceType(
        group="",
        versions=("v1",),
        plural=plural,
        singular=kind.lower(),
        kind=kind,
        namespaced=namespaced,
        short_names=short,
        subresources=subresources,
        status_subresource=status,
        tracks_generation=generation,
    )


def _grouped(
    group: str,
    version: str,
    plural: str,
    kind: str,
    *,
    namespaced: bool = True,
    short: tuple[str, ...] = (),
    verbs: tuple[str, ...] = ALL_VERBS,
    virtual: bool = False,
    status: bool = False,
    generation: bool = False,
) -> ResourceType:
    return ResourceType(
        group=group,
        versions=(version,),
        plural=plural,
        singular=kind.lower(),
        kind=kind,
        namespaced=namespaced,
        short_names=short,
        verbs=verbs,
        virtual=virtual,
        status_subresource=status,
        subresources=("status",) if status else (),
        tracks_generation=generation,
    )


_DECLARED: tuple[ResourceType, ...] = (
    _core("namespaces", "Namespace", namespaced=False, short=("ns",), subresources=("status",)),
    _core("serviceaccounts", "ServiceAccount", short=("sa",), subresources=("token",)),
    _core("secrets", "Secret"),
    _core("configmaps", "ConfigMap", short=("cm",)),
    _core("events", "Event", short=("ev",)),
    _core("pods", "Pod", short=("po",), subresources=("status",), status=True),
    _core("services", "Service", short=("svc",), subresources=("status",), status=True),
    # No kubelet registers: the list is empty, as on a cluster without nodes.
    _core("nodes", "Node", namespaced=False, short=("no",), subresources=("status",), status=True),
    _core(
        "replicationcontrollers",
        "ReplicationController",
        short=("rc",),
        subresources=("status",),
        status=True,
        generation=True,
    ),
    _core("endpoints", "Endpoints", short=("ep",)),
    _grouped("events.k8s.io", "v1", "events", "Event", short=("ev",)),
    _grouped("batch", "v1", "jobs", "Job", status=True, generation=True),
    _grouped("batch", "v1", "cronjobs", "CronJob", short=("cj",), status=True, generation=True),
    _grouped("apps", "v1", "daemonsets", "DaemonSet", short=("ds",), status=True, generation=True),
    _grouped(
        "apps", "v1", "replicasets", "ReplicaSet", short=("rs",), status=True, generation=True
    ),
    _grouped(
        "apps", "v1", "statefulsets", "StatefulSet", short=("sts",), status=True, generation=True
    ),
    _grouped("apps", "v1", "controllerrevisions", "ControllerRevision"),
    _grouped(
        "policy",
        "v1",
        "poddisruptionbudgets",
        "PodDisruptionBudget",
        short=("pdb",),
        status=True,
        generation=True,
    ),
    _grouped(
        "networking.k8s.io",
        "v1",
        "networkpolicies",
        "NetworkPolicy",
        short=("netpol",),
        generation=True,
    ),
    _grouped(
        "networking.k8s.io",
        "v1",
        "ingresses",
        "Ingress",
        short=("ing",),
        status=True,
        generation=True,
    ),
    _grouped(
        "networking.k8s.io",
        "v1",
        "ingressclasses",
        "IngressClass",
        namespaced=False,
        generation=True,
    ),
    _grouped("discovery.k8s.io", "v1", "endpointslices", "EndpointSlice"),
    _grouped(
        "apiregistration.k8s.io",
        "v1",
        "apiservices",
        "APIService",
        namespaced=False,
        status=True,
    ),
    _grouped("coordination.k8s.io", "v1", "leases", "Lease"),
    _grouped(
        "apps", "v1", "deployments", "Deployment", short=("deploy",), status=True, generation=True
    ),
    _grouped(
        "apiextensions.k8s.io",
        "v1",
        "customresourcedefinitions",
        "CustomResourceDefinition",
        namespaced=False,
        short=("crd", "crds"),
        status=True,
        generation=True,
    ),
    _grouped("rbac.authorization.k8s.io", "v1", "roles", "Role"),
    _grouped("rbac.authorization.k8s.io", "v1", "rolebindings", "RoleBinding"),
    _grouped("rbac.authorization.k8s.io", "v1", "clusterroles", "ClusterRole", namespaced=False),
    _grouped(
        "rbac.authorization.k8s.io",
        "v1",
        "clusterrolebindings",
        "ClusterRoleBinding",
        namespaced=False,
    ),
    _grouped(
        "admissionregistration.k8s.io",
        "v1",
        "mutatingwebhookconfigurations",
        "MutatingWebhookConfiguration",
        namespaced=False,
        generation=True,
    ),
    _grouped(
        "admissionregistration.k8s.io",
        "v1",
        "validatingwebhookconfigurations",
        "ValidatingWebhookConfiguration",
        namespaced=False,
        generation=True,
    ),
    _grouped(
        "authentication.k8s.io",
        "v1",
        "tokenreviews",
        "TokenReview",
        namespaced=False,
        verbs=CREATE_ONLY,
        virtual=True,
    ),
    _grouped(
        "authentication.k8s.io",
        "v1",
        "selfsubjectreviews",
        "SelfSubjectReview",
        namespaced=False,
        verbs=CREATE_ONLY,
        virtual=True,
    ),
    _grouped(
        "authorization.k8s.io",
        "v1",
        "subjectaccessreviews",
        "SubjectAccessReview",
        namespaced=False,
        verbs=CREATE_ONLY,
        virtual=True,
    ),
    _grouped(
        "authorization.k8s.io",
        "v1",
        "selfsubjectaccessreviews",
        "SelfSubjectAccessReview",
        namespaced=False,
        verbs=CREATE_ONLY,
        virtual=True,
    ),
    _grouped(
        "authorization.k8s.io",
        "v1",
        "selfsubjectrulesreviews",
        "SelfSubjectRulesReview",
        namespaced=False,
        verbs=CREATE_ONLY,
        virtual=True,
    ),
    _grouped(
        "authorization.k8s.io",
        "v1",
        "localsubjectaccessreviews",
        "LocalSubjectAccessReview",
        verbs=CREATE_ONLY,
        virtual=True,
    ),
)


# Upstream's "all" category: what `kubectl get all` lists.
_CATEGORY_ALL = {
    ("", "pods"),
    ("", "replicationcontrollers"),
    ("", "services"),
    ("apps", "daemonsets"),
    ("apps", "deployments"),
    ("apps", "replicasets"),
    ("apps", "statefulsets"),
    ("batch", "cronjobs"),
    ("batch", "jobs"),
}
BUILTINS: tuple[ResourceType, ...] = tuple(
    dataclasses.replace(rt, categories=("all",)) if (rt.group, rt.plural) in _CATEGORY_ALL else rt
    for rt in _DECLARED
)


def from_crd(crd: dict[str, Any]) -> ResourceType | None:
    """The served resource for a stored CRD, or None when it serves no version."""
    spec = crd.get("spec") or {}
    names = spec.get("names") or {}
    versions = [v for v in spec.get("versions") or [] if v.get("served", True)]
    if not versions or not names.get("plural") or not names.get("kind"):
        return None
    # The storage version goes first: it is what objects are stored and returned as.
    versions.sort(key=lambda v: 0 if v.get("storage") else 1)
    subresources = (versions[0].get("subresources") or {}) if versions else {}
    schemas = {v["name"]: (v.get("schema") or {}).get("openAPIV3Schema") or {} for v in versions}
    columns = {v["name"]: list(v.get("additionalPrinterColumns") or []) for v in versions}
    return ResourceType(
        group=str(spec.get("group", "")),
        versions=tuple(str(v["name"]) for v in versions),
        plural=str(names["plural"]),
        singular=str(names.get("singular") or names["kind"].lower()),
        kind=str(names["kind"]),
        namespaced=spec.get("scope", "Namespaced") == "Namespaced",
        short_names=tuple(names.get("shortNames") or ()),
        categories=tuple(names.get("categories") or ()),
        subresources=tuple(key for key in ("status", "scale") if key in subresources),
        status_subresource="status" in subresources,
        schemas=schemas,
        printer_columns=columns,
        custom=True,
        tracks_generation=True,
    )


class Registry:
    """Lookup of served resource types by (group, version, plural) and by kind."""

    def __init__(self, builtins: Iterable[ResourceType] = BUILTINS) -> None:
        self._builtins = {(rt.group, rt.plural): rt for rt in builtins}
        self._custom: dict[tuple[str, str], ResourceType] = {}

    def set_custom(self, group: str, plural: str, resource: ResourceType | None) -> None:
        if resource is None:
            self._custom.pop((group, plural), None)
        else:
            self._custom[(group, plural)] = resource

    def __iter__(self) -> Iterator[ResourceType]:
        yield from self._builtins.values()
        yield from self._custom.values()

    def lookup(self, group: str, version: str, plural: str) -> ResourceType | None:
        found = self._builtins.get((group, plural)) or self._custom.get((group, plural))
        if found is None or version not in found.versions:
            return None
        return found

    def by_group_resource(self, group: str, plural: str) -> ResourceType | None:
        return self._builtins.get((group, plural)) or self._custom.get((group, plural))

    def groups(self) -> dict[str, list[str]]:
        """Group name -> served versions (preferred first), core group excluded."""
        found: dict[str, list[str]] = {}
        for rt in self:
            if not rt.group:
                continue
            versions = found.setdefault(rt.group, [])
            for version in rt.versions:
                if version not in versions:
                    versions.append(version)
        return found

    def in_group_version(self, group: str, version: str) -> list[ResourceType]:
        return [rt for rt in self if rt.group == group and version in rt.versions]
