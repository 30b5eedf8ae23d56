"""Exchanges, queues and bindings of ARCHITECTURE §4, declared idempotently by every service.

Per consuming queue ``Q`` (a quorum queue):
- ``Q.dead`` receives dead letters (``kabanero-otc.dead``, routing key ``Q``), both the ones the
  consumer publishes with a reason header and the ones the broker moves past ``x-delivery-limit``
  (a message that crashes its consumer repeatedly).
- ``Q.retry.<N>s`` are delay queues: a message published there expires after N seconds and is
  dead-lettered back to ``Q`` through the default exchange. This gives bounded retries with backoff
  and no hot requeue loop.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import aio_pika
from aio_pika.abc import AbstractChannel

EXCHANGE = "kabanero-otc.events"
DEAD_EXCHANGE = "kabanero-otc.dead"

QUEUES: dict[str, tuple[str, ...]] = {
    "otc-writer.events": ("service.kabanero-events.*", "kabanero.trigger.*", "kabanero.snapshot"),
    "otc-writer.commands": ("otc.tool.*",),
    "github-linker.events": ("service.kabanero.*", "kabanero.instance.*", "kabanero.snapshot"),
}


@dataclass(frozen=True)
class Topology:
    """Tunables of the declared topology; the names above are contracts."""

    delivery_limit: int = 10
    retry_delays_s: tuple[int, ...] = (1, 5, 30)
    queues: dict[str, tuple[str, ...]] = field(default_factory=lambda: dict(QUEUES))

    def retry_queue(self, queue: str, attempt: int) -> tuple[str, int]:
        """Delay queue for the given failed attempt (1-based); delays grow then stay at the cap."""
        delay = self.retry_delays_s[min(attempt, len(self.retry_delays_s)) - 1]
        return f"{queue}.retry.{delay}s", delay


async def declare_topology(channel: AbstractChannel, topology: Topology | None = None) -> None:
    topo = topology or Topology()
    exchange = await channel.declare_exchange(EXCHANGE, aio_pika.ExchangeType.TOPIC, durable=True)
    dead = await channel.declare_exchange(DEAD_EXCHANGE, aio_pika.ExchangeType.DIRECT, durable=True)
    for name, keys in topo.queues.items():
        queue = await channel.declare_queue(
            name,
            durable=True,
            arguments={
                "x-queue-type": "quorum",
                "x-dead-letter-exchange": DEAD_EXCHANGE,
                "x-dead-letter-routing-key": name,
                "x-delivery-limit": topo.delivery_limit,
            },
        )
        for key in keys:
            await queue.bind(exchange, routing_key=key)
        dead_queue = await channel.declare_queue(
            f"{name}.dead", durable=True, arguments={"x-queue-type": "quorum"}
        )
        await dead_queue.bind(dead, routing_key=name)
        for delay in sorted(set(topo.retry_delays_s)):
            await channel.declare_queue(
                f"{name}.retry.{delay}s",
                durable=True,
                arguments={
                    "x-queue-type": "quorum",
                    "x-message-ttl": delay * 1000,
                    "x-dead-letter-exchange": "",
                    "x-dead-letter-routing-key": name,
                },
            )
