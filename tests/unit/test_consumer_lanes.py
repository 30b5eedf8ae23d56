"""The consumer's lanes with fakes (no broker): coalescing by revision, order, the hold limit; and
the lanes alone (shared/amqp/consuming/lanes.py).

The same behaviour against real RabbitMQ and real processes: tests/integration/test_writer_outage.py.
"""

from __future__ import annotations

import asyncio
from typing import Any, cast

import aio_pika
from prometheus_client import CollectorRegistry

from shared.amqp import AmqpConnection, Consumer, Publisher
from shared.amqp.consumer import ConsumerMetrics
from shared.amqp.consuming.lanes import Entry, Lanes, Skip
from shared.dependencies import DependencyUnavailable
from shared.events import CloudEvent
from tests.helpers import wait_until
from tests.unit.amqp_fakes import FakeMessage, FakePublisher

QUEUE = "otc-writer.events"


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
    await wait_until(
        lambda: w.calls == [("a", 1)] and len(w.consumer._inflight) == 5,
        timeout=5,
        what="all five in the lane",
    )
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


# --- the lanes alone (shared/amqp/consuming/lanes.py) ---


def _join(lanes: Lanes, key: str | None, revision: tuple[str, int] | None, at: float = 0.0) -> Entry:
    return lanes.join(key, FakeMessage(event(key or "-", 0)).incoming, revision, at)


async def test_a_lane_runs_its_head_only_and_a_message_without_key_has_a_lane_of_its_own() -> None:
    lanes = Lanes()
    a1, a2 = _join(lanes, "a", None), _join(lanes, "a", None)
    lone1, lone2 = _join(lanes, None, None), _join(lanes, None, None)
    assert lanes.at_head(a1) and not lanes.at_head(a2)
    assert lanes.at_head(lone1) and lanes.at_head(lone2)
    lanes.leave(a1)
    assert lanes.at_head(a2) and a2.wake.is_set()  # the next one is told it is its turn
    assert [e.arrival for e in lanes.waiting()] == [a2.arrival, lone1.arrival, lone2.arrival]
    a2.running = True
    assert lanes.waiting() == [lone1, lone2]  # a running message does not wait


async def test_coalescing_keeps_the_newest_whole_state_per_sequence_and_never_a_running_one() -> None:
    lanes = Lanes()
    running = _join(lanes, "a", ("trigger", 1))
    running.running = True
    older = _join(lanes, "a", ("trigger", 2))
    snapshot = _join(lanes, "a", ("snapshot", 1))  # another sequence: untouched
    plain = _join(lanes, "a", None)  # no whole state: untouched
    newest = _join(lanes, "a", ("trigger", 3))
    assert older.skipped is Skip.SUPERSEDED and older.wake.is_set()
    assert running.skipped is None and snapshot.skipped is None and plain.skipped is None
    late = _join(lanes, "a", ("trigger", 3))  # as new as one waiting: the late one goes
    assert late.skipped is Skip.SUPERSEDED and newest.skipped is None
    other_key = _join(lanes, "b", ("trigger", 1))
    assert other_key.skipped is None  # lanes never coalesce across keys


async def test_a_freed_slot_wakes_the_oldest_live_heads_only() -> None:
    """A handler's end frees one slot: waking every waiting head cost each of them a turn of the
    loop per message (64 heads: 64 wake-ups for one runnable). Only as many as there are free slots
    are woken, oldest first; a running or superseded head is never one of them; a dependency's
    return (no count) wakes them all."""
    lanes = Lanes()
    running = _join(lanes, "a", None)
    running.running = True
    obsolete = _join(lanes, "b", ("trigger", 1))
    _join(lanes, "b", ("trigger", 2))  # supersedes it (and wakes it, to leave)
    c, d, e = _join(lanes, "c", None), _join(lanes, "d", None), _join(lanes, "e", None)
    obsolete.wake.clear()
    lanes.wake_heads(2)
    assert [h.wake.is_set() for h in (running, obsolete, c, d, e)] == [False, False, True, True, False]
    lanes.wake_heads(0)
    assert not e.wake.is_set()
    lanes.wake_heads()
    assert all(h.wake.is_set() for h in (running, obsolete, c, d, e))


async def test_one_slot_and_many_keys_run_each_once_in_arrival_order() -> None:
    w = World(concurrency=1)
    w.gate = asyncio.Event()
    w.deliver(*(event(f"k{i}", 1) for i in range(20)))
    await wait_until(lambda: len(w.calls) == 1, timeout=5)
    w.gate.set()
    await w.settle()
    assert w.handled == [(f"k{i}", 1) for i in range(20)]
