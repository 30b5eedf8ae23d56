"""``kabanero-otc dead-letters list|replay|purge``: the ``<queue>.dead`` queues of docs/architecture.md §4.

Listing takes each dead letter with ``basic.get`` (manual ack) and closes the channel without acking,
which puts every message back: nothing is consumed. Replay republishes the chosen messages to their
consuming queue through the default exchange (confirmed, mandatory) with the attempt count and the
dead-letter headers removed, then acks the dead copy: each is replayed once, and a publish that is
not confirmed leaves the dead letter where it was. Purge needs ``--yes``.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import aio_pika
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage

from kotc_cli.clients import amqp
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


def describe(queue: str, message: AbstractIncomingMessage) -> dict[str, Any]:
    headers = dict(message.headers or {})
    try:
        body = json.loads(message.body)
    except ValueError:
        body = {}
    deaths = headers.get("x-death")
    death: dict[str, Any] = (
        deaths[0] if isinstance(deaths, list) and deaths and isinstance(deaths[0], dict) else {}
    )
    reason = _text(headers.get(REASON_HEADER)) or (f"broker: {_text(death.get('reason'))}" if death else None)
    attempts = headers.get(ATTEMPT_HEADER) or death.get("count") or headers.get("x-delivery-count")
    when = message.timestamp if isinstance(message.timestamp, datetime) else None
    return {
        "queue": queue,
        "id": message.message_id or (body.get("id") if isinstance(body, dict) else None),
        "type": message.type or (body.get("type") if isinstance(body, dict) else None),
        "subject": body.get("subject") if isinstance(body, dict) else None,
        "reason": reason,
        "error": _text(headers.get(ERROR_HEADER)),
        "attempts": int(attempts) if isinstance(attempts, int | str) and str(attempts).isdigit() else None,
        "replayed": _count(headers.get(REPLAYED_HEADER)),
        "time": when.astimezone(UTC).isoformat() if when else None,
        "age": age(when),
    }


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


async def list_(config: Config, queue: str | None) -> Report:
    rows: list[dict[str, Any]] = []
    async with amqp(config) as conn:
        for name in dead_queues(config, queue):
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


async def replay(config: Config, queue: str | None, ids: list[str], everything: bool) -> Report:
    if not ids and not everything:
        raise CliError("dead-letters replay: give --id ID (repeatable) or --all")
    replayed: list[dict[str, Any]] = []
    wanted = set(ids)
    async with amqp(config) as conn:
        for name in dead_queues(config, queue):
            target = name.removesuffix(".dead")
            channel = await conn.channel(publisher_confirms=True)
            try:
                for message in await _take_all(channel, name):
                    if not everything and message.message_id not in wanted:
                        continue
                    await channel.default_exchange.publish(
                        replay_copy(message), routing_key=target, mandatory=True, timeout=10
                    )
                    await message.ack()
                    wanted.discard(message.message_id or "")
                    replayed.append({**describe(name, message), "to": target})
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


async def purge(config: Config, queue: str | None, confirmed: bool) -> Report:
    names = dead_queues(config, queue)
    async with amqp(config) as conn:
        channel = await conn.channel()
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
