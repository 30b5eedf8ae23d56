"""``kotc_queue_messages{queue}``: messages waiting in every queue of the topology, for alerts.

Consumers know what they handled, not what waits: a dead letter sitting in ``<queue>.dead`` or a
growing backlog is only visible on the queues themselves. Each service polls them with a passive
declare (exact counts, cheap) every ``interval_s`` on a channel of its own connection; every service
reports the same figures, so dashboards and alerts take ``max by (queue)``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from prometheus_client import CollectorRegistry, Gauge

from shared.amqp import AmqpConnection, Topology

log = logging.getLogger(__name__)


def topology_queues(topology: Topology) -> list[str]:
    delays = sorted(set(topology.retry_delays_s))
    return [n for q in topology.queues for n in (q, *(f"{q}.retry.{d}s" for d in delays), f"{q}.dead")]


class QueueDepths:
    def __init__(self, connection: AmqpConnection, topology: Topology, registry: CollectorRegistry) -> None:
        self._connection = connection
        self._names = topology_queues(topology)
        self.gauge = Gauge(
            "kotc_queue_messages",
            "Messages ready in each queue of the topology (consuming, retry and dead-letter queues)",
            ["queue"],
            registry=registry,
        )

    async def poll(self) -> None:
        channel = await self._connection.channel()
        try:
            for name in self._names:
                queue = await channel.declare_queue(name, passive=True)
                self.gauge.labels(name).set(queue.declaration_result.message_count or 0)
        finally:
            if not channel.is_closed:  # a passive declare of a missing queue closed it already
                with contextlib.suppress(Exception):
                    async with asyncio.timeout(2.0):
                        await channel.close()

    async def run(self, interval_s: float = 15.0) -> None:
        task = asyncio.current_task()
        while True:
            try:
                # Bounded: a poll stuck on a broken channel must neither stall the gauge nor the stop.
                async with asyncio.timeout(max(interval_s, 5.0)):
                    await self.poll()
            except Exception as exc:  # metrics only: never let a poll end the task
                log.debug("queue depths not polled: %s", exc)  # readiness reports RabbitMQ itself
            if task is not None and task.cancelling():
                # The stop's cancel landed inside aio-pika, which turned it into a channel error (or
                # swallowed it): honour it, or the stop waits the whole shutdown deadline (CI, 25 s).
                raise asyncio.CancelledError
            await asyncio.sleep(interval_s)
