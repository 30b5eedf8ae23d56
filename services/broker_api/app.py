"""Wiring of broker-api: ``build()`` (used by tests and main) and ``main()``."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import datetime

from aiohttp import web

from services.broker_api.crypto import CredentialsCipher
from services.broker_api.http import BrokerApi, make_app, utc_now
from services.broker_api.outbox import EventSink, Outbox
from services.broker_api.pages import add_pages
from services.broker_api.serving import GuardedAppRunner, ServerLimits
from services.broker_api.settings import Settings, load_settings
from services.broker_api.store import InstanceStore
from shared.amqp.topology import Topology, with_owned_instances
from shared.health import Health, HttpServer
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
        self, *, infra: Infra, store: InstanceStore, outbox: Outbox, http: HttpServer, shutdown_timeout: float
    ) -> None:
        super().__init__(NAME, shutdown_timeout=shutdown_timeout)
        self.infra = infra
        self.store = store
        self.outbox = outbox
        self.http = http

    @property
    def app(self) -> web.Application:
        return self.http.app

    @property
    def port(self) -> int:
        return self.http.port

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def build(settings: Settings, *, deps: Deps | None = None) -> BrokerRuntime:
    """MongoDB, RabbitMQ, then the HTTP application, whose ``cleanup_ctx`` creates the indexes and
    runs the outbox drainer: aiohttp starts them before the site listens and stops them after it
    stopped taking requests."""
    deps = deps or Deps()
    health = Health()
    # The watchers' owned-instance queues too, so events for a cluster whose watcher has never run
    # wait for it (docs/design.md, "A Kabanero service that creates its instance"); only Kabanero
    # services create instances, so a deployment without the Kabanero broker declares none.
    kabanero = settings.serves("kabanero-broker")
    owned = with_owned_instances(settings.clusters if kabanero else ())
    infra = Infra(settings, name=NAME, health=health, topology=Topology(queues=owned))
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
        recent=store.recent,
        release_delay_s=settings.outbox_release_delay_s,
    )
    api = BrokerApi(
        settings,
        store=store,
        outbox=outbox,
        cipher=CredentialsCipher(settings.credentials_key),
        health=health,
        clock=deps.clock or utc_now,
    )
    app = make_app(api, health, settings)
    # The services' pages, fed by what the watchers report (services.broker_api.pages).
    consumers = add_pages(app, settings, infra=infra, policy=api.policy, store=store)
    limits = ServerLimits(
        max_connections=settings.max_connections,
        max_connections_per_client=settings.max_connections_per_client,
        header_timeout_s=settings.header_timeout_s,
        overflow_connections=settings.overflow_connections,
    )
    http = HttpServer(
        app,
        settings.http_host,
        settings.http_port,
        name=NAME,
        runner=GuardedAppRunner(
            app,
            limits=limits,
            registry=health.registry,
            access_log=None,
            shutdown_timeout=settings.shutdown_timeout_s / 2,
        ),
    )
    runtime = BrokerRuntime(
        infra=infra, store=store, outbox=outbox, http=http, shutdown_timeout=settings.shutdown_timeout_s
    )

    async def indexes(_: web.Application) -> AsyncIterator[None]:
        await store.ensure_indexes()
        yield

    async def drainer(_: web.Application) -> AsyncIterator[None]:
        async with runtime.supervisor.running("outbox-drainer", outbox.run(settings.outbox_drain_interval_s)):
            yield

    app.cleanup_ctx.extend([indexes, drainer])

    def drainer_alive() -> tuple[bool, str]:
        task = runtime.supervisor.find("outbox-drainer")
        return (task is not None and not task.done(), "" if task else "not started")

    health.add_liveness("outbox-drainer", drainer_alive)
    infra.attach(runtime)
    for task, c in consumers.items():
        runtime.add_task(task, c.run)
    runtime.add("http", lambda: http)
    return runtime


def main() -> None:
    run_service(load_settings, build)
