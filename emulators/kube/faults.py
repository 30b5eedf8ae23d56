"""Fault injection: what `/_emulator/*` and `KubeEmulator.inject()` can do to the emulated API server.

Every fault is a named operation with JSON parameters; `Faults.inject(name, params)` is the single entry
point, shared by the HTTP endpoints (`POST /_emulator/<name>`) and the in-process test API.
"""

from __future__ import annotations

from typing import Any, Literal

from . import crd
from .errors import bad_request
from .resources import EVENTS_GROUP
from .store import Store, Subscription


class Faults:
    """Current fault settings plus actions on open watch streams."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.latency_ms: float = 0.0
        self.absent_groups: set[str] = set()
        self.stalls_injected = 0
        self.drops_injected = 0

    # ------------------------------------------------------------------ selection

    def _streams(self, resource: str | None) -> list[Subscription]:
        subs = list(self.store.subscriptions)
        if resource is None:
            return subs
        rt = self.store.registry.resolve(resource)
        return [s for s in subs if s.rt == rt]

    def group_present(self, group: str) -> bool:
        return group not in self.absent_groups

    # ------------------------------------------------------------------ actions

    def drop(self, *, mode: Literal["abort", "close"] = "abort", resource: str | None = None) -> int:
        """Close the open watch streams: `abort` cuts the TCP connection mid-stream (the client sees a
        payload error), `close` ends the chunked response cleanly (the client sees end of stream).
        Returns the number of streams affected."""
        streams = self._streams(resource)
        for sub in streams:
            sub.drop(mode)
        self.drops_injected += len(streams)
        return len(streams)

    def stall(self, *, seconds: float | None = None, resource: str | None = None) -> int:
        """Make the open watch streams silent (no bytes, connection kept open) for `seconds`, or until
        `release()` when None. Events that happen meanwhile are delivered after the stall ends (a stalled
        stream whose client has gone away is closed at that point)."""
        streams = self._streams(resource)
        for sub in streams:
            sub.stall(seconds)
        self.stalls_injected += len(streams)
        return len(streams)

    def release(self) -> int:
        """End every stall now."""
        stalled = [s for s in self.store.subscriptions if s.stall_until is not None]
        for sub in stalled:
            sub.release()
        return len(stalled)

    def expire_history(self) -> int:
        """Compact: a watch (or exact list) from any resourceVersion older than the current one gets 410."""
        return self.store.compact()

    def set_group(self, group: str, *, present: bool) -> None:
        """Make a whole API group absent (404 on every path, gone from discovery: as if its CRDs were not
        installed) or present again. Objects are kept. Going absent closes that group's watch streams."""
        if present:
            self.absent_groups.discard(group)
            return
        self.absent_groups.add(group)
        for sub in list(self.store.subscriptions):
            if sub.rt.group == group:
                sub.drop("close")

    def install(self, bundle: str) -> list[str]:
        """Create (or replace) the CRDs of a bundle (`crd.BUNDLES`, or a YAML file path): its resources are
        served from now on, as after `kubectl apply -f` of a release. Returns the CRD names."""
        try:
            definitions = crd.bundle(bundle)
        except ValueError as exc:
            raise bad_request(str(exc)) from exc
        return self.store.install_crds(definitions)

    def uninstall(self, bundle: str) -> list[str]:
        """Delete the CRDs of a bundle that are installed (their objects go first, then their paths 404)."""
        try:
            names = [str(d["metadata"]["name"]) for d in crd.bundle(bundle)]
        except ValueError as exc:
            raise bad_request(str(exc)) from exc
        return self.store.uninstall_crds(names)

    def _crds_action(self, name: str, bundle: Any) -> dict[str, Any]:
        if not isinstance(bundle, str):
            raise bad_request('body must be {"bundle": str}')
        if name == "install":
            return {"installed": self.install(bundle), "crds": self.store.installed_crds()}
        return {"deleted": self.uninstall(bundle), "crds": self.store.installed_crds()}

    def set_latency(self, ms: float) -> None:
        if ms < 0:
            raise bad_request("latency must be >= 0")
        self.latency_ms = float(ms)

    def reset(self) -> None:
        """Clear every fault, drop all streams, forget all objects and history."""
        self.latency_ms = 0.0
        self.absent_groups.clear()
        for sub in list(self.store.subscriptions):
            sub.release()
            sub.drop("close")
        self.store.reset()
        self.store.compact()

    def state(self) -> dict[str, Any]:
        streams = list(self.store.subscriptions)
        return {
            "resourceVersion": str(self.store.resource_version),
            "counts": self.store.counts(),
            "history": self.store.history_sizes(),
            "historyWindow": self.store.history_window,
            "watches": {
                "open": len(streams),
                "stalled": sum(1 for s in streams if s.stall_until is not None),
                "byResource": {
                    rt.qualified: sum(1 for s in streams if s.rt == rt)
                    for rt in self.store.registry.resources
                },
            },
            "crds": self.store.installed_crds(),
            "faults": {
                "latencyMs": self.latency_ms,
                "absentGroups": sorted(self.absent_groups),
                "stallsInjected": self.stalls_injected,
                "dropsInjected": self.drops_injected,
            },
        }

    # ------------------------------------------------------------------ dispatch

    def inject(self, name: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
        """Run the fault `name` with JSON `params`; returns the JSON answer of the HTTP endpoint."""
        p = params or {}
        resource = p.get("resource")
        if resource is not None and not isinstance(resource, str):
            raise bad_request("resource must be a string")
        match name:
            case "drop":
                mode = p.get("mode", "abort")
                if mode not in ("abort", "close"):
                    raise bad_request('mode must be "abort" or "close"')
                return {"dropped": self.drop(mode=mode, resource=resource)}
            case "stall":
                seconds = p.get("seconds")
                if seconds is not None and (not isinstance(seconds, int | float) or seconds < 0):
                    raise bad_request("seconds must be a non-negative number or null")
                return {"stalled": self.stall(seconds=seconds, resource=resource)}
            case "release":
                return {"released": self.release()}
            case "expire":
                return {"resourceVersion": str(self.expire_history())}
            case "crds":
                group = p.get("group", EVENTS_GROUP)
                present = p.get("present")
                if not isinstance(group, str) or not isinstance(present, bool):
                    raise bad_request('body must be {"present": bool, "group"?: str}')
                self.set_group(group, present=present)
                return {"absentGroups": sorted(self.absent_groups)}
            case "install" | "uninstall":
                return self._crds_action(name, p.get("bundle"))
            case "latency":
                ms = p.get("ms", 0)
                if not isinstance(ms, int | float):
                    raise bad_request('body must be {"ms": number}')
                self.set_latency(ms)
                return {"latencyMs": self.latency_ms}
            case "reset":
                self.reset()
                return {"resourceVersion": str(self.store.resource_version)}
            case _:
                raise bad_request(f"unknown fault {name!r}")
