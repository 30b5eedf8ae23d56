"""The ledger's group commit against the MongoDB wire server: what a batch takes, in how many
commands, and what it leaves to the one-by-one path (entries not known, leased, or written by
another replica since this one knew them)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from pymongo import AsyncMongoClient

from services.otc_writer.family import TRIGGERS
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
from services.otc_writer.projection import Projection
from shared.events import ServiceEventData
from shared.mongo import Document, database
from tests.helpers import CommandLog
from tests.integration.writer_support import service_event, trigger


@pytest.fixture
async def world(mongodb_url: str) -> AsyncIterator[tuple[Ledger, CommandLog]]:
    commands = CommandLog()
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


async def test_a_batch_takes_its_leases_in_one_command_and_keeps_the_prior_intent(
    world: tuple[Ledger, CommandLog],
) -> None:
    ledger, commands = world
    crashed: dict[str, Any] = {"op": "apply", "name": "repo old-name", "since": datetime.now(UTC)}
    await ledger.coll.insert_many(
        [
            _doc("free", present=False, revision=3, intent=crashed, scope="s"),
            _doc("done", present=True, revision=1, tool_id="t0", scope="s", epoch=4),
            _doc(
                "held", scope="s", lease_owner="thief", lease_until=datetime.now(UTC) + timedelta(seconds=30)
            ),
        ]
    )
    assert len(await ledger.in_scope("github", "s")) == 3  # what a reconcile reads: now known
    commands.clear()
    free, done, held, new = await ledger.take_batch(
        [_take("free"), _take("done"), _take("held"), _take("new")]
    )
    assert commands.names == ["update"]  # one bulk_write, no read
    assert isinstance(free, Lease) and isinstance(done, Lease) and free.token == done.token
    # The entry as it was before the lease: the crashed attempt's intent is known to the holder.
    assert free.entry.intent is not None and free.entry.intent.name == "repo old-name"
    assert free.entry.revision == 3 and done.entry.tool_id == "t0" and done.epoch == 5
    assert held is _Retry.SINGLY and new is _Retry.SINGLY  # leased; never seen: one by one
    doc = await ledger.coll.find_one({"_id": free.id})
    assert doc is not None and doc["lease_owner"] == "me" and doc["intent"]["name"] == "repo free"
    assert doc["epoch"] == 1 and doc["lease_token"] == free.token

    commands.clear()
    await asyncio.gather(ledger.commit(free, {"present": True, "tool_id": "t1"}), ledger.release(done))
    assert commands.names == ["update"]  # one bulk_write for both
    doc = await ledger.coll.find_one({"_id": free.id})
    assert doc is not None and doc["present"] and doc["intent"] is None and doc["lease_owner"] is None
    # The commit is known as written: the next batch takes it without reading it.
    again = await ledger.take_batch([_take("free"), _take("done")])
    assert isinstance(again[0], Lease) and again[0].entry.tool_id == "t1" and again[0].entry.intent is None
    assert again[1] is _Retry.SINGLY  # a release is not cached


async def test_an_entry_another_replica_wrote_is_not_taken_from_the_cache(
    world: tuple[Ledger, CommandLog],
) -> None:
    """The epoch fence: another replica leases and commits an entry this process knows; the batch
    must not take it with its stale view, and the one-by-one path then sees the new state."""
    ledger, commands = world
    await ledger.coll.insert_many([_doc(k, present=False, revision=1, scope="s") for k in ("a", "b")])
    await ledger.in_scope("github", "s")
    other = Ledger(ledger.coll.database, lease_ttl_s=30.0)
    lease = await other.acquire("github", "a", "tc", "other")
    await other.commit(lease, {"revision": 9})
    commands.clear()
    a, b = await ledger.take_batch([_take("a"), _take("b")])
    assert commands.names == ["update", "find"]  # the bulk, then the read-back of the tokens
    assert a is _Retry.SINGLY and isinstance(b, Lease)
    mine = await ledger.acquire("github", "a", "tc", "me")  # one by one: sees revision 9
    assert mine.entry.revision == 9


async def test_a_commit_whose_lease_was_taken_over_fails_alone(world: tuple[Ledger, CommandLog]) -> None:
    ledger, commands = world
    await ledger.coll.insert_many([_doc(k, present=False, revision=1, scope="s") for k in ("mine", "lost")])
    await ledger.in_scope("github", "s")
    commands.clear()
    mine, lost = await asyncio.gather(
        ledger.acquire("github", "mine", "tc", "me"), ledger.acquire("github", "lost", "tc", "me")
    )
    assert mine.token == lost.token and commands.names == ["update"]  # one batch
    await ledger.coll.update_one({"_id": lost.id}, {"$set": {"lease_owner": "thief", "lease_token": "x"}})
    results = await asyncio.gather(
        ledger.commit(mine, {"present": True}), ledger.commit(lost, {"present": True}), return_exceptions=True
    )
    assert results[0] is None and isinstance(results[1], LeaseLost) and lost.lost
    doc = await ledger.coll.find_one({"_id": lost.id})
    assert doc is not None and doc["lease_owner"] == "thief" and not doc.get("present")


async def test_a_commit_by_a_replica_of_the_previous_release_is_not_missed(
    world: tuple[Ledger, CommandLog],
) -> None:
    """Mid-upgrade, a replica without epochs commits (its update sets ``updated_at``, no epoch):
    the cached entry is stale although its epoch matches, and the batch must see it."""
    ledger, _ = world
    await ledger.coll.insert_many([_doc(k, present=False, revision=1, scope="s") for k in ("a", "b")])
    await ledger.in_scope("github", "s")
    await ledger.coll.update_one(
        {"_id": ledger_id("github", "a", "tc")},
        {"$set": {"tool_id": "t-old", "present": True, "updated_at": datetime.now(UTC)}},
    )
    a, b = await ledger.take_batch([_take("a"), _take("b")])
    assert a is _Retry.SINGLY and isinstance(b, Lease)
    assert (await ledger.acquire("github", "a", "tc", "me")).entry.tool_id == "t-old"


async def test_an_item_change_sees_a_bind_that_came_between(mongodb_url: str) -> None:
    """Item changes of a known item are one fenced update (grouped); a bind that updated the item's
    bindings copy since makes it miss, and the change goes one by one and sees the new toolchains."""
    commands = CommandLog()
    client: AsyncMongoClient[Document] = AsyncMongoClient(
        mongodb_url, tz_aware=True, event_listeners=[commands]
    )
    projection = Projection(database(client))
    namespace = f"gc-{uuid.uuid4().hex[:8]}"

    def bound(revision: int, toolchains: list[str]) -> ServiceEventData:
        data = service_event("bound", revision=revision, toolchains=toolchains, namespace=namespace).data
        return ServiceEventData.model_validate(data)

    try:
        await projection.put_service(TRIGGERS, bound(1, ["tc1"]), deleted=False)
        assert await projection.put_item_bound(TRIGGERS, trigger("t", revision=1, namespace=namespace)) == (
            "stored",
            {"tc1"},
        )
        commands.clear()
        two = await asyncio.gather(
            projection.put_item_bound(TRIGGERS, trigger("t", revision=2, body="v2", namespace=namespace)),
            projection.put_item_bound(TRIGGERS, trigger("u", revision=1, namespace=namespace)),
        )
        assert two[0] == ("stored", {"tc1"}) and two[1] == ("stored", {"tc1"})
        assert commands.names.count("findAndModify") == 1  # u's, a new item; t: known, one fenced update
        await projection.put_service(TRIGGERS, bound(2, ["tc1", "tc2"]), deleted=False)
        commands.clear()
        state = await projection.put_item_bound(
            TRIGGERS, trigger("t", revision=3, body="v3", namespace=namespace)
        )
        assert state == ("stored", {"tc1", "tc2"})
        assert commands.names == ["update", "findAndModify"]  # the fenced update missed
        stored = await projection.get_trigger(trigger("t", namespace=namespace).key.id)
        assert stored is not None and stored.revision == 3
    finally:
        await client.close()
