"""MongoDB commands per message of github-linker, counted on its real store (no timing).

``python -m bench.linker_ops``: starts ``emulators.mongo`` (unless MONGODB_URL is set), runs the
Linker with a publisher that only records, and counts PyMongo commands per kind of message: a
bind, an instance change that adds one repository, an unchanged instance event, a snapshot.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from prometheus_client import CollectorRegistry

from bench.common import bench_infra
from bench.counting import COUNTER, since
from services.github_linker.linking import Linker, Metrics, decode
from services.github_linker.settings import Settings
from services.github_linker.store import Store
from shared.events import (
    CloudEvent,
    InstanceData,
    InstanceRef,
    Repository,
    RoutingKeys,
    ServiceEventData,
    ServiceParameters,
    SnapshotData,
)
from shared.mongo import database, make_client

REF = InstanceRef(cluster="c1", namespace="ns", name="kabanero")


class Sink:
    async def publish(self, event: CloudEvent) -> None:
        pass


def _instance(urls: list[str], revision: int) -> CloudEvent:
    data = InstanceData(
        instance=REF,
        repositories=[Repository.of(u, "pipeline") for u in urls],
        content_hash=json.dumps(urls),
        revision=revision,
    )
    return CloudEvent.for_data(RoutingKeys.INSTANCE_CHANGED, data, source="bench")


async def _run(mongodb_url: str) -> dict[str, Any]:
    client = make_client(mongodb_url, timeout_s=10)
    try:
        store = Store(database(client))
        await store.create_indexes()
        linker = Linker(
            store=store,
            publisher=Sink(),  # type: ignore[arg-type]
            settings=Settings(http_port=0),
            metrics=Metrics(CollectorRegistry()),
        )
        urls = [f"https://github.com/org/r{i}" for i in range(3)]
        await linker.handle(decode(_instance(urls, 1)))
        bind = ServiceEventData(
            kind="kabanero",
            instance_id="s1",
            service_id="kabanero",
            parameters=ServiceParameters(cluster="c1", namespace="ns"),
            toolchains=["tc-1"],
            revision=1,
        )
        steps = {
            "bind_3_repos": CloudEvent.for_data(RoutingKeys.service("kabanero", "bound"), bind, source="b"),
            "instance_one_repo_more": _instance([*urls, "https://github.com/org/r3"], 2),
            "instance_unchanged": _instance([*urls, "https://github.com/org/r3"], 3),
            "snapshot_unchanged": CloudEvent.for_data(
                RoutingKeys.SNAPSHOT,
                SnapshotData(
                    instance=REF,
                    exists=True,
                    repositories=[Repository.of(u, "pipeline") for u in [*urls, "https://github.com/org/r3"]],
                    revision=1,
                    instance_revision=3,
                    trigger_revisions={},
                ),
                source="bench",
            ),
        }
        out: dict[str, Any] = {}
        for name, event in steps.items():
            before = COUNTER.snapshot()
            await linker.handle(decode(event))
            ops = since(before)
            out[f"mongo_ops_{name}"] = sum(ops.values())
            out[f"ops_by_command_{name}"] = ops
        return out
    finally:
        await client.close()


def main() -> None:
    with bench_infra("bench_linker") as infra:
        print(json.dumps(asyncio.run(_run(infra.mongodb_url))))


if __name__ == "__main__":
    main()
