"""The ledger's group commit against the MongoDB wire server: what a batch takes, in how many
commands, and what it leaves to the one-by-one path (leased entries, a race between its read and
its write)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from pymongo import AsyncMongoClient, monitoring

from services.otc_writer.ledger import (
    Intent,
    Lease,
    LeaseLost,
    Ledger,
    LedgerEntry,
    _Retry,
    _Take,
    ledger_id,
)
from shared.mongo import Document, database


class Commands(monitoring.CommandListener):
    def __init__(self) -> None:
        self.names: list[str] = []

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        if event.command_name not in {"hello", "ismaster", "isMaster", "ping", "endSessions"}:
            self.names.append(event.command_name)

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        pass

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        pass


@pytest.fixture
async def world(mongodb_url: str) -> AsyncIterator[tuple[Ledger, Commands]]:
    commands = Commands()
    client: AsyncMongoClient[Document] = AsyncMongoClient(
        mongodb_url, tz_aware=True, event_listeners=[commands]
    )
    ledger = Ledger(database(client), lease_ttl_s=30.0, lease_wait_s=0.5)
    await ledger.coll.delete_many({})
    yield ledger, commands
    await ledger.coll.delete_many({})
    await client.close()


def _doc(key: str, **fields: Any) -> Document:
    return {
        "_id": ledger_id("github", key, "tc"),
        "purpose": "github",
        "key": key,
        "toolchain_id": "tc",
    } | fields


def _take(key: str, *, new: bool = True) -> _Take:
    fresh = LedgerEntry.fresh("github", key, "tc", "scope") if new else None
    return _Take(ledger_id("github", key, "tc"), "me", Intent(op="apply", name=f"repo {key}"), fresh)


async def test_a_batch_takes_its_leases_in_two_commands_and_keeps_the_prior_intent(
    world: tuple[Ledger, Commands],
) -> None:
    ledger, commands = world
    crashed: dict[str, Any] = {"op": "apply", "name": "repo old-name", "since": datetime.now(UTC)}
    await ledger.coll.insert_many(
        [
            _doc("free", present=False, revision=3, intent=crashed),
            _doc("held", lease_owner="thief", lease_until=datetime.now(UTC) + timedelta(seconds=30)),
        ]
    )
    commands.names.clear()
    takes = [_take("free"), _take("held"), _take("new"), _take("gone", new=False)]
    free, held, new, gone = await ledger.take_batch(takes)
    assert commands.names == ["find", "insert", "update"]  # one find, one bulk_write (two kinds)
    assert isinstance(free, Lease) and isinstance(new, Lease) and free.token == new.token
    # The entry as it was before the lease: the crashed attempt's intent is known to the holder.
    assert free.entry.intent is not None and free.entry.intent.name == "repo old-name"
    assert free.entry.revision == 3 and new.entry.revision == -1  # fresh
    assert held is _Retry.SINGLY and gone is _Retry.ABSENT
    doc = await ledger.coll.find_one({"_id": free.id})
    assert doc is not None and doc["lease_owner"] == "me" and doc["intent"]["name"] == "repo free"
    assert doc["epoch"] == 1

    commands.names.clear()
    await asyncio.gather(ledger.commit(free, {"present": True, "tool_id": "t1"}), ledger.release(new))
    assert commands.names == ["update"]  # one bulk_write for both
    doc = await ledger.coll.find_one({"_id": free.id})
    assert doc is not None and doc["present"] and doc["intent"] is None and doc["lease_owner"] is None


async def test_an_entry_written_between_the_read_and_the_update_is_not_taken(
    world: tuple[Ledger, Commands], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The epoch fence: another writer leases and commits the entry between the batch's find and
    its bulk_write; the batch must not take it with a stale view of it."""
    ledger, commands = world
    await ledger.coll.insert_many([_doc(k, present=False, revision=1) for k in ("a", "b")])
    real = ledger.coll.bulk_write

    async def racing(ops: Any, **kw: Any) -> Any:
        other = Ledger(ledger.coll.database, lease_ttl_s=30.0)
        lease = await other._try_take(ledger_id("github", "a", "tc"), "other", None, None)
        assert lease is not None
        await other._fenced(lease, {"$set": {"revision": 9, "lease_owner": None}})
        return await real(ops, **kw)

    monkeypatch.setattr(ledger.coll, "bulk_write", racing)
    commands.names.clear()
    a, b = await ledger.take_batch([_take("a"), _take("b")])
    # find, the other writer's findAndModify + update, the bulk, then the read-back of the tokens
    assert commands.names == ["find", "findAndModify", "update", "update", "find"]
    assert a is _Retry.SINGLY and isinstance(b, Lease)
    monkeypatch.setattr(ledger.coll, "bulk_write", real)
    lease = await ledger.acquire("github", "a", "tc", "me")  # the one-by-one path sees revision 9
    assert lease.entry.revision == 9


async def test_a_commit_whose_lease_was_taken_over_fails_alone(world: tuple[Ledger, Commands]) -> None:
    ledger, _ = world
    mine, lost = await asyncio.gather(
        ledger.acquire("github", "mine", "tc", "me"), ledger.acquire("github", "lost", "tc", "me")
    )
    assert mine.token == lost.token  # one batch
    await ledger.coll.update_one({"_id": lost.id}, {"$set": {"lease_owner": "thief", "lease_token": "x"}})
    results = await asyncio.gather(
        ledger.commit(mine, {"present": True}), ledger.commit(lost, {"present": True}), return_exceptions=True
    )
    assert results[0] is None and isinstance(results[1], LeaseLost) and lost.lost
    doc = await ledger.coll.find_one({"_id": lost.id})
    assert doc is not None and doc["lease_owner"] == "thief" and not doc.get("present")
