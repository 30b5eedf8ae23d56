"""Publishing the events committed in ``service_instances.outbox`` (at least once, in order per sid).

A request handler takes the lease with its commit (:meth:`Outbox.holding` gives it; the store
writes it in the same conditional update) and publishes the outbox that update left. The
confirmed entries are not pulled at once: the next write of this process on the sid drops them in
its own update, or the sweeper (:meth:`Outbox.release_pending`) pulls them and releases the lease
for every sid of a short window in one ``bulk_write`` (docs/design.md, broker-api). A background
task (:meth:`Outbox.run`) retries every document that still has pending entries (index
``outbox_pending``). Entries are published in revision order and pulled only after the broker
confirmed them, so RabbitMQ being down delays events but never loses or reorders them. A crash
between confirm and pull re-publishes the same event id once the lease expired: consumers skip
stale revisions.

Replicas: a short lease on the document (``outbox_lease``, expires after ``lease_s``) lets one
publisher at a time work on a sid, so two replicas do not publish the same events twice or out of
order. A commit that finds the lease taken commits without it and leaves its events to the holder
(whose release, one by one when its bulk release misses, returns what is left, and which then
flushes it) or to the drainer. Within one process, one commit-and-publish per sid at a time (the
lease owner is the process; each lease carries the token of the commit that took it).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge
from pymongo import ReturnDocument, UpdateOne
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.errors import PyMongoError

from services.broker_api.models import OutboxEntry
from services.broker_api.recent import Known, Recent
from shared.amqp import PublishError
from shared.events import CloudEvent
from shared.keyed_locks import KeyedLocks
from shared.mongo import Document

log = logging.getLogger(__name__)


class EventSink(Protocol):
    async def publish(self, event: CloudEvent) -> None: ...


@dataclass(frozen=True)
class Lease:
    """The publisher lease a commit takes in the same update (``outbox_lease``)."""

    owner: str
    taken: datetime
    until: datetime
    token: str = ""
    """Names this lease (the commit that took it): the lazy release matches it, so it never
    releases a lease a later commit took."""

    def document(self) -> dict[str, Any]:
        return {"owner": self.owner, "until": self.until, "token": self.token}

    def free(self) -> dict[str, Any]:
        """The filter clause: nobody else holds an unexpired lease on the document."""
        return {
            "$or": [
                {"outbox_lease": {"$exists": False}},
                {"outbox_lease.until": {"$lt": self.taken}},
                {"outbox_lease.owner": self.owner},
            ]
        }


class Outbox:
    def __init__(
        self,
        collection: AsyncCollection[Document],
        sink: EventSink,
        registry: CollectorRegistry,
        *,
        lease_s: float = 30.0,
        online: Callable[[], bool] = lambda: True,
        recent: Recent | None = None,
        release_delay_s: float = 0.2,
    ) -> None:
        self._collection = collection
        self._recent = recent or Recent()
        self._release_delay_s = release_delay_s
        self._dirty: set[str] = set()
        """Keys with confirmed entries not pulled yet (the sweeper's work)."""
        self._wake = asyncio.Event()
        self._online = online
        self._owner = uuid.uuid4().hex
        self._lease = timedelta(seconds=lease_s)
        self._sink = sink
        self._locks = KeyedLocks()
        self.published = Counter(
            "kotc_broker_api_events_published_total",
            "service events confirmed by RabbitMQ",
            registry=registry,
        )
        self.failures = Counter(
            "kotc_broker_api_event_publish_failures_total",
            "publish attempts that failed (the event stays in the outbox)",
            registry=registry,
        )
        self.backlog = Gauge(
            "kotc_broker_api_outbox_backlog",
            "Service instance records with events not yet published, at the last drain pass",
            registry=registry,
        )

    def _new_lease(self, token: str | None = None) -> Lease:
        now = datetime.now(UTC)
        return Lease(self._owner, now, now + self._lease, token or uuid.uuid4().hex)

    async def _claim(self, key: str, token: str | None = None) -> bool:
        lease = self._new_lease(token)
        result = await self._collection.update_one(
            {"_id": key, **lease.free()}, {"$set": {"outbox_lease": lease.document()}}
        )
        return result.matched_count == 1

    @contextlib.asynccontextmanager
    async def holding(self, key: str) -> AsyncIterator[Lease | None]:
        """One commit-and-publish of ``key`` at a time in this process; yields the lease for the
        commit to take (None when RabbitMQ is known to be down: the drainer publishes later, and a
        lease would only delay it)."""
        async with self._locks[key]:
            if not self._online():
                self.failures.inc()
                yield None
            else:
                yield self._new_lease()

    async def after_commit(
        self, key: str, lease: Lease | None, pending: Sequence[OutboxEntry] | None
    ) -> bool:
        """Inside :meth:`holding`, right after a commit with events: publish them now. ``pending``
        is the outbox the commit returned when it took ``lease``; None when it could not (another
        replica holds the lease: try to claim it, else the holder or the drainer publishes)."""
        if lease is None:
            return False
        if pending is None:
            return await self._flush_locked(key)
        return await self._publish_leased(key, lease, pending)

    async def _publish_leased(self, key: str, lease: Lease, pending: Sequence[OutboxEntry]) -> bool:
        """Publish ``pending`` in revision order and leave the pull of the confirmed entries and
        the release of the lease to the next write or the sweeper (:meth:`release_pending`). If
        one failed, pull what was confirmed and release now (the drainer retries the rest)."""
        taken = time.monotonic() - (datetime.now(UTC) - lease.taken).total_seconds()
        done: list[str] = []
        ok = False
        try:
            for entry in sorted(pending, key=lambda e: e.revision):
                # Renew the lease before it can run out under us (slow confirms).
                if time.monotonic() - taken > self._lease.total_seconds() / 2:
                    if not await self._claim(key, lease.token):
                        break
                    taken = time.monotonic()
                if not await self._publish(entry):
                    break
                done.append(entry.id)
            else:
                ok = True
        finally:
            if ok and done and self._recent.published(key, frozenset(done)):
                self._dirty.add(key)
                self._wake.set()
                left = False
            else:
                left = await self._release_now(key, done)
        if ok and left:
            return await self._flush_locked(key)
        return ok

    async def _release_now(self, key: str, done: Sequence[str]) -> bool:
        """Pull ``done`` and what this process confirmed before, release the lease; True when
        entries are left (committed by another replica meanwhile: the caller flushes them)."""
        known = self._recent.get(key)
        ids = sorted({*done, *(known.published if known is not None else ())})
        self._dirty.discard(key)
        self._recent.released(key, exact=False)
        left = await self._collection.find_one_and_update(
            {"_id": key, "outbox_lease.owner": self._owner},
            {"$pull": {"outbox": {"id": {"$in": ids}}}, "$unset": {"outbox_lease": ""}},
            projection={"outbox.id": 1},
            return_document=ReturnDocument.AFTER,
        )
        if left is None and ids:  # the lease ran out under us: still pull what was confirmed
            await self._collection.update_one({"_id": key}, {"$pull": {"outbox": {"id": {"$in": ids}}}})
        return bool(left and left.get("outbox"))

    async def release_pending(self) -> None:
        """One sweep of the lazy release: for every key with confirmed entries whose lock is free,
        pull them and release the lease, all in one ``bulk_write`` whose updates match only the
        write that took the lease (its revision and token). If any did not match (another replica
        or a later write came in between), those keys are released one by one as before, and what
        another replica left is flushed."""
        keys = [k for k in self._dirty if not self._locks[k].locked()]
        locks = [self._locks[k] for k in keys]
        for lock in locks:
            await lock.acquire()  # free: taken without waiting
        try:
            await self._release_keys(keys)
        finally:
            for lock in locks:
                lock.release()

    async def _release_keys(self, keys: list[str]) -> None:
        ops: list[UpdateOne] = []
        exact: list[str] = []
        one_by_one: list[str] = []
        for key in keys:
            known = self._recent.get(key)
            if known is None or not known.published:
                self._dirty.discard(key)
            elif known.stale or known.token is None:
                one_by_one.append(key)
            else:
                ops.append(_release_op(key, known))
                exact.append(key)
        if ops:
            result = await self._collection.bulk_write(ops, ordered=False)
            if result.matched_count == len(ops):
                for key in exact:
                    self._dirty.discard(key)
                    self._recent.released(key, exact=True)
            else:
                one_by_one += exact
        for key in one_by_one:
            if await self._release_now(key, ()):
                await self._flush_locked(key)

    async def release_all(self) -> None:
        """Every pending release now (shutdown: no request holds a lock any more)."""
        for _ in range(10):
            if not self._dirty:
                return
            await self.release_pending()

    async def _releaser(self) -> None:
        """The sweeper: after a short delay (so one bulk write covers the requests of that
        window), release what was confirmed; a MongoDB error leaves it for the next sweep."""
        while True:
            await self._wake.wait()
            self._wake.clear()
            await asyncio.sleep(self._release_delay_s)
            try:
                await self.release_pending()
            except PyMongoError as exc:
                log.warning("outbox release failed, will retry", extra={"error": type(exc).__name__})
                await asyncio.sleep(1.0)
            except Exception:  # never stop releasing: held leases would delay every later event
                log.exception("outbox release failed unexpectedly, will retry")
                await asyncio.sleep(1.0)
            if self._dirty:
                self._wake.set()

    async def _release(self, key: str) -> None:
        await self._collection.update_one(
            {"_id": key, "outbox_lease.owner": self._owner}, {"$unset": {"outbox_lease": ""}}
        )

    async def flush(self, key: str) -> bool:
        """Publish every pending event of one document in revision order; False if one failed
        (or another replica holds the lease: it, or the drainer, publishes them)."""
        async with self._locks[key]:
            return await self._flush_locked(key)

    async def _flush_locked(self, key: str) -> bool:
        if key in self._dirty:  # what this process confirmed is pulled first, never re-published
            await self._release_now(key, ())
        if not await self._claim(key):
            return False
        claimed = time.monotonic()
        try:
            while True:
                doc = await self._collection.find_one({"_id": key}, {"outbox": 1})
                entries = sorted(
                    (OutboxEntry.model_validate(e) for e in (doc or {}).get("outbox") or []),
                    key=lambda e: e.revision,
                )
                if not entries:
                    return True
                for entry in entries:
                    # Renew the lease before it can run out under us (slow confirms, many
                    # entries): an expired lease lets another replica publish concurrently.
                    if time.monotonic() - claimed > self._lease.total_seconds() / 2:
                        if not await self._claim(key):
                            return False
                        claimed = time.monotonic()
                    if not await self._publish(entry):
                        return False
                    await self._collection.update_one({"_id": key}, {"$pull": {"outbox": {"id": entry.id}}})
        finally:
            await self._release(key)

    async def _publish(self, entry: OutboxEntry) -> bool:
        try:
            await self._sink.publish(entry.cloud_event())
        except PublishError as exc:
            self.failures.inc()
            log.warning(
                "event not published yet, kept in outbox",
                extra={"event_id": entry.id, "routing_key": entry.routing_key, "error": str(exc)},
            )
            return False
        except Exception:  # a poison event must not kill the drainer (and the service): keep it
            self.failures.inc()
            log.exception(
                "event cannot be published, kept in outbox",
                extra={"event_id": entry.id, "routing_key": entry.routing_key},
            )
            return False
        self.published.inc()
        return True

    async def drain(self) -> int:
        """One pass over every document with pending events; returns how many are still pending."""
        pending = 0
        cursor = self._collection.find({"outbox.id": {"$exists": True}}, {"_id": 1})
        keys = [doc["_id"] async for doc in cursor]
        for key in keys:
            if not await self.flush(key):
                pending += 1
        self.backlog.set(pending)
        return pending

    async def run(self, interval_s: float) -> None:
        """Background drainer: survives MongoDB/RabbitMQ outages, retrying every ``interval_s``;
        and the sweeper of the lazy release, whose pending work is done on the way out."""
        releaser = asyncio.create_task(self._releaser(), name="outbox-releaser")
        try:
            while True:
                try:
                    pending = await self.drain()
                    if pending:
                        log.info("outbox still pending", extra={"documents": pending})
                except PyMongoError as exc:
                    log.warning("outbox drain failed, will retry", extra={"error": type(exc).__name__})
                await asyncio.sleep(interval_s)
        finally:
            releaser.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await releaser
            try:
                await self.release_all()
            except PyMongoError as exc:  # the leases expire; the next drainer re-publishes
                log.warning("outbox release on shutdown failed", extra={"error": type(exc).__name__})


def _release_op(key: str, known: Known) -> UpdateOne:
    """Pull the confirmed entries and release the lease, only if the document is still as this
    process's write left it (same revision, same lease)."""
    return UpdateOne(
        {"_id": key, "revision": known.record.revision, "outbox_lease.token": known.token},
        {"$pull": {"outbox": {"id": {"$in": sorted(known.published)}}}, "$unset": {"outbox_lease": ""}},
    )
