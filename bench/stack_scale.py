"""The whole stack at scale: 10,000 triggers in 100 instances, a restart over them, sustained changes.

Runs ``scripts/stack.py``'s processes (four services, the Kubernetes, OTC and Mongo emulators, the
machine's RabbitMQ in a fresh vhost). Phases, each measured on its own:

1. idle RSS of every service right after start;
2. load: ``--namespaces`` namespaces with one Kabanero CR and one EventMediator of ``--mediations``
   mediations each, one Kabanero Events service provisioned and bound per namespace; timed until
   OTC holds every trigger tool; RSS at that size;
3. resync: every service stopped (SIGTERM, all at once) and started again over the unchanged world;
   timed from the restart until the watcher is synced again and every queue is empty for good (the
   start of the calm that five polls in a row confirm; the confirming polls are not resync work);
   OTC writes counted (ideal 0);
4. sustained: ``--workers`` closed loops, each changing one mediation's content and waiting until
   OTC's tool carries it, for ``--seconds``: changes/s, cluster-to-OTC;
5. latency (once the stack has settled again): changes issued at half that rate for
   ``--latency-seconds``, each timed from the PATCH's answer until the tool in OTC carries the new
   content hash (one GET of that tool every ``--poll-ms``); beside its slowest changes
   (``latency_slowest``), each service's longest event-loop hold over the phase
   (``latency_loop_held_max_s``, the bucket of ``kotc_event_loop_held_seconds``, shared/loop_stalls.py);
6. invariants: every trigger tool present exactly once with its last content, no dead letter,
   OTC tool writes per change.

    .venv/bin/python -m bench.stack_scale [--namespaces 100] [--mediations 100] [--seconds 60]

Services log at WARNING (their INFO lines would cost CPU the figures measure);
``BENCH_WATCHER_LOG_LEVEL=INFO`` keeps the watcher's, to match ``latency_slowest`` against them.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import statistics
import time
import urllib.parse
import uuid
from pathlib import Path
from typing import Any, NamedTuple

import aiohttp

from bench.latency_stages import Arrival, Change, OtcWrite, split, summary
from bench.machine_pressure import MachineProbe
from scripts.driver import Driver, EventTap, wait_for
from scripts.stack import LOGS, SERVICES, Stack, held_between, mgmt, wait_http
from shared.events import RoutingKeys

TIMEOUT_S = 600.0
LOAD_TIMEOUT_S = 1200.0  # a loaded shared machine: the load phase's figure, late, beats none
EVENTS_GROUP = "/apis/events.kabanero.io/v1alpha1"


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return round(int(line.split()[1]) / 1024, 1)
    return 0.0


def percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def mediator(ns: str, patterns: list[str]) -> dict[str, Any]:
    return {
        "apiVersion": "events.kabanero.io/v1alpha1",
        "kind": "EventMediator",
        "metadata": {"name": "webhook", "namespace": ns},
        "spec": {
            "createListener": True,
            "mediations": [
                {
                    "name": f"m{i}",
                    "selector": {"urlPattern": p},
                    "sendTo": ["dest"],
                    "body": [{"=": "sendEvent(dest, body, header)"}],
                }
                for i, p in enumerate(patterns)
            ],
        },
    }


def kabanero(ns: str) -> dict[str, Any]:
    return {
        "apiVersion": "kabanero.io/v1alpha2",
        "kind": "Kabanero",
        "metadata": {"name": "kabanero", "namespace": ns},
        "spec": {"version": "0.9.2"},
    }


class MemoryStack(Stack):
    """The stack with MongoDB in memory (as every other part of ``make bench``): ``make run`` keeps
    it in a SQLite file, whose commits wait on the disk (measured: about 3 trigger tools/s into OTC
    on this shared machine), which would measure the disk rather than the services. The Mongo
    process is never restarted here, so memory loses nothing."""

    def spawn(self, name: str, args: list[str], env: dict[str, str] | None = None) -> None:
        if name == "mongo" and "--file" in args:
            at = args.index("--file")
            args = args[:at] + args[at + 2 :]
        super().spawn(name, args, env)


class Timed(NamedTuple):
    seconds: float
    answered: float
    """Wall clock of the PATCH's answer."""
    mediation: int
    """The mediation changed."""


class World(Driver):
    """The stack driver with what this bench changes: its namespaces' mediators, one tool per trigger."""

    def __init__(self, stack: Stack, http: aiohttp.ClientSession, namespaces: int, mediations: int) -> None:
        super().__init__(stack, http)
        self.namespaces = [f"team-{n:03d}" for n in range(namespaces)]
        self.patterns = {ns: [f"m{i}-v0" for i in range(mediations)] for ns in self.namespaces}
        self.tool_ids: dict[tuple[str, str], str] = {}
        self.locks = {ns: asyncio.Lock() for ns in self.namespaces}
        self.content: dict[tuple[str, int], str] = {}
        """The additional-properties each trigger tool showed last."""
        self.busy: set[tuple[str, int]] = set()

    async def seed_cluster(self) -> None:
        for ns in self.namespaces:  # a real API server refuses objects in a missing namespace
            await self.kube(
                "POST",
                "/api/v1/namespaces",
                {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}},
            )
            await self.kube("POST", f"/apis/kabanero.io/v1alpha2/namespaces/{ns}/kabaneros", kabanero(ns))
            await self.kube(
                "POST", f"{EVENTS_GROUP}/namespaces/{ns}/eventmediators", mediator(ns, self.patterns[ns])
            )

    async def change(self, ns: str, index: int) -> None:
        """Give one mediation new content (serialised per namespace)."""
        async with self.locks[ns]:
            self.patterns[ns][index] = f"m{index}-{uuid.uuid4().hex[:8]}"
            spec = mediator(ns, self.patterns[ns])["spec"]
            await self.kube("PATCH", f"{EVENTS_GROUP}/namespaces/{ns}/eventmediators/webhook", {"spec": spec})

    async def change_and_wait(self, ns: str, index: int, poll_s: float) -> Timed:
        """Change one mediation (``index``, or the next one not in flight); seconds from the PATCH's
        answer until its OTC tool shows new content."""
        key = (ns, index)
        while key in self.busy:  # one change in flight per mediation: its latency stays its own
            await asyncio.sleep(poll_s)
            index = (index + 1) % len(self.patterns[ns])
            key = (ns, index)
        self.busy.add(key)
        try:
            old = self.content[key]
            await self.change(ns, index)
            t, answered = time.monotonic(), time.time()
            deadline = t + 60
            while True:
                got = await self.tool_content(ns, index)
                if got is not None and got != old:
                    self.content[key] = got
                    return Timed(time.monotonic() - t, answered, index)
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{ns}/m{index} never showed its change")
                await asyncio.sleep(poll_s)
        finally:
            self.busy.discard(key)

    async def learn_tool_ids(self) -> None:
        for tool in await self.tools():
            if tool["tool_type_id"] == "customtool":
                raw = tool["parameters"]["additional-properties"]
                props = json.loads(raw)
                self.tool_ids[(props["namespace"], props["trigger"])] = tool["id"]
                self.content[(props["namespace"], int(props["trigger"][1:]))] = raw

    async def tool_content(self, ns: str, index: int) -> str | None:
        """The tool's additional-properties (its trigger's content), read through the Toolchain API."""
        tool_id = self.tool_ids[(ns, f"m{index}")]
        status, body = await self.otc_api("GET", f"/toolchain/v2/toolchains/{self.toolchain}/tools/{tool_id}")
        if status != 200:
            return None
        return str(body["parameters"].get("additional-properties", ""))


def _service_rss(stack: Stack) -> dict[str, float]:
    return {name: rss_mb(stack.proc(name).pid) for name in SERVICES}


async def _restart_all(stack: Stack) -> dict[str, float]:
    """SIGTERM every service at once (as a rollout of every Deployment would), start them again when
    all have exited: seconds from the restart until each is ready."""
    await asyncio.gather(*(asyncio.to_thread(stack.kill, name, signal.SIGTERM) for name in SERVICES))
    started = time.monotonic()
    for name in SERVICES:
        index = next(i for i, (n, _) in enumerate(stack.procs) if n == name)
        stack.procs[index] = (name, stack._popen(name, "ab"))

    async def ready(name: str, port: str) -> tuple[str, float]:
        await wait_http(f"{stack.url(port)}/readyz", name, timeout=120)
        return name, round(time.monotonic() - started, 2)

    return dict(await asyncio.gather(*(ready(n, p) for n, p in SERVICES.items())))


async def run(
    namespaces: int, mediations: int, seconds: float, workers: int, poll_ms: float, latency_seconds: float
) -> dict[str, Any]:
    stack = MemoryStack(
        f"kotc-bench-{uuid.uuid4().hex[:8]}",
        logs=LOGS / "bench-stack-scale",
        extra_env={
            "otc-writer": {"OTC_RATE_LIMIT": "100000", "OTC_MAX_CONCURRENCY": "32", "LOG_LEVEL": "WARNING"},
            "kabanero-watcher": {
                "SNAPSHOT_INTERVAL_S": "3600",
                "LOG_LEVEL": os.environ.get("BENCH_WATCHER_LOG_LEVEL", "WARNING"),
            },
            "broker-api": {"LOG_LEVEL": "WARNING"},
            "github-linker": {"LOG_LEVEL": "WARNING"},
        },
    )
    out: dict[str, Any] = {
        "namespaces": namespaces,
        "mediations": mediations,
        "triggers": namespaces * mediations,
    }
    poll_s = poll_ms / 1000
    world: World | None = None
    try:
        await stack.start()
        await asyncio.sleep(2.0)
        out["rss_idle"] = _service_rss(stack)
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=64)) as http:
            world = World(stack, http, namespaces, mediations)
            world.toolchain = await world.new_toolchain("bench")
            total = namespaces * mediations
            t0 = time.monotonic()
            await world.seed_cluster()
            for ns in world.namespaces:  # retried on 5xx as OTC does (the store may be too busy)
                params = {"cluster": "default", "namespace": ns}
                await world.provision_and_bind("kabanero-events-broker", f"events-{ns}", params)

            created, seen, polls = 0, 0, 0

            async def loaded() -> bool:
                # The full state (10,000 tools) costs the OTC emulator about a second to render:
                # polled each second it took CPU from the stack under test. The call log since the
                # last poll is cheap; the state is read when the creates add up (or every 10th poll).
                nonlocal created, seen, polls
                polls += 1
                seen, writes = await world.calls(seen)
                created += sum(1 for c in writes if c["method"] == "POST")
                if created < total and polls % 10:
                    return False
                return len(await world.tools()) >= total

            await wait_for(loaded, f"{total} trigger tools", timeout=LOAD_TIMEOUT_S, interval=1.0)
            out["load_seconds"] = round(time.monotonic() - t0, 2)
            await stack.quiet(timeout=TIMEOUT_S)
            await world.learn_tool_ids()
            assert len(world.tool_ids) == total, len(world.tool_ids)
            out["rss_loaded"] = _service_rss(stack)

            # 3. Restart over the unchanged world.
            mark = await world.mark()
            t0 = time.monotonic()
            with MachineProbe(interval=0.25) as machine:
                wall0 = time.time()
                out["resync_ready_seconds_by_service"] = ready = await _restart_all(stack)
                wall1 = time.time()
            out["resync_ready_seconds"] = max(ready.values())
            out["resync_ready_machine"] = machine.window(wall0, wall1)
            calm = await stack.quiet(timeout=TIMEOUT_S, stable_polls=5)
            out["resync_seconds"] = round(calm - t0, 2)
            out["resync_writes"] = await world.writes_since(mark)

            # 4. Sustained closed-loop changes.
            rng = random.Random(12)
            mark = await world.mark()
            done = 0
            stop_at = time.monotonic() + seconds

            async def worker(w: int) -> None:
                nonlocal done
                mine = world.namespaces[w::workers]
                while time.monotonic() < stop_at:
                    ns = rng.choice(mine)
                    index = rng.randrange(mediations)
                    await world.change_and_wait(ns, index, poll_s)
                    done += 1

            t0 = time.monotonic()
            await asyncio.gather(*(worker(w) for w in range(min(workers, namespaces))))
            sustained_s = time.monotonic() - t0
            out["sustained_changes"] = done
            out["sustained_changes_per_s"] = round(done / sustained_s, 1)

            # 5. Latency at half that rate (open loop), from a settled stack: what the closed loops
            # left in flight (their last changes' outcomes, the linker's follow-ups) is not its figure.
            await stack.quiet(timeout=TIMEOUT_S)
            rate = max(0.5, out["sustained_changes_per_s"] / 2)
            timed: list[tuple[float, float, str]] = []  # (seconds, wall-clock start, trigger)
            issued = 0

            changes: list[Change] = []

            async def one(ns: str, index: int) -> None:
                at = time.time()
                took = await world.change_and_wait(ns, index, poll_s)
                timed.append((took.seconds, at, f"{ns}/m{took.mediation}"))
                tool = world.tool_ids[(ns, f"m{took.mediation}")]
                changes.append(Change(ns, f"m{took.mediation}", tool, took.answered, took.seconds))

            tasks = []
            holds_before = await stack.loop_holds(http)
            calls_mark = await world.mark()
            with MachineProbe() as machine:
                async with EventTap(stack.amqp_url, (RoutingKeys.TRIGGER_UPDATED,)) as tap:
                    t0, wall0 = time.monotonic(), time.time()
                    while time.monotonic() - t0 < latency_seconds:
                        ns = world.namespaces[issued % namespaces]
                        tasks.append(asyncio.create_task(one(ns, rng.randrange(mediations))))
                        issued += 1
                        await asyncio.sleep(max(0.0, t0 + issued / rate - time.monotonic()))
                    await asyncio.gather(*tasks)
                    wall1 = time.time()
            out.update(await _stages(world, changes, tap, calls_mark))
            # Beside latency_slowest: which process held its event loop, and for how long.
            out["latency_loop_held_max_s"] = held_between(holds_before, await stack.loop_holds(http))
            latencies = [took for took, _, _ in timed]
            out["latency_slowest"] = [  # to match against the services' logs, and what the machine did
                {
                    "ms": round(took * 1000, 1),
                    "at": f"{at:.3f}",
                    "trigger": what,
                    "machine": machine.window(at, at + took),
                }
                for took, at, what in sorted(timed, reverse=True)[:5]
            ]
            out["latency_machine"] = machine.window(wall0, wall1)
            out["latency_rate_per_s"] = round(rate, 2)
            out["latency_changes"] = len(latencies)
            out["latency_ms"] = {
                "p50": round(statistics.median(latencies) * 1000, 1),
                "p99": round(percentile(latencies, 0.99) * 1000, 1),
                "max": round(max(latencies) * 1000, 1),
            }
            await stack.quiet(timeout=TIMEOUT_S)
            writes = await world.writes_since(mark)
            out["writes_per_change"] = round(writes / (done + len(latencies)), 3)

            # 6. Invariants: one tool per trigger, each with its last content; no dead letter.
            tools = await world.tools()
            names = [t["name"] for t in tools if t["tool_type_id"] == "customtool"]
            latest = 0
            for tool in tools:
                if tool["tool_type_id"] != "customtool":
                    continue
                raw = tool["parameters"]["additional-properties"]
                props = json.loads(raw)
                latest += world.content[(props["namespace"], int(props["trigger"][1:]))] == raw
            dead = {q: n for q, n in (await world.dead_letter_counts()).items() if n}
            out["invariants"] = {
                "tools": len(names),
                "duplicate_names": len(names) - len(set(names)),
                "tools_with_last_content": latest,
                "dead_letters": dead,
                "hold": len(names) == total and len(set(names)) == total and latest == total and not dead,
            }
            stack.check_alive()
    except Exception as exc:  # the phases measured so far still reach results.json (stack_error)
        out["error"] = f"{type(exc).__name__}: {exc}"
    finally:
        if world is not None:
            await world.close()
        await asyncio.to_thread(stack.stop)
        await mgmt("DELETE", f"vhosts/{urllib.parse.quote(stack.vhost, safe='')}")
    return out


async def _stages(world: World, changes: list[Change], tap: EventTap, since: int) -> dict[str, Any]:
    """The latency phase's changes split into stages (bench/latency_stages.py): per stage p50/p99,
    and the split of the five slowest."""
    arrivals = [
        Arrival(e.data["key"]["namespace"], e.data["key"]["name"], e.time.timestamp(), at)
        for e, at in zip(tap.events, tap.arrivals, strict=True)
    ]
    writes = [
        OtcWrite(c["path"].rsplit("/", 1)[1], float(c["epoch"]), float(c.get("duration_ms", 0.0)) / 1000)
        for c in await world.call_log(since)
        if c["method"] == "PATCH" and "/tools/" in c["path"]
    ]
    splits = [(c, split(c, arrivals, writes)) for c in changes]
    found = [s for _, s in splits if s is not None]
    slowest = sorted(((c, s) for c, s in splits if s is not None), key=lambda cs: -cs[0].seconds)[:5]
    return {
        "latency_stages_ms": summary(found),
        "latency_stages_matched": len(found),
        "latency_slowest_stages_ms": [
            {"trigger": f"{c.namespace}/{c.trigger}", **{k: round(v * 1000, 1) for k, v in s.items()}}
            for c, s in slowest
        ],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--namespaces", type=int, default=100)
    parser.add_argument("--mediations", type=int, default=100)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--workers", type=int, default=16)
    parser.add_argument("--poll-ms", type=float, default=5.0)
    parser.add_argument(
        "--latency-seconds", type=float, default=None, help="length of the latency phase (default --seconds)"
    )
    args = parser.parse_args()
    latency_s = args.seconds if args.latency_seconds is None else args.latency_seconds
    print(
        json.dumps(
            asyncio.run(
                run(args.namespaces, args.mediations, args.seconds, args.workers, args.poll_ms, latency_s)
            )
        )
    )


if __name__ == "__main__":
    main()
