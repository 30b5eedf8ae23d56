"""The queue-depth poller stops at once when cancelled, even when aio-pika turns the cancel into an
error of its own (CI once waited the whole 25 s shutdown deadline on it)."""

from __future__ import annotations

import asyncio
from typing import Any, cast

from prometheus_client import CollectorRegistry

from shared.amqp import AmqpConnection, Topology
from shared.queue_depths import QueueDepths


class _Channel:
    is_closed = False

    async def declare_queue(self, name: str, *, passive: bool) -> Any:
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            raise RuntimeError("channel closed while declaring") from None  # as aiormq can
        raise AssertionError("unreachable")

    async def close(self) -> None:
        return None


class _Connection:
    def __init__(self) -> None:
        self.declaring = asyncio.Event()

    async def channel(self) -> _Channel:
        self.declaring.set()
        return _Channel()


async def test_a_cancel_turned_into_an_error_still_stops_the_poller() -> None:
    connection = _Connection()
    topology = Topology(queues={"q": ("k",)})
    depths = QueueDepths(cast(AmqpConnection, connection), topology, CollectorRegistry())
    task = asyncio.create_task(depths.run(interval_s=30.0))
    await connection.declaring.wait()
    await asyncio.sleep(0)
    task.cancel()
    done, _ = await asyncio.wait([task], timeout=2.0)
    assert task in done and task.cancelled()
