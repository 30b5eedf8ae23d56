"""A stack of two clusters (``Stack(clusters=...)``, driven by ``scripts/driver.py``): one Kubernetes
emulator and one kabanero-watcher per cluster, both in broker-api's ``ALLOWED_CLUSTERS``. A Tekton
service per cluster bound to one toolchain shows each cluster's cards; a change in one cluster
changes its cards only, with one OTC write; each watcher has its own command queue."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from scripts.driver import TEKTON_GROUP, Driver, driven, wait_for

pytestmark = pytest.mark.e2e
PIPELINE = f"{TEKTON_GROUP}/namespaces/kabanero/pipelines/nodejs-express-build-pl"


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[Driver]:
    async with driven("test-clusters", tmp_path / ".run", clusters=("default", "east")) as w:
        yield w


async def cards(w: Driver) -> list[str]:
    """``<cluster>/<namespace>/<name>`` of every Tekton card in the toolchain."""
    return sorted(t["parameters"]["name"] for t in await w.tools() if t["name"].startswith("tekton "))


async def test_each_cluster_has_its_watcher_and_its_cards(world: Driver) -> None:
    w, stack = world, world.stack
    assert {"kabanero-watcher", "kabanero-watcher-east", "kube", "kube-east"} <= {n for n, _ in stack.procs}
    assert "kabanero-watcher.east.instances" in stack.queues
    for cluster in stack.clusters:
        await w.provision_and_bind("tekton-broker", f"tekton-{cluster}", {"cluster": cluster})
    sample = [
        "kabanero/listener-b4ef64ab",
        "kabanero/nodejs-express-build-deploy-pl",
        "kabanero/nodejs-express-build-pl",
    ]
    want = sorted(f"{c}/{n}" for c in ("default", "east") for n in sample)
    await wait_for(lambda: _cards_are(w, want), "both clusters' cards")
    await w.quiet()

    mark = await w.mark()
    await w.kube("DELETE", PIPELINE, cluster="east")
    want.remove("east/kabanero/nodejs-express-build-pl")
    await wait_for(lambda: _cards_are(w, want), "the east Pipeline's card gone")
    await w.quiet()
    assert await w.writes_since(mark) == 1
    assert await cards(w) == want
    assert not any((await w.dead_letter_counts()).values())


async def _cards_are(w: Driver, want: list[str]) -> bool:
    return await cards(w) == want
