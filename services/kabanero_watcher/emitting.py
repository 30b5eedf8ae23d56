"""Diff the derived state of a namespace against what was published, and publish the difference.

Every event is recorded as pending first, then published (confirmed), then marked done, one at a
time within a namespace (see :mod:`state`): a crash anywhere in between leaves a pending record
that the next reconcile re-publishes unchanged or supersedes with the next revision, so no change
is lost and no revision is ever reused for other content. The session reconciles several
namespaces at once: their keys are disjoint, so per key there is still one event in flight, in
revision order. CloudEvent ids are ``<kind>:<key>:<revision>``: a re-published pending event
carries the same id and revision, which consumers skip as a duplicate. The id is also the AMQP ``message_id``, at most 255 bytes: a longer one (long
mediator and mediation names) becomes ``<kind>:sha256-<hash of key>:<revision>``, as deterministic.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from prometheus_client import CollectorRegistry, Counter
from pydantic import BaseModel

from services.kabanero_watcher.derive import Desired, DesiredInstance, DesiredTrigger
from services.kabanero_watcher.state import PublishedState, Record, RecordKind
from shared.events import (
    CloudEvent,
    InstanceRef,
    RoutingKeys,
    SnapshotData,
    TriggerData,
    event_id,
    instance_scope,
)

log = logging.getLogger(__name__)

PublishFn = Callable[[CloudEvent], Awaitable[None]]


class NotLeader(Exception):
    """The lease is no longer ours: publishing must stop at once."""


class EmitMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.published = Counter(
            "kotc_watcher_events_published_total",
            "kabanero.* events published (confirmed)",
            ["routing_key"],
            registry=registry,
        )


class Emitter:
    def __init__(
        self,
        state: PublishedState,
        publish: PublishFn,
        *,
        is_leader: Callable[[], bool],
        metrics: EmitMetrics | None = None,
    ) -> None:
        self.state = state
        self.cluster = state.cluster
        self._publish_fn = publish
        self._is_leader = is_leader
        self._metrics = metrics
        self.source = f"/kabanero-watcher/{state.cluster}"
        self.published = 0
        self._queue: list[tuple[str, Record, str]] = []

    async def _emit(self, routing_key: str, record: Record, subject: str) -> None:
        """Queue one event; ``_flush`` publishes the queue (the events of one namespace's diff).

        Reconciles of several namespaces and snapshots run at once on one emitter: the diff queues
        its events without suspending (nothing between the first ``_emit`` and ``_flush`` awaits
        I/O), and ``_flush`` takes the whole queue before its first await, so a batch is always the
        events of one namespace.
        """
        self._queue.append((routing_key, record, subject))

    async def _flush(self) -> None:
        """Pending records in one bulk write, every event published with the confirms in flight,
        then the done records in one more bulk write. A failed publish leaves its record pending
        (re-published unchanged by the next reconcile); the confirmed ones are recorded done."""
        batch, self._queue = self._queue, []
        if not batch:
            return
        if not self._is_leader():
            raise NotLeader("lease lost before publishing")
        events = [self._event(routing_key, record, subject) for routing_key, record, subject in batch]
        done = [r.model_copy(update={"routing_key": rk, "pending": False}) for rk, r, _ in batch]
        await self.state.commit_many(_pending(batch, done))
        results = await asyncio.gather(*(self._publish_fn(e) for e in events), return_exceptions=True)
        confirmed = [i for i, res in enumerate(results) if not isinstance(res, BaseException)]
        await self.state.commit_many([done[i] for i in confirmed])
        self._count(batch, events, confirmed)
        if len(confirmed) < len(results):
            raise next(r for r in results if isinstance(r, BaseException))

    def _event(self, routing_key: str, record: Record, subject: str) -> CloudEvent:
        return CloudEvent(
            id=event_id(record.kind, record.key, record.revision),
            source=self.source,
            type=f"io.kabanero.otc.{routing_key}",
            subject=subject,
            data=record.data,
        )

    def _count(
        self, batch: list[tuple[str, Record, str]], events: list[CloudEvent], confirmed: list[int]
    ) -> None:
        for i in confirmed:
            (routing_key, record, subject), event = batch[i], events[i]
            self.published += 1
            if self._metrics is not None:
                self._metrics.published.labels(routing_key).inc()
            log.info(
                "published %s",
                routing_key,
                extra={"event_id": event.id, "subject": subject, "revision": record.revision},
            )

    def _record(
        self, kind: RecordKind, key: str, namespace: str, content_hash: str, revision: int, data: BaseModel
    ) -> Record:
        return Record(
            cluster=self.cluster,
            kind=kind,
            key=key,
            namespace=namespace,
            content_hash=content_hash,
            revision=revision,
            data=data.model_dump(mode="json"),
        )

    # --- instance ------------------------------------------------------------------------------

    def _instance_key(self, namespace: str) -> str:
        return instance_scope(self.cluster, namespace)

    async def _instance_changed(self, inst: DesiredInstance) -> None:
        key = self._instance_key(inst.instance.namespace)
        revision = self.state.next_revision("instance", key)
        data = inst.model_copy(update={"revision": revision})
        record = self._record("instance", key, inst.instance.namespace, inst.content_hash, revision, data)
        await self._emit(RoutingKeys.INSTANCE_CHANGED, record, key)

    async def _deleted(self, routing_key: str, previous: Record) -> None:
        revision = previous.revision + 1
        data = previous.data | {"revision": revision, "deleted": True}
        record = previous.model_copy(update={"revision": revision, "deleted": True, "data": data})
        await self._emit(routing_key, record, previous.key)

    # --- triggers ------------------------------------------------------------------------------

    async def _trigger(self, routing_key: str, trig: DesiredTrigger, instance: InstanceRef) -> None:
        key = trig.key.id
        revision = self.state.next_revision("trigger", key)
        data = trig.model_copy(update={"instance": instance, "revision": revision})
        record = self._record("trigger", key, trig.key.namespace, trig.content_hash, revision, data)
        await self._emit(routing_key, record, key)

    # --- one namespace ---------------------------------------------------------------------------

    async def _resolve_pending(self, desired: Desired) -> None:
        """Re-publish, unchanged, each pending event the cluster still agrees with; the others are
        superseded by the diff below (their record's content differs from the cluster's)."""
        for prev in self.state.pending_in_namespace(desired.namespace):
            want = desired.triggers.get(prev.key) if prev.kind == "trigger" else desired.instance
            still = (
                (want is None)
                if prev.deleted
                else (want is not None and want.content_hash == prev.content_hash)
            )
            if still and prev.routing_key:
                await self._emit(prev.routing_key, prev, prev.key)

    async def reconcile(self, desired: Desired) -> bool:
        """Publish what differs; returns True when the instance just disappeared entirely."""
        try:
            return await self._reconcile(desired)
        finally:
            self._queue = []  # what an error left unpublished is published by the next reconcile

    async def _reconcile(self, desired: Desired) -> bool:
        ns = desired.namespace
        await self._resolve_pending(desired)
        was_live = self.state.live_in_namespace(ns)
        inst_prev = self.state.get("instance", self._instance_key(ns))
        await self._diff_instance(desired, inst_prev)
        await self._diff_triggers(desired)
        await self._diff_deleted_triggers(desired)
        if desired.instance is None and not desired.instance_frozen and inst_prev is not None:
            await self._instance_gone(ns)
        await self._flush()
        return was_live and not self.state.live_in_namespace(ns)

    async def _diff_instance(self, desired: Desired, prev: Record | None) -> None:
        inst = desired.instance
        if inst is not None and (prev is None or prev.deleted or prev.content_hash != inst.content_hash):
            await self._instance_changed(inst)

    async def _diff_triggers(self, desired: Desired) -> None:
        """Created and updated triggers, in key order."""
        instance_ref = InstanceRef(
            cluster=self.cluster,
            namespace=desired.namespace,
            name=desired.instance.instance.name if desired.instance else None,
        )
        for key_id, trig in sorted(desired.triggers.items()):
            prev = self.state.get("trigger", key_id)
            if prev is None or prev.deleted:
                await self._trigger(RoutingKeys.TRIGGER_CREATED, trig, instance_ref)
            elif prev.content_hash != trig.content_hash:
                await self._trigger(RoutingKeys.TRIGGER_UPDATED, trig, instance_ref)

    async def _diff_deleted_triggers(self, desired: Desired) -> None:
        """Published triggers the cluster no longer derives, unless their source is frozen."""
        for prev in self.state.in_namespace(desired.namespace, "trigger"):
            if not prev.deleted and prev.key not in desired.triggers and not _frozen(prev, desired):
                await self._deleted(RoutingKeys.TRIGGER_DELETED, prev)

    async def _instance_gone(self, namespace: str) -> None:
        current = self.state.get("instance", self._instance_key(namespace))
        if current is not None and not current.deleted:
            await self._deleted(RoutingKeys.INSTANCE_DELETED, current)

    # --- snapshots -------------------------------------------------------------------------------

    def snapshot_namespaces(self) -> list[str]:
        return sorted(ns for ns in self.state.namespaces() if self.state.live_in_namespace(ns))

    async def snapshot(self, namespace: str) -> None:
        """The published state of one instance, for consumers that reconcile level-triggered.

        It carries the revisions of the instance and trigger events it reflects, so a consumer can
        tell that a snapshot processed late is older than events it has already applied.
        """
        inst = self.state.get("instance", self._instance_key(namespace))
        live_inst = inst if inst is not None and not inst.deleted else None
        records = self.state.in_namespace(namespace, "trigger")
        triggers = [TriggerData.model_validate(r.data) for r in records if not r.deleted]
        revision = self.state.next_revision("snapshot", self._instance_key(namespace))
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
        record = self._record("snapshot", self._instance_key(namespace), namespace, "", revision, data)
        await self._emit(RoutingKeys.SNAPSHOT, record, record.key)
        await self._flush()


def _pending(batch: list[tuple[str, Record, str]], done: list[Record]) -> list[Record]:
    """The pending records to write before publishing; a re-published one is pending already."""
    return [
        d.model_copy(update={"pending": True})
        for d, (_, r, _) in zip(done, batch, strict=True)
        if not r.pending
    ]


def _frozen(prev: Record, desired: Desired) -> bool:
    """Whether a published trigger's source object is malformed right now (kept as published)."""
    generation, owner = prev.data["key"]["generation"], prev.data["key"]["owner"]
    return (
        (generation, owner) in desired.frozen_owners
        or (generation == "mediation" and desired.all_mediations_frozen)
        or (generation == "legacy" and desired.all_legacy_frozen)
    )
