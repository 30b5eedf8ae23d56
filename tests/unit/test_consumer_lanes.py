"""The consumer's lanes with fakes (no broker): coalescing by revision, order, the hold limit.

The same behaviour against real RabbitMQ and real processes: tests/integration/test_writer_outage.py.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any, cast

import aio_pika
from prometheus_client import CollectorRegistry

from shared.amqp import AmqpConnection, Consumer, Publisher
from shared.amqp.consumer import ConsumerMetrics
from shared.dependencies import DependencyUnavailable
from shared.events import CloudEvent
from tests.helpers import wait_until

QUEUE = "otc-writer.events"


@dataclass
class FakeMessage:
    event: CloudEvent
    headers: dict[str, Any] = field(default_factory=dict)
    outcome: str | None = None

    @property
    def body(self) -> bytes:
        return self.event.model_dump_json().encode()

    message_id = property(lambda self: self.event.id)
    type = property(lambda self: self.event.type)
    routing_key = property(lambda self: self.event.routing_key)
    content_type = "application/cloudevents+json"
    timestamp = None

    async def ack(self) -> None:
        assert self.outcome is None, "settled twice"
        self.outcome = "ack"

    async def nack(self, requeue: bool = True) -> None:
        assert self.outcome is None, "settled twice"
        self.outcome = "requeue" if requeue else "nack"

    async def reject(self, requeue: bool = False) -> None:
        await self.nack(requeue)


@dataclass
class FakePublisher:
    sent: list[tuple[str, str, aio_pika.Message]] = field(default_factory=list)

    async def publish_message(
        self, message: aio_pika.Message, routing_key: str, *, exchange: str = ""
    ) -> None:
        self.sent.append((exchange, routing_key, message))


def event(key: str, revision: int, kind: str = "trigger") -> CloudEvent:
    return CloudEvent(
        id=f"{kind}:{key}:{revision}",
        source="test",
        type=f"io.kabanero.otc.{kind}",
        data={"key": key, "revision": revision},
    )


def revision_of(e: CloudEvent) -> tuple[str, int] | None:
    if e.routing_key == "service":
        return None  # like service events and commands: never coalesced
    return e.routing_key, int(e.data["revision"])  # raises on bad data: then never coalesced


class World:
    """A consumer whose handler fails with a dependency down while ``down`` is set."""

    def __init__(self, **kw: Any) -> None:
        self.down = False
        self.handled: list[tuple[str, int]] = []
        self.calls: list[tuple[str, int]] = []
        self.gate: asyncio.Event | None = None
        self.publisher = FakePublisher()
        self.registry = CollectorRegistry()

        async def probe() -> bool:
            return not self.down

        self.consumer = Consumer(
            cast(AmqpConnection, None),
            cast(Publisher, self.publisher),
            QUEUE,
            self.handle,
            metrics=ConsumerMetrics(self.registry),
            key_of=lambda e: str(e.data["key"]),
            revision_of=revision_of,
            probes={"otc": probe},
            probe_interval_s=0.05,
            probe_max_interval_s=0.05,
            **kw,
        )
        self.tasks: list[asyncio.Task[None]] = []

    async def handle(self, e: CloudEvent) -> None:
        self.calls.append((str(e.data["key"]), int(e.data["revision"])))
        if self.gate is not None:
            await self.gate.wait()
        if self.down:
            raise DependencyUnavailable("OTC circuit open", dependency="otc")
        self.handled.append((str(e.data["key"]), int(e.data["revision"])))

    def deliver(self, *events: CloudEvent) -> list[FakeMessage]:
        messages = [FakeMessage(e) for e in events]
        for m in messages:
            message = cast(aio_pika.abc.AbstractIncomingMessage, m)
            self.tasks.append(asyncio.create_task(self.consumer._on_message(message)))
        return messages

    def outcomes(self, outcome: str) -> float:
        value = self.registry.get_sample_value("kotc_messages_total", {"queue": QUEUE, "outcome": outcome})
        return value or 0.0

    async def settle(self) -> None:
        await asyncio.wait_for(asyncio.gather(*self.tasks), 10)


async def test_a_held_backlog_keeps_one_message_per_key_and_applies_only_the_latest() -> None:
    w = World()
    w.down = True
    first = w.deliver(event("a", 1))
    await wait_until(lambda: w.consumer.outage == "otc", timeout=5, what="holding")
    backlog = w.deliver(
        *[event("a", r) for r in range(2, 30)],
        *[event("b", r) for r in range(1, 20)],
        event("b", 5, kind="service"),
        event("b", 6, kind="service"),
        event("b", 20),
    )
    # While held, every message made obsolete by a newer one of its key is acked at once (freeing
    # its prefetch slot); the held head of "a" too, since it is not running.
    await wait_until(lambda: w.outcomes("superseded") == 1 + 27 + 19, timeout=5, what="coalesced")
    unsettled = [m.event.id for m in first + backlog if m.outcome is None]
    assert unsettled == ["trigger:a:29", "service:b:5", "service:b:6", "trigger:b:20"]
    assert w.calls == [("a", 1)]  # nothing ran while OTC was down (only the message that found out)
    w.down = False
    await w.settle()
    # Only the latest state per key, and the service events, each once, in lane order.
    assert sorted(w.handled) == [("a", 29), ("b", 5), ("b", 6), ("b", 20)]
    assert [h for h in w.handled if h[0] == "b"] == [("b", 5), ("b", 6), ("b", 20)]
    assert all(m.outcome == "ack" for m in first + backlog)
    assert w.publisher.sent == []  # no retry, no dead letter


async def test_a_late_older_message_is_superseded_by_the_newer_one_waiting() -> None:
    w = World()
    w.gate = asyncio.Event()
    (running,) = w.deliver(event("a", 1))
    await wait_until(lambda: w.calls == [("a", 1)], timeout=5, what="first running")
    newer, late = w.deliver(event("a", 5), event("a", 3))  # 3 comes back from a retry queue, late
    await wait_until(lambda: late.outcome == "ack", timeout=5, what="late one acked")
    # The running one is never superseded: it finishes, then the newest runs.
    assert running.outcome is None and newer.outcome is None
    w.gate.set()
    await w.settle()
    assert w.handled == [("a", 1), ("a", 5)]
    assert w.outcomes("superseded") == 1 and w.outcomes("ack") == 2


async def test_messages_that_carry_no_revision_are_never_coalesced_and_stay_in_order() -> None:
    w = World()
    w.gate = asyncio.Event()
    w.deliver(*[event("a", r, kind="service") for r in (1, 2, 3)])
    bad = CloudEvent(
        id="bad", source="test", type="io.kabanero.otc.trigger", data={"key": "a", "revision": "x"}
    )
    w.deliver(
        bad, event("a", 4)
    )  # bad data is no whole state: it supersedes nothing, is superseded by nothing
    await asyncio.sleep(0.1)
    w.gate.set()
    await asyncio.wait_for(asyncio.gather(*w.tasks, return_exceptions=True), 10)
    assert w.calls == [("a", 1), ("a", 2), ("a", 3), ("a", 4)]
    assert w.outcomes("superseded") == 0 and w.outcomes("ack") == 4
    assert w.outcomes("retry") == 1  # the bad one failed on its own


async def test_waiting_past_the_hold_limit_puts_copies_back_in_order_without_spending_attempts() -> None:
    w = World(hold_limit_s=0.4)
    watchdog = asyncio.create_task(w.consumer.watch_holds())
    try:
        w.down = True
        deaths = {"x-death": [{"queue": f"{QUEUE}.retry.1s", "reason": "expired", "count": 2}]}
        held = w.deliver(event("a", 1), event("b", 1), event("c", 1, kind="service"))
        held[1].headers = deaths
        await wait_until(lambda: len(w.publisher.sent) == 3, timeout=5, what="copies put back")
        await w.settle()
        assert [m.outcome for m in held] == ["ack"] * 3
        assert [(ex, rk) for ex, rk, _ in w.publisher.sent] == [("", QUEUE)] * 3
        copies = [CloudEvent.model_validate_json(m.body).id for _, _, m in w.publisher.sent]
        assert copies == ["trigger:a:1", "trigger:b:1", "service:c:1"]  # delivery order
        assert w.publisher.sent[1][2].headers["x-death"] == deaths["x-death"]  # attempts kept as they were
        assert w.outcomes("requeued") == 3 and w.outcomes("ack") == 0
        assert w.calls == [("a", 1)] and w.handled == []
        # The copies come back (the broker redelivers them) and run once OTC answers.
        again = w.deliver(*[CloudEvent.model_validate_json(m.body) for _, _, m in w.publisher.sent])
        w.down = False
        await w.settle()
        assert sorted(w.handled) == [("a", 1), ("b", 1), ("c", 1)]
        assert [m.outcome for m in again] == ["ack"] * 3
    finally:
        watchdog.cancel()
