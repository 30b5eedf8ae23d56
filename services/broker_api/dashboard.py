"""A Kabanero or Kabanero Events service's page (its ``dashboard_url`` with ``BROKER_PUBLIC_URL``).

OTC opens a service's ``dashboard_url`` in the user's browser, which holds no broker credentials, so
the page is served without authentication and its URL is the capability:
``<BROKER_PUBLIC_URL>/dashboard/<sid>/<token>``, where ``token`` is an HMAC-SHA256 of the sid under a
key derived from ``CREDENTIALS_KEY`` (128 bits, URL-safe). It cannot be guessed from the sid, needs no
storage, and is the same on every replica; a wrong token is a plain 404, like an unknown sid, so the
page says nothing about which sids exist. Rotating ``CREDENTIALS_KEY`` changes the URLs (the next
PUT or PATCH returns the new one).

What it shows is what the OTC tool card may show: the instance (cluster/namespace/name), whether the
service is active, the instance as the watcher found it (version, repositories), for a service that
creates its instance the watcher's last outcome (created, updated, deleted, refused... with its
message, the API server's when it refused, and when), a link to the Kabanero landing page, and the
tools kept in the service's own toolchains with their sync state (services.broker_api.service_tools).
Never credentials, another service's toolchain ids or the spec. HTML by default, JSON when the client asks for it (``Accept:
application/json``). ``Referrer-Policy: no-referrer`` keeps the token out of the landing page's logs,
``Cache-Control: no-store`` out of shared caches.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import html
import logging
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Literal

from aiohttp import web
from pydantic import BaseModel, Field, SecretStr

from services.broker_api.errors import BadRequest, NotFound
from services.broker_api.kabanero_instances import KabaneroInstanceStore, ShownKabanero, shown
from services.broker_api.kabanero_instances import render as render_found
from services.broker_api.models import ID_RE, InstanceRecord
from services.broker_api.outcomes import OutcomeStore
from services.broker_api.page_frame import frame
from services.broker_api.service_tools import ToolsView, tools_view
from services.broker_api.service_tools import render as render_tools
from services.broker_api.tool_states import ToolStateStore
from shared.events import CommandOutcome, CommandOutcomeData, ServiceKind, instance_scope

log = logging.getLogger(__name__)


def utc_now() -> datetime:
    return datetime.now(UTC)


ROUTE = "/dashboard/{sid}/{token}"
EVENTS_ROUTE = "/dashboard/events/{sid}/{token}"
KIND: ServiceKind = "kabanero"  # only Kabanero services create their instance
PAGES: dict[ServiceKind, str] = {
    "kabanero": "/dashboard",
    "kabanero-events": "/dashboard/events",
    "tekton": "/dashboard/tekton",
}
"""Where each kind's pages are (a Tekton service's: services.broker_api.tekton_page)."""
HEADERS = {
    "Cache-Control": "no-store",
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'",
}


class DashboardLinks:
    """The unguessable dashboard URL of a sid."""

    def __init__(self, credentials_key: SecretStr, public_url: str | None) -> None:
        # A key of its own (not the Fernet key itself), derived once.
        self._key = hmac.new(
            credentials_key.get_secret_value().encode(), b"kabanero-otc dashboard v1", hashlib.sha256
        ).digest()
        self._base = public_url.rstrip("/") if public_url else None

    @property
    def enabled(self) -> bool:
        return self._base is not None

    def token(self, sid: str, kind: ServiceKind = KIND) -> str:
        """Per kind and sid: one kind's token opens nothing of another (sids are per kind)."""
        mac = hmac.new(self._key, f"{kind}:{sid}".encode(), hashlib.sha256).digest()[:16]
        return base64.urlsafe_b64encode(mac).decode().rstrip("=")

    def valid(self, sid: str, token: str, kind: ServiceKind = KIND) -> bool:
        return hmac.compare_digest(self.token(sid, kind).encode(), token.encode())

    def url(self, sid: str, kind: ServiceKind = KIND) -> str | None:
        if self._base is None or kind not in PAGES:
            return None
        return f"{self._base}{PAGES[kind]}/{sid}/{self.token(sid, kind)}"


class InstanceName(BaseModel):
    cluster: str
    namespace: str
    name: str


class ShownOutcome(BaseModel):
    outcome: CommandOutcome
    message: str = Field(description="what the watcher did, with the API server's message if refused")
    at: datetime
    revision: int


class DashboardView(BaseModel):
    """``GET /dashboard/{sid}/{token}`` (JSON): what the page shows; no credentials."""

    instance_id: str
    service: ServiceKind
    state: Literal["active", "deleted"]
    instance: InstanceName
    creates_instance: bool
    outcome: ShownOutcome | None = Field(description="the watcher's last outcome; null: none yet")
    kabanero_landing_url: str
    found: ShownKabanero | None = Field(
        default=None,
        description="the instance as the watcher found it (version, repositories); null: not yet",
    )
    tools: ToolsView | None = Field(
        default=None, description="the tools kept in its toolchains, and how they stand"
    )


def view(
    rec: InstanceRecord,
    outcome: CommandOutcomeData | None,
    landing: str,
    tools: ToolsView | None = None,
    found: ShownKabanero | None = None,
) -> DashboardView:
    """The page's content (the JSON answer; the HTML shows the same)."""
    p = rec.parameters
    return DashboardView(
        instance_id=rec.instance_id,
        service=rec.kind,
        state=rec.state,
        instance=InstanceName(cluster=p.cluster, namespace=p.namespace, name=p.name or "kabanero"),
        creates_instance=p.create,
        outcome=(
            ShownOutcome(
                outcome=outcome.outcome, message=outcome.message, at=outcome.at, revision=outcome.revision
            )
            if outcome is not None
            else None
        ),
        kabanero_landing_url=landing,
        tools=tools,
        found=found,
    )


def render(v: DashboardView, rendered_at: datetime) -> str:
    e = html.escape
    label = f"{v.instance.cluster}/{v.instance.namespace}/{v.instance.name}"
    out = v.outcome
    if not v.creates_instance:
        result = "<p>This service stands for an existing Kabanero instance; it does not create one.</p>"
    elif out is None:
        result = "<p class=pending>Waiting for the watcher of the cluster: no outcome yet.</p>"
    else:
        at = out.at.isoformat()
        result = (
            f"<p class='outcome {e(out.outcome)}'>The Kabanero CR: <b>{e(out.outcome)}</b> "
            f"<time datetime='{e(at)}'>{e(at)}</time></p><p>{e(out.message)}</p>"
        )
    what = "Kabanero Events" if v.service == "kabanero-events" else "Kabanero"
    body = (
        f"<h1>{e(what)} {e(label)}</h1>"
        "<section aria-labelledby=stands><h2 id=stands>What this service stands for</h2>"
        f"<p>The Kabanero instance {e(v.instance.name)} in namespace {e(v.instance.namespace)} of cluster "
        f"{e(v.instance.cluster)}. Service {e(v.instance_id)} ({e(v.state)}).</p>"
        f"{render_found(v.found) if v.tools is not None else ''}{result}"
        f"<p><a href='{e(v.kabanero_landing_url)}' rel=noreferrer>Kabanero landing page</a></p></section>"
        f"{render_tools(v.tools) if v.tools is not None else ''}"
    )
    return frame(f"{what} service {label}", body, rendered_at)


def wants_json(request: web.Request) -> bool:
    accept = request.headers.get("Accept", "")
    return "application/json" in accept and "text/html" not in accept


Present = Callable[[InstanceRecord, int], Awaitable[tuple[BaseModel, str]]]
"""A page's content for a record and a page of its tools: the JSON view and the HTML showing the same."""


def page_number(request: web.Request) -> int:
    """``?page=N`` (1 when absent); anything but a positive integer is a 400 naming it."""
    raw = request.query.get("page", "1")
    if not raw.isdigit() or not 1 <= int(raw) <= 1_000_000:
        raise BadRequest("invalid request: 'page' must be a positive integer")
    return int(raw)


def page_route(
    links: DashboardLinks,
    kind: ServiceKind,
    record: Callable[[str], Awaitable[InstanceRecord | None]],
    present: Present,
) -> Callable[[web.Request], Awaitable[web.Response]]:
    """``GET <page>/{sid}/{token}`` of one kind: 404 for a malformed or unknown sid and a wrong
    token alike; JSON or HTML as the client asks."""

    async def handler(request: web.Request) -> web.Response:
        sid, token = request.match_info["sid"], request.match_info["token"]
        rec = await record(sid) if ID_RE.fullmatch(sid) and links.valid(sid, token, kind) else None
        if rec is None:
            raise NotFound("no such dashboard")
        v, page = await present(rec, page_number(request))
        if wants_json(request):
            return web.json_response(v.model_dump(mode="json"), headers=HEADERS)
        return web.Response(text=page, content_type="text/html", headers=HEADERS)

    return handler


def dashboard_route(
    links: DashboardLinks,
    record: Callable[[str], Awaitable[InstanceRecord | None]],
    outcomes: OutcomeStore,
    landing: Callable[[InstanceRecord], str],
    tools: ToolStateStore,
    instances: KabaneroInstanceStore,
    kind: ServiceKind = KIND,
) -> Callable[[web.Request], Awaitable[web.Response]]:
    """``GET /dashboard/{sid}/{token}``: a Kabanero service's page (``/dashboard/events/...``: a
    Kabanero Events service's, the same page)."""

    async def present(rec: InstanceRecord, page: int) -> tuple[BaseModel, str]:
        outcome = await outcomes.get(rec.instance_id) if kind == KIND else None
        found = shown(await instances.get(instance_scope(rec.parameters.cluster, rec.parameters.namespace)))
        v = view(rec, outcome, landing(rec), await tools_view(tools, rec, page), found)
        return v, render(v, utc_now())

    return page_route(links, kind, record, present)
