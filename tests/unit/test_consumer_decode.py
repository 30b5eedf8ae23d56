"""Decoding a delivery once (shared/amqp/consuming/decode.py), alone and inside the consumer (fakes).

Against real RabbitMQ: tests/integration/test_consumer_faults.py (invalid data dead-lettered).
"""

from __future__ import annotations

import asyncio
from typing import cast

import pytest
from prometheus_client import CollectorRegistry

from shared.amqp import AmqpConnection, Consumer, DataModel, DataModels, Delivery
from shared.amqp.consumer import REASON_HEADER, ConsumerMetrics
from shared.amqp.consuming.decode import decode_with, envelope
from shared.amqp.consuming.errors import InvalidMessage
from shared.amqp.topology import DEAD_EXCHANGE
from shared.events import (
    CloudEvent,
    InstanceData,
    InstanceRef,
    RoutingKeys,
    ServiceEventData,
    ServiceParameters,
)
from tests.unit.amqp_fakes import FakeMessage, FakePublisher

QUEUE = "github-linker.events"
MODELS: DataModels[ServiceEventData | InstanceData] = DataModels(
    {"service.kabanero.*": ServiceEventData, RoutingKeys.INSTANCE_CHANGED: InstanceData}
)


def service(revision: object = 1, namespace: str = "ns") -> CloudEvent:
    data = ServiceEventData(
        kind="kabanero",
        instance_id="sid",
        service_id="kabanero",
        parameters=ServiceParameters(cluster="c", namespace=namespace),
        revision=1,
    ).model_dump(mode="json")
    return CloudEvent(
        source="test", type="io.kabanero.otc.service.kabanero.bound", data={**data, "revision": revision}
    )


def test_the_routing_key_chooses_the_model_and_an_unknown_key_has_no_data() -> None:
    got = MODELS(service())
    assert isinstance(got.data, ServiceEventData) and got.data.parameters.namespace == "ns"
    assert got.routing_key == "service.kabanero.bound" and got.id == got.event.id
    instance = CloudEvent.for_data(
        RoutingKeys.INSTANCE_CHANGED,
        InstanceData(instance=InstanceRef(cluster="c", namespace="n"), revision=2, content_hash="h"),
        source="t",
    )
    assert isinstance(MODELS(instance).data, InstanceData)
    # A pattern's "*" is one word: the Kabanero Events family is not the Kabanero one.
    other = CloudEvent(source="t", type="io.kabanero.otc.service.kabanero-events.bound", data={})
    assert MODELS(other) == Delivery(other, None)
    assert MODELS.model_for("service.kabanero.bound.x") is None


def test_invalid_data_is_an_invalid_message_naming_the_field() -> None:
    with pytest.raises(InvalidMessage) as caught:
        MODELS(service(revision="not a number"))
    assert caught.value.reason.startswith("invalid ServiceEventData: data.revision: ")
    with pytest.raises(InvalidMessage) as caught:
        DataModel(ServiceEventData)(CloudEvent(source="t", type="x", data={}))
    assert caught.value.reason == (
        "invalid ServiceEventData: data.kind: Field required; data.instance_id: Field required; "
        "data.service_id: Field required (+2 more)"
    )


def test_whatever_a_decoder_of_ones_own_raises_is_an_invalid_message() -> None:
    event = service()

    def broken(e: CloudEvent) -> object:
        return e.data["no such field"]

    def strict(e: CloudEvent) -> object:
        return ServiceEventData.model_validate({**e.data, "kind": "nope"})

    with pytest.raises(InvalidMessage) as caught:
        decode_with(broken, event)
    assert caught.value.reason == "cannot decode" and isinstance(caught.value.error, KeyError)
    with pytest.raises(InvalidMessage) as caught:
        decode_with(strict, event)
    assert caught.value.reason.startswith("invalid data: data.kind: Input should be")
    with pytest.raises(InvalidMessage) as caught:
        decode_with(MODELS, service(revision=-1))
    assert caught.value.reason.startswith("invalid ServiceEventData: ")  # its own reason, kept


def test_an_invalid_envelope_is_an_invalid_message() -> None:
    with pytest.raises(InvalidMessage) as caught:
        envelope(b"not a CloudEvent")
    assert caught.value.reason == "invalid CloudEvent envelope"
    assert envelope(service().model_dump_json().encode()).type.endswith(".bound")


class Counting:
    """A decoder that counts its calls; key_of, revision_of and the handler record what they got."""

    def __init__(self) -> None:
        self.decoded = 0
        self.seen: list[tuple[str, object]] = []

    def decode(self, event: CloudEvent) -> Delivery[ServiceEventData]:
        self.decoded += 1
        return DataModel(ServiceEventData)(event)

    def key_of(self, d: Delivery[ServiceEventData]) -> str:
        self.seen.append(("key", d))
        return d.data.scope

    def revision_of(self, d: Delivery[ServiceEventData]) -> tuple[str, int] | None:
        self.seen.append(("revision", d))
        return None

    async def handle(self, d: Delivery[ServiceEventData]) -> None:
        self.seen.append(("handler", d))


def consumer(c: Counting, publisher: FakePublisher) -> Consumer[Delivery[ServiceEventData]]:
    return Consumer(
        cast(AmqpConnection, None),
        publisher.publisher,
        QUEUE,
        c.handle,
        metrics=ConsumerMetrics(CollectorRegistry()),
        key_of=c.key_of,
        revision_of=c.revision_of,
        decode=c.decode,
    )


async def test_the_consumer_decodes_once_and_hands_the_same_object_to_key_revision_and_handler() -> None:
    c, publisher = Counting(), FakePublisher()
    message = FakeMessage(service())
    await consumer(c, publisher)._on_message(message.incoming)
    assert message.outcome == "ack" and c.decoded == 1
    assert [what for what, _ in c.seen] == ["key", "revision", "handler"]
    assert len({id(d) for _, d in c.seen}) == 1  # one decoded object, passed three times
    assert publisher.sent == []


async def test_invalid_data_is_dead_lettered_at_once_with_the_validation_error_as_reason() -> None:
    c, publisher = Counting(), FakePublisher()
    message = FakeMessage(service(revision=-1))
    await consumer(c, publisher)._on_message(message.incoming)
    assert message.outcome == "ack" and c.decoded == 1 and c.seen == []  # no key, no handler
    ((exchange, routing_key, dead),) = publisher.sent
    assert (exchange, routing_key) == (DEAD_EXCHANGE, QUEUE)
    reason = str((dead.headers or {})[REASON_HEADER])
    assert reason.startswith("invalid ServiceEventData: data.revision: Input should be greater than")


async def test_a_plain_cloudevent_consumer_still_gets_the_event() -> None:
    """Without a decoder (otc-writer until it adopts one) handler and key_of take the CloudEvent."""
    got: list[CloudEvent] = []

    async def handle(event: CloudEvent) -> None:
        got.append(event)

    publisher = FakePublisher()
    plain = Consumer(
        cast(AmqpConnection, None),
        publisher.publisher,
        QUEUE,
        handle,
        metrics=ConsumerMetrics(CollectorRegistry()),
        key_of=lambda e: e.id,
    )
    event = service()
    await asyncio.wait_for(plain._on_message(FakeMessage(event).incoming), 5)
    assert got == [event]
