"""The connections every service opens: MongoDB, and RabbitMQ (topology + publisher).

Built in ``build()`` (nothing connects yet), opened as the runtime's first two parts, closed as its
last ones, and reported through ``/readyz``. Services never open a second connection of either kind.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import AsyncIterator

from pymongo import AsyncMongoClient
from pymongo.asynchronous.database import AsyncDatabase

from shared import heap
from shared.amqp import AmqpConnection, Publisher, Topology, declare_topology
from shared.amqp.consumer import ConsumerMetrics
from shared.dependencies import MONGODB, RABBITMQ, Probe
from shared.health import VERSION, Health
from shared.lifecycle import Runtime
from shared.loop_stalls import LoopStalls
from shared.mongo import Document, database, make_client, ping
from shared.queue_depths import QueueDepths
from shared.settings import CommonSettings

log = logging.getLogger(__name__)


class Infra:
    def __init__(
        self, settings: CommonSettings, *, name: str, health: Health, topology: Topology | None = None
    ) -> None:
        log.info("%s %s starting", name, VERSION, extra={"service": name, "version": VERSION})
        self.settings = settings
        self.name = name
        self.health = health
        health.identify(name)
        self.topology = topology or Topology()
        self.amqp = AmqpConnection(
            settings.amqp_url.get_secret_value(), name=name, connect_timeout=settings.connect_timeout_s
        )
        self.publisher = Publisher(self.amqp, timeout=settings.publish_timeout_s)
        # PyMongo's client connects lazily, on first use: creating it here opens nothing.
        self.mongo: AsyncMongoClient[Document] = make_client(
            settings.mongodb_url.get_secret_value(), timeout_s=settings.connect_timeout_s
        )
        self.db: AsyncDatabase[Document] = database(self.mongo)
        self.consumer_metrics = ConsumerMetrics(health.registry)
        self.queue_depths = QueueDepths(self.amqp, self.topology, health.registry)
        # How long the event loop was held, on /metrics: a latency tail names the process.
        self.stalls = LoopStalls(registry=health.registry)
        health.add_readiness("rabbitmq", self.amqp.readiness)
        health.add_readiness("mongodb", self._mongo_ready)

    async def _mongo_ready(self) -> tuple[bool, str]:
        return await ping(self.mongo)

    def probes(self) -> dict[str, Probe]:
        """Probes of the shared dependencies, for consumers that hold messages while one is down."""

        async def mongodb() -> bool:
            try:
                return (await asyncio.wait_for(ping(self.mongo), 3.0))[0]
            except TimeoutError:
                return False

        async def rabbitmq() -> bool:
            return self.amqp.ready and self.publisher.ready

        return {MONGODB: mongodb, RABBITMQ: rabbitmq}

    @contextlib.asynccontextmanager
    async def mongodb(self) -> AsyncIterator[AsyncDatabase[Document]]:
        """MongoDB reachable within ``connect_timeout_s`` (or the start fails); the client closed last."""
        try:
            await self._wait_for_mongo()
            yield self.db
        finally:
            await self.mongo.close()

    @contextlib.asynccontextmanager
    async def rabbitmq(self) -> AsyncIterator[Publisher]:
        """The connection (bounded first connect), the topology declared, the publisher's channel."""
        await self.amqp.connect()
        try:
            channel = await self.amqp.channel()
            try:
                await declare_topology(channel, self.topology)
            finally:
                await channel.close()
            await self.publisher.start()
            yield self.publisher
        finally:
            await self.amqp.close()

    async def _wait_for_mongo(self) -> None:
        deadline = time.monotonic() + self.settings.connect_timeout_s
        while True:
            ok, detail = await ping(self.mongo)
            if ok:
                return
            if time.monotonic() > deadline:
                raise ConnectionError(detail)
            log.warning("MongoDB not reachable yet, retrying", extra={"service": self.name})
            await asyncio.sleep(0.5)

    def attach(self, runtime: Runtime) -> None:
        """MongoDB first, RabbitMQ second: they close in the reverse order, after everything else."""
        runtime.add("mongodb", self.mongodb)
        runtime.add("rabbitmq", self.rabbitmq)
        # Metrics only (not vital): the depth of every queue of the topology, for the alert rules.
        runtime.add_task("queue-depths", self.queue_depths.run, vital=False)
        runtime.add_task("loop-stalls", self.stalls.run, vital=False)
        if self.settings.gc_freeze_interval_s:
            runtime.add_task(
                "heap-settle",
                functools.partial(
                    heap.settle_periodically,
                    self.settings.gc_freeze_interval_s,
                    self.settings.gc_full_interval_s,
                ),
            )
