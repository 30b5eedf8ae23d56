"""Client-side protection of OTC: token bucket, Retry-After gate, circuit breaker, backoff, and
a bounded read of what OTC and IAM answer.

Each piece takes an injectable monotonic clock so unit tests run without real waiting where they can.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from email.utils import parsedate_to_datetime

import aiohttp

Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]


class TokenBucket:
    """``rate`` requests per second on average, bursts up to ``burst``; waiters are served in order."""

    def __init__(self, rate: float, burst: float | None = None, *, clock: Clock = time.monotonic) -> None:
        if rate <= 0:
            raise ValueError("rate must be > 0")
        self.rate = rate
        self.burst = burst if burst is not None else max(1.0, rate)
        self._clock = clock
        self._tokens = self.burst
        self._stamp = clock()
        self._lock = asyncio.Lock()

    def _refill(self) -> None:
        now = self._clock()
        self._tokens = min(self.burst, self._tokens + (now - self._stamp) * self.rate)
        self._stamp = now

    async def acquire(self, sleep: Sleep = asyncio.sleep) -> None:
        async with self._lock:
            self._refill()
            if self._tokens < 1:
                await sleep((1 - self._tokens) / self.rate)
                self._refill()
            self._tokens -= 1


class NotBeforeGate:
    """Shared by all callers: nobody calls OTC before the time a 429's ``Retry-After`` advertised."""

    def __init__(self, *, clock: Clock = time.monotonic) -> None:
        self._clock = clock
        self.not_before = 0.0

    def push(self, delay_s: float) -> None:
        self.not_before = max(self.not_before, self._clock() + max(0.0, delay_s))

    async def wait(self, sleep: Sleep = asyncio.sleep) -> None:
        while (remaining := self.not_before - self._clock()) > 0:
            await sleep(remaining)


def parse_retry_after(value: str | None, *, default: float, now_epoch: float | None = None) -> float:
    """Seconds to wait from a ``Retry-After`` header: delta-seconds or an HTTP date (RFC 9110)."""
    if not value:
        return default
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError):
        return default
    return max(0.0, when - (now_epoch if now_epoch is not None else time.time()))


class CircuitBreaker:
    """Closed -> open after ``threshold`` consecutive failures -> half-open after ``reset_s``.

    Half-open lets exactly one probe through; its success closes the circuit, its failure reopens it.
    """

    def __init__(self, threshold: int, reset_s: float, *, clock: Clock = time.monotonic) -> None:
        self.threshold = threshold
        self.reset_s = reset_s
        self._clock = clock
        self._failures = 0
        self._opened_at: float | None = None
        self._probing = False

    @property
    def state(self) -> str:
        if self._opened_at is None:
            return "closed"
        if self._clock() - self._opened_at >= self.reset_s:
            return "half-open"
        return "open"

    def allow(self) -> bool:
        state = self.state
        if state == "closed":
            return True
        if state == "half-open" and not self._probing:
            self._probing = True
            return True
        return False

    def success(self) -> None:
        self._failures = 0
        self._opened_at = None
        self._probing = False

    def failure(self) -> None:
        self._failures += 1
        if self._probing or self._failures >= self.threshold:
            self._opened_at = self._clock()
        self._probing = False

    def release_probe(self) -> None:
        """The probe ended without a verdict (e.g. cancelled, or a 4xx): let another one through."""
        self._probing = False

    def retry_in(self) -> float:
        if self._opened_at is None:
            return 0.0
        return max(0.0, self.reset_s - (self._clock() - self._opened_at))


async def read_bounded(resp: aiohttp.ClientResponse, cap: int) -> tuple[bytes, bool]:
    """At most ``cap`` bytes of the (decoded) body, and whether that is all of it.

    A ``Content-Length`` over the cap is not read at all; a body without one is read in chunks
    and abandoned as soon as it passes the cap (leaving the context closes the connection). Of a
    2xx over the cap nothing is kept (it is an error whatever it says); of an error status, the
    beginning, for its message.
    """
    if resp.content_length is not None and resp.content_length > cap:
        return b"", False
    buf = bytearray()
    async for chunk in resp.content.iter_any():
        buf += chunk
        if len(buf) > cap:
            if 200 <= resp.status < 300:
                return b"", False
            del buf[cap:]
            return bytes(buf), False
    return bytes(buf), True
