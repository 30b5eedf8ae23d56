"""``make chaos``: the whole stack as processes under a steady stream of changes, one fault at a time.

The stack of ``scripts/stack.py`` (four services; the Kubernetes, OTC and Mongo emulators; MongoDB on
a file) runs against its OWN private RabbitMQ node (``tests/rabbit_node.py``): the machine's broker is
never touched, so the broker itself can be restarted and ``kill -9``-ed. otc-writer reaches OTC
through a TCP gate that can refuse connections (OTC down, not merely failing).

Per round: inject one fault; while it lasts, keep changing the cluster (mediations, pipeline
repositories) and calling the broker API (binding toolchains); end the fault; time until OTC equals
the desired state; then wait for the queues to drain. The desired state is computed from the final
Kubernetes objects and the bindings this harness made, by the user-visible rules
(docs/reference/kabanero.md §6/§7, ``scripts/expected.py``), never from the product's own records. The
stack is driven, and OTC writes counted, by the stack driver (``scripts/driver.py``). One row per round
goes to ``bench/chaos.json``:

    changes, expected/present tools, missing, duplicated, dead letters (with reasons; poison
    separately), OTC tool writes and writes per change, seconds to converge after the fault ended.

Invariants (exit 1 when one fails): missing = 0, duplicated = 0, every dead letter is a poison message
this harness published, convergence within ``--converge-timeout``, and no more OTC writes across an
OTC outage than needed (what was held is coalesced).

    python -m bench.chaos --profile short   # make chaos, a few minutes (the suite runs its poison round)
    python -m bench.chaos --profile full    # every fault three times, incl. OTC down for 5 minutes
    python -m bench.chaos --profile full --faults 'otc down (300 s)'   # only that round

Only the full profile writes the committed ``bench/chaos.json`` by default; the others write
``.run/chaos-<profile>.json`` (``--out`` chooses). ``--faults`` matches parts of a round's name, which
includes its length for the OTC outages (``otc down (30 s)``, ``otc down (300 s)``).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import os
import random
import signal
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import aio_pika
import aiohttp
import bson
from pymongo import AsyncMongoClient

from emulators.otc.platform import BrokerName
from scripts.driver import DeadLetter, Driver, fault_env
from scripts.expected import NS
from scripts.stack import API_KEY, BROKER_ID, LOGS, SERVICES, Stack
from shared.amqp.topology import DEAD_EXCHANGE, EXCHANGE
from tests.rabbit_node import RabbitNode

ROOT = Path(__file__).resolve().parent
RESULTS = ROOT / "chaos.json"
EVENTS_BROKER: BrokerName = "kabanero-events-broker"
KABANERO_BROKER: BrokerName = "kabanero-broker"
SIDS: dict[BrokerName, str] = {EVENTS_BROKER: "chaos-events", KABANERO_BROKER: "chaos-kabanero"}
MEDIATIONS = 4
"""Mediations the load rotates through (each change bumps one's revision)."""
ENV = fault_env(
    kabanero_watcher={"SNAPSHOT_INTERVAL_S": "60"},
    otc_writer={"OTC_BREAKER_RESET_S": "5", "OTC_AUDIT_INTERVAL_S": "0"},
)


# --- the desired state, computed independently (the user-visible rules of scripts/expected.py) ---


@dataclass
class Comparison:
    expected: int = 0
    present: int = 0
    missing: list[str] = field(default_factory=list)
    duplicated: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)


def compare(
    toolchains: dict[str, list[dict[str, Any]]],
    events_bound: set[str],
    kabanero_bound: set[str],
    triggers: dict[str, list[str]],
    repos: set[str],
) -> Comparison:
    """OTC's tools per toolchain against the desired ones; a tool with wrong content is missing."""
    out = Comparison()
    for tc, tools in toolchains.items():
        want_t = triggers if tc in events_bound else {}
        want_r = repos if tc in kabanero_bound else set()
        out.expected += len(want_t) + len(want_r)
        out.present += sum(1 for t in tools if t["tool_type_id"] in ("customtool", "githubconsolidated"))
        seen: dict[str, int] = {}
        for tool in tools:
            if tool["tool_type_id"] == "customtool":
                props = json.loads(tool["parameters"]["additional-properties"])
                key = f"{tc}: trigger {props['trigger']}"
                right = want_t.get(props["trigger"]) == props["destinations"]
            elif tool["tool_type_id"] == "githubconsolidated":
                key = f"{tc}: repo {tool['parameters'].get('repo_url')}"
                right = tool["parameters"].get("repo_url") in want_r
            else:
                continue
            seen[key] = seen.get(key, 0) + 1
            if not right:
                out.unexpected.append(key)
        out.duplicated += [k for k, n in seen.items() if n > 1]
        for name in want_t:
            key = f"{tc}: trigger {name}"
            if key not in seen or key in out.unexpected:
                out.missing.append(key)
        for url in want_r:
            if f"{tc}: repo {url}" not in seen:
                out.missing.append(f"{tc}: repo {url}")
    return out


# --- a gate in front of OTC: down means connection refused ---------------------------------------


class TcpGate:
    """Forwards to ``target``; :meth:`shut` stops listening and cuts live connections (OTC down)."""

    def __init__(self, target: int) -> None:
        self.target = target
        self.port = 0
        self._server: asyncio.Server | None = None
        self._live: set[asyncio.StreamWriter] = set()

    async def open(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port, reuse_address=True)
        self.port = int(self._server.sockets[0].getsockname()[1])

    async def shut(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        for writer in list(self._live):
            writer.transport.abort()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target)
        except OSError:
            writer.transport.abort()
            return
        self._live |= {writer, up_writer}

        async def pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError, ConnectionError):
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            dst.close()

        try:
            await asyncio.gather(pump(reader, up_writer), pump(up_reader, writer))
        finally:
            self._live -= {writer, up_writer}


# --- the harness ---------------------------------------------------------------------------------


@dataclass
class Row:
    fault: str
    round: int
    changes: int
    expected_tools: int
    present_tools: int
    missing: int
    duplicated: int
    dead_lettered: int
    dead_letter_reasons: list[str]
    poison_dead_lettered: int
    otc_writes: int
    needed_writes: int
    otc_writes_per_change: float
    otc_writes_per_needed_write: float
    converge_s: float | None
    fault_s: float
    ok: bool
    problems: list[str]
    notes: list[str] = field(default_factory=list)
    """What happened that is no invariant: a service that exited by itself and was restarted."""


class Chaos(Driver):
    """The stack driver with this harness's world: its toolchains, bindings, changes and secrets."""

    def __init__(self, stack: Stack, node: RabbitNode, gate: TcpGate, http: aiohttp.ClientSession) -> None:
        super().__init__(stack, http)
        self.node = node
        self.gate = gate
        self.rng = random.Random(13)
        self.repos: list[str] = []
        self.toolchains: list[str] = []
        self.events_bound: set[str] = set()
        self.kabanero_bound: set[str] = set()
        self.poison_ids: set[str] = set()
        self.changes = 0
        self.needed_writes = 0
        """OTC tool writes the changes call for (one per tool they create or alter)."""
        token = uuid.uuid4().hex[:12]
        self.service_secret = f"chaos-svc-cred-{token}"
        self.toolchain_secret = f"chaos-tc-cred-{token}"
        self.url_secret = f"ghp_chaosUrlCred{token}"
        self.error_bodies: list[bytes] = []
        self.seen_messages: list[bytes] = []
        self._tap: aio_pika.abc.AbstractRobustConnection | None = None
        self._tap_parts: tuple[object, ...] = ()

    async def write_mediations(self) -> None:
        await self.set_mediations()

    async def tap(self) -> None:
        """Keep every event and dead letter (body and headers) for the secret scrape."""
        self._tap = await aio_pika.connect_robust(self.stack.amqp_url)
        channel = await self._tap.channel()
        # Named (a server-named queue cannot be declared again after a broker restart), not
        # durable: a kill -9 of the node loses it, and the robust connection declares it again.
        queue = await channel.declare_queue(f"chaos-tap-{uuid.uuid4().hex[:8]}", durable=False)
        await queue.bind(EXCHANGE, "#")
        for q in self.stack.queues:
            await queue.bind(DEAD_EXCHANGE, q)

        async def keep(message: aio_pika.abc.AbstractIncomingMessage) -> None:
            self.seen_messages.append(message.body + repr(message.headers).encode())
            await message.ack()

        await queue.consume(keep)
        self._tap_parts = (channel, queue)  # aio-pika holds channels weakly: keep them alive

    async def setup(self) -> None:
        await self.tap()
        for broker, sid in SIDS.items():
            params = {"cluster": "default", "namespace": NS}
            await self.provision(broker, sid, params, service_credentials=self.service_secret)
        await self.bind_new_toolchain(both=True)
        self.revs = {f"m{i}": 1 for i in range(MEDIATIONS)}
        await self.write_mediations()
        await self.add_pipeline_repo("chaos-private", credentials=True)
        await self.converge("baseline", timeout=90)

    async def close(self) -> None:
        await super().close()
        if self._tap is not None:
            await self._tap.close()

    async def bind_new_toolchain(self, *, both: bool = False) -> None:
        """A provision/bind call of OTC's: a new toolchain bound to the events service (and kabanero)."""
        tid = await self.new_toolchain(f"chaos-{len(self.toolchains)}")
        self.toolchains.append(tid)
        brokers = (EVENTS_BROKER, KABANERO_BROKER) if both else (EVENTS_BROKER,)
        for broker in brokers:  # broker-api may be restarting (a fault): retried as OTC retries
            await self.bind(broker, SIDS[broker], tid, toolchain_credentials=self.toolchain_secret)
            (self.events_bound if broker == EVENTS_BROKER else self.kabanero_bound).add(tid)

    async def change(self) -> None:
        """One change of the steady stream: mostly a mediation's revision, sometimes a repository
        or a new toolchain binding."""
        roll = self.rng.random()
        if roll < 0.1 and len(self.toolchains) < 6:
            await self.bind_new_toolchain()
            needed = len(self.revs)  # one trigger tool per mediation in the new toolchain
        elif roll < 0.25:
            await self.add_repo()
            needed = len(self.kabanero_bound)  # one GitHub tool per toolchain of the kabanero service
        else:
            name = self.rng.choice(sorted(self.revs))
            self.revs[name] += 1
            await self.write_mediations()
            needed = len(self.events_bound)  # that trigger's tool in every bound toolchain
        self.changes += 1
        self.needed_writes += needed

    async def add_repo(self) -> None:
        repo = f"chaos-{len(self.repos)}"
        self.repos.append(repo)
        await self.add_pipeline_repo(repo)

    async def stream(self, stop: asyncio.Event, interval: float = 1.0) -> None:
        """Changes every ``interval`` seconds until ``stop``; a change the fault refuses is retried."""
        while not stop.is_set():
            # A change the fault refuses (e.g. the CRDs are missing right now) is tried next tick.
            with contextlib.suppress(RuntimeError, aiohttp.ClientError, OSError):
                await self.change()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), interval)

    async def comparison(self) -> Comparison:
        triggers, repos = await self.desired()
        mine = {tc: tools for tc, tools in (await self.tools_by_toolchain()).items() if tc in self.toolchains}
        return compare(mine, self.events_bound, self.kabanero_bound, triggers, repos)

    async def converge(self, what: str, timeout: float) -> float | None:
        started = time.monotonic()
        while time.monotonic() - started < timeout:
            with contextlib.suppress(RuntimeError, aiohttp.ClientError, OSError):
                c = await self.comparison()
                if not (c.missing or c.duplicated or c.unexpected):
                    return time.monotonic() - started
            await asyncio.sleep(0.3)
        return None

    async def publish_poison(self) -> int:
        """Malformed, wrong-schema, huge and unknown-type messages straight into every consuming queue."""
        conn = await aio_pika.connect(self.stack.amqp_url)
        count = 0
        try:
            channel = await conn.channel(publisher_confirms=True)
            for q in self.stack.queues:
                rk = "kabanero.trigger.updated" if q == "otc-writer.events" else "otc.tool.apply"
                if q == "github-linker.events":
                    rk = "kabanero.instance.changed"
                envelope = {
                    "specversion": "1.0",
                    "source": "chaos",
                    "type": rk,
                    "time": "2026-01-01T00:00:00Z",
                }
                bodies = {
                    "malformed": b"{not json",
                    "wrong-schema": json.dumps({**envelope, "id": "x", "data": {"revision": "NaN"}}).encode(),
                    "huge": json.dumps({**envelope, "id": "y", "data": {"blob": "x" * 2_000_000}}).encode(),
                    "unknown-type": json.dumps(
                        {**envelope, "id": "z", "type": "chaos.unknown", "data": {}}
                    ).encode(),
                }
                for kind, body in bodies.items():
                    mid = f"poison-{kind}-{uuid.uuid4().hex[:8]}"
                    self.poison_ids.add(mid)
                    await channel.default_exchange.publish(
                        aio_pika.Message(body, message_id=mid, content_type="application/json", type=rk), q
                    )
                    count += 1
        finally:
            await conn.close()
        return count


# --- the secret scrape ---------------------------------------------------------------------------


async def misuse(c: Chaos) -> None:
    """Requests that fail, carrying the secrets where they do not belong; their answers are kept."""
    base = c.stack.url("broker")
    sid = SIDS[EVENTS_BROKER]
    good = {"Authorization": aiohttp.encode_basic_auth(BROKER_ID, c.stack.broker_secret)}
    tc = c.toolchains[0]
    attempts: list[tuple[str, str, Any, dict[str, str]]] = [
        (
            "PUT",
            f"/{EVENTS_BROKER}/api/v1/service_instances/{sid}",
            {"service_credentials": 5, "x": c.service_secret},
            {},
        ),
        (
            "PUT",
            f"/{EVENTS_BROKER}/api/v1/service_instances/{sid}/toolchains/{tc}",
            {"toolchain_credentials": ""},
            {},
        ),
        (
            "PUT",
            f"/{EVENTS_BROKER}/api/v1/service_instances/bad%20id",
            {"service_credentials": c.service_secret},
            {},
        ),
        (
            "DELETE",
            f"/{EVENTS_BROKER}/api/v1/service_instances/{sid}",
            None,
            {"Authorization": f"Basic {c.stack.broker_secret}"},
        ),
        (
            "POST",
            f"/{EVENTS_BROKER}/api/v1/messaging/accept",
            {"instance_id": sid, "toolchain_id": tc, "payload": {}, "service_id": "toolchain"},
            {"Authorization": f"Basic {c.toolchain_secret}x"},
        ),
        (
            "POST",
            f"/{EVENTS_BROKER}/api/v1/messaging/accept",
            {"instance_id": sid, "toolchain_id": tc, "payload": {"k": c.toolchain_secret}},
            {},
        ),
    ]
    for method, path, body, headers in attempts:
        async with c.http.request(method, base + path, json=body, headers=headers or good) as r:
            c.error_bodies.append(await r.read())
    # The right toolchain credentials on a lifecycle message (accepted: 204).

    value = base64.b64encode(c.toolchain_secret.encode()).decode()
    body = {"service_id": "toolchain", "instance_id": sid, "toolchain_id": tc, "payload": {"event": "ok"}}
    async with c.http.post(
        f"{base}/{EVENTS_BROKER}/api/v1/messaging/accept",
        json=body,
        headers={"Authorization": f"Basic {value}"},
    ) as r:
        c.error_bodies.append(await r.read())


async def scrape(c: Chaos) -> dict[str, Any]:
    """Every place a secret could leak to: service logs, message bodies and headers (tap and dead
    letters), every MongoDB document, /metrics, the error bodies. Returns counts and findings."""
    from pymongo import AsyncMongoClient

    secrets = {
        "broker secret": c.stack.broker_secret,
        "credentials key": c.stack.credentials_key,
        "OTC API key": API_KEY,
        "service credentials": c.service_secret,
        "toolchain credentials": c.toolchain_secret,
        "credentials in cluster URLs": c.url_secret,
    }
    places: dict[str, list[bytes]] = {
        "logs": [],
        "messages": list(c.seen_messages),
        "mongodb": [],
        "metrics": [],
    }
    places["error bodies"] = list(c.error_bodies)
    for service in SERVICES:
        path = c.stack.logs / f"{service}.log"
        places["logs"].extend((await asyncio.to_thread(path.read_bytes)).splitlines())
        async with c.http.get(f"{c.stack.url(SERVICES[service])}/metrics") as r:
            places["metrics"].append(await r.read())

    mongo: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(
        f"mongodb://127.0.0.1:{c.stack.ports['mongo']}/?directConnection=true"
    )
    try:
        for db_name in await mongo.list_database_names():
            db = mongo[db_name]
            for coll in await db.list_collection_names():
                async for doc in db[coll].find({}):
                    places["mongodb"].append(bson.encode(doc))
    finally:
        await mongo.close()
    found = []
    folded = {place: [item.lower() for item in items] for place, items in places.items()}
    for what, value in secrets.items():
        needle = value.lower().encode()  # case-blind: a repository URL reaches OTC lowercased
        for place, items in folded.items():
            hits = sum(1 for item in items if needle in item)
            if hits:
                found.append(f"{what} in {place}: {hits}")
    return {
        "secrets": sorted(secrets),
        "scanned": {place: len(items) for place, items in places.items()},
        "found": found,
    }


# --- faults: each an async context manager; the stream of changes runs inside it ------------------

Fault = Callable[[Chaos, float], contextlib.AbstractAsyncContextManager[None]]


@contextlib.asynccontextmanager
async def otc_down(c: Chaos, seconds: float) -> AsyncIterator[None]:
    await c.gate.shut()
    try:
        yield
    finally:
        await c.gate.open()


def otc_faults(config: dict[str, Any]) -> Fault:
    @contextlib.asynccontextmanager
    async def fault(c: Chaos, seconds: float) -> AsyncIterator[None]:
        await c.otc_faults(config)
        try:
            yield
        finally:
            await c.otc_faults(None)

    return fault


def sigkill(service: str) -> Fault:
    @contextlib.asynccontextmanager
    async def fault(c: Chaos, seconds: float) -> AsyncIterator[None]:
        await asyncio.to_thread(c.stack.kill, service, signal.SIGKILL)
        try:
            yield
        finally:
            await c.stack.restart(service, sig=None)

    return fault


@contextlib.asynccontextmanager
async def sigterm_burst(c: Chaos, seconds: float) -> AsyncIterator[None]:
    tasks = [c.change() for _ in range(5)]  # a burst, then every service gets SIGTERM at once
    await asyncio.gather(*tasks, return_exceptions=True)
    await asyncio.gather(*(asyncio.to_thread(c.stack.kill, s, signal.SIGTERM) for s in SERVICES))
    try:
        yield
    finally:
        for service in SERVICES:
            await c.stack.restart(service, sig=None)


@contextlib.asynccontextmanager
async def watcher_past_history(c: Chaos, seconds: float) -> AsyncIterator[None]:
    await asyncio.to_thread(c.stack.kill, "kabanero-watcher", signal.SIGKILL)
    try:
        yield
    finally:
        await c.kube_fault("expire")  # the history it would resume from is gone: 410, re-list
        await c.stack.restart("kabanero-watcher", sig=None)


@contextlib.asynccontextmanager
async def stalled_watch(c: Chaos, seconds: float) -> AsyncIterator[None]:
    await c.kube_fault("stall", {"seconds": None})
    try:
        yield
    finally:
        await c.kube_fault("release")


@contextlib.asynccontextmanager
async def crds_missing(c: Chaos, seconds: float) -> AsyncIterator[None]:
    await c.kube_fault("crds", {"present": False, "group": "events.kabanero.io"})
    try:
        yield
    finally:
        await c.kube_fault("crds", {"present": True, "group": "events.kabanero.io"})


@contextlib.asynccontextmanager
async def poison(c: Chaos, seconds: float) -> AsyncIterator[None]:
    await c.publish_poison()
    yield


@contextlib.asynccontextmanager
async def mongo_restart(c: Chaos, seconds: float) -> AsyncIterator[None]:
    await asyncio.to_thread(c.stack.kill, "mongo", signal.SIGKILL)
    try:
        yield
    finally:
        await c.stack.restart("mongo", sig=None)


@contextlib.asynccontextmanager
async def rabbit_restart(c: Chaos, seconds: float) -> AsyncIterator[None]:
    await asyncio.to_thread(c.node.stop_app)
    try:
        yield
    finally:
        await asyncio.to_thread(c.node.start_app)


@contextlib.asynccontextmanager
async def rabbit_kill9(c: Chaos, seconds: float) -> AsyncIterator[None]:
    pid = int((c.node.base / "node.pid").read_text().strip())
    os.kill(pid, signal.SIGKILL)
    try:
        yield
    finally:
        await asyncio.to_thread(c.node.start)


FAULTS: dict[str, Fault] = {
    "rabbitmq graceful restart": rabbit_restart,
    "rabbitmq kill -9": rabbit_kill9,
    "mongodb kill -9 + restart (file)": mongo_restart,
    "otc down": otc_down,
    "otc 5xx storm": otc_faults({"seed": 7, "error_rate": 1.0, "error_status": 503}),
    "otc 429 storm (Retry-After 5)": otc_faults({"rate_limit": {"seconds": 600, "retry_after": 5}}),
    "otc latency spikes (3 s)": otc_faults({"latency_ms": 3000}),
    "otc commit-then-drop": otc_faults({"drop_after_commit": 3}),
    **{f"SIGKILL {s}": sigkill(s) for s in SERVICES},
    "SIGTERM burst (all services)": sigterm_burst,
    "watcher down past the history window (410)": watcher_past_history,
    "stalled watch": stalled_watch,
    "CRDs missing": crds_missing,
    "poison messages in every queue": poison,
}
PROFILES: dict[str, list[tuple[str, float, int]]] = {
    # (fault, seconds it lasts, times)
    "short": [
        ("otc down", 20, 1),
        ("poison messages in every queue", 5, 1),
        ("SIGKILL otc-writer", 8, 1),
        ("mongodb kill -9 + restart (file)", 8, 1),
        ("rabbitmq kill -9", 8, 1),
    ],
    # Every fault once, briefly: checks the harness itself (a few minutes).
    "smoke": [(name, 10 if name == "otc down" else 6, 1) for name in FAULTS],
    "full": [
        ("rabbitmq graceful restart", 15, 3),
        ("rabbitmq kill -9", 15, 3),
        ("mongodb kill -9 + restart (file)", 15, 3),
        ("otc down", 30, 3),
        ("otc down", 300, 1),
        ("otc 5xx storm", 30, 3),
        ("otc 429 storm (Retry-After 5)", 30, 3),
        ("otc latency spikes (3 s)", 30, 3),
        ("otc commit-then-drop", 20, 3),
        *[(f"SIGKILL {s}", 10, 3) for s in SERVICES],
        ("SIGTERM burst (all services)", 10, 3),
        ("watcher down past the history window (410)", 20, 3),
        ("stalled watch", 20, 3),
        ("CRDs missing", 20, 3),
        ("poison messages in every queue", 5, 3),
    ],
}


async def run_round(c: Chaos, name: str, seconds: float, index: int, converge_timeout: float) -> Row:
    fault = FAULTS[name]
    mark = await c.mark()
    changes_before = c.changes
    needed_before = c.needed_writes
    stop = asyncio.Event()
    load = asyncio.create_task(c.stream(stop), name="chaos-load")
    await asyncio.sleep(c.rng.uniform(0.5, 2.0))  # the fault strikes at a random moment mid-stream
    started = time.monotonic()
    async with fault(c, seconds):
        await asyncio.sleep(seconds)
    ended = time.monotonic()
    fault_s = ended - started
    stop.set()
    await load
    label = f"{name} #{index}" + (f" ({seconds:g} s)" if name == "otc down" else "")
    # A fault may have left a service restarting: wait until it serves (restarting one that exited).
    restarted = [service for service in SERVICES if await wait_ready(c, service)]
    converged = await c.converge(label, converge_timeout)
    converge_s = time.monotonic() - ended if converged is not None else None
    with contextlib.suppress(RuntimeError):
        await c.stack.quiet(timeout=converge_timeout)
    comparison = await c.comparison()
    dead = await c.drain_dead_letters()
    poisoned = [d for d in dead if d.message_id in c.poison_ids]
    others = [_dead(d) for d in dead if d.message_id not in c.poison_ids]
    writes = await c.writes_since(mark)
    changes = c.changes - changes_before
    needed = c.needed_writes - needed_before
    problems = []
    notes = [f"{s} exited on its own and was started again" for s in restarted]
    if converge_s is None:
        problems.append(f"not converged within {converge_timeout:g}s")
    if comparison.missing:
        problems.append(f"missing: {comparison.missing[:5]}")
    if comparison.duplicated:
        problems.append(f"duplicated: {comparison.duplicated[:5]}")
    if comparison.unexpected:
        problems.append(f"stale or unexpected: {comparison.unexpected[:5]}")
    if others:
        problems.append(f"dead letters that are not poison: {others[:5]}")
    if name == "otc down" and writes > needed:
        # The changes held during the outage are coalesced: only the latest state per trigger is
        # written once OTC answers (replayed change by change, about 1.7 times as many writes).
        problems.append(f"{writes} OTC writes after the outage, more than the {needed} needed")
    return Row(
        fault=label,
        round=index,
        changes=changes,
        expected_tools=comparison.expected,
        present_tools=comparison.present,
        missing=len(comparison.missing),
        duplicated=len(comparison.duplicated),
        dead_lettered=len(dead),
        dead_letter_reasons=sorted({f"{d.queue}: {d.reason}" for d in dead}),
        poison_dead_lettered=len(poisoned),
        otc_writes=writes,
        needed_writes=needed,
        otc_writes_per_change=round(writes / changes, 2) if changes else 0.0,
        otc_writes_per_needed_write=round(writes / needed, 2) if needed else 0.0,
        converge_s=round(converge_s, 1) if converge_s is not None else None,
        fault_s=round(fault_s, 1),
        ok=not problems,
        problems=problems,
        notes=notes,
    )


def _dead(d: DeadLetter) -> tuple[str, str, str]:
    """How a dead letter that is no poison shows among a row's problems."""
    return (d.queue, d.message_id, d.reason)


def _selector(name: str, seconds: float) -> str:
    """What ``--faults`` matches: the fault's name, with the length of an OTC outage."""
    return f"{name} ({seconds:g} s)" if name == "otc down" else name


def default_out(profile: str) -> Path:
    """The committed figures are the full profile's; a short or smoke run never overwrites them."""
    return RESULTS if profile == "full" else LOGS / f"chaos-{profile}.json"


async def wait_ready(c: Chaos, service: str, timeout: float = 90) -> bool:
    """Wait until ``service`` serves; one that exited on its own (e.g. its start-up gave up) is
    started again, as Kubernetes would. True when it had to be restarted."""
    restarted = False
    url = f"{c.stack.url(SERVICES[service])}/healthz"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if c.stack.proc(service).poll() is not None:
            with contextlib.suppress(RuntimeError):  # not ready within its minute: keep waiting here
                await c.stack.restart(service, sig=None)
            restarted = True
        with contextlib.suppress(aiohttp.ClientError, OSError):
            async with c.http.get(url) as r:
                if r.status == 200:
                    return restarted
        await asyncio.sleep(0.3)
    raise RuntimeError(f"{service} not serving after {timeout:g}s")


async def chaos(
    profile: str, out: Path, converge_timeout: float, logs: Path, only: tuple[str, ...] = ()
) -> int:
    node = RabbitNode()
    rows: list[Row] = []
    leaks: dict[str, Any] | None = None
    started = time.monotonic()
    booting = asyncio.ensure_future(asyncio.to_thread(node.start))
    try:
        await asyncio.shield(booting)
        amqp = node.fresh_vhost()
        host, _, vhost = amqp.rpartition("/")
        stack = Stack(vhost, extra_env={k: dict(v) for k, v in ENV.items()}, logs=logs, amqp_host=host)
        gate = TcpGate(stack.ports["otc"])
        await gate.open()
        otc = f"http://127.0.0.1:{gate.port}"
        stack.extra_env["otc-writer"] |= {"OTC_API_URL": f"{otc}/toolchain/v2", "OTC_IAM_URL": otc}
        try:
            await stack.start()
            async with aiohttp.ClientSession() as http:
                c = Chaos(stack, node, gate, http)
                try:
                    await c.setup()
                    await c.drain_dead_letters()  # start counting from empty
                    await misuse(c)
                    for name, seconds, times in PROFILES[profile]:
                        if only and not any(o in _selector(name, seconds) for o in only):
                            continue
                        for i in range(1, times + 1):
                            try:
                                row = await run_round(c, name, seconds, i, converge_timeout)
                            except Exception as exc:  # the harness or the fault failed: a failed row
                                row = _broken(name, i, seconds, exc)
                            rows.append(row)
                            print(_line(row), flush=True)
                            await _write(out, profile, started, rows, None, only)
                    leaks = await scrape(c)
                    print(f"secret scrape: {leaks}", flush=True)
                finally:
                    await c.close()
        finally:
            for name in reversed(SERVICES):
                with contextlib.suppress(Exception):
                    await asyncio.to_thread(stack.kill, name, signal.SIGTERM)
            await asyncio.to_thread(stack.stop)
            await gate.shut()
    finally:
        with contextlib.suppress(Exception):
            await booting  # cancelled while the node boots: let it come up, then stop it
        await asyncio.to_thread(node.cleanup)
    ok = await _write(out, profile, started, rows, leaks, only)
    failed = [r for r in rows if not r.ok]
    print(f"{len(rows)} rounds, {len(failed)} failed, secret scrape: {leaks}; written to {out}")
    return 0 if ok else 1


async def _write(
    out: Path,
    profile: str,
    started: float,
    rows: list[Row],
    leaks: dict[str, Any] | None,
    only: tuple[str, ...] = (),
) -> bool:
    """Write the report (after every round too, so a long run keeps what it measured); True if ok."""
    ok = bool(rows) and all(r.ok for r in rows) and leaks is not None and not leaks["found"]
    report = {
        "profile": profile,
        "generated_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "command": f"python -m bench.chaos --profile {profile}"
        + (f" --faults '{','.join(only)}'" if only else ""),
        "duration_s": round(time.monotonic() - started, 1),
        "ok": ok,
        "invariants": "missing = 0, duplicated = 0, dead letters only for poison, converged in time, no secret found",
        "secret_scrape": leaks,
        "rows": [asdict(r) for r in rows],
    }
    await asyncio.to_thread(out.parent.mkdir, parents=True, exist_ok=True)
    await asyncio.to_thread(out.write_text, json.dumps(report, indent=2) + "\n")
    return ok


def _broken(name: str, index: int, seconds: float, exc: Exception) -> Row:
    return Row(
        fault=f"{name} #{index}",
        round=index,
        changes=0,
        expected_tools=0,
        present_tools=0,
        missing=0,
        duplicated=0,
        dead_lettered=0,
        dead_letter_reasons=[],
        poison_dead_lettered=0,
        otc_writes=0,
        needed_writes=0,
        otc_writes_per_change=0.0,
        otc_writes_per_needed_write=0.0,
        converge_s=None,
        fault_s=seconds,
        ok=False,
        problems=[f"round failed: {type(exc).__name__}: {exc}"],
    )


def _line(r: Row) -> str:
    return (
        f"{r.fault:<48} changes {r.changes:>3}  tools {r.present_tools:>3}/{r.expected_tools:<3} "
        f"missing {r.missing} dup {r.duplicated} dead {r.dead_lettered} (poison {r.poison_dead_lettered})  "
        f"writes {r.otc_writes}/{r.needed_writes} needed  converged {r.converge_s}s  {'OK' if r.ok else r.problems}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.chaos", description=__doc__.split("\n\n")[0])
    parser.add_argument("--profile", choices=sorted(PROFILES), default="short")
    parser.add_argument(
        "--out", type=Path, default=None, help="report file (default: bench/chaos.json for full, else .run/)"
    )
    parser.add_argument("--converge-timeout", type=float, default=120.0)
    parser.add_argument("--logs", type=Path, default=LOGS / "chaos")
    parser.add_argument(
        "--faults", default="", help="comma-separated parts of fault names: run only those of the profile"
    )
    args = parser.parse_args()
    sys.exit(
        asyncio.run(
            _interruptible(
                chaos(
                    args.profile,
                    args.out or default_out(args.profile),
                    args.converge_timeout,
                    args.logs,
                    tuple(f.strip() for f in args.faults.split(",") if f.strip()),
                )
            )
        )
    )


async def _interruptible(run: Awaitable[int]) -> int:
    """SIGTERM cancels the run, so the stack and the private RabbitMQ node are stopped, not orphaned."""
    task = asyncio.ensure_future(run)
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
    try:
        return await task
    except asyncio.CancelledError:
        return 130


if __name__ == "__main__":
    main()
