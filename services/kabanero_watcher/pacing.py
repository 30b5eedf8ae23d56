"""Long CPU work on the event loop, in slices: derivations and diffs are generators of steps that a
:class:`Pacer` drives, giving the loop back between slices.

Everything the watcher does shares one event loop: the Lease renewals, the watch streams, the
HTTP probes. A derivation of 20,000 mediations done in one go held it for seconds, long enough for
the Lease to lapse and the term to end, again and again (issue 19). A step is a unit of work
small enough to bound (one mediation, one connection item, one diffed record); the pacer lets the
loop run every ``every`` steps or ``slice_s`` seconds, whichever comes first. The count makes the
behaviour deterministic (tests count the yields); the clock bounds a slice whose steps are slow.
Work done between two yields sees one consistent state; what changes while it is suspended marks
the namespace dirty again, and the next pass derives it anew.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Generator
from typing import cast

STEPS_PER_SLICE = 200
SLICE_S = 0.02


class Pacer:
    """Shared by every task of a term; ``yields`` counts how often it gave the loop back."""

    def __init__(
        self,
        *,
        every: int = STEPS_PER_SLICE,
        slice_s: float = SLICE_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.every = every
        self.slice_s = slice_s
        self._clock = clock
        self._steps = 0
        self._since = clock()
        self.yields = 0

    async def step(self) -> None:
        """One unit of work done: yield the loop when the slice is full."""
        self._steps += 1
        if self._steps >= self.every or self._clock() - self._since >= self.slice_s:
            await asyncio.sleep(0)
            self.yields += 1
            self._steps = 0
            self._since = self._clock()

    async def drive[T](self, steps: Generator[None, None, T]) -> T:
        """Run a generator of steps to its result, yielding the loop between slices."""
        while True:
            try:
                next(steps)
            except StopIteration as done:
                return cast(T, done.value)
            await self.step()


def run_steps[T](steps: Generator[None, None, T]) -> T:
    """Run a generator of steps at once (no loop to give back: tests, tools)."""
    while True:
        try:
            next(steps)
        except StopIteration as done:
            return cast(T, done.value)
