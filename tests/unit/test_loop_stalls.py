"""The event-loop hold monitor every service runs (shared/loop_stalls.py), and how the stack
benchmark names the process that held its loop over the latency phase."""

from __future__ import annotations

import asyncio
import time

from prometheus_client import CollectorRegistry, generate_latest

from scripts.stack import held_between
from shared.loop_stalls import LoopStalls


def _value(registry: CollectorRegistry, name: str, **labels: str) -> float | None:
    return registry.get_sample_value(name, labels or None)


def test_every_wake_is_a_histogram_sample_and_the_longest_hold_a_gauge() -> None:
    registry = CollectorRegistry()
    stalls = LoopStalls(registry=registry)
    for late in (0.001, 0.002, 0.62, 0.01):
        stalls.record(late)
    assert _value(registry, "kotc_event_loop_held_seconds_count") == 4
    assert _value(registry, "kotc_event_loop_held_seconds_bucket", le="0.5") == 3
    assert _value(registry, "kotc_event_loop_held_seconds_bucket", le="0.75") == 4
    assert _value(registry, "kotc_event_loop_held_max_seconds") == 0.62
    assert b"kotc_event_loop_held_seconds_bucket" in generate_latest(registry)


async def test_a_blocking_call_on_the_loop_is_measured() -> None:
    registry = CollectorRegistry()
    stalls = LoopStalls(interval=0.01, registry=registry)
    task = asyncio.create_task(stalls.run())
    try:
        await asyncio.sleep(0.05)
        time.sleep(0.3)  # noqa: ASYNC251 - holds the loop, as CPU work without an await does
        await asyncio.sleep(0.05)
    finally:
        task.cancel()
    assert stalls.longest >= 0.25
    assert (_value(registry, "kotc_event_loop_held_seconds_bucket", le="0.2") or 0) < (
        _value(registry, "kotc_event_loop_held_seconds_count") or 0
    )


def test_the_bench_names_the_bucket_of_each_services_longest_hold_in_the_phase() -> None:
    inf = float("inf")
    before = {"otc-writer": {0.1: 50.0, 0.5: 51.0, 1.0: 52.0, inf: 52.0}}  # a 0.7 s hold before
    after = {
        "otc-writer": {0.1: 350.0, 0.5: 351.0, 1.0: 352.0, inf: 352.0},  # 300 short wakes since
        "kabanero-watcher": {0.1: 299.0, 0.5: 299.0, 1.0: 300.0, inf: 300.0},  # one 0.5-1 s hold
        "github-linker": {0.1: 10.0, 0.5: 10.0, 1.0: 10.0, inf: 11.0},
    }
    assert held_between(before, after) == {
        "otc-writer": "0-0.1",
        "kabanero-watcher": "0.5-1",
        "github-linker": ">1",
    }
