"""Test helpers: deadline-bounded waits and a tap that captures events from a real queue."""

from __future__ import annotations

import asyncio
import inspect
import shutil
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aio_pika
import pytest
from aio_pika.abc import AbstractIncomingMessage
from pymongo import monitoring

from scripts.driver import EventTap as DriverTap
from shared.events import CloudEvent


async def wait_until(
    predicate: Callable[[], Any | Awaitable[Any]],
    *,
    timeout: float = 30.0,
    interval: float = 0.05,
    what: str = "",
) -> Any:
    """Poll ``predicate`` until it returns a truthy value or the deadline passes (AssertionError).

    The deadline only bounds a failure: a wait that passes costs the time until its condition holds,
    so deadlines are generous (the suite runs beside the compose check, on two workers, on shared
    machines); a bound that is itself the property under test is the test's own assertion."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what or predicate}")
        await asyncio.sleep(interval)


def kubectl_path() -> str:
    """The kubectl the tests run: the one ``make test`` unpacked beside this interpreter (when the
    PATH had none recent enough), else the PATH's. A missing one fails the test: never a silent skip."""
    found = shutil.which("kubectl", path=str(Path(sys.executable).parent)) or shutil.which("kubectl")
    if found is None:
        pytest.fail("kubectl is missing: `make test` installs it (scripts/ensure-kubectl.sh)", pytrace=False)
    return found


class EventTap(DriverTap):
    """The driver's tap (scripts/driver.py), with a deadline-bounded wait for what it collects."""

    async def wait_for(
        self, count: int, *, routing_key: str | None = None, timeout: float = 30.0
    ) -> list[CloudEvent]:
        def enough() -> bool:
            got = self.of_type(routing_key) if routing_key else self.events
            return len(got) >= count

        await wait_until(enough, timeout=timeout, what=f"{count} x {routing_key or 'any event'}")
        return self.of_type(routing_key) if routing_key else list(self.events)


async def drain_queue(amqp_url: str, queue: str, *, timeout: float = 0.5) -> list[AbstractIncomingMessage]:
    """Read (and ack) everything currently in ``queue``, e.g. a ``.dead`` queue."""
    conn = await aio_pika.connect_robust(amqp_url)
    try:
        channel = await conn.channel()
        q = await channel.get_queue(queue, ensure=False)
        out: list[AbstractIncomingMessage] = []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            msg = await q.get(no_ack=True, fail=False)
            if msg is None:
                await asyncio.sleep(0.05)
                continue
            out.append(msg)
        return out
    finally:
        await conn.close()


class CommandLog(monitoring.CommandListener):
    """The MongoDB commands a client sent, in order (handshakes and pings are not work): register it
    with ``AsyncMongoClient(..., event_listeners=[log])`` to count a code path's round trips."""

    NOT_WORK = frozenset({"hello", "ismaster", "isMaster", "ping", "endSessions", "buildInfo", "saslStart"})

    def __init__(self) -> None:
        self.names: list[str] = []
        self.collections: list[str] = []

    def clear(self) -> None:
        self.names.clear()
        self.collections.clear()

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        if event.command_name not in self.NOT_WORK:
            self.names.append(event.command_name)
            self.collections.append(str(event.command.get(event.command_name)))

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        pass

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        pass
