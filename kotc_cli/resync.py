"""``kabanero-otc resync``: fresh snapshots from the leading watcher(s), then wait for otc-writer.

The request is a ``control.resync`` CloudEvent on the events exchange (see
:mod:`services.kabanero_watcher.resync`), published mandatory: when no watcher is connected the
broker returns it and the command says so. Each leader answers with the snapshot revision per
namespace; otc-writer has caught up when its projection (``otc_writer_instances``) holds at least
those revisions and its queues, their retry queues and github-linker's are empty.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import aio_pika
import aiohttp
from aio_pika.abc import AbstractRobustConnection
from pymongo.asynchronous.database import AsyncDatabase

from kotc_cli.clients import Management, amqp, declared, mongo
from kotc_cli.config import Config
from kotc_cli.errors import OK, PROBLEM
from kotc_cli.output import Report
from kotc_cli.status import queue_names
from services.kabanero_watcher.state import COLLECTION as WATCH_STATE
from services.otc_writer.projection import Projection
from shared.amqp.messages import to_message
from shared.amqp.topology import EXCHANGE, QUEUES
from shared.events import CloudEvent, ResyncReply, ResyncRequest, RoutingKeys
from shared.mongo import Document


async def known_clusters(db: AsyncDatabase[Document]) -> set[str]:
    """Clusters some watcher has published for (the watcher's own records)."""
    return {str(c) for c in await db[WATCH_STATE].distinct("cluster") if c}


async def _caught_up(
    db: AsyncDatabase[Document], conn: AbstractRobustConnection, mgmt: Management, wanted: dict[str, int]
) -> list[str]:
    """What otc-writer (and github-linker) still have to do; empty once caught up."""
    behind = []
    for scope, revision in sorted(wanted.items()):
        applied = await Projection(db).applied_snapshot(scope)
        have = applied.revision if applied else -1
        if have < revision:
            behind.append(f"otc-writer has snapshot {have} of {scope}, wants {revision}")
    names = [n for n in queue_names() if not n.endswith(".dead")]
    for name, counts in (await declared(conn, names)).items():
        if counts is not None and counts[0]:
            behind.append(f"{name}: {counts[0]} message(s) waiting")
    for name, q in (await mgmt.queues()).items():
        if name in QUEUES and int(q.get("messages_unacknowledged", 0)):
            behind.append(f"{name}: {q['messages_unacknowledged']} message(s) being handled")
    return behind


async def run(config: Config, cluster: str | None, namespace: str | None, timeout_s: float) -> Report:
    started = time.monotonic()
    async with mongo(config) as db:
        expected = {cluster} if cluster else await known_clusters(db)
        replies: dict[str, ResyncReply] = {}
        async with amqp(config) as conn:
            channel = await conn.channel(publisher_confirms=True, on_return_raises=True)
            inbox = await channel.declare_queue("", exclusive=True, auto_delete=True)
            correlation = uuid.uuid4().hex
            got = asyncio.Queue[ResyncReply]()

            async def on_reply(message: aio_pika.abc.AbstractIncomingMessage) -> None:
                if message.correlation_id == correlation:
                    await got.put(
                        ResyncReply.model_validate(CloudEvent.model_validate_json(message.body).data)
                    )

            await inbox.consume(on_reply, no_ack=True)
            request = CloudEvent.for_data(
                RoutingKeys.CONTROL_RESYNC,
                ResyncRequest(cluster=cluster, namespace=namespace),
                source="/kabanero-otc-cli",
            )
            exchange = await channel.get_exchange(EXCHANGE, ensure=False)
            try:
                await exchange.publish(
                    to_message(request, reply_to=inbox.name, correlation_id=correlation),
                    RoutingKeys.CONTROL_RESYNC,
                    mandatory=True,
                    timeout=10,
                )
            except aio_pika.exceptions.DeliveryError:
                return _report(
                    config,
                    {},
                    [],
                    ["no kabanero-watcher is connected to RabbitMQ to take the request"],
                    started,
                )
            deadline = started + timeout_s
            while time.monotonic() < deadline and (not replies or not expected <= set(replies)):
                try:
                    reply = await asyncio.wait_for(got.get(), max(0.1, deadline - time.monotonic()))
                except TimeoutError:
                    break
                replies[reply.cluster] = reply
            await channel.close()
            problems = []
            silent = sorted(expected - set(replies)) if expected else []
            if not replies:
                problems.append(
                    f"no leading watcher answered within {timeout_s:.0f}s"
                    + (f" for cluster(s) {', '.join(silent)}" if silent else "")
                )
            elif silent:
                problems.append(f"no leading watcher answered for cluster(s) {', '.join(silent)}")
            wanted = {f"{r.cluster}/{ns}": rev for r in replies.values() for ns, rev in r.snapshots.items()}
            behind: list[str] = []
            calm = 0
            async with aiohttp.ClientSession() as session:
                mgmt = Management(config, session)
                while replies and calm < 2:  # two clean looks in a row: nothing left in between
                    behind = await _caught_up(db, conn, mgmt, wanted)
                    calm = 0 if behind else calm + 1
                    if behind and time.monotonic() > deadline:
                        break
                    await asyncio.sleep(0.3)
            if behind:
                problems.append("otc-writer has not caught up: " + "; ".join(behind))
    return _report(config, replies, sorted(wanted.items()), problems, started)


def _report(
    config: Config,
    replies: dict[str, ResyncReply],
    snapshots: list[tuple[str, int]],
    problems: list[str],
    started: float,
) -> Report:
    took = time.monotonic() - started
    data: dict[str, Any] = {
        "vhost": config.vhost,
        "leaders": {c: r.holder for c, r in replies.items()},
        "snapshots": dict(snapshots),
        "caught_up": not problems,
        "seconds": round(took, 2),
        "problems": problems,
    }
    report = Report(data=data, code=PROBLEM if problems else OK)
    report.add("LEADERS", ("cluster", "holder"), sorted(data["leaders"].items()))
    report.add("SNAPSHOTS PUBLISHED", ("instance", "revision"), snapshots)
    if problems:
        report.line("problems:\n" + "\n".join(f"  - {p}" for p in problems))
    else:
        report.line(f"otc-writer caught up in {took:.1f}s")
    return report
