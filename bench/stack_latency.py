"""End-to-end latency of the whole product: a cluster change until OTC shows it, and bind/unbind.

Runs ``scripts/stack.py``'s stack (the four services, the Kubernetes, OTC and Mongo emulators as
separate processes, the machine's RabbitMQ in a fresh vhost), no faults. Two bounded loads:

- N sequential changes of one mediation's content (``PATCH`` of the EventMediator), each timed from
  the PATCH's answer until the mediation's trigger tool in OTC carries the new content hash (the
  emulator's state polled every ``--poll-ms``); OTC tool writes per change from its call log;
- M unbind/bind cycles of the Kabanero Events service through the OTC platform driver, timed until
  every trigger tool is gone / present again.

    .venv/bin/python -m bench.stack_latency --changes 50 --cycles 20 --mediations 10
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
import urllib.parse
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import aio_pika
import aiohttp

from bench.common import BenchInfra, append_results
from scripts.driver import BROKERS, TRIGGER, Driver, tool_kind, wait_for
from scripts.stack import LOGS, Stack, mgmt

TIMEOUT_S = 30.0


def percentiles(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)

    def at(q: float) -> float:
        return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]

    return {"p50": statistics.median(ordered), "p95": at(0.95), "max": ordered[-1]}


class Probe(Driver):
    """The stack driver with this bench's polling: trigger tools' content hashes, idle waits."""

    def __init__(self, stack: Stack, http: aiohttp.ClientSession, poll_s: float) -> None:
        super().__init__(stack, http)
        self.poll_s = poll_s

    async def trigger_hashes(self) -> dict[str, str]:
        """Mediation name -> the content hash its trigger tool carries."""
        out = {}
        for tool in await self.tools():
            if tool_kind(tool) == TRIGGER:
                props = json.loads(tool["parameters"]["additional-properties"])
                out[props["trigger"]] = props["content_hash"]
        return out

    async def until(self, check: Callable[[], Awaitable[bool]], what: str) -> float:
        """Seconds until ``check`` holds (polled every ``poll_s``)."""
        return await wait_for(check, what, timeout=TIMEOUT_S, interval=self.poll_s)

    async def set_patterns(self, patterns: dict[str, str]) -> None:
        """The seeded EventMediator's mediations: one per name, matching its pattern."""
        mediations = [
            {
                "name": name,
                "selector": {"urlPattern": pattern},
                "sendTo": ["dest"],
                "body": [{"=": "sendEvent(dest, body, header)"}],
            }
            for name, pattern in patterns.items()
        ]
        await self.kube("PATCH", "mediator", {"spec": {"mediations": mediations}})

    async def idle(self, quiet_s: float = 1.0) -> None:
        """Wait until no message is ready in any queue and OTC saw no tool write for ``quiet_s``."""
        connection = await aio_pika.connect(self.stack.amqp_url)
        try:
            channel = await connection.channel()
            mark = await self.mark()
            last, since = 0, time.monotonic()
            deadline = since + TIMEOUT_S
            while True:
                ready = 0
                for queue in self.stack.queues:
                    declared = await channel.declare_queue(queue, passive=True)
                    ready += declared.declaration_result.message_count or 0
                now = await self.writes_since(mark)
                if ready or now != last:
                    last, since = now, time.monotonic()
                elif time.monotonic() - since >= quiet_s:
                    return
                if time.monotonic() > deadline:
                    raise TimeoutError("the stack did not go idle")
                await asyncio.sleep(0.1)
        finally:
            await connection.close()


async def run(changes: int, cycles: int, mediations: int, poll_ms: float) -> tuple[dict[str, Any], Stack]:
    stack = Stack(f"kotc-bench-{uuid.uuid4().hex[:8]}", logs=LOGS / "bench-stack-latency")
    try:
        await stack.start()
        async with aiohttp.ClientSession() as http:
            p = Probe(stack, http, poll_ms / 1000)
            p.toolchain = await p.new_toolchain("bench")
            names = [f"m{i}" for i in range(mediations)]
            patterns = {n: f"{n}-v0" for n in names}
            await p.set_patterns(patterns)
            try:
                for broker, sid in BROKERS:
                    await p.provision_and_bind(broker, sid, {"cluster": "default", "namespace": "kabanero"})

                async def all_present() -> bool:
                    return sorted(await p.trigger_hashes()) == sorted(names)

                await p.until(all_present, "the first trigger tools")
                await p.idle()

                # 1. Content changes, one at a time, round-robin over the mediations.
                change_s: list[float] = []
                mark = await p.mark()
                for i in range(changes):
                    name = names[i % len(names)]
                    old = (await p.trigger_hashes())[name]
                    patterns[name] = f"{name}-v{i + 1}"
                    await p.set_patterns(patterns)

                    async def shown(name: str = name, old: str = old) -> bool:
                        return (await p.trigger_hashes()).get(name, old) != old

                    change_s.append(await p.until(shown, f"change {i}"))
                await p.idle()
                change_writes = await p.writes_since(mark)

                # 2. Unbind / bind the Kabanero Events service.
                unbind_s: list[float] = []
                bind_s: list[float] = []
                sid = dict((b, s) for b, s in BROKERS)["kabanero-events-broker"]
                mark = await p.mark()
                for _ in range(cycles):
                    await p.unbind("kabanero-events-broker", sid)

                    async def none_left() -> bool:
                        return not await p.trigger_hashes()

                    unbind_s.append(await p.until(none_left, "all trigger tools gone"))
                    await p.bind("kabanero-events-broker", sid)
                    bind_s.append(await p.until(all_present, "all trigger tools back"))
                await p.idle()
                cycle_writes = await p.writes_since(mark)
            finally:
                await p.close()
    finally:
        await asyncio.to_thread(stack.stop)
        await mgmt("DELETE", f"vhosts/{urllib.parse.quote(stack.vhost, safe='')}")
    return {
        "changes": changes,
        "change_ms": {k: v * 1000 for k, v in percentiles(change_s).items()},
        "writes_per_change": change_writes / changes,
        "cycles": cycles,
        "mediations": mediations,
        "unbind_ms": {k: v * 1000 for k, v in percentiles(unbind_s).items()},
        "bind_ms": {k: v * 1000 for k, v in percentiles(bind_s).items()},
        "writes_per_cycle": cycle_writes / cycles,
        "poll_ms": poll_ms,
    }, stack


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--changes", type=int, default=50)
    parser.add_argument("--cycles", type=int, default=20)
    parser.add_argument("--mediations", type=int, default=10)
    parser.add_argument("--poll-ms", type=float, default=10.0)
    args = parser.parse_args()
    r, stack = asyncio.run(run(args.changes, args.cycles, args.mediations, args.poll_ms))

    def ms(d: dict[str, float]) -> list[str]:
        return [f"{d['p50']:.0f}", f"{d['p95']:.0f}", f"{d['max']:.0f}"]

    infra = BenchInfra(
        mongodb_url=f"mongodb://127.0.0.1:{stack.ports['mongo']}/kabanero_otc",
        amqp_url=stack.amqp_url,
        mongo_label="emulators.mongo (mongoeco), the stack's own process",
    )
    append_results(
        "whole stack: cluster change -> OTC, bind/unbind -> OTC",
        f"python -m bench.stack_latency --changes {args.changes} --cycles {args.cycles} "
        f"--mediations {args.mediations} --poll-ms {args.poll_ms:g}",
        infra,
        ["load", "count", "p50 ms", "p95 ms", "max ms", "OTC tool writes per item"],
        [
            ["mediation content change", r["changes"], *ms(r["change_ms"]), f"{r['writes_per_change']:.2f}"],
            [
                f"unbind Events service ({r['mediations']} trigger tools gone)",
                r["cycles"],
                *ms(r["unbind_ms"]),
                f"{r['writes_per_cycle'] / 2:.2f}",
            ],
            [
                f"bind Events service ({r['mediations']} trigger tools back)",
                r["cycles"],
                *ms(r["bind_ms"]),
                f"{r['writes_per_cycle'] / 2:.2f}",
            ],
        ],
        note=(
            "Times from the kube PATCH / broker answer until emulators.otc's state shows the result, "
            f"polled every {r['poll_ms']:g} ms; no faults; services, emulators and MongoDB are separate "
            "processes (scripts/stack.py), the RSS below is the driver's only."
        ),
    )
    print(json.dumps(r))


if __name__ == "__main__":
    main()
