"""Publishing the events committed in ``service_instances.outbox`` (at least once, in order per sid).

After a commit the request handler calls :meth:`Outbox.flush` for its sid; a background task
(:meth:`Outbox.run`) retries every document that still has pending entries (index
``outbox_pending``). Entries are published in revision order and pulled only after the broker
confirmed them, so RabbitMQ being down delays events but never loses or reorders them. A crash
between confirm and pull re-publishes the same event id: consumers skip stale revisions.

Replicas: a short lease on the document (``outbox_lease``, expires after ``lease_s``) lets one
publisher at a time work on a sid, so two replicas do not publish the same events twice or out of
order. A flush that finds the lease taken leaves its events to the holder (which re-reads the
outbox until it is empty) or, in the small window after the holder's last read, to the drainer.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.errors import PyMongoError

from services.broker_api.models import OutboxEntry
from shared.amqp import PublishError
from shared.events import CloudEvent
from shared.keyed_locks import KeyedLocks
from shared.mongo import Document

log = logging.getLogger(__name__)


class EventSink(Protocol):
    async def publish(self, event: CloudEvent) -> None: ...


class Outbox:
    def __init__(
        self,
        collection: AsyncCollection[Document],
        sink: EventSink,
        registry: CollectorRegistry,
        *,
        lease_s: float = 30.0,
        online: Callable[[], bool] = lambda: True,
    ) -> None:
        self._collection = collection
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

    async def _claim(self, key: str) -> bool:
        now = datetime.now(UTC)
        result = await self._collection.update_one(
            {
                "_id": key,
                "$or": [
                    {"outbox_lease": {"$exists": False}},
                    {"outbox_lease.until": {"$lt": now}},
                    {"outbox_lease.owner": self._owner},
                ],
            },
            {"$set": {"outbox_lease": {"owner": self._owner, "until": now + self._lease}}},
        )
        return result.matched_count == 1

    async def _release(self, key: str) -> None:
        await self._collection.update_one(
            {"_id": key, "outbox_lease.owner": self._owner}, {"$unset": {"outbox_lease": ""}}
        )

    async def publish_committed(self, key: str) -> bool:
        """Right after a commit: publish now, unless RabbitMQ is known to be down (a publish on a
        closed channel fails anyway; skipping it spares the lease round trips). The drainer
        publishes later either way."""
        if not self._online():
            self.failures.inc()
            return False
        return await self.flush(key)

    async def flush(self, key: str) -> bool:
        """Publish every pending event of one document in revision order; False if one failed
        (or another replica holds the lease: it, or the drainer, publishes them)."""
        async with self._locks[key]:
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
                        await self._collection.update_one(
                            {"_id": key}, {"$pull": {"outbox": {"id": entry.id}}}
                        )
            finally:
                await self._release(key)

    async def _publish(self, entry: OutboxEntry) -> bool:
        try:
            await self._sink.publish(CloudEvent.model_validate(entry.event))
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
        """Background drainer: survives MongoDB/RabbitMQ outages, retrying every ``interval_s``."""
        while True:
            try:
                pending = await self.drain()
                if pending:
                    log.info("outbox still pending", extra={"documents": pending})
            except PyMongoError as exc:
                log.warning("outbox drain failed, will retry", extra={"error": type(exc).__name__})
            await asyncio.sleep(interval_s)
