"""GroupCommit: what arrives during a flush goes in the next one, one request per key and batch,
a failed flush fails its own batch only, a result nobody waits for any more is undone."""

from __future__ import annotations

import asyncio

import pytest

from services.otc_writer.batching import GroupCommit


class Recorder:
    def __init__(self, fail_on: str | None = None) -> None:
        self.batches: list[list[str]] = []
        self.gate = asyncio.Event()
        self.gate.set()
        self.fail_on = fail_on

    async def flush(self, requests: list[str]) -> list[str | BaseException]:
        self.batches.append(list(requests))
        await self.gate.wait()
        if self.fail_on in requests:
            raise RuntimeError("store down")
        return [r.upper() for r in requests]


def _key(request: str) -> str:
    return request.split(":")[0]


async def test_requests_made_during_a_flush_share_the_next_one_a_key_once_per_batch() -> None:
    rec = Recorder()
    group: GroupCommit[str, str] = GroupCommit(rec.flush, key_of=_key, max_batch=10, name="t")
    rec.gate.clear()
    first = asyncio.ensure_future(group.submit("a:1"))
    await asyncio.sleep(0.01)  # in flight now
    later = [asyncio.ensure_future(group.submit(r)) for r in ("b:1", "a:2", "c:1", "a:3")]
    await asyncio.sleep(0.01)
    rec.gate.set()
    assert await first == "A:1"
    assert await asyncio.gather(*later) == ["B:1", "A:2", "C:1", "A:3"]
    # a's later requests wait for a batch of their own, in the order they came
    assert rec.batches == [["a:1"], ["b:1", "a:2", "c:1"], ["a:3"]]
    assert group.batches == 3 and group.largest == 3


async def test_a_failed_flush_fails_its_batch_only() -> None:
    rec = Recorder(fail_on="x:1")
    group: GroupCommit[str, str] = GroupCommit(rec.flush, key_of=_key, max_batch=2, name="t")
    results = await asyncio.gather(*(group.submit(r) for r in ("x:1", "y:1", "z:1")), return_exceptions=True)
    assert [type(r) for r in results[:2]] == [RuntimeError, RuntimeError]
    assert results[2] == "Z:1"


async def test_a_result_whose_requester_was_cancelled_is_undone() -> None:
    rec = Recorder()
    undone: list[str] = []

    async def undo(result: str) -> None:
        undone.append(result)

    group: GroupCommit[str, str] = GroupCommit(rec.flush, key_of=_key, max_batch=10, name="t", abandoned=undo)
    rec.gate.clear()
    waiting = asyncio.ensure_future(group.submit("a:1"))
    await asyncio.sleep(0.01)
    waiting.cancel()
    rec.gate.set()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    await asyncio.sleep(0.01)
    assert undone == ["A:1"]
