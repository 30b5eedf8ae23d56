"""The embedded store refuses what a real MongoDB refuses (``emulators.mongo.limits``).

Runs against the session's MongoDB (a real server when ``MONGODB_URL`` is set) and against an
``emulators.mongo`` on a SQLite file, so the same assertions hold for all three: a document of
exactly 16 MiB is stored, one byte more is refused with the server's code, whatever the write
(insert, upsert, update, replace, in a bulk write), and nothing changes.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import bson
import pytest
from pymongo import InsertOne, ReplaceOne
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.errors import BulkWriteError, OperationFailure, WriteError

from emulators.mongo.server import running
from shared.mongo import Document, make_client

MAX = 16 * 1024 * 1024


@pytest.fixture(params=["session", "sqlite-file"])
async def coll(
    request: pytest.FixtureRequest, mongodb_url: str, tmp_path: Path
) -> AsyncIterator[AsyncCollection[Document]]:
    if request.param == "session":
        client = make_client(mongodb_url)
        try:
            yield client.get_default_database()["limits"]
        finally:
            await client.close()
        return
    async with running(path=str(tmp_path / "state.db")) as url:
        client = make_client(url)
        try:
            yield client.get_default_database()["limits"]
        finally:
            await client.close()


def sized(doc_id: str, size: int) -> dict[str, Any]:
    """``{_id, x}`` whose BSON is exactly ``size`` bytes."""
    overhead = len(bson.encode({"_id": doc_id, "x": ""}))
    return {"_id": doc_id, "x": "a" * (size - overhead)}


def codes(exc: OperationFailure) -> list[int | None]:
    """The write errors' codes of a write error, else the command error's code."""
    if isinstance(exc, BulkWriteError):
        return [e["code"] for e in exc.details["writeErrors"]]
    if isinstance(exc, WriteError):
        return [exc.code]
    return [exc.code]


async def test_hello_advertises_the_real_limits(coll: AsyncCollection[Document]) -> None:
    hello = await coll.database.command("hello")
    assert hello["maxBsonObjectSize"] == MAX
    assert hello["maxMessageSizeBytes"] == 48_000_000
    assert hello["maxWriteBatchSize"] == 100_000


async def test_a_document_at_the_limit_is_stored_one_byte_more_is_refused(
    coll: AsyncCollection[Document],
) -> None:
    await coll.insert_one(sized("at", MAX))
    assert len(bson.encode(await coll.find_one({"_id": "at"}) or {})) == MAX
    with pytest.raises(WriteError) as insert:
        await coll.insert_one(sized("over", MAX + 1))
    assert insert.value.code == 2 and "object to insert too large" in str(insert.value)
    with pytest.raises(WriteError) as upsert:
        await coll.replace_one({"_id": "up"}, sized("up", MAX + 1), upsert=True)
    assert upsert.value.code == 17420
    with pytest.raises(WriteError) as upsert_set:
        await coll.update_one({"_id": "up"}, {"$set": {"x": "a" * MAX}}, upsert=True)
    assert upsert_set.value.code == 17420
    assert await coll.count_documents({"_id": {"$in": ["over", "up"]}}) == 0


async def test_an_update_that_outgrows_the_limit_is_refused_and_changes_nothing(
    coll: AsyncCollection[Document],
) -> None:
    await coll.insert_one({"_id": "doc", "x": "small"})
    with pytest.raises(WriteError) as replaced:
        await coll.replace_one({"_id": "doc"}, sized("doc", MAX + 1))
    assert replaced.value.code == 17419
    assert "Resulting document after update is larger than 16777216" in str(replaced.value)
    with pytest.raises(BulkWriteError) as bulk:
        await coll.bulk_write([ReplaceOne({"_id": "doc"}, sized("doc", MAX + 1), upsert=True)])
    assert codes(bulk.value) == [17419]
    # Two halves that fit alone, not together: the server fails building the result (10334).
    await coll.update_one({"_id": "doc"}, {"$set": {"a": "a" * (MAX // 2 + 100_000)}})
    with pytest.raises(WriteError) as grown:
        await coll.update_one({"_id": "doc"}, {"$set": {"b": "b" * (MAX // 2 + 100_000)}})
    assert grown.value.code == 10334
    stored = await coll.find_one({"_id": "doc"}) or {}
    assert stored["x"] == "small" and "b" not in stored


async def test_an_ordered_bulk_stops_at_the_refused_document(coll: AsyncCollection[Document]) -> None:
    ops: list[InsertOne[Document]] = [
        InsertOne({"_id": "a"}),
        InsertOne(sized("b", MAX + 1)),
        InsertOne({"_id": "c"}),
    ]
    with pytest.raises(BulkWriteError) as bulk:
        await coll.bulk_write(ops)
    assert codes(bulk.value) == [2]
    assert bulk.value.details["nInserted"] == 1
    assert [d["_id"] async for d in coll.find({}, {"_id": 1})] == ["a"]


async def test_a_statement_over_the_parse_limit_is_refused_whole(coll: AsyncCollection[Document]) -> None:
    """Over 16 MiB + 16 KiB the server does not parse the statement (10334, ``BSONObjectTooLarge``)."""
    await coll.insert_one({"_id": "doc", "x": "small"})
    with pytest.raises(OperationFailure) as failed:
        await coll.bulk_write([ReplaceOne({"_id": "doc"}, sized("doc", MAX + 400_000), upsert=True)])
    assert codes(failed.value) == [10334]
    assert (await coll.find_one({"_id": "doc"}) or {})["x"] == "small"


def nested(levels: int) -> dict[str, Any]:
    """A document of ``levels`` levels of non-empty objects, the root included."""
    doc: dict[str, Any] = {"v": 1}
    for _ in range(levels - 1):
        doc = {"a": doc}
    return doc


async def test_nesting_deeper_than_100_levels_is_refused(coll: AsyncCollection[Document]) -> None:
    await coll.insert_one({"_id": "deep", **nested(100)})
    with pytest.raises(WriteError) as deeper:
        await coll.insert_one({"_id": "deeper", **nested(101)})
    assert deeper.value.code == 45
    with pytest.raises(WriteError) as updated:
        await coll.replace_one({"_id": "deep"}, {"_id": "deep", **nested(101)})
    assert updated.value.code == 45
    assert await coll.count_documents({}) == 1


async def test_an_array_id_is_refused(coll: AsyncCollection[Document]) -> None:
    with pytest.raises(WriteError) as refused:
        await coll.insert_one({"_id": [1, 2]})
    assert refused.value.code == 53
