"""Wiring of kabanero-watcher: infra, Kubernetes client, lease election, leadership terms, HTTP."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from prometheus_client import Gauge

from services.kabanero_watcher.emitting import EmitMetrics, Emitter, NotLeader, PublishFn
from services.kabanero_watcher.families import make_families
from services.kabanero_watcher.identity import ClusterIdentity
from services.kabanero_watcher.kube import ApiClient, KubeClient
from services.kabanero_watcher.lease import LeaseElector
from services.kabanero_watcher.owned_instances import (
    Message,
    OwnedInstances,
    OwnedInstanceStore,
    owned_instances_route,
)
from services.kabanero_watcher.owned_instances import decode as decode_owned
from services.kabanero_watcher.owned_instances import key_of as owned_key
from services.kabanero_watcher.resync import ResyncListener
from services.kabanero_watcher.session import Session
from services.kabanero_watcher.settings import Settings
from services.kabanero_watcher.state import PublishedState
from services.kabanero_watcher.watching import WatchMetrics
from shared.amqp.consumer import Consumer
from shared.amqp.topology import Topology, owned_instances_queue, with_owned_instances
from shared.health import Health, HttpServer, health_app
from shared.infra import Infra
from shared.lifecycle import Runtime, run_service, step
from shared.settings import load_settings

log = logging.getLogger(__name__)

NAME = "kabanero-watcher"


@dataclass
class Deps:
    """Optional overrides for tests and benchmarks."""

    api_client: ApiClient | None = None
    publish: PublishFn | None = None


class WatcherRuntime(Runtime):
    """The runtime plus what tests look at: HTTP port, elector and the current session."""

    def __init__(
        self,
        *,
        infra: Infra,
        state: PublishedState,
        kube: KubeClient,
        http: HttpServer,
        shutdown_timeout: float,
    ) -> None:
        super().__init__(NAME, shutdown_timeout=shutdown_timeout)
        self.infra = infra
        self.state = state
        self.kube = kube
        self.http = http
        self.elector: LeaseElector | None = None
        self.session: Session | None = None
        self.stalls = infra.stalls

    @property
    def http_port(self) -> int:
        return self.http.port

    @property
    def leading(self) -> bool:
        return self.elector is not None and self.elector.is_leader()


def build(settings: Settings, *, deps: Deps | None = None) -> WatcherRuntime:
    """MongoDB, RabbitMQ, the published state's indexes, HTTP, the Kubernetes client, then the
    lease and the leadership terms (stopped first)."""
    deps = deps or Deps()
    health = Health()
    infra = Infra(
        settings,
        name=NAME,
        health=health,
        topology=Topology(queues=with_owned_instances([settings.cluster_name])),
    )
    emit_metrics = EmitMetrics(health.registry)
    watch_metrics = WatchMetrics(health.registry)
    state = PublishedState(infra.db, settings.cluster_name)
    owned_store = OwnedInstanceStore(infra.db)
    web_app = health_app(health)
    web_app.router.add_get("/instances", owned_instances_route(owned_store))
    runtime = WatcherRuntime(
        infra=infra,
        state=state,
        kube=KubeClient(settings, deps.api_client),
        http=HttpServer(web_app, settings.http_host, settings.http_port, name=NAME),
        shutdown_timeout=settings.shutdown_timeout_s,
    )

    _health_checks(health, runtime, settings)
    leader = Gauge(
        "kotc_watcher_leader",
        "1 while this watcher leads its cluster (holds the Lease)",
        ["cluster"],
        registry=health.registry,
    )
    leader.labels(settings.cluster_name).set_function(lambda: float(runtime.leading))
    refused = Gauge(
        "kotc_watcher_namespaces_refused",
        "Namespaces whose published state MongoDB refuses for good (set aside until they change)",
        ["cluster"],
        registry=health.registry,
    )
    refused.labels(settings.cluster_name).set_function(lambda: float(len(_refused(runtime.session))))

    def elect() -> contextlib.AbstractAsyncContextManager[object]:
        custom = runtime.kube.custom
        identity = ClusterIdentity(
            infra.db,
            runtime.kube.api_client,
            settings.cluster_name,
            holder=settings.holder_identity,
            timeout_s=settings.kube_request_timeout_s,
        )
        runtime.elector = LeaseElector(custom, settings, precheck=identity.verify, stalls=runtime.stalls)
        return runtime.supervisor.running("lease", runtime.elector.run())

    resync = ResyncListener(
        infra.amqp,
        infra.publisher,
        cluster=settings.cluster_name,
        holder=settings.holder_identity,
        session=lambda: runtime.session if runtime.leading else None,
    )

    def owned_consumer() -> Consumer[Message]:
        assert runtime.elector is not None
        handler = OwnedInstances(
            cluster=settings.cluster_name,
            api_client=lambda: runtime.kube.api_client,
            store=owned_store,
            create_namespaces=settings.create_namespaces,
            is_leader=runtime.elector.is_leader,
            publish=infra.publisher.publish,
            source=f"/{NAME}/{settings.cluster_name}",
        )
        return Consumer(
            infra.amqp,
            infra.publisher,
            owned_instances_queue(settings.cluster_name),
            handler.handle,
            metrics=infra.consumer_metrics,
            topology=infra.topology,
            prefetch=4,
            key_of=owned_key,
            decode=decode_owned,
            probes=infra.probes(),
        )

    def lead() -> contextlib.AbstractAsyncContextManager[object]:
        publish = deps.publish or infra.publisher.publish
        term = _lead(runtime, settings, publish, emit_metrics, watch_metrics, owned_consumer)
        return runtime.supervisor.running("leadership", term)

    infra.attach(runtime)
    runtime.add("published-state", lambda: step(state.ensure_indexes))
    runtime.add("http", lambda: runtime.http)
    runtime.add("kubernetes", lambda: runtime.kube)
    runtime.add("lease", elect)
    runtime.add("leadership", lead)
    runtime.add_task("resync-listener", resync.run)
    return runtime


def _health_checks(health: Health, runtime: WatcherRuntime, settings: Settings) -> None:
    """/healthz and /readyz: each check says what is wrong in words an operator acts on."""

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
        pending = session.pending_families()
        if not pending:
            return True, "synced"
        return False, (
            f"initial sync pending: {', '.join(pending)} "
            f"({session.emitter.published} events published in this term so far)"
        )

    def lease() -> tuple[bool, str]:
        return runtime.elector.health() if runtime.elector is not None else (True, "starting")

    def event_loop() -> tuple[bool, str]:
        # Held for more than a third of the Lease (at least 1 s: a busy node's scheduling is not a
        # stall): renewals were at risk; said for one Lease duration.
        bound = max(settings.lease_duration_s / 3, 1.0)
        return runtime.stalls.health(bound_s=bound, window_s=float(settings.lease_duration_s))

    health.add_liveness("watch", live)
    health.add_readiness("initial-sync", ready)
    health.add_readiness("reconcile", lambda: storage_health(runtime.session))
    health.add_readiness("lease", lease)
    health.add_readiness("event-loop", event_loop)


def _refused(session: Session | None) -> dict[str, str]:
    return session.refused if session is not None else {}


def storage_health(session: Session | None) -> tuple[bool, str]:
    """Not ready while MongoDB refuses a namespace for good (named), or an error left namespaces
    pending (retried)."""
    if session is None:
        return True, ""
    if session.refused:
        names = ", ".join(repr(ns) for ns in sorted(session.refused))
        reason = next(iter(session.refused.values()))
        return False, f"MongoDB refuses the published state of {names}, set aside until it changes: {reason}"
    if session.storage_error is None:
        return True, ""
    return False, f"namespaces pending, retried: MongoDB {session.storage_error}"


async def _lead(
    runtime: WatcherRuntime,
    settings: Settings,
    publish: PublishFn,
    emit_metrics: EmitMetrics,
    watch_metrics: WatchMetrics,
    owned_consumer: Callable[[], Consumer[Message]],
) -> None:
    """Run one session per leadership term; stop it promptly when the lease is lost. The
    owned-instance commands are consumed during the term only, so one replica writes at a time."""
    elector = runtime.elector
    assert elector is not None
    while True:
        while not elector.is_leader():
            await _wait_event(elector.changed, settings.lease_renew_s)
        emitter = Emitter(
            runtime.state,
            publish,
            is_leader=elector.is_leader,
            metrics=emit_metrics,
            batch=settings.publish_batch,
            part_bytes=settings.snapshot_part_bytes,
        )
        session = Session(
            settings=settings,
            api=runtime.kube.custom,
            emitter=emitter,
            families=make_families(settings, emitter),
            metrics=watch_metrics,
        )
        runtime.session = session
        started = time.monotonic()
        log.info("leading: watching cluster", extra={"cluster": settings.cluster_name})
        task = asyncio.create_task(session.run(), name=f"{NAME}:session")
        commands = asyncio.create_task(owned_consumer().run(), name=f"{NAME}:owned-instances")
        try:
            # Poll often: leadership also ends by the clock, without any event.
            while not task.done() and not commands.done() and elector.is_leader():
                await asyncio.wait([task, commands], timeout=0.05, return_when=asyncio.FIRST_COMPLETED)
        finally:
            task.cancel()
            commands.cancel()
            # asyncio.wait, not `await task` under suppress(CancelledError): a cancellation of this
            # term itself (shutdown) while the consumer drains must propagate, not be swallowed.
            await asyncio.wait([task, commands])
            runtime.session = None
        if not commands.cancelled() and (exc := commands.exception()) is not None:
            raise exc
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
