"""The consumer's metrics. Names and labels are contracts: the alert rules in deploy/, the CLI and
the stack's ``quiet`` read them."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class ConsumerMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.outcomes = Counter(
            "kotc_messages_total",
            "Consumed messages by queue and outcome",
            ["queue", "outcome"],
            registry=registry,
        )
        self.duration = Histogram("kotc_handler_seconds", "Handler duration", ["queue"], registry=registry)
        self.paused = Gauge(
            "kotc_consumer_paused",
            "1 while the consumer holds its messages because a dependency is down",
            ["queue", "dependency"],
            registry=registry,
        )
        self.held = Gauge(
            "kotc_consumer_held",
            "Messages delivered to the consumer and not settled yet (handled, waiting, or held in an outage)",
            ["queue"],
            registry=registry,
        )
        self.outages = Counter(
            "kotc_consumer_outages_total",
            "Times the consumer paused for an unavailable dependency",
            ["queue", "dependency"],
            registry=registry,
        )
