"""broker-api through a real RabbitMQ outage (a private node, stopped and started again).

While RabbitMQ is down the API keeps accepting changes and answers promptly (well within the
publish timeout) while /readyz reports not-ready; the events it committed meanwhile reach the bus,
in order, once the broker is back.
"""

from __future__ import annotations

import asyncio
import time
import uuid

import aio_pika
import aiohttp
import aiormq

from shared.events import CloudEvent, ServiceEventData
from tests.helpers import wait_until
from tests.integration.test_broker_api import KB, PROVISION, Client, make_settings, running
from tests.rabbit_node import RabbitNode


async def test_api_keeps_working_during_an_outage_and_events_follow(
    mongodb_url: str, private_rabbit: RabbitNode
) -> None:
    queue_name = f"test-outage-{uuid.uuid4().hex[:8]}"
    amqp_url = private_rabbit.fresh_vhost()
    conn = await aio_pika.connect_robust(amqp_url)
    settings = make_settings(mongodb_url, amqp_url, publish_timeout_s=30)
    async with running(settings) as rt, aiohttp.ClientSession() as session:
        channel = await conn.channel()
        exchange = await channel.get_exchange("kabanero-otc.events")
        queue = await channel.declare_queue(queue_name, durable=True)  # survives the restart
        await queue.bind(exchange, "service.#")
        c = Client(session, rt.url)
        sid = f"outage-{uuid.uuid4().hex[:6]}"
        assert (await c.call("PUT", f"{KB}/service_instances/{sid}", PROVISION))[0] == 200

        await asyncio.to_thread(private_rabbit.stop_app)
        try:

            async def not_ready() -> bool:
                async with session.get(f"{rt.url}/readyz") as resp:
                    return resp.status == 503 and "rabbitmq" in (await resp.json())["checks"]

            await wait_until(not_ready, timeout=15, what="/readyz to report RabbitMQ down")
            started = time.monotonic()
            status, _ = await c.call(
                "PUT", f"{KB}/service_instances/{sid}/toolchains/t1", {"toolchain_credentials": "c"}
            )
            took = time.monotonic() - started
            assert status == 204
            assert took < settings.publish_timeout_s / 2, f"bind waited {took:.1f}s for a broker that is down"
        finally:
            await asyncio.to_thread(private_rabbit.start_app)

        received: list[CloudEvent] = []

        async def both_events() -> bool:
            try:
                msg = await queue.get(no_ack=True, fail=False)
            except (aio_pika.exceptions.AMQPError, aiormq.exceptions.AMQPError, RuntimeError):  # reconnecting
                return False
            if msg is not None:
                received.append(CloudEvent.model_validate_json(msg.body))
            return len(received) >= 2

        await wait_until(both_events, timeout=40, what="the provisioned and bound events after recovery")
        got = [(e.routing_key, ServiceEventData.model_validate(e.data).revision) for e in received]
        assert got == [("service.kabanero.provisioned", 1), ("service.kabanero.bound", 2)]
        await queue.delete(if_unused=False, if_empty=False)
    await conn.close()
