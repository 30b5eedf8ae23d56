"""Metrics of otc-writer's Toolchain API client, read from the client when scraped.

- ``kotc_otc_circuit_breaker_state{state}``: 1 for the breaker's current state (closed, open,
  half-open), 0 for the others; ``kotc_otc_circuit_breaker_open`` is 1 while it is open.
- ``kotc_otc_requests_total``, ``kotc_otc_rate_limited_total`` (429 answers),
  ``kotc_otc_retries_total`` (attempts repeated after a retryable failure).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from services.otc_writer.otc_client import OtcClient

STATES = ("closed", "open", "half-open")


class OtcClientCollector(Collector):
    def __init__(self, client: Callable[[], OtcClient | None]) -> None:
        self._client = client

    def collect(self) -> Iterator[Metric]:
        client = self._client()
        state = client.breaker.state if client is not None else "closed"
        states = GaugeMetricFamily(
            "kotc_otc_circuit_breaker_state",
            "Circuit breaker towards OTC: 1 for the current state",
            labels=["state"],
        )
        for name in STATES:
            states.add_metric([name], 1.0 if name == state else 0.0)
        yield states
        yield GaugeMetricFamily(
            "kotc_otc_circuit_breaker_open",
            "1 while the breaker towards OTC is open",
            value=float(state == "open"),
        )
        for name, doc, value in (
            ("kotc_otc_requests", "HTTP requests sent to the Toolchain API", client.calls if client else 0),
            (
                "kotc_otc_rate_limited",
                "429 answers from the Toolchain API",
                client.rate_limited if client else 0,
            ),
            (
                "kotc_otc_retries",
                "Toolchain API attempts repeated after a retryable failure",
                client.retries if client else 0,
            ),
        ):
            yield CounterMetricFamily(name, doc, value=float(value))


def register(registry: CollectorRegistry, client: Callable[[], OtcClient | None]) -> None:
    registry.register(OtcClientCollector(client))
