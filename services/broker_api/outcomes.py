"""What the watchers did with the Kabanero CRs of services that create their instance, as broker-api
learns it from ``kabanero.command.outcome`` (queue ``broker-api.outcomes``), for the dashboards.

Kept in a collection of broker-api's own, ``service_instance_outcomes`` (one document per sid), not
in the ``service_instances`` record: that record is written by compare-and-set on its revision, and
an outcome written into it between a request's read and its write would be overwritten by the
request's ``$set`` (or would make every request race with the watcher). The watcher's collection
``watch_owned_instances`` stays the watcher's: broker-api never reads it.

Idempotent by revision: an outcome is stored only if its revision is higher than the stored one
(one conditional upsert), so a redelivery, a republish after a crash or an outcome overtaken by a
newer one changes nothing.
"""

from __future__ import annotations

import logging

from pymongo.asynchronous.collection import AsyncCollection
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import DuplicateKeyError

from shared.amqp import DataModel, Delivery
from shared.events import CommandOutcomeData
from shared.mongo import Document

log = logging.getLogger(__name__)

COLLECTION = "service_instance_outcomes"
QUEUE = "broker-api.outcomes"


class OutcomeStore:
    def __init__(self, db: AsyncDatabase[Document]) -> None:
        self.collection: AsyncCollection[Document] = db[COLLECTION]

    async def get(self, sid: str) -> CommandOutcomeData | None:
        doc = await self.collection.find_one({"_id": sid})
        return CommandOutcomeData.model_validate(doc) if doc else None

    async def put(self, outcome: CommandOutcomeData) -> bool:
        """Store ``outcome`` unless one of the same or a higher revision is stored; True if stored."""
        doc = {"_id": outcome.instance_id, **outcome.model_dump(mode="python")}
        try:
            result = await self.collection.replace_one(
                {"_id": outcome.instance_id, "revision": {"$lt": outcome.revision}}, doc, upsert=True
            )
        except DuplicateKeyError:
            return False  # a document with a revision >= this one exists: the upsert's insert collides
        return bool(result.modified_count or result.upserted_id is not None)


decode = DataModel(CommandOutcomeData)
"""The consumer's decoder: every message of the queue is a command outcome, validated once."""


def key_of(message: Delivery[CommandOutcomeData]) -> str:
    """Per-instance order: the service instance the outcome is about."""
    return message.event.subject or message.data.instance_id


class OutcomeConsumer:
    """The handler of ``broker-api.outcomes``."""

    def __init__(self, store: OutcomeStore) -> None:
        self._store = store

    async def handle(self, message: Delivery[CommandOutcomeData]) -> None:
        outcome = message.data
        stored = await self._store.put(outcome)
        log.info(
            "instance outcome recorded" if stored else "instance outcome not newer: skipped",
            extra={
                "instance_id": outcome.instance_id,
                "outcome": outcome.outcome,
                "revision": outcome.revision,
            },
        )
