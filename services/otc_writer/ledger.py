"""The tool ledger: what otc-writer has applied to OTC, one document per (purpose, key, toolchain).

Why each field exists:
- ``tool_id`` / ``parameters`` / ``content_hash``: an unchanged desired tool costs no OTC call, and a
  change is sent as a minimal merge-patch computed against what was applied.
- ``revision``: compare-and-set; an apply or remove with an older revision is skipped, so a late or
  redelivered older event never overwrites a newer applied state.
- ``intent``: written by the same conditional update that takes the lease, so the hot path costs
  exactly two ledger round trips (lease and intent in one, the commit and release in one more).
  A release without an OTC write restores the intent the lease found.
- ``pending``: the intent written *before* a mutating OTC call whose operation differs from the
  one the lease announced (a recreate after a 404, an audit repair). If the process dies between the call
  and the ledger commit, the next attempt sees it and reads OTC (by tool id or deterministic name)
  before writing: no duplicate create, no lost delete, no second identical write.
- ``lease_owner`` / ``lease_until``: a per-key lease taken with one atomic conditional update, held
  around the OTC call. Two replicas consuming one queue thus never act on the same tool at once; a
  crashed holder's lease simply expires. While held it is renewed every third of its TTL (``kept``),
  since one apply (a slow pending lookup, then a write, each with retries) can outlast the TTL.
  Before each OTC write the holder checks that at least a quarter of the TTL is left (renewals keep
  two thirds or more), so a holder whose renewals failed aborts before writing, with that margin
  against clock skew between replicas; commits are fenced on the owner.
- ``_id`` never holds a NUL: a new entry whose key has one is refused (:class:`UnstorableKey`, the
  message dead-letters with that reason). MongoDB stores such a string, but the SQLite store of the
  MongoDB emulator the stack runs on matches it by ``_id`` alone and by no other filter, so every
  fenced update missed and the tool was retried forever (``LeaseLost``, then ``LeaseBusy``). No
  producer of ours emits one (kabanero-watcher refuses such a mediation name at the source).
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
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from pymongo import ASCENDING, ReturnDocument
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import DuplicateKeyError

from services.otc_writer.desired import DesiredTool
from shared.amqp import PermanentError
from shared.backoff import Backoff
from shared.mongo import Document

log = logging.getLogger(__name__)

LEDGER = "otc_writer_ledger"
SCHEMA_VERSION = 1
"""The shape above; a release that changes it bumps this (docs/design.md, "Stored shapes and their
versions")."""


def ledger_id(purpose: str, key: str, toolchain_id: str) -> str:
    return f"{purpose}|{toolchain_id}|{key}"


class Intent(BaseModel):
    """An OTC write that may have started: the next holder reads OTC before writing again."""

    op: str
    name: str = ""
    since: datetime | None = None


class LedgerEntry(BaseModel):
    """One ledger document (see the module docstring for why each field exists)."""

    model_config = ConfigDict(extra="ignore", populate_by_name=True)

    id: str = Field(alias="_id")
    purpose: str
    key: str
    toolchain_id: str
    scope: str | None = None
    present: bool = False
    revision: int = -1
    tool_id: str | None = None
    tool_name: str | None = None
    tool_type_id: str | None = None
    parameters: dict[str, Any] | None = None
    content_hash: str | None = None
    pending: Intent | None = None
    intent: Intent | None = None
    lease_owner: str | None = None
    lease_until: datetime | None = None
    refused_hash: str | None = None
    refused_at: datetime | None = None
    refused_by: str | None = None
    last_error: str | None = None
    updated_at: datetime | None = None

    @property
    def interrupted(self) -> list[Intent]:
        """Intents of attempts that may have written to OTC without committing."""
        return [i for i in (self.pending, self.intent) if i is not None]

    @property
    def applied(self) -> bool:
        """A tool is known in OTC and nothing is unresolved."""
        return self.present and bool(self.tool_id) and not self.interrupted

    def leased_at(self, now: datetime) -> bool:
        until = self.lease_until
        if self.lease_owner is None or until is None:
            return False
        return (until if until.tzinfo is not None else until.replace(tzinfo=UTC)) > now

    def applied_tool(self) -> DesiredTool:
        """The tool as last applied (what the audit restores, what ``kabanero-otc plan`` expects)."""
        return DesiredTool(
            purpose=self.purpose,
            key=self.key,
            toolchain_id=self.toolchain_id,
            tool_type_id=self.tool_type_id or "",
            name=self.tool_name or "",
            parameters=self.parameters or {},
            revision=self.revision,
            scope=self.scope,
        )

    @classmethod
    def fresh(cls, purpose: str, key: str, toolchain_id: str, scope: str | None) -> LedgerEntry:
        return cls(
            id=ledger_id(purpose, key, toolchain_id),
            purpose=purpose,
            key=key,
            toolchain_id=toolchain_id,
            scope=scope,
        )


_NOT_REFUSED: dict[str, Any] = {
    "refused_hash": None,
    "refused_at": None,
    "refused_by": None,
    "last_error": None,
}
_UNLEASED: dict[str, Any] = {"lease_owner": None, "lease_until": None}


class UnstorableKey(PermanentError):
    """A key no ledger entry can be made for (a NUL in it): retrying cannot help."""


class LeaseBusy(Exception):
    """Another replica holds the lease of this key longer than we are willing to wait."""


class LeaseLost(Exception):
    """Our lease was taken over (or expired unrenewed): no OTC write may start; the message is retried."""


@dataclass
class Lease:
    id: str
    owner: str
    entry: LedgerEntry
    """The ledger entry as it was before the lease was taken (its intent: the one found)."""
    until: datetime
    """Expiry as last written by us (taken or renewed)."""
    margin: timedelta = field(default=timedelta(0))
    """Lease time that must be left when an OTC write starts."""
    lost: bool = False
    """A renewal or a fenced write found the lease no longer ours."""
    released: bool = False
    """Committed or released by us: renewing it now would be a mistake, not a loss."""
    writing: bool = False
    """An OTC write may have started: a release keeps the intent, the outcome is unknown."""


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
        self._margin = self._ttl / 4
        self._wait_s = lease_wait_s

    async def ensure_indexes(self) -> None:
        # Uniqueness of (purpose, key, toolchain) comes from ``_id`` = ledger_id(...). The scope index
        # serves one query per instance reconcile (service events, snapshots), never one per change.
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
        intent: Intent | None = None,
        wait_s: float | None = None,
    ) -> Lease:
        """Take the key's lease (creating its entry) and write ``intent`` in the same update.

        Waits up to ``wait_s`` (``lease_wait_s``) for another holder.
        """
        lease = await self._take(purpose, key, toolchain_id, owner, scope, intent, wait_s, upsert=True)
        assert lease is not None
        return lease

    async def acquire_existing(
        self,
        purpose: str,
        key: str,
        toolchain_id: str,
        owner: str,
        *,
        intent: Intent | None = None,
        wait_s: float | None = None,
    ) -> Lease | None:
        """As ``acquire``, but None when there is no entry (nothing was ever applied: nothing to remove)."""
        return await self._take(purpose, key, toolchain_id, owner, None, intent, wait_s, upsert=False)

    async def _take(
        self,
        purpose: str,
        key: str,
        toolchain_id: str,
        owner: str,
        scope: str | None,
        intent: Intent | None,
        wait_s: float | None,
        *,
        upsert: bool,
    ) -> Lease | None:
        doc_id = ledger_id(purpose, key, toolchain_id)
        if upsert and "\x00" in doc_id:
            raise UnstorableKey(f"ledger key {doc_id!r} contains a NUL character; no entry is made for it")
        fresh = LedgerEntry.fresh(purpose, key, toolchain_id, scope) if upsert else None
        deadline = time.monotonic() + (self._wait_s if wait_s is None else wait_s)
        backoff = Backoff(0.01, 0.2)
        while True:
            lease = await self._try_take(doc_id, owner, intent, fresh)
            if lease is not None:
                return lease
            if fresh is None and await self.coll.find_one({"_id": doc_id}, {"_id": 1}) is None:
                return None
            if time.monotonic() >= deadline:
                raise LeaseBusy(f"ledger key {doc_id} is leased by another writer")
            await backoff.sleep()

    async def _try_take(
        self, doc_id: str, owner: str, intent: Intent | None, fresh: LedgerEntry | None
    ) -> Lease | None:
        """One conditional update: the lease if free or expired (inserting ``fresh`` when there is
        no entry and ``fresh`` is given), else None."""
        now = datetime.now(UTC)
        until = now + self._ttl
        update: dict[str, Any] = {"$set": {"lease_owner": owner, "lease_until": until}}
        if intent is not None:
            update["$set"]["intent"] = intent.model_copy(update={"since": now}).model_dump()
        if fresh is not None:
            update["$setOnInsert"] = {
                "purpose": fresh.purpose,
                "key": fresh.key,
                "toolchain_id": fresh.toolchain_id,
                "scope": fresh.scope,
                "present": fresh.present,
                "revision": fresh.revision,
                "schema_version": SCHEMA_VERSION,
            }
        try:
            before = await self.coll.find_one_and_update(
                {"_id": doc_id, "$or": [{"lease_owner": None}, {"lease_until": {"$lt": now}}]},
                update,
                upsert=fresh is not None,
                return_document=ReturnDocument.BEFORE,
            )
        except DuplicateKeyError:
            return None  # exists and leased by someone else
        entry = LedgerEntry.model_validate(before) if before is not None else fresh  # fresh: inserted
        if entry is None:
            return None  # leased by someone else, or (no upsert) no entry
        return Lease(doc_id, owner, entry, until=until, margin=self._margin)

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
        """Raise ``LeaseLost`` unless the lease is ours with ``margin`` left; call right before an OTC
        write (from then on the write may have happened: ``writing``)."""
        if lease.lost or datetime.now(UTC) + lease.margin >= lease.until:
            raise LeaseLost(f"lease on {lease.id} lost or about to expire before the OTC write")
        lease.writing = True

    async def mark_pending(self, lease: Lease, op: str, name: str) -> None:
        """Record the intent of an OTC write the lease did not announce; aborts (LeaseLost) if the
        lease is gone (fenced on the owner and an unexpired lease)."""
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
                    "intent": None,
                    **_NOT_REFUSED,
                    "updated_at": datetime.now(UTC),
                    "schema_version": SCHEMA_VERSION,
                    **_UNLEASED,
                }
            },
        )

    async def fail(self, lease: Lease, error: str) -> None:
        """Keep the intents (the outcome may be unknown), record the error, release the lease.

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
                    **_UNLEASED,
                }
            },
        )

    async def refuse(
        self, lease: Lease, *, content_hash: str, revision: int, error: str, message_id: str | None
    ) -> None:
        """Record OTC's permanent refusal of ``content_hash`` and release the lease.

        The intents are kept as in ``fail``: an earlier interrupted attempt may have left a tool that
        only the lookup of its name still knows about.
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
                    **_UNLEASED,
                }
            },
        )

    async def refused(self, limit: int = 100) -> list[LedgerEntry]:
        """Entries whose current content OTC refused (for the logs at start; off the hot path)."""
        cursor = self.coll.find({"refused_hash": {"$ne": None}}).limit(limit)
        return [LedgerEntry.model_validate(d) async for d in cursor]

    async def release(self, lease: Lease, fields: dict[str, Any] | None = None) -> None:
        """Release without an OTC write: the intent goes back to what the lease found."""
        lease.released = True
        restore: dict[str, Any] = {}
        if not lease.writing:
            found = lease.entry.intent
            restore["intent"] = found.model_dump() if found is not None else None
        await self.coll.update_one(
            {"_id": lease.id, "lease_owner": lease.owner},
            {"$set": {**(fields or {}), **restore, **_UNLEASED}},
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

    async def in_scope(self, purpose: str, scope: str) -> list[LedgerEntry]:
        """Every entry of one instance, in one query (an instance reconcile compares them in memory)."""
        cursor = self.coll.find({"purpose": purpose, "scope": scope})
        return [LedgerEntry.model_validate(d) async for d in cursor]

    async def with_tools(self) -> dict[str, list[LedgerEntry]]:
        """Entries that have, or may have (pending), a tool in OTC, per toolchain (for the audit)."""
        cursor = self.coll.find(
            {"$or": [{"present": True}, {"pending": {"$ne": None}}, {"intent": {"$ne": None}}]}
        )
        by_toolchain: dict[str, list[LedgerEntry]] = {}
        async for doc in cursor:
            entry = LedgerEntry.model_validate(doc)
            by_toolchain.setdefault(entry.toolchain_id, []).append(entry)
        return by_toolchain

    async def get(self, purpose: str, key: str, toolchain_id: str) -> Document | None:
        return await self.coll.find_one({"_id": ledger_id(purpose, key, toolchain_id)})
