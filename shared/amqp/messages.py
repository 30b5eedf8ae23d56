"""The AMQP message of a CloudEvent, and persistent copies of a delivered one: built here only.

Every path that puts a CloudEvent on the wire (the publisher, the watcher's resync reply, the CLI's
resync request) and every copy of a delivery (a retry, a dead letter, a hold-limit requeue, a replay
of a dead letter) goes through these two functions, so the properties a consumer relies on
(``message_id`` = event id, ``type``, content type, persistence) are set the same way everywhere.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

import aio_pika
from aio_pika.abc import AbstractIncomingMessage

from shared.events import CONTENT_TYPE, CloudEvent


def to_message(
    event: CloudEvent,
    headers: dict[str, Any] | None = None,
    *,
    reply_to: str | None = None,
    correlation_id: str | None = None,
) -> aio_pika.Message:
    """``event`` in structured mode, persistent, with ``message_id`` and ``type`` from the event
    (the consumers' logs and the CLI's dead-letter listing read them without parsing the body)."""
    return aio_pika.Message(
        body=event.model_dump_json(exclude_none=True).encode(),
        content_type=CONTENT_TYPE,
        message_id=event.id,
        type=event.type,
        timestamp=event.time,
        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
        headers=headers or {},
        reply_to=reply_to,
        correlation_id=correlation_id,
    )


def persistent_copy(
    message: AbstractIncomingMessage, headers: dict[str, Any], *, drop: Collection[str] = ()
) -> aio_pika.Message:
    """A persistent copy of ``message``: its headers without ``drop``, then ``headers`` merged in
    (a retry, a dead letter, a replay of one)."""
    kept = {k: v for k, v in dict(message.headers or {}).items() if k not in drop}
    return aio_pika.Message(
        body=message.body,
        content_type=message.content_type,
        message_id=message.message_id,
        type=message.type,
        timestamp=message.timestamp,
        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
        headers={**kept, **headers},
    )
