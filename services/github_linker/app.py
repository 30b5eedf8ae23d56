"""Wiring of github-linker: infra, store, linker, consumer on ``github-linker.events``, health HTTP."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from prometheus_client import CollectorRegistry

from services.github_linker.linking import Linker, Metrics, key_of
from services.github_linker.settings import Settings
from services.github_linker.store import Store
from shared.amqp import Consumer, Topology
from shared.health import Health, serve_health
from shared.infra import Infra
from shared.lifecycle import Runtime, run_service
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

    port: int | None = None
    consumer: Consumer
    infra: Infra


def build(settings: Settings, *, deps: Deps | None = None) -> LinkerRuntime:
    deps = deps or Deps()
    runtime = LinkerRuntime(NAME, shutdown_timeout=settings.shutdown_timeout_s)
    health = Health(deps.registry)
    infra = Infra(settings, name=NAME, health=health, topology=deps.topology)
    infra.attach(runtime)
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
    )
    runtime.consumer = consumer
    runtime.infra = infra
    health.add_liveness(
        "consumer", lambda: (consumer.consuming, "" if consumer.consuming else "not consuming")
    )

    async def start() -> None:
        await store.create_indexes()
        runtime.supervisor.spawn("consumer", consumer.run())
        runtime.port = await serve_health(runtime, health, settings.http_host, settings.http_port)

    runtime.on_startup(start)
    return runtime


def main() -> None:
    run_service(lambda: load_settings(Settings, service="github-linker"), build)
