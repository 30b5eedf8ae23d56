"""Pure pieces of the OTC client with a fake clock: breaker, token bucket, gate, backoff, Retry-After."""

from __future__ import annotations

import random

from services.otc_writer.otc_client.resilience import (
    CircuitBreaker,
    NotBeforeGate,
    TokenBucket,
    parse_retry_after,
)
from shared.backoff import full_jitter


class FakeTime:
    def __init__(self) -> None:
        self.now = 100.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


def test_breaker_opens_after_threshold_then_half_open_single_probe() -> None:
    t = FakeTime()
    b = CircuitBreaker(threshold=3, reset_s=10, clock=t)
    for _ in range(2):
        assert b.allow()
        b.failure()
    assert b.state == "closed"
    b.failure()
    assert b.state == "open" and not b.allow()
    t.now += 10
    assert b.state == "half-open"
    assert b.allow()  # the probe
    assert not b.allow()  # only one
    b.failure()  # probe failed: open again for a full period
    assert b.state == "open" and not b.allow()
    t.now += 10
    assert b.allow()
    b.success()
    assert b.state == "closed" and b.allow() and b.allow()


def test_breaker_success_resets_consecutive_count() -> None:
    b = CircuitBreaker(threshold=2, reset_s=1, clock=FakeTime())
    b.failure()
    b.success()
    b.failure()
    assert b.state == "closed"


async def test_token_bucket_limits_rate() -> None:
    t = FakeTime()
    bucket = TokenBucket(rate=5, clock=t)
    for _ in range(25):
        await bucket.acquire(t.sleep)
    # burst of 5 free, then 20 more at 5/s = 4 s
    assert abs((t.now - 100.0) - 4.0) < 1e-6


async def test_gate_waits_until_not_before() -> None:
    t = FakeTime()
    gate = NotBeforeGate(clock=t)
    gate.push(2.5)
    gate.push(1.0)  # never shortens
    await gate.wait(t.sleep)
    assert t.now >= 102.5


def test_full_jitter_is_capped_and_grows() -> None:
    rng = random.Random(1)
    for attempt in range(10):
        d = full_jitter(attempt, base=0.5, cap=4.0, rng=rng)
        assert 0 <= d <= min(4.0, 0.5 * 2**attempt)
    assert max(full_jitter(8, base=0.5, cap=4.0, rng=rng) for _ in range(200)) > 2.0


def test_retry_after_seconds_date_and_garbage() -> None:
    assert parse_retry_after("3", default=1) == 3
    assert parse_retry_after(None, default=1.5) == 1.5
    assert parse_retry_after("soon", default=2) == 2
    assert abs(parse_retry_after("Thu, 01 Jan 1970 00:00:10 GMT", default=0, now_epoch=4) - 6) < 1e-6
