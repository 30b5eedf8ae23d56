"""shared/amqp/messages.py: the one CloudEvent-to-AMQP function (publisher, resync request and
reply) and the persistent copy (retry, dead letter, hold limit, dead-letter replay)."""

from __future__ import annotations

import aio_pika

from shared.amqp.messages import persistent_copy, to_message
from shared.events import CONTENT_TYPE, CloudEvent
from tests.unit.amqp_fakes import FakeMessage


def test_a_cloudevent_becomes_a_persistent_structured_message() -> None:
    event = CloudEvent(id="e-1", source="/t", type="io.kabanero.otc.control.resync", data={"a": None})
    message = to_message(event, {"h": 1}, reply_to="inbox", correlation_id="c-1")
    assert message.message_id == "e-1" and message.type == event.type
    assert message.content_type == CONTENT_TYPE
    assert message.delivery_mode == aio_pika.DeliveryMode.PERSISTENT
    assert (message.reply_to, message.correlation_id, message.headers) == ("inbox", "c-1", {"h": 1})
    assert CloudEvent.model_validate_json(message.body) == event
    assert b'"subject"' not in message.body  # unset attributes are left out, not null


def test_a_copy_keeps_body_and_headers_except_the_dropped_ones() -> None:
    original = FakeMessage(CloudEvent(id="e-2", source="/t", type="io.kabanero.otc.x"))
    original.headers = {"x-death": [1], "x-kotc-attempt": 3, "keep": "me"}
    copy = persistent_copy(original.incoming, {"new": 1}, drop=("x-kotc-attempt",))
    assert copy.body == original.body and copy.message_id == "e-2"
    assert copy.headers == {"x-death": [1], "keep": "me", "new": 1}
    assert copy.delivery_mode == aio_pika.DeliveryMode.PERSISTENT
