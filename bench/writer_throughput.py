"""otc-writer throughput: trigger changes applied per second, OTC calls per change and per snapshot.

``cpu_ms_per_change``: CPU time of this process (the writer and the OTC emulator; the MongoDB emulator
runs apart) per change: unlike the rate it hardly moves with the load of a shared machine.

Runs the real service in-process against the machine's RabbitMQ (a fresh vhost), the embedded
mongoeco server (or MONGODB_URL) and emulators.otc at zero latency. Bounded: N trigger changes.

    .venv/bin/python -m bench.writer_throughput --changes 500 [--toolchains 1] [--append]
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import time
from pathlib import Path
from typing import Any

from bench.common import bench_infra
from bench.counting import COUNTER, since
from emulators.otc.testing import OtcEmulator
from services.otc_writer.app import EVENTS_QUEUE, Deps, build
from services.otc_writer.settings import Settings
from shared.amqp import AmqpConnection, Publisher, Topology, declare_topology
from shared.events import (
    CloudEvent,
    InstanceRef,
    RoutingKeys,
    ServiceEventData,
    ServiceParameters,
    SnapshotData,
    TriggerData,
    TriggerKey,
)

ROOT = Path(__file__).resolve().parent.parent
KEY = "bench-key"


def _trigger(i: int, rev: int, namespace: str) -> TriggerData:
    body = f"{i}-{rev}"
    return TriggerData(
        key=TriggerKey(
            cluster="default", namespace=namespace, generation="mediation", owner="m", name=f"t{i}"
        ),
        instance=InstanceRef(cluster="default", namespace=namespace),
        content={"body": body},
        content_hash=hashlib.sha256(body.encode()).hexdigest(),
        revision=rev,
    )


async def _wait(pred: object, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not pred():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise TimeoutError("benchmark did not converge")
        await asyncio.sleep(0.005)


async def run(
    changes: int,
    toolchains: int,
    instances: int,
    mongodb_url: str,
    amqp_url: str,
) -> dict[str, Any]:

    async with OtcEmulator.running(port=0, api_keys=(KEY,)) as otc:
        tcs = [otc.seed_toolchain(name=f"b{i}") for i in range(toolchains)]
        conn = AmqpConnection(amqp_url, name="bench", connect_timeout=5)
        await conn.connect()
        ch = await conn.channel()
        await declare_topology(ch, Topology())
        await ch.close()
        pub = Publisher(conn)
        await pub.start()
        settings = Settings(
            amqp_url=amqp_url,  # type: ignore[arg-type]
            mongodb_url=mongodb_url,  # type: ignore[arg-type]
            http_port=0,
            http_host="127.0.0.1",
            otc_api_url=otc.api_url,
            otc_iam_url=otc.url,
            otc_api_key=KEY,  # type: ignore[arg-type]
            otc_rate_limit=100000.0,
            otc_max_concurrency=32,
            prefetch=64,
            log_level="WARNING",
        )
        import logging

        logging.disable(logging.WARNING)
        w = build(settings, deps=Deps())
        async with w:
            namespaces = [f"ns{i}" for i in range(instances)]
            per_ns = max(1, changes // (2 * instances))
            for n, ns in enumerate(namespaces):
                await pub.publish(
                    CloudEvent.for_data(
                        RoutingKeys.service("kabanero-events", "bound"),
                        ServiceEventData(
                            kind="kabanero-events",
                            instance_id=f"svc-{n}",
                            service_id="kabanero-events",
                            parameters=ServiceParameters(cluster="default", namespace=ns),
                            toolchains=tcs,
                            revision=1,
                        ),
                        source="bench",
                    )
                )
            await _wait(lambda: w.handled[EVENTS_QUEUE] >= instances, 30)
            # N changes: half creates, half updates of the same triggers.
            # Creates of new triggers, then as many changes of them (the same triggers, new content),
            # each phase timed and counted on its own: a create inserts documents, a change does not.
            creates = [
                CloudEvent.for_data(RoutingKeys.TRIGGER_CREATED, _trigger(i, 1, ns), source="bench")
                for ns in namespaces
                for i in range(per_ns)
            ]
            updates = [
                CloudEvent.for_data(RoutingKeys.TRIGGER_UPDATED, _trigger(i, 2, ns), source="bench")
                for ns in namespaces
                for i in range(per_ns)
            ]
            phases: dict[str, dict[str, Any]] = {}
            for phase, events in (("create", creates), ("change", updates)):
                start_calls, start_handled = otc.call_count, w.handled[EVENTS_QUEUE]
                ops_before = COUNTER.snapshot()
                batches_before = w.ledger.leases.batches
                t0, cpu0 = time.perf_counter(), time.process_time()
                await asyncio.gather(*(pub.publish(e) for e in events))
                target = start_handled + len(events)
                await _wait(lambda t=target: w.handled[EVENTS_QUEUE] >= t, 600)
                elapsed = time.perf_counter() - t0
                cpu = time.process_time() - cpu0
                ops = since(ops_before)
                phases[phase] = {
                    "n": len(events),
                    "seconds": elapsed,
                    "per_s": len(events) / elapsed,
                    "ms_each": elapsed * 1000 / len(events),
                    "cpu_ms_each": cpu * 1000 / len(events),
                    "otc_calls_each": (otc.call_count - start_calls) / len(events) / toolchains,
                    "mongo_ops_each": sum(ops.values()) / len(events),
                    "mongo_ops_by_command": ops,
                    "changes_per_lease_batch": len(events)
                    * toolchains
                    / max(1, w.ledger.leases.batches - batches_before),
                }
            n_changes = len(updates)
            # Unchanged snapshot of every instance.
            mark, handled = otc.call_count, w.handled[EVENTS_QUEUE]
            ops_before = COUNTER.snapshot()
            for ns in namespaces:
                snap = SnapshotData(
                    instance=InstanceRef(cluster="default", namespace=ns),
                    exists=True,
                    triggers=[_trigger(i, 2, ns) for i in range(per_ns)],
                    revision=1,
                    instance_revision=0,
                    trigger_revisions={_trigger(i, 2, ns).key.id: 2 for i in range(per_ns)},
                )
                await pub.publish(CloudEvent.for_data(RoutingKeys.SNAPSHOT, snap, source="bench"))
            await _wait(lambda: w.handled[EVENTS_QUEUE] >= handled + instances, 60)
            snapshot_calls = otc.call_count - mark
            snapshot_ops = since(ops_before)
            tools = sum(len(otc.tools(tc)) for tc in tcs)
        await conn.close()
    change, create = phases["change"], phases["create"]
    return {
        "changes": n_changes,
        "toolchains": toolchains,
        "instances": instances,
        "seconds": change["seconds"],
        "changes_per_s": change["per_s"],
        "otc_calls_per_change_per_toolchain": change["otc_calls_each"],
        "otc_calls_per_create_per_toolchain": create["otc_calls_each"],
        "otc_calls_per_unchanged_snapshot": snapshot_calls / instances,
        "tools": tools,
        "ms_per_change": change["ms_each"],
        "cpu_ms_per_change": change["cpu_ms_each"],
        "cpu_ms_per_create": create["cpu_ms_each"],
        "ms_per_create": create["ms_each"],
        "creates_per_s": create["per_s"],
        "mongo_ops_per_change": change["mongo_ops_each"],
        "mongo_ops_per_create": create["mongo_ops_each"],
        "mongo_ops_by_command": change["mongo_ops_by_command"],
        "mongo_ops_by_command_create": create["mongo_ops_by_command"],
        "tools_per_lease_batch": change["changes_per_lease_batch"],
        "largest_lease_batch": w.ledger.leases.largest,
        "mongo_ops_per_unchanged_snapshot": sum(snapshot_ops.values()) / instances,
        "triggers_per_snapshot": per_ns,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--changes", type=int, default=500)
    parser.add_argument("--toolchains", type=int, default=1)
    parser.add_argument("--instances", type=int, default=4)
    parser.add_argument("--writer-entries", type=int, default=0, help="applied tools already stored")
    args = parser.parse_args()
    with bench_infra("bench_writer", writer_entries=args.writer_entries) as infra:
        r = asyncio.run(run(args.changes, args.toolchains, args.instances, infra.mongodb_url, infra.amqp_url))
        r["seeded_ledger"] = args.writer_entries
    print(json.dumps(r))


if __name__ == "__main__":
    main()
