"""Periodic audit: repair drift made in OTC itself (docs/architecture.md §9: OTC state = desired state).

Messages reconcile desired state against the ledger only, so a tool deleted or edited by hand in OTC
would stay wrong until its source changes. A pass lists the tools of every toolchain that has ledger
entries (paged, through the client: rate limit, retries, breaker) and compares them with the entries
marked present:

- our tool is gone: adopt a tool bearing the entry's deterministic name, else recreate it (one POST);
- our tool's name or one of *our* parameter keys differs: one merge-patch back to the applied content
  (keys added by hand are left alone: they may be server defaults);
- another tool bears the entry's name: that duplicate is deleted (the only deletion the audit makes;
  tools we did not name, or that another entry owns, are never touched).

No drift costs only the list GETs: no lease, no ledger write, no OTC write. A repair happens under
the entry's lease, taken without waiting (a held lease means a handler is at work: skipped until the
next pass), and only if the entry did not change since it was read. Pending entries (an interrupted
write the next message resolves) and refused ones are skipped. An OTC failure ends the pass for that
toolchain only; the rest is left for the next pass.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter as Tally
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram

from services.otc_writer.applier import Outcome, ToolApplier
from services.otc_writer.ledger import LeaseBusy, LeaseLost, Ledger, LedgerEntry
from services.otc_writer.otc_client import OtcClient, OtcError, OtcNotFoundError, OtcRetryableError, Tool

log = logging.getLogger(__name__)

AUDIT_OP = "audit-"
"""Prefix of the ``pending.op`` of an audit repair."""
_KIND = {Outcome.CREATED: "recreate", Outcome.UPDATED: "patch", Outcome.ADOPTED: "adopt"}


@dataclass
class AuditReport:
    """What one pass found and did (also logged as its summary)."""

    toolchains: int = 0
    tools_checked: int = 0
    repairs: Tally[str] = field(default_factory=Tally)
    """Per kind: ``recreate``, ``adopt``, ``patch``, ``delete_duplicate``."""
    busy: int = 0
    """Entries skipped because a handler held their lease or changed them meanwhile."""
    errors: list[str] = field(default_factory=list)
    duration_s: float = 0.0


@dataclass(frozen=True)
class _Plan:
    doc: LedgerEntry
    ours: Tool | None
    """The tool that should be the entry's: by id, else the first with its name; None = gone."""
    restore: bool
    duplicates: list[str]

    @property
    def drift(self) -> bool:
        return self.restore or bool(self.duplicates)


class AuditMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.repairs = Counter(
            "kotc_otc_audit_repairs_total", "Drift repaired in OTC by the audit", ["kind"], registry=registry
        )
        self.errors = Counter(
            "kotc_otc_audit_errors_total",
            "Audit steps that failed (left for the next pass)",
            registry=registry,
        )
        self.duration = Histogram(
            "kotc_otc_audit_duration_seconds",
            "Duration of one audit pass",
            buckets=(0.1, 0.5, 1, 5, 15, 60, 300, 900, 3600),
            registry=registry,
        )


class Auditor:
    def __init__(
        self, ledger: Ledger, client: OtcClient, applier: ToolApplier, metrics: AuditMetrics, *, owner: str
    ) -> None:
        self._ledger = ledger
        self._client = client
        self._applier = applier
        self._metrics = metrics
        self._owner = owner
        self._lock = asyncio.Lock()
        self.passes = 0
        self.last: AuditReport | None = None

    async def run(self, interval_s: float) -> None:
        """The background task: one pass every ``interval_s``; a failed pass never ends it."""
        while True:
            await asyncio.sleep(interval_s)
            try:
                await self.audit_once()
            except Exception:
                log.exception("audit pass failed; retried at the next interval")

    async def audit_once(self) -> AuditReport:
        async with self._lock:  # the periodic task and a direct call never overlap
            started = time.monotonic()
            report = AuditReport()
            try:
                for toolchain_id, docs in sorted((await self._ledger.with_tools()).items()):
                    await self._audit_toolchain(toolchain_id, docs, report)
            finally:
                report.duration_s = time.monotonic() - started
                self._metrics.duration.observe(report.duration_s)
                self.passes += 1
                self.last = report
            log.info(
                "audit pass: %d repairs",
                sum(report.repairs.values()),
                extra={
                    "toolchains": report.toolchains,
                    "tools_checked": report.tools_checked,
                    "repairs": dict(report.repairs),
                    "busy": report.busy,
                    "errors": len(report.errors),
                    "duration_s": round(report.duration_s, 3),
                },
            )
            return report

    async def _audit_toolchain(self, toolchain_id: str, docs: list[LedgerEntry], report: AuditReport) -> None:
        entries = [d for d in docs if _auditable(d)]
        if not entries:
            return
        tools = await self._list(toolchain_id, report)
        if tools is None:
            return
        report.toolchains += 1
        known_ids = {d.tool_id for d in docs if d.tool_id}
        names = Tally(d.tool_name for d in docs)
        now = datetime.now(UTC)
        for doc in entries:
            report.tools_checked += 1
            plan = _plan(doc, tools, known_ids, shared_name=names[doc.tool_name] > 1)
            if not await self._settle(toolchain_id, plan, report, now):
                return  # OTC is unwell: leave the rest of this toolchain for the next pass

    async def _settle(self, toolchain_id: str, plan: _Plan, report: AuditReport, now: datetime) -> bool:
        """Repair one entry's drift, if any and not leased; False when OTC is unwell."""
        if not plan.drift:
            return True
        if plan.doc.leased_at(now):
            report.busy += 1
            return True
        try:
            await self._repair(toolchain_id, plan, report)
        except (OtcError, LeaseLost) as exc:
            self._failed(report, f"{plan.doc.id}: {exc}")
            return not isinstance(exc, OtcRetryableError)
        return True

    async def _list(self, toolchain_id: str, report: AuditReport) -> list[Tool] | None:
        try:
            return await self._client.list_tools(toolchain_id)
        except OtcNotFoundError:
            log.warning("audit: toolchain not found in OTC; skipped", extra={"toolchain_id": toolchain_id})
        except OtcError as exc:
            self._failed(report, f"list {toolchain_id}: {exc}")
        return None

    async def _repair(self, toolchain_id: str, plan: _Plan, report: AuditReport) -> None:
        doc = plan.doc
        try:
            lease = await self._ledger.acquire(
                doc.purpose, doc.key, toolchain_id, self._owner, scope=doc.scope, wait_s=0
            )
        except LeaseBusy:
            report.busy += 1
            return
        async with self._ledger.kept(lease):
            if not _same_entry(lease.entry, doc):
                await self._ledger.release(lease)
                report.busy += 1  # a handler changed it since we read it: its state wins
                return
            try:
                for tool_id in plan.duplicates:
                    if await self._applier.delete_duplicate(lease, toolchain_id, tool_id):
                        self._count(report, "delete_duplicate")
            except BaseException:
                await self._ledger.release(lease)
                raise
            if not plan.restore:
                await self._ledger.release(lease)
                return
            outcome = await self._applier.restore(lease, doc.applied_tool(), plan.ours, op_prefix=AUDIT_OP)
        kind = _KIND.get(outcome)
        if kind is not None:
            self._count(report, kind)

    def _count(self, report: AuditReport, kind: str) -> None:
        report.repairs[kind] += 1
        self._metrics.repairs.labels(kind).inc()

    def _failed(self, report: AuditReport, error: str) -> None:
        report.errors.append(error)
        self._metrics.errors.inc()
        log.warning("audit step failed; left for the next pass", extra={"error": error})


def _auditable(d: LedgerEntry) -> bool:
    """Marked present with a tool, not refused, and nothing pending but an audit repair."""
    unresolved = d.intent is not None or (d.pending is not None and not _by_audit(d))
    return d.present and bool(d.tool_id) and d.refused_hash is None and not unresolved


def _plan(doc: LedgerEntry, tools: list[Tool], known_ids: set[str], *, shared_name: bool) -> _Plan:
    ours, named = find_ours(tools, doc.tool_id, doc.tool_name, known_ids)
    duplicates = [] if shared_name else [t.id for t in named if ours is None or t.id != ours.id]
    restore = ours is None or ours.id != doc.tool_id or _drifted(ours, doc) or _by_audit(doc)
    return _Plan(doc, ours, restore, duplicates)


def find_ours(
    tools: list[Tool], tool_id: str | None, name: str | None, known_ids: set[str]
) -> tuple[Tool | None, list[Tool]]:
    """The tool that is an entry's (by its id, else the first bearing its name that no entry owns)
    and every tool bearing its name that no entry owns (the audit deletes the others; ``plan``
    shows it would)."""
    by_id = next((t for t in tools if tool_id and t.id == tool_id), None)
    named = [t for t in tools if name and t.name == name and t.id not in known_ids]
    return by_id or (named[0] if named else None), named


def _by_audit(doc: LedgerEntry) -> bool:
    """Pending from an interrupted audit repair (a message's pending is resolved by its retry)."""
    return doc.pending is not None and doc.pending.op.startswith(AUDIT_OP)


def _drifted(tool: Tool, doc: LedgerEntry) -> bool:
    """Only what we own: the name and the keys of the applied parameters."""
    applied: dict[str, Any] = doc.parameters or {}
    return tool.name != doc.tool_name or any(tool.parameters.get(k) != v for k, v in applied.items())


def _same_entry(now: LedgerEntry, then: LedgerEntry) -> bool:
    keys = ("present", "tool_id", "content_hash", "pending", "intent", "refused_hash", "updated_at")
    return all(getattr(now, k) == getattr(then, k) for k in keys)
