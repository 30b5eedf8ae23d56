"""Short pauses from Python's cyclic garbage collector in a service holding a large, stable heap.

A full (generation 2) collection walks every tracked object. What a service keeps for its whole
life (imported modules, pydantic schemas, the watcher's cluster cache, the writer's projections)
makes those walks long: measured in ``make bench`` at 10,000 triggers, 100-400 ms per full
collection in each service, several per minute under load, and most of the end-to-end p99.

``gc.freeze()`` moves every object alive now to a permanent generation the collector skips; objects
freed by reference counting (almost everything here) are still freed at once. Only garbage *in
reference cycles* among frozen objects would wait, so every ``full_interval_s`` the frozen set is
handed back, collected once, and frozen again: one long pause an hour instead of several a minute.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time

log = logging.getLogger(__name__)


def settle() -> None:
    """Freeze what survived so far (young garbage is collected first, so it is not frozen)."""
    gc.collect(1)
    gc.freeze()


def collect_frozen() -> int:
    """One full collection over the frozen objects too; then freeze again. Returns what it freed."""
    gc.unfreeze()
    freed = gc.collect()
    gc.freeze()
    return freed


async def settle_periodically(interval_s: float, full_interval_s: float) -> None:
    """Freeze every ``interval_s``; collect the frozen set every ``full_interval_s`` (0: never)."""
    last_full = time.monotonic()
    while True:
        await asyncio.sleep(interval_s)
        if full_interval_s and time.monotonic() - last_full >= full_interval_s:
            started = time.perf_counter()
            freed = collect_frozen()
            last_full = time.monotonic()
            log.info(
                "full garbage collection",
                extra={"freed": freed, "ms": round((time.perf_counter() - started) * 1000, 1)},
            )
        else:
            settle()
