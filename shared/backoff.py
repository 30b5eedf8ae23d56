"""Capped exponential backoff: the one policy every retry loop of the services waits by.

A delay starts at ``base``, doubles after each wait and stays at ``cap``; a success starts again from
``base``. With a random source the wait is AWS's "full jitter" (uniform in [0, delay]), which
spreads the retries of many clients that failed together (used against OTC, whose rate limit all
writer replicas share). The consumer's delay queues (``shared.amqp.topology``) are not a loop of
this process: their ladder is the broker's, declared once in the topology.
"""

from __future__ import annotations

import asyncio
import math
import random

_MAX_DOUBLINGS = 64  # 2**64 times any sane base is past every cap: no float overflow for a huge attempt


def capped_delay(attempt: int, *, base: float, cap: float) -> float:
    """``base * 2**attempt``, at most ``cap`` (attempt counts from 0)."""
    return min(cap, math.ldexp(base, min(max(attempt, 0), _MAX_DOUBLINGS)))


def full_jitter(attempt: int, *, base: float, cap: float, rng: random.Random) -> float:
    """AWS 'full jitter': uniform in [0, min(cap, base * 2**attempt)] (attempt counts from 0)."""
    return rng.uniform(0.0, capped_delay(attempt, base=base, cap=cap))


class Backoff:
    """The waits of one retry loop: ``base``, ``2·base``, … up to ``cap``; :meth:`reset` after a
    success. ``rng`` given: each wait is full-jittered below the delay."""

    def __init__(self, base: float, cap: float, *, rng: random.Random | None = None) -> None:
        if base <= 0 or cap < base:
            raise ValueError(f"backoff needs 0 < base <= cap, got base={base}, cap={cap}")
        self.base = base
        self.cap = cap
        self._rng = rng
        self._attempt = 0

    @property
    def delay(self) -> float:
        """The bound of the next wait."""
        return capped_delay(self._attempt, base=self.base, cap=self.cap)

    def next(self) -> float:
        """The next wait (jittered if there is a random source); later waits grow."""
        delay = self.delay
        if self._rng is not None:
            delay = self._rng.uniform(0.0, delay)
        if self.delay < self.cap:
            self._attempt += 1
        return delay

    def reset(self) -> None:
        self._attempt = 0

    async def sleep(self, *, at_most: float | None = None) -> None:
        """Wait the next delay (no longer than ``at_most``, which does not slow the growth)."""
        delay = self.next()
        await asyncio.sleep(delay if at_most is None else min(delay, at_most))
