"""The Kabanero family: instances and event triggers per namespace -> ``kabanero.*`` events.

Derivation is :class:`~.cache.ClusterCache`'s (docs/reference/kabanero.md §2-§7); this module diffs it
against the published state: the instance record (``kabanero.instance.changed|deleted``), one record per
trigger (``kabanero.trigger.*``), and the per-instance ``kabanero.snapshot``.
"""

from __future__ import annotations

from services.kabanero_watcher.cache import ClusterCache
from services.kabanero_watcher.derive import Desired, DesiredInstance
from services.kabanero_watcher.emitting import Emitter, Hashed, ItemKeys, StateView
from services.kabanero_watcher.state import Record
from shared.events import InstanceRef, RoutingKeys, SnapshotData, TriggerData, instance_scope

KINDS: frozenset[str] = frozenset({"instance", "trigger"})
TRIGGER_KEYS = ItemKeys(RoutingKeys.TRIGGER_CREATED, RoutingKeys.TRIGGER_UPDATED, RoutingKeys.TRIGGER_DELETED)


class KabaneroFamily:
    name = "kabanero"

    def __init__(self, cache: ClusterCache, emitter: Emitter) -> None:
        self.cache = cache
        self.emitter = emitter
        self.state = emitter.state
        self.cluster = emitter.cluster

    def published_namespaces(self) -> set[str]:
        return self.state.namespaces(KINDS | {"snapshot"})

    def prepare(self) -> set[str]:
        return set()

    async def after_pass(self) -> None:
        return None

    def _instance_key(self, namespace: str) -> str:
        return instance_scope(self.cluster, namespace)

    async def reconcile(self, namespace: str, *, snapshot: bool = False) -> bool:
        """Publish what differs (and, with ``snapshot``, when anything differs, the instance's
        snapshot in the same batch); returns True when the instance just disappeared entirely."""
        try:
            return await self._reconcile(await self.cache.derive(namespace, self.emitter.pacer), snapshot)
        finally:
            self.emitter.discard()

    async def _reconcile(self, desired: Desired, snapshot: bool) -> bool:
        ns = desired.namespace
        self.emitter.resolve_pending(ns, KINDS, lambda prev: _current(prev, desired))
        was_live = self.state.live_in_namespace(ns, KINDS)
        inst_prev = self.state.get("instance", self._instance_key(ns))
        self._diff_instance(desired, inst_prev)
        instance_ref = InstanceRef(
            cluster=self.cluster,
            namespace=ns,
            name=desired.instance.instance.name if desired.instance else None,
        )

        def stamp(item: Hashed, revision: int) -> TriggerData:
            assert isinstance(item, TriggerData)
            return item.model_copy(update={"instance": instance_ref, "revision": revision})

        await self.emitter.diff_items(
            "trigger", ns, desired.triggers, TRIGGER_KEYS, stamp, lambda prev: _frozen(prev, desired)
        )
        if desired.instance is None and not desired.instance_frozen and inst_prev is not None:
            self._instance_gone(ns)
        # A due snapshot rides with the changes (sharing their two writes); without changes the
        # session's snapshot round takes it, as before.
        view = self.emitter.view()
        if snapshot and view.changed and view.live_in_namespace(ns, KINDS):
            await self._queue_snapshot(ns, view)
        await self.emitter.flush()
        return was_live and not self.state.live_in_namespace(ns, KINDS)

    def _diff_instance(self, desired: Desired, prev: Record | None) -> None:
        inst = desired.instance
        if inst is not None and (prev is None or prev.deleted or prev.content_hash != inst.content_hash):
            self._instance_changed(inst)

    def _instance_changed(self, inst: DesiredInstance) -> None:
        key = self._instance_key(inst.instance.namespace)
        revision = self.state.next_revision("instance", key)
        data = inst.model_copy(update={"revision": revision})
        record = self.emitter.record(
            "instance", key, inst.instance.namespace, inst.content_hash, revision, data
        )
        self.emitter.emit(RoutingKeys.INSTANCE_CHANGED, record, key)

    def _instance_gone(self, namespace: str) -> None:
        current = self.state.get("instance", self._instance_key(namespace))
        if current is not None and not current.deleted:
            self.emitter.deleted(RoutingKeys.INSTANCE_DELETED, current)

    # --- snapshots -------------------------------------------------------------------------------

    def snapshot_namespaces(self) -> list[str]:
        return sorted(ns for ns in self.state.namespaces(KINDS) if self.state.live_in_namespace(ns, KINDS))

    def snapshot_revision(self, namespace: str) -> int:
        record = self.state.get("snapshot", self._instance_key(namespace))
        return record.revision if record is not None else 0

    async def snapshot(self, namespace: str) -> None:
        """The published state of one instance, for consumers that reconcile level-triggered.

        It carries the revisions of the instance and trigger events it reflects, so a consumer can
        tell that a snapshot processed late is older than events it has already applied.
        """
        await self._queue_snapshot(namespace, self.state)
        await self.emitter.flush()

    async def _queue_snapshot(self, namespace: str, view: StateView) -> None:
        """Queue the snapshot of the instance as ``view`` has it (the published state, or that state
        with the changes queued before it: :meth:`Emitter.view`)."""
        inst = view.get("instance", self._instance_key(namespace))
        live_inst = inst if inst is not None and not inst.deleted else None
        records = view.in_namespace(namespace, "trigger")
        triggers: list[TriggerData] = []
        for r in records:  # paced: a namespace may hold 20,000 triggers
            await self.emitter.pacer.step()
            if not r.deleted:
                triggers.append(TriggerData.model_validate(r.data))
        revision = view.next_revision("snapshot", self._instance_key(namespace))
        data = SnapshotData(
            instance=InstanceRef.model_validate(live_inst.data["instance"])
            if live_inst
            else InstanceRef(cluster=self.cluster, namespace=namespace),
            exists=live_inst is not None,
            version=live_inst.data.get("version") if live_inst else None,
            repositories=live_inst.data.get("repositories", []) if live_inst else [],
            triggers=triggers,
            revision=revision,
            instance_revision=inst.revision if inst is not None else 0,
            trigger_revisions={r.key: r.revision for r in records},
        )
        record = self.emitter.record("snapshot", self._instance_key(namespace), namespace, "", revision, data)
        await self.emitter.emit_snapshot(RoutingKeys.SNAPSHOT, record, SnapshotData.split_fields)


def _current(prev: Record, desired: Desired) -> Hashed | None:
    return desired.triggers.get(prev.key) if prev.kind == "trigger" else desired.instance


def _frozen(prev: Record, desired: Desired) -> bool:
    """Whether a published trigger's source object is malformed right now (kept as published)."""
    generation, owner = prev.data["key"]["generation"], prev.data["key"]["owner"]
    return (
        (generation, owner) in desired.frozen_owners
        or (generation == "mediation" and desired.all_mediations_frozen)
        or (generation == "legacy" and desired.all_legacy_frozen)
    )
