"""Settling (shared/amqp/consuming/settle.py) with a fake publisher: the one mapping of errors to
outcomes, the broker's attempt count, and what happens when the copy cannot be published.

Against real RabbitMQ: tests/integration/test_amqp.py and test_consumer_faults.py.
"""

from __future__ import annotations

import pydantic
import pytest
from bson.errors import InvalidDocument
from prometheus_client import CollectorRegistry

from shared.amqp import PermanentError, RetryableError, Topology
from shared.amqp.consuming.errors import InvalidMessage
from shared.amqp.consuming.metrics import ConsumerMetrics
from shared.amqp.consuming.settle import (
    ATTEMPT_HEADER,
    ERROR_HEADER,
    REASON_HEADER,
    Settler,
    Verdict,
    attempts_of,
    verdict,
)
from shared.amqp.topology import DEAD_EXCHANGE
from shared.events import CloudEvent, ServiceEventData
from tests.unit.amqp_fakes import FakeMessage, FakePublisher

QUEUE = "otc-writer.events"


def _validation_error() -> pydantic.ValidationError:
    try:
        ServiceEventData.model_validate({})
    except pydantic.ValidationError as exc:
        return exc
    raise AssertionError("validated")


@pytest.mark.parametrize(
    ("error", "attempt", "expected"),
    [
        (None, 1, Verdict("ack")),
        (RetryableError("503"), 1, Verdict("retry")),
        (RuntimeError("bug?"), 2, Verdict("retry")),
        (RetryableError("503"), 3, Verdict("dead", "gave up after 3 attempts")),
        (PermanentError("400"), 1, Verdict("dead", "permanent error")),
        (_validation_error(), 1, Verdict("dead", "permanent error")),
        (
            InvalidMessage("invalid X: data.a: bad", ValueError("a")),
            1,
            Verdict("dead", "invalid X: data.a: bad"),
        ),
        (OverflowError("MongoDB can only handle up to 8-byte ints"), 1, None),
    ],
    ids=["ok", "retryable", "other", "exhausted", "permanent", "validation", "invalid", "never"],
)
def test_every_error_maps_to_one_outcome(
    error: Exception | None, attempt: int, expected: Verdict | None
) -> None:
    got = verdict(error, attempt, max_attempts=3)
    if expected is None:  # what can never be stored: dead at once, with the reason
        assert got.action == "dead" and got.reason.startswith("can never succeed: ")
    else:
        assert got == expected


def test_bson_refusal_can_never_succeed() -> None:
    assert verdict(InvalidDocument("key must not contain '.'"), 1, 5).action in ("dead", "retry")


def _message(deaths: object = None, **headers: object) -> FakeMessage:
    m = FakeMessage(CloudEvent(id="e-1", source="t", type="io.kabanero.otc.x"))
    if deaths is not None:
        m.headers["x-death"] = deaths
    m.headers.update(headers)
    return m


def test_attempts_are_the_brokers_expiries_from_our_delay_queues_only() -> None:
    deaths = [
        {"queue": f"{QUEUE}.retry.1s", "reason": "expired", "count": 2},
        {"queue": f"{QUEUE}.retry.5s".encode(), "reason": b"expired", "count": 1},
        {"queue": QUEUE, "reason": "delivery_limit", "count": 4},  # not a retry
        {"queue": "other.q.retry.1s", "reason": "expired", "count": 7},  # another queue's
        {"queue": f"{QUEUE}.retry.1s", "reason": "expired", "count": -3},  # nonsense
        "junk",
    ]
    assert attempts_of(_message(deaths).incoming, QUEUE) == 3
    assert attempts_of(_message(None, **{ATTEMPT_HEADER: 999}).incoming, QUEUE) == 0
    assert attempts_of(_message("not a list").incoming, QUEUE) == 0


def _settler(publisher: FakePublisher, registry: CollectorRegistry) -> Settler:
    return Settler(
        publisher.publisher,
        QUEUE,
        topology=Topology(retry_delays_s=(0, 5)),
        metrics=ConsumerMetrics(registry),
        max_attempts=3,
    )


def _count(registry: CollectorRegistry, outcome: str) -> float:
    return registry.get_sample_value("kotc_messages_total", {"queue": QUEUE, "outcome": outcome}) or 0.0


async def test_a_retry_goes_to_the_delay_queue_of_its_attempt_then_the_message_is_acked() -> None:
    publisher, registry = FakePublisher(), CollectorRegistry()
    message = _message(trace="kept")
    await _settler(publisher, registry).settle(message.incoming, RetryableError("503"), 2, "e-1")
    ((exchange, queue, copy),) = publisher.sent
    assert (exchange, queue) == ("", f"{QUEUE}.retry.5s")
    assert copy.headers == {"trace": "kept", ATTEMPT_HEADER: 2, ERROR_HEADER: "RetryableError: 503"}
    assert copy.body == message.body and copy.message_id == "e-1"
    assert message.outcome == "ack" and _count(registry, "retry") == 1


async def test_a_dead_letter_carries_the_reason_then_the_message_is_acked() -> None:
    publisher, registry = FakePublisher(), CollectorRegistry()
    message = _message()
    await _settler(publisher, registry).settle(message.incoming, PermanentError("no"), 1, "e-1")
    ((exchange, queue, copy),) = publisher.sent
    assert (exchange, queue) == (DEAD_EXCHANGE, QUEUE)
    headers = copy.headers or {}
    assert headers[REASON_HEADER] == "permanent error" and headers[ERROR_HEADER] == "PermanentError: no"
    assert headers["x-kotc-queue"] == QUEUE and headers["x-kotc-routing-key"] == "x"
    assert message.outcome == "ack" and _count(registry, "dead") == 1


async def test_when_the_copy_cannot_be_published_the_broker_keeps_the_message() -> None:
    publisher, registry = FakePublisher(failing=True), CollectorRegistry()
    settler = _settler(publisher, registry)
    dead, retried = _message(), _message()
    await settler.settle(dead.incoming, PermanentError("no"), 1, "e-1")
    assert dead.outcome == "nack"  # rejected: the queue's own dead-lettering keeps it
    await settler.settle(retried.incoming, RetryableError("503"), 1, "e-1")
    assert retried.outcome == "requeue"  # after the delay (0 s here), never a hot loop
    assert _count(registry, "requeue") == 1 and _count(registry, "dead") == 0
