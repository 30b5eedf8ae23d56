"""Request/reply over RabbitMQ: one CloudEvent out (mandatory, confirmed), the replies back.

The replies come on an exclusive, server-named queue of the caller's (``reply_to``) and are matched
by ``correlation_id``; a request no queue is bound for comes back unroutable (:class:`Unrouted`).
Requests are not acknowledged work, so replies are consumed without acks. A reply that is not a
CloudEvent is counted and dropped, never guessed at.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

import aio_pika
import pydantic
from aio_pika.abc import AbstractIncomingMessage, AbstractRobustConnection

from shared.amqp.publisher import to_message
from shared.amqp.topology import EXCHANGE
from shared.events import CloudEvent


class Unrouted(Exception):
    """No queue is bound for the request's routing key: nobody is there to answer."""


@dataclass
class Replies:
    events: list[CloudEvent] = field(default_factory=list)
    malformed: int = 0
    """Replies with our correlation id that were not CloudEvents (dropped)."""


def request_message(event: CloudEvent, *, reply_to: str, correlation_id: str) -> aio_pika.Message:
    message = to_message(event)
    message.reply_to = reply_to
    message.correlation_id = correlation_id
    return message


async def call(
    conn: AbstractRobustConnection,
    event: CloudEvent,
    *,
    deadline: float,
    enough: Callable[[list[CloudEvent]], bool],
    publish_timeout_s: float = 10.0,
) -> Replies:
    """Publish ``event`` on the events exchange under its routing key, then gather replies until
    ``enough(replies)`` or ``deadline`` (``time.monotonic()``)."""
    channel = await conn.channel(publisher_confirms=True, on_return_raises=True)
    try:
        inbox = await channel.declare_queue("", exclusive=True, auto_delete=True)
        correlation = uuid.uuid4().hex
        got = asyncio.Queue[bytes]()

        async def on_reply(message: AbstractIncomingMessage) -> None:
            if message.correlation_id == correlation:
                await got.put(message.body)

        await inbox.consume(on_reply, no_ack=True)
        exchange = await channel.get_exchange(EXCHANGE, ensure=False)
        try:
            await exchange.publish(
                request_message(event, reply_to=inbox.name, correlation_id=correlation),
                event.routing_key,
                mandatory=True,
                timeout=publish_timeout_s,
            )
        except aio_pika.exceptions.DeliveryError:
            raise Unrouted(event.routing_key) from None
        return await _gather(got, deadline, enough)
    finally:
        await channel.close()


async def _gather(
    got: asyncio.Queue[bytes], deadline: float, enough: Callable[[list[CloudEvent]], bool]
) -> Replies:
    replies = Replies()
    while not enough(replies.events):
        left = deadline - time.monotonic()
        if left <= 0:
            break
        try:
            body = await asyncio.wait_for(got.get(), left)
        except TimeoutError:
            break
        try:
            replies.events.append(CloudEvent.model_validate_json(body))
        except pydantic.ValidationError:
            replies.malformed += 1
    return replies
