"""``kabanero-otc resync``: fresh snapshots from the leading watcher(s), then wait for otc-writer.

The request is a ``control.resync`` CloudEvent on the events exchange (see
:mod:`services.kabanero_watcher.resync`), sent through :mod:`kotc_cli.rpc`: when no watcher is
connected the broker returns it and the command says so. Each leader answers with the snapshot
revision per namespace; otc-writer has caught up when its projection (``otc_writer_instances``)
holds at least those revisions and its queues, their retry queues and github-linker's are empty.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import pydantic

from kotc_cli.clients import Sources, declared
from kotc_cli.errors import OK, PROBLEM
from kotc_cli.output import Report
from kotc_cli.rpc import Unrouted, call
from kotc_cli.status import queue_names
from services.kabanero_watcher.state import COLLECTION as WATCH_STATE
from services.otc_writer.projection import Projection
from shared.amqp.topology import QUEUES
from shared.events import CloudEvent, ResyncReply, ResyncRequest, RoutingKeys, instance_scope, tekton_scope

CALM_LOOKS = 2
"""Clean looks in a row before otc-writer counts as caught up (nothing arrived in between)."""
POLL_S = 0.3


@dataclass
class Found:
    expected: set[str]
    """Clusters that should answer: the one asked for, else every one a watcher published for."""
    routed: bool = True
    """False when no watcher was connected to take the request."""
    replies: dict[str, ResyncReply] = field(default_factory=dict)
    malformed: int = 0
    behind: list[str] = field(default_factory=list)
    """What otc-writer (and github-linker) still had to do at the deadline."""
    seconds: float = 0.0

    @property
    def snapshots(self) -> dict[str, int]:
        """Scope -> snapshot revision published: Kabanero instances and Tekton namespaces."""
        out = {
            instance_scope(r.cluster, ns): rev
            for r in self.replies.values()
            for ns, rev in r.snapshots.items()
        }
        for r in self.replies.values():
            out.update({tekton_scope(r.cluster, ns): rev for ns, rev in r.tekton_snapshots.items()})
        return out


# --- collecting (I/O) -------------------------------------------------------------------------


async def known_clusters(src: Sources) -> set[str]:
    """Clusters some watcher has published for (the watcher's own records)."""
    return {str(c) for c in await (await src.db())[WATCH_STATE].distinct("cluster") if c}


def replies_of(events: list[CloudEvent]) -> tuple[dict[str, ResyncReply], int]:
    """The leaders' answers by cluster, and how many replies were not a :class:`ResyncReply`."""
    replies: dict[str, ResyncReply] = {}
    bad = 0
    for event in events:
        try:
            reply = ResyncReply.model_validate(event.data)
        except pydantic.ValidationError:
            bad += 1
            continue
        replies[reply.cluster] = reply
    return replies, bad


def answered(expected: set[str]) -> Callable[[list[CloudEvent]], bool]:
    """Enough replies: every expected cluster's (or, with none expected, any)."""

    def enough(events: list[CloudEvent]) -> bool:
        clusters = set(replies_of(events)[0])
        return bool(clusters) and expected <= clusters

    return enough


async def _projection_behind(src: Sources, wanted: dict[str, int]) -> list[str]:
    projection = Projection(await src.db())
    late = []
    for scope, revision in sorted(wanted.items()):
        applied = await projection.applied_snapshot(scope)
        have = applied.revision if applied else -1
        if have < revision:
            late.append(f"otc-writer has snapshot {have} of {scope}, wants {revision}")
    return late


async def _queues_busy(src: Sources) -> list[str]:
    """Messages waiting (exact, passive declares) or being handled (sampled, management API)."""
    names = [n for n in queue_names() if not n.endswith(".dead")]
    waiting = await declared(await src.amqp(), names)
    handled = await (await src.mgmt()).queues()
    return [
        f"{name}: {counts[0]} message(s) waiting" for name, counts in waiting.items() if counts and counts[0]
    ] + [
        f"{name}: {q['messages_unacknowledged']} message(s) being handled"
        for name, q in handled.items()
        if name in QUEUES and int(q.get("messages_unacknowledged", 0))
    ]


async def behind(src: Sources, wanted: dict[str, int]) -> list[str]:
    """What otc-writer (and github-linker) still have to do; empty once caught up."""
    return await _projection_behind(src, wanted) + await _queues_busy(src)


async def wait_caught_up(src: Sources, wanted: dict[str, int], deadline: float) -> list[str]:
    """Polls :func:`behind` until it is empty :data:`CALM_LOOKS` times in a row, or the deadline."""
    calm = 0
    late: list[str] = []
    while calm < CALM_LOOKS:
        late = await behind(src, wanted)
        calm = 0 if late else calm + 1
        if late and time.monotonic() > deadline:
            break
        await asyncio.sleep(POLL_S)
    return late


async def collect(src: Sources, cluster: str | None, namespace: str | None, timeout_s: float) -> Found:
    started = time.monotonic()
    deadline = started + timeout_s
    found = Found(expected={cluster} if cluster else await known_clusters(src))
    request = CloudEvent.for_data(
        RoutingKeys.CONTROL_RESYNC,
        ResyncRequest(cluster=cluster, namespace=namespace),
        source="/kabanero-otc-cli",
    )
    try:
        got = await call(await src.amqp(), request, deadline=deadline, enough=answered(found.expected))
    except Unrouted:
        found.routed = False
    else:
        found.replies, bad = replies_of(got.events)
        found.malformed = got.malformed + bad
        if found.replies:
            found.behind = await wait_caught_up(src, found.snapshots, deadline)
    found.seconds = time.monotonic() - started
    return found


# --- judging and showing (pure) ---------------------------------------------------------------


def problems(found: Found, timeout_s: float) -> list[str]:
    if not found.routed:
        return ["no kabanero-watcher is connected to RabbitMQ to take the request"]
    out = []
    silent = sorted(found.expected - set(found.replies))
    if not found.replies:
        out.append(
            f"no leading watcher answered within {timeout_s:.0f}s"
            + (f" for cluster(s) {', '.join(silent)}" if silent else "")
        )
    elif silent:
        out.append(f"no leading watcher answered for cluster(s) {', '.join(silent)}")
    if found.malformed:
        out.append(f"{found.malformed} malformed reply(ies) ignored")
    if found.behind:
        out.append("otc-writer has not caught up: " + "; ".join(found.behind))
    return out


def render(found: Found, problems: list[str], *, vhost: str) -> Report:
    snapshots = sorted(found.snapshots.items())
    leaders = {c: r.holder for c, r in found.replies.items()}
    report = Report(
        data={
            "vhost": vhost,
            "leaders": leaders,
            "snapshots": dict(snapshots),
            "caught_up": not problems,
            "seconds": round(found.seconds, 2),
            "problems": problems,
        },
        code=PROBLEM if problems else OK,
    )
    report.add("LEADERS", ("cluster", "holder"), sorted(leaders.items()))
    report.add("SNAPSHOTS PUBLISHED", ("scope", "revision"), snapshots)
    report.problems(problems, ok=f"otc-writer caught up in {found.seconds:.1f}s")
    return report


async def run(src: Sources, cluster: str | None, namespace: str | None, timeout_s: float) -> Report:
    found = await collect(src, cluster, namespace, timeout_s)
    return render(found, problems(found, timeout_s), vhost=src.config.vhost)
