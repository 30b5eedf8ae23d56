"""The watcher's view of the cluster: raw objects per resource type, and what it means per namespace.

Watch loops feed it (``replace`` after a list, ``apply`` per event); the reconciler asks it for the
:class:`~services.kabanero_watcher.derive.Desired` state of one namespace. Derivation happens here,
synchronously, so one reconcile pass sees one consistent cluster state.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Literal

from services.kabanero_watcher.derive import (
    Desired,
    Malformed,
    Obj,
    check_connections,
    derive_instance,
    derive_legacy_triggers,
    derive_mediation_triggers,
    object_id,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ResourceSpec:
    """One watched custom resource type (kabanero.md §2, §5)."""

    group: str
    version: str
    plural: str
    optional: bool

    @property
    def name(self) -> str:
        return f"{self.plural}.{self.group}"


KABANEROS = ResourceSpec("kabanero.io", "v1alpha2", "kabaneros", optional=False)
MEDIATORS = ResourceSpec("events.kabanero.io", "v1alpha1", "eventmediators", optional=True)
CONNECTIONS = ResourceSpec("events.kabanero.io", "v1alpha1", "eventconnections", optional=True)
RESOURCES = (KABANEROS, MEDIATORS, CONNECTIONS)

Key = tuple[str, str]  # (namespace, name)


def _key(obj: Obj) -> Key | None:
    try:
        return object_id(obj)
    except Malformed as exc:
        log.warning("skipping object without namespace/name: %s", exc)
        return None


class ClusterCache:
    def __init__(self, cluster: str, *, legacy_triggers: Literal["auto", "always", "never"] = "auto") -> None:
        self.cluster = cluster
        self.legacy_triggers = legacy_triggers
        self._objects: dict[str, dict[Key, dict[str, Any]]] = {r.name: {} for r in RESOURCES}
        self.absent: set[str] = set()

    def namespaces(self) -> set[str]:
        return {ns for objs in self._objects.values() for ns, _ in objs}

    def count(self, resource: ResourceSpec) -> int:
        return len(self._objects[resource.name])

    def replace(self, resource: ResourceSpec, scope: str | None, items: Iterable[dict[str, Any]]) -> set[str]:
        """Install a fresh list (of one namespace, or all when ``scope`` is None); returns touched namespaces."""
        objs = self._objects[resource.name]
        old = {k: v for k, v in objs.items() if scope is None or k[0] == scope}
        new: dict[Key, dict[str, Any]] = {}
        for item in items:
            key = _key(item)
            if key is not None:
                new[key] = item
        for k in old:
            del objs[k]
        objs.update(new)
        self.absent.discard(resource.name)
        return {k[0] for k in old.keys() | new.keys()}

    def set_absent(self, resource: ResourceSpec, scope: str | None) -> set[str]:
        touched = self.replace(resource, scope, ())
        self.absent.add(resource.name)
        return touched

    def apply(self, resource: ResourceSpec, event_type: str, obj: dict[str, Any]) -> str | None:
        """Apply one watch event; returns the namespace it concerns."""
        key = _key(obj)
        if key is None:
            return None
        if event_type == "DELETED":
            self._objects[resource.name].pop(key, None)
        else:
            self._objects[resource.name][key] = obj
        return key[0]

    def _in(self, resource: ResourceSpec, namespace: str) -> list[dict[str, Any]]:
        objs = self._objects[resource.name]
        return [objs[k] for k in sorted(k for k in objs if k[0] == namespace)]

    def _legacy_enabled(self) -> bool:
        if self.legacy_triggers == "auto":
            return MEDIATORS.name in self.absent
        return self.legacy_triggers == "always"

    def desired(self, namespace: str) -> Desired:
        """Derive the instance and triggers of one namespace; malformed objects freeze what they own."""
        out = Desired(namespace=namespace)
        kabaneros = self._in(KABANEROS, namespace)
        if len(kabaneros) > 1:
            log.warning(
                "more than one Kabanero CR in a namespace; using the first by name",
                extra={"namespace": namespace, "names": [k["metadata"]["name"] for k in kabaneros]},
            )
        for kabanero in kabaneros[:1]:
            name = kabanero["metadata"]["name"]
            try:
                out.instance = derive_instance(self.cluster, kabanero)
                legacy = derive_legacy_triggers(self.cluster, kabanero) if self._legacy_enabled() else []
            except (Malformed, TypeError, KeyError, AttributeError, ValueError) as exc:
                log.warning(
                    "skipping malformed Kabanero CR",
                    extra={"namespace": namespace, "object": name, "error": str(exc)},
                )
                out.instance_frozen = True
                out.frozen_owners.add(("legacy", name))
                continue
            for trigger in legacy:
                out.triggers[trigger.key.id] = trigger

        connections: list[tuple[str, dict[str, Any]]] = []
        for conn_obj in self._in(CONNECTIONS, namespace):
            try:
                items = check_connections(conn_obj)
            except (Malformed, TypeError, KeyError, AttributeError, ValueError) as exc:
                log.warning(
                    "skipping malformed EventConnections; mediations of this namespace left as published",
                    extra={"namespace": namespace, "object": conn_obj["metadata"]["name"], "error": str(exc)},
                )
                out.all_mediations_frozen = True
                continue
            connections.extend((conn_obj["metadata"]["name"], item) for item in items)

        for mediator in self._in(MEDIATORS, namespace):
            name = mediator["metadata"]["name"]
            try:
                triggers = derive_mediation_triggers(self.cluster, mediator, connections)
            except (Malformed, TypeError, KeyError, AttributeError, ValueError) as exc:
                log.warning(
                    "skipping malformed EventMediator",
                    extra={"namespace": namespace, "object": name, "error": str(exc)},
                )
                out.frozen_owners.add(("mediation", name))
                continue
            for trigger in triggers:
                if trigger.key.id in out.triggers:
                    log.warning(
                        "duplicate mediation name; keeping the first", extra={"trigger": trigger.key.id}
                    )
                    continue
                out.triggers[trigger.key.id] = trigger
        return out
