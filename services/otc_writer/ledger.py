"""The tool ledger: what otc-writer has applied to OTC, one document per (purpose, key, toolchain).

Why each field exists:
- ``tool_id`` / ``parameters`` / ``content_hash``: an unchanged desired tool costs no OTC call, and a
  change is sent as a minimal merge-patch computed against what was applied.
- ``revision``: compare-and-set; an apply or remove with an older revision is skipped, so a late or
  redelivered older event never overwrites a newer applied state.
- ``intent``: written by the same conditional update that takes the lease, so the hot path costs
  two ledger writes (lease and intent in one, the commit and release in one more), batched across
  the changes handled at once (``batching.py``: one round trip each per batch, whatever its size).
  A release without an OTC write restores the intent the lease found.
- ``pending``: the intent written *before* a mutating OTC call whose operation differs from the
  one the lease announced (a recreate after a 404, an audit repair). If the process dies between the call
  and the ledger commit, the next attempt sees it and reads OTC (by tool id or deterministic name)
  before writing: no duplicate create, no lost delete, no second identical write.
- ``lease_owner`` / ``lease_until`` / ``lease_token``: a per-key lease taken with one conditional
  update (in a batch of them: ``take_batch``), held around the OTC call; ``lease_token`` names the
  take (one per batch) and fences what the holder writes after it. ``epoch`` counts every write
  but a renewal, so a batch that read an entry free can take it with an update fenced on the
  epoch it read: the entry as read is then the entry as it was right before the lease. Two
  replicas consuming one queue thus never act on the same tool at once; a crashed holder's lease
  simply expires. While held it is renewed every third of its TTL (``kept``),
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
import enum
import logging
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import bson
from pydantic import BaseModel, ConfigDict, Field
from pymongo import ASCENDING, ReturnDocument, UpdateOne
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import BulkWriteError, DuplicateKeyError, WriteError

from services.otc_writer.batching import GroupCommit
from services.otc_writer.desired import DesiredTool
from services.otc_writer.entry_cache import EntryCache
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
    epoch: int = 0
    """Writes so far but renewals (absent: 0); what a batch's lease update is fenced on."""

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
    token: str = ""
    """``lease_token`` of this take: the holder's writes are fenced on it as on the owner."""
    epoch: int = 0
    """The entry's ``epoch`` after our last write under this lease (the take, ``mark_pending``)."""

    def fence(self) -> dict[str, Any]:
        """Filter: the entry still under this lease."""
        query: dict[str, Any] = {"_id": self.id, "lease_owner": self.owner}
        if self.token:
            query["lease_token"] = self.token
        return query


@dataclass(frozen=True)
class _Take:
    """One lease a handler asks for (``fresh``: the entry to insert when there is none)."""

    doc_id: str
    owner: str
    intent: Intent | None
    fresh: LedgerEntry | None


class _Retry(enum.Enum):
    """A take the batch did not make (the entry is not cached, leased, or changed since): the
    one-by-one path takes it."""

    SINGLY = "singly"


@dataclass(frozen=True)
class _End:
    """A commit or release for the batch: ``fenced``: an update that misses means the lease is lost."""

    lease: Lease
    update: dict[str, Any]
    fenced: bool
    after: LedgerEntry | None = None
    """The entry once this update is in (cached then), when known."""


BATCH_MAX = 64
"""Most requests per batch (leases, commits): well under MongoDB's 100,000 writes and 48 MB per
``bulk_write`` message for any tool the client accepts; a prefetch's worth of handlers fits."""


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
        self.cache = EntryCache()
        self.leases: GroupCommit[_Take, Lease | _Retry] = GroupCommit(
            self.take_batch,
            key_of=lambda t: t.doc_id,
            max_batch=BATCH_MAX,
            name="ledger-leases",
            abandoned=self._abandon,
        )
        self.ends: GroupCommit[_End, None] = GroupCommit(
            self.end_batch, key_of=lambda e: e.lease.id, max_batch=BATCH_MAX, name="ledger-commits"
        )

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
        if self._batchable(doc_id):
            batched = await self.leases.submit(_Take(doc_id, owner, intent, fresh))
            if isinstance(batched, Lease):
                return batched
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
        token = uuid.uuid4().hex
        update: dict[str, Any] = {
            "$set": self._lease_fields(owner, until, token, intent, now),
            "$inc": {"epoch": 1},
        }
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
        lease = Lease(doc_id, owner, entry, until=until, margin=self._margin, token=token)
        lease.epoch = entry.epoch + 1
        return lease

    def _batchable(self, doc_id: str) -> bool:
        """Known to this process unleased: a batch may take it without reading it (``take_batch``)."""
        cached = self.cache.get(doc_id)
        return cached is not None and cached.lease_owner is None

    @staticmethod
    def _lease_fields(
        owner: str, until: datetime, token: str, intent: Intent | None, now: datetime
    ) -> dict[str, Any]:
        fields: dict[str, Any] = {"lease_owner": owner, "lease_until": until, "lease_token": token}
        if intent is not None:
            fields["intent"] = intent.model_copy(update={"since": now}).model_dump()
        return fields

    async def take_batch(self, takes: list[_Take]) -> list[Lease | _Retry | BaseException]:
        """The leases of a batch (distinct entries known to this process) in one round trip.

        One unordered ``bulk_write`` of updates, each fenced on ``{_id, lease_owner: null, epoch:
        <as cached>}``, that set the lease (``lease_token``: one per batch) and the intent and
        increment ``epoch``. A match proves nobody wrote the entry since this process did (or read
        it), so the cached entry is the entry as it was right before the lease, a crashed attempt's
        intent included, as ``find_one_and_update`` would have returned it (``entry_cache.py``).
        When the counts say some missed (another replica wrote them: rare), one ``find`` reads
        ``lease_token`` back to learn which; those are dropped from the cache and left to the
        one-by-one path (``_Retry.SINGLY``), as is an entry not cached, leased, or one BSON cannot
        encode. A batch of one is one ``findAndModify``, as without batches.
        """
        if len(takes) == 1:
            take = takes[0]
            lease = await self._try_take(take.doc_id, take.owner, take.intent, take.fresh)
            return [lease if lease is not None else _Retry.SINGLY]
        now = datetime.now(UTC)
        until, token = now + self._ttl, uuid.uuid4().hex
        results: list[Lease | _Retry | BaseException] = [_Retry.SINGLY] * len(takes)
        ops: list[UpdateOne] = []
        planned: dict[str, tuple[int, LedgerEntry]] = {}
        for i, take in enumerate(takes):
            cached = self.cache.get(take.doc_id)
            fields = self._lease_fields(take.owner, until, token, take.intent, now)
            if cached is None or cached.lease_owner is not None or not _encodes(fields):
                continue
            # Epoch 0: a document written before epochs (no field; null matches a missing one).
            # ``updated_at`` too: a replica of the previous release, mid-upgrade, writes it on every
            # commit, failure and refusal without incrementing the epoch.
            fence = {
                "_id": take.doc_id,
                "lease_owner": None,
                "epoch": cached.epoch or None,
                "updated_at": cached.updated_at,
            }
            ops.append(UpdateOne(fence, {"$set": fields, "$inc": {"epoch": 1}}))
            planned[take.doc_id] = (i, cached)
        for doc_id in await self._bulk(ops, list(planned), token):
            i, entry = planned[doc_id]
            lease = Lease(doc_id, takes[i].owner, entry, until=until, margin=self._margin, token=token)
            lease.epoch = entry.epoch + 1
            results[i] = lease
        return results

    async def _bulk(self, ops: list[UpdateOne], ids: list[str], token: str) -> set[str]:
        """Run the lease updates; the ids whose lease is now ``token``'s (the others leave the cache)."""
        if not ops:
            return set()
        try:
            result = await self.coll.bulk_write(ops, ordered=False)
            done = result.matched_count
        except BulkWriteError as exc:
            done = -1
            log.warning("a batch of lease updates failed in part", extra={"error": str(exc.details)[:500]})
        if done == len(ops):
            return set(ids)
        cursor = self.coll.find({"_id": {"$in": ids}}, {"lease_token": 1})
        taken = {d["_id"] async for d in cursor if d.get("lease_token") == token}
        for doc_id in set(ids) - taken:
            self.cache.drop(doc_id)
        return taken

    async def _abandon(self, result: Lease | _Retry) -> None:
        """A lease taken for a handler that was cancelled meanwhile: released, not left to expire."""
        if isinstance(result, Lease):
            await self.release(result)

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
        result = await self.coll.update_one(lease.fence(), {"$set": {"lease_until": until}})
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
        now = _stored_time(datetime.now(UTC))  # cached as stored, for the fence above
        state = {**fields, "pending": None, "intent": None, **_NOT_REFUSED, "updated_at": now, **_UNLEASED}
        update = {"$set": {**state, "schema_version": SCHEMA_VERSION}, "$inc": {"epoch": 1}}
        after = None
        if set(fields) <= set(LedgerEntry.model_fields):
            after = lease.entry.model_copy(update={**state, "epoch": lease.epoch + 1})
        await self.ends.submit(_End(lease, update, fenced=True, after=after))

    async def fail(self, lease: Lease, error: str) -> None:
        """Keep the intents (the outcome may be unknown), record the error, release the lease.

        An earlier refusal is forgotten: this attempt was of other content (or a removal).
        """
        lease.released = True
        self.cache.drop(lease.id)
        await self.coll.update_one(
            lease.fence(),
            {
                "$set": {
                    **_NOT_REFUSED,
                    "last_error": error[:2000],
                    "updated_at": datetime.now(UTC),
                    **_UNLEASED,
                },
                "$inc": {"epoch": 1},
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
        self.cache.drop(lease.id)
        now = datetime.now(UTC)
        await self.coll.update_one(
            lease.fence(),
            {
                "$set": {
                    "refused_hash": content_hash,
                    "refused_at": now,
                    "refused_by": message_id,
                    "revision": revision,
                    "last_error": error[:2000],
                    "updated_at": now,
                    **_UNLEASED,
                },
                "$inc": {"epoch": 1},
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
        update = {"$set": {**(fields or {}), **restore, **_UNLEASED}, "$inc": {"epoch": 1}}
        self.cache.drop(lease.id)  # its state after is not worth computing: a release is rare
        await self.ends.submit(_End(lease, update, fenced=False))

    async def end_batch(self, ends: list[_End]) -> list[BaseException | None]:
        """Commits and releases of a batch (distinct entries) in one unordered ``bulk_write``, each
        fenced on its lease. When the counts say some missed, one ``find`` tells which: an entry
        this lease ended is unleased and still carries its ``lease_token``; a fenced one that
        missed lost its lease (``LeaseLost``: the message is retried, and the next holder reads
        OTC first, as the intent is still there). A write MongoDB refuses fails its own request."""
        if len(ends) == 1 or not all(_encodes(e.update) for e in ends):
            return await self._end_singly(ends)  # alone; or one fails with its own error, not the batch
        errors: dict[int, BaseException] = {}
        try:
            result = await self.coll.bulk_write(
                [UpdateOne(e.lease.fence(), e.update) for e in ends], ordered=False
            )
            matched = result.matched_count
        except BulkWriteError as exc:
            errors = {
                int(e["index"]): WriteError(e.get("errmsg", ""), e.get("code"), e)
                for e in exc.details.get("writeErrors", [])
            }
            matched = int(exc.details.get("nMatched", 0))
        if matched + len(errors) == len(ends):
            ended = {e.lease.id for i, e in enumerate(ends) if i not in errors}
        else:
            ended = await self._ended(ends)
        return [errors.get(i) or self._outcome(end, ended) for i, end in enumerate(ends)]

    async def _ended(self, ends: list[_End]) -> set[str]:
        """The entries whose lease one of ``ends`` ended (unleased, its token still on them)."""
        tokens = {e.lease.id: e.lease.token for e in ends}
        cursor = self.coll.find({"_id": {"$in": list(tokens)}}, {"lease_owner": 1, "lease_token": 1})
        return {
            d["_id"]
            async for d in cursor
            if d.get("lease_owner") is None and d.get("lease_token") == tokens[d["_id"]]
        }

    def _outcome(self, end: _End, ended: set[str]) -> LeaseLost | None:
        if end.lease.id in ended and end.after is not None:
            self.cache.put(end.after)
        else:
            self.cache.drop(end.lease.id)
        if end.fenced and end.lease.id not in ended:
            end.lease.lost = True
            return LeaseLost(f"lease on {end.lease.id} lost or expired")
        return None

    async def _end_singly(self, ends: list[_End]) -> list[BaseException | None]:
        """One update each (a batch of one, or one that cannot be encoded as a whole)."""
        out: list[BaseException | None] = []
        for end in ends:
            try:
                result = await self.coll.update_one(end.lease.fence(), end.update)
            except Exception as exc:
                self.cache.drop(end.lease.id)
                out.append(exc)
                continue
            out.append(self._outcome(end, {end.lease.id} if result.matched_count == 1 else set()))
        return out

    async def _fenced(
        self, lease: Lease, update: dict[str, Any], *, unexpired_at: datetime | None = None
    ) -> None:
        query = lease.fence()
        if unexpired_at is not None:
            query["lease_until"] = {"$gt": unexpired_at}
        result = await self.coll.update_one(query, {**update, "$inc": {"epoch": 1}})
        if result.matched_count != 1:
            lease.lost = True
            self.cache.drop(lease.id)
            raise LeaseLost(f"lease on {lease.id} lost or expired")
        lease.epoch += 1

    async def in_scope(self, purpose: str, scope: str) -> list[LedgerEntry]:
        """Every entry of one instance, in one query (an instance reconcile compares them in memory)."""
        cursor = self.coll.find({"purpose": purpose, "scope": scope})
        entries = [LedgerEntry.model_validate(d) async for d in cursor]
        for entry in entries:
            self.cache.put(entry)
        return entries

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


def _encodes(doc: Document) -> bool:
    """BSON can encode ``doc``: one value it cannot (a lone surrogate, say) must fail only its own
    request, never the batch it would have been sent with."""
    try:
        bson.encode(doc)
    except (bson.errors.InvalidDocument, bson.errors.InvalidStringData, OverflowError, UnicodeError):
        return False
    return True


def _stored_time(when: datetime) -> datetime:
    """``when`` as MongoDB stores it (milliseconds), so a cached copy compares equal to the stored."""
    return when.replace(microsecond=when.microsecond // 1000 * 1000)
