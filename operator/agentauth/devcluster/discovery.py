"""Legacy API discovery documents built from the resource registry.

Clients that ask for aggregated discovery (``apidiscovery.k8s.io/v2``) get these legacy documents
with ``Content-Type: application/json``; client-go and kubectl then fall back to the legacy
per-group-version requests, which is a supported, clean path.
"""

from __future__ import annotations

from typing import Any

from agentauth.devcluster import resources

_SUBRESOURCE_VERBS = {
    "status": ["get", "patch", "update"],
    "scale": ["get", "patch", "update"],
}


def core_versions(server_address: str) -> dict[str, Any]:
    return {
        "kind": "APIVersions",
        "versions": ["v1"],
        "serverAddressByClientCIDRs": [
            {"clientCIDR": "0.0.0.0/0", "serverAddress": server_address}
        ],
    }


def _group(name: str, versions: list[str]) -> dict[str, Any]:
    entries = [{"groupVersion": f"{name}/{v}", "version": v} for v in versions]
    return {"name": name, "versions": entries, "preferredVersion": entries[0]}


def group_list(registry: resources.Registry) -> dict[str, Any]:
    return {
        "kind": "APIGroupList",
        "apiVersion": "v1",
        "groups": [_group(name, versions) for name, versions in registry.groups().items()],
    }


def group(registry: resources.Registry, name: str) -> dict[str, Any] | None:
    versions = registry.groups().get(name)
    if not versions:
        return None
    return {"kind": "APIGroup", "apiVersion": "v1", **_group(name, versions)}


def resource_list(
    registry: resources.Registry, group_name: str, version: str
) -> dict[str, Any] | None:
    served = registry.in_group_version(group_name, version)
    if not served:
        return None
    found: list[dict[str, Any]] = []
    for rt in served:
        entry: dict[str, Any] = {
            "name": rt.plural,
            "singularName": rt.singular,
            "namespaced": rt.namespaced,
            "kind": rt.kind,
            "verbs": list(rt.verbs),
        }
        if rt.short_names:
            entry["shortNames"] = list(rt.short_names)
        if rt.categories:
            entry["categories"] = list(rt.categories)
        found.append(entry)
        for sub in rt.subresources:
            if sub == "token":
                found.append(
                    {
                        "name": f"{rt.plural}/token",
                        "singularName": "",
                        "namespaced": True,
                        "group": "authentication.k8s.io",
                        "version": "v1",
                        "kind": "TokenRequest",
                        "verbs": ["create"],
                    }
                )
            else:
                found.append(
                    {
                        "name": f"{rt.plural}/{sub}",
                        "singularName": "",
                        "namespaced": rt.namespaced,
                        "kind": "Scale" if sub == "scale" else rt.kind,
                        "verbs": _SUBRESOURCE_VERBS.get(sub, ["get"]),
                    }
                )
    group_version = f"{group_name}/{version}" if group_name else version
    return {
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": group_version,
        "resources": found,
    }
