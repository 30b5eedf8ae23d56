"""Short GC pauses in an emulator holding a large state (10,000 tools, objects or documents in
``make bench``): what survives is frozen out of the cyclic collector's walks every ``interval_s``
(the services do the same, ``shared/heap.py``; an emulator's life is a test run, so it never
collects the frozen set again). Otherwise the emulators' own full collections, up to 0.6 s each at
10,000 triggers, showed as the services' latency."""

from __future__ import annotations

import asyncio
import contextlib
import gc
from collections.abc import AsyncIterator


@contextlib.asynccontextmanager
async def settling(interval_s: float = 5.0) -> AsyncIterator[None]:
    async def loop() -> None:
        while True:
            await asyncio.sleep(interval_s)
            gc.collect(1)
            gc.freeze()

    task = asyncio.create_task(loop(), name="heap-settle")
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
