"""otc-writer as a real process, SIGKILLed between its OTC write and the ack, then restarted."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import urllib.parse
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from emulators.otc.testing import OtcEmulator
from services.otc_writer.ledger import Ledger
from shared.amqp import AmqpConnection, Publisher, Topology, declare_topology
from shared.events import CloudEvent, RoutingKeys, ToolCommand
from shared.mongo import database, make_client
from tests.e2e.blackhole import Blackhole
from tests.helpers import wait_until

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parents[2]
API_KEY = "kill-test-key"


def _env(amqp_url: str, mongodb_url: str, otc: OtcEmulator, **extra: str) -> dict[str, str]:
    return {
        **os.environ,
        "AMQP_URL": amqp_url,
        "MONGODB_URL": mongodb_url,
        "HTTP_PORT": "0",
        "HTTP_HOST": "127.0.0.1",
        "OTC_API_URL": otc.api_url,
        "OTC_IAM_URL": otc.url,
        "OTC_API_KEY": API_KEY,
        "LEASE_TTL_S": "2",
        "LEASE_WAIT_S": "10",
        "LOG_FORMAT": "json",
        **extra,
    }


async def _spawn(env: dict[str, str], *module: str) -> asyncio.subprocess.Process:
    """The writer (or ``module``: a wrapper of it that injects a fault) as a process."""
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        *(module or ("services.otc_writer",)),
        cwd=ROOT,
        env=env,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )


async def _world(
    stack: contextlib.AsyncExitStack, mongodb_url: str, name: str
) -> tuple[OtcEmulator, str, Ledger]:
    """An OTC emulator with one toolchain and the ledger as a test reads it, closed by ``stack``."""
    otc = await stack.enter_async_context(OtcEmulator.running(port=0, api_keys=(API_KEY,)))
    mongo = make_client(mongodb_url)
    stack.push_async_callback(mongo.close)
    return otc, otc.seed_toolchain(name=name), Ledger(database(mongo))


async def _reap(proc: asyncio.subprocess.Process) -> None:
    """Stop ``proc`` if it still runs (TERM, then KILL after 20 s)."""
    if proc.returncode is None:
        proc.terminate()
        try:
            await asyncio.wait_for(proc.wait(), 20)
        except TimeoutError:
            proc.kill()
            await proc.wait()


@pytest.fixture
async def publisher(amqp_url: str) -> AsyncIterator[Publisher]:
    conn = AmqpConnection(amqp_url, name="kill-test", connect_timeout=5)
    await conn.connect()
    channel = await conn.channel()
    await declare_topology(channel, Topology())
    await channel.close()
    pub = Publisher(conn, timeout=5)
    await pub.start()
    yield pub
    await conn.close()


async def _none_ready(amqp_url: str, queue: str) -> bool:
    """No message of ``queue`` waits in RabbitMQ: all were delivered (a passive declare's count)."""
    conn = AmqpConnection(amqp_url, name="kill-test-depth", connect_timeout=5)
    await conn.connect()
    try:
        channel = await conn.channel()
        declared = await channel.declare_queue(queue, passive=True)
        return declared.declaration_result.message_count == 0
    finally:
        await conn.close()


def _apply(tc: str, key: str, revision: int, repo: str) -> CloudEvent:
    cmd = ToolCommand(
        purpose="github",
        key=key,
        toolchain_id=tc,
        tool_type_id="githubconsolidated",
        name=f"repo {key}",
        parameters={"type": "link", "repo_url": repo},
        revision=revision,
    )
    return CloudEvent.for_data(RoutingKeys.TOOL_APPLY, cmd, source="test")


@pytest.mark.parametrize("second", ["redelivery", "change"])
async def test_sigkill_after_otc_write_no_duplicate_no_loss(
    amqp_url: str, mongodb_url: str, publisher: Publisher, second: str
) -> None:
    async with contextlib.AsyncExitStack() as stack:
        otc, tc, ledger = await _world(stack, mongodb_url, "kill")
        proc = await _spawn(_env(amqp_url, mongodb_url, otc), "tests.e2e.crashing_writer", "1")
        stack.push_async_callback(_reap, proc)
        await publisher.publish(_apply(tc, "a", 1, "https://github.com/o/a"))
        assert await asyncio.wait_for(proc.wait(), 30) == -signal.SIGKILL
        # The tool exists in OTC, but the ledger never recorded it and the message is unacked.
        assert len(otc.tools(tc)) == 1
        doc = await ledger.get("github", "a", tc)
        # The intent, written with the lease, survives: the restart reads OTC before writing.
        assert doc is not None and doc["intent"]["op"] == "apply" and not doc["present"]

        if second == "change":
            await publisher.publish(_apply(tc, "a", 2, "https://github.com/o/a2"))
        restarted = await _spawn(_env(amqp_url, mongodb_url, otc))
        stack.push_async_callback(_reap, restarted)

        async def committed() -> bool:
            d = await ledger.get("github", "a", tc)
            want = 2 if second == "change" else 1
            return bool(
                d
                and d["present"]
                and d.get("intent") is None
                and d.get("pending") is None
                and d["revision"] == want
            )

        await wait_until(committed, timeout=30, what="ledger commit after restart")
        tools = otc.tools(tc)
        assert len(tools) == 1  # no duplicate
        posts = [c for c in otc.calls() if c.method == "POST" and "/tools" in c.path and c.status == 201]
        assert len(posts) == 1
        expected = "https://github.com/o/a2" if second == "change" else "https://github.com/o/a"
        assert tools[0].parameters["repo_url"] == expected  # no loss


async def test_sigkill_between_a_batch_lease_and_its_commit(
    amqp_url: str, mongodb_url: str, publisher: Publisher
) -> None:
    """Eight tools applied, then eight changes of them at once: the writer knows the entries, so it
    leases the changes in batches (one ``bulk_write`` each). It is killed after its third write of a
    change, with leases of one batch taken and not committed, some of their tools patched. The restart
    takes the expired leases over one by one, reads OTC for those with an intent, and OTC ends with
    exactly the eight wanted tools, each POSTed once.

    The batch is made, not hoped for: the writer reaches MongoDB through a proxy that holds the first
    change's lease in flight until all eight changes are in the writer's hands (none ready in the
    queue), so the seven others wait for the next round trip together, as under load."""
    keys = [f"k{i}" for i in range(8)]
    async with contextlib.AsyncExitStack() as stack:
        otc, tc, ledger = await _world(stack, mongodb_url, "batch-kill")
        parts = urllib.parse.urlsplit(mongodb_url)
        proxy = Blackhole(parts.port or 27017)
        proxied = urllib.parse.urlunsplit(parts._replace(netloc=f"127.0.0.1:{await proxy.start()}"))
        stack.push_async_callback(proxy.close)
        stack.callback(proxy.release)

        async def at_revision(revision: int) -> bool:
            docs = [await ledger.get("github", key, tc) for key in keys]
            return all(
                d and d["present"] and d["revision"] == revision and d.get("intent") is None for d in docs
            )

        proc = await _spawn(_env(amqp_url, proxied, otc), "tests.e2e.crashing_writer", str(len(keys) + 3))
        stack.push_async_callback(_reap, proc)
        for key in keys:
            await publisher.publish(_apply(tc, key, 1, f"https://github.com/o/{key}"))
        await wait_until(lambda: at_revision(1), timeout=30, what="the eight tools applied")
        proxy.hold_next = b"lease_until"
        for key in keys:
            await publisher.publish(_apply(tc, key, 2, f"https://github.com/o/{key}-2"))
        await asyncio.wait_for(proxy.holding.wait(), 30)
        await wait_until(
            lambda: _none_ready(amqp_url, "otc-writer.commands"), timeout=30, what="all delivered"
        )
        await asyncio.sleep(0.3)  # the handlers of the deliveries ask for their leases meanwhile
        proxy.release()
        assert await asyncio.wait_for(proc.wait(), 30) == -signal.SIGKILL

        docs = [await ledger.get("github", key, tc) for key in keys]
        leased = [d for d in docs if d is not None and d.get("intent") and d["revision"] == 1]
        # Killed between lease and commit: leases taken by one batch (one token) are uncommitted.
        tokens = [d["lease_token"] for d in leased]
        assert tokens and max(tokens.count(t) for t in tokens) >= 2, docs
        assert len(otc.tools(tc)) == len(keys)

        restarted = await _spawn(_env(amqp_url, mongodb_url, otc))
        stack.push_async_callback(_reap, restarted)
        await wait_until(lambda: at_revision(2), timeout=40, what="every change committed after restart")
        tools = otc.tools(tc)
        assert sorted(str(t.name) for t in tools) == sorted(f"repo {key}" for key in keys)  # no duplicate
        assert sorted(t.parameters["repo_url"] for t in tools) == sorted(
            f"https://github.com/o/{key}-2" for key in keys
        )  # no loss
        posts = [c for c in otc.calls() if c.method == "POST" and "/tools" in c.path and c.status == 201]
        assert len(posts) == len(keys)
