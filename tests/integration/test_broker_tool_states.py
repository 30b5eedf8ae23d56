"""broker-api's record of each tool's newest outcome (``services/broker_api/tool_states.py``) on the
wire server: newest by (revision, time), ``since`` carried while a tool keeps waiting at one
revision, one command per outcome (two when a tool starts waiting), nothing read first."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest
from pymongo import AsyncMongoClient
from pymongo.asynchronous.database import AsyncDatabase

from services.broker_api.tool_states import COLLECTION, ToolStateStore
from shared.events import ToolOutcomeData
from shared.mongo import Document
from tests.helpers import CommandLog

T0 = datetime(2026, 1, 1, tzinfo=UTC)


@pytest.fixture
async def store(mongodb_url: str) -> AsyncIterator[tuple[ToolStateStore, CommandLog]]:
    commands = CommandLog()
    client: AsyncMongoClient[Document] = AsyncMongoClient(
        mongodb_url, tz_aware=True, event_listeners=[commands]
    )
    db: AsyncDatabase[Document] = client.get_default_database()
    try:
        await db[COLLECTION].delete_many({})
        commands.clear()
        yield ToolStateStore(db), commands
    finally:
        await client.close()


def outcome(state: str, revision: int, seconds: float, message: str | None = None) -> ToolOutcomeData:
    return ToolOutcomeData(
        purpose="kabanero-trigger",
        key="team-a/m1",
        toolchain_id="tc-1",
        state=state,  # type: ignore[arg-type]
        revision=revision,
        at=T0 + timedelta(seconds=seconds),
        message=message,
    )


async def stored(st: ToolStateStore) -> Document:
    (doc,) = await st.collection.find({}).to_list()
    return doc


async def test_newest_outcome_kept_and_waiting_since_carried(
    store: tuple[ToolStateStore, CommandLog],
) -> None:
    st, commands = store
    pending = outcome("pending", 2, 0, message="503")
    assert await st.put(pending)
    assert commands.names == ["update", "update"]  # no stored waiting outcome to keep: upserted
    assert (await stored(st))["since"] == T0

    commands.clear()
    assert not await st.put(pending)  # a replay: the upsert meets it, the update without upsert too
    assert not await st.put(outcome("applied", 1, 3600))  # an older revision, however late
    assert (await stored(st))["state"] == "pending"

    commands.clear()
    assert await st.put(outcome("held", 2, 5))  # still waiting at revision 2: since kept
    assert commands.names == ["update"]
    doc = await stored(st)
    assert (doc["state"], doc["since"], doc["at"]) == ("held", T0, T0 + timedelta(seconds=5))

    commands.clear()
    assert await st.put(outcome("applied", 2, 9))  # no longer waiting: its own since
    assert commands.names == ["update"]
    doc = await stored(st)
    assert (doc["state"], doc["since"]) == ("applied", T0 + timedelta(seconds=9))

    assert await st.put(outcome("pending", 3, 12))  # a new revision waits afresh
    assert (await stored(st))["since"] == T0 + timedelta(seconds=12)
    assert not await st.put(outcome("held", 2, 20))  # revision 2's news come too late
    assert (await stored(st))["revision"] == 3


async def test_outcomes_of_one_tool_at_once_keep_the_newest(store: tuple[ToolStateStore, CommandLog]) -> None:
    """The queue's per-key order makes this rare (a redelivery beside its successor): whatever
    the interleaving, the newest wins and exactly one document remains."""
    st, _ = store
    outcomes = [outcome("applied" if n % 2 else "pending", 1 + n // 4, n) for n in range(12)]
    await asyncio.gather(*(st.put(o) for o in reversed(outcomes)))
    doc = await stored(st)
    assert (doc["revision"], doc["at"]) == (outcomes[-1].revision, outcomes[-1].at)
