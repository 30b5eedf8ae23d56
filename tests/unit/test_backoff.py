"""The one backoff policy (shared.backoff): doubling from base to cap, reset, full jitter."""

from __future__ import annotations

import asyncio
import random

import pytest

from shared.backoff import Backoff, capped_delay, full_jitter


def test_delays_double_from_base_and_stay_at_the_cap() -> None:
    b = Backoff(0.1, 1.0)
    assert [b.next() for _ in range(7)] == pytest.approx([0.1, 0.2, 0.4, 0.8, 1.0, 1.0, 1.0])


def test_reset_starts_again_from_base() -> None:
    b = Backoff(0.5, 4.0)
    for _ in range(5):
        b.next()
    assert b.delay == 4.0
    b.reset()
    assert b.delay == 0.5
    assert b.next() == 0.5


def test_a_huge_attempt_is_the_cap_not_an_overflow() -> None:
    assert capped_delay(10_000, base=0.2, cap=10.0) == 10.0
    assert capped_delay(-3, base=0.2, cap=10.0) == 0.2


def test_jittered_waits_stay_below_the_growing_delay() -> None:
    rng = random.Random(7)
    b = Backoff(0.5, 4.0, rng=rng)
    for bound in (0.5, 1.0, 2.0, 4.0, 4.0):
        assert 0.0 <= b.next() <= bound
    assert max(full_jitter(8, base=0.5, cap=4.0, rng=rng) for _ in range(200)) > 2.0


@pytest.mark.parametrize(("base", "cap"), [(0.0, 1.0), (-1.0, 1.0), (2.0, 1.0)])
def test_a_policy_that_cannot_wait_is_refused(base: float, cap: float) -> None:
    with pytest.raises(ValueError, match="base"):
        Backoff(base, cap)


async def test_sleep_honours_at_most_without_slowing_the_growth(monkeypatch: pytest.MonkeyPatch) -> None:
    slept: list[float] = []

    async def fake_sleep(seconds: float) -> None:
        slept.append(seconds)

    monkeypatch.setattr(asyncio, "sleep", fake_sleep)
    b = Backoff(0.1, 1.0)
    for _ in range(4):
        await b.sleep(at_most=0.25)
    await b.sleep()
    assert slept == pytest.approx([0.1, 0.2, 0.25, 0.25, 1.0])
