"""A bounded in-process outbox of tool outcome events, published by one background task.

Why: the outcome's publish awaited RabbitMQ's confirm on the tool's message, before its ack, for a
page that is best effort anyway (``tool_reports``): every change held its handler slot for one
more broker round trip. Now the handler only appends the event here (no await); the task
``tool-outcomes`` publishes what has gathered, up to :data:`BATCH` at a time, their confirms awaited
together.

Best effort as before, and bounded: an event is dropped and counted
(``kotc_tool_outcome_publish_failures_total``) when the outbox holds :data:`CAPACITY` already, when
RabbitMQ is away, or when its publish fails. At shutdown the outbox closes after the consumers
(nothing is added any more) and publishes what it holds within what is left of
``SHUTDOWN_TIMEOUT_S``; what the deadline cuts off is counted as dropped. The tool's next outcome
corrects the page.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable

from prometheus_client import CollectorRegistry, Counter

from shared.events import CloudEvent
from shared.lifecycle import Supervisor

log = logging.getLogger(__name__)

Publish = Callable[[CloudEvent], Awaitable[None]]
TASK = "tool-outcomes"
CAPACITY = 2_000
"""Events held at most (about 2 KB each, 3 KB with the longest OTC message: 4-6 MB of the pod's
384 Mi): a RabbitMQ that confirms slowly cannot grow the writer's memory. The task drains about a
thousand a second, so only a broker that stalls confirms fills it."""
BATCH = 100
"""Publishes in flight at most; their confirms are awaited together."""


class Outbox:
    """FIFO of outcome events; :meth:`put` never waits, :meth:`run` publishes them."""

    def __init__(
        self,
        publish: Publish,
        registry: CollectorRegistry,
        *,
        online: Callable[[], bool] = lambda: True,
        capacity: int = CAPACITY,
        batch: int = BATCH,
    ) -> None:
        self._publish = publish
        self._online = online
        self._capacity = capacity
        self._batch = batch
        self._events: deque[CloudEvent] = deque()
        self._wake = asyncio.Event()
        self._closing = False
        self._full = False
        self.failures = Counter(
            "kotc_tool_outcome_publish_failures_total",
            "Tool outcome events not published (the services' pages wait for the tool's next outcome)",
            registry=registry,
        )

    def __len__(self) -> int:
        return len(self._events)

    def put(self, event: CloudEvent) -> bool:
        """Hold ``event`` for the task; False (dropped and counted) if RabbitMQ is away or it is full."""
        if not self._online():  # nothing to wait for: the page waits for the tool's next outcome
            self.failures.inc()
            log.info("tool outcome not published: RabbitMQ unavailable", extra={"ledger_id": event.subject})
            return False
        if len(self._events) >= self._capacity:
            self.failures.inc()
            if not self._full:  # once per episode, not once per event
                log.warning("tool outcome outbox full: outcomes dropped", extra={"capacity": self._capacity})
            self._full = True
            return False
        self._full = False
        self._events.append(event)
        self._wake.set()
        return True

    async def run(self) -> None:
        """Publish what is put, a batch at a time, in order, until closed and empty."""
        while self._events or not self._closing:
            if not self._events:
                self._wake.clear()
                await self._wake.wait()
                continue
            batch = [self._events.popleft() for _ in range(min(self._batch, len(self._events)))]
            try:
                await self._publish_all(batch)
            except asyncio.CancelledError:  # the shutdown deadline: what is in flight is lost
                self._drop(batch, "cut off by the shutdown deadline")
                raise

    async def _publish_all(self, batch: list[CloudEvent]) -> None:
        if not self._online():
            self._drop(batch, "RabbitMQ unavailable")
            return
        results = await asyncio.gather(*(self._publish(e) for e in batch), return_exceptions=True)
        failed = [(e, r) for e, r in zip(batch, results, strict=True) if isinstance(r, BaseException)]
        if failed:
            self._drop([e for e, _ in failed], repr(failed[0][1]))

    def _drop(self, events: list[CloudEvent], why: str) -> None:
        self.failures.inc(len(events))
        log.warning(
            "tool outcomes not published",
            extra={"count": len(events), "ledger_id": events[0].subject, "error": why},
        )

    @contextlib.asynccontextmanager
    async def running(self, supervisor: Supervisor) -> AsyncIterator[None]:
        """The task as a runtime part: on exit (after the consumers stopped) it publishes what is
        left, within the runtime's shutdown deadline; what the deadline cuts off is counted."""
        task = supervisor.spawn(TASK, self.run())
        try:
            yield
        finally:
            supervisor.stopping = True  # the task ends by design now
            self._closing = True
            self._wake.set()
            try:
                await asyncio.wait([task])
            finally:
                await self._abandon(task)

    async def _abandon(self, task: asyncio.Task[None]) -> None:
        """Stop the task if the deadline cut the flush off; count what it never published."""
        if not task.done():
            task.cancel()
            await asyncio.wait([task])
        if self._events:
            self._drop(list(self._events), "not published before shutdown")
            self._events.clear()
