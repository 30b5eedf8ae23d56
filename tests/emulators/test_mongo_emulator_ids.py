"""The embedded store's ``_id`` shortcut keeps MongoDB's semantics (``emulators.mongo``).

Runs against the session's MongoDB (a real server when ``MONGODB_URL`` is set), so the same
assertions hold for both, and against an ``emulators.mongo`` on a SQLite file (``--file``, the
engine ``make run`` keeps its data in): a miss finds nothing, a duplicate string or numeric ``_id``
is refused, an upsert reports whether it created the document.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from pymongo import AsyncMongoClient
from pymongo.errors import BulkWriteError, DuplicateKeyError

from emulators.mongo.server import running
from shared.mongo import Document


@pytest.fixture(params=["session", "sqlite-file"])
async def coll(request: pytest.FixtureRequest, mongodb_url: str, tmp_path: Path):  # type: ignore[no-untyped-def]
    if request.param == "session":
        client: AsyncMongoClient[Document] = AsyncMongoClient(mongodb_url)
        try:
            yield client.get_default_database()["ids"]
        finally:
            await client.close()
        return
    async with running(path=str(tmp_path / "state.db")) as url:
        client = AsyncMongoClient(url)
        try:
            yield client.get_default_database()["ids"]
        finally:
            await client.close()


async def test_string_ids_keep_their_semantics(coll) -> None:  # type: ignore[no-untyped-def]
    await coll.insert_many([{"_id": f"k{i}", "v": i} for i in range(200)])
    assert await coll.find_one({"_id": "missing"}) is None
    assert await coll.find_one({"_id": "missing"}, {"v": 1}) is None
    assert await coll.find_one({"_id": "k7"}) == {"_id": "k7", "v": 7}
    with pytest.raises(DuplicateKeyError):
        await coll.insert_one({"_id": "k7"})
    with pytest.raises(BulkWriteError):
        await coll.insert_many([{"_id": "new"}, {"_id": "k8"}])

    created = await coll.update_one({"_id": "up"}, {"$set": {"v": 1}}, upsert=True)
    assert created.upserted_id == "up"
    again = await coll.update_one({"_id": "up"}, {"$set": {"v": 2}}, upsert=True)
    assert again.upserted_id is None and again.modified_count == 1
    replaced = await coll.replace_one({"_id": "rep"}, {"_id": "rep", "v": 3}, upsert=True)
    assert replaced.upserted_id == "rep"
    assert await coll.count_documents({}) == 200 + 1 + 2  # "new" landed before the duplicate
    assert (await coll.find_one({"_id": "up"}) or {}).get("v") == 2


async def test_numeric_ids_still_compare_across_types(coll) -> None:  # type: ignore[no-untyped-def]
    await coll.insert_one({"_id": 1})
    with pytest.raises(DuplicateKeyError):
        await coll.insert_one({"_id": 1.0})
    assert await coll.find_one({"_id": 1.0}) == {"_id": 1}
