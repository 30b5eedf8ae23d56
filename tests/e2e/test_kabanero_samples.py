"""The published Kabanero samples through the Kubernetes emulator (validated against the real CRDs)
and the real kabanero-watcher process, published on the real RabbitMQ: exactly the repositories
and triggers tests/fixtures/kabanero/expected.yaml lists for each case, nothing more."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path
from typing import Any

import pytest

from emulators.kube.errors import ApiError
from emulators.kube.testing import KubeEmulator
from shared.events import InstanceData, SnapshotData, TriggerData
from tests.helpers import EventTap
from tests.kabanero_fixtures import of_cluster, repositories_view

ROOT = Path(__file__).resolve().parents[2]
CLUSTER = "samples"

pytestmark = pytest.mark.e2e


async def _spawn(kube: KubeEmulator, amqp_url: str, mongodb_url: str) -> asyncio.subprocess.Process:
    env = os.environ | {
        "AMQP_URL": amqp_url,
        "MONGODB_URL": mongodb_url,
        "KUBE_API_URL": kube.url,
        "CLUSTER_NAME": CLUSTER,
        "HTTP_PORT": "0",
        "HTTP_HOST": "127.0.0.1",
        "LEASE_NAMESPACE": "default",
        "LOG_FORMAT": "json",
    }
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "services.kabanero_watcher", cwd=ROOT, env=env,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip


@pytest.mark.parametrize("cluster", ["legacy", "0.9"])
async def test_published_samples_yield_exactly_the_expected_repositories_and_triggers(
    cluster: str, amqp_url: str, mongodb_url: str
) -> None:
    cases = of_cluster(cluster)
    async with (
        KubeEmulator.running(auto_namespaces=True, bookmark_interval=0.5) as kube,
        EventTap(amqp_url, ("kabanero.#",)) as tap,
    ):
        if cluster == "legacy":  # Kabanero 0.6-0.8: no events CRDs
            kube.inject("crds", present=False, group="events.kabanero.io")
        for case in cases:
            for _, obj in case.objects():
                kube.store.apply(obj)  # validated against the CRDs, as the API server would
            for entry, obj in case.rejected_objects():
                with pytest.raises(ApiError) as refused:
                    kube.store.apply(obj)
                assert refused.value.code == 422 and refused.value.reason == "Invalid"
                assert entry["field"] in [c["field"] for c in (refused.value.details or {})["causes"]]
        live = [c for c in cases if c.instance or c.triggers]
        proc = await _spawn(kube, amqp_url, mongodb_url)
        try:
            # The first snapshots follow the whole initial diff: every change event is in by then.
            await tap.wait_for(len(live), routing_key="kabanero.snapshot", timeout=60)
        finally:
            proc.send_signal(signal.SIGTERM)
            await asyncio.wait_for(proc.wait(), 30)

    instances: dict[str, list[dict[str, Any]]] = {}
    triggers: dict[str, list[dict[str, Any]]] = {}
    for event in tap.events:
        if event.routing_key == "kabanero.instance.changed":
            inst = InstanceData.model_validate(event.data)
            assert inst.instance.namespace not in instances, "one instance event per namespace"
            instances[inst.instance.namespace] = repositories_view(inst.repositories)
        elif event.routing_key == "kabanero.trigger.created":
            trig = TriggerData.model_validate(event.data)
            version = "content-hash" if trig.version == trig.content_hash else trig.version
            view = {
                "key": trig.key.id.removeprefix(f"{CLUSTER}/{trig.key.namespace}/"),
                "destinations": trig.destinations,
                "version": version,
            }
            triggers.setdefault(trig.key.namespace, []).append(view)
        else:
            assert event.routing_key == "kabanero.snapshot", event.routing_key
            assert SnapshotData.model_validate(event.data).exists
    for case in cases:
        if case.instance:
            assert instances.pop(case.namespace) == case.repositories, case.name
        assert sorted(triggers.pop(case.namespace, []), key=lambda t: t["key"]) == case.triggers, case.name
    assert instances == {} and triggers == {}
