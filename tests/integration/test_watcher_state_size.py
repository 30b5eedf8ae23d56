"""``watch_published`` holds a namespace of any size (``services.kabanero_watcher.state``).

A namespace's records are split over chunk documents, each far below MongoDB's 16 MiB, which
the embedded server now refuses as a real one does: one document per namespace failed at about
12,000 triggers of realistic size, every write of the namespace after it too.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import bson
import pytest
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.asynchronous.database import AsyncDatabase

from services.kabanero_watcher.state import COLLECTION, PublishedState, Record
from shared.events import InstanceRef, TriggerData, TriggerKey, content_hash
from shared.mongo import Document, make_client

TRIGGERS = 20_000


@pytest.fixture
async def db(mongodb_url: str) -> AsyncIterator[AsyncDatabase[Document]]:
    client = make_client(mongodb_url)
    try:
        yield client.get_default_database()
    finally:
        await client.close()


def trigger(n: int, *, revision: int = 1, pending: bool = False) -> Record:
    """A trigger record of realistic size: a mediation with its listener and two connections."""
    key = TriggerKey(
        cluster="test", namespace="big", generation="mediation", owner="webhook", name=f"mediation-{n:05d}"
    )
    content = {
        "mediation": {
            "name": key.name,
            "selector": {"urlPattern": "webhook", "repositoryType": {"file": ".appsody-config.yaml"}},
            "variables": [{"name": "body.webhooks-tekton-git-branch", "value": "main"}],
            "sendTo": ["dest", "gitops"],
            "body": [{"= if": "body.webhooks-tekton-event-type == 'push'"}],
        },
        "mediator": {"createListener": True, "repositories": [{"github": {"secret": "ghe-token"}}]},
        "connections": [
            {
                "from": {"mediator": {"name": "webhook", "mediation": key.name, "destination": d}},
                "to": [{"https": [{"url": f"https://el-listener-{n}.example.com/{d}", "insecure": False}]}],
            }
            for d in ("dest", "gitops")
        ],
    }
    digest = content_hash(content)
    data = TriggerData(
        key=key,
        instance=InstanceRef(cluster="test", namespace="big", name="kabanero"),
        content=content,
        content_hash=digest,
        version=digest,
        revision=revision,
    )
    return Record(
        cluster="test",
        kind="trigger",
        key=key.id,
        namespace="big",
        content_hash=digest,
        revision=revision,
        data=data.model_dump(mode="json"),
        routing_key="kabanero.trigger.created",
        pending=pending,
    )


async def docs(coll: AsyncCollection[Document]) -> list[Document]:
    return await coll.find({"namespace": "big"}).to_list()


async def test_a_namespace_of_20000_triggers_is_stored_and_reloaded(db: AsyncDatabase[Document]) -> None:
    records = [trigger(n) for n in range(TRIGGERS)]
    assert 1_000 < len(records[0].model_dump_json()) < 1_500  # about 1.2 KB each, 25 MB in all
    state = PublishedState(db, "test")
    # The watcher's batch: every record pending before the publish, then done after the confirm.
    await state.commit_many([r.model_copy(update={"pending": True}) for r in records])
    await state.commit_many(records)

    stored = await docs(db[COLLECTION])
    assert len(stored) > 1
    assert all(len(bson.encode(d)) < 4 * 1024 * 1024 for d in stored)
    assert not any(d["pending"] for d in stored)

    reloaded = PublishedState(db, "test")
    await reloaded.load()
    assert reloaded.in_namespace("big", "trigger") == sorted(records, key=lambda r: r.key)
    assert reloaded.pending_in_namespace("big", frozenset({"trigger"})) == []
    assert reloaded.live_in_namespace("big", frozenset({"trigger"}))

    # One record changes: one chunk is rewritten, the others are left as they were.
    before = {d["_id"]: d["updated_at"] for d in stored}
    changed = trigger(7, revision=2)
    await reloaded.commit(changed)
    after = {d["_id"]: d["updated_at"] for d in await docs(db[COLLECTION])}
    assert after.keys() == before.keys()
    assert sum(after[i] != before[i] for i in before) == 1
    again = PublishedState(db, "test")
    await again.load()
    assert again.get("trigger", changed.key) == changed
    assert len(again.in_namespace("big", "trigger")) == TRIGGERS


async def test_an_interrupted_doubling_leaves_the_complete_generation(db: AsyncDatabase[Document]) -> None:
    """A crash after some chunks of the next generation were written: load reads the complete
    one (what was confirmed), and the namespace's next write deletes the partial one."""
    state = PublishedState(db, "test")
    records = [trigger(n) for n in range(3)]
    await state.commit_many(records)
    coll = db[COLLECTION]
    partial = {**(await docs(coll))[0], "_id": "test|big|0/2", "chunk": 0, "chunks": 2, "records": []}
    await coll.insert_one(partial)

    reloaded = PublishedState(db, "test")
    await reloaded.load()
    assert reloaded.in_namespace("big", "trigger") == records
    await reloaded.commit(trigger(0, revision=2))
    assert [d["_id"] for d in await docs(coll)] == ["test|big|0/1"]
