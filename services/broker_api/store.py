"""``service_instances`` (owned by broker-api): atomic per-document commits with an event outbox.

Concurrency: every change is an optimistic compare-and-set on ``revision``: read, compute the new
record (pure, :mod:`instances`), then a conditional update ``{_id, revision: read}`` (or
``insert_one`` for a new sid, unique ``_id``). A lost race matches nothing and is recomputed from a
fresh read, so concurrent requests on one sid (also across replicas) serialize without a lock and
never overwrite each other. An in-process lock per sid only cuts down useless retries. A PUT of an
instance tries the insert first, unread (``likely_new``): a new sid costs no read, an existing one
a failed insert more.

A sid this process wrote a moment ago is changed unread (:mod:`.recent`): one update whose filter
(the kept ``revision`` and lease token) fails if anything else wrote since, then the read path.

No lost events: the same single-document write that commits the change appends its events to
``outbox`` and takes the publisher lease (:class:`services.broker_api.outbox.Lease`), and returns
the outbox it left; :class:`services.broker_api.outbox.Outbox` publishes it and pulls the entries
(lazily: a later write of this process drops the confirmed ones in its own ``$set``).

MongoDB errors propagate as they are: the HTTP error middleware maps them to 503, in one place.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import random
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from pydantic import BaseModel
from pymongo import ASCENDING, ReturnDocument
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import DuplicateKeyError

from services.broker_api.errors import BrokerError, Unavailable
from services.broker_api.instances import Change, record_key
from services.broker_api.kinds import RULES
from services.broker_api.models import BROKERS, InstanceRecord, OutboxEntry
from services.broker_api.outbox import Lease
from services.broker_api.recent import Known, Recent
from shared.events import (
    CloudEvent,
    RoutingKeys,
    ServiceEventData,
    ServiceKind,
    ServiceParameters,
    ToolCommand,
    event_id,
)
from shared.keyed_locks import KeyedLocks
from shared.mongo import Document
from shared.otc_tools import TOOL_NAME_MAX, sanitize_tool_name

log = logging.getLogger(__name__)

COLLECTION = "service_instances"
MAX_ATTEMPTS = 200


def make_event_id(kind: ServiceKind, sid: str, revision: int) -> str:
    """``<kind>:<sid>:<revision>`` (bounded: see :func:`shared.events.event_id`)."""
    return event_id(kind, sid, revision)


Compute = Callable[[InstanceRecord | None], Change | None]
"""What a request does to the current record (None: nothing to write)."""


@dataclass(frozen=True)
class Commit:
    record: InstanceRecord | None
    events: tuple[OutboxEntry, ...]
    pending: tuple[OutboxEntry, ...] | None = None
    """The document's whole outbox right after the commit, when the commit took the lease."""


EVENTS_TOOL_PURPOSE = "kabanero-events-auto"
EVENTS_TOOL_TYPE = BROKERS["kabanero-events-broker"]  # the events broker's OTC service id


def events_tool_command(rec: InstanceRecord, toolchain_id: str, revision: int) -> ToolCommand:
    """The Kabanero Events tool a Kabanero service with ``events: auto`` adds to ``toolchain_id``.

    Its parameters are what OTC hands the events broker on provision (the same instance); its name
    is deterministic (otc-writer resolves an ambiguous create by it) and names the Kabanero service,
    so it never equals a hand-added tool's name by accident.
    """
    p = rec.parameters
    params: dict[str, Any] = {"cluster": p.cluster, "namespace": p.namespace}
    if p.name:
        params["name"] = p.name
    sid_hash = hashlib.sha256(rec.instance_id.encode()).hexdigest()[:8]
    name = sanitize_tool_name(f"kabanero-events {p.cluster} {p.namespace} auto {sid_hash}")[:TOOL_NAME_MAX]
    return ToolCommand(
        purpose=EVENTS_TOOL_PURPOSE,
        key=f"{EVENTS_TOOL_PURPOSE}:{rec.instance_id}"[:512],
        toolchain_id=toolchain_id,
        tool_type_id=EVENTS_TOOL_TYPE,
        name=name,
        parameters=params,
        revision=revision,
    )


def _event_entries(change: Change, base_revision: int, source: str, now: datetime) -> list[OutboxEntry]:
    rec = change.record
    entries = []
    for i, pending in enumerate(change.events):
        revision = base_revision + i + 1
        # Built from the validated record: constructed, not validated again (the event is, once).
        data = ServiceEventData.model_construct(
            kind=rec.kind,
            instance_id=rec.instance_id,
            service_id=rec.service_id,
            organization_guid=rec.organization_guid,
            parameters=ServiceParameters.model_construct(
                cluster=rec.parameters.cluster,
                namespace=rec.parameters.namespace,
                name=rec.parameters.name,
                label=RULES[rec.kind].label(rec.parameters),
                events=rec.parameters.events,
                create=rec.parameters.create,
                namespaces=rec.parameters.namespaces,
            ),
            dashboard_url=rec.dashboard_url,
            toolchains=list(pending.toolchains),
            toolchain_id=pending.toolchain_id,
            revision=revision,
            deleted=pending.event == "deprovisioned",
            instance_spec=rec.parameters.instance if rec.parameters.create else None,
        )
        entries.append(_entry(rec, RoutingKeys.service(rec.kind, pending.event), data, revision, source, now))
    for j, op in enumerate(change.tools):
        revision = base_revision + len(change.events) + j + 1
        command = events_tool_command(rec, op.toolchain_id, revision)
        routing_key = RoutingKeys.TOOL_APPLY if op.op == "apply" else RoutingKeys.TOOL_REMOVE
        entries.append(_entry(rec, routing_key, command, revision, source, now))
    return entries


def _entry(
    rec: InstanceRecord, routing_key: str, data: BaseModel, revision: int, source: str, now: datetime
) -> OutboxEntry:
    """One outbox entry: the CloudEvent of ``data`` with the record's deterministic event id."""
    event_id = make_event_id(rec.kind, rec.instance_id, revision)
    event = CloudEvent.for_data(routing_key, data, source=source, subject=rec.instance_id, id=event_id)
    return OutboxEntry.of(event.model_copy(update={"time": now}), revision)


class InstanceStore:
    def __init__(self, db: AsyncDatabase[Document], *, source: str, recent: Recent | None = None) -> None:
        self.collection: AsyncCollection[Document] = db[COLLECTION]
        self._source = source
        self._locks = KeyedLocks()
        self.recent = recent or Recent()

    async def ensure_indexes(self) -> None:
        await self.collection.create_index([("outbox.id", ASCENDING)], name="outbox_pending")
        # Uniqueness comes from ``_id`` = "<kind>:<sid>"; a second unique index would be redundant
        # (and makes every update scan the collection on the embedded mongoeco server).
        await self.collection.create_index(
            [("kind", ASCENDING), ("instance_id", ASCENDING)], name="kind_instance"
        )

    async def get(self, kind: ServiceKind, sid: str) -> InstanceRecord | None:
        doc = await self.collection.find_one({"_id": record_key(kind, sid)})
        return InstanceRecord.model_validate(doc) if doc else None

    async def mutate(
        self,
        kind: ServiceKind,
        sid: str,
        compute: Compute,
        *,
        now: Callable[[], datetime],
        lease: Lease | None = None,
        likely_new: bool = False,
    ) -> Commit:
        """Commit ``compute(current)`` with its outbox events atomically; retry on a lost race.

        ``compute`` may raise a :class:`BrokerError` (e.g. 404): nothing is written then. With
        ``lease``, a commit with events takes it unless another replica holds it. A record this
        process wrote a moment ago (:mod:`.recent`) is tried first, unread; with ``likely_new``,
        the first attempt inserts ``compute(None)`` without reading.
        """
        key = record_key(kind, sid)
        lock = self._locks[key]
        async with lock:
            known = self.recent.current(key)
            if known is not None:
                commit = await self._try_known(key, known, compute, now(), lease)
                if commit is not None:
                    return commit
            elif likely_new:
                commit = await self._try_new(key, compute, now(), lease)
                if commit is not None:
                    return commit
            for _ in range(MAX_ATTEMPTS):
                commit = await self._attempt(key, compute, now(), lease)
                if commit is not None:
                    return commit
                await asyncio.sleep(random.uniform(0, 0.01))
        raise Unavailable("too much concurrent activity on this service instance, retry later")

    async def _try_new(self, key: str, compute: Compute, now: datetime, lease: Lease | None) -> Commit | None:
        """The insert of a new sid, unread; None when the sid exists (or ``compute`` cannot say
        what a new one is): the read path decides."""
        try:
            change = compute(None)
        except BrokerError:
            return None
        if change is None:
            return None
        return await self._commit(key, None, change, now, lease)

    async def _try_known(
        self, key: str, known: Known, compute: Compute, now: datetime, lease: Lease | None
    ) -> Commit | None:
        """The change computed from the record this process wrote last, committed unread with one
        update that matches only if nobody else wrote since (same ``revision``; our lease token
        still on it, or no outbox left). It drops the confirmed entries and appends the new ones
        in the same ``$set``. None: the read path decides (also for an error or a no-op, which
        the stored record must confirm)."""
        try:
            change = compute(known.record)
        except BrokerError:
            change = None
        if change is None:
            return None
        entries, record, fields = self._prepared(known.record, change, now)
        fields.pop("_id")
        match: dict[str, Any] = {"_id": key, "revision": known.record.revision}
        after = known
        if entries:
            taken = _taking(known, entries, lease)
            if taken is None:
                return None
            outbox_match, after = taken
            match.update(outbox_match)
            fields["outbox"] = [e.model_dump(mode="python") for e in after.outbox]
            fields["outbox_lease"] = lease.document()  # type: ignore[union-attr]
        result = await self.collection.update_one(match, {"$set": fields})
        if result.matched_count == 0:
            self.recent.forget(key)
            return None
        self.recent.put(key, Known(record, after.outbox, after.token, after.published))
        return Commit(record, entries, after.outbox if entries else None)

    async def _attempt(self, key: str, compute: Compute, now: datetime, lease: Lease | None) -> Commit | None:
        doc = await self.collection.find_one({"_id": key})
        current = InstanceRecord.model_validate(doc) if doc else None
        change = compute(current)
        if change is None:
            return Commit(current, ())
        return await self._commit(key, current, change, now, lease)

    def _prepared(
        self, current: InstanceRecord | None, change: Change, now: datetime
    ) -> tuple[tuple[OutboxEntry, ...], InstanceRecord, Document]:
        """The change's outbox entries, the record at its new revision and its stored fields
        (without ``outbox``)."""
        base = current.revision if current else 0
        entries = tuple(_event_entries(change, base, self._source, now))
        record = change.record.model_copy(update={"revision": base + max(1, len(entries)), "outbox": []})
        fields = record.document()
        fields.pop("outbox", None)
        return entries, record, fields

    async def _commit(
        self, key: str, current: InstanceRecord | None, change: Change, now: datetime, lease: Lease | None
    ) -> Commit | None:
        """One conditional write of the record with its events (and the lease); None on a lost race."""
        entries, record, fields = self._prepared(current, change, now)
        lease = lease if entries else None  # only a commit with events takes the lease
        if current is None:
            return await self._insert(record, fields, entries, lease)
        fields.pop("_id")
        return await self._update(key, current.revision, record, fields, entries, lease)

    async def _insert(
        self, record: InstanceRecord, fields: Document, entries: tuple[OutboxEntry, ...], lease: Lease | None
    ) -> Commit | None:
        """A new sid: one insert, with the lease if given; None when the sid was created meanwhile."""
        doc = {**fields, "outbox": [e.model_dump(mode="python") for e in entries]}
        if lease is not None:
            doc["outbox_lease"] = lease.document()
        try:
            await self.collection.insert_one(doc)
        except DuplicateKeyError:
            return None
        self.recent.put(record.key, Known(record, entries, lease.token if lease is not None else None))
        return Commit(record, entries, entries if lease is not None else None)

    async def _update(
        self,
        key: str,
        base: int,
        record: InstanceRecord,
        fields: Document,
        entries: tuple[OutboxEntry, ...],
        lease: Lease | None,
    ) -> Commit | None:
        """A compare-and-set on ``revision`` that also takes the lease if given and free (then the
        whole outbox comes back); None on a lost race."""
        update: dict[str, Any] = {"$set": fields}
        if entries:
            update["$push"] = {"outbox": {"$each": [e.model_dump(mode="python") for e in entries]}}
        if lease is not None:
            commit = await self._update_leased(key, base, record, update, entries, lease)
            if commit is not None:
                return commit
            # Another replica holds the lease, or the race is lost: the plain write tells which.
        result = await self.collection.update_one({"_id": key, "revision": base}, update)
        if result.matched_count == 0:
            return None
        before = self.recent.current(key)
        if not entries and before is not None and before.record.revision == base:
            self.recent.put(key, Known(record, before.outbox, before.token, before.published))
        else:
            self.recent.forget(key)
        return Commit(record, entries)

    async def _update_leased(
        self,
        key: str,
        base: int,
        record: InstanceRecord,
        update: dict[str, Any],
        entries: tuple[OutboxEntry, ...],
        lease: Lease,
    ) -> Commit | None:
        """The compare-and-set that also takes the lease (if free): the whole outbox comes back."""
        after = await self.collection.find_one_and_update(
            {"_id": key, "revision": base, **lease.free()},
            {**update, "$set": {**update["$set"], "outbox_lease": lease.document()}},
            projection={"outbox": 1},
            return_document=ReturnDocument.AFTER,
        )
        if after is None:
            return None
        fresh = {e.id: e for e in entries}
        outbox = tuple(fresh.get(e["id"]) or OutboxEntry.model_validate(e) for e in after.get("outbox") or [])
        # Entries this process confirmed before (not pulled yet) stay confirmed.
        before = self.recent.get(key)
        published = before.published if before is not None else frozenset()
        known = Known(record, outbox, lease.token, published & {e.id for e in outbox})
        self.recent.put(key, known)
        return Commit(record, entries, known.kept)


def _taking(
    known: Known, entries: tuple[OutboxEntry, ...], lease: Lease | None
) -> tuple[dict[str, Any], Known] | None:
    """For a commit from ``known`` that takes ``lease``: the filter clause saying the outbox is
    still as ``known`` says (our lease token on it, or empty and the lease free), and what the
    document holds after it (the confirmed entries dropped, ``entries`` appended). None when the
    outbox cannot be known unread."""
    if lease is None:
        return None
    if known.token is not None:
        match: dict[str, Any] = {"outbox_lease.token": known.token}
    elif not known.kept:
        match = {"outbox": {"$size": 0}, **lease.free()}
    else:
        return None
    return match, Known(known.record, (*known.kept, *entries), lease.token)
