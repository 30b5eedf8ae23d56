"""``kabanero-otc status``: services, queues, Kabanero services and the tools kabanero-otc owns."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
from pymongo.asynchronous.database import AsyncDatabase

from kotc_cli.clients import Management, amqp, declared, get_json, mongo
from kotc_cli.config import Config
from kotc_cli.errors import OK, PROBLEM
from kotc_cli.output import Report, age
from services.broker_api.store import COLLECTION as SERVICE_INSTANCES
from services.kabanero_watcher.owned_instances import COLLECTION as OWNED_INSTANCES
from services.otc_writer.ledger import LEDGER
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


def queue_names() -> list[str]:
    delays = sorted(set(Topology().retry_delays_s))
    return [n for q in QUEUES for n in (q, *(f"{q}.retry.{d}s" for d in delays), f"{q}.dead")]


async def queue_table(config: Config, mgmt: Management) -> list[dict[str, Any]]:
    """Ready, consumers, retrying and dead from the queues themselves; unacked from the management
    API (sampled: up to its statistics interval old)."""
    async with amqp(config) as conn:
        exact = await declared(conn, queue_names())
    sampled = await mgmt.queues()
    rows = []
    for name in QUEUES:
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
    owned = {d["_id"]: d async for d in db[OWNED_INSTANCES].find({})}
    cursor = db[SERVICE_INSTANCES].find({"state": "active"}, {"outbox": 0, "service_credentials": 0})
    rows = []
    async for d in cursor:
        params = d.get("parameters") or {}
        done = owned.get(d.get("instance_id")) if d.get("kind") == "kabanero" else None
        rows.append(
            {
                "kind": d.get("kind"),
                "instance_id": d.get("instance_id"),
                "cluster": params.get("cluster"),
                "namespace": params.get("namespace"),
                "toolchains": [b.get("id") for b in d.get("toolchains") or []],
                "creates_instance": bool(params.get("create")),
                "instance_outcome": done.get("outcome") if done else None,
                "instance_message": done.get("message") if done else None,
            }
        )
    return rows


def in_flight(doc: Document) -> dict[str, Any]:
    """The OTC write that may have started for this entry (``intent``; ``pending`` in older ledgers)."""
    return dict(doc.get("intent") or doc.get("pending") or {})


def sync_state(doc: Document) -> tuple[str, str | None]:
    """applied / pending / refused / failing (retried) / removing, with OTC's message when relevant."""
    if doc.get("refused_hash") is not None:
        return "refused", doc.get("last_error")
    if in_flight(doc):
        op = in_flight(doc).get("op")
        return "pending", f"{op} in progress or interrupted" + (
            f"; last error: {doc['last_error']}" if doc.get("last_error") else ""
        )
    if doc.get("last_error"):
        return "failing", doc.get("last_error")
    return "applied", None


async def owned_tools(db: AsyncDatabase[Document]) -> list[dict[str, Any]]:
    query = {
        "$or": [
            {"present": True},
            {"intent": {"$ne": None}},
            {"pending": {"$ne": None}},
            {"refused_hash": {"$ne": None}},
        ]
    }
    rows = []
    async for doc in db[LEDGER].find(query, {"parameters": 0}):
        state, detail = sync_state(doc)
        rows.append(
            {
                "toolchain_id": doc.get("toolchain_id"),
                "purpose": doc.get("purpose"),
                "name": doc.get("tool_name") or in_flight(doc).get("name") or doc.get("key"),
                "tool_id": doc.get("tool_id"),
                "state": state,
                "detail": detail,
                "updated": doc.get("updated_at"),
            }
        )
    return sorted(rows, key=lambda r: (r["toolchain_id"] or "", r["purpose"] or "", r["name"] or ""))


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
