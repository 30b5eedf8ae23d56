"""otc-writer wiring: ``build(settings, deps=...)`` returns the runtime; ``main()`` runs it."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import Any

import aiohttp

from services.otc_writer import metrics as client_metrics
from services.otc_writer.applier import ToolApplier, WriteHook
from services.otc_writer.audit import AuditMetrics, Auditor, AuditReport
from services.otc_writer.desired import TriggerToolStyle
from services.otc_writer.family import ToolStyles
from services.otc_writer.ledger import Ledger
from services.otc_writer.otc_client import IamTokenManager, OtcClient, OtcClientConfig, OtcError
from services.otc_writer.projection import Projection
from services.otc_writer.reconcile import (
    Metrics,
    Reconciler,
    decode_command,
    decode_event,
    key_of_command,
    key_of_event,
    revision_of_event,
)
from services.otc_writer.settings import Settings
from services.otc_writer.tekton_cards import TektonCardStyle
from services.otc_writer.tool_reports import ReportingApplier, tool_reporter
from shared.amqp import Consumer, Topology
from shared.amqp.consuming.decode import Decoder
from shared.health import Health, HttpServer, health_app
from shared.infra import Infra
from shared.lifecycle import Runtime, run_service, step
from shared.settings import load_settings

log = logging.getLogger(__name__)

NAME = "otc-writer"
EVENTS_QUEUE = "otc-writer.events"
COMMANDS_QUEUE = "otc-writer.commands"
DRAIN_SHARE = 0.4
"""Share of ``SHUTDOWN_TIMEOUT_S`` the consumers wait for running handlers at SIGTERM; what still
runs then is cancelled, its message left unacked (the broker redelivers it: nothing is lost)."""


@dataclass(frozen=True)
class Deps:
    """Optional overrides for tests."""

    session: aiohttp.ClientSession | None = None
    topology: Topology | None = None
    owner: str | None = None
    """Lease owner id of this process (default: a fresh UUID per start)."""
    after_otc_write: WriteHook | None = None
    """Called after each OTC write, before the ledger commit (crash injection in tests)."""
    max_attempts: int = 5


class OtcWriter(Runtime):
    """The runtime plus what tests look at."""

    def __init__(
        self,
        *,
        infra: Infra,
        ledger: Ledger,
        projection: Projection,
        client: OtcClient,
        applier: ToolApplier,
        reconciler: Reconciler,
        auditor: Auditor,
        http: HttpServer,
        iam: IamTokenManager,
        shutdown_timeout: float,
    ) -> None:
        super().__init__(NAME, shutdown_timeout=shutdown_timeout)
        self.infra = infra
        self.ledger = ledger
        self.projection = projection
        self.client = client
        self.applier = applier
        self.reconciler = reconciler
        self.auditor = auditor
        self.http = http
        self.iam = iam
        self.consumers: list[Consumer[Any]] = []
        self.handled: dict[str, int] = {EVENTS_QUEUE: 0, COMMANDS_QUEUE: 0}
        """Messages handled successfully per queue (acked right after): tests wait on it."""

    @property
    def http_port(self) -> int:
        return self.http.port

    async def audit_once(self) -> AuditReport:
        """One audit pass now (the periodic task runs the same, every ``OTC_AUDIT_INTERVAL_S``)."""
        return await self.auditor.audit_once()

    def counted[M](
        self, queue: str, handler: Callable[[M], Awaitable[None]]
    ) -> Callable[[M], Awaitable[None]]:
        async def run(message: M) -> None:
            await handler(message)
            self.handled[queue] += 1

        return run


def otc_config(settings: Settings) -> OtcClientConfig:
    return OtcClientConfig(
        api_url=settings.otc_api_url,
        rate_limit=settings.otc_rate_limit,
        max_concurrency=settings.otc_max_concurrency,
        timeout_s=settings.otc_timeout_s,
        deadline_s=settings.otc_deadline_s,
        max_attempts=settings.otc_max_attempts,
        backoff_base_s=settings.otc_backoff_base_s,
        backoff_cap_s=settings.otc_backoff_cap_s,
        breaker_threshold=settings.otc_breaker_threshold,
        breaker_reset_s=settings.otc_breaker_reset_s,
        max_body_bytes=settings.otc_max_body_bytes,
        list_max_pages=settings.otc_list_max_pages,
        list_max_items=settings.otc_list_max_items,
        retry_after_max_s=settings.otc_retry_after_max_s,
    )


def tool_styles(settings: Settings) -> ToolStyles:
    return ToolStyles(
        trigger=TriggerToolStyle(
            tool_type_id=settings.trigger_tool_type,
            lifecycle_phase=settings.trigger_lifecycle_phase,
            dashboard_url=settings.trigger_dashboard_url,
        ),
        tekton=TektonCardStyle(
            tool_type_id=settings.tekton_tool_type,
            lifecycle_phase=settings.tekton_lifecycle_phase,
            service_page_url=settings.tekton_service_page_url,
        ),
    )


def build(settings: Settings, *, deps: Deps | None = None) -> OtcWriter:
    """Runs inside the event loop (the OTC HTTP session is created here, closed as the first part)."""
    deps = deps or Deps()
    health = Health()
    infra = Infra(settings, name=NAME, health=health, topology=deps.topology)
    owner = deps.owner or f"{NAME}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    session = deps.session or aiohttp.ClientSession()
    iam = IamTokenManager(
        session,
        settings.otc_iam_url,
        settings.otc_api_key.get_secret_value(),
        timeout_s=settings.otc_timeout_s,
    )
    client = OtcClient(otc_config(settings), session, iam)
    client_metrics.register(health.registry, lambda: client)
    ledger = Ledger(infra.db, lease_ttl_s=settings.lease_ttl_s, lease_wait_s=settings.lease_wait_s)
    projection = Projection(infra.db)
    # Every tool outcome is told to broker-api for the services' pages (services.otc_writer.tool_reports).
    reporter = tool_reporter(infra.publisher, health.registry, client, time.monotonic)
    applier = ReportingApplier(
        ledger, client, owner=owner, reporter=reporter, after_write=deps.after_otc_write
    )
    styles = tool_styles(settings)
    runtime = OtcWriter(
        infra=infra,
        ledger=ledger,
        projection=projection,
        client=client,
        applier=applier,
        reconciler=Reconciler(projection, ledger, applier, styles, Metrics(health.registry)),
        auditor=Auditor(ledger, client, applier, AuditMetrics(health.registry), owner=owner),
        http=HttpServer(health_app(health), settings.http_host, settings.http_port, name=NAME),
        iam=iam,
        shutdown_timeout=settings.shutdown_timeout_s,
    )
    health.add_readiness("otc", client.readiness)
    health.add_readiness("iam", lambda: (iam.rejected is None, iam.rejected or ""))
    probes = {**infra.probes(), "otc": client.probe, "iam": client.probe}
    health.add_liveness("consumers", lambda: all(not t.done() for t in runtime.supervisor.tasks))

    if deps.session is None:  # ours: closed whatever part fails after it
        runtime.add("otc-http-session", lambda: session)
    infra.attach(runtime)
    runtime.add("storage", lambda: step(functools.partial(_prepare_storage, ledger, projection)))
    # Started before the consumers, so it closes after them: it publishes what they left in it.
    runtime.add("tool-outcomes", lambda: reporter.outbox.running(runtime.supervisor))

    def consumer[M](
        queue: str,
        handler: Callable[[M], Awaitable[None]],
        decode: Decoder[M],
        key_of: Callable[[M], str],
        revision_of: Callable[[M], tuple[str, int] | None] | None = None,
    ) -> Consumer[M]:
        return Consumer(
            infra.amqp,
            infra.publisher,
            queue,
            runtime.counted(queue, handler),
            metrics=infra.consumer_metrics,
            topology=infra.topology,
            prefetch=settings.prefetch,
            max_attempts=deps.max_attempts,
            key_of=key_of,
            probes=probes,
            revision_of=revision_of,
            concurrency=settings.handler_concurrency,
            hold_limit_s=settings.consumer_hold_limit_s,
            drain_timeout=DRAIN_SHARE * settings.shutdown_timeout_s,
            decode=decode,
        )

    events = consumer(
        EVENTS_QUEUE, runtime.reconciler.handle_event, decode_event, key_of_event, revision_of_event
    )
    commands = consumer(COMMANDS_QUEUE, runtime.reconciler.handle_command, decode_command, key_of_command)
    consume: dict[str, Callable[[], Coroutine[Any, Any, None]]] = {}
    for each in (events, commands):
        runtime.consumers.append(each)
        health.add_readiness(f"queue:{each.queue_name}", each.readiness)
        consume[f"consume:{each.queue_name}"] = each.run
    # Stopped together: the two drains overlap (one after the other they took 2 x 10 s).
    runtime.add_tasks(consume)
    if settings.otc_audit_interval_s > 0:
        runtime.add_task("otc-audit", functools.partial(runtime.auditor.run, settings.otc_audit_interval_s))
    runtime.add("iam-check", lambda: _first_token(iam))
    runtime.add("http", lambda: runtime.http)
    return runtime


async def _prepare_storage(ledger: Ledger, projection: Projection) -> None:
    await ledger.ensure_indexes()
    await projection.ensure_indexes()
    for doc in await ledger.refused():
        log.warning(
            "OTC refused this tool's content; it is not re-attempted until the content changes",
            extra={
                "ledger_id": doc.id,
                "refused_at": str(doc.refused_at),
                "error": doc.last_error,
            },
        )


@contextlib.asynccontextmanager
async def _first_token(iam: IamTokenManager) -> AsyncIterator[None]:
    """Learn at once whether IAM accepts the key (readiness), without delaying start-up.

    Not a supervised task: it ends by design, and liveness counts every supervised task.
    """

    async def fetch() -> None:
        try:
            await iam.token()
        except OtcError as exc:
            log.error("no IAM token: OTC writes wait until IAM issues one", extra={"error": str(exc)})

    task = asyncio.create_task(fetch(), name=f"{NAME}:iam-check")
    try:
        yield
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


def main() -> None:
    run_service(lambda: load_settings(Settings, service="otc-writer"), build)
