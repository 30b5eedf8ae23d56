"""The watcher's view of the cluster: raw objects per resource type, and what it means per namespace.

Watch loops feed it (``replace`` after a list, ``apply`` per event); the reconciler asks it for the
:class:`~services.kabanero_watcher.derive.Desired` state of one namespace. Derivation happens here,
synchronously, so one reconcile pass sees one consistent cluster state.
"""

from __future__ import annotations

import logging
from typing import Any, Literal

from services.kabanero_watcher.derive import (
    GITOPS_MAP,
    Desired,
    DesiredTrigger,
    LegacyTriggerFields,
    Malformed,
    Obj,
    check_connections,
    derive_instance,
    derive_legacy_trigger,
    derive_mediation_triggers,
    events_enabled,
)
from services.kabanero_watcher.resources import ObjectCache, ResourceSpec

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
        self._derived: dict[str, dict[str, dict[str, DesiredTrigger]]] = {}
        """namespace -> mediator name -> mediation name -> trigger derived last time."""

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
        out = Desired(namespace=namespace)
        kabaneros = self._in(KABANEROS, namespace)
        legacy = self._legacy_trigger(out, namespace, kabaneros)
        self._instance(out, namespace, kabaneros, legacy)
        self._mediations(out, namespace, kabaneros)
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

    def _mediations(self, out: Desired, namespace: str, kabaneros: list[dict[str, Any]]) -> None:
        """0.9+: the events operator is deployed by a Kabanero CR with events enabled into its own
        namespace and watches only that one (config/orchestrations/events/0.2, WATCH_NAMESPACE):
        mediators anywhere else are inert."""
        before = self._derived.pop(namespace, {})  # rebuilt below for the mediators that derive
        mediators = self._in(MEDIATORS, namespace)
        if not mediators:
            return
        try:
            deployed = any(events_enabled(k, operator_0_9=True) for k in kabaneros)
        except _SHAPE_ERRORS as exc:
            self._skip("Kabanero CR", namespace, kabaneros[0], exc, "mediations left as published")
            out.all_mediations_frozen = True
            return
        if not deployed:
            if kabaneros:
                log.info(
                    "events not enabled in this namespace; its mediators are inert",
                    extra={"namespace": namespace},
                )
            return
        connections = self._connections(out, namespace)
        derived: dict[str, dict[str, DesiredTrigger]] = {}
        for mediator in mediators:
            name = mediator["metadata"]["name"]
            derived[name] = self._mediator(out, namespace, mediator, connections, before.get(name))
        self._derived[namespace] = derived

    def _connections(self, out: Desired, namespace: str) -> list[tuple[str, dict[str, Any]]]:
        """The namespace's EventConnections (name, item); a malformed one freezes every mediation."""
        connections: list[tuple[str, dict[str, Any]]] = []
        for conn_obj in self._in(CONNECTIONS, namespace):
            try:
                items = check_connections(conn_obj)
            except _SHAPE_ERRORS as exc:
                self._skip(
                    "EventConnections",
                    namespace,
                    conn_obj,
                    exc,
                    "mediations of this namespace left as published",
                )
                out.all_mediations_frozen = True
                continue
            connections.extend((conn_obj["metadata"]["name"], item) for item in items)
        return connections

    def _mediator(
        self,
        out: Desired,
        namespace: str,
        mediator: dict[str, Any],
        connections: list[tuple[str, dict[str, Any]]],
        previous: dict[str, DesiredTrigger] | None,
    ) -> dict[str, DesiredTrigger]:
        """Add the mediator's triggers to ``out``; returns them by mediation name (for the next pass)."""
        name = mediator["metadata"]["name"]
        try:
            triggers = derive_mediation_triggers(self.cluster, mediator, connections, previous)
        except _SHAPE_ERRORS as exc:
            self._skip("EventMediator", namespace, mediator, exc, "its triggers left as published")
            out.frozen_owners.add(("mediation", name))
            return {}
        for trigger in triggers:
            if trigger.key.id in out.triggers:
                log.warning("duplicate mediation name; keeping the first", extra={"trigger": trigger.key.id})
                continue
            out.triggers[trigger.key.id] = trigger
        return {t.key.name: t for t in triggers}
