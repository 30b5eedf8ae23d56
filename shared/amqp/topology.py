"""Exchanges, queues and bindings of docs/architecture.md §4, declared idempotently by every service.

Per consuming queue ``Q`` (a quorum queue):
- ``Q.dead`` receives dead letters (``kabanero-otc.dead``, routing key ``Q``), both the ones the
  consumer publishes with a reason header and the ones the broker moves past ``x-delivery-limit``
  (a message that crashes its consumer repeatedly).
  It is bounded (``x-max-length``, default 100,000) with ``x-overflow: drop-head``: when full, the
  oldest dead letter is dropped to keep the newest, and the consumers keep running; the alert on
  ``Q.dead`` depth (deploy/ alert rules, docs/design.md "Faults") fires long before that. A ``.dead``
  queue declared with another limit, or none (by hand), cannot be redeclared with other arguments
  (RabbitMQ answers PRECONDITION_FAILED): it is then used as it is, and a warning names the policy
  that bounds it (``rabbitmqctl set_policy``; a policy applies to existing queues).
- ``Q.retry.<N>s`` are delay queues: a message published there expires after N seconds and is
  dead-lettered back to ``Q`` through the default exchange. This gives bounded retries with backoff
  and no hot requeue loop.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import aio_pika
import aiormq
from aio_pika.abc import AbstractChannel, AbstractQueue

log = logging.getLogger(__name__)

EXCHANGE = "kabanero-otc.events"
DEAD_EXCHANGE = "kabanero-otc.dead"

QUEUES: dict[str, tuple[str, ...]] = {
    "otc-writer.events": (
        "service.kabanero-events.*",
        "kabanero.trigger.*",
        "kabanero.snapshot",
        "service.tekton.*",
        "tekton.card.*",
        "tekton.snapshot",
    ),
    "otc-writer.commands": ("otc.tool.*",),
    "github-linker.events": ("service.kabanero.*", "kabanero.instance.*", "kabanero.snapshot"),
    # The watchers' outcomes of instance commands, for the services' dashboards (broker-api).
    "broker-api.outcomes": ("kabanero.command.outcome",),
    # What the watchers found of each cluster's Tekton installation (the Tekton services' pages).
    "broker-api.tekton": ("tekton.installation.changed",),
    # What the watchers found of each Kabanero instance (version, repositories), for its services' pages.
    "broker-api.instances": ("kabanero.instance.*",),
    # What otc-writer did with each tool, for every service's page (broker-api).
    "broker-api.tools": ("otc.outcome.tool",),
}


def owned_instances_queue(cluster: str) -> str:
    """The queue of the watcher of ``cluster`` for Kabanero services that create their instance
    (``service.kabanero.*``). Declared by broker-api for every allowed cluster as well as by that
    watcher, so no event is unroutable-to-it before the watcher's first start."""
    return f"kabanero-watcher.{cluster}.instances"


def with_owned_instances(clusters: tuple[str, ...] | list[str]) -> dict[str, tuple[str, ...]]:
    """:data:`QUEUES` plus :func:`owned_instances_queue` of each cluster."""
    return {**QUEUES, **{owned_instances_queue(c): ("service.kabanero.*",) for c in clusters}}


@dataclass(frozen=True)
class Topology:
    """Tunables of the declared topology; the names above are contracts."""

    delivery_limit: int = 10
    retry_delays_s: tuple[int, ...] = (1, 5, 30)
    dead_max_length: int = 100_000
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
        dead_queue = await _declare_dead_queue(channel, f"{name}.dead", topo.dead_max_length)
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


DEAD_POLICY = (
    "rabbitmqctl set_policy -p <vhost> --apply-to queues kotc-dead-limit '\\.dead$' "
    '\'{{"max-length":{limit},"overflow":"drop-head"}}\''
)


async def _declare_dead_queue(channel: AbstractChannel, name: str, limit: int) -> AbstractQueue:
    try:
        return await channel.declare_queue(
            name,
            durable=True,
            arguments={"x-queue-type": "quorum", "x-max-length": limit, "x-overflow": "drop-head"},
        )
    except aiormq.exceptions.ChannelPreconditionFailed:
        await channel.reopen()  # the broker closed the channel over the mismatch
        log.warning(
            "%s exists with another length limit, or none; bound it with: %s",
            name,
            DEAD_POLICY.format(limit=limit),
            extra={"queue": name},
        )
        return await channel.declare_queue(name, passive=True)
