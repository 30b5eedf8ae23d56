"""The tools part of every service's page: per bound toolchain, each tool kabanero-otc keeps for the
service with its sync state, as otc-writer reported it (:mod:`services.broker_api.tool_states`).

Which tools concern a service: those of its bound toolchains (never another's toolchain) that
belong to what it stands for: a Kabanero service's instance (the tools of ``cluster/namespace``,
the GitHub tools of its toolchains, its own Kabanero Events tool), a Tekton service's cluster and
mirrored namespaces. Bounded: counts first, then the problems (refused, failed, held, pending) before
the applied tools, ``PAGE_SIZE`` per page (``?page=N``); dead letters and links are capped too.
"""

from __future__ import annotations

import html
from datetime import UTC, datetime
from typing import Literal

from pydantic import BaseModel, Field

from services.broker_api.models import InstanceRecord
from services.broker_api.tool_states import ToolStateDoc, ToolStateStore
from shared.events import TEKTON_SCOPE_PREFIX, ServiceParameters, ToolState

PAGE_SIZE = 100
MAX_LISTED = 50
"""Dead letters and links listed at most (the counts say how many in all)."""
EVENTS_TOOL_PREFIX = "kabanero-events-auto:"
GITHUB_PURPOSE = "github"
RANK: dict[str, int] = {"refused": 0, "failed": 1, "held": 2, "pending": 3, "applied": 4}
WORDS: dict[str, str] = {
    "applied": "in sync",
    "pending": "pending",
    "held": "held: OTC unavailable",
    "refused": "refused by OTC",
    "failed": "failed",
}


class ShownTool(BaseModel):
    toolchain_id: str = Field(description="one of this service's bound toolchains")
    name: str
    purpose: str
    state: ToolState
    summary: str = Field(
        description="the state as a sentence: revision, since when, OTC's message, until when"
    )
    revision: int
    since: datetime = Field(description="when it entered this state")
    at: datetime = Field(description="the last outcome (applied: when it reached OTC)")
    message: str | None = None
    until: datetime | None = None
    link: str | None = None


class DeadLetterShown(BaseModel):
    message_id: str = Field(description="the dead-lettered message's id (kabanero-otc dead-letters)")
    tool: str
    reason: str | None


class Link(BaseModel):
    title: str
    url: str


class ToolsView(BaseModel):
    """The tools this service keeps in its toolchains, and how they stand."""

    toolchains: list[str] = Field(description="this service's bound toolchains")
    total: int
    counts: dict[str, int] = Field(description="state -> tools in it")
    in_sync: bool = Field(description="every tool applied")
    page: int
    pages: int
    page_size: int = PAGE_SIZE
    tools: list[ShownTool] = Field(description="this page's tools, problems first")
    last_change: ShownTool | None = Field(description="the last tool that reached OTC (or left it)")
    dead_letters: list[DeadLetterShown]
    links: list[Link] = Field(description="the tools' links: GitHub repositories, Tekton Dashboard, gitops")


def concerns(rec: InstanceRecord, tool: ToolStateDoc) -> bool:
    """Whether ``tool`` (of one of ``rec``'s toolchains) is kept for this service."""
    p = rec.parameters
    scope = tool.scope or ""
    if rec.kind == "tekton":
        prefix = f"{TEKTON_SCOPE_PREFIX}{p.cluster}/"
        mirror = ServiceParameters(cluster=p.cluster, namespaces=p.namespaces)
        return scope.startswith(prefix) and mirror.mirrors(scope.removeprefix(prefix))
    if tool.key == f"{EVENTS_TOOL_PREFIX}{rec.instance_id}"[:512]:
        return True
    return scope == f"{p.cluster}/{p.namespace}" or (not scope and tool.purpose == GITHUB_PURPOSE)


def when(at: datetime) -> str:
    """A time as a user reads it: ``2026-01-01 12:00:05 UTC``."""
    utc = at.astimezone(UTC) if at.tzinfo is not None else at
    return f"{utc:%Y-%m-%d %H:%M:%S} UTC"


def summary(t: ToolStateDoc) -> str:
    if t.state == "applied":
        return f"in sync at revision {t.revision} ({t.change or 'applied'}), reached OTC at {when(t.at)}"
    if t.state == "pending":
        return f"pending since {when(t.since)}: {t.message or 'OTC did not answer'}; retried"
    if t.state == "held":
        until = f" until {when(t.until)}" if t.until else ""
        return f"held since {when(t.since)}: OTC is down or rate limiting{until}; retried then"
    if t.state == "refused":
        return f"refused by OTC at {when(t.at)}: {t.message or ''}; not retried until it changes"
    return f"failed at {when(t.at)}: {t.message or ''}"


def _shown(t: ToolStateDoc) -> ShownTool:
    return ShownTool(
        toolchain_id=t.toolchain_id,
        name=t.name or t.key,
        purpose=t.purpose,
        state=t.state,
        summary=summary(t),
        revision=t.revision,
        since=t.since,
        at=t.at,
        message=t.message,
        until=t.until,
        link=t.link,
    )


def _counts(tools: list[ToolStateDoc]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for t in tools:
        counts[t.state] = counts.get(t.state, 0) + 1
    return counts


def _dead_letters(tools: list[ToolStateDoc]) -> list[DeadLetterShown]:
    dead = [
        DeadLetterShown(message_id=t.dead_letter, tool=t.name or t.key, reason=t.message)
        for t in tools
        if t.dead_letter
    ]
    return dead[:MAX_LISTED]


def _links(tools: list[ToolStateDoc]) -> list[Link]:
    found = sorted({(t.name or t.key, t.link) for t in tools if t.link})
    return [Link(title=title, url=url) for title, url in found[:MAX_LISTED]]


def view(rec: InstanceRecord, found: list[ToolStateDoc], page: int) -> ToolsView:
    tools = sorted(
        (t for t in found if concerns(rec, t)),
        key=lambda t: (RANK.get(t.state, 9), t.toolchain_id, t.name or t.key),
    )
    counts = _counts(tools)
    pages = max(1, -(-len(tools) // PAGE_SIZE))
    page = min(max(page, 1), pages)
    last = max((t for t in tools if t.state == "applied"), key=lambda t: t.at, default=None)
    return ToolsView(
        toolchains=rec.toolchain_ids,
        total=len(tools),
        counts=counts,
        in_sync=counts.get("applied", 0) == len(tools),
        page=page,
        pages=pages,
        tools=[_shown(t) for t in tools[(page - 1) * PAGE_SIZE : page * PAGE_SIZE]],
        last_change=_shown(last) if last else None,
        dead_letters=_dead_letters(tools),
        links=_links(tools),
    )


async def tools_view(store: ToolStateStore, rec: InstanceRecord, page: int) -> ToolsView:
    return view(rec, await store.of_toolchains(rec.toolchain_ids), page)


def _headline(v: ToolsView) -> str:
    if not v.toolchains:
        return "Not bound to any toolchain yet: no tools."
    if v.total == 0:
        return "No tools reported by kabanero-otc for this service yet."
    if v.in_sync:
        return f"All {v.total} tools are in sync with OTC."
    problems = ", ".join(
        f"{n} {WORDS.get(s, s)}" for s, n in sorted(v.counts.items(), key=lambda i: RANK[i[0]])
    )
    return f"Not in sync: {problems} (of {v.total} tools)."


def _table(v: ToolsView) -> str:
    e = html.escape
    rows: list[str] = []
    current = None
    for t in v.tools:
        if t.toolchain_id != current:
            current = t.toolchain_id
            rows.append(f"<tr><th colspan=3 scope=colgroup>Toolchain {e(current)}</th></tr>")
        name = f"<a href='{e(t.link)}' rel=noreferrer>{e(t.name)}</a>" if t.link else e(t.name)
        rows.append(
            f"<tr class={e(t.state)}><td>{name}</td><td class=st><strong>{e(WORDS[t.state])}</strong></td>"
            f"<td>{e(t.summary)}</td></tr>"
        )
    return (
        f"<table><caption>Tools, problems first (page {v.page} of {v.pages})</caption>"
        "<thead><tr><th scope=col>Tool</th><th scope=col>State</th><th scope=col>Details</th></tr></thead>"
        f"<tbody>{''.join(rows)}</tbody></table>"
    )


def _pager(v: ToolsView) -> str:
    if v.pages <= 1:
        return ""
    links = []
    if v.page > 1:
        links.append(f"<a href='?page={v.page - 1}' rel=prev>Previous page</a>")
    if v.page < v.pages:
        links.append(f"<a href='?page={v.page + 1}' rel=next>Next page</a>")
    return f"<nav aria-label='Tool pages'><p>{' · '.join(links)}</p></nav>"


def render(v: ToolsView) -> str:
    """The tools section (HTML, inside the page's body)."""
    e = html.escape
    css: Literal["ok", "bad"] = "ok" if v.in_sync else "bad"
    counts = "".join(
        f"<li>{e(WORDS.get(s, s))}: {n}</li>" for s, n in sorted(v.counts.items(), key=lambda i: RANK[i[0]])
    )
    out = [
        f"<section aria-labelledby=tools><h2 id=tools>Tools in OTC</h2><p class={css}>{e(_headline(v))}</p>"
    ]
    if v.toolchains:
        out.append(f"<p>Bound toolchains: {e(', '.join(v.toolchains))}</p>")
    if counts:
        out.append(f"<ul class=counts>{counts}</ul>")
    if v.last_change is not None:
        lc = v.last_change
        out.append(f"<p>Last change: {e(lc.name)} {e(lc.summary)}.</p>")
    if v.tools:
        out.append(_table(v) + _pager(v))
    out.append("</section>")
    if v.dead_letters:
        items = "".join(
            f"<li><code>{e(d.message_id)}</code> ({e(d.tool)}): {e(d.reason or '-')}</li>"
            for d in v.dead_letters
        )
        out.append(
            "<section aria-labelledby=dead><h2 id=dead>Dead letters</h2>"
            "<p>Messages set aside because of these tools (kabanero-otc dead-letters list):</p>"
            f"<ul>{items}</ul></section>"
        )
    if v.links:
        items = "".join(
            f"<li><a href='{e(link.url)}' rel=noreferrer>{e(link.title)}</a></li>" for link in v.links
        )
        out.append(f"<section aria-labelledby=links><h2 id=links>Links</h2><ul>{items}</ul></section>")
    return "".join(out)
