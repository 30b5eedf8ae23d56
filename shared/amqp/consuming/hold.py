"""The hold limit: no delivery waits unacked long enough for the broker to close the channel.

RabbitMQ closes a channel whose delivery stays unacked past its ``consumer_timeout`` (30 min by
default), returning every message with one delivery counted towards ``x-delivery-limit``. So once
the oldest waiting message (held for an outage or queued in a lane, never one whose handler runs)
has waited ``limit_s``, every waiting message is put back at the tail of its queue, in delivery
order, as a persistent copy (headers and ``x-death`` kept: no attempt spent, no delivery counted)
and the original is acked; its lane entry leaves as :attr:`Skip.REQUEUED`. The copies come back at
once and wait again. An outage of any length thus closes no channel.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

from shared.amqp.consuming.lanes import Entry, Lanes, Skip
from shared.amqp.consuming.metrics import ConsumerMetrics
from shared.amqp.messages import persistent_copy
from shared.amqp.publisher import Publisher, PublishError

log = logging.getLogger(__name__)


class HoldLimit:
    """The watchdog of one consumer's lanes."""

    def __init__(
        self,
        queue: str,
        lanes: Lanes,
        publisher: Publisher,
        *,
        metrics: ConsumerMetrics,
        limit_s: float,
        dependency: Callable[[], str | None] = lambda: None,
    ) -> None:
        self._queue = queue
        self._lanes = lanes
        self._publisher = publisher
        self._metrics = metrics
        self.limit_s = limit_s
        self._dependency = dependency

    async def watch(self) -> None:
        """Put waiting messages back in the queue before the broker's consumer timeout would."""
        loop = asyncio.get_running_loop()
        interval = max(0.1, min(5.0, self.limit_s / 4))
        while True:
            await asyncio.sleep(interval)
            waiting = self._lanes.waiting()
            if waiting and loop.time() - waiting[0].delivered_at >= self.limit_s:
                await self.requeue(waiting)

    async def requeue(self, entries: list[Entry]) -> None:
        """Copies to the queue's tail in delivery order, then ack the originals (a copy keeps the
        headers, ``x-death`` included: no attempt spent, no delivery counted by the broker)."""
        for entry in entries:
            entry.requeuing = True
        returned = 0
        try:
            for entry in entries:
                returned += not await self._put_back(entry)
                entry.requeued = True
                entry.wake.set()
                self._metrics.outcomes.labels(self._queue, Skip.REQUEUED.value).inc()
        finally:
            for entry in entries:
                if not entry.requeued:  # interrupted (shutdown): they stay as they were
                    entry.requeuing = False
                    entry.wake.set()
        log.warning(
            "messages waited for the hold limit: put back in the queue",
            extra={
                "queue": self._queue,
                "count": len(entries),
                "returned": returned,
                "hold_limit_s": self.limit_s,
                "dependency": self._dependency(),
            },
        )

    async def _put_back(self, entry: Entry) -> bool:
        """A copy at the queue's tail and the original acked (True), or the original returned."""
        try:
            await self._publisher.publish_message(
                persistent_copy(entry.message, {}), self._queue, exchange=""
            )
        except PublishError:
            # Publishing is down: return it instead (the broker counts one delivery).
            with contextlib.suppress(Exception):
                await entry.message.nack(requeue=True)
            return False
        with contextlib.suppress(Exception):  # channel gone: the broker redelivers it too
            await entry.message.ack()
        return True
