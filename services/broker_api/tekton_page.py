"""A Tekton service's page (its ``dashboard_url`` when ``BROKER_PUBLIC_URL`` is set).

``<BROKER_PUBLIC_URL>/dashboard/tekton/<sid>/<token>``, the same capability scheme as the Kabanero
page (services.broker_api.dashboard: HMAC token per kind and sid, one 404 for a wrong token and an
unknown sid, no credentials, script-less strict CSP). It shows what the watcher of the service's
cluster last reported (``tekton.installation.changed``, kept per cluster by
:mod:`services.broker_api.tekton_installations`): the Pipelines and Triggers versions, the
controller namespace, how it was detected, the Tekton Dashboard URL, how many cards the service
keeps (the live cards of the namespaces it mirrors) and the installation's last change; or that no
installation was found and why; or that the watcher has not reported yet; then the cards kept in the
service's own toolchains with their sync state (services.broker_api.service_tools). Never credentials
or another service's toolchain ids.
"""

from __future__ import annotations

import html
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Literal
from urllib.parse import urlsplit

from aiohttp import web
from pydantic import BaseModel, Field

from services.broker_api.dashboard import PAGES, DashboardLinks, page_route, utc_now
from services.broker_api.kinds import RULES
from services.broker_api.models import InstanceRecord
from services.broker_api.page_frame import frame
from services.broker_api.service_tools import ToolsView, tools_view
from services.broker_api.service_tools import render as render_tools
from services.broker_api.tekton_installations import InstallationStore
from services.broker_api.tool_states import ToolStateStore
from shared.events import ServiceParameters, TektonInstallationData

KIND: Literal["tekton"] = "tekton"
ROUTE = PAGES[KIND] + "/{sid}/{token}"


class ShownInstallation(BaseModel):
    found: bool
    reason: str = Field(description="how it was detected, or why none was found")
    pipelines_version: str | None = None
    triggers_version: str | None = None
    controller_namespace: str | None = None
    detected_by: str | None = None
    dashboard_url: str | None = Field(default=None, description="the Tekton Dashboard (http/https only)")
    cards: int = Field(description="cards this service keeps: the live ones of the namespaces it mirrors")
    last_change: str | None = Field(default=None, description="the installation's last card change")
    last_change_at: datetime | None = None
    revision: int = Field(description="the watcher's report this shows")


class TektonDashboardView(BaseModel):
    """``GET /dashboard/tekton/{sid}/{token}`` (JSON): what the page shows; no credentials."""

    instance_id: str
    service: Literal["tekton"] = KIND
    state: Literal["active", "deleted"]
    cluster: str
    namespaces: list[str] | None = Field(description="the namespaces mirrored; null: every namespace")
    label: str
    summary: str = Field(description="one line: the installation, none found and why, or not reported")
    installation: ShownInstallation | None = Field(
        description="the watcher's last report; null: it has not reported yet"
    )
    tools: ToolsView | None = Field(
        default=None, description="the cards kept in its toolchains, and how they stand"
    )


def _http_url(url: str | None) -> str | None:
    """A URL the cluster reported is shown as a link only if it is an http(s) URL."""
    return url if url and urlsplit(url).scheme in ("http", "https") and urlsplit(url).netloc else None


def _summary(cluster: str, inst: ShownInstallation | None) -> str:
    if inst is None:
        return f"the watcher of cluster {cluster} has not reported yet"
    if not inst.found:
        return f"no Tekton installation found in cluster {cluster}: {inst.reason}"
    versions = f"Tekton Pipelines {inst.pipelines_version or '(version unknown)'}"
    if inst.triggers_version:
        versions += f", Triggers {inst.triggers_version}"
    where = f" in namespace {inst.controller_namespace}" if inst.controller_namespace else ""
    return f"{versions}{where} on cluster {cluster}"


def view(
    rec: InstanceRecord, found: TektonInstallationData | None, tools: ToolsView | None = None
) -> TektonDashboardView:
    p = rec.parameters
    scope = ServiceParameters(cluster=p.cluster, namespaces=p.namespaces)
    shown = (
        ShownInstallation(
            **found.model_dump(
                include={
                    "found",
                    "reason",
                    "pipelines_version",
                    "triggers_version",
                    "controller_namespace",
                    "detected_by",
                    "last_change",
                    "last_change_at",
                    "revision",
                }
            ),
            dashboard_url=_http_url(found.dashboard_url),
            cards=sum(n for ns, n in found.cards.items() if scope.mirrors(ns)),
        )
        if found is not None
        else None
    )
    return TektonDashboardView(
        instance_id=rec.instance_id,
        state=rec.state,
        cluster=p.cluster,
        namespaces=p.namespaces,
        label=RULES[KIND].label(p),
        summary=_summary(p.cluster, shown),
        installation=shown,
        tools=tools,
    )


def _rows(inst: ShownInstallation) -> str:
    e = html.escape
    rows = [
        ("Tekton Pipelines", inst.pipelines_version),
        ("Tekton Triggers", inst.triggers_version),
        ("Controller namespace", inst.controller_namespace),
        ("Detected by", inst.detected_by),
        ("How", inst.reason),
        ("Cards kept for this service", str(inst.cards)),
        ("Last change", inst.last_change),
        ("Last change at", inst.last_change_at.isoformat() if inst.last_change_at else None),
    ]
    cells = "".join(f"<tr><th>{e(k)}</th><td>{e(v or '-')}</td></tr>" for k, v in rows)
    link = (
        f"<p><a href='{e(inst.dashboard_url)}' rel=noreferrer>Tekton Dashboard</a></p>"
        if inst.dashboard_url
        else "<p>No Tekton Dashboard was found in the cluster.</p>"
    )
    return f"<table>{cells}</table>{link}"


def render(v: TektonDashboardView, rendered_at: datetime) -> str:
    e = html.escape
    inst = v.installation
    css = "pending" if inst is None else ("found" if inst.found else "missing")
    detail = _rows(inst) if inst is not None and inst.found else ""
    mirrored = ", ".join(v.namespaces) if v.namespaces else "every namespace"
    body = (
        f"<h1>{e(v.label)}</h1>"
        "<section aria-labelledby=stands><h2 id=stands>What this service stands for</h2>"
        f"<p>Service {e(v.instance_id)} ({e(v.state)}), mirroring {e(mirrored)}</p>"
        f"<p class={css}>{e(v.summary)}</p>"
        f"{detail}</section>"
        f"{render_tools(v.tools) if v.tools is not None else ''}"
    )
    return frame(v.label, body, rendered_at)


def tekton_route(
    links: DashboardLinks,
    record: Callable[[str], Awaitable[InstanceRecord | None]],
    installations: InstallationStore,
    tools: ToolStateStore,
) -> Callable[[web.Request], Awaitable[web.Response]]:
    """``GET /dashboard/tekton/{sid}/{token}``."""

    async def present(rec: InstanceRecord, page: int) -> tuple[BaseModel, str]:
        v = view(rec, await installations.get(rec.parameters.cluster), await tools_view(tools, rec, page))
        return v, render(v, utc_now())

    return page_route(links, KIND, record, present)
