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

from services.otc_writer.applier import Outcome, ToolApplier, is_unchanged
from services.otc_writer.desired import (
    TRIGGER_PURPOSE,
    DesiredTool,
    TriggerToolStyle,
    desired_trigger_tool,
    instance_scope,
)
from services.otc_writer.ledger import Ledger, LedgerEntry
from services.otc_writer.otc_client import OtcPermanentError
from services.otc_writer.projection import Projection
from shared.amqp import PermanentError, RetryableError
from shared.dependencies import never_succeeds, unavailable_dependency
from shared.events import (
    CloudEvent,
    RoutingKeys,
    ServiceEventData,
    SnapshotData,
    ToolCommand,
    TriggerData,
    TriggerKey,
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
    """Order what must be ordered, no more: trigger events per trigger key, service and snapshot
    events per instance. Revisions (projection) and leases (ledger) make the rest safe to run at once,
    as they already must be between two replicas."""
    if event.routing_key.startswith("kabanero.trigger."):
        try:
            return "trigger:" + TriggerKey.model_validate(event.data.get("key") or {}).id
        except ValueError:
            pass  # invalid: the handler rejects it with the reason
    return event_scope(event) or event.subject or event.id


_WHOLE_STATE: dict[str, tuple[str, type[TriggerData] | type[SnapshotData]]] = {
    RoutingKeys.TRIGGER_CREATED: ("trigger", TriggerData),
    RoutingKeys.TRIGGER_UPDATED: ("trigger", TriggerData),
    RoutingKeys.TRIGGER_DELETED: ("trigger", TriggerData),
    RoutingKeys.SNAPSHOT: ("snapshot", SnapshotData),
}


def revision_of_event(event: CloudEvent) -> tuple[str, int] | None:
    """The consumer's coalescing hook: trigger events (lane: the trigger key) and snapshots (lane:
    the instance) carry the whole state of their key with a monotonic revision, so a newer one waiting
    in the lane makes an older one obsolete (the projection would skip it as stale anyway). Service
    events and commands are never coalesced. Raises on invalid data (then nothing is coalesced)."""
    kind = _WHOLE_STATE.get(event.routing_key)
    if kind is None:
        return None
    sequence, model = kind
    return sequence, model.model_validate(event.data).revision


_TOOL_FIELDS = {"purpose", "key", "toolchain_id", "tool_type_id", "name", "parameters", "revision"}


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
        rk = event.routing_key
        if rk.startswith("service.kabanero-events."):
            data = ServiceEventData.model_validate(event.data)
            await self._on_service(data, rk.rsplit(".", 1)[1], event.id)
        elif rk in (RoutingKeys.TRIGGER_CREATED, RoutingKeys.TRIGGER_UPDATED, RoutingKeys.TRIGGER_DELETED):
            trigger = TriggerData.model_validate(event.data)
            if rk == RoutingKeys.TRIGGER_DELETED and not trigger.deleted:
                trigger = trigger.model_copy(update={"deleted": True})
            await self._on_trigger(trigger, event.id)
        elif rk == RoutingKeys.SNAPSHOT:
            await self._on_snapshot(SnapshotData.model_validate(event.data), event.id)
        else:
            log.info("ignoring event", extra={"type": event.type, "event_id": event.id})

    async def handle_command(self, event: CloudEvent) -> None:
        cmd = ToolCommand.model_validate(event.data)
        if event.routing_key == RoutingKeys.TOOL_APPLY:
            want = DesiredTool(**cmd.model_dump(include=_TOOL_FIELDS))
            await self._run([self._count(cmd.purpose, self._applier.apply(want, cause=event.id))])
        elif event.routing_key == RoutingKeys.TOOL_REMOVE:
            job = self._applier.remove(
                cmd.purpose, cmd.key, cmd.toolchain_id, revision=cmd.revision, name=cmd.name
            )
            await self._run([self._count(cmd.purpose, job)])
        else:
            raise PermanentError(f"unknown command {event.routing_key}")

    # --- projection updates ---

    async def _on_service(self, data: ServiceEventData, what: str, cause: str) -> None:
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
            await self.reconcile_scope(previous_scope, cause)
        await self.reconcile_scope(scope, cause)

    async def _on_trigger(self, trigger: TriggerData, cause: str) -> None:
        state, toolchains = await self._projection.put_trigger_bound(trigger)
        if state == "stale":
            self._metrics.skipped.labels("trigger").inc()
            log.info(
                "stale trigger event skipped", extra={"trigger": trigger.key.id, "revision": trigger.revision}
            )
            return
        await self.reconcile_trigger(trigger, cause, toolchains)

    async def _on_snapshot(self, snap: SnapshotData, cause: str) -> None:
        triggers = await self._projection.put_snapshot(snap)
        if triggers is None:
            self._metrics.skipped.labels("snapshot").inc()
            log.info("stale snapshot skipped", extra={"instance": instance_scope(snap.instance)})
            return
        await self.reconcile_scope(instance_scope(snap.instance), cause, triggers)

    # --- convergence ---

    async def reconcile_scope(
        self, scope: str, cause: str | None = None, triggers: list[TriggerData] | None = None
    ) -> None:
        """Every trigger tool of one instance: create missing, patch changed, delete stale.

        The instance's bindings, triggers and ledger entries are read once (three reads, whatever
        the size) and compared in memory: an applied, unchanged entry costs no further round trip.
        Only entries of triggers this reconcile knows about are removed (a trigger created since
        the triggers were read is its own event's to apply).
        """
        toolchains = await self._projection.bound_toolchains(scope)
        if triggers is None:
            triggers = await self._projection.triggers_in_scope(scope)
        entries = {(e.key, e.toolchain_id): e for e in await self._ledger.in_scope(TRIGGER_PURPOSE, scope)}
        jobs = self._applies(triggers, toolchains, entries, cause) + self._removals(
            triggers, toolchains, entries
        )
        await self._run(jobs)

    def _applies(
        self,
        triggers: list[TriggerData],
        toolchains: set[str],
        entries: dict[tuple[str, str], LedgerEntry],
        cause: str | None,
    ) -> list[Awaitable[Outcome]]:
        """Apply jobs for the live triggers whose tool differs from its ledger entry; the unchanged
        ones are counted here (they cost nothing)."""
        jobs: list[Awaitable[Outcome]] = []
        unchanged = 0
        for trigger in sorted((t for t in triggers if not t.deleted), key=lambda t: t.key.id):
            for tc in sorted(toolchains):
                want = desired_trigger_tool(trigger, tc, self._style)
                entry = entries.get((trigger.key.id, tc))
                if entry is not None and is_unchanged(entry, want):
                    unchanged += 1
                    continue
                jobs.append(self._count(TRIGGER_PURPOSE, self._applier.apply(want, cause=cause)))
        if unchanged:
            self._metrics.tools.labels(TRIGGER_PURPOSE, str(Outcome.UNCHANGED)).inc(unchanged)
        return jobs

    def _removals(
        self,
        triggers: list[TriggerData],
        toolchains: set[str],
        entries: dict[tuple[str, str], LedgerEntry],
    ) -> list[Awaitable[Outcome]]:
        """Remove jobs for entries whose known trigger is deleted or whose toolchain is unbound
        (an entry of a trigger this reconcile did not read is left alone)."""
        known = {t.key.id: t for t in triggers}
        jobs: list[Awaitable[Outcome]] = []
        for (key_id, tc), entry in sorted(entries.items()):
            owner = known.get(key_id)
            if owner is None or (not owner.deleted and tc in toolchains):
                continue
            if entry.present or entry.interrupted:
                jobs.append(self._remove(entry, owner))
        return jobs

    async def reconcile_trigger(
        self, trigger: TriggerData, cause: str | None = None, toolchains: set[str] | None = None
    ) -> None:
        """One trigger in every toolchain bound to its instance (``toolchains``, else read)."""
        if toolchains is None:
            toolchains = await self._projection.bound_toolchains(instance_scope(trigger.instance))
        jobs: list[Awaitable[Outcome]]
        if trigger.deleted:
            jobs = [
                self._count(
                    TRIGGER_PURPOSE,
                    self._applier.remove(
                        TRIGGER_PURPOSE,
                        trigger.key.id,
                        tc,
                        revision=trigger.revision,
                        name=desired_trigger_tool(trigger, tc, self._style).name,
                        create=False,
                    ),
                )
                for tc in sorted(toolchains)
            ]
        else:
            jobs = [
                self._count(
                    TRIGGER_PURPOSE,
                    self._applier.apply(desired_trigger_tool(trigger, tc, self._style), cause=cause),
                )
                for tc in sorted(toolchains)
            ]
        await self._run(jobs)

    async def _remove(self, entry: LedgerEntry, trigger: TriggerData) -> Outcome:
        revision = max(entry.revision, trigger.revision) if trigger.deleted else trigger.revision
        job = self._applier.remove(
            TRIGGER_PURPOSE,
            entry.key,
            entry.toolchain_id,
            revision=revision,
            name=entry.tool_name or desired_trigger_tool(trigger, entry.toolchain_id, self._style).name,
            create=False,
        )
        return await self._count(TRIGGER_PURPOSE, job)

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
        if errors:
            raise _message_error(errors)


def _message_error(errors: list[BaseException]) -> BaseException:
    """The one error a message ends with when some of its tool operations failed."""
    return _overriding(errors) or _combined(errors)


def _overriding(errors: list[BaseException]) -> BaseException | None:
    """A cancellation, else a dependency that is down: either outranks every tool's own error."""
    cancelled = next((e for e in errors if isinstance(e, asyncio.CancelledError)), None)
    if cancelled is not None:
        return cancelled
    # The consumer holds the message and runs it again once the dependency answers (tools
    # already applied cost nothing then).
    down = next((e for e in errors if unavailable_dependency(e) is not None), None)
    return down if isinstance(down, Exception) else None


def _permanent(error: BaseException) -> str | None:
    """Why retrying ``error`` cannot help (OTC refused, the message's own data, a value MongoDB
    cannot store), else None."""
    if isinstance(error, OtcPermanentError | PermanentError):
        return str(error)
    why = never_succeeds(error)
    return f"can never succeed: {why}: {error}" if why is not None else None


def _combined(errors: list[BaseException]) -> BaseException:
    """Permanent only when every failure is: transient failures of other tools must be retried,
    not dead-lettered along with a permanent one (after the bounded attempts the message
    dead-letters with all reasons)."""
    first = errors[0]
    if len(errors) == 1 and isinstance(first, Exception) and not isinstance(first, OtcPermanentError):
        return first  # the consumer classifies it itself
    reasons = [why for e in errors if (why := _permanent(e)) is not None]
    if len(reasons) == len(errors):
        return PermanentError("; ".join(reasons))
    return RetryableError(f"{len(errors)} tool operations failed: " + "; ".join(str(e) for e in errors))
