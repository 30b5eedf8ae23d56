"""otc-writer as a process against an OTC that lies (issue 19): the figures before and after.

Each scenario starts emulators.otc (its ``lies``), MongoDB and a RabbitMQ vhost (bench.common), and
otc-writer from ``--root`` (a checkout: the tree before the fix, or this one), applies six GitHub
tools, then:

- ``truncate``: listings answer 200 with cut-off JSON for ``--seconds`` of 5-s audits: POSTs, tools;
- ``endless``: listings' ``next`` names the page itself: listing GETs, RSS (``/proc/<pid>/status``);
- ``huge``: listings are 20 MB, audits every 3 s: RSS before and its peak (sampled every 0.1 s);
- ``retry_after``: one 429 with ``Retry-After: 3600``: /readyz meanwhile, seconds until applied;
- ``sigterm``: a backlog of ``--backlog`` commands and trigger events (both queues busy) with every
  OTC call outlasting ``OTC_TIMEOUT_S``: seconds from SIGTERM to exit, and no message lost (left
  in the queues + applied >= published).

The writer inherits the environment (e.g. ``OTC_RATE_LIMIT=100`` for a faster endless listing).

    .venv/bin/python -m bench.otc_lies --root /path/to/checkout truncate endless huge retry_after sigterm
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from bench.common import ROOT, BenchInfra, bench_infra
from bench.stack_scale import rss_mb
from scripts.stack import free_port
from shared.amqp import AmqpConnection, Publisher, Topology, declare_topology
from shared.events import CloudEvent, RoutingKeys, ToolCommand
from tests.integration.writer_support import service_event, trigger, trigger_event

KEY = "bench-lies-key"

LISTING = r"/toolchain/v2/toolchains/[^/]+/tools"


def apply(key: str, toolchain_id: str) -> CloudEvent:
    data = ToolCommand(
        purpose="github",
        key=key,
        toolchain_id=toolchain_id,
        tool_type_id="githubconsolidated",
        name=f"kabanero-repo {key}",
        parameters={"type": "link", "git_id": "github", "repo_url": f"https://github.com/o/{key}"},
        revision=1,
    )
    return CloudEvent.for_data(RoutingKeys.TOOL_APPLY, data, source="bench", subject=key)


@dataclass
class World:
    root: Path
    infra: BenchInfra
    otc_url: str
    http: aiohttp.ClientSession
    publisher: Publisher
    toolchain: str = ""
    writer: subprocess.Popen[bytes] | None = None
    writer_url: str = ""

    async def control(self, method: str, path: str, body: Any = None) -> Any:
        async with self.http.request(method, f"{self.otc_url}/_emulator/{path}", json=body) as r:
            assert r.status < 400, await r.text()
            return await r.json()

    async def calls(self, since: int = 0) -> list[dict[str, Any]]:
        return list((await self.control("GET", f"calls?since={since}"))["calls"])

    async def call_count(self) -> int:
        return int((await self.control("GET", f"calls?since={10**9}"))["total"])

    async def tools(self) -> int:
        state = await self.control("GET", "state")
        (chain,) = [t for t in state["toolchains"] if t["id"] == self.toolchain]
        return len(chain["tools"])

    def start_writer(self, **env: str) -> None:
        port = free_port()
        self.writer_url = f"http://127.0.0.1:{port}"
        values = {
            **os.environ,
            "PYTHONPATH": str(self.root),
            "AMQP_URL": self.infra.amqp_url,
            "MONGODB_URL": self.infra.mongodb_url,
            "HTTP_PORT": str(port),
            "HTTP_HOST": "127.0.0.1",
            "OTC_API_URL": f"{self.otc_url}/toolchain/v2",
            "OTC_IAM_URL": self.otc_url,
            "OTC_API_KEY": KEY,
            "LOG_LEVEL": "WARNING",
            **env,
        }
        self.writer = subprocess.Popen(
            [sys.executable, "-m", "services.otc_writer"],
            cwd=self.root,
            env=values,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    async def readyz(self) -> tuple[int, Any]:
        try:
            async with self.http.get(f"{self.writer_url}/readyz") as r:
                return r.status, await r.json()
        except aiohttp.ClientError as exc:
            return 0, str(exc)

    async def until(self, what: str, check: Any, timeout: float) -> float:
        started = time.monotonic()
        while not await check():
            if time.monotonic() - started > timeout:
                raise TimeoutError(what)
            await asyncio.sleep(0.2)
        return time.monotonic() - started

    async def six_tools(self) -> None:
        await self.until("writer ready", lambda: _status_is(self, 200), 60)
        for i in range(6):
            await self.publisher.publish(apply(f"r{i}", self.toolchain))
        await self.until("six tools", lambda: _tools_are(self, 6), 60)


async def _status_is(world: World, status: int) -> bool:
    return (await world.readyz())[0] == status


async def _tools_are(world: World, count: int) -> bool:
    return await world.tools() >= count


@contextlib.asynccontextmanager
async def world(root: Path) -> AsyncIterator[World]:
    with bench_infra("otc_lies") as infra:
        port = free_port()
        otc = _spawn_otc(port)
        conn = AmqpConnection(infra.amqp_url, name="bench-lies", connect_timeout=10)
        await conn.connect()
        channel = await conn.channel()
        await declare_topology(channel, Topology())
        await channel.close()
        publisher = Publisher(conn, timeout=10)
        await publisher.start()
        w: World | None = None
        try:
            async with aiohttp.ClientSession() as http:
                w = World(root, infra, f"http://127.0.0.1:{port}", http, publisher)
                await w.until("emulator", lambda: _up(http, w.otc_url), 30)
                w.toolchain = (await w.control("POST", "toolchains", {"name": "lies"}))["id"]
                yield w
        finally:
            if w is not None and w.writer is not None and w.writer.poll() is None:
                w.writer.kill()
                w.writer.wait()
            await conn.close()
            otc.terminate()
            otc.wait(10)


def _spawn_otc(port: int) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "emulators.otc", "--port", str(port), "--api-key", KEY],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


async def _up(http: aiohttp.ClientSession, url: str) -> bool:
    try:
        async with http.get(f"{url}/_emulator/faults") as r:
            return r.status == 200
    except aiohttp.ClientError:
        return False


async def sample_rss(w: World, seconds: float) -> tuple[float, float]:
    assert w.writer is not None
    peak, ended = 0.0, time.monotonic() + seconds
    while time.monotonic() < ended:
        peak = max(peak, rss_mb(w.writer.pid))
        await asyncio.sleep(0.1)
    return peak, rss_mb(w.writer.pid)


async def truncate(w: World, seconds: float) -> dict[str, Any]:
    w.start_writer(OTC_AUDIT_INTERVAL_S="5")
    await w.six_tools()
    mark = await w.call_count()
    await w.control("POST", "faults", {"lies": [{"path": LISTING, "lie": "truncate"}]})
    await asyncio.sleep(seconds)
    calls = await w.calls(mark)
    posts = sum(1 for c in calls if c["method"] == "POST" and c["path"].endswith("/tools"))
    return {"posts": posts, "tools": await w.tools(), "wanted": 6}


async def endless(w: World, seconds: float) -> dict[str, Any]:
    w.start_writer(OTC_AUDIT_INTERVAL_S="2")
    await w.six_tools()
    assert w.writer is not None
    before = rss_mb(w.writer.pid)
    mark = await w.call_count()
    await w.control("POST", "faults", {"lies": [{"path": LISTING, "lie": "self_next"}]})
    peak, _ = await sample_rss(w, seconds)
    pages = sum(1 for c in await w.calls(mark) if c["method"] == "GET" and c["path"].endswith("/tools"))
    return {"listing_gets": pages, "rss_mib_before": round(before), "rss_mib_peak": round(peak)}


async def huge(w: World, seconds: float) -> dict[str, Any]:
    w.start_writer(OTC_AUDIT_INTERVAL_S="3")
    await w.six_tools()
    assert w.writer is not None
    before = rss_mb(w.writer.pid)
    await w.control("POST", "faults", {"lies": [{"path": LISTING, "lie": "huge"}]})
    peak, last = await sample_rss(w, seconds)
    return {"rss_mib_before": round(before), "rss_mib_peak": round(peak), "rss_mib_after": round(last)}


async def retry_after(w: World, seconds: float) -> dict[str, Any]:
    w.start_writer()
    await w.six_tools()
    await w.control("POST", "faults", {"rate_limit": {"count": 1, "retry_after_header": "3600"}})
    started = time.monotonic()
    await w.publisher.publish(apply("late", w.toolchain))
    await asyncio.sleep(2)
    status, body = await w.readyz()
    try:
        took: float | None = await w.until("applied", lambda: _tools_are(w, 7), seconds)
        took = round(time.monotonic() - started, 1)
    except TimeoutError:
        took = None
    otc = body.get("checks", {}).get("otc") if isinstance(body, dict) else body
    return {"readyz_while_holding": status, "otc_check": otc, "applied_after_s": took, "gave_up_s": seconds}


async def sigterm(w: World, backlog: int) -> dict[str, Any]:
    w.start_writer(SHUTDOWN_TIMEOUT_S="25")
    await w.six_tools()
    await w.publisher.publish(
        service_event("bound", revision=1, toolchains=[w.toolchain], toolchain_id=w.toolchain)
    )
    await asyncio.sleep(2)
    # Every OTC call outlasts OTC_TIMEOUT_S (10 s): in-flight handlers retry until OTC_DEADLINE_S.
    await w.control("POST", "faults", {"latency_ms": 12_000})
    for i in range(backlog // 2):
        await w.publisher.publish(apply(f"b{i}", w.toolchain))
        await w.publisher.publish(trigger_event(trigger(f"t{i}")))
    await asyncio.sleep(5)
    assert w.writer is not None
    w.writer.send_signal(signal.SIGTERM)
    started = time.monotonic()
    try:
        code: int | None = await asyncio.to_thread(w.writer.wait, 90)
    except subprocess.TimeoutExpired:
        code = None
    took = round(time.monotonic() - started, 1)
    await w.control("DELETE", "faults")
    applied = await w.tools() - 6
    queued = await _queue_depth(w.infra.amqp_url, "otc-writer.commands")
    queued += await _queue_depth(w.infra.amqp_url, "otc-writer.events")
    return {
        "exit_s": took,
        "exit_code": code,
        "published": 2 * (backlog // 2),
        "applied": applied,
        "left_in_queues": queued,
        "unaccounted": max(0, 2 * (backlog // 2) - applied - queued),
    }


async def _queue_depth(amqp_url: str, queue: str) -> int:
    """Ready + unacked of ``queue`` and its delay queues, from a passive declaration each."""
    conn = AmqpConnection(amqp_url, name="bench-depth", connect_timeout=10)
    await conn.connect()
    try:
        channel = await conn.channel()
        total = 0
        names = [queue, *(f"{queue}.retry.{d}s" for d in sorted(set(Topology().retry_delays_s)))]
        for name in names:
            declared = await channel.declare_queue(name, passive=True)
            total += declared.declaration_result.message_count or 0
        return total
    finally:
        await conn.close()


async def run(args: argparse.Namespace) -> dict[str, Any]:
    results: dict[str, Any] = {"root": str(args.root)}
    for name in args.scenarios:
        async with world(args.root) as w:
            if name == "sigterm":
                results[name] = await sigterm(w, args.backlog)
            else:
                results[name] = await globals()[name](w, args.seconds)
        print(name, json.dumps(results[name]), flush=True)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=ROOT, help="checkout whose otc-writer runs")
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--backlog", type=int, default=2000)
    parser.add_argument(
        "scenarios", nargs="+", choices=["truncate", "endless", "huge", "retry_after", "sigterm"]
    )
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
