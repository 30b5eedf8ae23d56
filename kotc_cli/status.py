"""``kabanero-otc status``: services, queues, Kabanero services and the tools kabanero-otc owns."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any

import aiohttp
from pymongo.asynchronous.database import AsyncDatabase

from kotc_cli.clients import Management, amqp, declared, get_json, mongo
from kotc_cli.config import Config
from kotc_cli.errors import OK, PROBLEM
from kotc_cli.output import Report, age
from services.broker_api.models import InstanceRecord
from services.broker_api.store import COLLECTION as SERVICE_INSTANCES
from services.kabanero_watcher.owned_instances import OwnedInstanceStore
from services.otc_writer.ledger import LEDGER, Intent, LedgerEntry
from shared.amqp.topology import QUEUES, Topology
from shared.mongo import Document


async def service_health(session: aiohttp.ClientSession, config: Config) -> list[dict[str, Any]]:
    """/healthz, /readyz and /version of every configured replica of every service."""

    async def one(name: str, url: str) -> dict[str, Any]:
        (live_s, live), (ready_s, ready), (_, version) = await asyncio.gather(
            get_json(session, f"{url}/healthz"),
            get_json(session, f"{url}/readyz"),
            get_json(session, f"{url}/version"),
        )
        failing = {
            k: v
            for body in (live, ready)
            if isinstance(body, dict)
            for k, v in (body.get("checks") or {}).items()
            if not str(v).startswith("ok")
        }
        return {
            "service": name,
            "url": url,
            "reachable": live_s != 0,
            "live": live_s == 200,
            "ready": ready_s == 200,
            "version": version.get("version") if isinstance(version, dict) else None,
            "checks": {
                **(live.get("checks", {}) if isinstance(live, dict) else {}),
                **(ready.get("checks", {}) if isinstance(ready, dict) else {}),
            },
            "problem": None if live_s else str(live),
            "failing": failing,
        }

    jobs = [one(name, url) for name, urls in config.services.items() for url in urls]
    return list(await asyncio.gather(*jobs))


def queue_names(queues: Iterable[str] = QUEUES) -> list[str]:
    """Each consuming queue with its delay and dead-letter queues."""
    delays = sorted(set(Topology().retry_delays_s))
    return [n for q in queues for n in (q, *(f"{q}.retry.{d}s" for d in delays), f"{q}.dead")]


async def queue_table(config: Config, mgmt: Management) -> list[dict[str, Any]]:
    """Ready, consumers, retrying and dead from the queues themselves; unacked from the management
    API (sampled: up to its statistics interval old)."""
    async with amqp(config) as conn:
        exact = await declared(conn, queue_names(config.queues))
    sampled = await mgmt.queues()
    rows = []
    for name in config.queues:
        ready, consumers = exact[name] or (0, 0)
        retrying = sum((exact[n] or (0, 0))[0] for n in exact if n.startswith(f"{name}.retry."))
        rows.append(
            {
                "queue": name,
                "declared": exact[name] is not None,
                "ready": ready,
                "unacked": int(sampled.get(name, {}).get("messages_unacknowledged", 0)),
                "consumers": consumers,
                "retrying": retrying,
                "dead": (exact[f"{name}.dead"] or (0, 0))[0],
            }
        )
    return rows


async def kabanero_services(db: AsyncDatabase[Document]) -> list[dict[str, Any]]:
    """Active services; for one that creates its Kabanero CR, the watcher's last outcome too."""
    owned = {o.instance_id: o for o in await OwnedInstanceStore(db).all()}
    cursor = db[SERVICE_INSTANCES].find({"state": "active"}, {"outbox": 0, "service_credentials": 0})
    rows = []
    async for doc in cursor:
        rec = InstanceRecord.model_validate(doc)
        done = owned.get(rec.instance_id) if rec.kind == "kabanero" else None
        rows.append(
            {
                "kind": rec.kind,
                "instance_id": rec.instance_id,
                "cluster": rec.parameters.cluster,
                "namespace": rec.parameters.namespace,
                "toolchains": rec.toolchain_ids,
                "creates_instance": rec.parameters.create,
                "instance_outcome": done.outcome if done else None,
                "instance_message": done.message if done else None,
            }
        )
    return rows


def in_flight(entry: LedgerEntry) -> Intent | None:
    """The OTC write that may have started for this entry (``intent``; ``pending`` in older ledgers)."""
    return entry.intent or entry.pending


def sync_state(entry: LedgerEntry) -> tuple[str, str | None]:
    """applied / pending / refused / failing (retried) / removing, with OTC's message when relevant."""
    if entry.refused_hash is not None:
        return "refused", entry.last_error
    if (started := in_flight(entry)) is not None:
        return "pending", f"{started.op} in progress or interrupted" + (
            f"; last error: {entry.last_error}" if entry.last_error else ""
        )
    if entry.last_error:
        return "failing", entry.last_error
    return "applied", None


OWNED_TOOLS_QUERY: Document = {
    "$or": [
        {"present": True},
        {"intent": {"$ne": None}},
        {"pending": {"$ne": None}},
        {"refused_hash": {"$ne": None}},
    ]
}


async def owned_tools(db: AsyncDatabase[Document]) -> list[dict[str, Any]]:
    rows = []
    async for doc in db[LEDGER].find(OWNED_TOOLS_QUERY, {"parameters": 0}):
        entry = LedgerEntry.model_validate(doc)
        state, detail = sync_state(entry)
        started = in_flight(entry)
        rows.append(
            {
                "toolchain_id": entry.toolchain_id,
                "purpose": entry.purpose,
                "name": entry.tool_name or (started.name if started else "") or entry.key,
                "tool_id": entry.tool_id,
                "state": state,
                "detail": detail,
                "updated": entry.updated_at,
            }
        )
    return sorted(rows, key=lambda r: (r["toolchain_id"], r["purpose"], r["name"]))


async def run(config: Config) -> Report:
    async with aiohttp.ClientSession() as session:
        mgmt = Management(config, session)
        services, queues = await asyncio.gather(service_health(session, config), queue_table(config, mgmt))
    async with mongo(config) as db:
        instances = await kabanero_services(db)
        tools = await owned_tools(db)

    problems: list[str] = []
    for s in services:
        if not (s["live"] and s["ready"]):
            why = s["problem"] or "; ".join(f"{k}: {v}" for k, v in s["failing"].items()) or "not ready"
            problems.append(f"{s['service']} at {s['url']}: {why}")
    for q in queues:
        if q["dead"]:
            problems.append(
                f"{q['dead']} dead letter(s) in {q['queue']}.dead (kabanero-otc dead-letters list)"
            )
        if q["declared"] and not q["consumers"]:
            problems.append(f"{q['queue']} has no consumer")
        if not q["declared"]:
            problems.append(f"queue {q['queue']} is not declared")
    problems += [
        f"Kabanero service {i['instance_id']}: its Kabanero CR was {i['instance_outcome']}: {i['instance_message']}"
        for i in instances
        if i["instance_outcome"] in ("refused", "failed")
    ]
    problems += [
        f"OTC refused tool {t['name']!r} in {t['toolchain_id']}: {t['detail']}"
        for t in tools
        if t["state"] == "refused"
    ]

    report = Report(
        data={
            "source": config.source,
            "vhost": config.vhost,
            "services": services,
            "queues": queues,
            "kabanero_services": instances,
            "tools": tools,
            "problems": problems,
        },
        code=PROBLEM if problems else OK,
    )
    report.add(
        "SERVICES",
        ("service", "url", "live", "ready", "version", "detail"),
        [
            (
                s["service"],
                s["url"],
                _yn(s["live"]),
                _yn(s["ready"]),
                s["version"],
                s["problem"]
                or "; ".join(f"{k}: {v}" for k, v in s["failing"].items())
                or f"{len(s['checks'])} checks ok" + (f"; {lease}" if (lease := _lease(s)) else ""),
            )
            for s in services
        ],
    )
    report.add(
        f"QUEUES (vhost {config.vhost})",
        ("queue", "ready", "unacked", "consumers", "retrying", "dead"),
        [(q["queue"], q["ready"], q["unacked"], q["consumers"], q["retrying"], q["dead"]) for q in queues],
    )
    report.add(
        "KABANERO SERVICES",
        ("kind", "service", "cluster", "namespace", "toolchains", "creates CR"),
        [
            (
                i["kind"],
                i["instance_id"],
                i["cluster"],
                i["namespace"],
                ",".join(i["toolchains"]) or "-",
                (i["instance_outcome"] or "pending") if i["creates_instance"] else "-",
            )
            for i in sorted(instances, key=lambda i: (i["kind"] or "", i["instance_id"] or ""))
        ],
    )
    report.add(
        "TOOLS OWNED BY KABANERO-OTC",
        ("toolchain", "kind", "name", "state", "age", "detail"),
        [
            (t["toolchain_id"], t["purpose"], t["name"], t["state"], age(t["updated"]), t["detail"])
            for t in tools
        ],
    )
    report.line("problems:\n" + "\n".join(f"  - {p}" for p in problems) if problems else "no problems found")
    return report


def _lease(service: dict[str, Any]) -> str:
    """A watcher's leadership (``leading`` / ``standby (lease held by ...)``), worth a glance."""
    detail = str(service["checks"].get("lease", ""))
    return detail.removeprefix("ok: ") if detail.startswith("ok: ") else ""


def _yn(flag: bool) -> str:
    return "yes" if flag else "NO"
