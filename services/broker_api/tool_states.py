"""Each tool's sync state as broker-api learns it from otc-writer's ``otc.outcome.tool`` (queue
``broker-api.tools``), for the services' pages (:mod:`services.broker_api.service_tools`).

One document per tool (``_id`` = otc-writer's ledger id ``purpose|toolchain|key``) in broker-api's
own collection ``service_tool_states``: never otc-writer's ledger. The newest outcome per tool by
(revision, time) is kept, written by compare-and-set on what was read, so a replay, a redelivery or
an outcome overtaken by a newer one changes nothing. ``since`` is when the tool started waiting
(pending or held, at the same revision), kept across the retries that report it again. A removed
tool stays as a tombstone (ordering) and is not shown.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any

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
ATTEMPTS = 5


def _ms(at: datetime) -> datetime:
    """As MongoDB stores it: UTC, millisecond precision (so a read-back compares equal)."""
    at = at.astimezone(UTC) if at.tzinfo is not None else at.replace(tzinfo=UTC)
    return at.replace(microsecond=at.microsecond // 1000 * 1000)


class ToolStateDoc(ToolOutcomeData):
    """A stored outcome plus ``since``."""

    model_config = ConfigDict(extra="ignore", frozen=True, populate_by_name=True)

    since: datetime = Field(description="when it entered its state (waiting: the first pending/held)")

    @property
    def order(self) -> tuple[int, datetime]:
        return self.revision, _ms(self.at)


def _newer(old: ToolStateDoc | None, outcome: ToolOutcomeData) -> dict[str, Any] | None:
    """The document to store for ``outcome`` after ``old``; None when ``old`` is as new or newer."""
    at = _ms(outcome.at)
    if old is not None and old.order >= (outcome.revision, at):
        return None
    waiting = old is not None and old.state in WAITING and outcome.state in WAITING
    since = old.since if old is not None and waiting and old.revision == outcome.revision else at
    return {"_id": outcome.id, **outcome.model_dump(mode="python"), "at": at, "since": _ms(since)}


class ToolStateStore:
    """The newest outcome per tool; read per bound toolchain."""

    def __init__(self, db: AsyncDatabase[Document]) -> None:
        self.collection: AsyncCollection[Document] = db[COLLECTION]
        self.decode = DataModel(ToolOutcomeData)

    async def ensure_indexes(self) -> None:
        await self.collection.create_index("toolchain_id")

    async def put(self, outcome: ToolOutcomeData) -> bool:
        """Store ``outcome`` unless the stored one is as new or newer; True if stored."""
        for _ in range(ATTEMPTS):
            raw = await self.collection.find_one({"_id": outcome.id})
            old = ToolStateDoc.model_validate(raw) if raw else None
            doc = _newer(old, outcome)
            if doc is None:
                return False
            try:
                if raw is None:
                    await self.collection.insert_one(doc)
                    return True
                result = await self.collection.replace_one({"_id": outcome.id, "at": raw["at"]}, doc)
            except DuplicateKeyError:
                continue  # inserted meanwhile: read again
            if result.modified_count:
                return True
        log.warning("tool state kept changing under us: skipped", extra={"ledger_id": outcome.id})
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
