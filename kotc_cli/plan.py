"""``kabanero-otc plan``: what otc-writer would create, update or delete in OTC now; writes nothing.

Desired state is computed with otc-writer's own code: the tools of each of its families from its
projection (Kabanero triggers: the live triggers of every instance times the toolchains its Kabanero
Events services are bound to; Tekton cards: the live cards of every namespace a Tekton service
mirrors times the toolchains bound to it; each through ``Family.desired`` with the writer's tool
styles) and GitHub tools as the last ``otc.tool.apply`` otc-writer recorded in its ledger. Actual state is OTC's tools of those toolchains (GETs through otc-writer's client). The
comparison follows the writer and its audit: a tool is ours by the ledger's tool id, else by its
deterministic name; it differs when its name or one of the parameter keys we set differs.
Exit code 1 when something would change (like ``kubectl diff``), 0 when OTC matches.

:func:`collect` reads (MongoDB, OTC), :func:`compare` and :func:`render` are pure. A family whose
desired tools otc-writer computes from its projection is one more entry of :data:`COMPUTED`.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from pymongo.asynchronous.database import AsyncDatabase

from kotc_cli.clients import Sources
from kotc_cli.config import Config
from kotc_cli.errors import OK, PROBLEM, CliError, Unreachable
from kotc_cli.otc import writer_settings
from kotc_cli.output import Report, column
from kotc_cli.sync import in_flight
from services.otc_writer.app import tool_styles
from services.otc_writer.audit import find_ours
from services.otc_writer.desired import DesiredTool
from services.otc_writer.family import FAMILIES, Family, family_of_scope
from services.otc_writer.ledger import LEDGER, LedgerEntry, ledger_id
from services.otc_writer.otc_client import (
    OtcError,
    OtcNotFoundError,
    OtcPermanentError,
    OtcRetryableError,
    Tool,
)
from services.otc_writer.projection import Projection
from shared.mongo import Document

CHANGES = ("create", "update", "delete", "delete-duplicate")


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


# --- desired state (I/O: otc-writer's projection and ledger) ------------------------------------

Wanted = dict[str, DesiredTool]
"""Ledger id -> the tool otc-writer wants."""


async def family_tools(family: Family[Any, Any], db: AsyncDatabase[Document], config: Config) -> Wanted:
    """Every live item of every scope a live service of the family stands for, in every toolchain
    bound to that scope, as otc-writer computes them (``Family.desired`` with its tool styles)."""
    styles = tool_styles(writer_settings(config))
    projection = Projection(db)
    services = await projection.services.distinct("scope", {"deleted": False})
    scopes = set()
    for service_scope in {str(s) for s in services if family_of_scope(str(s)) is family}:
        scopes.update(await projection.scopes_of(family, service_scope))
    wanted: Wanted = {}
    for scope in sorted(scopes):
        toolchains = await projection.bound_toolchains(scope)
        for item in await projection.live_items(family, scope):
            for tc in sorted(toolchains):
                want = family.desired(item, tc, styles)
                wanted[ledger_id(want.purpose, want.key, tc)] = want
    return wanted


COMPUTED: dict[str, Callable[[AsyncDatabase[Document], Config], Awaitable[Wanted]]] = {
    family.purpose: functools.partial(family_tools, family) for family in FAMILIES
}
"""Tool purposes whose desired state otc-writer computes from its projection (Kabanero triggers,
Tekton cards: its families), with the function that computes it as the writer does; every other
purpose's desired tool is the one last applied, as recorded in the ledger (GitHub tools:
github-linker decides them)."""


async def desired_tools(db: AsyncDatabase[Document], config: Config) -> Wanted:
    wanted: Wanted = {}
    for compute in COMPUTED.values():
        wanted |= await compute(db, config)
    async for doc in db[LEDGER].find({"purpose": {"$nin": list(COMPUTED)}, "present": True}):
        entry = LedgerEntry.model_validate(doc)
        wanted[entry.id] = entry.applied_tool()
    return wanted


# --- actual state (I/O: OTC) --------------------------------------------------------------------


@dataclass
class Found:
    """What ``plan`` compares: otc-writer's desired tools and ledger, and OTC's tools."""

    wanted: Wanted
    ledger: dict[str, LedgerEntry]
    toolchains: list[str] = field(default_factory=list)
    tools: dict[str, list[Tool]] = field(default_factory=dict)
    missing: list[str] = field(default_factory=list)
    """Toolchains OTC does not know."""


def narrow(found: Found, toolchain: str | None) -> Found:
    """Only ``toolchain`` (when given); the toolchains to read from OTC: every one a tool is wanted
    or recorded in."""
    wanted, ledger = found.wanted, found.ledger
    if toolchain is not None:
        wanted = {k: v for k, v in wanted.items() if v.toolchain_id == toolchain}
        ledger = {k: v for k, v in ledger.items() if v.toolchain_id == toolchain}
    toolchains = sorted(
        {w.toolchain_id for w in wanted.values()}
        | {e.toolchain_id for e in ledger.values() if e.present or in_flight(e)}
        | ({toolchain} if toolchain else set())
    )
    return Found(wanted, ledger, toolchains)


async def read_otc(src: Sources, found: Found) -> None:
    client = await src.otc()
    for tc in found.toolchains:
        try:
            found.tools[tc] = await client.list_tools(tc)
        except OtcNotFoundError:
            found.missing.append(tc)
        except OtcPermanentError as exc:
            raise CliError(f"OTC refused to list the tools of {tc}: {exc}") from None
        except (OtcRetryableError, OtcError) as exc:
            raise Unreachable("OTC Toolchain API", src.config.require("OTC_API_URL"), str(exc)) from None


async def collect(src: Sources, toolchain: str | None) -> Found:
    db = await src.db()
    wanted = await desired_tools(db, src.config)
    ledger: dict[str, LedgerEntry] = {}
    async for doc in db[LEDGER].find({}):
        entry = LedgerEntry.model_validate(doc)
        ledger[entry.id] = entry
    found = narrow(Found(wanted, ledger), toolchain)
    await read_otc(src, found)
    return found


# --- the comparison (pure) ----------------------------------------------------------------------


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


def changes(steps: list[Step]) -> list[Step]:
    """The steps otc-writer would take (a refused tool is not retried until its content changes)."""
    return [s for s in steps if s.action in CHANGES]


COLUMNS = (
    column("action"),
    column("toolchain", "toolchain_id"),
    column("kind", "purpose"),
    column("name"),
    column("tool id", "tool_id"),
    column("detail"),
)


def render(found: Found, steps: list[Step]) -> Report:
    todo = changes(steps)
    report = Report(
        data={
            "toolchains": found.toolchains,
            "missing_toolchains": found.missing,
            "steps": [s.row() for s in steps],
            "changes": len(todo),
        },
        code=PROBLEM if todo else OK,
    )
    report.rows(
        "PLAN (desired state of otc-writer against OTC's tools; nothing written)",
        COLUMNS,
        [s.row() for s in steps],
    )
    if found.missing:
        report.line("toolchains not found in OTC: " + ", ".join(found.missing))
    counts = {a: sum(s.action == a for s in todo) for a in CHANGES}
    report.line(
        "no changes: OTC matches the desired state"
        if not todo
        else "would change: " + ", ".join(f"{n} {a}" for a, n in counts.items() if n)
    )
    return report


async def run(src: Sources, toolchain: str | None) -> Report:
    found = await collect(src, toolchain)
    return render(found, compare(found.wanted, found.ledger, found.tools))
