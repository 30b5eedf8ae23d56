"""Message handlers: update the projection, then converge OTC towards it (level-triggered).

One machinery for every family of items (``family.py``: Kabanero triggers, Tekton cards). Every
event, whatever its kind, ends in the same step: compute the desired tools of the affected scope
(or item) from the projection, compare with the ledger, and apply or remove the difference. Replays, reordering and snapshots therefore all converge to one state, and an
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
from typing import Any, cast

from prometheus_client import CollectorRegistry, Counter
from pydantic import BaseModel
from pymongo.errors import PyMongoError

from services.otc_writer.applier import Outcome, ToolApplier, is_unchanged
from services.otc_writer.converged import converged_for, styles_fingerprint
from services.otc_writer.desired import DesiredTool
from services.otc_writer.family import FAMILIES, Family, Item, Snapshot, ToolStyles
from services.otc_writer.ledger import Ledger, LedgerEntry
from services.otc_writer.otc_client import OtcPermanentError
from services.otc_writer.projection import Projection
from shared.amqp import DataModel, DataModels, Delivery, PermanentError, RetryableError
from shared.dependencies import never_succeeds, unavailable_dependency
from shared.events import RoutingKeys, ServiceEventData, ToolCommand
from shared.snapshot_parts import sequence

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
        self.converged = Counter(
            "kotc_otc_writer_converged_snapshots_total",
            "Snapshots that said what the scope had converged on: compared in O(1), not item by item",
            ["kind"],
            registry=registry,
        )


def _routes() -> tuple[dict[str, Family[Any, Any]], dict[str, Family[Any, Any]], dict[str, Family[Any, Any]]]:
    """Routing key -> family, for item events, snapshots and (by service kind) service events."""
    items = {rk: f for f in FAMILIES for rk in f.item_routing}
    snapshots = {f.snapshot_routing: f for f in FAMILIES}
    services: dict[str, Family[Any, Any]] = {f.service_kind: f for f in FAMILIES}
    return items, snapshots, services


_ITEMS, _SNAPSHOTS, _SERVICES = _routes()


def _decoder() -> DataModels[BaseModel]:
    models: dict[str, type[BaseModel]] = {}
    for family in FAMILIES:
        models |= family.data_models()
    return DataModels(models)


decode_event = _decoder()
"""The events consumer's decoder, built from the families: each event's data is validated once, for
the lane, the coalescing and the handler; invalid data is dead-lettered by the consumer with the
reason naming the field (``invalid TriggerData: data.revision: ...``)."""

decode_command = DataModel(ToolCommand)
"""The commands consumer's decoder."""

type EventMessage = Delivery[BaseModel | None]
"""An event and its data as :data:`decode_event` made it (None: a routing key no family reads)."""
type CommandMessage = Delivery[ToolCommand]


def key_of_event(message: EventMessage) -> str:
    """Order what must be ordered, no more: item events (triggers, Tekton cards) per item key,
    service and snapshot events per scope (a Kabanero instance, a Tekton namespace; a Tekton
    service: its cluster). Revisions (projection) and leases (ledger) make the rest safe to run at
    once, as they already must be between two replicas."""
    data, rk = message.data, message.routing_key
    family = _ITEMS.get(rk)
    if family is not None and data is not None:
        return f"{family.name}:" + cast(Item, data).key.id
    family = _SNAPSHOTS.get(rk)
    if family is not None and data is not None:
        return family.snapshot_scope(data)
    if isinstance(data, ServiceEventData):
        return data.scope
    return message.event.subject or message.id


def revision_of_event(message: EventMessage) -> tuple[str, int] | None:
    """The consumer's coalescing hook: item events (lane: the item key) and snapshots (lane: the
    scope) carry the whole state of their key with a monotonic revision, so a newer one waiting in
    the lane makes an older one obsolete (the projection would skip it as stale anyway). Service
    events and commands are never coalesced."""
    data, rk = message.data, message.routing_key
    family = _ITEMS.get(rk)
    if family is not None and data is not None:
        return family.name, cast(Item, data).revision
    family = _SNAPSHOTS.get(rk)
    if family is not None and data is not None:
        snap = cast(Snapshot, data)  # parts of one revision never supersede each other
        return sequence(family.snapshot_label, snap.part), snap.revision
    return None


_TOOL_FIELDS = {"purpose", "key", "toolchain_id", "tool_type_id", "name", "parameters", "revision"}


def key_of_command(message: CommandMessage) -> str:
    cmd = message.data
    return f"{cmd.purpose}|{cmd.toolchain_id}|{cmd.key}"


class Reconciler:
    def __init__(
        self,
        projection: Projection,
        ledger: Ledger,
        applier: ToolApplier,
        styles: ToolStyles,
        metrics: Metrics,
    ) -> None:
        self._projection = projection
        self._ledger = ledger
        self._applier = applier
        self._styles = styles
        self._styles_fp = styles_fingerprint(styles)
        self._metrics = metrics

    # --- entry points (consumer handlers) ---

    async def handle_event(self, message: EventMessage) -> None:
        rk, data = message.routing_key, message.data
        family = _ITEMS.get(rk)
        if family is not None and data is not None:
            item = cast(Item, data)
            if rk == family.item_routing[2] and not item.deleted:
                item = item.model_copy(update={"deleted": True})
            await self._on_item(family, item, message.id)
            return
        family = _SNAPSHOTS.get(rk)
        if family is not None and data is not None:
            await self._on_snapshot(family, cast(Snapshot, data), message.id)
            return
        if isinstance(data, ServiceEventData):
            family = _SERVICES.get(rk.split(".")[1])
            if family is not None:
                if data.kind != family.service_kind:  # its scope would be read the wrong way
                    raise PermanentError(f"kind: {data.kind!r} in a {rk} event")
                await self._on_service(family, data, rk.rsplit(".", 1)[1], message.id)
                return
        log.info("ignoring event", extra={"type": message.event.type, "event_id": message.id})

    async def handle_command(self, message: CommandMessage) -> None:
        cmd, rk = message.data, message.routing_key
        if rk == RoutingKeys.TOOL_APPLY:
            want = DesiredTool(**cmd.model_dump(include=_TOOL_FIELDS))
            await self._run([self._count(cmd.purpose, self._applier.apply(want, cause=message.id))])
        elif rk == RoutingKeys.TOOL_REMOVE:
            job = self._applier.remove(
                cmd.purpose, cmd.key, cmd.toolchain_id, revision=cmd.revision, name=cmd.name
            )
            await self._run([self._count(cmd.purpose, job)])
        else:
            raise PermanentError(f"unknown command {rk}")

    # --- projection updates ---

    async def _on_service(
        self, family: Family[Any, Any], data: ServiceEventData, what: str, cause: str
    ) -> None:
        deleted = data.deleted or what == "deprovisioned"
        fresh, scopes = await self._projection.put_service(family, data, deleted=deleted)
        if not fresh:
            self._metrics.skipped.labels("service").inc()
            log.info(
                "stale service event skipped",
                extra={"instance_id": data.instance_id, "revision": data.revision},
            )
            return
        for scope in scopes:
            await self.reconcile_scope(family, scope, cause)

    async def _on_item[T: Item](self, family: Family[T, Any], item: T, cause: str) -> None:
        state, toolchains = await self._projection.put_item_bound(family, item)
        if state == "stale":
            self._metrics.skipped.labels(family.name).inc()
            log.info(
                "stale %s event skipped",
                family.name,
                extra={"key": item.key.id, "revision": item.revision},
            )
            return
        await self.reconcile_item(family, item, cause, toolchains)

    async def _on_snapshot[T: Item, N: Snapshot](self, family: Family[T, N], part: N, cause: str) -> None:
        scope = family.snapshot_scope(part)
        snap = await self._projection.whole_snapshot(family, part)
        if snap is None:  # a part kept until its revision is whole (nothing applied), or stale
            log.info(
                "snapshot part held or stale",
                extra={"scope": scope, "revision": part.revision, "part": part.part, "parts": part.parts},
            )
            return
        state, converged = await self._projection.note_snapshot(family, snap)
        if state == "stale":
            self._metrics.skipped.labels(family.snapshot_label).inc()
            log.info("stale snapshot skipped", extra={"scope": scope})
            return
        bindings = await self._projection.bindings_of(scope)
        listed = family.snapshot_items(snap)
        if converged is not None and converged == converged_for(listed, bindings, self._styles_fp):
            # It says what the scope converged on: nothing to store, every entry unchanged.
            self._metrics.converged.labels(family.snapshot_label).inc()
            live = sum(1 for t in listed if not t.deleted)
            if live and bindings[1]:
                self._metrics.tools.labels(family.purpose, str(Outcome.UNCHANGED)).inc(
                    live * len(bindings[1])
                )
        else:
            items = await self._projection.store_snapshot(family, snap)
            await self.reconcile_scope(family, scope, cause, items, bindings=bindings)
        if part.parts > 1:
            await self._projection.drop_snapshot_parts(scope, part.revision)

    # --- convergence ---

    async def reconcile_scope[T: Item](
        self,
        family: Family[T, Any],
        scope: str,
        cause: str | None = None,
        items: list[T] | None = None,
        *,
        bindings: tuple[int, set[str]] | None = None,
    ) -> None:
        """Every tool of one scope: create missing, patch changed, delete stale.

        The scope's bindings, items and ledger entries are read once (three reads, whatever the
        size) and compared in memory: an applied, unchanged entry costs no further round trip.
        Only entries of items this reconcile knows about are removed (an item created since the
        items were read is its own event's to apply). When every tool ended applied, the scope's
        converged record says so (``converged.py``): its next snapshot that says the same is O(1).
        """
        if bindings is None:
            bindings = await self._projection.bindings_of(scope)
        toolchains = bindings[1]
        if items is None:
            items = await self._projection.items_in_scope(family, scope)
        entries = {(e.key, e.toolchain_id): e for e in await self._ledger.in_scope(family.purpose, scope)}
        jobs = self._applies(family, items, toolchains, entries, cause) + self._removals(
            family, items, toolchains, entries
        )
        await self._run(jobs, scope)
        await self._projection.record_converged(scope, converged_for(items, bindings, self._styles_fp))

    def _applies[T: Item](
        self,
        family: Family[T, Any],
        items: list[T],
        toolchains: set[str],
        entries: dict[tuple[str, str], LedgerEntry],
        cause: str | None,
    ) -> list[Awaitable[Outcome]]:
        """Apply jobs for the live items whose tool differs from its ledger entry; the unchanged
        ones are counted here (they cost nothing)."""
        jobs: list[Awaitable[Outcome]] = []
        unchanged = 0
        for item in sorted((t for t in items if not t.deleted), key=lambda t: t.key.id):
            for tc in sorted(toolchains):
                want = family.desired(item, tc, self._styles)
                entry = entries.get((item.key.id, tc))
                if entry is not None and is_unchanged(entry, want):
                    unchanged += 1
                    continue
                jobs.append(self._count(family.purpose, self._applier.apply(want, cause=cause)))
        if unchanged:
            self._metrics.tools.labels(family.purpose, str(Outcome.UNCHANGED)).inc(unchanged)
        return jobs

    def _removals[T: Item](
        self,
        family: Family[T, Any],
        items: list[T],
        toolchains: set[str],
        entries: dict[tuple[str, str], LedgerEntry],
    ) -> list[Awaitable[Outcome]]:
        """Remove jobs for entries whose known item is deleted or whose toolchain is unbound
        (an entry of an item this reconcile did not read is left alone)."""
        known = {t.key.id: t for t in items}
        jobs: list[Awaitable[Outcome]] = []
        for (key_id, tc), entry in sorted(entries.items()):
            owner = known.get(key_id)
            if owner is None or (not owner.deleted and tc in toolchains):
                continue
            if entry.present or entry.interrupted:
                jobs.append(self._remove(family, entry, owner))
        return jobs

    async def reconcile_item[T: Item](
        self, family: Family[T, Any], item: T, cause: str | None = None, toolchains: set[str] | None = None
    ) -> None:
        """One item in every toolchain bound to its scope (``toolchains``, else read)."""
        scope = family.item_scope(item)
        if toolchains is None:
            toolchains = await self._projection.bound_toolchains(scope)
        jobs: list[Awaitable[Outcome]]
        if item.deleted:
            jobs = [
                self._count(
                    family.purpose,
                    self._applier.remove(
                        family.purpose,
                        item.key.id,
                        tc,
                        revision=item.revision,
                        name=family.desired(item, tc, self._styles).name,
                        create=False,
                    ),
                )
                for tc in sorted(toolchains)
            ]
        else:
            jobs = [
                self._count(
                    family.purpose,
                    self._applier.apply(family.desired(item, tc, self._styles), cause=cause),
                )
                for tc in sorted(toolchains)
            ]
        await self._run(jobs, scope)

    async def _remove[T: Item](self, family: Family[T, Any], entry: LedgerEntry, item: T) -> Outcome:
        revision = max(entry.revision, item.revision) if item.deleted else item.revision
        job = self._applier.remove(
            family.purpose,
            entry.key,
            entry.toolchain_id,
            revision=revision,
            name=entry.tool_name or family.desired(item, entry.toolchain_id, self._styles).name,
            create=False,
        )
        return await self._count(family.purpose, job)

    async def _count(self, purpose: str, job: Awaitable[Outcome]) -> Outcome:
        outcome = await job
        self._metrics.tools.labels(purpose, str(outcome)).inc()
        return outcome

    async def _run(self, jobs: list[Awaitable[Outcome]], scope: str | None = None) -> None:
        """Run the tool jobs of one message; when some failed, the scope (if any) is no longer
        converged (its next snapshot runs in full and retries them) and the message fails."""
        if not jobs:
            return
        results = await asyncio.gather(*jobs, return_exceptions=True)
        errors = [r for r in results if isinstance(r, BaseException)]
        if errors:
            if scope is not None:
                await self._unconverge(scope)
            raise _message_error(errors)

    async def _unconverge(self, scope: str) -> None:
        try:
            await self._projection.unconverge(scope)
        except PyMongoError as exc:  # the message fails anyway; the record is only an optimisation
            log.warning(
                "could not unset a scope's converged record", extra={"scope": scope, "error": str(exc)}
            )


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
