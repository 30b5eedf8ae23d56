"""The connections every service opens: RabbitMQ (topology + publisher) and MongoDB.

Built in ``build()``, opened by the runtime's first start hook, closed by its last cleanup, and
reported through ``/readyz``. Services never open a second connection of either kind.
"""

from __future__ import annotations

import asyncio
import logging
import time

from pymongo import AsyncMongoClient
from pymongo.asynchronous.database import AsyncDatabase

from shared.amqp import AmqpConnection, Publisher, Topology, declare_topology
from shared.amqp.consumer import ConsumerMetrics
from shared.health import Health
from shared.lifecycle import Runtime
from shared.mongo import Document, database, make_client, ping
from shared.settings import CommonSettings

log = logging.getLogger(__name__)


class Infra:
    def __init__(
        self, settings: CommonSettings, *, name: str, health: Health, topology: Topology | None = None
    ) -> None:
        self.settings = settings
        self.name = name
        self.health = health
        self.topology = topology or Topology()
        self.amqp = AmqpConnection(
            settings.amqp_url.get_secret_value(), name=name, connect_timeout=settings.connect_timeout_s
        )
        self.publisher = Publisher(self.amqp, timeout=settings.publish_timeout_s)
        self.mongo: AsyncMongoClient[Document] = make_client(
            settings.mongodb_url.get_secret_value(), timeout_s=settings.connect_timeout_s
        )
        self.db: AsyncDatabase[Document] = database(self.mongo)
        self.consumer_metrics = ConsumerMetrics(health.registry)
        health.add_readiness("rabbitmq", self.amqp.readiness)
        health.add_readiness("mongodb", self._mongo_ready)

    async def _mongo_ready(self) -> tuple[bool, str]:
        return await ping(self.mongo)

    async def open(self) -> None:
        await self._wait_for_mongo()
        await self.amqp.connect()
        channel = await self.amqp.channel()
        try:
            await declare_topology(channel, self.topology)
        finally:
            await channel.close()
        await self.publisher.start()

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

    async def close(self) -> None:
        await self.amqp.close()
        await self.mongo.close()

    def attach(self, runtime: Runtime) -> None:
        """Open first, close last."""
        runtime.on_startup(self.open)
        runtime.on_cleanup(self.close)
