"""Settling a message: ack, retry through a delay queue, or dead letter with the reason.

:func:`verdict` is the one mapping of the error hierarchy (:mod:`shared.amqp.consuming.errors`,
``shared.dependencies.never_succeeds``) to an AMQP outcome; :class:`Settler` carries it out. Every
outcome acks the delivery only once its copy (retry, dead letter) is confirmed by the broker, so a
crash in between redelivers the message instead of losing it.

Attempts are counted from the broker's own ``x-death`` record of our delay queues, never from what
the message says about itself (:func:`attempts_of`).
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Literal

import pydantic
from aio_pika.abc import AbstractIncomingMessage

from shared.amqp.consuming.errors import InvalidMessage, PermanentError, describe
from shared.amqp.consuming.metrics import ConsumerMetrics
from shared.amqp.messages import persistent_copy
from shared.amqp.publisher import Publisher, PublishError
from shared.amqp.topology import DEAD_EXCHANGE, Topology
from shared.dependencies import never_succeeds

log = logging.getLogger(__name__)

ATTEMPT_HEADER = "x-kotc-attempt"
REASON_HEADER = "x-kotc-dead-reason"
ERROR_HEADER = "x-kotc-error"


@dataclass(frozen=True)
class Verdict:
    action: Literal["ack", "retry", "dead"]
    reason: str = ""


ACK = Verdict("ack")


def verdict(error: Exception | None, attempt: int, max_attempts: int) -> Verdict:
    """What a handler's result means for the message on its ``attempt`` (1-based)."""
    if error is None:
        return ACK
    if isinstance(error, InvalidMessage):
        return Verdict("dead", error.reason)
    if isinstance(error, PermanentError | pydantic.ValidationError):
        return Verdict("dead", "permanent error")
    if (why := never_succeeds(error)) is not None:
        return Verdict("dead", f"can never succeed: {why}")
    if attempt >= max_attempts:
        return Verdict("dead", f"gave up after {attempt} attempts")
    return Verdict("retry")


class Settler:
    """Carries out a :class:`Verdict` on one queue's deliveries and counts it in
    ``kotc_messages_total{queue, outcome}``."""

    def __init__(
        self,
        publisher: Publisher,
        queue: str,
        *,
        topology: Topology,
        metrics: ConsumerMetrics,
        max_attempts: int,
    ) -> None:
        self._publisher = publisher
        self._queue = queue
        self._topology = topology
        self._metrics = metrics
        self._max_attempts = max_attempts

    def count(self, outcome: str) -> None:
        self._metrics.outcomes.labels(self._queue, outcome).inc()

    async def settle(
        self, message: AbstractIncomingMessage, error: Exception | None, attempt: int, event_id: str
    ) -> None:
        decided = verdict(error, attempt, self._max_attempts)
        if error is None:
            await self.ack(message)
        elif decided.action == "dead":
            await self.dead_letter(message, decided.reason, error, attempt, event_id)
        else:
            await self.retry(message, error, attempt, event_id)

    async def ack(self, message: AbstractIncomingMessage, outcome: str = "ack") -> None:
        await message.ack()
        self.count(outcome)

    async def retry(
        self, message: AbstractIncomingMessage, exc: Exception, attempt: int, event_id: str
    ) -> None:
        retry_queue, delay = self._topology.retry_queue(self._queue, attempt)
        log.warning(
            "handler failed, retrying in %ss",
            delay,
            extra={
                "queue": self._queue,
                "event_id": event_id,
                "type": message.type,
                "attempt": attempt,
                "error": describe(exc),
            },
        )
        copy = persistent_copy(message, {ATTEMPT_HEADER: attempt, ERROR_HEADER: describe(exc)[:1000]})
        try:
            await self._publisher.publish_message(copy, retry_queue, exchange="")
        except PublishError:
            # Hold the message for the intended delay before requeueing it: an immediate requeue
            # would be a hot loop that burns the queue's delivery limit in milliseconds.
            log.exception(
                "could not schedule retry; requeueing after the delay", extra={"queue": self._queue}
            )
            await asyncio.sleep(delay)
            await message.nack(requeue=True)
            self.count("requeue")
            return
        await self.ack(message, "retry")

    async def dead_letter(
        self,
        message: AbstractIncomingMessage,
        reason: str,
        exc: BaseException,
        attempt: int,
        event_id: str | None = None,
    ) -> None:
        log.error(
            "dead-lettering message: %s",
            reason,
            extra={
                "queue": self._queue,
                "event_id": event_id or message.message_id,
                "type": message.type,
                "attempt": attempt,
                "error": describe(exc),
            },
        )
        copy = persistent_copy(
            message,
            {
                REASON_HEADER: reason,
                ERROR_HEADER: describe(exc)[:2000],
                ATTEMPT_HEADER: attempt,
                "x-kotc-queue": self._queue,
                "x-kotc-routing-key": message.routing_key or "",
            },
        )
        try:
            await self._publisher.publish_message(copy, self._queue, exchange=DEAD_EXCHANGE)
        except PublishError:
            # The broker's own dead-lettering still keeps it, without our reason header.
            log.exception("could not publish dead letter; rejecting", extra={"queue": self._queue})
            await message.reject(requeue=False)
            return
        await self.ack(message, "dead")


def attempts_of(message: AbstractIncomingMessage, queue: str) -> int:
    """Failed attempts so far: how often the broker expired this message out of our delay queues.

    ``x-death`` is written by the broker each time it dead-letters the message; our own
    ``x-kotc-attempt`` header is informational only, so a publisher cannot make a message dead-letter
    early by claiming it was tried 999 times.
    """
    deaths = (message.headers or {}).get("x-death")
    if not isinstance(deaths, list | tuple):
        return 0
    return sum(_expired_from(death, f"{queue}.retry.") for death in deaths)


def _expired_from(death: object, prefix: str) -> int:
    """The count of one ``x-death`` entry if it records expiries from one of our delay queues."""
    if not isinstance(death, dict):
        return 0
    name, reason, count = death.get("queue"), death.get("reason"), death.get("count", 0)
    name = name.decode() if isinstance(name, bytes) else name
    reason = reason.decode() if isinstance(reason, bytes) else reason
    if isinstance(name, str) and name.startswith(prefix) and reason == "expired":
        return count if isinstance(count, int) and count > 0 else 0
    return 0
