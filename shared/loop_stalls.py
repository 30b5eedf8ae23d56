"""How long the event loop went without running: the one fact that explains a lapsed Lease when the
Kubernetes API was fine, or a change that every other process passed on in milliseconds arriving
seconds late.

A task that holds the loop (CPU work without an ``await``) delays every other task: the Lease
renewal, the watch streams, the consumers, the answer to ``/readyz`` itself. Before issue 19, the
watcher's /readyz then blamed the Kubernetes API ("no lease round succeeded"), because a round that
never ran looks like one that never answered. :class:`LoopStalls` wakes every ``interval`` seconds
and records how late it woke: the watcher's lease health and ``event-loop`` readiness check name a
stall instead of guessing, and every service (shared/infra.py attaches it) exposes its holds on
/metrics (``kotc_event_loop_held_seconds``), so a latency tail names the process that held it
(bench/stack_scale.py reads them over its latency phase).
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable

from prometheus_client import CollectorRegistry, Gauge, Histogram

INTERVAL_S = 0.1
NOTABLE_S = 0.2
"""Stalls shorter than this are scheduling noise, not kept."""
HELD_BUCKETS = (0.025, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0, 30.0)


class LoopStalls:
    def __init__(
        self,
        *,
        interval: float = INTERVAL_S,
        keep_s: float = 600.0,
        clock: Callable[[], float] = time.monotonic,
        registry: CollectorRegistry | None = None,
    ) -> None:
        self.interval = interval
        self.keep_s = keep_s
        self._clock = clock
        self._stalls: deque[tuple[float, float]] = deque()
        """(when it ended, how long the loop was held), oldest first, for ``keep_s``."""
        self.longest = 0.0
        self._held: Histogram | None = None
        if registry is not None:
            self._held = Histogram(
                "kotc_event_loop_held_seconds",
                f"How late the event loop ran a {interval}s timer, per wake: the time it was held "
                "by work without an await (every other task waited that long)",
                buckets=HELD_BUCKETS,
                registry=registry,
            )
            longest = Gauge(
                "kotc_event_loop_held_max_seconds",
                "The longest single hold of the event loop since the process started",
                registry=registry,
            )
            longest.set_function(lambda: self.longest)

    async def run(self) -> None:
        while True:
            started = self._clock()
            await asyncio.sleep(self.interval)
            self.record(self._clock() - started - self.interval)

    def record(self, late_s: float) -> None:
        now = self._clock()
        late_s = max(0.0, late_s)
        self.longest = max(self.longest, late_s)
        if self._held is not None:
            self._held.observe(late_s)
        if late_s >= NOTABLE_S:
            self._stalls.append((now, late_s))
        while self._stalls and self._stalls[0][0] < now - self.keep_s:
            self._stalls.popleft()

    def worst_since(self, since: float) -> float:
        """The longest stall that ended after ``since`` (a monotonic time), 0.0 when none."""
        return max((late for ended, late in self._stalls if ended >= since), default=0.0)

    def health(self, *, bound_s: float, window_s: float) -> tuple[bool, str]:
        """Readiness: false while a stall longer than ``bound_s`` happened in the last ``window_s``."""
        worst = self.worst_since(self._clock() - window_s)
        if worst > bound_s:
            return False, (
                f"the event loop was blocked for {worst:.1f}s in the last {window_s:.0f}s "
                f"(bound {bound_s:.1f}s): lease renewals and watches waited for it"
            )
        return True, f"longest stall in the last {window_s:.0f}s: {worst:.1f}s"
