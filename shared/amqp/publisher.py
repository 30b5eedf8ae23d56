"""Confirmed, mandatory, time-bounded publishing of CloudEvents (docs/architecture.md §4)."""

from __future__ import annotations

import asyncio
import logging

import aio_pika
import aiormq
from aio_pika.abc import AbstractChannel, AbstractExchange

from shared.amqp.connection import AmqpConnection
from shared.amqp.messages import to_message
from shared.amqp.topology import EXCHANGE
from shared.dependencies import RABBITMQ, DependencyUnavailable
from shared.events import CloudEvent

log = logging.getLogger(__name__)

__all__ = ["PublishError", "PublishUnavailable", "Publisher", "to_message"]


class PublishError(Exception):
    """The broker did not confirm the message (nack, unroutable, timeout or connection loss)."""


class PublishUnavailable(PublishError, DependencyUnavailable):
    """No confirm because the broker is unreachable or silent (not a refusal of this message)."""

    dependency = RABBITMQ


class Publisher:
    """Publishes on its own confirm channel; returns only once the broker has confirmed."""

    def __init__(self, connection: AmqpConnection, *, timeout: float = 10.0) -> None:
        self._connection = connection
        self._timeout = timeout
        self._channel: AbstractChannel | None = None
        self._exchange: AbstractExchange | None = None

    async def start(self) -> None:
        self._channel = await self._connection.channel(on_return_raises=True)
        self._exchange = await self._channel.get_exchange(EXCHANGE, ensure=False)

    @property
    def ready(self) -> bool:
        """The confirm channel is open (aio-pika reopens it after a reconnect)."""
        return self._channel is not None and not self._channel.is_closed

    async def publish(self, event: CloudEvent) -> None:
        await self.publish_message(to_message(event), event.routing_key)

    async def publish_message(
        self, message: aio_pika.Message, routing_key: str, *, exchange: str | None = None
    ) -> None:
        """Publish to the events exchange, or to ``exchange`` ("" = default exchange, i.e. a queue)."""
        if self._channel is None or self._exchange is None:
            raise PublishUnavailable("publisher not started")
        target = (
            self._exchange
            if exchange is None
            else (
                self._channel.default_exchange
                if exchange == ""
                else await self._channel.get_exchange(exchange, ensure=False)
            )
        )
        try:
            result = await target.publish(message, routing_key, mandatory=True, timeout=self._timeout)
        except (aio_pika.exceptions.DeliveryError, aio_pika.exceptions.PublishError) as exc:
            raise PublishError(f"not routed or refused: {routing_key}: {exc!r}") from exc
        except TimeoutError as exc:
            raise PublishUnavailable(f"no confirm within {self._timeout}s for {routing_key}") from exc
        except (
            aio_pika.exceptions.AMQPError,
            aiormq.exceptions.AMQPError,
            ConnectionError,
            RuntimeError,
        ) as exc:
            raise PublishUnavailable(f"broker connection problem publishing {routing_key}: {exc!r}") from exc
        except asyncio.CancelledError:
            raise
        if result is not None and not isinstance(result, aiormq.spec.Basic.Ack):
            raise PublishError(f"broker refused {routing_key}: {result!r}")
