"""Wiring of broker-api: ``build()`` (used by tests and main) and ``main()``."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from aiohttp import web

from services.broker_api.crypto import CredentialsCipher
from services.broker_api.http import BrokerApi, make_app, utc_now
from services.broker_api.outbox import EventSink, Outbox
from services.broker_api.settings import Settings, load_settings
from services.broker_api.store import InstanceStore
from shared.health import Health, bound_port, start_http
from shared.infra import Infra
from shared.lifecycle import Runtime, run_service

log = logging.getLogger(__name__)

NAME = "broker-api"


@dataclass
class Deps:
    """Optional overrides for tests: a clock, and a wrapper around the real event publisher
    (e.g. one that fails on demand to exercise the outbox)."""

    clock: Callable[[], datetime] | None = None
    wrap_sink: Callable[[EventSink], EventSink] | None = None


class BrokerRuntime(Runtime):
    """The runtime plus what tests need: the bound port, the store, the outbox."""

    def __init__(
        self, *, infra: Infra, store: InstanceStore, outbox: Outbox, shutdown_timeout: float
    ) -> None:
        super().__init__(NAME, shutdown_timeout=shutdown_timeout)
        self.infra = infra
        self.store = store
        self.outbox = outbox
        self.port = 0
        self.app: web.Application | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def build(settings: Settings, *, deps: Deps | None = None) -> BrokerRuntime:
    deps = deps or Deps()
    health = Health()
    infra = Infra(settings, name=NAME, health=health)
    store = InstanceStore(infra.db, source=f"/{NAME}")
    sink: EventSink = infra.publisher
    if deps.wrap_sink is not None:
        sink = deps.wrap_sink(sink)
    outbox = Outbox(
        store.collection,
        sink,
        health.registry,
        lease_s=3 * settings.publish_timeout_s,
        online=lambda: infra.amqp.ready,
    )
    runtime = BrokerRuntime(
        infra=infra, store=store, outbox=outbox, shutdown_timeout=settings.shutdown_timeout_s
    )
    infra.attach(runtime)
    api = BrokerApi(
        settings,
        store=store,
        outbox=outbox,
        cipher=CredentialsCipher(settings.credentials_key),
        health=health,
        clock=deps.clock or utc_now,
    )
    app = make_app(api, health, settings)
    runtime.app = app

    def drainer_alive() -> tuple[bool, str]:
        task = next((t for t in runtime.supervisor.tasks if t.get_name().endswith("outbox-drainer")), None)
        return (task is not None and not task.done(), "" if task else "not started")

    health.add_liveness("outbox-drainer", drainer_alive)

    async def start() -> None:
        await store.ensure_indexes()
        runner = await start_http(runtime, app, settings.http_host, settings.http_port)
        runtime.port = bound_port(runner)
        runtime.supervisor.spawn("outbox-drainer", outbox.run(settings.outbox_drain_interval_s))
        log.info(
            "broker-api ready",
            extra={"port": runtime.port, "brokers": ["kabanero-broker", "kabanero-events-broker"]},
        )

    runtime.on_startup(start)
    return runtime


def main() -> None:
    run_service(load_settings, build)
