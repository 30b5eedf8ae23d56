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

from dataclasses import dataclass
from typing import Any

from pymongo.asynchronous.database import AsyncDatabase

from kotc_cli.clients import mongo
from kotc_cli.config import Config
from kotc_cli.errors import OK, PROBLEM, CliError, Unreachable
from kotc_cli.otc import otc_client, trigger_style, writer_settings
from kotc_cli.output import Report
from kotc_cli.status import in_flight
from services.otc_writer.desired import TRIGGER_PURPOSE, DesiredTool, desired_trigger_tool
from services.otc_writer.ledger import LEDGER, ledger_id
from services.otc_writer.otc_client import (
    OtcError,
    OtcNotFoundError,
    OtcPermanentError,
    OtcRetryableError,
    Tool,
)
from services.otc_writer.projection import Projection
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
    scopes = {str(s) for s in await projection.services.distinct("scope", {"deleted": False})}
    for scope in sorted(scopes):
        toolchains = await projection.bound_toolchains(scope)
        for trigger in await projection.live_triggers(scope):
            for tc in sorted(toolchains):
                want = desired_trigger_tool(trigger, tc, style)
                wanted[ledger_id(want.purpose, want.key, tc)] = want
    async for doc in db[LEDGER].find({"purpose": {"$ne": TRIGGER_PURPOSE}, "present": True}):
        wanted[doc["_id"]] = DesiredTool(
            purpose=doc["purpose"],
            key=doc["key"],
            toolchain_id=doc["toolchain_id"],
            tool_type_id=doc.get("tool_type_id") or "",
            name=doc.get("tool_name") or "",
            parameters=doc.get("parameters") or {},
            revision=int(doc.get("revision", 0)),
            scope=doc.get("scope"),
        )
    return wanted


def differences(tool: Tool, want: DesiredTool) -> list[str]:
    changed = [k for k, v in want.parameters.items() if tool.parameters.get(k) != v]
    return (["name"] if tool.name != want.name else []) + [f"parameters.{k}" for k in changed]


def compare(
    wanted: dict[str, DesiredTool], ledger: dict[str, Document], tools: dict[str, list[Tool]]
) -> list[Step]:
    steps: list[Step] = []
    known_ids = {d.get("tool_id") for d in ledger.values() if d.get("tool_id")}
    for lid, want in sorted(wanted.items()):
        doc = ledger.get(lid) or {}
        in_otc = tools.get(want.toolchain_id, [])
        by_id = next((t for t in in_otc if doc.get("tool_id") and t.id == doc.get("tool_id")), None)
        named = [t for t in in_otc if t.name == want.name and t.id not in known_ids]
        ours = by_id or (named[0] if named else None)
        base = {"toolchain_id": want.toolchain_id, "purpose": want.purpose, "name": want.name}
        if doc.get("refused_hash") is not None and doc.get("refused_hash") == want.hash:
            steps.append(
                Step("refused", tool_id=doc.get("tool_id"), detail=f"OTC: {doc.get('last_error')}", **base)
            )
            continue
        if ours is None:
            steps.append(Step("create", tool_id=None, detail="not in OTC", **base))
        elif diff := differences(ours, want):
            steps.append(Step("update", tool_id=ours.id, detail="differs: " + ", ".join(diff), **base))
        else:
            steps.append(Step("unchanged", tool_id=ours.id, **base))
        for dup in named:
            if ours is not None and dup.id != ours.id:
                steps.append(
                    Step("delete-duplicate", tool_id=dup.id, detail="second tool with our name", **base)
                )
    for lid, doc in sorted(ledger.items()):
        if lid in wanted or not (doc.get("present") or in_flight(doc)):
            continue
        tc = doc["toolchain_id"]
        tool = next((t for t in tools.get(tc, []) if t.id == doc.get("tool_id")), None)
        if tool is not None:
            steps.append(Step("delete", tc, doc["purpose"], tool.name, tool.id, "no longer desired"))
    return steps


async def run(config: Config, toolchain: str | None) -> Report:
    async with mongo(config) as db:
        wanted = await desired_tools(db, config)
        ledger = {d["_id"]: d async for d in db[LEDGER].find({})}
    if toolchain is not None:
        wanted = {k: v for k, v in wanted.items() if v.toolchain_id == toolchain}
        ledger = {k: v for k, v in ledger.items() if v.get("toolchain_id") == toolchain}
    toolchains = sorted(
        {w.toolchain_id for w in wanted.values()}
        | {d["toolchain_id"] for d in ledger.values() if d.get("present") or in_flight(d)}
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
