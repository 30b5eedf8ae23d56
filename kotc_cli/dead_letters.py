"""``kabanero-otc dead-letters list|replay|purge``: the ``<queue>.dead`` queues of docs/architecture.md §4.

Listing takes each dead letter with ``basic.get`` (manual ack) and closes the channel without acking,
which puts every message back: nothing is consumed. Replay republishes the chosen messages to their
consuming queue through the default exchange (confirmed, mandatory) with the attempt count and the
dead-letter headers removed, then acks the dead copy: each is replayed once, and a publish that is
not confirmed leaves the dead letter where it was. Purge needs ``--yes``.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import aio_pika
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage

from kotc_cli.clients import Sources
from kotc_cli.config import Config
from kotc_cli.errors import OK, PROBLEM, CliError
from kotc_cli.output import Report, age
from shared.amqp.consumer import ATTEMPT_HEADER, ERROR_HEADER, REASON_HEADER, persistent_copy

REPLAYED_HEADER = "x-kotc-replayed"
"""How many times the message was replayed from its dead-letter queue (kept across replays)."""
_DROPPED = (
    ATTEMPT_HEADER,
    ERROR_HEADER,
    REASON_HEADER,
    "x-kotc-queue",
    "x-kotc-routing-key",
    "x-death",
    "x-first-death-exchange",
    "x-first-death-queue",
    "x-first-death-reason",
    "x-last-death-exchange",
    "x-last-death-queue",
    "x-last-death-reason",
    "x-delivery-count",
)


def dead_queues(config: Config, queue: str | None) -> list[str]:
    """The dead-letter queues of every consuming queue (the watchers' per-cluster command queues too)."""
    queues = config.queues
    if queue is None:
        return [f"{q}.dead" for q in queues]
    base = queue.removesuffix(".dead")
    if base not in queues:
        raise CliError(f"--queue {queue}: not a consuming queue (one of {', '.join(queues)})")
    return [f"{base}.dead"]


def _text(value: object) -> str | None:
    if value is None:
        return None
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


def _count(value: object) -> int:
    if isinstance(value, int):
        return value
    text = _text(value)
    return int(text) if text is not None and text.isdigit() else 0


def _death(headers: dict[str, Any]) -> dict[str, Any]:
    """The broker's latest ``x-death`` entry, if any."""
    deaths = headers.get("x-death")
    first = deaths[0] if isinstance(deaths, list) and deaths else None
    return first if isinstance(first, dict) else {}


def _attempts(headers: dict[str, Any], death: dict[str, Any]) -> int | None:
    value = headers.get(ATTEMPT_HEADER) or death.get("count") or headers.get("x-delivery-count")
    return int(value) if isinstance(value, int | str) and str(value).isdigit() else None


def letter(
    queue: str,
    *,
    headers: dict[str, Any],
    body: bytes,
    message_id: str | None,
    type_: str | None,
    timestamp: datetime | None,
) -> dict[str, Any]:
    """One dead letter as listed: our headers first, else the broker's ``x-death``, else its body."""
    try:
        parsed = json.loads(body)
    except ValueError:
        parsed = None
    event: dict[str, Any] = parsed if isinstance(parsed, dict) else {}
    death = _death(headers)
    reason = _text(headers.get(REASON_HEADER)) or (f"broker: {_text(death.get('reason'))}" if death else None)
    return {
        "queue": queue,
        "id": message_id or event.get("id"),
        "type": type_ or event.get("type"),
        "subject": event.get("subject"),
        "reason": reason,
        "error": _text(headers.get(ERROR_HEADER)),
        "attempts": _attempts(headers, death),
        "replayed": _count(headers.get(REPLAYED_HEADER)),
        "time": timestamp.astimezone(UTC).isoformat() if timestamp else None,
        "age": age(timestamp),
    }


def describe(queue: str, message: AbstractIncomingMessage) -> dict[str, Any]:
    return letter(
        queue,
        headers=dict(message.headers or {}),
        body=message.body,
        message_id=message.message_id,
        type_=message.type,
        timestamp=message.timestamp if isinstance(message.timestamp, datetime) else None,
    )


async def _take_all(channel: AbstractChannel, name: str) -> list[AbstractIncomingMessage]:
    """Every message of the queue, unacked (closing the channel gives them back)."""
    queue = await channel.declare_queue(name, passive=True)
    count = queue.declaration_result.message_count or 0
    taken: list[AbstractIncomingMessage] = []
    for _ in range(count):
        message = await queue.get(no_ack=False, fail=False)
        if message is None:
            break
        taken.append(message)
    return taken


def _table(report: Report, title: str, rows: list[dict[str, Any]]) -> None:
    report.add(
        title,
        ("queue", "id", "type", "subject", "reason", "error", "attempts", "age"),
        [
            (
                r["queue"],
                r["id"],
                (r["type"] or "").removeprefix("io.kabanero.otc."),
                r["subject"],
                r["reason"],
                r["error"],
                r["attempts"],
                r["age"],
            )
            for r in rows
        ],
    )


async def list_(src: Sources, queue: str | None) -> Report:
    config = src.config
    names = dead_queues(config, queue)
    conn = await src.amqp()
    rows: list[dict[str, Any]] = []
    for name in names:
        channel = await conn.channel()
        try:
            rows += [describe(name, m) for m in await _take_all(channel, name)]
        finally:
            await channel.close()  # every message goes back
    report = Report(data={"vhost": config.vhost, "dead_letters": rows}, code=PROBLEM if rows else OK)
    _table(report, f"DEAD LETTERS (vhost {config.vhost})", rows)
    return report


def replay_copy(message: AbstractIncomingMessage) -> aio_pika.Message:
    replays = _count((message.headers or {}).get(REPLAYED_HEADER)) + 1
    return persistent_copy(message, {REPLAYED_HEADER: replays}, drop=_DROPPED)


async def _replay_queue(
    channel: AbstractChannel, name: str, chosen: Callable[[AbstractIncomingMessage], bool]
) -> list[dict[str, Any]]:
    """The chosen dead letters of one queue back to its consuming queue, each acked once confirmed."""
    target = name.removesuffix(".dead")
    replayed = []
    for message in await _take_all(channel, name):
        if not chosen(message):
            continue
        await channel.default_exchange.publish(
            replay_copy(message), routing_key=target, mandatory=True, timeout=10
        )
        await message.ack()
        replayed.append({**describe(name, message), "to": target})
    return replayed


async def replay(src: Sources, queue: str | None, ids: list[str], everything: bool) -> Report:
    config = src.config
    if not ids and not everything:
        raise CliError("dead-letters replay: give --id ID (repeatable) or --all")
    names = dead_queues(config, queue)
    conn = await src.amqp()
    replayed: list[dict[str, Any]] = []
    wanted = set(ids)

    def chosen(message: AbstractIncomingMessage) -> bool:
        """Every one with --all, else each id asked for once."""
        if everything:
            return True
        if message.message_id not in wanted:
            return False
        wanted.discard(message.message_id)
        return True

    for name in names:
        channel = await conn.channel(publisher_confirms=True)
        try:
            replayed += await _replay_queue(channel, name, chosen)
        finally:
            await channel.close()  # the ones not chosen go back
    missing = sorted(wanted)
    report = Report(
        data={"vhost": config.vhost, "replayed": replayed, "not_found": missing},
        code=PROBLEM if missing else OK,
    )
    _table(report, f"REPLAYED to their consuming queue, attempt count reset ({len(replayed)})", replayed)
    if missing:
        report.line("not found in any dead-letter queue: " + ", ".join(missing))
    return report


async def purge(src: Sources, queue: str | None, confirmed: bool) -> Report:
    config = src.config
    names = dead_queues(config, queue)
    channel = await (await src.amqp()).channel()
    try:
        counts = {}
        for name in names:
            q = await channel.declare_queue(name, passive=True)
            counts[name] = q.declaration_result.message_count or 0
        if not confirmed:
            raise CliError(
                f"dead-letters purge deletes {sum(counts.values())} message(s) from {', '.join(names)} "
                "for good; repeat with --yes"
            )
        for name in names:
            await (await channel.declare_queue(name, passive=True)).purge()
    finally:
        await channel.close()
    report = Report(data={"vhost": config.vhost, "purged": counts})
    report.add("PURGED", ("queue", "messages"), sorted(counts.items()))
    return report
