"""How long the event loop went without running: the one fact that explains a lapsed Lease when the
Kubernetes API was fine.

A task that holds the loop (CPU work without an ``await``) delays every other task: the Lease
renewal, the watch streams, the answer to ``/readyz`` itself. Before issue 19, /readyz then blamed
the Kubernetes API ("no lease round succeeded"), because a round that never ran looks like one that
never answered. :class:`LoopStalls` wakes every ``interval`` seconds and records how late it woke:
the lease health and the ``event-loop`` readiness check name a stall instead of guessing.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable

INTERVAL_S = 0.1
NOTABLE_S = 0.2
"""Stalls shorter than this are scheduling noise, not kept."""


class LoopStalls:
    def __init__(
        self,
        *,
        interval: float = INTERVAL_S,
        keep_s: float = 600.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.interval = interval
        self.keep_s = keep_s
        self._clock = clock
        self._stalls: deque[tuple[float, float]] = deque()
        """(when it ended, how long the loop was held), oldest first, for ``keep_s``."""

    async def run(self) -> None:
        while True:
            started = self._clock()
            await asyncio.sleep(self.interval)
            self.record(self._clock() - started - self.interval)

    def record(self, late_s: float) -> None:
        now = self._clock()
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
