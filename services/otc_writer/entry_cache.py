"""The ledger entries as this process last wrote or read them, each with its ``epoch``.

What lets a batch take its leases in one ``bulk_write`` and no read: a lease update fenced on
``{_id, lease_owner: null, epoch: <cached>}`` matches only if nobody wrote the entry since this
process wrote or read it (every ledger write but a renewal increments ``epoch``), so the cached
entry *is* the entry as it was right before the lease. A stale one (another replica wrote it) only
costs the fallback: the update misses and the entry is taken one by one. Bounded (least recently
used out): an entry not cached is taken one by one too, with one ``findAndModify`` as always.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from services.otc_writer.ledger import LedgerEntry

CACHE_LIMIT = 20_000
"""Entries kept (a few KiB each at most: ~10-40 MiB): the tools of 10,000 triggers in two
toolchains. Beyond it the least recently used go; they cost one command each when next changed."""


class EntryCache:
    def __init__(self, limit: int = CACHE_LIMIT) -> None:
        self._limit = limit
        self._entries: OrderedDict[str, LedgerEntry] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, doc_id: str) -> LedgerEntry | None:
        entry = self._entries.get(doc_id)
        if entry is not None:
            self._entries.move_to_end(doc_id)
        return entry

    def put(self, entry: LedgerEntry) -> None:
        """Keep ``entry`` unless a later state of it (a higher epoch) is kept already."""
        known = self._entries.get(entry.id)
        if known is not None and known.epoch > entry.epoch:
            return
        self._entries[entry.id] = entry
        self._entries.move_to_end(entry.id)
        while len(self._entries) > self._limit:
            self._entries.popitem(last=False)

    def drop(self, doc_id: str) -> None:
        self._entries.pop(doc_id, None)
