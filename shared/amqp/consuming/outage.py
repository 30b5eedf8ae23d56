"""The outage pause: while a dependency is down, hand no message to the handler; probe it until it
answers.

A handler failure that ``shared.dependencies.unavailable_dependency`` attributes to a dependency
(OTC's circuit, IAM, MongoDB, RabbitMQ publishing) is no fault of the message: the consumer holds
it, unacked and with no attempt counted, and :class:`Outage` pauses every lane until a probe of that
dependency succeeds (growing intervals). The held messages keep the prefetch full, so the broker
sends no more; then they run again in their order. An outage of any length spends no attempts and
dead-letters nothing (the hold limit, :mod:`shared.amqp.consuming.hold`, keeps the broker's
``consumer_timeout`` from closing the channel meanwhile).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping

from shared.amqp.consuming.errors import describe
from shared.amqp.consuming.metrics import ConsumerMetrics
from shared.dependencies import Probe

log = logging.getLogger(__name__)


class Outage:
    """Whether one consumer may hand messages to its handler, and the probe that ends a pause."""

    def __init__(
        self,
        queue: str,
        *,
        metrics: ConsumerMetrics,
        probes: Mapping[str, Probe] | None = None,
        interval_s: float = 0.5,
        max_interval_s: float = 3.0,
        on_resume: Callable[[], None] = lambda: None,
    ) -> None:
        self._queue = queue
        self._metrics = metrics
        self._probes = dict(probes or {})
        self._interval = interval_s
        self._max_interval = max_interval_s
        self._on_resume = on_resume
        self._available = asyncio.Event()
        self._available.set()
        self.prober: asyncio.Task[None] | None = None
        self.dependency: str | None = None
        """The dependency the consumer is waiting for, None while it consumes normally."""

    @property
    def available(self) -> bool:
        return self._available.is_set()

    def pause(self, dependency: str, error: Exception, event_id: str) -> None:
        """Stop handing messages to the handler until ``dependency`` answers a probe again."""
        if self.dependency is not None:
            return
        self.dependency = dependency
        self._available.clear()
        self._metrics.paused.labels(self._queue, dependency).set(1)
        self._metrics.outages.labels(self._queue, dependency).inc()
        log.warning(
            "%s unavailable: holding messages until it answers again",
            dependency,
            extra={
                "queue": self._queue,
                "dependency": dependency,
                "event_id": event_id,
                "error": describe(error)[:500],
            },
        )
        self.prober = asyncio.create_task(
            self._probe_until_up(dependency), name=f"probe:{self._queue}:{dependency}"
        )

    async def _probe_until_up(self, dependency: str) -> None:
        """Probe with growing intervals; without a probe the held messages' own retry is the probe."""
        loop = asyncio.get_running_loop()
        since = loop.time()
        try:
            await self._until_up(self._probes.get(dependency), dependency)
        finally:
            self.dependency = None
            self._metrics.paused.labels(self._queue, dependency).set(0)
            self._available.set()
            self._on_resume()
        log.info(
            "%s answers again: resuming",
            dependency,
            extra={"queue": self._queue, "dependency": dependency, "held_s": round(loop.time() - since, 1)},
        )

    async def _until_up(self, probe: Probe | None, dependency: str) -> None:
        delay = self._interval
        while True:
            await asyncio.sleep(delay)
            if probe is None:
                return
            try:
                if await asyncio.wait_for(probe(), timeout=10.0):
                    return
            except Exception:
                log.debug("probe of %s failed", dependency, exc_info=True)
            delay = min(delay * 1.5, self._max_interval)
