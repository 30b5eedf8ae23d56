"""The outage pause and probe (shared/amqp/consuming/outage.py) with fake probes.

Against real RabbitMQ and MongoDB: tests/integration/test_consumer_faults.py, test_writer_outage.py.
"""

from __future__ import annotations

import asyncio

from prometheus_client import CollectorRegistry

from shared.amqp.consuming.metrics import ConsumerMetrics
from shared.amqp.consuming.outage import Outage
from shared.dependencies import DependencyUnavailable

QUEUE = "otc-writer.events"


def _sample(registry: CollectorRegistry, name: str, dependency: str) -> float | None:
    return registry.get_sample_value(name, {"queue": QUEUE, "dependency": dependency})


async def test_a_pause_lasts_until_the_probe_answers_and_then_wakes_the_lanes() -> None:
    registry = CollectorRegistry()
    answers: list[bool | Exception] = [
        False,
        RuntimeError("probe broke"),
        True,
    ]  # a failing probe is just "not yet"
    resumed = asyncio.Event()

    async def probe() -> bool:
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    outage = Outage(
        QUEUE,
        metrics=ConsumerMetrics(registry),
        probes={"otc": probe},
        interval_s=0.01,
        max_interval_s=0.01,
        on_resume=resumed.set,
    )
    assert outage.available and outage.dependency is None
    error = DependencyUnavailable("circuit open", dependency="otc")
    outage.pause("otc", error, "e-1")
    outage.pause("mongodb", error, "e-2")  # already paused: one outage at a time
    assert not outage.available and outage.dependency == "otc"
    assert _sample(registry, "kotc_consumer_paused", "otc") == 1
    assert _sample(registry, "kotc_consumer_outages_total", "otc") == 1
    assert _sample(registry, "kotc_consumer_outages_total", "mongodb") is None
    await asyncio.wait_for(resumed.wait(), 5)
    assert answers == [] and outage.available and outage.dependency is None
    assert _sample(registry, "kotc_consumer_paused", "otc") == 0
    assert outage.prober is not None
    await outage.prober


async def test_without_a_probe_the_held_messages_retry_after_one_interval() -> None:
    outage = Outage(QUEUE, metrics=ConsumerMetrics(CollectorRegistry()), interval_s=0.01)
    outage.pause("iam", DependencyUnavailable("down", dependency="iam"), "e-1")
    assert outage.prober is not None
    await asyncio.wait_for(outage.prober, 5)
    assert outage.available and outage.dependency is None
