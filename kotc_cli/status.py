"""``kabanero-otc status``: services, queues, Kabanero and Tekton services, Tekton installations and
the tools kabanero-otc owns.

The command is :data:`SECTIONS`, one :class:`Section` per table: how its rows are collected (I/O),
which rows are problems (pure), and how they show (pure). ``--json`` holds each section's rows under
its key, then the problems. Another family of objects is another section (Tekton: :mod:`kotc_cli.tekton`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any

from kotc_cli import tekton
from kotc_cli.clients import Sources, declared, get_json
from kotc_cli.errors import OK, PROBLEM
from kotc_cli.output import Column, Report, Row, age, column
from kotc_cli.sync import OWNED_TOOLS_QUERY, in_flight, sync_state
from services.broker_api.models import InstanceRecord
from services.broker_api.store import COLLECTION as SERVICE_INSTANCES
from services.kabanero_watcher.owned_instances import OwnedInstanceStore
from services.otc_writer.ledger import LEDGER, LedgerEntry
from shared.amqp.topology import QUEUES, Topology


def _none(row: Row) -> Iterable[str]:
    return ()


@dataclass(frozen=True)
class Section:
    key: str
    """Its list in ``--json``."""
    title: str
    """Table title; ``{vhost}`` is replaced."""
    collect: Callable[[Sources], Awaitable[list[Row]]]
    columns: tuple[Column, ...]
    problems: Callable[[Row], Iterable[str]] = _none
    order: Callable[[Row], Any] | None = None
    """Display order of the table, when it differs from the rows' order in ``--json``."""


# --- services ---------------------------------------------------------------------------------


def health_row(name: str, url: str, live: tuple[int, Any], ready: tuple[int, Any], version: Any) -> Row:
    """One replica from its /healthz, /readyz (status, body) and /version body."""
    bodies = [body for _, body in (live, ready) if isinstance(body, dict)]
    checks = {k: v for body in bodies for k, v in (body.get("checks") or {}).items()}
    return {
        "service": name,
        "url": url,
        "reachable": live[0] != 0,
        "live": live[0] == 200,
        "ready": ready[0] == 200,
        "version": version.get("version") if isinstance(version, dict) else None,
        "checks": checks,
        "problem": None if live[0] else str(live[1]),
        "failing": {k: v for k, v in checks.items() if not str(v).startswith("ok")},
    }


async def service_health(src: Sources) -> list[Row]:
    """/healthz, /readyz and /version of every configured replica of every service."""
    session = await src.http()

    async def one(name: str, url: str) -> Row:
        live, ready, (_, version) = await asyncio.gather(
            get_json(session, f"{url}/healthz"),
            get_json(session, f"{url}/readyz"),
            get_json(session, f"{url}/version"),
        )
        return health_row(name, url, live, ready, version)

    jobs = [one(name, url) for name, urls in src.config.services.items() for url in urls]
    return list(await asyncio.gather(*jobs))


def _failing(s: Row) -> str:
    return "; ".join(f"{k}: {v}" for k, v in s["failing"].items())


def service_problems(s: Row) -> Iterable[str]:
    if not (s["live"] and s["ready"]):
        yield f"{s['service']} at {s['url']}: {s['problem'] or _failing(s) or 'not ready'}"


def _lease(service: Row) -> str:
    """A watcher's leadership (``leading`` / ``standby (lease held by ...)``), worth a glance."""
    detail = str(service["checks"].get("lease", ""))
    return detail.removeprefix("ok: ") if detail.startswith("ok: ") else ""


def _service_detail(s: Row) -> str:
    lease = _lease(s)
    return s["problem"] or _failing(s) or f"{len(s['checks'])} checks ok" + (f"; {lease}" if lease else "")


def _yn(flag: bool) -> str:
    return "yes" if flag else "NO"


# --- queues -----------------------------------------------------------------------------------


def queue_names(queues: Iterable[str] = QUEUES) -> list[str]:
    """Each consuming queue with its delay and dead-letter queues."""
    delays = sorted(set(Topology().retry_delays_s))
    return [n for q in queues for n in (q, *(f"{q}.retry.{d}s" for d in delays), f"{q}.dead")]


def queue_row(name: str, exact: dict[str, tuple[int, int] | None], sampled: dict[str, Any]) -> Row:
    """Ready, consumers, retrying and dead from the queues themselves (``exact``: passive declares);
    unacked from the management API (``sampled``: up to its statistics interval old)."""
    ready, consumers = exact.get(name) or (0, 0)
    retrying = sum((exact[n] or (0, 0))[0] for n in exact if n.startswith(f"{name}.retry."))
    return {
        "queue": name,
        "declared": exact.get(name) is not None,
        "ready": ready,
        "unacked": int(sampled.get(name, {}).get("messages_unacknowledged", 0)),
        "consumers": consumers,
        "retrying": retrying,
        "dead": (exact.get(f"{name}.dead") or (0, 0))[0],
    }


async def queue_table(src: Sources) -> list[Row]:
    queues = src.config.queues
    exact = await declared(await src.amqp(), queue_names(queues))
    sampled = await (await src.mgmt()).queues()
    return [queue_row(name, exact, sampled) for name in queues]


def queue_problems(q: Row) -> Iterable[str]:
    if q["dead"]:
        yield f"{q['dead']} dead letter(s) in {q['queue']}.dead (kabanero-otc dead-letters list)"
    if q["declared"] and not q["consumers"]:
        yield f"{q['queue']} has no consumer"
    if not q["declared"]:
        yield f"queue {q['queue']} is not declared"


# --- Kabanero services ------------------------------------------------------------------------


async def kabanero_services(src: Sources) -> list[Row]:
    """Active Kabanero and Kabanero Events services (Tekton services have their own section); for
    one that creates its Kabanero CR, the watcher's last outcome too."""
    db = await src.db()
    owned = {o.instance_id: o for o in await OwnedInstanceStore(db).all()}
    cursor = db[SERVICE_INSTANCES].find(
        {"state": "active", "kind": {"$ne": "tekton"}}, {"outbox": 0, "service_credentials": 0}
    )
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


def instance_problems(i: Row) -> Iterable[str]:
    if i["instance_outcome"] in ("refused", "failed"):
        yield (
            f"Kabanero service {i['instance_id']}: its Kabanero CR was {i['instance_outcome']}: "
            f"{i['instance_message']}"
        )


# --- tools owned ------------------------------------------------------------------------------


def tool_row(entry: LedgerEntry) -> Row:
    state, detail = sync_state(entry)
    started = in_flight(entry)
    return {
        "toolchain_id": entry.toolchain_id,
        "purpose": entry.purpose,
        "name": entry.tool_name or (started.name if started else "") or entry.key,
        "tool_id": entry.tool_id,
        "state": state,
        "detail": detail,
        "updated": entry.updated_at,
    }


async def owned_tools(src: Sources) -> list[Row]:
    db = await src.db()
    rows = [
        tool_row(LedgerEntry.model_validate(doc))
        async for doc in db[LEDGER].find(OWNED_TOOLS_QUERY, {"parameters": 0})
    ]
    return sorted(rows, key=lambda r: (r["toolchain_id"], r["purpose"], r["name"]))


def tool_problems(t: Row) -> Iterable[str]:
    if t["state"] == "refused":
        yield f"OTC refused tool {t['name']!r} in {t['toolchain_id']}: {t['detail']}"


# --- the command ------------------------------------------------------------------------------

SECTIONS: tuple[Section, ...] = (
    Section(
        "services",
        "SERVICES",
        service_health,
        (
            column("service"),
            column("url"),
            Column("live", lambda s: _yn(s["live"])),
            Column("ready", lambda s: _yn(s["ready"])),
            column("version"),
            Column("detail", _service_detail),
        ),
        service_problems,
    ),
    Section(
        "queues",
        "QUEUES (vhost {vhost})",
        queue_table,
        tuple(column(c) for c in ("queue", "ready", "unacked", "consumers", "retrying", "dead")),
        queue_problems,
    ),
    Section(
        "kabanero_services",
        "KABANERO SERVICES",
        kabanero_services,
        (
            column("kind"),
            column("service", "instance_id"),
            column("cluster"),
            column("namespace"),
            Column("toolchains", lambda i: ",".join(i["toolchains"]) or "-"),
            Column(
                "creates CR",
                lambda i: (i["instance_outcome"] or "pending") if i["creates_instance"] else "-",
            ),
        ),
        instance_problems,
        order=lambda i: (i["kind"] or "", i["instance_id"] or ""),
    ),
    Section(
        "tekton_services",
        "TEKTON SERVICES",
        tekton.tekton_services,
        (
            column("service", "instance_id"),
            column("cluster"),
            Column("namespaces", tekton.namespaces_cell),
            Column("toolchains", lambda s: ",".join(s["toolchains"]) or "-"),
            Column("otc-writer", tekton.writer_cell),
            Column("cards", lambda s: tekton.counts_cell(s["cards"])),
        ),
    ),
    Section(
        "tekton_installations",
        "TEKTON INSTALLATIONS (per cluster, as its watcher last reported)",
        tekton.tekton_installations,
        (
            column("cluster"),
            Column("found", tekton.found_cell),
            Column("versions", tekton.versions_cell),
            column("controllers", "controller_namespace"),
            Column("cards", lambda i: tekton.counts_cell(i["cards"])),
            Column("card tools", lambda i: tekton.counts_cell(i["tools"])),
            Column("services", lambda i: ",".join(i["services"]) or "-"),
            Column("detail", tekton.installation_detail),
        ),
        tekton.installation_problems,
    ),
    Section(
        "tools",
        "TOOLS OWNED BY KABANERO-OTC",
        owned_tools,
        (
            column("toolchain", "toolchain_id"),
            column("kind", "purpose"),
            column("name"),
            column("state"),
            Column("age", lambda t: age(t["updated"])),
            column("detail"),
        ),
        tool_problems,
    ),
)


async def collect(src: Sources, sections: Iterable[Section] = SECTIONS) -> dict[str, list[Row]]:
    return {s.key: await s.collect(src) for s in sections}


def problems(found: dict[str, list[Row]], sections: Iterable[Section] = SECTIONS) -> list[str]:
    return [p for s in sections for row in found[s.key] for p in s.problems(row)]


def render(
    found: dict[str, list[Row]],
    problems: list[str],
    *,
    source: str,
    vhost: str,
    sections: Iterable[Section] = SECTIONS,
) -> Report:
    report = Report(
        data={"source": source, "vhost": vhost, **found, "problems": problems},
        code=PROBLEM if problems else OK,
    )
    for s in sections:
        rows = sorted(found[s.key], key=s.order) if s.order else found[s.key]
        report.rows(s.title.format(vhost=vhost), s.columns, rows)
    report.problems(problems, ok="no problems found")
    return report


async def run(src: Sources) -> Report:
    found = await collect(src)
    return render(found, problems(found), source=src.config.source, vhost=src.config.vhost)
