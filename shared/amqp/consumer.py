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
- cancellation (shutdown, lost channel): neither ack nor reject; the broker redelivers. Shutdown
  waits for running handlers only; waiting messages start no more. A
  ``CancelledError`` the handler raises while its task is not being cancelled is a failure (retry);
- a ``key_of`` that raises: dead-letter (it depends on the message only);
- the retry publish fails: requeue after the intended delay (never a hot loop).

Handlers run concurrently up to ``concurrency`` (default: ``prefetch``); messages with the same
``key_of`` value (a *lane*) run one after the other in delivery order, so one slow key never blocks
the others and one key stays ordered (a held message stays at the head of its lane, so a later
message of the key never overtakes it).

Coalescing: ``revision_of`` (optional) names a message's sequence and revision when the message
carries the whole state of its key (a trigger event, a snapshot). A waiting message (not running)
whose lane holds a later delivered one of the same sequence with a revision at least as new is acked
without running (outcome ``superseded``); the newer one is still unacked, so nothing is lost. Acking
frees a prefetch slot, so a consumer that holds for an outage keeps receiving and keeps at most
about one message per key and sequence, and after the outage only the latest state is applied.

Hold limit: a message waits unacked at most ``hold_limit_s`` (below the broker's ``consumer_timeout``,
30 min by default, past which RabbitMQ would close the channel). Then every waiting message is put
back at the tail of its queue, in delivery order, as a copy (headers and ``x-death`` kept, so no
attempt is spent and no delivery is counted towards ``x-delivery-limit``) and the original is acked;
the copies come back at once and wait again. An outage of any length thus closes no channel.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import itertools
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Collection, Mapping
from dataclasses import dataclass, field
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
from shared.urls import scrub_urls

log = logging.getLogger(__name__)

ATTEMPT_HEADER = "x-kotc-attempt"
REASON_HEADER = "x-kotc-dead-reason"
ERROR_HEADER = "x-kotc-error"

Handler = Callable[[CloudEvent], Awaitable[None]]
RevisionOf = Callable[[CloudEvent], tuple[str, int] | None]
"""(sequence, revision) of a message that carries the whole state of its key, else None."""


class Skip(enum.Enum):
    """How a message left its lane without a handler result."""

    SUPERSEDED = "superseded"
    """A newer message of its key and sequence is waiting: acked without running."""
    REQUEUED = "requeued"
    """It waited for the hold limit: a copy was put back in the queue."""


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
        self.held = Gauge(
            "kotc_consumer_held",
            "Messages delivered to the consumer and not settled yet (handled, waiting, or held in an outage)",
            ["queue"],
            registry=registry,
        )
        self.outages = Counter(
            "kotc_consumer_outages_total",
            "Times the consumer paused for an unavailable dependency",
            ["queue", "dependency"],
            registry=registry,
        )


@dataclass(eq=False)
class _Entry:
    """One delivered, unacked message in its lane."""

    message: AbstractIncomingMessage
    arrival: int
    delivered_at: float
    revision: tuple[str, int] | None
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None
    running: bool = False
    superseded: bool = False
    requeuing: bool = False
    requeued: bool = False

    @property
    def live(self) -> bool:
        """Still going to run (not superseded, not being put back in the queue)."""
        return not (self.superseded or self.requeuing or self.requeued)


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
        revision_of: RevisionOf | None = None,
        concurrency: int | None = None,
        hold_limit_s: float = 900.0,
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
        metrics.held.labels(queue).set_function(lambda: len(self._inflight))
        self._revision_of = revision_of if key_of is not None else None
        self._concurrency = concurrency or prefetch
        self._running = 0
        self._lanes: dict[object, deque[_Entry]] = {}
        self._arrivals = itertools.count()
        self._hold_limit = hold_limit_s
        self._watchdog: asyncio.Task[None] | None = None
        self._stopping = False
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
                # Only messages whose handler runs (or that are being settled) are waited for: the
                # ones waiting in a lane or held for a dependency that is down do no work, and
                # waiting for them would only spend the shutdown deadline. They go back unacked and
                # the broker redelivers them.
                waiting = {e.task for lane in self._lanes.values() for e in lane if not e.running}
                busy = self._inflight - waiting
                if busy:
                    await asyncio.wait(busy, timeout=self._drain_timeout)
            except Exception:
                log.warning("consumer drain incomplete", extra={"queue": self.queue_name}, exc_info=True)
            finally:
                # Also when the drain itself is cancelled (the runtime's deadline): nothing of this
                # consumer may outlive it.
                await self._cancel_leftovers()
                if connected:
                    await channel.close()

    async def _cancel_leftovers(self) -> None:
        tasks = [*self._inflight, *(t for t in (self._prober, self._watchdog) if t is not None)]
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
        entry = _Entry(
            message, next(self._arrivals), asyncio.get_running_loop().time(), self._revision(event)
        )
        entry.task = asyncio.current_task()
        lane_key: object = key if key is not None else entry  # no key: a lane of its own
        lane = self._lanes.setdefault(lane_key, deque())
        self._coalesce(lane, entry)
        lane.append(entry)
        try:
            error = await self._handle_held(lane, entry, event)
        finally:
            self._leave(lane_key, lane, entry)
        if error is Skip.REQUEUED:
            return  # a copy waits in the queue; the original was acked (or returned)
        if error is Skip.SUPERSEDED:
            await message.ack()
            self._metrics.outcomes.labels(self.queue_name, Skip.SUPERSEDED.value).inc()
            log.debug(
                "superseded by a newer message of its key",
                extra={"queue": self.queue_name, "event_id": event.id, "revision": entry.revision},
            )
            return
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

    def _revision(self, event: CloudEvent) -> tuple[str, int] | None:
        if self._revision_of is None:
            return None
        try:
            return self._revision_of(event)
        except Exception:  # not a valid whole state: never coalesced, the handler decides
            return None

    @staticmethod
    def _coalesce(lane: deque[_Entry], entry: _Entry) -> None:
        """Supersede what ``entry`` makes obsolete in its lane, or ``entry`` itself if it is."""
        if entry.revision is None:
            return
        sequence, revision = entry.revision
        for other in lane:
            if not other.live or other.revision is None or other.revision[0] != sequence:
                continue
            if other.revision[1] >= revision:
                entry.superseded = True  # delivered late (a retry): an as-new one is here already
            elif not other.running:
                other.superseded = True
                other.wake.set()

    def _leave(self, lane_key: object, lane: deque[_Entry], entry: _Entry) -> None:
        lane.remove(entry)
        if not lane:
            del self._lanes[lane_key]
        else:
            lane[0].wake.set()

    def _wake_heads(self) -> None:
        for lane in self._lanes.values():
            lane[0].wake.set()

    def _may_run(self, lane: deque[_Entry], entry: _Entry) -> bool:
        return (
            lane[0] is entry
            and not self._stopping
            and not entry.requeuing
            and self._available.is_set()
            and self._running < self._concurrency
        )

    async def _handle_held(
        self, lane: deque[_Entry], entry: _Entry, event: CloudEvent
    ) -> Exception | Skip | None:
        """Run the handler in the lane's turn; while a dependency is down, wait for it and run again
        (no attempt spent). Returns the error (None: success) or how it was skipped."""
        while True:
            while not self._may_run(lane, entry):
                if entry.superseded:
                    return Skip.SUPERSEDED
                if entry.requeued:
                    return Skip.REQUEUED
                entry.wake.clear()
                await entry.wake.wait()
            if entry.superseded:
                return Skip.SUPERSEDED
            entry.running = True
            self._running += 1
            try:
                error = await self._handle_once(event)
            finally:
                entry.running = False
                self._running -= 1
                self._wake_heads()
            dependency = unavailable_dependency(error) if error is not None else None
            if dependency is None:
                return error
            assert error is not None
            self._pause(dependency, error, event)

    async def watch_holds(self) -> None:
        """Put waiting messages back in the queue before the broker's consumer timeout would."""
        loop = asyncio.get_running_loop()
        interval = max(0.1, min(5.0, self._hold_limit / 4))
        while True:
            await asyncio.sleep(interval)
            waiting = self._waiting()
            if waiting and loop.time() - waiting[0].delivered_at >= self._hold_limit:
                await self._requeue(waiting)

    def _waiting(self) -> list[_Entry]:
        entries = (e for lane in self._lanes.values() for e in lane if e.live and not e.running)
        return sorted(entries, key=lambda e: e.arrival)

    async def _requeue(self, entries: list[_Entry]) -> None:
        """Copies to the queue's tail in delivery order, then ack the originals (a copy keeps the
        headers, ``x-death`` included: no attempt spent, no delivery counted by the broker)."""
        for entry in entries:
            entry.requeuing = True
        returned = 0
        try:
            for entry in entries:
                try:
                    await self._publisher.publish_message(
                        persistent_copy(entry.message, {}), self.queue_name, exchange=""
                    )
                except PublishError:
                    # Publishing is down: return it instead (the broker counts one delivery).
                    returned += 1
                    with contextlib.suppress(Exception):
                        await entry.message.nack(requeue=True)
                else:
                    with contextlib.suppress(Exception):  # channel gone: the broker redelivers it too
                        await entry.message.ack()
                entry.requeued = True
                entry.wake.set()
                self._metrics.outcomes.labels(self.queue_name, Skip.REQUEUED.value).inc()
        finally:
            for entry in entries:
                if not entry.requeued:  # interrupted (shutdown): they stay as they were
                    entry.requeuing = False
                    entry.wake.set()
        log.warning(
            "messages waited for the hold limit: put back in the queue",
            extra={
                "queue": self.queue_name,
                "count": len(entries),
                "returned": returned,
                "hold_limit_s": self._hold_limit,
                "dependency": self.outage,
            },
        )

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
            self._wake_heads()
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
    """The error a retry or dead letter carries in its headers (a message: no URL credentials)."""
    return scrub_urls(f"{type(exc).__name__}: {exc}")
