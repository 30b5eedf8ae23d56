"""Re-list cost of kabanero-watcher: 1,000 mediations across 100 namespaces, and events of an unchanged re-list.

``python -m bench.watcher_relist [--namespaces 100] [--mediations 10]``: seeds an in-process
``emulators.kube`` directly (one Kabanero CR and one EventMediator with N mediations per
namespace), runs the watcher against it with the machine's RabbitMQ (AMQP_URL, throw-away vhost)
and MongoDB (MONGODB_URL, else ``emulators.mongo``), then:

1. initial sync: LIST of the three types + publishing every instance and trigger (confirmed);
2. unchanged re-list: LIST of the three types again + diff against the published state, timed
   until the reconciler is idle, counting the change events it emits (must be 0) and, on a tap
   bound only from then on, the change events that reach the exchange (must be 0 too).

Prints the figures as JSON (``make bench`` gathers them into bench/results.json).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import time
from pathlib import Path
from typing import Any

from bench.common import bench_infra
from bench.counting import COUNTER, since
from emulators.kube.testing import KubeEmulator
from services.kabanero_watcher.app import build
from services.kabanero_watcher.settings import Settings
from tests.helpers import EventTap, wait_until

ROOT = Path(__file__).resolve().parent.parent
AMQP = os.environ.get("AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")
MGMT = os.environ.get("RABBITMQ_MGMT_URL", "http://127.0.0.1:15672")


def _seed(kube: KubeEmulator, namespaces: int, mediations: int) -> None:
    for n in range(namespaces):
        ns = f"team-{n:03d}"
        kube.store.create(
            {
                "apiVersion": "kabanero.io/v1alpha2",
                "kind": "Kabanero",
                "metadata": {"name": "kabanero", "namespace": ns},
                "spec": {
                    "version": "0.9.2",
                    "stacks": {
                        "pipelines": [
                            {
                                "id": "default",
                                "sha256": "0f1e",
                                "https": {
                                    "url": f"https://github.com/{ns}/pipelines/releases/download/1.0/p.tgz"
                                },
                            }
                        ]
                    },
                },
            }
        )
        kube.store.create(
            {
                "apiVersion": "events.kabanero.io/v1alpha1",
                "kind": "EventMediator",
                "metadata": {"name": "webhook", "namespace": ns},
                "spec": {
                    "createListener": True,
                    "mediations": [
                        {"name": f"m{i}", "selector": {"urlPattern": f"m{i}"}, "sendTo": ["dest"], "body": []}
                        for i in range(mediations)
                    ],
                },
            }
        )


async def _run(mongodb_url: str, amqp_url: str, namespaces: int, mediations: int) -> dict[str, Any]:
    async with KubeEmulator.running(auto_namespaces=True, bookmark_interval=5.0) as kube:
        _seed(kube, namespaces, mediations)
        settings = Settings(
            amqp_url=amqp_url,  # type: ignore[arg-type]
            mongodb_url=mongodb_url,  # type: ignore[arg-type]
            http_host="127.0.0.1",
            http_port=0,
            kube_api_url=kube.url,
            cluster_name="bench",
            watch_families=("kabanero",),
            lease_namespace="default",
            lease_duration_s=15,
            lease_renew_s=2,
            snapshot_interval_s=3600,
            log_level="WARNING",
        )
        runtime = build(settings)
        ops = COUNTER.snapshot()
        t0 = time.perf_counter()
        await runtime.start()
        try:
            await wait_until(
                lambda: runtime.session is not None and runtime.session.synced, timeout=600, interval=0.01
            )
            initial_s = time.perf_counter() - t0
            session = runtime.session
            assert session is not None
            initial_events = session.emitter.published
            initial_ops = since(ops)
            await session.idle.wait()
            # The tap starts now: it sees what the re-list publishes, and its consuming (in this
            # process) takes no CPU from the initial sync it does not count.
            async with EventTap(amqp_url, ("kabanero.#",)) as tap:
                before_changes = session.emitter.published
                t1 = time.perf_counter()
                for watcher in session.watchers:
                    await watcher.relist("bench")
                list_s = time.perf_counter() - t1
                await asyncio.sleep(0)
                await session.idle.wait()
                relist_s = time.perf_counter() - t1
                diff_ms = session.last_reconcile_ms or 0.0
                published_by_relist = session.emitter.published - before_changes
                # The re-list requested a snapshot per instance; everything else must be nothing.
                # Each namespace's changes are published before its snapshot: once the tap holds
                # every snapshot, it holds whatever else the re-list published.
                await wait_until(
                    lambda: sum(e.routing_key == "kabanero.snapshot" for e in tap.events) >= namespaces,
                    timeout=30,
                    what="the re-list's snapshots on the tap",
                )
                changes = [e for e in tap.events if e.routing_key != "kabanero.snapshot"]
        finally:
            await runtime.stop()
    return {
        "publish_concurrency": settings.publish_concurrency,
        "namespaces": namespaces,
        "mediations": namespaces * mediations,
        "initial_sync_s": round(initial_s, 2),
        "initial_events_published": initial_events,
        "initial_sync_events_per_s": round(initial_events / initial_s, 1),
        "initial_sync_mongo_ops": initial_ops,
        "mongo_ops_per_event": round(sum(initial_ops.values()) / max(1, initial_events), 2),
        "relist_list_s": round(list_s, 3),
        "relist_diff_ms": round(diff_ms, 1),
        "relist_total_s_incl_snapshots": round(relist_s, 3),
        "relist_change_events": published_by_relist - namespaces,
        "relist_snapshots": namespaces,
        "change_events_seen_on_the_exchange": len(changes),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--namespaces", type=int, default=100)
    parser.add_argument("--mediations", type=int, default=10, help="per namespace")
    args = parser.parse_args()
    with bench_infra("bench_watcher") as infra:
        result = asyncio.run(_run(infra.mongodb_url, infra.amqp_url, args.namespaces, args.mediations))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
