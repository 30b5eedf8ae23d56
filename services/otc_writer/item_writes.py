"""The revision compare-and-set of item changes, grouped (``batching.py``) across the handlers.

One change alone costs what it always did: one ``find_one_and_update`` (a newer revision stores
and returns the item's bindings copy; a duplicate key means the stored revision is as new or
newer, and one read tells "same" from "stale"). Several at once cost two round trips together:
one unordered ``bulk_write`` of the conditional upserts (a duplicate-key error marks the one
that did not store) and one ``find`` by ``_id $in`` that reads their revisions and copies back.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import bson
from pymongo import ReturnDocument, UpdateOne
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.errors import BulkWriteError, DuplicateKeyError, WriteError

from services.otc_writer.batching import GroupCommit
from shared.mongo import Document

State = Literal["stored", "same", "stale"]
DUPLICATE_KEY = 11000
BATCH_MAX = 64
_READ = {"revision": 1, "bindings": 1}


@dataclass(frozen=True)
class ItemWrite:
    key_id: str
    revision: int
    fields: dict[str, Any]


type Written = tuple[State, Document | None]
"""The outcome, and the item as read after it (its revision and bindings copy)."""


class ItemWrites:
    """The compare-and-set of one items collection, grouped."""

    def __init__(self, coll: AsyncCollection[Document], name: str) -> None:
        self._coll = coll
        self._batches: GroupCommit[ItemWrite, Written] = GroupCommit(
            self._flush, key_of=lambda w: w.key_id, max_batch=BATCH_MAX, name=f"items:{name}"
        )

    async def put(self, write: ItemWrite) -> Written:
        return await self._batches.submit(write)

    async def _flush(self, writes: list[ItemWrite]) -> list[Written | BaseException]:
        if len(writes) == 1 or not all(_encodes(w.fields) for w in writes):
            return [await self._one(w) for w in writes]
        failed = await self._bulk(writes)
        cursor = self._coll.find({"_id": {"$in": [w.key_id for w in writes]}}, _READ)
        docs = {d["_id"]: d async for d in cursor}
        return [_outcome(w, docs.get(w.key_id), i in failed, failed.get(i)) for i, w in enumerate(writes)]

    async def _bulk(self, writes: list[ItemWrite]) -> dict[int, BaseException | None]:
        """The writes that did not store, by index: None for a duplicate key (not newer), else the
        error MongoDB gave that write."""
        ops = [
            UpdateOne({"_id": w.key_id, "revision": {"$lt": w.revision}}, {"$set": w.fields}, upsert=True)
            for w in writes
        ]
        try:
            await self._coll.bulk_write(ops, ordered=False)
        except BulkWriteError as exc:
            return {
                int(err["index"]): (
                    None
                    if err.get("code") == DUPLICATE_KEY
                    else WriteError(err.get("errmsg", ""), err.get("code"), err)
                )
                for err in exc.details.get("writeErrors", [])
            }
        return {}

    async def _one(self, w: ItemWrite) -> Written | BaseException:
        try:
            try:
                doc = await self._coll.find_one_and_update(
                    {"_id": w.key_id, "revision": {"$lt": w.revision}},
                    {"$set": w.fields},
                    projection={"bindings": 1},
                    upsert=True,
                    return_document=ReturnDocument.AFTER,
                )
                return "stored", doc
            except DuplicateKeyError:  # the stored revision is as new or newer
                doc = await self._coll.find_one({"_id": w.key_id}, _READ)
                return _judged(doc, w.revision), doc
        except Exception as exc:  # this request's own error (BSON, size): fails it alone
            return exc


def _outcome(
    w: ItemWrite, doc: Document | None, failed: bool, error: BaseException | None
) -> Written | BaseException:
    if not failed:
        return "stored", doc
    if error is not None:
        return error
    return _judged(doc, w.revision), doc


def _judged(doc: Document | None, revision: int) -> State:
    return "same" if doc is not None and doc.get("revision") == revision else "stale"


def _encodes(fields: dict[str, Any]) -> bool:
    try:
        bson.encode(fields)
    except (bson.errors.InvalidDocument, bson.errors.InvalidStringData, OverflowError, UnicodeError):
        return False
    return True
