"""The hold limit (shared/amqp/consuming/hold.py) with a fake publisher: when a copy cannot be put
back, the original is returned to the broker instead and leaves its lane all the same.

The watchdog inside the consumer: tests/unit/test_consumer_lanes.py; against real RabbitMQ:
tests/integration/test_consumer_faults.py.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry

from shared.amqp.consuming.hold import HoldLimit
from shared.amqp.consuming.lanes import Lanes, Skip
from shared.amqp.consuming.metrics import ConsumerMetrics
from shared.events import CloudEvent
from tests.unit.amqp_fakes import FakeMessage, FakePublisher

QUEUE = "otc-writer.events"


async def test_copies_go_to_the_tail_or_the_originals_go_back_when_publishing_is_down() -> None:
    lanes, registry = Lanes(), CollectorRegistry()
    messages = [FakeMessage(CloudEvent(id=f"e-{i}", source="t", type="io.kabanero.otc.x")) for i in range(3)]
    entries = [lanes.join("k", m.incoming, None, 0.0) for m in messages]
    publisher = FakePublisher()
    hold = HoldLimit(QUEUE, lanes, publisher.publisher, metrics=ConsumerMetrics(registry), limit_s=1.0)
    await hold.requeue(entries[:2])
    assert [(ex, rk, m.message_id) for ex, rk, m in publisher.sent] == [
        ("", QUEUE, "e-0"),
        ("", QUEUE, "e-1"),
    ]
    assert [m.outcome for m in messages] == ["ack", "ack", None]
    publisher.failing = True
    await hold.requeue(entries[2:])
    assert messages[2].outcome == "requeue"  # returned: the broker counts one delivery
    assert all(e.skipped is Skip.REQUEUED and e.wake.is_set() for e in entries)
    assert lanes.waiting() == []
    counted = registry.get_sample_value("kotc_messages_total", {"queue": QUEUE, "outcome": "requeued"})
    assert counted == 3
