"""Consumer with an explicit ack policy (docs/architecture.md §4, docs/design.md "Messaging").

A small composition of one module per policy, in :mod:`shared.amqp.consuming`:

- :mod:`~shared.amqp.consuming.decode`: the envelope and the typed data, read once per delivery;
  what cannot be read is dead-lettered at once with the reason;
- :mod:`~shared.amqp.consuming.lanes`: per-key lanes (``key_of``) and coalescing (``revision_of``);
- :mod:`~shared.amqp.consuming.settle`: ack after the handler returned (its effect is durable),
  retry through the delay queues, dead letter with reason headers;
- :mod:`~shared.amqp.consuming.outage`: a dependency that is down holds the messages and pauses
  the handler until a probe answers, spending no attempt;
- :mod:`~shared.amqp.consuming.hold`: the hold limit, below the broker's ``consumer_timeout``.

This module runs the AMQP subscription and a message's turn: it waits for the head of its lane, a
free handler slot (``concurrency``, default ``prefetch``) and no outage, then runs the handler.
Cancellation (shutdown, lost channel) neither acks nor rejects: the broker redelivers. Shutdown
waits for running handlers only; waiting messages start no more. A ``CancelledError`` the handler
raises while its task is not being cancelled is a failure (retry).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import cast

import aio_pika
from aio_pika.abc import AbstractIncomingMessage, AbstractQueue

from shared.amqp.connection import AmqpConnection
from shared.amqp.consuming.decode import Decoder, Delivery, decode_with, envelope
from shared.amqp.consuming.errors import InvalidMessage, PermanentError, RetryableError, describe
from shared.amqp.consuming.hold import HoldLimit
from shared.amqp.consuming.lanes import Entry, Lanes, Revision, Skip
from shared.amqp.consuming.metrics import ConsumerMetrics
from shared.amqp.consuming.outage import Outage
from shared.amqp.consuming.settle import (
    ATTEMPT_HEADER,
    ERROR_HEADER,
    REASON_HEADER,
    Settler,
    attempts_of,
)
from shared.amqp.messages import persistent_copy
from shared.amqp.publisher import Publisher
from shared.amqp.topology import Topology
from shared.dependencies import Probe, unavailable_dependency
from shared.events import CloudEvent

log = logging.getLogger(__name__)

__all__ = [
    "ATTEMPT_HEADER",
    "ERROR_HEADER",
    "REASON_HEADER",
    "Consumer",
    "ConsumerMetrics",
    "Delivery",
    "Handler",
    "PermanentError",
    "RetryableError",
    "RevisionOf",
    "Skip",
    "persistent_copy",
]

Handler = Callable[[CloudEvent], Awaitable[None]]
"""A handler of plain CloudEvents (a consumer without ``decode``)."""
RevisionOf = Callable[[CloudEvent], Revision | None]
"""(sequence, revision) of a message that carries the whole state of its key, else None."""


def _as_is(event: CloudEvent) -> CloudEvent:
    return event


class Consumer[M = CloudEvent]:
    """Consumes ``queue``; ``handler``, ``key_of`` and ``revision_of`` receive what ``decode`` made
    of each delivery's CloudEvent (without ``decode``: the CloudEvent itself)."""

    def __init__(
        self,
        connection: AmqpConnection,
        publisher: Publisher,
        queue: str,
        handler: Callable[[M], Awaitable[None]],
        *,
        metrics: ConsumerMetrics,
        topology: Topology | None = None,
        prefetch: int = 16,
        max_attempts: int = 5,
        key_of: Callable[[M], str] | None = None,
        drain_timeout: float = 10.0,
        probes: Mapping[str, Probe] | None = None,
        probe_interval_s: float = 0.5,
        probe_max_interval_s: float = 3.0,
        revision_of: Callable[[M], Revision | None] | None = None,
        concurrency: int | None = None,
        hold_limit_s: float = 900.0,
        decode: Decoder[M] | None = None,
    ) -> None:
        self._connection = connection
        self.queue_name = queue
        self._handler = handler
        self._metrics = metrics
        self._prefetch = prefetch
        self._key_of = key_of
        self._revision_of = revision_of if key_of is not None else None
        self._decode = decode if decode is not None else cast(Decoder[M], _as_is)
        self._drain_timeout = drain_timeout
        self._concurrency = concurrency or prefetch
        self._running = 0
        self._stopping = False
        self._inflight: set[asyncio.Task[None]] = set()
        metrics.held.labels(queue).set_function(lambda: len(self._inflight))
        self._lanes = Lanes()
        self._settler = Settler(
            publisher, queue, topology=topology or Topology(), metrics=metrics, max_attempts=max_attempts
        )
        self._outage = Outage(
            queue,
            metrics=metrics,
            probes=probes,
            interval_s=probe_interval_s,
            max_interval_s=probe_max_interval_s,
            on_resume=self._lanes.wake_heads,
        )
        self._hold = HoldLimit(
            queue,
            self._lanes,
            publisher,
            metrics=metrics,
            limit_s=hold_limit_s,
            dependency=lambda: self._outage.dependency,
        )
        self._watchdog: asyncio.Task[None] | None = None
        self.last_delivery: float | None = None
        self.consuming = False

    @property
    def outage(self) -> str | None:
        """The dependency the consumer is waiting for, None while it consumes normally."""
        return self._outage.dependency

    async def run(self) -> None:
        """Consume until cancelled; on cancel stop taking messages and let in-flight ones finish."""
        channel = await self._connection.channel(prefetch=self._prefetch)
        queue: AbstractQueue = await channel.get_queue(self.queue_name, ensure=True)
        tag = await queue.consume(self._on_message)
        self.consuming = True
        self._watchdog = asyncio.create_task(self.watch_holds(), name=f"hold-limit:{self.queue_name}")
        log.info("consuming", extra={"queue": self.queue_name, "prefetch": self._prefetch})
        try:
            await asyncio.Event().wait()
        finally:
            self.consuming = False
            self._stopping = True  # nothing starts any more; what waits goes back unacked
            # With RabbitMQ gone there is nothing to cancel or close (the broker dropped both), and
            # a robust channel would wait for a reconnect that shutdown is not going to wait for.
            connected = self._connection.ready
            try:
                if connected:
                    await asyncio.shield(queue.cancel(tag))
                await self._drain()
            except Exception:
                log.warning("consumer drain incomplete", extra={"queue": self.queue_name}, exc_info=True)
            finally:
                # Also when the drain itself is cancelled (the runtime's deadline): nothing of this
                # consumer may outlive it.
                await self._cancel_leftovers()
                if connected:
                    await channel.close()

    async def _drain(self) -> None:
        """Wait for the messages whose handler runs (or that are being settled) only: the ones
        waiting in a lane or held for a dependency that is down do no work, and waiting for them
        would only spend the shutdown deadline. They go back unacked and the broker redelivers them."""
        busy = self._inflight - self._lanes.idle_tasks()
        if busy:
            await asyncio.wait(busy, timeout=self._drain_timeout)

    async def _cancel_leftovers(self) -> None:
        helpers = (self._outage.prober, self._watchdog)
        tasks = [*self._inflight, *(t for t in helpers if t is not None)]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=1.0)

    async def watch_holds(self) -> None:
        """Put waiting messages back in the queue before the broker's consumer timeout would."""
        await self._hold.watch()

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
        attempt = attempts_of(message, self.queue_name) + 1
        try:
            event, decoded, key = self._read(message)
        except InvalidMessage as exc:
            await self._settler.dead_letter(message, exc.reason, exc.error, attempt)
            return
        now = asyncio.get_running_loop().time()
        entry = self._lanes.join(key, message, self._revision(decoded), now)
        try:
            result = await self._turn(entry, decoded, event.id)
        finally:
            self._lanes.leave(entry)
            # Its slot (or the wake it was given for one it did not take) goes to the oldest heads.
            self._lanes.wake_heads(self._concurrency - self._running)
        if result is Skip.REQUEUED:
            return  # a copy waits in the queue; the original was acked (or returned)
        if result is Skip.SUPERSEDED:
            await self._settler.ack(message, Skip.SUPERSEDED.value)
            log.debug(
                "superseded by a newer message of its key",
                extra={"queue": self.queue_name, "event_id": event.id, "revision": entry.revision},
            )
            return
        await self._settler.settle(message, result, attempt, event.id)

    def _read(self, message: AbstractIncomingMessage) -> tuple[CloudEvent, M, str | None]:
        """The envelope, the decoded message and its lane key, each read once."""
        event = envelope(message.body)
        decoded = decode_with(self._decode, event)
        try:
            key = self._key_of(decoded) if self._key_of else None
        except Exception as exc:  # deterministic on the message: retrying cannot help
            raise InvalidMessage("no serialization key", exc) from exc
        return event, decoded, key

    def _revision(self, decoded: M) -> Revision | None:
        if self._revision_of is None:
            return None
        try:
            return self._revision_of(decoded)
        except Exception:  # not a valid whole state: never coalesced, the handler decides
            return None

    def _may_run(self, entry: Entry) -> bool:
        return (
            self._lanes.at_head(entry)
            and not self._stopping
            and not entry.requeuing
            and self._outage.available
            and self._running < self._concurrency
        )

    async def _turn(self, entry: Entry, decoded: M, event_id: str) -> Exception | Skip | None:
        """Run the handler in the lane's turn; while a dependency is down, wait for it and run again
        (no attempt spent). Returns the error (None: success) or how it was skipped."""
        while True:
            while not self._may_run(entry):
                if (skipped := entry.skipped) is not None:
                    return skipped
                entry.wake.clear()
                await entry.wake.wait()
            if entry.superseded:
                return Skip.SUPERSEDED
            error = await self._run_handler(entry, decoded)
            dependency = unavailable_dependency(error) if error is not None else None
            if error is None or dependency is None:
                return error
            self._outage.pause(dependency, error, event_id)

    async def _run_handler(self, entry: Entry, decoded: M) -> Exception | None:
        entry.running = True
        self._running += 1
        try:
            return await self._handle_once(decoded)
        finally:
            entry.running = False
            self._running -= 1

    async def _handle_once(self, decoded: M) -> Exception | None:
        started = asyncio.get_running_loop().time()
        try:
            await self._handler(decoded)
        except asyncio.CancelledError as exc:
            task = asyncio.current_task()
            if task is None or task.cancelling():
                raise  # shutdown or lost channel: neither ack nor reject
            # The handler leaked a CancelledError of its own (e.g. from a future someone else
            # cancelled); left alone the message would stay unacked and hold a prefetch slot.
            return RetryableError(f"handler raised {describe(exc)}")
        except Exception as exc:
            return exc
        finally:
            self._metrics.duration.labels(self.queue_name).observe(
                asyncio.get_running_loop().time() - started
            )
        return None
