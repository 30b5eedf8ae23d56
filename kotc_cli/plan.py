"""``kabanero-otc plan``: what otc-writer would create, update or delete in OTC now; writes nothing.

Desired state is computed with otc-writer's own code: trigger tools from its projection (the live
triggers of every instance times the toolchains its Kabanero Events services are bound to, through
``desired_trigger_tool``) and GitHub tools as the last ``otc.tool.apply`` otc-writer recorded in its
ledger. Actual state is OTC's tools of those toolchains (GETs through otc-writer's client). The
comparison follows the writer and its audit: a tool is ours by the ledger's tool id, else by its
deterministic name; it differs when its name or one of the parameter keys we set differs.
Exit code 1 when something would change (like ``kubectl diff``), 0 when OTC matches.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from pymongo.asynchronous.database import AsyncDatabase

from kotc_cli.clients import mongo
from kotc_cli.config import Config
from kotc_cli.errors import OK, PROBLEM, CliError, Unreachable
from kotc_cli.otc import otc_client, trigger_style, writer_settings
from kotc_cli.output import Report
from kotc_cli.status import in_flight
from services.otc_writer.audit import find_ours
from services.otc_writer.desired import TRIGGER_PURPOSE, DesiredTool, desired_trigger_tool
from services.otc_writer.ledger import LEDGER, LedgerEntry, ledger_id
from services.otc_writer.otc_client import (
    OtcError,
    OtcNotFoundError,
    OtcPermanentError,
    OtcRetryableError,
    Tool,
)
from services.otc_writer.projection import Projection
from shared.events import TEKTON_SCOPE_PREFIX
from shared.mongo import Document


@dataclass(frozen=True)
class Step:
    action: str
    """create, update, delete, delete-duplicate, refused, unchanged"""
    toolchain_id: str
    purpose: str
    name: str | None
    tool_id: str | None
    detail: str = ""

    def row(self) -> dict[str, Any]:
        return dict(self.__dict__)


async def desired_tools(db: AsyncDatabase[Document], config: Config) -> dict[str, DesiredTool]:
    """Ledger id -> the tool otc-writer wants, from its projection and its ledger."""
    style = trigger_style(writer_settings(config))
    projection = Projection(db)
    wanted: dict[str, DesiredTool] = {}
    services = await projection.services.distinct("scope", {"deleted": False})
    # Trigger scopes only: Tekton services stand for a cluster; their cards count as applied below.
    scopes = {str(s) for s in services if not str(s).startswith(TEKTON_SCOPE_PREFIX)}
    for scope in sorted(scopes):
        toolchains = await projection.bound_toolchains(scope)
        for trigger in await projection.live_triggers(scope):
            for tc in sorted(toolchains):
                want = desired_trigger_tool(trigger, tc, style)
                wanted[ledger_id(want.purpose, want.key, tc)] = want
    async for doc in db[LEDGER].find({"purpose": {"$ne": TRIGGER_PURPOSE}, "present": True}):
        entry = LedgerEntry.model_validate(doc)
        wanted[entry.id] = entry.applied_tool()
    return wanted


async def _entries(db: AsyncDatabase[Document]) -> AsyncIterator[LedgerEntry]:
    async for doc in db[LEDGER].find({}):
        yield LedgerEntry.model_validate(doc)


def differences(tool: Tool, want: DesiredTool) -> list[str]:
    changed = [k for k, v in want.parameters.items() if tool.parameters.get(k) != v]
    return (["name"] if tool.name != want.name else []) + [f"parameters.{k}" for k in changed]


def compare(
    wanted: dict[str, DesiredTool], ledger: dict[str, LedgerEntry], tools: dict[str, list[Tool]]
) -> list[Step]:
    known_ids = {e.tool_id for e in ledger.values() if e.tool_id}
    steps: list[Step] = []
    for lid, want in sorted(wanted.items()):
        steps += _wanted_steps(want, ledger.get(lid), tools.get(want.toolchain_id, []), known_ids)
    for lid, entry in sorted(ledger.items()):
        if lid in wanted or not (entry.present or in_flight(entry)):
            continue
        tool = next((t for t in tools.get(entry.toolchain_id, []) if t.id == entry.tool_id), None)
        if tool is not None:
            steps.append(
                Step("delete", entry.toolchain_id, entry.purpose, tool.name, tool.id, "no longer desired")
            )
    return steps


def _wanted_steps(
    want: DesiredTool, entry: LedgerEntry | None, in_otc: list[Tool], known_ids: set[str]
) -> list[Step]:
    """What the writer (and its audit) would do for one desired tool, matched as they match it."""
    base = {"toolchain_id": want.toolchain_id, "purpose": want.purpose, "name": want.name}
    if entry is not None and entry.refused_hash is not None and entry.refused_hash == want.hash:
        return [Step("refused", tool_id=entry.tool_id, detail=f"OTC: {entry.last_error}", **base)]
    ours, named = find_ours(in_otc, entry.tool_id if entry else None, want.name, known_ids)
    if ours is None:
        return [Step("create", tool_id=None, detail="not in OTC", **base)]
    if diff := differences(ours, want):
        step = Step("update", tool_id=ours.id, detail="differs: " + ", ".join(diff), **base)
    else:
        step = Step("unchanged", tool_id=ours.id, **base)
    duplicates = [
        Step("delete-duplicate", tool_id=dup.id, detail="second tool with our name", **base)
        for dup in named
        if dup.id != ours.id
    ]
    return [step, *duplicates]


async def run(config: Config, toolchain: str | None) -> Report:
    async with mongo(config) as db:
        wanted = await desired_tools(db, config)
        ledger = {e.id: e async for e in _entries(db)}
    if toolchain is not None:
        wanted = {k: v for k, v in wanted.items() if v.toolchain_id == toolchain}
        ledger = {k: v for k, v in ledger.items() if v.toolchain_id == toolchain}
    toolchains = sorted(
        {w.toolchain_id for w in wanted.values()}
        | {e.toolchain_id for e in ledger.values() if e.present or in_flight(e)}
        | ({toolchain} if toolchain else set())
    )
    tools: dict[str, list[Tool]] = {}
    missing: list[str] = []
    async with otc_client(config) as client:
        for tc in toolchains:
            try:
                tools[tc] = await client.list_tools(tc)
            except OtcNotFoundError:
                missing.append(tc)
            except OtcPermanentError as exc:
                raise CliError(f"OTC refused to list the tools of {tc}: {exc}") from None
            except (OtcRetryableError, OtcError) as exc:
                raise Unreachable("OTC Toolchain API", config.require("OTC_API_URL"), str(exc)) from None
    steps = compare(wanted, ledger, tools)
    changes = [s for s in steps if s.action not in ("unchanged", "refused")]
    report = Report(
        data={
            "toolchains": toolchains,
            "missing_toolchains": missing,
            "steps": [s.row() for s in steps],
            "changes": len(changes),
        },
        code=PROBLEM if changes else OK,
    )
    report.add(
        "PLAN (desired state of otc-writer against OTC's tools; nothing written)",
        ("action", "toolchain", "kind", "name", "tool id", "detail"),
        [(s.action, s.toolchain_id, s.purpose, s.name, s.tool_id, s.detail) for s in steps],
    )
    if missing:
        report.line("toolchains not found in OTC: " + ", ".join(missing))
    counts = {
        a: sum(s.action == a for s in steps) for a in ("create", "update", "delete", "delete-duplicate")
    }
    report.line(
        "no changes: OTC matches the desired state"
        if not changes
        else "would change: " + ", ".join(f"{n} {a}" for a, n in counts.items() if n)
    )
    return report
