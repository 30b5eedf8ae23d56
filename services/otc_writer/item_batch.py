"""Item changes of handlers running at once, stored in one round trip (group commit, ``batching.py``).

An item change must come back with the item's copy of its scope's bindings (``projection.py``), and
a ``bulk_write`` returns no documents. So the process keeps, per item it last stored or read, the
copy it saw (``rev`` and toolchains), and a batch writes each change with an update fenced on
``{_id, revision: {$lt: new}, bindings.rev: <known>}``: a match stores the change *and* proves
the copy is the known one, atomically, as ``find_one_and_update`` returning it would. A bind that
updates the copies first makes the update miss; one that comes after reads the item afterwards
(the projection's argument, unchanged). When the counts say some missed, every change of the batch
goes the one-by-one path, which tells stored, same and stale apart as always (a change the batch
did store reads as "same" there: reconciled all the same). Unknown items (new ones, a restart) go
one by one too. A batch of one is one conditional update.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import bson
from pymongo import UpdateOne
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.errors import BulkWriteError

from services.otc_writer.batching import GroupCommit
from shared.mongo import Document

COPIES_LIMIT = 20_000
"""Items whose bindings copy is kept (a short list of toolchain ids each)."""
BATCH_MAX = 64


@dataclass(frozen=True)
class Copy:
    """An item's copy of its scope's bindings, as this process last saw it stored."""

    rev: int
    toolchains: tuple[str, ...]


@dataclass(frozen=True)
class ItemWrite:
    key_id: str
    revision: int
    fields: dict[str, Any]
    copy: Copy


class ItemBatch:
    """The batched, fenced item writes of one items collection and the copies they rely on."""

    def __init__(self, coll: AsyncCollection[Document], name: str) -> None:
        self._coll = coll
        self._copies: OrderedDict[str, Copy] = OrderedDict()
        self._batches: GroupCommit[ItemWrite, bool] = GroupCommit(
            self._flush, key_of=lambda w: w.key_id, max_batch=BATCH_MAX, name=f"items:{name}"
        )

    def known(self, key_id: str) -> Copy | None:
        return self._copies.get(key_id)

    def saw(self, key_id: str, copy: Any) -> None:
        """Remember the copy stored on an item (a ``bindings`` value: ``{toolchains, rev}``)."""
        if isinstance(copy, dict) and isinstance(copy.get("rev"), int):
            self._copies[key_id] = Copy(copy["rev"], tuple(copy.get("toolchains", [])))
            self._copies.move_to_end(key_id)
            while len(self._copies) > COPIES_LIMIT:
                self._copies.popitem(last=False)
        else:
            self._copies.pop(key_id, None)

    async def put(self, key_id: str, revision: int, fields: dict[str, Any]) -> Copy | None:
        """The copy, when the change is stored with the known one; None: take the one-by-one path."""
        copy = self._copies.get(key_id)
        if copy is None or not _encodes(fields):
            return None
        if not await self._batches.submit(ItemWrite(key_id, revision, fields, copy)):
            self._copies.pop(key_id, None)
            return None
        return copy

    async def _flush(self, writes: list[ItemWrite]) -> list[bool | BaseException]:
        ops = [
            UpdateOne(
                {"_id": w.key_id, "revision": {"$lt": w.revision}, "bindings.rev": w.copy.rev},
                {"$set": w.fields},
            )
            for w in writes
        ]
        try:
            result = await self._coll.bulk_write(ops, ordered=False)
        except BulkWriteError:
            return [False] * len(writes)
        return [result.matched_count == len(writes)] * len(writes)


def _encodes(fields: dict[str, Any]) -> bool:
    try:
        bson.encode(fields)
    except (bson.errors.InvalidDocument, bson.errors.InvalidStringData, OverflowError, UnicodeError):
        return False
    return True
