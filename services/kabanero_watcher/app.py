"""Wiring of kabanero-watcher: infra, Kubernetes client, lease election, leadership terms, HTTP."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass

from kubernetes_asyncio import client

from services.kabanero_watcher.emitting import EmitMetrics, Emitter, NotLeader, PublishFn
from services.kabanero_watcher.kube import make_api_client
from services.kabanero_watcher.lease import LeaseElector
from services.kabanero_watcher.session import Session
from services.kabanero_watcher.settings import Settings
from services.kabanero_watcher.state import PublishedState
from services.kabanero_watcher.watching import WatchMetrics
from shared.health import Health, serve_health
from shared.infra import Infra
from shared.lifecycle import Runtime, run_service
from shared.settings import load_settings

log = logging.getLogger(__name__)

NAME = "kabanero-watcher"


@dataclass
class Deps:
    """Optional overrides for tests and benchmarks."""

    api_client: client.ApiClient | None = None
    publish: PublishFn | None = None


class WatcherRuntime(Runtime):
    """The runtime plus what tests look at: HTTP port, elector and the current session."""

    http_port: int = 0
    elector: LeaseElector | None = None
    session: Session | None = None
    state: PublishedState | None = None

    @property
    def leading(self) -> bool:
        return self.elector is not None and self.elector.is_leader()


def build(settings: Settings, *, deps: Deps | None = None) -> WatcherRuntime:
    deps = deps or Deps()
    runtime = WatcherRuntime(NAME, shutdown_timeout=settings.shutdown_timeout_s)
    health = Health()
    infra = Infra(settings, name=NAME, health=health)
    infra.attach(runtime)
    emit_metrics = EmitMetrics(health.registry)
    watch_metrics = WatchMetrics(health.registry)
    api_client: client.ApiClient | None = deps.api_client

    def live() -> tuple[bool, str]:
        session = runtime.session
        if not runtime.leading or session is None:
            return True, "standby"
        age = session.oldest_activity_age()
        return age <= settings.liveness_bound_s, f"last watch activity {age:.1f}s ago"

    def ready() -> tuple[bool, str]:
        session = runtime.session
        if not runtime.leading or session is None:
            return True, "standby"
        return session.synced, "synced" if session.synced else "initial sync pending"

    health.add_liveness("watch", live)
    health.add_readiness("initial-sync", ready)

    async def start() -> None:
        nonlocal api_client
        if api_client is None:
            api_client = await make_api_client(settings)
            runtime.on_cleanup(api_client.close)
        api = client.CustomObjectsApi(api_client)
        state = PublishedState(infra.db, settings.cluster_name)
        await state.ensure_indexes()
        runtime.state = state
        runtime.http_port = await serve_health(runtime, health, settings.http_host, settings.http_port)
        elector = LeaseElector(api, settings)
        runtime.elector = elector
        publish = deps.publish or infra.publisher.publish
        runtime.supervisor.spawn("lease", elector.run())
        runtime.supervisor.spawn(
            "leadership", _lead(runtime, settings, api, state, publish, emit_metrics, watch_metrics)
        )

    runtime.on_startup(start)
    return runtime


async def _lead(
    runtime: WatcherRuntime,
    settings: Settings,
    api: client.CustomObjectsApi,
    state: PublishedState,
    publish: PublishFn,
    emit_metrics: EmitMetrics,
    watch_metrics: WatchMetrics,
) -> None:
    """Run one session per leadership term; stop it promptly when the lease is lost."""
    elector = runtime.elector
    assert elector is not None
    while True:
        while not elector.is_leader():
            await _wait_event(elector.changed, settings.lease_renew_s)
        emitter = Emitter(state, publish, is_leader=elector.is_leader, metrics=emit_metrics)
        session = Session(settings=settings, api=api, emitter=emitter, metrics=watch_metrics)
        runtime.session = session
        started = time.monotonic()
        log.info("leading: watching cluster", extra={"cluster": settings.cluster_name})
        task = asyncio.create_task(session.run(), name=f"{NAME}:session")
        try:
            # Poll often: leadership also ends by the clock, without any event.
            while not task.done() and elector.is_leader():
                await asyncio.wait([task], timeout=0.05)
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, NotLeader, BaseExceptionGroup):
                await task
            runtime.session = None
        if not task.cancelled() and (exc := task.exception()) is not None and not _only_not_leader(exc):
            raise exc
        log.info("stopped watching (lease lost)", extra={"term_s": round(time.monotonic() - started, 1)})


async def _wait_event(event: asyncio.Event, timeout: float) -> None:
    event.clear()
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(event.wait(), timeout)


def _only_not_leader(exc: BaseException) -> bool:
    if isinstance(exc, BaseExceptionGroup):
        return all(_only_not_leader(e) for e in exc.exceptions)
    return isinstance(exc, NotLeader)


def main() -> None:
    run_service(lambda: load_settings(Settings, service="kabanero-watcher"), build)
