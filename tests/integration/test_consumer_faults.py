"""The consumer against real RabbitMQ and MongoDB: a dependency that is down spends no attempts;
what a message says about its own retries is not trusted; what can never be stored dead-letters at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid

import aio_pika
import aiohttp
import pytest
from prometheus_client import CollectorRegistry
from pymongo import AsyncMongoClient

from services.github_linker.app import QUEUE as LINKER_QUEUE
from services.github_linker.app import Deps, build
from services.github_linker.settings import Settings
from shared.amqp import (
    AmqpConnection,
    Consumer,
    DataModel,
    Delivery,
    Publisher,
    RetryableError,
    Topology,
    declare_topology,
)
from shared.amqp.consumer import ATTEMPT_HEADER, ERROR_HEADER, REASON_HEADER, ConsumerMetrics, Handler
from shared.amqp.publisher import to_message
from shared.dependencies import DependencyUnavailable
from shared.events import CloudEvent, RoutingKeys, ServiceEventData, ServiceParameters
from tests.helpers import drain_queue, wait_until
from tests.integration.test_amqp import amqp as amqp  # the fixture: a fresh vhost, topology, publisher
from tests.integration.test_amqp import consuming

FAST = Topology(retry_delays_s=(1,))
QUEUE = "otc-writer.events"


def _event(instance: str, revision: int = 1) -> CloudEvent:
    data = ServiceEventData(
        kind="kabanero-events",
        instance_id=instance,
        service_id="kabanero-events",
        parameters=ServiceParameters(cluster="default", namespace=instance),
        revision=revision,
    )
    return CloudEvent.for_data(
        RoutingKeys.service("kabanero-events", "provisioned"), data, source="test", subject=instance
    )


def _key(event: CloudEvent) -> str:
    return str(event.data["parameters"]["namespace"])


def _consumer(
    conn: AmqpConnection, publisher: Publisher, handler: Handler, *, max_attempts: int = 2, **kw: object
) -> Consumer:
    return Consumer(
        conn,
        publisher,
        QUEUE,
        handler,
        metrics=ConsumerMetrics(CollectorRegistry()),
        topology=FAST,
        max_attempts=max_attempts,
        key_of=_key,
        **kw,  # type: ignore[arg-type]
    )


async def test_a_dependency_down_holds_messages_in_order_without_spending_attempts(
    amqp: tuple[AmqpConnection, Publisher], amqp_url: str
) -> None:
    conn, publisher = amqp
    down = True
    calls = 0
    done: list[tuple[str, int]] = []
    probes = 0

    async def handler(event: CloudEvent) -> None:
        nonlocal calls
        calls += 1
        if down:
            raise RetryableError("lost the lease") from DependencyUnavailable("OTC down", dependency="otc")
        done.append((_key(event), int(event.data["revision"])))

    async def probe() -> bool:
        nonlocal probes
        probes += 1
        return not down

    consumer = _consumer(conn, publisher, handler, probes={"otc": probe}, probe_interval_s=0.2)
    async with consuming(consumer):
        for revision in (1, 2, 3):
            await publisher.publish(_event("a", revision))
        await publisher.publish(_event("b"))
        await wait_until(lambda: consumer.outage == "otc", what="the consumer pausing")
        # The barrier is the consumer's own clock: five failed probes (0.2 s growing 1.5-fold: 2.6 s) are
        # twice what max_attempts=2 with 1 s delays would take to give up.
        await wait_until(lambda: probes >= 5, what="five failed probes")
        assert consumer.outage == "otc"
        spent = [consumer._metrics.outcomes.labels(QUEUE, o)._value.get() for o in ("retry", "dead")]
        assert spent == [0, 0]
        # While paused the handler is not called again: at most one call per message in hand.
        assert calls <= 4
        assert await drain_queue(amqp_url, f"{QUEUE}.dead", timeout=0.2) == []
        down = False
        started = asyncio.get_running_loop().time()
        await wait_until(lambda: len(done) == 4, timeout=10, what="all four handled")
        assert asyncio.get_running_loop().time() - started < 3
    assert [r for k, r in done if k == "a"] == [1, 2, 3]  # the held one did not get overtaken
    assert consumer.outage is None
    assert await drain_queue(amqp_url, f"{QUEUE}.dead", timeout=0.2) == []
    assert await drain_queue(amqp_url, QUEUE, timeout=0.2) == []


async def test_the_held_gauge_counts_delivered_messages_until_they_are_settled(
    amqp: tuple[AmqpConnection, Publisher],
) -> None:
    """``kotc_consumer_held``: the queue shows 0 ready while the consumer still works on its prefetch;
    this is what says it has not finished (the stack's ``quiet`` waits on it)."""
    conn, publisher = amqp
    release = asyncio.Event()

    async def handler(event: CloudEvent) -> None:
        await release.wait()

    registry = CollectorRegistry()
    consumer = Consumer(
        conn, publisher, QUEUE, handler, metrics=ConsumerMetrics(registry), topology=FAST, key_of=_key
    )

    def held() -> float | None:
        return registry.get_sample_value("kotc_consumer_held", {"queue": QUEUE})

    async with consuming(consumer):
        assert held() == 0
        for name in ("a", "b", "c"):
            await publisher.publish(_event(name))
        await wait_until(lambda: held() == 3, what="three messages held")
        release.set()
        await wait_until(lambda: held() == 0, what="all settled")


async def test_messages_held_past_the_hold_limit_go_back_to_the_queue_and_are_kept(
    amqp: tuple[AmqpConnection, Publisher], amqp_url: str
) -> None:
    """The hold limit, made small, against real RabbitMQ: held messages are put back (copies at the
    tail, originals acked) over and over, keep their order and attempts, and run once OTC answers."""
    conn, publisher = amqp
    down = True
    done: list[tuple[str, int]] = []

    async def handler(event: CloudEvent) -> None:
        if down:
            raise DependencyUnavailable("OTC down", dependency="otc")
        done.append((_key(event), int(event.data["revision"])))

    async def probe() -> bool:
        return not down

    consumer = _consumer(
        conn, publisher, handler, probes={"otc": probe}, probe_interval_s=0.2, hold_limit_s=1.0
    )
    requeued = consumer._metrics.outcomes.labels(QUEUE, "requeued")
    async with consuming(consumer):
        for revision in (1, 2, 3):
            await publisher.publish(_event("a", revision))
        await publisher.publish(_event("b"))
        # Each message put back at least twice: every copy came back and waited again.
        await wait_until(lambda: requeued._value.get() >= 8, timeout=20, what="held messages put back")
        assert consumer.consuming and consumer.outage == "otc" and done == []
        assert await drain_queue(amqp_url, f"{QUEUE}.dead", timeout=0.2) == []
        down = False
        await wait_until(lambda: len(done) == 4, timeout=10, what="all four handled")
    assert [r for k, r in done if k == "a"] == [1, 2, 3]
    assert sorted(done) == [("a", 1), ("a", 2), ("a", 3), ("b", 1)]  # each once: nothing lost or doubled
    assert await drain_queue(amqp_url, f"{QUEUE}.dead", timeout=0.2) == []
    assert await drain_queue(amqp_url, QUEUE, timeout=0.2) == []


async def test_shutdown_waits_for_running_handlers_only_and_returns_the_waiting_messages(
    amqp: tuple[AmqpConnection, Publisher], amqp_url: str
) -> None:
    """With a large prefetch many messages wait in their lanes: stopping finishes the running one and
    hands the rest back to the broker unacked, instead of working through the lane until the deadline."""
    conn, publisher = amqp
    done: list[int] = []
    started = asyncio.Event()

    async def handler(event: CloudEvent) -> None:
        started.set()
        await asyncio.sleep(0.3)
        done.append(int(event.data["revision"]))

    consumer = _consumer(conn, publisher, handler, prefetch=64)
    async with consuming(consumer):
        for revision in range(1, 31):
            await publisher.publish(_event("a", revision))
        await asyncio.wait_for(started.wait(), 10)
        await wait_until(
            lambda: consumer.last_delivery is not None and len(consumer._inflight) >= 20, timeout=10
        )
    assert 1 <= len(done) <= 3
    back = await drain_queue(amqp_url, QUEUE, timeout=2)
    assert len(back) + len(done) == 30  # nothing lost, nothing handled twice
    assert await drain_queue(amqp_url, f"{QUEUE}.dead", timeout=0.2) == []


async def test_an_attempt_count_the_message_claims_is_not_trusted(
    amqp: tuple[AmqpConnection, Publisher], amqp_url: str
) -> None:
    conn, publisher = amqp
    calls = 0

    async def handler(event: CloudEvent) -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RetryableError("transient")

    consumer = _consumer(conn, publisher, handler, max_attempts=3)
    async with consuming(consumer):
        event = _event("forged")
        await publisher.publish_message(to_message(event, {ATTEMPT_HEADER: 999}), event.routing_key)
        await wait_until(lambda: calls >= 2, timeout=10, what="the retry")
    assert calls == 2
    assert await drain_queue(amqp_url, f"{QUEUE}.dead", timeout=0.2) == []


@pytest.mark.parametrize(
    ("document", "reason"),
    [
        ({"n": 2**70}, "integer out of BSON's 64-bit range"),
        ({"blob": "x" * (17 * 1024 * 1024)}, "document over MongoDB's size limit"),
    ],
    ids=["int-too-big", "over-16MB"],
)
async def test_what_mongodb_can_never_store_dead_letters_at_once_with_the_reason(
    amqp: tuple[AmqpConnection, Publisher],
    amqp_url: str,
    mongodb_url: str,
    document: dict[str, object],
    reason: str,
) -> None:
    conn, publisher = amqp
    mongo: AsyncMongoClient[dict[str, object]] = AsyncMongoClient(mongodb_url, serverSelectionTimeoutMS=5000)
    collection = mongo.get_default_database(default="kotc_test")[f"c{uuid.uuid4().hex[:8]}"]
    calls = 0

    async def handler(event: CloudEvent) -> None:
        nonlocal calls
        calls += 1
        await collection.insert_one(dict(document))

    consumer = _consumer(conn, publisher, handler, max_attempts=5)
    try:
        async with consuming(consumer):
            await publisher.publish(_event("huge"))
            dead = await wait_until(lambda: drain_queue(amqp_url, f"{QUEUE}.dead"), timeout=10)
    finally:
        await mongo.close()
    assert calls == 1
    assert dead[0].headers[REASON_HEADER] == f"can never succeed: {reason}"


async def test_dead_queues_have_a_length_limit(amqp_url: str, amqp: tuple[AmqpConnection, Publisher]) -> None:
    conn, _ = amqp
    channel = await conn.channel()
    try:
        # Passive re-declaration with the same arguments succeeds only if they match.
        queue = await channel.declare_queue(
            f"{QUEUE}.dead",
            durable=True,
            arguments={
                "x-queue-type": "quorum",
                "x-max-length": FAST.dead_max_length,
                "x-overflow": "drop-head",
            },
        )
        assert queue.name == f"{QUEUE}.dead"
    finally:
        with contextlib.suppress(aio_pika.exceptions.AMQPError):
            await channel.close()


async def test_an_unbounded_dead_queue_of_an_older_version_is_kept_and_named(
    amqp_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    conn = AmqpConnection(amqp_url, name="test", connect_timeout=5)
    await conn.connect()
    try:
        channel = await conn.channel()
        topo = Topology(retry_delays_s=(1,), queues={"old.q": ("old.#",)})
        await channel.declare_queue("old.q.dead", durable=True, arguments={"x-queue-type": "quorum"})
        with caplog.at_level("WARNING"):
            await declare_topology(channel, topo)
        assert "rabbitmqctl set_policy" in caplog.text
        await declare_topology(channel, topo)  # still idempotent
        await channel.close()
    finally:
        await conn.close()


async def test_github_linker_is_not_ready_once_its_queue_is_deleted(amqp_url: str, mongodb_url: str) -> None:
    settings = Settings(
        amqp_url=amqp_url,  # type: ignore[arg-type]
        mongodb_url=mongodb_url,  # type: ignore[arg-type]
        http_host="127.0.0.1",
        http_port=0,
        connect_timeout_s=10,
    )
    runtime = build(settings, deps=Deps(registry=CollectorRegistry()))
    async with runtime, aiohttp.ClientSession() as http:
        url = f"http://127.0.0.1:{runtime.port}/readyz"
        await wait_until(lambda: runtime.consumer.consuming, what="consuming")
        async with http.get(url) as resp:
            assert resp.status == 200
        conn = await aio_pika.connect(amqp_url)
        channel = await conn.channel()
        await channel.queue_delete(LINKER_QUEUE)
        await conn.close()

        async def unready() -> bool:
            async with http.get(url) as resp:
                body = await resp.json()
                return resp.status == 503 and "does not exist" in body["checks"]["queue"]

        await wait_until(unready, timeout=10, what="/readyz failing")


async def test_invalid_data_is_decoded_once_and_dead_lettered_with_the_field_as_reason(
    amqp: tuple[AmqpConnection, Publisher], amqp_url: str
) -> None:
    """A consumer with a decoder (as github-linker, broker-api's outcomes and the watcher's instance
    commands have): the handler and ``key_of`` get the typed data; data that does not validate never
    reaches them and is dead-lettered at once, the failing field in the reason."""
    conn, publisher = amqp
    decoded: list[str] = []
    handled: list[tuple[str, int]] = []

    def decode(event: CloudEvent) -> Delivery[ServiceEventData]:
        decoded.append(event.id)
        return DataModel(ServiceEventData)(event)

    async def handler(message: Delivery[ServiceEventData]) -> None:
        handled.append((message.data.parameters.namespace, message.data.revision))

    consumer = Consumer(
        conn,
        publisher,
        QUEUE,
        handler,
        metrics=ConsumerMetrics(CollectorRegistry()),
        topology=FAST,
        key_of=lambda m: m.data.parameters.namespace,
        decode=decode,
    )
    good = _event("a", 2)
    bad = good.model_copy(update={"id": "bad-1", "data": {**good.data, "revision": -1}})
    running = asyncio.create_task(consumer.run())
    try:
        await publisher.publish(bad)
        await publisher.publish(good)
        dead = await wait_until(lambda: drain_queue(amqp_url, f"{QUEUE}.dead"), timeout=10)
        await wait_until(lambda: handled, timeout=10, what="the valid one handled")
    finally:
        running.cancel()
        await asyncio.gather(running, return_exceptions=True)
    assert handled == [("a", 2)]
    assert sorted(decoded) == sorted([bad.id, good.id])  # once each
    (letter,) = dead
    assert letter.message_id == "bad-1"
    assert str(letter.headers[REASON_HEADER]).startswith(
        "invalid ServiceEventData: data.revision: Input should be greater than or equal to 0"
    )
    assert "ValidationError" in str(letter.headers[ERROR_HEADER])
    assert await drain_queue(amqp_url, QUEUE, timeout=0.2) == []


async def test_retry_and_dead_letter_headers_carry_no_url_credentials(
    amqp: tuple[AmqpConnection, Publisher], amqp_url: str
) -> None:
    """A header is a message: an error quoting a URL keeps its host and path, never its secrets."""
    conn, publisher = amqp

    async def handler(event: CloudEvent) -> None:
        raise RetryableError("GET https://user:ghp_TOKEN@github.com/o/r?access_token=s3cr3t failed")

    async with consuming(_consumer(conn, publisher, handler, max_attempts=2)):
        await publisher.publish(_event("leaky"))
        dead = await wait_until(lambda: drain_queue(amqp_url, f"{QUEUE}.dead"), timeout=15)
    error = str(dead[0].headers[ERROR_HEADER])
    assert "https://github.com/o/r failed" in error
    assert "ghp_TOKEN" not in error and "s3cr3t" not in error
