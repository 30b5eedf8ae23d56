"""Consumer with an explicit ack policy (ARCHITECTURE §4).

- success: ack after the handler returned (its effect is durable);
- :class:`PermanentError`, an invalid envelope or data model: dead-letter now, reason in headers;
- any other exception (:class:`RetryableError` included): republish to a delay queue with the
  attempt count, then ack; after ``max_attempts`` dead-letter with the last error;
- cancellation (shutdown, lost channel): neither ack nor reject; the broker redelivers. A
  ``CancelledError`` the handler raises while its task is not being cancelled is a failure (retry);
- a ``key_of`` that raises: dead-letter (it depends on the message only);
- the retry publish fails: requeue after the intended delay (never a hot loop).

Handlers run concurrently up to ``prefetch``; messages with the same ``key_of`` value run one after
the other in delivery order, so one slow key never blocks the others and one key stays ordered.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import aio_pika
import pydantic
from aio_pika.abc import AbstractIncomingMessage, AbstractQueue
from prometheus_client import CollectorRegistry, Counter, Histogram

from shared.amqp.connection import AmqpConnection
from shared.amqp.publisher import Publisher, PublishError
from shared.amqp.topology import DEAD_EXCHANGE, Topology
from shared.events import CloudEvent
from shared.keyed_locks import KeyedLocks

log = logging.getLogger(__name__)

ATTEMPT_HEADER = "x-kotc-attempt"
REASON_HEADER = "x-kotc-dead-reason"
ERROR_HEADER = "x-kotc-error"

Handler = Callable[[CloudEvent], Awaitable[None]]


class RetryableError(Exception):
    """A transient failure: try again later."""


class PermanentError(Exception):
    """The message can never succeed as it is: dead-letter it with this reason."""


class ConsumerMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.outcomes = Counter(
            "kotc_messages_total",
            "Consumed messages by queue and outcome",
            ["queue", "outcome"],
            registry=registry,
        )
        self.duration = Histogram("kotc_handler_seconds", "Handler duration", ["queue"], registry=registry)


class Consumer:
    def __init__(
        self,
        connection: AmqpConnection,
        publisher: Publisher,
        queue: str,
        handler: Handler,
        *,
        metrics: ConsumerMetrics,
        topology: Topology | None = None,
        prefetch: int = 16,
        max_attempts: int = 5,
        key_of: Callable[[CloudEvent], str] | None = None,
        drain_timeout: float = 10.0,
    ) -> None:
        self._connection = connection
        self._publisher = publisher
        self.queue_name = queue
        self._handler = handler
        self._metrics = metrics
        self._topology = topology or Topology()
        self._prefetch = prefetch
        self._max_attempts = max_attempts
        self._key_of = key_of
        self._drain_timeout = drain_timeout
        self._inflight: set[asyncio.Task[None]] = set()
        self._locks = KeyedLocks()
        self.last_delivery: float | None = None
        self.consuming = False

    async def run(self) -> None:
        """Consume until cancelled; on cancel stop taking messages and let in-flight ones finish."""
        channel = await self._connection.channel(prefetch=self._prefetch)
        queue: AbstractQueue = await channel.get_queue(self.queue_name, ensure=True)
        tag = await queue.consume(self._on_message)
        self.consuming = True
        log.info("consuming", extra={"queue": self.queue_name, "prefetch": self._prefetch})
        try:
            await asyncio.Event().wait()
        finally:
            self.consuming = False
            try:
                await asyncio.shield(queue.cancel(tag))
                if self._inflight:
                    await asyncio.wait(set(self._inflight), timeout=self._drain_timeout)
            except Exception:
                log.warning("consumer drain incomplete", extra={"queue": self.queue_name}, exc_info=True)
            for task in self._inflight:
                task.cancel()
            await channel.close()

    async def _on_message(self, message: AbstractIncomingMessage) -> None:
        self.last_delivery = asyncio.get_running_loop().time()
        task = asyncio.current_task()
        if task is not None:
            self._inflight.add(task)
        try:
            await self._process(message)
        finally:
            if task is not None:
                self._inflight.discard(task)

    async def _process(self, message: AbstractIncomingMessage) -> None:
        attempt = _attempt_of(message) + 1
        try:
            event = CloudEvent.model_validate_json(message.body)
        except pydantic.ValidationError as exc:
            await self._dead_letter(message, "invalid CloudEvent envelope", exc, attempt)
            return
        try:
            key = self._key_of(event) if self._key_of else None
        except Exception as exc:  # deterministic on the message: retrying cannot help
            await self._dead_letter(message, "no serialization key", exc, attempt, event)
            return
        lock = self._locks[key] if key is not None else None
        started = asyncio.get_running_loop().time()
        try:
            try:
                if lock is not None:
                    async with lock:
                        await self._handler(event)
                else:
                    await self._handler(event)
            except asyncio.CancelledError as exc:
                task = asyncio.current_task()
                if task is None or task.cancelling():
                    raise  # shutdown or lost channel: neither ack nor reject
                # The handler leaked a CancelledError of its own (e.g. from a future someone else
                # cancelled); left alone the message would stay unacked and hold a prefetch slot.
                raise RetryableError(f"handler raised {_describe(exc)}") from exc
        except asyncio.CancelledError:
            raise
        except (PermanentError, pydantic.ValidationError) as exc:
            await self._dead_letter(message, "permanent error", exc, attempt, event)
        except Exception as exc:
            if attempt >= self._max_attempts:
                await self._dead_letter(message, f"gave up after {attempt} attempts", exc, attempt, event)
            else:
                await self._retry(message, exc, attempt, event)
        else:
            await message.ack()
            self._metrics.outcomes.labels(self.queue_name, "ack").inc()
        finally:
            self._metrics.duration.labels(self.queue_name).observe(
                asyncio.get_running_loop().time() - started
            )

    @staticmethod
    def _copy(message: AbstractIncomingMessage, headers: dict[str, Any]) -> aio_pika.Message:
        return aio_pika.Message(
            body=message.body,
            content_type=message.content_type,
            message_id=message.message_id,
            type=message.type,
            timestamp=message.timestamp,
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            headers={**dict(message.headers or {}), **headers},
        )

    async def _retry(
        self, message: AbstractIncomingMessage, exc: Exception, attempt: int, event: CloudEvent
    ) -> None:
        retry_queue, delay = self._topology.retry_queue(self.queue_name, attempt)
        log.warning(
            "handler failed, retrying in %ss",
            delay,
            extra={
                "queue": self.queue_name,
                "event_id": event.id,
                "type": event.type,
                "attempt": attempt,
                "error": _describe(exc),
            },
        )
        copy = self._copy(message, {ATTEMPT_HEADER: attempt, ERROR_HEADER: _describe(exc)[:1000]})
        try:
            await self._publisher.publish_message(copy, retry_queue, exchange="")
        except PublishError:
            # Hold the message for the intended delay before requeueing it: an immediate requeue
            # would be a hot loop that burns the queue's delivery limit in milliseconds.
            log.exception(
                "could not schedule retry; requeueing after the delay", extra={"queue": self.queue_name}
            )
            await asyncio.sleep(delay)
            await message.nack(requeue=True)
            self._metrics.outcomes.labels(self.queue_name, "requeue").inc()
            return
        await message.ack()
        self._metrics.outcomes.labels(self.queue_name, "retry").inc()

    async def _dead_letter(
        self,
        message: AbstractIncomingMessage,
        reason: str,
        exc: Exception,
        attempt: int,
        event: CloudEvent | None = None,
    ) -> None:
        log.error(
            "dead-lettering message: %s",
            reason,
            extra={
                "queue": self.queue_name,
                "event_id": event.id if event else message.message_id,
                "type": message.type,
                "attempt": attempt,
                "error": _describe(exc),
            },
        )
        copy = self._copy(
            message,
            {
                REASON_HEADER: reason,
                ERROR_HEADER: _describe(exc)[:2000],
                ATTEMPT_HEADER: attempt,
                "x-kotc-queue": self.queue_name,
                "x-kotc-routing-key": message.routing_key or "",
            },
        )
        try:
            await self._publisher.publish_message(copy, self.queue_name, exchange=DEAD_EXCHANGE)
        except PublishError:
            # The broker's own dead-lettering still keeps it, without our reason header.
            log.exception("could not publish dead letter; rejecting", extra={"queue": self.queue_name})
            await message.reject(requeue=False)
            return
        await message.ack()
        self._metrics.outcomes.labels(self.queue_name, "dead").inc()


def _attempt_of(message: AbstractIncomingMessage) -> int:
    """Failed attempts so far, from our header; a garbled header counts as none."""
    raw = (message.headers or {}).get(ATTEMPT_HEADER, 0)
    try:
        return max(0, int(raw)) if isinstance(raw, int | str | bytes) else 0
    except ValueError:
        return 0


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"
