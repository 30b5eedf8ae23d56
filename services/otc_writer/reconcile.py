"""Message handlers: update the projection, then converge OTC towards it (level-triggered).

Every event, whatever its kind, ends in the same step: compute the desired trigger tools of the
affected instance (or trigger) from the projection, compare with the ledger, and apply or remove
the difference. Replays, reordering and snapshots therefore all converge to one state, and an
unchanged world costs no OTC call (the ledger's content hash matches).

One message may touch many tools: all are attempted, then the message fails if any did; a permanent
OTC error dead-letters it (reason in the headers) without holding back the other tools. When some
failures are transient the message is retried instead (the already applied tools cost nothing on
the retry), so a permanent error never swallows another tool's transient one.

A tool whose content OTC refused is then skipped without a call while that content stays the same
(see ``applier``): later messages that meet only such tools are acked, not dead-lettered again, and
the skips count as ``kotc_otc_tool_outcomes_total{outcome="refused"}``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable

from prometheus_client import CollectorRegistry, Counter

from services.otc_writer.applier import Outcome, ToolApplier, current_message
from services.otc_writer.desired import (
    TRIGGER_PURPOSE,
    DesiredTool,
    TriggerToolStyle,
    desired_trigger_tool,
    instance_scope,
)
from services.otc_writer.ledger import Ledger
from services.otc_writer.otc_client import OtcPermanentError
from services.otc_writer.projection import Projection
from shared.amqp import PermanentError, RetryableError
from shared.dependencies import unavailable_dependency
from shared.events import (
    CloudEvent,
    RoutingKeys,
    ServiceEventData,
    SnapshotData,
    ToolCommand,
    TriggerData,
    event_scope,
)

log = logging.getLogger(__name__)


class Metrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.tools = Counter(
            "kotc_otc_tool_outcomes_total",
            "Tool apply/remove outcomes",
            ["purpose", "outcome"],
            registry=registry,
        )
        self.skipped = Counter(
            "kotc_otc_writer_stale_events_total", "Events skipped as stale", ["kind"], registry=registry
        )


def key_of_event(event: CloudEvent) -> str:
    """Serialise per Kabanero instance: service, trigger and snapshot events of one instance in order."""
    return event_scope(event) or event.subject or event.id


def key_of_command(event: CloudEvent) -> str:
    data = event.data
    return f"{data.get('purpose')}|{data.get('toolchain_id')}|{data.get('key')}"


class Reconciler:
    def __init__(
        self,
        projection: Projection,
        ledger: Ledger,
        applier: ToolApplier,
        style: TriggerToolStyle,
        metrics: Metrics,
    ) -> None:
        self._projection = projection
        self._ledger = ledger
        self._applier = applier
        self._style = style
        self._metrics = metrics

    # --- entry points (consumer handlers) ---

    async def handle_event(self, event: CloudEvent) -> None:
        token = current_message.set(event.id)
        try:
            await self._handle_event(event)
        finally:
            current_message.reset(token)

    async def handle_command(self, event: CloudEvent) -> None:
        token = current_message.set(event.id)
        try:
            await self._handle_command(event)
        finally:
            current_message.reset(token)

    async def _handle_event(self, event: CloudEvent) -> None:
        rk = event.routing_key
        if rk.startswith("service.kabanero-events."):
            await self._on_service(ServiceEventData.model_validate(event.data), rk.rsplit(".", 1)[1])
        elif rk in (RoutingKeys.TRIGGER_CREATED, RoutingKeys.TRIGGER_UPDATED, RoutingKeys.TRIGGER_DELETED):
            trigger = TriggerData.model_validate(event.data)
            if rk == RoutingKeys.TRIGGER_DELETED and not trigger.deleted:
                trigger = trigger.model_copy(update={"deleted": True})
            await self._on_trigger(trigger)
        elif rk == RoutingKeys.SNAPSHOT:
            await self._on_snapshot(SnapshotData.model_validate(event.data))
        else:
            log.info("ignoring event", extra={"type": event.type, "event_id": event.id})

    async def _handle_command(self, event: CloudEvent) -> None:
        cmd = ToolCommand.model_validate(event.data)
        if event.routing_key == RoutingKeys.TOOL_APPLY:
            want = DesiredTool(
                purpose=cmd.purpose,
                key=cmd.key,
                toolchain_id=cmd.toolchain_id,
                tool_type_id=cmd.tool_type_id,
                name=cmd.name,
                parameters=cmd.parameters,
                revision=cmd.revision,
            )
            await self._run([self._count(cmd.purpose, self._applier.apply(want))])
        elif event.routing_key == RoutingKeys.TOOL_REMOVE:
            await self._run(
                [
                    self._count(
                        cmd.purpose,
                        self._applier.remove(
                            cmd.purpose, cmd.key, cmd.toolchain_id, revision=cmd.revision, name=cmd.name
                        ),
                    )
                ]
            )
        else:
            raise PermanentError(f"unknown command {event.routing_key}")

    # --- projection updates ---

    async def _on_service(self, data: ServiceEventData, what: str) -> None:
        deleted = data.deleted or what == "deprovisioned"
        fresh, previous_scope = await self._projection.put_service(data, deleted=deleted)
        if not fresh:
            self._metrics.skipped.labels("service").inc()
            log.info(
                "stale service event skipped",
                extra={"instance_id": data.instance_id, "revision": data.revision},
            )
            return
        scope = data.parameters.scope
        if previous_scope is not None:
            await self.reconcile_scope(previous_scope)
        await self.reconcile_scope(scope)

    async def _on_trigger(self, trigger: TriggerData) -> None:
        if not await self._projection.put_trigger(trigger):
            self._metrics.skipped.labels("trigger").inc()
            log.info(
                "stale trigger event skipped", extra={"trigger": trigger.key.id, "revision": trigger.revision}
            )
            return
        await self.reconcile_trigger(trigger.key.id)

    async def _on_snapshot(self, snap: SnapshotData) -> None:
        if not await self._projection.put_snapshot(snap):
            self._metrics.skipped.labels("snapshot").inc()
            log.info("stale snapshot skipped", extra={"instance": instance_scope(snap.instance)})
            return
        await self.reconcile_scope(instance_scope(snap.instance))

    # --- convergence ---

    async def reconcile_scope(self, scope: str) -> None:
        """Every trigger tool of one instance: create missing, patch changed, delete stale."""
        toolchains = await self._projection.bound_toolchains(scope)
        triggers = await self._projection.live_triggers(scope)
        wanted = {(t.key.id, tc): t for t in triggers for tc in toolchains}
        jobs: list[Awaitable[Outcome]] = [
            self._count(TRIGGER_PURPOSE, self._applier.apply(desired_trigger_tool(t, tc, self._style)))
            for (_, tc), t in sorted(wanted.items())
        ]
        for doc in await self._ledger.present_in_scope(TRIGGER_PURPOSE, scope):
            if (doc["key"], doc["toolchain_id"]) not in wanted:
                jobs.append(self._remove_trigger_tool(doc["key"], doc["toolchain_id"], scope))
        await self._run(jobs)

    async def reconcile_trigger(self, key_id: str) -> None:
        trigger = await self._projection.get_trigger(key_id)
        if trigger is None:
            return
        scope = instance_scope(trigger.instance)
        toolchains = set() if trigger.deleted else await self._projection.bound_toolchains(scope)
        jobs: list[Awaitable[Outcome]] = [
            self._count(TRIGGER_PURPOSE, self._applier.apply(desired_trigger_tool(trigger, tc, self._style)))
            for tc in sorted(toolchains)
        ]
        for doc in await self._ledger.present_for_key(TRIGGER_PURPOSE, key_id):
            if doc["toolchain_id"] not in toolchains:
                jobs.append(self._remove_trigger_tool(key_id, doc["toolchain_id"], scope))
        await self._run(jobs)

    async def _remove_trigger_tool(self, key_id: str, toolchain_id: str, scope: str) -> Outcome:
        trigger = await self._projection.get_trigger(key_id)
        revision = trigger.revision if trigger else 0
        name = desired_trigger_tool(trigger, toolchain_id, self._style).name if trigger else None
        return await self._count(
            TRIGGER_PURPOSE,
            self._applier.remove(TRIGGER_PURPOSE, key_id, toolchain_id, revision=revision, name=name),
        )

    async def _count(self, purpose: str, job: Awaitable[Outcome]) -> Outcome:
        outcome = await job
        self._metrics.tools.labels(purpose, str(outcome)).inc()
        return outcome

    @staticmethod
    async def _run(jobs: list[Awaitable[Outcome]]) -> None:
        if not jobs:
            return
        results = await asyncio.gather(*jobs, return_exceptions=True)
        errors = [r for r in results if isinstance(r, BaseException)]
        for err in errors:
            if isinstance(err, asyncio.CancelledError):
                raise err
        # A dependency that is down outranks everything: the consumer holds the message and runs
        # it again once the dependency answers (tools already applied cost nothing then).
        down = next((e for e in errors if unavailable_dependency(e) is not None), None)
        if isinstance(down, Exception):
            raise down
        permanent = [e for e in errors if isinstance(e, OtcPermanentError)]
        if permanent and len(permanent) == len(errors):
            raise PermanentError("; ".join(str(e) for e in permanent))
        if errors:
            # Transient failures of other tools must be retried, not dead-lettered along with a
            # permanent one; after the bounded attempts the message dead-letters with all reasons.
            first = errors[0]
            if len(errors) == 1 and isinstance(first, Exception):
                raise first
            raise RetryableError(
                f"{len(errors)} tool operations failed: " + "; ".join(str(e) for e in errors)
            )
