"""The watcher's publishing engine, shared by every family: records first, then events, then done.

Every event is recorded as pending first, then published (confirmed), then marked done, one at a
time within a namespace (see :mod:`state`): a crash anywhere in between leaves a pending record
that the next reconcile re-publishes unchanged or supersedes with the next revision, so no change
is lost and no revision is ever reused for other content. The session reconciles several
namespaces at once: their keys are disjoint, so per key there is still one event in flight, in
revision order. CloudEvent ids are ``<kind>:<key>:<revision>`` (a snapshot in parts adds
``:<part>``: :meth:`Emitter.emit_snapshot`): a re-published pending event
carries the same id and revision, which consumers skip as a duplicate. The id is also the AMQP
``message_id``, at most 255 bytes: a longer one (long names) becomes
``<kind>:sha256-<hash of key>:<revision>``, as deterministic.

What differs per family (which records, which routing keys, what a snapshot holds) lives in the
family (:mod:`kabanero_family`, :mod:`tekton_family`); :meth:`Emitter.diff_items` is the one
created/updated/deleted diff both use.

At scale (issue 19: 20,000 triggers in one namespace) the emitter keeps the event loop free: the
diff is paced (:mod:`pacing`), and a namespace's events are flushed in batches of at most
``batch`` events, each its own pending write, publishes and done write, so progress is recorded as
it is made and no single batch holds 20,000 publishes in flight.
"""

from __future__ import annotations

import asyncio
import collections
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol, cast

from prometheus_client import CollectorRegistry, Counter
from pydantic import BaseModel

from services.kabanero_watcher.pacing import Pacer
from services.kabanero_watcher.state import SNAPSHOT_KINDS, PublishedState, Record, RecordKind
from shared.amqp.messages import to_message
from shared.events import MAX_EVENT_ID_BYTES, TYPE_PREFIX, CloudEvent, event_id
from shared.snapshot_parts import split_steps

log = logging.getLogger(__name__)

PublishFn = Callable[[CloudEvent], Awaitable[None]]
Queued = tuple[str, Record, str]
"""(routing key, record, subject) of one event waiting for ``flush``."""
PUBLISH_BATCH = 1000
SNAPSHOT_PART_BYTES = 4 * 1024 * 1024
# What the envelope of a snapshot part measures at most: the longest id, a time with microseconds,
# part numbers of six digits.
_WIDEST_TIME = datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC)
_WIDEST_PART = 999_999


class NotLeader(Exception):
    """The lease is no longer ours: publishing must stop at once."""


class EmitMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.published = Counter(
            "kotc_watcher_events_published_total",
            "kabanero.* and tekton.* events published (confirmed)",
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
        batch: int = PUBLISH_BATCH,
        pacer: Pacer | None = None,
        part_bytes: int = SNAPSHOT_PART_BYTES,
    ) -> None:
        self.state = state
        self.cluster = state.cluster
        self._publish_fn = publish
        self._is_leader = is_leader
        self._metrics = metrics
        self.source = f"/kabanero-watcher/{state.cluster}"
        self.published = 0
        self.published_by_key: collections.Counter[str] = collections.Counter()
        """Events published per routing key (a snapshot in parts counts each part)."""
        self.batch = batch
        self.pacer = pacer or Pacer()
        self.part_bytes = part_bytes
        self._queues: dict[asyncio.Task[Any] | None, list[Queued]] = {}

    def emit(self, routing_key: str, record: Record, subject: str) -> None:
        """Queue one event; ``flush`` publishes the queue (the events of one namespace's diff).

        Reconciles of several namespaces (of several families) and snapshots run at once on one
        emitter, each in its own task, and a paced diff suspends between its emits: each task has
        its queue, so what one flushes (or discards) is always its own namespace's events.
        """
        self._queues.setdefault(asyncio.current_task(), []).append((routing_key, record, subject))

    async def flush(self) -> list[tuple[str, str]]:
        """Publish this task's queue, ``batch`` events at a time, in order: per batch the pending
        records in one bulk write, every event published with the confirms in flight, then the done
        records in one more bulk write. A failed publish leaves its record pending (re-published
        unchanged by the next reconcile) and ends the flush (later events are derived again by the
        next reconcile); the confirmed ones are recorded done. Returns the (routing key, subject)
        of each event published."""
        queue = self._queues.pop(asyncio.current_task(), [])
        published: list[tuple[str, str]] = []
        for start in range(0, len(queue), self.batch):
            published += await self._flush_batch(queue[start : start + self.batch])
        return published

    async def _flush_batch(self, batch: list[Queued]) -> list[tuple[str, str]]:
        if not self._is_leader():
            raise NotLeader("lease lost before publishing")
        events = [self._event(routing_key, record, subject) for routing_key, record, subject in batch]
        done = [r.model_copy(update={"routing_key": rk, "pending": False}) for rk, r, _ in batch]
        await self.state.commit_many(_pending(batch, done))
        results = await asyncio.gather(*(self._publish_fn(e) for e in events), return_exceptions=True)
        confirmed = [i for i, res in enumerate(results) if not isinstance(res, BaseException)]
        await self.state.commit_many([done[i] for i in confirmed])
        self._count(batch, events, confirmed)
        _raise_first(results)
        return [(batch[i][0], batch[i][2]) for i in confirmed]

    def _event(self, routing_key: str, record: Record, subject: str) -> CloudEvent:
        parted = record.kind in SNAPSHOT_KINDS and record.data.get("parts", 1) > 1
        return CloudEvent(
            id=event_id(record.kind, record.key, record.revision, record.data["part"] if parted else None),
            source=self.source,
            type=TYPE_PREFIX + routing_key,
            subject=subject,
            data=record.data,
        )

    def _count(self, batch: list[Queued], events: list[CloudEvent], confirmed: list[int]) -> None:
        for i in confirmed:
            (routing_key, record, subject), event = batch[i], events[i]
            self.published += 1
            self.published_by_key[routing_key] += 1
            if self._metrics is not None:
                self._metrics.published.labels(routing_key).inc()
            log.info(
                "published %s",
                routing_key,
                extra={"event_id": event.id, "subject": subject, "revision": record.revision},
            )

    def record(
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

    async def emit_snapshot(self, routing_key: str, record: Record, fields: tuple[str, str]) -> int:
        """Queue a snapshot as one event, or as the parts that keep each body within
        ``part_bytes`` (RabbitMQ refuses a message over 16 MiB): ids ``<kind>:<key>:<revision>:<part>``,
        one revision, one record. Measuring is paced. Returns the number of parts."""
        budget = self.part_bytes - self._part_envelope(routing_key, record, fields)
        parts = await self.pacer.drive(split_steps(record.data, fields, budget=budget))
        for data in parts:
            self.emit(routing_key, record.model_copy(update={"data": data}), record.key)
        return len(parts)

    def _part_envelope(self, routing_key: str, record: Record, fields: tuple[str, str]) -> int:
        """The bytes of a part's body without its share of ``fields``, at their widest."""
        items_field, known_field = fields
        data = record.data | {items_field: [], known_field: {}, "part": _WIDEST_PART, "parts": _WIDEST_PART}
        event = CloudEvent(
            id="x" * MAX_EVENT_ID_BYTES,
            source=self.source,
            type=TYPE_PREFIX + routing_key,
            time=_WIDEST_TIME,
            subject=record.key,
            data=data,
        )
        return len(to_message(event).body)

    def view(self) -> QueuedView:
        """The published state as it will be once this task's queue is flushed: a snapshot queued
        behind a namespace's changes describes them, and shares their pending and done writes."""
        return QueuedView(
            self.state, [record for _, record, _ in self._queues.get(asyncio.current_task(), [])]
        )

    def discard(self) -> None:
        """Forget what this task queued: an error left it unpublished, the next reconcile publishes it."""
        self._queues.pop(asyncio.current_task(), None)

    def deleted(self, routing_key: str, previous: Record) -> None:
        """The tombstone of a published key: the next revision, ``deleted``, its last data."""
        revision = previous.revision + 1
        data = previous.data | {"revision": revision, "deleted": True}
        record = previous.model_copy(update={"revision": revision, "deleted": True, "data": data})
        self.emit(routing_key, record, previous.key)

    def resolve_pending(
        self, namespace: str, kinds: frozenset[str], current: Callable[[Record], Hashed | None]
    ) -> None:
        """Re-publish, unchanged, each pending event the cluster still agrees with (``current``:
        what the cluster derives now for the record's key); the others are superseded by the diff."""
        for prev in self.state.pending_in_namespace(namespace, kinds):
            want = current(prev)
            still = (
                (want is None)
                if prev.deleted
                else (want is not None and want.content_hash == prev.content_hash)
            )
            if still and prev.routing_key:
                self.emit(prev.routing_key, prev, prev.key)

    async def diff_items(
        self,
        kind: RecordKind,
        namespace: str,
        desired: Mapping[str, Hashed],
        keys: ItemKeys,
        stamp: Callable[[Hashed, int], BaseModel],
        frozen: Callable[[Record], bool],
    ) -> None:
        """Created and updated items in key order (``stamp`` makes the event data of a revision),
        then the published items the cluster no longer derives, unless their source is ``frozen``.
        Paced: one step per item."""
        for key_id, item in sorted(desired.items()):
            await self.pacer.step()
            prev = self.state.get(kind, key_id)
            if prev is None or prev.deleted:
                routing_key = keys.created
            elif prev.content_hash != item.content_hash:
                routing_key = keys.updated
            else:
                continue
            revision = self.state.next_revision(kind, key_id)
            record = self.record(kind, key_id, namespace, item.content_hash, revision, stamp(item, revision))
            self.emit(routing_key, record, key_id)
        for prev in self.state.in_namespace(namespace, kind):
            await self.pacer.step()
            if not prev.deleted and prev.key not in desired and not frozen(prev):
                self.deleted(keys.deleted, prev)


class StateView(Protocol):
    """What a snapshot reads of the published state (:class:`PublishedState`, or a :class:`QueuedView`)."""

    def get(self, kind: RecordKind, key: str) -> Record | None: ...

    def in_namespace(self, namespace: str, kind: RecordKind) -> list[Record]: ...

    def next_revision(self, kind: RecordKind, key: str) -> int: ...

    def live_in_namespace(self, namespace: str, kinds: frozenset[str]) -> bool: ...


class QueuedView:
    """The published state with queued records applied (the latest queued per key wins)."""

    def __init__(self, state: PublishedState, queued: list[Record]) -> None:
        self._state = state
        self._queued = {(r.kind, r.key): r for r in queued}

    @property
    def changed(self) -> bool:
        """Whether anything is queued (a flush will write and publish)."""
        return bool(self._queued)

    def get(self, kind: RecordKind, key: str) -> Record | None:
        return self._queued.get((kind, key)) or self._state.get(kind, key)

    def in_namespace(self, namespace: str, kind: RecordKind) -> list[Record]:
        merged = {r.key: r for r in self._state.in_namespace(namespace, kind)}
        merged.update(
            {r.key: r for r in self._queued.values() if r.kind == kind and r.namespace == namespace}
        )
        return [merged[key] for key in sorted(merged)]

    def next_revision(self, kind: RecordKind, key: str) -> int:
        record = self.get(kind, key)
        return 1 if record is None else record.revision + 1

    def live_in_namespace(self, namespace: str, kinds: frozenset[str]) -> bool:
        return any(
            not r.deleted for kind in kinds for r in self.in_namespace(namespace, cast(RecordKind, kind))
        )


class Hashed(Protocol):
    """A derived item: its content hash decides "changed"."""

    @property
    def content_hash(self) -> str: ...


@dataclass(frozen=True)
class ItemKeys:
    """The routing keys of one item kind's created, updated and deleted events."""

    created: str
    updated: str
    deleted: str


def _raise_first(results: Sequence[object]) -> None:
    """Raise the first failure of a batch's publishes (after the confirmed ones were recorded)."""
    for result in results:
        if isinstance(result, BaseException):
            raise result


def _pending(batch: list[Queued], done: list[Record]) -> list[Record]:
    """The pending records to write before publishing; a re-published one is pending already."""
    return [
        d.model_copy(update={"pending": True})
        for d, (_, r, _) in zip(done, batch, strict=True)
        if not r.pending
    ]
