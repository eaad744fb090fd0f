"""``events.k8s.io/v1`` Events as a view of core ``v1`` Events, as on a real cluster.

Both APIs read and write the same stored objects (kept in the core shape), so an Event posted
through either one shows up in both, and in ``kubectl describe``. Field mapping follows
upstream's conversion (``pkg/apis/events/v1/conversion.go``).
"""

from __future__ import annotations

from typing import Any

# events.k8s.io field -> core field, for fields that only change name.
_RENAMED = {
    "regarding": "involvedObject",
    "related": "related",
    "note": "message",
    "reason": "reason",
    "type": "type",
    "action": "action",
    "reportingController": "reportingComponent",
    "reportingInstance": "reportingInstance",
    "deprecatedSource": "source",
    "deprecatedFirstTimestamp": "firstTimestamp",
    "deprecatedLastTimestamp": "lastTimestamp",
    "deprecatedCount": "count",
    "eventTime": "eventTime",
    "series": "series",
}
_TO_VIEW = {core: view for view, core in _RENAMED.items()}


def to_core(event: dict[str, Any]) -> dict[str, Any]:
    """An ``events.k8s.io/v1`` Event in the core ``v1`` shape it is stored in."""
    core: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": event.get("metadata") or {},
    }
    for view, stored in _RENAMED.items():
        if event.get(view) is not None:
            core[stored] = event[view]
    return core


def to_view(core: dict[str, Any]) -> dict[str, Any]:
    """A stored core Event as ``events.k8s.io/v1`` serves it."""
    view: dict[str, Any] = {
        "apiVersion": "events.k8s.io/v1",
        "kind": "Event",
        "metadata": core.get("metadata") or {},
    }
    for stored, name in _TO_VIEW.items():
        if core.get(stored) is not None:
            view[name] = core[stored]
    if "reportingController" not in view:
        component = (core.get("source") or {}).get("component")
        if component:
            view["reportingController"] = component
    if "reportingInstance" not in view:
        host = (core.get("source") or {}).get("host")
        if host:
            view["reportingInstance"] = host
    return view


def core_field_path(view_path: tuple[str, ...]) -> tuple[str, ...]:
    """A field-selector path of the view, as a path into the stored core object."""
    if view_path and view_path[0] in _RENAMED:
        return (_RENAMED[view_path[0]], *view_path[1:])
    return view_path
