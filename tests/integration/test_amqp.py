"""shared.amqp against the real RabbitMQ: topology, confirmed publishing, the consumer's ack policy."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import AsyncIterator

import aio_pika
import pytest
from prometheus_client import CollectorRegistry

from shared.amqp import (
    AmqpConnection,
    Consumer,
    PermanentError,
    Publisher,
    PublishError,
    RetryableError,
    Topology,
    declare_topology,
)
from shared.amqp.consumer import ATTEMPT_HEADER, REASON_HEADER, ConsumerMetrics
from shared.events import CloudEvent, RoutingKeys, ServiceEventData, ServiceParameters
from tests.helpers import EventTap, drain_queue, wait_until

FAST = Topology(retry_delays_s=(1,))


@contextlib.asynccontextmanager
async def consuming(consumer: Consumer) -> AsyncIterator[None]:
    """Run the consumer for the block; cancel it (as shutdown does) afterwards."""
    task = asyncio.create_task(consumer.run())
    try:
        yield
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


def _event(revision: int = 1, instance: str = "sid-1") -> CloudEvent:
    data = ServiceEventData(
        kind="kabanero-events",
        instance_id=instance,
        service_id="kabanero-events",
        parameters=ServiceParameters(cluster="default", namespace="kabanero"),
        revision=revision,
    )
    return CloudEvent.for_data(
        RoutingKeys.service("kabanero-events", "provisioned"), data, source="test", subject=instance
    )


@pytest.fixture
async def amqp(amqp_url: str) -> AsyncIterator[tuple[AmqpConnection, Publisher]]:
    conn = AmqpConnection(amqp_url, name="test", connect_timeout=5)
    await conn.connect()
    channel = await conn.channel()
    await declare_topology(channel, FAST)
    await declare_topology(channel, FAST)  # idempotent
    await channel.close()
    publisher = Publisher(conn, timeout=5)
    await publisher.start()
    yield conn, publisher
    await conn.close()


async def test_publish_is_confirmed_and_readable_as_cloudevent(
    amqp: tuple[AmqpConnection, Publisher], amqp_url: str
) -> None:
    _, publisher = amqp
    async with EventTap(amqp_url, ("service.#",)) as tap:
        event = _event()
        await publisher.publish(event)
        (got,) = await tap.wait_for(1)
        msg = tap.messages[0]
    assert got.id == event.id
    assert got.type == "io.kabanero.otc.service.kabanero-events.provisioned"
    assert msg.message_id == event.id
    assert msg.type == event.type
    assert msg.content_type == "application/cloudevents+json"
    assert msg.delivery_mode == aio_pika.DeliveryMode.PERSISTENT
    assert ServiceEventData.model_validate(got.data).instance_id == "sid-1"


async def test_unroutable_publish_is_an_error(amqp: tuple[AmqpConnection, Publisher]) -> None:
    _, publisher = amqp
    event = CloudEvent.for_data("nobody.listens", _event().model_copy(), source="test")
    with pytest.raises(PublishError):
        await publisher.publish(event)


async def test_first_connect_is_bounded() -> None:
    conn = AmqpConnection("amqp://guest:guest@127.0.0.1:1/", name="t", connect_timeout=1)
    with pytest.raises(ConnectionError, match="unreachable"):
        await conn.connect()
    assert not conn.ready


def _consumer(
    conn: AmqpConnection, publisher: Publisher, handler: object, *, max_attempts: int = 3
) -> Consumer:
    return Consumer(
        conn,
        publisher,
        "otc-writer.events",
        handler,  # type: ignore[arg-type]
        metrics=ConsumerMetrics(CollectorRegistry()),
        topology=FAST,
        max_attempts=max_attempts,
    )


async def test_consumer_acks_after_success(amqp: tuple[AmqpConnection, Publisher], amqp_url: str) -> None:
    conn, publisher = amqp
    seen: list[str] = []

    async def handler(event: CloudEvent) -> None:
        seen.append(event.id)

    consumer = _consumer(conn, publisher, handler)
    async with consuming(consumer):
        await publisher.publish(_event())
        await wait_until(lambda: seen, what="delivery")
    assert await drain_queue(amqp_url, "otc-writer.events") == []


async def test_transient_errors_retry_with_backoff_then_dead_letter(
    amqp: tuple[AmqpConnection, Publisher], amqp_url: str
) -> None:
    conn, publisher = amqp
    attempts: list[float] = []

    async def handler(event: CloudEvent) -> None:
        attempts.append(asyncio.get_running_loop().time())
        raise RetryableError("OTC is down")

    consumer = _consumer(conn, publisher, handler, max_attempts=3)
    async with consuming(consumer):
        await publisher.publish(_event())
        await wait_until(lambda: len(attempts) >= 3, timeout=15, what="3 attempts")
        dead = await wait_until(lambda: drain_queue(amqp_url, "otc-writer.events.dead"), timeout=5)
    assert len(attempts) == 3
    assert all(b - a >= 0.9 for a, b in itertools.pairwise(attempts)), "no backoff between attempts"
    headers = dead[0].headers
    assert headers[REASON_HEADER] == "gave up after 3 attempts"
    assert "OTC is down" in str(headers["x-kotc-error"])
    assert headers[ATTEMPT_HEADER] == 3


async def test_permanent_error_dead_letters_at_once_with_reason(
    amqp: tuple[AmqpConnection, Publisher], amqp_url: str
) -> None:
    conn, publisher = amqp
    calls: list[str] = []

    async def handler(event: CloudEvent) -> None:
        calls.append(event.id)
        raise PermanentError("OTC said 400: name invalid")

    consumer = _consumer(conn, publisher, handler)
    async with consuming(consumer):
        await publisher.publish(_event())
        dead = await wait_until(lambda: drain_queue(amqp_url, "otc-writer.events.dead"), timeout=5)
    assert len(calls) == 1
    assert "name invalid" in str(dead[0].headers["x-kotc-error"])
    assert dead[0].headers[REASON_HEADER] == "permanent error"


async def test_cancellation_neither_acks_nor_rejects(
    amqp: tuple[AmqpConnection, Publisher], amqp_url: str
) -> None:
    conn, publisher = amqp
    started = asyncio.Event()

    async def slow(event: CloudEvent) -> None:
        started.set()
        await asyncio.sleep(60)

    consumer = Consumer(
        conn,
        publisher,
        "otc-writer.events",
        slow,
        metrics=ConsumerMetrics(CollectorRegistry()),
        topology=FAST,
        drain_timeout=0.2,
    )
    async with consuming(consumer):
        await publisher.publish(_event())
        await asyncio.wait_for(started.wait(), 5)
    back = await wait_until(lambda: drain_queue(amqp_url, "otc-writer.events"), timeout=5)
    assert len(back) == 1
    assert back[0].redelivered
    assert await drain_queue(amqp_url, "otc-writer.events.dead") == []


async def test_a_failing_key_of_dead_letters_instead_of_holding_the_message(
    amqp: tuple[AmqpConnection, Publisher], amqp_url: str
) -> None:
    conn, publisher = amqp
    calls: list[str] = []

    async def handler(event: CloudEvent) -> None:
        calls.append(event.id)

    def key_of(event: CloudEvent) -> str:
        raise KeyError("parameters")

    consumer = Consumer(
        conn,
        publisher,
        "otc-writer.events",
        handler,
        metrics=ConsumerMetrics(CollectorRegistry()),
        topology=FAST,
        key_of=key_of,
    )
    async with consuming(consumer):
        await publisher.publish(_event())
        dead = await wait_until(lambda: drain_queue(amqp_url, "otc-writer.events.dead"), timeout=5)
    assert calls == []
    assert dead[0].headers[REASON_HEADER] == "no serialization key"
    assert await drain_queue(amqp_url, "otc-writer.events") == []


async def test_a_cancelled_error_leaked_by_the_handler_is_retried(
    amqp: tuple[AmqpConnection, Publisher], amqp_url: str
) -> None:
    conn, publisher = amqp
    calls: list[float] = []

    async def handler(event: CloudEvent) -> None:
        calls.append(asyncio.get_running_loop().time())
        if len(calls) == 1:
            raise asyncio.CancelledError  # e.g. awaited a future that someone else cancelled

    consumer = _consumer(conn, publisher, handler)
    async with consuming(consumer):
        await publisher.publish(_event())
        await wait_until(lambda: len(calls) >= 2, timeout=10, what="the retry")
    assert await drain_queue(amqp_url, "otc-writer.events") == []
    assert await drain_queue(amqp_url, "otc-writer.events.dead") == []


class _RetryPublishFailsOnce(Publisher):
    """The real publisher, except that the first publish to a delay queue fails."""

    failed = False

    async def publish_message(
        self, message: aio_pika.Message, routing_key: str, *, exchange: str | None = None
    ) -> None:
        if exchange == "" and not self.failed:
            self.failed = True
            raise PublishError("simulated: no confirm")
        await super().publish_message(message, routing_key, exchange=exchange)


async def test_a_failed_retry_publish_requeues_after_the_delay_not_at_once(
    amqp: tuple[AmqpConnection, Publisher], amqp_url: str
) -> None:
    conn, publisher = amqp
    flaky = _RetryPublishFailsOnce(conn, timeout=5)
    await flaky.start()
    attempts: list[float] = []

    async def handler(event: CloudEvent) -> None:
        attempts.append(asyncio.get_running_loop().time())
        if len(attempts) == 1:
            raise RetryableError("OTC is down")

    consumer = _consumer(conn, flaky, handler)
    async with consuming(consumer):
        await publisher.publish(_event())
        await wait_until(lambda: len(attempts) >= 2, timeout=10, what="the second attempt")
    assert flaky.failed
    assert attempts[1] - attempts[0] >= 0.9, "requeued at once: a hot retry loop"
    assert await drain_queue(amqp_url, "otc-writer.events.dead") == []
