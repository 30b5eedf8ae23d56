"""Runtime and Supervisor: ordered start/stop, vital tasks fatal, SIGTERM exits cleanly."""

from __future__ import annotations

import asyncio
import functools
import os
import signal

from shared.lifecycle import Runtime, serve


async def test_start_in_order_cleanup_in_reverse() -> None:
    calls: list[str] = []
    rt = Runtime("t", shutdown_timeout=1)
    for name in ("a", "b"):
        rt.on_startup(functools.partial(_record, calls, f"start {name}"))
        rt.on_cleanup(functools.partial(_record, calls, f"stop {name}"))
    async with rt:
        pass
    assert calls == ["start a", "start b", "stop b", "stop a"]


async def _record(calls: list[str], what: str) -> None:
    calls.append(what)


async def test_failed_startup_runs_cleanups_of_started_parts() -> None:
    calls: list[str] = []
    rt = Runtime("t", shutdown_timeout=1)
    rt.on_startup(lambda: _record(calls, "start a"))
    rt.on_cleanup(lambda: _record(calls, "stop a"))

    async def boom() -> None:
        raise ConnectionError("mongo down")

    rt.on_startup(boom)
    try:
        await rt.start()
    except ConnectionError:
        pass
    else:
        raise AssertionError("start must fail")
    assert calls == ["start a", "stop a"]


async def test_vital_task_death_is_fatal_and_exit_code_1() -> None:
    rt = Runtime("t", shutdown_timeout=1)

    async def start() -> None:
        rt.supervisor.spawn("worker", _die())

    rt.on_startup(start)
    assert await asyncio.wait_for(serve(rt), 5) == 1
    assert rt.supervisor.failure is not None
    assert "worker" in rt.supervisor.failure


async def _die() -> None:
    await asyncio.sleep(0.01)
    raise RuntimeError("watch loop crashed")


async def test_non_vital_task_death_is_not_fatal() -> None:
    rt = Runtime("t", shutdown_timeout=1)
    async with rt:
        task = rt.supervisor.spawn("optional", _die(), vital=False)
        await asyncio.gather(task, return_exceptions=True)
        assert not rt.supervisor.failed.is_set()


async def test_sigterm_stops_tasks_and_exits_0() -> None:
    rt = Runtime("t", shutdown_timeout=1)
    cancelled = asyncio.Event()

    async def forever() -> None:
        try:
            await asyncio.Event().wait()
        finally:
            cancelled.set()

    async def start() -> None:
        rt.supervisor.spawn("forever", forever())
        asyncio.get_running_loop().call_later(0.05, os.kill, os.getpid(), signal.SIGTERM)

    rt.on_startup(start)
    assert await asyncio.wait_for(serve(rt), 5) == 0
    assert cancelled.is_set()
