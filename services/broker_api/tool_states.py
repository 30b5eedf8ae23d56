"""Each tool's sync state as broker-api learns it from otc-writer's ``otc.outcome.tool`` (queue
``broker-api.tools``), for the services' pages (:mod:`services.broker_api.service_tools`).

One document per tool (``_id`` = otc-writer's ledger id ``purpose|toolchain|key``) in broker-api's
own collection ``service_tool_states``: never otc-writer's ledger. The newest outcome per tool by
(revision, time) is kept, written by an update conditional on the stored one being older, so a
replay, a redelivery or an outcome overtaken by a newer one changes nothing. ``since`` is when the
tool started waiting (pending or held, at the same revision), kept across the retries that report it
again. A removed tool stays as a tombstone (ordering) and is not shown.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime

from pydantic import ConfigDict, Field
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import DuplicateKeyError

from shared.amqp import DataModel, Delivery
from shared.events import ToolOutcomeData
from shared.mongo import Document

log = logging.getLogger(__name__)

COLLECTION = "service_tool_states"
QUEUE = "broker-api.tools"
WAITING = frozenset({"pending", "held"})


def _ms(at: datetime) -> datetime:
    """As MongoDB stores it: UTC, millisecond precision (so a read-back compares equal)."""
    at = at.astimezone(UTC) if at.tzinfo is not None else at.replace(tzinfo=UTC)
    return at.replace(microsecond=at.microsecond // 1000 * 1000)


class ToolStateDoc(ToolOutcomeData):
    """A stored outcome plus ``since``."""

    model_config = ConfigDict(extra="ignore", frozen=True, populate_by_name=True)

    since: datetime = Field(description="when it entered its state (waiting: the first pending/held)")


class ToolStateStore:
    """The newest outcome per tool; read per bound toolchain."""

    def __init__(self, db: AsyncDatabase[Document]) -> None:
        self.collection: AsyncCollection[Document] = db[COLLECTION]
        self.decode = DataModel(ToolOutcomeData)

    async def ensure_indexes(self) -> None:
        await self.collection.create_index("toolchain_id")

    async def put(self, outcome: ToolOutcomeData) -> bool:
        """Store ``outcome`` unless the stored one is as new or newer; True if stored.

        Conditional updates, no read: each matches the tool's document only while it is older (by
        revision, then time). A waiting outcome first tries to keep ``since`` (the stored one waits
        at the same revision); otherwise it is written with its own, upserted when the tool has no
        document yet. An upsert that meets a document (as new or newer, or inserted by a concurrent
        outcome of the tool) fails on the duplicate ``_id`` and is tried once more without upsert.
        So one command per outcome, two when a tool starts waiting (it was a read and a
        compare-and-set for every outcome)."""
        at = _ms(outcome.at)
        fields = {**outcome.model_dump(mode="python"), "at": at}
        older = {
            "$or": [
                {"revision": {"$lt": outcome.revision}},
                {"revision": outcome.revision, "at": {"$lt": at}},
            ]
        }
        waiting = {"revision": outcome.revision, "state": {"$in": sorted(WAITING)}}
        for upsert in (True, False):
            if outcome.state in WAITING:
                kept = await self.collection.update_one(
                    {"_id": outcome.id, "$and": [older, waiting]}, {"$set": fields}
                )
                if kept.matched_count:
                    return True
            try:
                result = await self.collection.update_one(
                    {"_id": outcome.id, **older}, {"$set": {**fields, "since": at}}, upsert=upsert
                )
            except DuplicateKeyError:
                continue
            return bool(result.matched_count or result.upserted_id is not None)
        return False

    async def of_toolchains(self, toolchains: list[str]) -> list[ToolStateDoc]:
        """Every tool shown for these toolchains (removed ones are not)."""
        if not toolchains:
            return []
        cursor = self.collection.find({"toolchain_id": {"$in": toolchains}, "state": {"$ne": "removed"}})
        return [ToolStateDoc.model_validate(d) async for d in cursor]

    def key_of(self, message: Delivery[ToolOutcomeData]) -> str:
        """The consumer's per-key order: one outcome of a tool at a time."""
        return message.data.id

    async def handle(self, message: Delivery[ToolOutcomeData]) -> None:
        stored = await self.put(message.data)
        log.info(
            "tool outcome recorded" if stored else "tool outcome not newer: skipped",
            extra={
                "ledger_id": message.data.id,
                "revision": message.data.revision,
                "state": message.data.state,
            },
        )
