"""The newest of a sequence of whole-state messages, one MongoDB document per key (``_id``).

broker-api learns what other services found only through events (docs/architecture.md §6), and
keeps the last one per key in a collection of its own: the watchers' command outcomes per sid
(``outcomes``), the Tekton installation per cluster (``tekton_installations``).

Idempotent by revision: a message is stored only if its revision is higher than the stored one
(one conditional upsert by ``_id``), so a redelivery, a republish after a crash or a message
overtaken by a newer one changes nothing.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from pydantic import BaseModel
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import DuplicateKeyError

from shared.amqp import DataModel, Delivery
from shared.mongo import Document

log = logging.getLogger(__name__)


class LatestStore[M: BaseModel]:
    """``model`` messages, the one of highest revision per key; ``ident(message)`` is its
    (key, revision)."""

    def __init__(
        self,
        db: AsyncDatabase[Document],
        collection: str,
        model: type[M],
        ident: Callable[[M], tuple[str, int]],
    ) -> None:
        self.collection: AsyncCollection[Document] = db[collection]
        self._model = model
        self._ident = ident
        self.decode = DataModel(model)
        """The consumer's decoder: every message of the queue is one ``model``, validated once."""

    async def get(self, key: str) -> M | None:
        doc = await self.collection.find_one({"_id": key})
        return self._model.model_validate(doc) if doc else None

    async def put(self, item: M) -> bool:
        """Store ``item`` unless one of the same or a higher revision is stored; True if stored."""
        key, revision = self._ident(item)
        doc = {"_id": key, **item.model_dump(mode="python")}
        try:
            result = await self.collection.replace_one(
                {"_id": key, "revision": {"$lt": revision}}, doc, upsert=True
            )
        except DuplicateKeyError:
            return False  # a document with a revision >= this one exists: the upsert's insert collides
        return bool(result.modified_count or result.upserted_id is not None)

    def key_of(self, message: Delivery[M]) -> str:
        """The consumer's per-key order: one message of a key at a time."""
        return self._ident(message.data)[0]

    async def handle(self, message: Delivery[M]) -> None:
        """The handler of the queue that carries them (invalid data was dead-lettered by the decoder)."""
        stored = await self.put(message.data)
        key, revision = self._ident(message.data)
        log.info(
            "%s recorded" if stored else "%s not newer: skipped",
            message.routing_key,
            extra={"key": key, "revision": revision},
        )
