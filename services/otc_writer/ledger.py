"""The tool ledger: what otc-writer has applied to OTC, one document per (purpose, key, toolchain).

Why each field exists:
- ``tool_id`` / ``parameters`` / ``content_hash``: an unchanged desired tool costs no OTC call, and a
  change is sent as a minimal merge-patch computed against what was applied.
- ``revision``: compare-and-set; an apply or remove with an older revision is skipped, so a late or
  redelivered older event never overwrites a newer applied state.
- ``pending``: the intent written *before* a mutating OTC call. If the process dies between the call
  and the ledger commit, the next attempt sees it and reads OTC (by tool id or deterministic name)
  before writing: no duplicate create, no lost delete, no second identical write.
- ``lease_owner`` / ``lease_until``: a per-key lease taken with one atomic conditional update, held
  around the OTC call. Two replicas consuming one queue thus never act on the same tool at once; a
  crashed holder's lease simply expires. While held it is renewed every third of its TTL (``kept``),
  since one apply (a slow pending lookup, then a write, each with retries) can outlast the TTL.
  The intent write before each OTC write is fenced on the owner *and* an unexpired lease, so a holder
  whose renewals failed aborts before writing; commits are fenced on the owner.
- ``refused_hash`` / ``refused_at`` / ``refused_by`` (with ``last_error``): OTC refused this content
  for good (a 4xx on the write). The same content is not sent again until it changes, the tool is
  removed, or another attempt on the entry succeeds or fails otherwise; ``refused_by`` (the CloudEvent
  id) lets a retry of the refused message itself dead-letter again with the reason.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from pymongo import ASCENDING, ReturnDocument
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import DuplicateKeyError

from shared.mongo import Document

log = logging.getLogger(__name__)

LEDGER = "otc_writer_ledger"
SCHEMA_VERSION = 1


def ledger_id(purpose: str, key: str, toolchain_id: str) -> str:
    return f"{purpose}|{toolchain_id}|{key}"


_NOT_REFUSED: dict[str, Any] = {
    "refused_hash": None,
    "refused_at": None,
    "refused_by": None,
    "last_error": None,
}


class LeaseBusy(Exception):
    """Another replica holds the lease of this key longer than we are willing to wait."""


class LeaseLost(Exception):
    """Our lease was taken over (or expired unrenewed): no OTC write may start; the message is retried."""


@dataclass
class Lease:
    id: str
    owner: str
    doc: Document
    """The ledger document as it was when the lease was taken."""
    until: datetime
    """Expiry as last written by us (taken or renewed)."""
    lost: bool = False
    """A renewal or a fenced write found the lease no longer ours."""
    released: bool = False
    """Committed or released by us: renewing it now would be a mistake, not a loss."""


class Ledger:
    def __init__(
        self,
        db: AsyncDatabase[Document],
        *,
        lease_ttl_s: float = 90.0,
        lease_wait_s: float = 20.0,
    ) -> None:
        self.coll: AsyncCollection[Document] = db[LEDGER]
        self._ttl = timedelta(seconds=lease_ttl_s)
        self._wait_s = lease_wait_s

    async def ensure_indexes(self) -> None:
        # Uniqueness of (purpose, key, toolchain) comes from ``_id`` = ledger_id(...); a second unique
        # index would be redundant (and makes every update scan the collection on mongoeco).
        await self.coll.create_index(
            [("purpose", ASCENDING), ("key", ASCENDING), ("toolchain_id", ASCENDING)],
            name="purpose_key_toolchain",
        )
        await self.coll.create_index([("purpose", ASCENDING), ("scope", ASCENDING)], name="purpose_scope")

    async def acquire(
        self,
        purpose: str,
        key: str,
        toolchain_id: str,
        owner: str,
        *,
        scope: str | None = None,
        wait_s: float | None = None,
    ) -> Lease:
        """Take the key's lease (creating its document), waiting up to ``wait_s`` (``lease_wait_s``)."""
        doc_id = ledger_id(purpose, key, toolchain_id)
        deadline = time.monotonic() + (self._wait_s if wait_s is None else wait_s)
        delay = 0.01
        while True:
            now = datetime.now(UTC)
            try:
                doc = await self.coll.find_one_and_update(
                    {
                        "_id": doc_id,
                        "$or": [{"lease_owner": None}, {"lease_until": {"$lt": now}}],
                    },
                    {
                        "$set": {"lease_owner": owner, "lease_until": now + self._ttl},
                        "$setOnInsert": {
                            "purpose": purpose,
                            "key": key,
                            "toolchain_id": toolchain_id,
                            "scope": scope,
                            "present": False,
                            "revision": -1,
                            "schema_version": SCHEMA_VERSION,
                        },
                    },
                    upsert=True,
                    return_document=ReturnDocument.AFTER,
                )
            except DuplicateKeyError:
                doc = None  # exists and leased by someone else
            if doc is not None and doc.get("lease_owner") == owner:
                return Lease(doc_id, owner, doc, until=now + self._ttl)
            if time.monotonic() >= deadline:
                raise LeaseBusy(f"ledger key {doc_id} is leased by another writer")
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.2)

    @asynccontextmanager
    async def kept(self, lease: Lease) -> AsyncIterator[Lease]:
        """Renew ``lease`` every third of its TTL for the duration of the block."""
        task = asyncio.create_task(self._keep(lease), name=f"lease-renew:{lease.id}")
        try:
            yield lease
        finally:
            task.cancel()
            await asyncio.wait([task])  # never swallows a cancellation of the caller

    async def _keep(self, lease: Lease) -> None:
        interval = self._ttl.total_seconds() / 3
        while not lease.lost and not lease.released:
            await asyncio.sleep(interval)
            try:
                await self.renew(lease)
            except Exception as exc:  # Mongo trouble: try again; the expiry check guards the writes
                log.warning(
                    "lease renewal failed",
                    extra={"ledger_id": lease.id, "error": f"{type(exc).__name__}: {exc}"},
                )

    async def renew(self, lease: Lease) -> bool:
        """Extend the lease if it is still ours (atomic, fenced on the owner); False when lost."""
        until = datetime.now(UTC) + self._ttl
        result = await self.coll.update_one(
            {"_id": lease.id, "lease_owner": lease.owner}, {"$set": {"lease_until": until}}
        )
        if result.matched_count != 1:
            if not lease.released:
                lease.lost = True
                log.warning("lease lost while held", extra={"ledger_id": lease.id})
            return False
        lease.until = until
        return True

    def check(self, lease: Lease) -> None:
        """Raise ``LeaseLost`` unless the lease is still ours and unexpired (call before an OTC write)."""
        if lease.lost or datetime.now(UTC) >= lease.until:
            raise LeaseLost(f"lease on {lease.id} lost or expired before the OTC write")

    async def mark_pending(self, lease: Lease, op: str, name: str) -> None:
        """Record the intent of the OTC write that follows; aborts (LeaseLost) if the lease is gone."""
        self.check(lease)
        now = datetime.now(UTC)
        await self._fenced(
            lease,
            {"$set": {"pending": {"op": op, "name": name, "since": now}}},
            unexpired_at=now,
        )

    async def commit(self, lease: Lease, fields: dict[str, Any]) -> None:
        """Write the applied state and release the lease in one fenced update."""
        lease.released = True
        await self._fenced(
            lease,
            {
                "$set": {
                    **fields,
                    "pending": None,
                    **_NOT_REFUSED,
                    "updated_at": datetime.now(UTC),
                    "lease_owner": None,
                    "lease_until": None,
                }
            },
        )

    async def fail(self, lease: Lease, error: str) -> None:
        """Keep ``pending`` (the outcome may be unknown), record the error, release the lease.

        An earlier refusal is forgotten: this attempt was of other content (or a removal).
        """
        lease.released = True
        await self.coll.update_one(
            {"_id": lease.id, "lease_owner": lease.owner},
            {
                "$set": {
                    **_NOT_REFUSED,
                    "last_error": error[:2000],
                    "updated_at": datetime.now(UTC),
                    "lease_owner": None,
                    "lease_until": None,
                }
            },
        )

    async def refuse(
        self, lease: Lease, *, content_hash: str, revision: int, error: str, message_id: str | None
    ) -> None:
        """Record OTC's permanent refusal of ``content_hash`` and release the lease.

        ``pending`` is kept as in ``fail``: an earlier interrupted attempt may have left a tool that
        only the pending lookup still knows about.
        """
        lease.released = True
        now = datetime.now(UTC)
        await self.coll.update_one(
            {"_id": lease.id, "lease_owner": lease.owner},
            {
                "$set": {
                    "refused_hash": content_hash,
                    "refused_at": now,
                    "refused_by": message_id,
                    "revision": revision,
                    "last_error": error[:2000],
                    "updated_at": now,
                    "lease_owner": None,
                    "lease_until": None,
                }
            },
        )

    async def refused(self, limit: int = 100) -> list[Document]:
        """Entries whose current content OTC refused (for the logs)."""
        cursor = self.coll.find({"refused_hash": {"$ne": None}}).limit(limit)
        return [d async for d in cursor]

    async def release(self, lease: Lease, fields: dict[str, Any] | None = None) -> None:
        lease.released = True
        await self.coll.update_one(
            {"_id": lease.id, "lease_owner": lease.owner},
            {"$set": {**(fields or {}), "lease_owner": None, "lease_until": None}},
        )

    async def _fenced(
        self, lease: Lease, update: dict[str, Any], *, unexpired_at: datetime | None = None
    ) -> None:
        query: dict[str, Any] = {"_id": lease.id, "lease_owner": lease.owner}
        if unexpired_at is not None:
            query["lease_until"] = {"$gt": unexpired_at}
        result = await self.coll.update_one(query, update)
        if result.matched_count != 1:
            lease.lost = True
            raise LeaseLost(f"lease on {lease.id} lost or expired")

    async def present_in_scope(self, purpose: str, scope: str) -> list[Document]:
        """Entries that have, or may have (pending), a tool in OTC."""
        cursor = self.coll.find(
            {"purpose": purpose, "scope": scope, "$or": [{"present": True}, {"pending": {"$ne": None}}]}
        )
        return [d async for d in cursor]

    async def present_for_key(self, purpose: str, key: str) -> list[Document]:
        cursor = self.coll.find(
            {"purpose": purpose, "key": key, "$or": [{"present": True}, {"pending": {"$ne": None}}]}
        )
        return [d async for d in cursor]

    async def with_tools(self) -> dict[str, list[Document]]:
        """Entries that have, or may have (pending), a tool in OTC, per toolchain (for the audit)."""
        cursor = self.coll.find({"$or": [{"present": True}, {"pending": {"$ne": None}}]})
        by_toolchain: dict[str, list[Document]] = {}
        async for doc in cursor:
            by_toolchain.setdefault(doc["toolchain_id"], []).append(doc)
        return by_toolchain

    async def get(self, purpose: str, key: str, toolchain_id: str) -> Document | None:
        return await self.coll.find_one({"_id": ledger_id(purpose, key, toolchain_id)})
