"""The watcher's Tekton family against the Kubernetes emulator serving real Tekton CRDs.

The demo's installation (Kabanero 0.9: OpenShift Pipelines v0.11.3 with Triggers v0.4.0, the
Dashboard's Route, two Pipelines and an EventListener exposed by a Route) publishes its installation
and one card per object; edits publish exactly their change, status and noise nothing; a Tekton
installed after the watcher started is found by the re-probe; Triggers 0.2's EventListeners are read
in ``tekton.dev``."""

from __future__ import annotations

import copy
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from emulators.kube.testing import KubeEmulator
from services.kabanero_watcher.app import WatcherRuntime
from shared.events import TektonCardData, TektonInstallationData, TektonSnapshotData
from tests.helpers import EventTap, wait_until
from tests.integration.test_watcher_events import started, watcher_settings

ROOT = Path(__file__).resolve().parents[2]
SAMPLE = ROOT / "deploy" / "samples" / "tekton-sample.yaml"
FIXTURES = ROOT / "tests" / "fixtures" / "tekton"


async def ready(runtime: WatcherRuntime) -> None:
    """Leading, synced and /readyz green (a Tekton watcher runs a dozen watches: allow a loaded machine)."""
    await wait_until(
        lambda: runtime.session is not None and runtime.session.synced, timeout=30, what="synced"
    )


def cards(tap: EventTap, change: str) -> list[TektonCardData]:
    return [TektonCardData.model_validate(e.data) for e in tap.of_type(f"tekton.card.{change}")]


def installations(tap: EventTap) -> list[TektonInstallationData]:
    return [TektonInstallationData.model_validate(e.data) for e in tap.of_type("tekton.installation.changed")]


def card_changes(tap: EventTap) -> list[tuple[str, str]]:
    return [(e.routing_key, e.subject or "") for e in tap.events if e.routing_key.startswith("tekton.card.")]


@pytest.fixture
async def kube() -> AsyncIterator[KubeEmulator]:
    async with KubeEmulator.running(
        crds=["tekton-v0.11.3", "openshift-pipelines-operator"],
        kabanero=False,
        auto_namespaces=True,
        seed=[SAMPLE],
        bookmark_interval=0.3,
    ) as emulator:
        yield emulator


def tekton_settings(kube: KubeEmulator, amqp_url: str, mongodb_url: str, **overrides: Any) -> Any:
    return watcher_settings(kube, amqp_url, mongodb_url, watch_families=("tekton",), **overrides)


async def test_the_kabanero_0_9_installation_and_its_cards(
    kube: KubeEmulator, amqp_url: str, mongodb_url: str
) -> None:
    settings = tekton_settings(kube, amqp_url, mongodb_url)
    async with EventTap(amqp_url, ("tekton.#",)) as tap:
        runtime = await started(settings)
        try:
            await ready(runtime)
            await tap.wait_for(3, routing_key="tekton.card.created")
            await tap.wait_for(1, routing_key="tekton.installation.changed")
            await wait_until(lambda: installations(tap)[-1].cards == {"kabanero": 3}, what="card counts")
            inst = installations(tap)[-1]
            assert inst.found and inst.detected_by == "config.operator.tekton.dev/cluster"
            assert (inst.pipelines_version, inst.triggers_version) == ("v0.11.3", "v0.4.0")
            assert inst.controller_namespace == "openshift-pipelines"
            assert inst.pipelines_api == "tekton.dev/v1beta1"
            assert inst.eventlisteners_api == "triggers.tekton.dev/v1alpha1"
            assert inst.dashboard_url and inst.dashboard_url.startswith("http")
            by_name = {c.key.name: c for c in cards(tap, "created")}
            assert set(by_name) == {
                "nodejs-express-build-deploy-pl",
                "nodejs-express-build-pl",
                "listener-b4ef64ab",
            }
            pipeline = by_name["nodejs-express-build-deploy-pl"]
            assert pipeline.key.kind == "Pipeline" and pipeline.tasks
            assert (
                pipeline.dashboard_url
                and "pipelineruns?labelSelector=tekton.dev%2Fpipeline%3D" in pipeline.dashboard_url
            )
            listener = by_name["listener-b4ef64ab"]
            assert listener.key.kind == "EventListener" and listener.external_url
            assert listener.triggers and all("interceptors" in t for t in listener.triggers)
            await tap.wait_for(1, routing_key="tekton.snapshot")

            # A status-only change and a label change publish nothing; a task added publishes one update.
            obj = kube.store.get("pipelines", "kabanero", "nodejs-express-build-pl")
            kube.store.patch_status(
                "pipelines", "kabanero", "nodejs-express-build-pl", {"x": 1}, validate=False
            )
            noisy = copy.deepcopy(obj)
            noisy["metadata"].setdefault("labels", {})["touched"] = "yes"
            noisy["metadata"].pop("resourceVersion")  # an unconditional update
            kube.store.update(noisy, resource="pipelines")
            edited = copy.deepcopy(kube.store.get("pipelines", "kabanero", "nodejs-express-build-pl"))
            edited["spec"]["tasks"].append({"name": "extra", "taskRef": {"name": "extra-task"}})
            edited["metadata"].pop("resourceVersion")
            kube.store.update(edited, resource="pipelines")
            await tap.wait_for(1, routing_key="tekton.card.updated")
            assert cards(tap, "updated")[0].tasks[-1] == "extra"
            # Deleted: one delete event; the barrier is a new Pipeline afterwards.
            kube.store.delete("pipelines", "kabanero", "nodejs-express-build-pl")
            await tap.wait_for(1, routing_key="tekton.card.deleted")
            created = copy.deepcopy(obj)
            created["metadata"] = {"name": "barrier", "namespace": "kabanero"}
            kube.store.create(created, resource="pipelines")
            await tap.wait_for(4, routing_key="tekton.card.created")
            assert len(card_changes(tap)) == 6  # 3 created, 1 updated, 1 deleted, the barrier
        finally:
            await runtime.stop()
        # A restart against the unchanged cluster publishes snapshots only.
        snapshots = len(tap.of_type("tekton.snapshot"))
        runtime = await started(settings)
        try:
            await ready(runtime)
            await tap.wait_for(snapshots + 1, routing_key="tekton.snapshot")
        finally:
            await runtime.stop()
    assert len(card_changes(tap)) == 6
    snap = TektonSnapshotData.model_validate(tap.of_type("tekton.snapshot")[-1].data)
    assert {c.key.name for c in snap.cards} == {
        "nodejs-express-build-deploy-pl",
        "listener-b4ef64ab",
        "barrier",
    }
    assert snap.card_revisions["tekton:test/kabanero/Pipeline/nodejs-express-build-pl"] == 3  # its tombstone


async def test_tekton_installed_after_the_watcher_started(amqp_url: str, mongodb_url: str) -> None:
    async with KubeEmulator.running(auto_namespaces=True, bookmark_interval=0.3) as kube:
        settings = watcher_settings(kube, amqp_url, mongodb_url, watch_families=("kabanero", "tekton"))
        async with EventTap(amqp_url, ("tekton.#",)) as tap:
            runtime = await started(settings)
            try:
                await ready(runtime)
                await tap.wait_for(1, routing_key="tekton.installation.changed")
                first = installations(tap)[0]
                assert not first.found
                assert first.reason.startswith("no Tekton installation found in cluster test")
                kube.install("tekton-current")
                pipeline = (FIXTURES / "pipeline-v1.15.0-task-timeout-override.yaml").read_text()
                _apply(kube, pipeline, namespace="team-a")
                await tap.wait_for(1, routing_key="tekton.card.created", timeout=15)
                card = cards(tap, "created")[0]
                assert card.api_version == "tekton.dev/v1" and card.key.namespace == "team-a"
                await wait_until(lambda: installations(tap)[-1].found, what="installation found")
                assert installations(tap)[-1].pipelines_api == "tekton.dev/v1"
                # Tekton removed: its objects go, so do the cards (after the 404 is confirmed).
                kube.uninstall("tekton-current")
                await tap.wait_for(1, routing_key="tekton.card.deleted", timeout=15)
            finally:
                await runtime.stop()


async def test_triggers_0_2_eventlisteners_are_read_in_tekton_dev(amqp_url: str, mongodb_url: str) -> None:
    async with KubeEmulator.running(crds=["tekton-v0.10.1"], kabanero=False, auto_namespaces=True) as kube:
        _apply(
            kube,
            (FIXTURES / "triggers-v0.2.1-github-eventlistener-interceptor.yaml").read_text(),
            namespace="ci",
        )
        settings = tekton_settings(kube, amqp_url, mongodb_url)
        async with EventTap(amqp_url, ("tekton.#",)) as tap:
            runtime: WatcherRuntime = await started(settings)
            try:
                await ready(runtime)
                await tap.wait_for(1, routing_key="tekton.card.created")
                card = cards(tap, "created")[0]
                assert (card.key.kind, card.api_version) == ("EventListener", "tekton.dev/v1alpha1")
                assert card.triggers == ["foo-trig (interceptors: github)"]
            finally:
                await runtime.stop()


def _apply(kube: KubeEmulator, text: str, *, namespace: str) -> None:
    """Create every Pipeline/EventListener document of a fixture in ``namespace``."""
    import yaml

    for doc in yaml.safe_load_all(text):
        if isinstance(doc, dict) and doc.get("kind") in ("Pipeline", "EventListener"):
            doc.setdefault("metadata", {})["namespace"] = namespace
            kube.store.create(doc)


async def test_a_tekton_only_cluster_under_both_families_mirrors_tekton_and_says_why_kabanero_waits(
    kube: KubeEmulator, amqp_url: str, mongodb_url: str
) -> None:
    """The families do not wait for each other: a missing Kabanero CRD holds back only the Kabanero
    family, and /readyz names it with what the API server answered."""
    import aiohttp

    settings = watcher_settings(kube, amqp_url, mongodb_url, watch_families=("kabanero", "tekton"))
    async with EventTap(amqp_url, ("tekton.#",)) as tap:
        runtime = await started(settings)
        try:
            await tap.wait_for(3, routing_key="tekton.card.created")

            async def readyz() -> str:
                async with (
                    aiohttp.ClientSession() as http,
                    http.get(f"http://127.0.0.1:{runtime.http_port}/readyz") as r,
                ):
                    return f"{r.status} {await r.text()}"

            body = ""

            async def explained() -> bool:
                nonlocal body
                body = await readyz()
                return "kabaneros.kabanero.io: 404" in body

            await wait_until(explained, what="/readyz naming the missing Kabanero CRD")
            assert body.startswith("503") and "initial sync pending: kabanero" in body
        finally:
            await runtime.stop()
