"""The Tekton rows of ``kabanero-otc status``: Tekton services and, per cluster, its installation.

Read-only, from three stores (docs/operations.md, "Tekton in status"): broker-api's services
(``service_instances``, kind ``tekton``) and its last ``tekton.installation.changed`` per cluster
(``service_tekton_installations``), otc-writer's projection (the card scopes of a cluster, their live
cards) and ledger (the card tools' sync state). Collecting is I/O; rows and problems are pure.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from typing import Any

from kotc_cli.clients import Sources
from kotc_cli.output import Row
from kotc_cli.sync import OWNED_TOOLS_QUERY, sync_state
from services.broker_api.models import InstanceRecord
from services.broker_api.store import COLLECTION as SERVICE_INSTANCES
from services.broker_api.tekton_installations import COLLECTION as INSTALLATIONS
from services.otc_writer.family import TEKTON, tekton_namespace
from services.otc_writer.ledger import LEDGER, LedgerEntry
from services.otc_writer.projection import Projection
from shared.events import TEKTON_SCOPE_PREFIX, TektonInstallationData, tekton_cluster_scope

TEKTON_SERVICES_QUERY = {"state": "active", "kind": "tekton"}
HIDDEN = {"outbox": 0, "service_credentials": 0}


# --- Tekton services --------------------------------------------------------------------------


def service_row(rec: InstanceRecord, writer: dict[str, Any] | None, cards: dict[str, int]) -> Row:
    """One Tekton service: what broker-api holds, what otc-writer learned of it (``writer``: its
    ``otc_writer_services`` document) and the live cards of the namespaces it mirrors."""
    return {
        "instance_id": rec.instance_id,
        "cluster": rec.parameters.cluster,
        "namespaces": rec.parameters.namespaces,
        "toolchains": rec.toolchain_ids,
        "writer_toolchains": sorted(writer.get("toolchains") or []) if writer else None,
        "cards": cards,
    }


async def tekton_services(src: Sources) -> list[Row]:
    db = await src.db()
    projection = Projection(db)
    rows = []
    async for doc in db[SERVICE_INSTANCES].find(TEKTON_SERVICES_QUERY, HIDDEN):
        rec = InstanceRecord.model_validate(doc)
        cards = {}
        for scope in await projection.scopes_of(TEKTON, tekton_cluster_scope(rec.parameters.cluster)):
            namespace = tekton_namespace(scope)[1]
            if rec.parameters.namespaces is None or namespace in rec.parameters.namespaces:
                cards[namespace] = len(await projection.live_items(TEKTON, scope))
        writer = await projection.services.find_one({"_id": rec.instance_id})
        rows.append(service_row(rec, writer, cards))
    return sorted(rows, key=lambda r: (r["cluster"], r["instance_id"]))


def writer_cell(s: Row) -> str:
    """Whether otc-writer has learned the service's bindings (it follows broker-api's events)."""
    if s["writer_toolchains"] is None:
        return "not yet"
    if s["writer_toolchains"] == sorted(s["toolchains"]):
        return "same"
    return ",".join(s["writer_toolchains"]) or "none"


def namespaces_cell(s: Row) -> str:
    return "all" if s["namespaces"] is None else ",".join(s["namespaces"]) or "none"


def counts_cell(counts: dict[str, int]) -> str:
    """``kabanero=3 dev=1``, or ``-``."""
    return " ".join(f"{k}={n}" for k, n in sorted(counts.items())) or "-"


# --- installations ----------------------------------------------------------------------------


def installation_row(
    cluster: str,
    report: TektonInstallationData | None,
    services: list[str],
    tools: dict[str, int],
) -> Row:
    """What the watcher of ``cluster`` last reported (None: nothing yet), the Tekton services that
    stand for the cluster and its card tools by sync state."""
    return {
        "cluster": cluster,
        "reported": report is not None,
        "found": report.found if report else None,
        "reason": report.reason if report else None,
        "pipelines_version": report.pipelines_version if report else None,
        "triggers_version": report.triggers_version if report else None,
        "controller_namespace": report.controller_namespace if report else None,
        "dashboard_url": report.dashboard_url if report else None,
        "cards": dict(report.cards) if report else {},
        "last_change": report.last_change if report else None,
        "services": sorted(services),
        "tools": dict(sorted(tools.items())),
    }


def cluster_of_tool(entry: LedgerEntry) -> str | None:
    """The cluster of a card tool, from its ledger scope (``tekton:cluster/namespace``)."""
    if not entry.scope or not entry.scope.startswith(TEKTON_SCOPE_PREFIX):
        return None
    return tekton_namespace(entry.scope)[0]


async def tekton_installations(src: Sources) -> list[Row]:
    """Every cluster a watcher reported on or a Tekton service stands for."""
    db = await src.db()
    reports = {}
    async for doc in db[INSTALLATIONS].find({}):
        report = TektonInstallationData.model_validate(doc)
        reports[report.cluster] = report
    services: dict[str, list[str]] = {}
    async for doc in db[SERVICE_INSTANCES].find(TEKTON_SERVICES_QUERY, HIDDEN):
        rec = InstanceRecord.model_validate(doc)
        services.setdefault(rec.parameters.cluster, []).append(rec.instance_id)
    tools: dict[str, Counter[str]] = {}
    async for doc in db[LEDGER].find({"purpose": TEKTON.purpose, **OWNED_TOOLS_QUERY}, {"parameters": 0}):
        entry = LedgerEntry.model_validate(doc)
        if (cluster := cluster_of_tool(entry)) is not None:
            tools.setdefault(cluster, Counter())[sync_state(entry)[0]] += 1
    return [
        installation_row(c, reports.get(c), services.get(c, []), dict(tools.get(c, {})))
        for c in sorted(reports.keys() | services.keys())
    ]


def installation_problems(i: Row) -> Iterable[str]:
    """Only a cluster some Tekton service stands for: an absent installation elsewhere is fine."""
    if not i["services"]:
        return
    named = f"Tekton service(s) {', '.join(i['services'])} of cluster {i['cluster']}"
    if not i["reported"]:
        yield (
            f"{named}: no installation report from the cluster's watcher (is tekton in its "
            f"WATCH_FAMILIES and its CLUSTER_NAME {i['cluster']}?)"
        )
    elif not i["found"]:
        yield f"{named}: the watcher finds no Tekton installation: {i['reason']}"


def found_cell(i: Row) -> str:
    return "-" if not i["reported"] else "yes" if i["found"] else "NO"


def versions_cell(i: Row) -> str:
    parts = [f"{k} {i[f'{k}_version']}" for k in ("pipelines", "triggers") if i[f"{k}_version"]]
    return ", ".join(parts) or "-"


def installation_detail(i: Row) -> str:
    if not i["reported"]:
        return "no report from the watcher yet"
    return " ".join(x for x in (i["dashboard_url"], i["reason"]) if x)
