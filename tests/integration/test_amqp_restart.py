"""Broker outage on a private RabbitMQ node: readiness drops, publishing fails loudly, both recover."""

from __future__ import annotations

import asyncio

from prometheus_client import CollectorRegistry

from shared.amqp import AmqpConnection, Consumer, Publisher, PublishError, Topology, declare_topology
from shared.amqp.consumer import ConsumerMetrics
from shared.events import CloudEvent, RoutingKeys, ServiceEventData, ServiceParameters
from tests.helpers import wait_until
from tests.rabbit_node import RabbitNode


def _event(revision: int) -> CloudEvent:
    data = ServiceEventData(
        kind="kabanero",
        instance_id="sid",
        service_id="kabanero",
        parameters=ServiceParameters(cluster="default", namespace="kabanero"),
        revision=revision,
    )
    return CloudEvent.for_data(RoutingKeys.service("kabanero", "updated"), data, source="test")


async def test_outage_and_recovery(private_rabbit: RabbitNode) -> None:
    conn = AmqpConnection(private_rabbit.fresh_vhost(), name="restart-test", connect_timeout=10)
    await conn.connect()
    channel = await conn.channel()
    await declare_topology(channel, Topology(retry_delays_s=(1,)))
    await channel.close()
    publisher = Publisher(conn, timeout=2)
    await publisher.start()
    seen: list[int] = []

    async def handler(event: CloudEvent) -> None:
        seen.append(ServiceEventData.model_validate(event.data).revision)

    consumer = Consumer(
        conn, publisher, "github-linker.events", handler, metrics=ConsumerMetrics(CollectorRegistry())
    )
    task = asyncio.create_task(consumer.run())
    try:
        await publisher.publish(_event(1))
        await wait_until(lambda: seen == [1], what="first delivery")
        assert conn.ready

        await asyncio.to_thread(private_rabbit.stop_app)
        await wait_until(lambda: not conn.ready, what="readiness to drop")
        try:
            await publisher.publish(_event(2))
        except PublishError:
            pass
        else:
            raise AssertionError("publish during an outage must fail, not pretend")

        await asyncio.to_thread(private_rabbit.start_app)
        await wait_until(lambda: conn.ready, timeout=30, what="reconnect")

        async def publish_again() -> bool:
            try:
                await publisher.publish(_event(3))
            except PublishError:
                return False
            return True

        await wait_until(publish_again, timeout=30, what="publisher recovery")
        await wait_until(lambda: 3 in seen, timeout=30, what="consumer recovery")
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await conn.close()
