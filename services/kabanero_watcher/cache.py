"""The watcher's view of the cluster: raw objects per resource type, and what it means per namespace.

Watch loops feed it (``replace`` after a list, ``apply`` per event); the reconciler asks it for the
:class:`~services.kabanero_watcher.derive.Desired` state of one namespace. Derivation is a generator
of steps (:mod:`pacing`): the reconciler gives the event loop back between slices of it. It reads
the namespace's objects once, at its start (objects are replaced by watch events, never changed in
place), so one derivation sees one consistent cluster state even while it is suspended.

Only what changed is derived again: a mediation whose content equals last time's reuses its trigger,
and an EventConnections object that is the same object as last time reuses its checked, hashed
items (issue 19: every mediation scanned every connection item, 14.6 s at 12,000 mediations).
"""

from __future__ import annotations

import logging
from collections.abc import Generator
from dataclasses import dataclass
from typing import Any, Literal

from services.kabanero_watcher.derive import (
    GITOPS_MAP,
    ConnectionIndex,
    Desired,
    DesiredTrigger,
    LegacyTriggerFields,
    Malformed,
    Obj,
    check_connections,
    derive_instance,
    derive_legacy_trigger,
    events_enabled,
    mediation_triggers,
)
from services.kabanero_watcher.pacing import Pacer, run_steps
from services.kabanero_watcher.resources import ObjectCache, ResourceSpec
from shared.events import content_hash

log = logging.getLogger(__name__)


KABANEROS = ResourceSpec("kabanero.io", "v1alpha2", "kabaneros", optional=False)
# Stacks (0.6+) carry the pipelines the stack controller activates; optional so that a cluster
# without the CRD is not an error.
STACKS = ResourceSpec("kabanero.io", "v1alpha2", "stacks", optional=True)
MEDIATORS = ResourceSpec("events.kabanero.io", "v1alpha1", "eventmediators", optional=True)
CONNECTIONS = ResourceSpec("events.kabanero.io", "v1alpha1", "eventconnections", optional=True)
GITOPS_MAPS = ResourceSpec(
    "", "v1", "configmaps", optional=False, field_selector=f"metadata.name={GITOPS_MAP}"
)
RESOURCES = (KABANEROS, STACKS, MEDIATORS, CONNECTIONS, GITOPS_MAPS)

_SHAPE_ERRORS = (Malformed, TypeError, KeyError, AttributeError, ValueError)

Steps = Generator[None]
"""A derivation in steps: each ``yield`` is a point where the event loop may run."""
CheckedConnections = list[tuple[str, dict[str, Any]]] | Exception
"""An EventConnections object's (content hash, item) pairs, or why it is malformed."""


@dataclass(frozen=True)
class Derived:
    """What one EventMediator gave last time, and from what: while neither the mediator object nor
    the namespace's connection index changed, its triggers are reused without looking at them."""

    source: dict[str, Any]
    index: ConnectionIndex
    triggers: list[DesiredTrigger]


class ClusterCache(ObjectCache):
    """The Kabanero family's objects, and what they mean per namespace (docs/reference/kabanero.md §2-§7)."""

    def __init__(
        self,
        cluster: str,
        *,
        legacy_triggers: Literal["auto", "always", "never"] = "auto",
        legacy_trigger_fields: LegacyTriggerFields = "url",
    ) -> None:
        self.cluster = cluster
        self.legacy_triggers = legacy_triggers
        self.legacy_trigger_fields: LegacyTriggerFields = legacy_trigger_fields
        super().__init__(RESOURCES)
        self._derived: dict[str, dict[str, Derived]] = {}
        """namespace -> mediator name -> what was derived from it last time."""
        self._checked: dict[str, dict[str, tuple[dict[str, Any], CheckedConnections]]] = {}
        """namespace -> EventConnections name -> (the object, what checking it gave) last time."""
        self._indexes: dict[str, ConnectionIndex] = {}
        """namespace -> its connection index last time (reused while every object is the same)."""

    def _in(self, resource: ResourceSpec, namespace: str) -> list[dict[str, Any]]:
        return self.in_namespace(resource, namespace)

    def _legacy_enabled(self) -> bool:
        if self.legacy_triggers == "auto":
            return MEDIATORS.name in self.absent
        return self.legacy_triggers == "always"

    @staticmethod
    def _skip(what: str, namespace: str, obj: Obj, exc: Exception, consequence: str) -> None:
        name = obj.get("metadata", {}).get("name") if isinstance(obj.get("metadata"), dict) else None
        log.warning(
            "skipping malformed %s; %s",
            what,
            consequence,
            extra={"namespace": namespace, "object": name, "error": str(exc)},
        )

    def desired(self, namespace: str) -> Desired:
        """Derive the instance and triggers of one namespace; malformed objects freeze what they own."""
        return run_steps(self.derive_steps(namespace))

    async def derive(self, namespace: str, pacer: Pacer) -> Desired:
        """:meth:`desired`, giving the event loop back between slices of the work."""
        return await pacer.drive(self.derive_steps(namespace))

    def derive_steps(self, namespace: str) -> Generator[None, None, Desired]:
        out = Desired(namespace=namespace)
        kabaneros = self._in(KABANEROS, namespace)
        legacy = self._legacy_trigger(out, namespace, kabaneros)
        self._instance(out, namespace, kabaneros, legacy)
        yield from self._mediations(out, namespace, kabaneros)
        return out

    def _legacy_trigger(
        self, out: Desired, namespace: str, kabaneros: list[dict[str, Any]]
    ) -> list[DesiredTrigger]:
        if not self._legacy_enabled() or not kabaneros:
            return []
        try:
            trigger = derive_legacy_trigger(self.cluster, kabaneros, fields=self.legacy_trigger_fields)
        except _SHAPE_ERRORS as exc:
            self._skip("Kabanero CR", namespace, kabaneros[0], exc, "legacy triggers left as published")
            out.all_legacy_frozen = True
            out.instance_frozen = True
            return []
        if trigger is None:
            return []
        out.triggers[trigger.key.id] = trigger
        return [trigger]

    def _instance(
        self,
        out: Desired,
        namespace: str,
        kabaneros: list[dict[str, Any]],
        legacy: list[DesiredTrigger],
    ) -> None:
        if not kabaneros or out.instance_frozen:
            return
        if len(kabaneros) > 1:
            log.warning(
                "more than one Kabanero CR in a namespace; the instance is the first by name",
                extra={"namespace": namespace, "names": [k["metadata"]["name"] for k in kabaneros]},
            )
        maps = [m for m in self._in(GITOPS_MAPS, namespace) if m["metadata"]["name"] == GITOPS_MAP]
        try:
            out.instance = derive_instance(
                self.cluster,
                kabaneros[0],
                stacks=self._in(STACKS, namespace),
                gitops_map=maps[0] if maps else None,
                triggers=legacy,
            )
        except _SHAPE_ERRORS as exc:
            self._skip(
                "Kabanero CR, Stack or gitops-map", namespace, kabaneros[0], exc, "instance left as published"
            )
            out.instance_frozen = True

    def _mediations(self, out: Desired, namespace: str, kabaneros: list[dict[str, Any]]) -> Steps:
        """0.9+: the events operator is deployed by a Kabanero CR with events enabled into its own
        namespace and watches only that one (config/orchestrations/events/0.2, WATCH_NAMESPACE):
        mediators anywhere else are inert."""
        before = self._derived.pop(namespace, {})  # rebuilt below for the mediators that derive
        mediators = self._in(MEDIATORS, namespace)
        if not mediators or not self._events_deployed(out, namespace, kabaneros):
            return
        connections = yield from self._connections(out, namespace)
        derived: dict[str, Derived] = {}
        for mediator in mediators:
            name = mediator["metadata"]["name"]
            last = before.get(name)
            if last is not None and last.source is mediator and last.index is connections:
                triggers: list[DesiredTrigger] | None = last.triggers  # neither side changed
                yield
            else:
                previous = {t.key.name: t for t in last.triggers} if last is not None else None
                triggers = yield from self._mediator(out, namespace, mediator, connections, previous)
            if triggers is not None:
                self._add(out, triggers)
                derived[name] = Derived(mediator, connections, triggers)
        self._derived[namespace] = derived

    def _events_deployed(self, out: Desired, namespace: str, kabaneros: list[dict[str, Any]]) -> bool:
        try:
            deployed = any(events_enabled(k, operator_0_9=True) for k in kabaneros)
        except _SHAPE_ERRORS as exc:
            self._skip("Kabanero CR", namespace, kabaneros[0], exc, "mediations left as published")
            out.all_mediations_frozen = True
            return False
        if not deployed and kabaneros:
            log.info(
                "events not enabled in this namespace; its mediators are inert",
                extra={"namespace": namespace},
            )
        return deployed

    def _connections(self, out: Desired, namespace: str) -> Generator[None, None, ConnectionIndex]:
        """The namespace's EventConnections items, indexed; a malformed object freezes every mediation.
        An object seen last time (the same object: watch events replace objects) is not checked nor
        hashed again."""
        last = self._checked.pop(namespace, {})
        last_index = self._indexes.pop(namespace, None)
        checked: dict[str, tuple[dict[str, Any], CheckedConnections]] = {}
        objects = self._in(CONNECTIONS, namespace)
        for conn_obj in objects:
            name = conn_obj["metadata"]["name"]
            seen = last.get(name)
            if seen is not None and seen[0] is conn_obj:
                result = seen[1]
            else:
                last_index = None  # a new or changed object
                result = yield from _check_connections(conn_obj)
            checked[name] = (conn_obj, result)
            if isinstance(result, Exception):
                self._skip(
                    "EventConnections",
                    namespace,
                    conn_obj,
                    result,
                    "mediations of this namespace left as published",
                )
                out.all_mediations_frozen = True
        self._checked[namespace] = checked
        if last_index is None or len(last) != len(objects):  # an object is new, changed or gone
            last_index = ConnectionIndex()
            for name, (_, result) in checked.items():
                if not isinstance(result, Exception):
                    last_index.add(name, result)
                    yield
            last_index.seal()
        self._indexes[namespace] = last_index
        return last_index

    def _mediator(
        self,
        out: Desired,
        namespace: str,
        mediator: dict[str, Any],
        connections: ConnectionIndex,
        previous: dict[str, DesiredTrigger] | None,
    ) -> Generator[None, None, list[DesiredTrigger] | None]:
        """The mediator's triggers, or None (logged, its triggers frozen) when it is malformed."""
        name = mediator["metadata"]["name"]
        triggers: list[DesiredTrigger] = []
        try:
            for trigger in mediation_triggers(self.cluster, mediator, connections, previous):
                triggers.append(trigger)
                yield
        except _SHAPE_ERRORS as exc:
            self._skip("EventMediator", namespace, mediator, exc, "its triggers left as published")
            out.frozen_owners.add(("mediation", name))
            return None
        return triggers

    @staticmethod
    def _add(out: Desired, triggers: list[DesiredTrigger]) -> None:
        for trigger in triggers:
            if trigger.key.id in out.triggers:
                log.warning("duplicate mediation name; keeping the first", extra={"trigger": trigger.key.id})
                continue
            out.triggers[trigger.key.id] = trigger


def _check_connections(conn_obj: dict[str, Any]) -> Generator[None, None, CheckedConnections]:
    """One EventConnections object's items with their content hashes (a step per item), or the
    error that makes it malformed."""
    try:
        items = check_connections(conn_obj)
    except _SHAPE_ERRORS as exc:
        return exc
    hashed: list[tuple[str, dict[str, Any]]] = []
    for item in items:
        hashed.append((content_hash(item), item))
        yield
    return hashed
