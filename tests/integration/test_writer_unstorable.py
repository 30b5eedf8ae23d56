"""otc-writer and a trigger key it can never store (a NUL in it): dead-lettered at once with the
reason, the other tools of the message applied, no retry loop. Against the session's MongoDB (a
real server when ``MONGODB_URL`` is set) and against the MongoDB emulator on a SQLite file, the
store the stack runs on, where the same key had left the writer retrying its tool forever."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from emulators.mongo.server import running
from services.otc_writer.app import EVENTS_QUEUE
from services.otc_writer.desired import TRIGGER_PURPOSE, trigger_tool_name
from shared.amqp.consumer import ATTEMPT_HEADER, ERROR_HEADER, REASON_HEADER
from tests.integration.writer_support import (
    WriterEnv,
    dead_letters,
    service_event,
    snapshot_event,
    trigger,
    trigger_event,
)


@pytest.fixture(name="mongodb_url", params=["session", "sqlite-file"])
async def stores(request: pytest.FixtureRequest, mongodb_url: str, tmp_path: Path) -> AsyncIterator[str]:
    """The conftest's ``mongodb_url`` (the session's store), then a SQLite-file emulator."""
    if request.param == "session":
        yield mongodb_url
        return
    async with running(path=str(tmp_path / "state.db")) as url:
        yield url


async def test_a_key_with_a_nul_dead_letters_at_once_with_its_reason(env: WriterEnv) -> None:
    tc = env.otc.seed_toolchain(name="nul")
    good, bad = trigger("good"), trigger("bad\u0000name")
    async with env.writer() as w:
        await env.publish(service_event("bound", revision=1, toolchains=[tc], toolchain_id=tc))
        await env.wait_handled(w, 1)
        await env.publish(snapshot_event([good, bad], revision=1))
        (snap,) = await dead_letters(env, EVENTS_QUEUE, wait=True)
        assert env.tool_names(tc) == [trigger_tool_name(good.key)]  # the other tool is applied

        await env.publish(trigger_event(bad, "updated"))
        (event,) = await dead_letters(env, EVENTS_QUEUE, wait=True)
        assert await w.ledger.get(TRIGGER_PURPOSE, bad.key.id, tc) is None
    for dead in (snap, event):
        headers = dead.headers or {}
        assert headers[REASON_HEADER] == "permanent error"
        assert "contains a NUL character" in str(headers[ERROR_HEADER])
        assert headers[ATTEMPT_HEADER] == 1  # never retried
    assert env.tool_names(tc) == [trigger_tool_name(good.key)]
