"""Consumer with an explicit ack policy (docs/architecture.md §4).

- success: ack after the handler returned (its effect is durable);
- a dependency that is down (``shared.dependencies.unavailable_dependency``: OTC's circuit, IAM,
  MongoDB, RabbitMQ publishing): the message is held, unacked, and no attempt is counted; the
  consumer stops handing messages to the handler (the held ones keep the prefetch full, so the broker
  sends no more) and a probe of that dependency runs until it answers; then the held messages are
  retried in their order. An outage of any length spends no attempts and dead-letters nothing;
- :class:`PermanentError`, an invalid envelope or data model, a value MongoDB can never store: dead-
  letter now, reason in headers;
- any other exception (:class:`RetryableError` included): republish to a delay queue, then ack; after
  ``max_attempts`` dead-letter with the last error. Attempts are counted from the broker's own
  ``x-death`` record of our delay queues, never from what the message says about itself;
- cancellation (shutdown, lost channel): neither ack nor reject; the broker redelivers. A
  ``CancelledError`` the handler raises while its task is not being cancelled is a failure (retry);
- a ``key_of`` that raises: dead-letter (it depends on the message only);
- the retry publish fails: requeue after the intended delay (never a hot loop).

Handlers run concurrently up to ``prefetch``; messages with the same ``key_of`` value run one after
the other in delivery order, so one slow key never blocks the others and one key stays ordered (a
held message keeps its key's lock, so a later message of the key never overtakes it).

A message is held at most as long as the broker's ``consumer_timeout`` (30 min by default): past it
the broker closes the channel and returns the held messages to the head of their queue, which counts
as one delivery towards the queue's ``x-delivery-limit``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Collection, Mapping
from typing import Any

import aio_pika
import pydantic
from aio_pika.abc import AbstractIncomingMessage, AbstractQueue
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from shared.amqp.connection import AmqpConnection
from shared.amqp.publisher import Publisher, PublishError
from shared.amqp.topology import DEAD_EXCHANGE, Topology
from shared.dependencies import Probe, never_succeeds, unavailable_dependency
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
        self.paused = Gauge(
            "kotc_consumer_paused",
            "1 while the consumer holds its messages because a dependency is down",
            ["queue", "dependency"],
            registry=registry,
        )
        self.outages = Counter(
            "kotc_consumer_outages_total",
            "Times the consumer paused for an unavailable dependency",
            ["queue", "dependency"],
            registry=registry,
        )


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
        probes: Mapping[str, Probe] | None = None,
        probe_interval_s: float = 0.5,
        probe_max_interval_s: float = 3.0,
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
        self._probes = dict(probes or {})
        self._probe_interval = probe_interval_s
        self._probe_max_interval = probe_max_interval_s
        self._available = asyncio.Event()
        self._available.set()
        self._prober: asyncio.Task[None] | None = None
        self.outage: str | None = None
        """The dependency the consumer is waiting for, None while it consumes normally."""
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
            # With RabbitMQ gone there is nothing to cancel or close (the broker dropped both), and
            # a robust channel would wait for a reconnect that shutdown is not going to wait for.
            connected = self._connection.ready
            try:
                if connected:
                    await asyncio.shield(queue.cancel(tag))
                # Messages held for a dependency that is down do no work: waiting for them would only
                # spend the shutdown deadline. They go back unacked and the broker redelivers them.
                if self._inflight and self.outage is None:
                    await asyncio.wait(set(self._inflight), timeout=self._drain_timeout)
            except Exception:
                log.warning("consumer drain incomplete", extra={"queue": self.queue_name}, exc_info=True)
            finally:
                # Also when the drain itself is cancelled (the runtime's deadline): nothing of this
                # consumer may outlive it.
                await self._cancel_leftovers()
                if connected:
                    await channel.close()

    async def _cancel_leftovers(self) -> None:
        tasks = [*self._inflight, *([self._prober] if self._prober is not None else [])]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=1.0)

    async def readiness(self) -> tuple[bool, str]:
        """Ready while consuming from a queue that exists (a deleted queue delivers nothing, forever).

        Checked with a passive declaration on a short-lived channel (a missing queue closes the
        channel it is asked on, so never the consuming one).
        """
        if not self.consuming:
            return False, f"not consuming {self.queue_name}"
        if not self._connection.ready:
            return False, "RabbitMQ disconnected"
        try:
            channel = await self._connection.connection.channel(publisher_confirms=False)
        except Exception as exc:
            return False, f"no channel: {type(exc).__name__}"
        try:
            await channel.declare_queue(self.queue_name, passive=True)
        except aio_pika.exceptions.ChannelClosed:
            return False, f"queue {self.queue_name} does not exist"
        except Exception as exc:
            return False, f"cannot check queue {self.queue_name}: {type(exc).__name__}"
        finally:
            with contextlib.suppress(Exception):
                await channel.close()
        return True, ""

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
        attempt = _attempts_of(message, self.queue_name) + 1
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
        lock = self._locks[key] if key is not None else contextlib.nullcontext()
        async with lock:
            error = await self._handle_held(event)
        if error is None:
            await message.ack()
            self._metrics.outcomes.labels(self.queue_name, "ack").inc()
        elif isinstance(error, PermanentError | pydantic.ValidationError):
            await self._dead_letter(message, "permanent error", error, attempt, event)
        elif (why := never_succeeds(error)) is not None:
            await self._dead_letter(message, f"can never succeed: {why}", error, attempt, event)
        elif attempt >= self._max_attempts:
            await self._dead_letter(message, f"gave up after {attempt} attempts", error, attempt, event)
        else:
            await self._retry(message, error, attempt, event)

    async def _handle_held(self, event: CloudEvent) -> Exception | None:
        """Run the handler; while a dependency is down, wait for it and run again (no attempt spent)."""
        while True:
            await self._available.wait()
            error = await self._handle_once(event)
            dependency = unavailable_dependency(error) if error is not None else None
            if dependency is None:
                return error
            assert error is not None
            self._pause(dependency, error, event)

    async def _handle_once(self, event: CloudEvent) -> Exception | None:
        started = asyncio.get_running_loop().time()
        try:
            await self._handler(event)
        except asyncio.CancelledError as exc:
            task = asyncio.current_task()
            if task is None or task.cancelling():
                raise  # shutdown or lost channel: neither ack nor reject
            # The handler leaked a CancelledError of its own (e.g. from a future someone else
            # cancelled); left alone the message would stay unacked and hold a prefetch slot.
            return RetryableError(f"handler raised {_describe(exc)}")
        except Exception as exc:
            return exc
        finally:
            self._metrics.duration.labels(self.queue_name).observe(
                asyncio.get_running_loop().time() - started
            )
        return None

    def _pause(self, dependency: str, error: Exception, event: CloudEvent) -> None:
        """Stop handing messages to the handler until ``dependency`` answers a probe again."""
        if self.outage is not None:
            return
        self.outage = dependency
        self._available.clear()
        self._metrics.paused.labels(self.queue_name, dependency).set(1)
        self._metrics.outages.labels(self.queue_name, dependency).inc()
        log.warning(
            "%s unavailable: holding messages until it answers again",
            dependency,
            extra={
                "queue": self.queue_name,
                "dependency": dependency,
                "event_id": event.id,
                "error": _describe(error)[:500],
            },
        )
        self._prober = asyncio.create_task(
            self._probe_until_up(dependency), name=f"probe:{self.queue_name}:{dependency}"
        )

    async def _probe_until_up(self, dependency: str) -> None:
        """Probe with growing intervals; without a probe the held messages' own retry is the probe."""
        loop = asyncio.get_running_loop()
        since = loop.time()
        probe = self._probes.get(dependency)
        delay = self._probe_interval
        try:
            while True:
                await asyncio.sleep(delay)
                if probe is None:
                    break
                try:
                    if await asyncio.wait_for(probe(), timeout=10.0):
                        break
                except Exception:
                    log.debug("probe of %s failed", dependency, exc_info=True)
                delay = min(delay * 1.5, self._probe_max_interval)
        finally:
            self.outage = None
            self._metrics.paused.labels(self.queue_name, dependency).set(0)
            self._available.set()
        log.info(
            "%s answers again: resuming",
            dependency,
            extra={
                "queue": self.queue_name,
                "dependency": dependency,
                "held_s": round(loop.time() - since, 1),
            },
        )

    @staticmethod
    def _copy(message: AbstractIncomingMessage, headers: dict[str, Any]) -> aio_pika.Message:
        return persistent_copy(message, headers)

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


def _attempts_of(message: AbstractIncomingMessage, queue: str) -> int:
    """Failed attempts so far: how often the broker expired this message out of our delay queues.

    ``x-death`` is written by the broker each time it dead-letters the message; our own
    ``x-kotc-attempt`` header is informational only, so a publisher cannot make a message dead-letter
    early by claiming it was tried 999 times.
    """
    deaths = (message.headers or {}).get("x-death")
    if not isinstance(deaths, list | tuple):
        return 0
    prefix = f"{queue}.retry."
    total = 0
    for death in deaths:
        if not isinstance(death, dict):
            continue
        name, reason, count = death.get("queue"), death.get("reason"), death.get("count", 0)
        name = name.decode() if isinstance(name, bytes) else name
        reason = reason.decode() if isinstance(reason, bytes) else reason
        if isinstance(name, str) and name.startswith(prefix) and reason == "expired":
            total += count if isinstance(count, int) and count > 0 else 0
    return total


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"
