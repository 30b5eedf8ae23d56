"""Fakes of a delivery and of the publisher for the consumer's unit tests (no broker)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, cast

import aio_pika
from aio_pika.abc import AbstractIncomingMessage

from shared.amqp import Publisher, PublishError
from shared.events import CloudEvent


@dataclass
class FakeMessage:
    event: CloudEvent
    headers: dict[str, Any] = field(default_factory=dict)
    outcome: str | None = None
    raw: bytes | None = None
    """A body that is not the event's (junk, or an event whose data is invalid)."""

    @property
    def body(self) -> bytes:
        return self.raw if self.raw is not None else self.event.model_dump_json().encode()

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

    @property
    def incoming(self) -> AbstractIncomingMessage:
        return cast(AbstractIncomingMessage, self)


@dataclass
class FakePublisher:
    sent: list[tuple[str, str, aio_pika.Message]] = field(default_factory=list)
    failing: bool = False
    """Refuse every publish (RabbitMQ publishing down)."""

    async def publish_message(
        self, message: aio_pika.Message, routing_key: str, *, exchange: str = ""
    ) -> None:
        if self.failing:
            raise PublishError("not confirmed")
        self.sent.append((exchange, routing_key, message))

    @property
    def publisher(self) -> Publisher:
        return cast(Publisher, self)
