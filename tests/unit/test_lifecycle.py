"""Runtime and Supervisor: parts entered in order and exited in reverse, only what started is
closed, one shutdown deadline, vital tasks fatal, SIGTERM exits cleanly."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager

import pytest

from shared.lifecycle import Runtime, serve, step


def _part(
    calls: list[str], name: str, *, fail: bool = False, hang_on_close: bool = False
) -> Callable[[], AbstractAsyncContextManager[None]]:
    @contextlib.asynccontextmanager
    async def part() -> AsyncIterator[None]:
        calls.append(f"start {name}")
        if fail:
            raise ConnectionError(f"{name} down")
        try:
            yield
        finally:
            calls.append(f"stop {name}")
            if hang_on_close:
                await asyncio.Event().wait()

    return part


async def test_parts_start_in_order_and_close_in_reverse() -> None:
    calls: list[str] = []
    rt = Runtime("t", shutdown_timeout=1)
    for name in ("a", "b", "c"):
        rt.add(name, _part(calls, name))
    async with rt:
        assert calls == ["start a", "start b", "start c"]
    assert calls == ["start a", "start b", "start c", "stop c", "stop b", "stop a"]


async def test_failed_start_closes_only_the_parts_that_started() -> None:
    calls: list[str] = []
    rt = Runtime("t", shutdown_timeout=1)
    rt.add("a", _part(calls, "a"))
    rt.add("b", _part(calls, "b", fail=True))
    rt.add("c", _part(calls, "c"))
    with pytest.raises(ConnectionError, match="b down"):
        await rt.start()
    assert calls == ["start a", "start b", "stop a"]
    await rt.stop()  # nothing left to close: no second "stop a"
    assert calls == ["start a", "start b", "stop a"]


async def test_one_deadline_for_the_whole_shutdown() -> None:
    """Two parts that never finish closing: stop() still ends by the one deadline, and the part
    before them gets its turn."""
    calls: list[str] = []
    rt = Runtime("t", shutdown_timeout=0.3)
    rt.add("first", _part(calls, "first"))
    rt.add("hangs-1", _part(calls, "hangs-1", hang_on_close=True))
    rt.add("hangs-2", _part(calls, "hangs-2", hang_on_close=True))
    await rt.start()
    started = time.monotonic()
    await rt.stop()
    took = time.monotonic() - started
    assert calls[-3:] == ["stop hangs-2", "stop hangs-1", "stop first"]
    assert took < 0.3 + 2.0, f"stop() took {took:.1f}s with a 0.3s deadline"


async def test_parts_after_an_overrunning_one_still_get_time_to_close() -> None:
    """A consumer that never drains uses up its share, not the MongoDB client's."""
    calls: list[str] = []

    @contextlib.asynccontextmanager
    async def client() -> AsyncIterator[None]:
        yield
        await asyncio.sleep(0.02)  # closing sockets takes a moment
        calls.append("client closed")

    rt = Runtime("t", shutdown_timeout=1.0)
    rt.add("client", client)
    rt.add("consumer", _part(calls, "consumer", hang_on_close=True))
    await rt.start()
    await rt.stop()
    assert calls == ["start consumer", "stop consumer", "client closed"]


async def test_a_part_that_fails_to_close_does_not_keep_the_others_open() -> None:
    calls: list[str] = []

    @contextlib.asynccontextmanager
    async def broken() -> AsyncIterator[None]:
        yield
        raise RuntimeError("close failed")

    rt = Runtime("t", shutdown_timeout=1)
    rt.add("a", _part(calls, "a"))
    rt.add("broken", broken)
    async with rt:
        pass
    assert calls == ["start a", "stop a"]


async def test_step_runs_once_at_its_turn() -> None:
    calls: list[str] = []

    async def indexes() -> None:
        calls.append("indexes")

    rt = Runtime("t", shutdown_timeout=1)
    rt.add("a", _part(calls, "a"))
    rt.add("indexes", lambda: step(indexes))
    async with rt:
        pass
    assert calls == ["start a", "indexes", "stop a"]


async def test_tasks_are_parts_cancelled_before_what_started_before_them() -> None:
    calls: list[str] = []

    async def worker() -> None:
        try:
            await asyncio.Event().wait()
        finally:
            calls.append("worker cancelled")

    rt = Runtime("t", shutdown_timeout=1)
    rt.add("connection", _part(calls, "connection"))
    rt.add_task("worker", worker)
    async with rt:
        await asyncio.sleep(0)
        assert rt.supervisor.find("worker") is not None
    assert calls == ["start connection", "worker cancelled", "stop connection"]
    assert not rt.supervisor.failed.is_set()


async def test_vital_task_death_is_fatal_and_exit_code_1() -> None:
    rt = Runtime("t", shutdown_timeout=1)
    rt.add_task("worker", _die)
    assert await asyncio.wait_for(serve(rt), 5) == 1
    assert rt.supervisor.failure is not None
    assert "worker" in rt.supervisor.failure


async def _die() -> None:
    await asyncio.sleep(0.01)
    raise RuntimeError("watch loop crashed")


async def test_vital_task_that_returns_is_fatal_too() -> None:
    async def returns() -> None:
        await asyncio.sleep(0)

    rt = Runtime("t", shutdown_timeout=1)
    rt.add_task("worker", returns)
    assert await asyncio.wait_for(serve(rt), 5) == 1
    assert rt.supervisor.failure == "t:worker ended"


async def test_non_vital_task_death_is_not_fatal() -> None:
    rt = Runtime("t", shutdown_timeout=1)
    async with rt:
        task = rt.supervisor.spawn("optional", _die(), vital=False)
        await asyncio.gather(task, return_exceptions=True)
        assert not rt.supervisor.failed.is_set()


async def test_sigterm_stops_tasks_and_exits_0() -> None:
    cancelled = asyncio.Event()

    async def forever() -> None:
        try:
            await asyncio.Event().wait()
        finally:
            cancelled.set()

    rt = Runtime("t", shutdown_timeout=1)
    rt.add_task("forever", forever)
    rt.add("signal", lambda: step(_sigterm_soon))
    assert await asyncio.wait_for(serve(rt), 5) == 0
    assert cancelled.is_set()


async def _sigterm_soon() -> None:
    asyncio.get_running_loop().call_later(0.05, os.kill, os.getpid(), signal.SIGTERM)


async def test_sigterm_during_start_abandons_it_and_closes_what_started() -> None:
    calls: list[str] = []

    @contextlib.asynccontextmanager
    async def slow() -> AsyncIterator[None]:
        calls.append("start slow")
        await _sigterm_soon()
        await asyncio.Event().wait()  # e.g. a broker that never answers the first connect
        yield

    rt = Runtime("t", shutdown_timeout=1)
    rt.add("a", _part(calls, "a"))
    rt.add("slow", slow)
    assert await asyncio.wait_for(serve(rt), 5) == 0
    assert calls == ["start a", "start slow", "stop a"]


async def test_tasks_added_together_stop_together(caplog: pytest.LogCaptureFixture) -> None:
    """Each task, once cancelled, drains until the other one is cancelled too (as two consumers
    each wait for their own running handlers): only stopped together can both finish."""
    calls: list[str] = []
    draining = {"a": asyncio.Event(), "b": asyncio.Event()}
    started = {"a": asyncio.Event(), "b": asyncio.Event()}

    async def consumer(me: str, other: str) -> None:
        started[me].set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            draining[me].set()
            calls.append(f"draining {me}")
            await draining[other].wait()
            calls.append(f"drained {me}")
            raise

    rt = Runtime("t", shutdown_timeout=1)
    rt.add_tasks({"a": lambda: consumer("a", "b"), "b": lambda: consumer("b", "a")})
    async with rt:
        await asyncio.gather(started["a"].wait(), started["b"].wait())
        assert [t.get_name() for t in rt.supervisor.tasks] == ["t:a", "t:b"]
    assert sorted(calls[:2]) == ["draining a", "draining b"]
    assert sorted(calls[2:]) == ["drained a", "drained b"]
    assert "did not close within the shutdown deadline" not in caplog.text
