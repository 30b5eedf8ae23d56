"""Wiring of github-linker: infra, store, linker, consumer on ``github-linker.events``, health HTTP."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from prometheus_client import CollectorRegistry

from services.github_linker.linking import Linker, Message, Metrics, decode, key_of
from services.github_linker.settings import Settings
from services.github_linker.store import Store
from shared.amqp import Consumer, Topology
from shared.health import Health, HttpServer, health_app
from shared.infra import Infra
from shared.lifecycle import Runtime, run_service, step
from shared.settings import load_settings

log = logging.getLogger(__name__)

NAME = "github-linker"
QUEUE = "github-linker.events"


@dataclass(frozen=True)
class Deps:
    """Optional overrides for tests."""

    registry: CollectorRegistry | None = None
    topology: Topology | None = None


class LinkerRuntime(Runtime):
    """The runtime plus what tests look at: the bound HTTP port and the consumer."""

    def __init__(
        self, *, infra: Infra, consumer: Consumer[Message], http: HttpServer, shutdown_timeout: float
    ) -> None:
        super().__init__(NAME, shutdown_timeout=shutdown_timeout)
        self.infra = infra
        self.consumer = consumer
        self.http = http

    @property
    def port(self) -> int:
        return self.http.port


def build(settings: Settings, *, deps: Deps | None = None) -> LinkerRuntime:
    deps = deps or Deps()
    health = Health(deps.registry)
    infra = Infra(settings, name=NAME, health=health, topology=deps.topology)
    store = Store(infra.db)
    linker = Linker(
        store=store, publisher=infra.publisher, settings=settings, metrics=Metrics(health.registry)
    )
    consumer = Consumer(
        infra.amqp,
        infra.publisher,
        QUEUE,
        linker.handle,
        metrics=infra.consumer_metrics,
        topology=infra.topology,
        prefetch=settings.prefetch,
        key_of=key_of,
        decode=decode,
        probes=infra.probes(),
        hold_limit_s=settings.consumer_hold_limit_s,
    )
    health.add_liveness(
        "consumer", lambda: (consumer.consuming, "" if consumer.consuming else "not consuming")
    )
    health.add_readiness("queue", consumer.readiness)
    http = HttpServer(health_app(health), settings.http_host, settings.http_port, name=NAME)
    runtime = LinkerRuntime(
        infra=infra, consumer=consumer, http=http, shutdown_timeout=settings.shutdown_timeout_s
    )
    infra.attach(runtime)
    runtime.add("indexes", lambda: step(store.create_indexes))
    runtime.add_task("consumer", consumer.run)
    runtime.add("http", lambda: http)
    return runtime


def main() -> None:
    run_service(lambda: load_settings(Settings, service="github-linker"), build)
