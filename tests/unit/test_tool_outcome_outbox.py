"""otc-writer's outbox of tool outcomes (services.otc_writer.outcome_outbox): the tool's message
never waits for the outcome's publish; bounded, dropped outcomes counted, published in order, and
flushed at shutdown within the deadline (what the deadline cuts off is counted)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

from prometheus_client import CollectorRegistry

from services.otc_writer.outcome_outbox import TASK, Outbox
from services.otc_writer.tool_reports import Reporter
from shared.events import CloudEvent, RoutingKeys, ToolOutcomeData
from shared.lifecycle import Runtime

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def outcome(i: int) -> ToolOutcomeData:
    return ToolOutcomeData(
        purpose="trigger",
        key=f"k{i}",
        toolchain_id="tc-1",
        scope="default/ns",
        name=f"t{i}",
        revision=1,
        state="applied",
        change="updated",
        at=T0,
    )


def event(i: int) -> CloudEvent:
    return CloudEvent.for_data(RoutingKeys.TOOL_OUTCOME, outcome(i), source="/test", subject=f"k{i}")


def failures(outbox: Outbox) -> float:
    return float(outbox.failures._value.get())


class Broker:
    """Records what is published; ``fail`` refuses those subjects, ``hold`` never confirms."""

    def __init__(self, *, fail: tuple[str, ...] = (), hold: bool = False) -> None:
        self.sent: list[str | None] = []
        self._fail = fail
        self._hold = hold

    async def publish(self, event: CloudEvent) -> None:
        await asyncio.sleep(0)  # a confirm is never immediate
        if self._hold:
            await asyncio.Event().wait()
        if event.subject in self._fail:
            raise ConnectionError("nacked")
        self.sent.append(event.subject)


def runtime_with(outbox: Outbox, *, shutdown_timeout: float = 25.0) -> Runtime:
    runtime = Runtime("test", shutdown_timeout=shutdown_timeout)
    runtime.add(TASK, lambda: outbox.running(runtime.supervisor))
    return runtime


async def test_reporting_does_not_wait_for_the_publish() -> None:
    broker = Broker(hold=True)  # RabbitMQ never confirms
    outbox = Outbox(broker.publish, CollectorRegistry())
    reporter = Reporter(outbox, until=lambda: None, clock=lambda: T0)
    reporter.report(outcome(1))  # returns at once: nothing to await
    assert len(outbox) == 1 and broker.sent == []


async def test_a_full_outbox_drops_and_counts_what_does_not_fit() -> None:
    outbox = Outbox(Broker().publish, CollectorRegistry(), capacity=2)
    assert [outbox.put(event(i)) for i in range(4)] == [True, True, False, False]
    assert len(outbox) == 2 and failures(outbox) == 2


async def test_while_rabbitmq_is_away_outcomes_are_dropped_and_counted() -> None:
    online = False
    outbox = Outbox(Broker().publish, CollectorRegistry(), online=lambda: online)
    assert not outbox.put(event(1))
    online = True
    assert outbox.put(event(2))
    assert len(outbox) == 1 and failures(outbox) == 1


async def test_outcomes_are_published_in_order_and_flushed_on_close() -> None:
    broker = Broker()
    outbox = Outbox(broker.publish, CollectorRegistry(), batch=3)
    runtime = runtime_with(outbox)
    await runtime.start()
    for i in range(8):
        outbox.put(event(i))
    await runtime.stop()  # publishes what it still holds
    assert broker.sent == [f"k{i}" for i in range(8)]
    assert len(outbox) == 0 and failures(outbox) == 0
    assert not runtime.supervisor.failed.is_set()  # the task ended by design, not a crash


async def test_a_failed_publish_is_counted_and_the_others_still_go() -> None:
    broker = Broker(fail=("k1",))
    outbox = Outbox(broker.publish, CollectorRegistry(), batch=2)
    runtime = runtime_with(outbox)
    await runtime.start()
    for i in range(4):
        outbox.put(event(i))
    await runtime.stop()
    assert broker.sent == ["k0", "k2", "k3"] and failures(outbox) == 1


async def test_what_the_shutdown_deadline_cuts_off_is_counted() -> None:
    outbox = Outbox(Broker(hold=True).publish, CollectorRegistry(), batch=2)
    runtime = runtime_with(outbox, shutdown_timeout=0.2)
    await runtime.start()
    for i in range(5):
        outbox.put(event(i))
    await runtime.stop()  # returns at the deadline although RabbitMQ never confirms
    assert failures(outbox) == 5 and len(outbox) == 0
