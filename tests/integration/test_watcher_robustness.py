"""kabanero-watcher: one active replica (Lease), malformed objects, absent events CRDs, health."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from emulators.kube.testing import KubeEmulator
from services.kabanero_watcher.app import WatcherRuntime
from shared.events import InstanceData, TriggerData
from tests.helpers import EventTap, wait_until
from tests.integration.test_watcher_events import (
    CHANGES,
    TRIGGER,
    changes,
    connections,
    kabanero,
    mediator,
    ready,
    started,
    watcher_settings,
)


@pytest.fixture
async def kube() -> AsyncIterator[KubeEmulator]:
    async with KubeEmulator.running(
        auto_namespaces=True, history_window=5, bookmark_interval=0.3
    ) as emulator:
        yield emulator


async def _status(runtime: WatcherRuntime, path: str) -> int:
    async with aiohttp.ClientSession() as http, http.get(f"http://127.0.0.1:{runtime.http_port}{path}") as r:
        return r.status


async def test_two_replicas_exactly_one_publishes_and_hands_over(
    kube: KubeEmulator, amqp_url: str, mongodb_url: str
) -> None:
    kube.store.create(kabanero())
    a = await started(watcher_settings(kube, amqp_url, mongodb_url, holder_identity="a"))
    b: WatcherRuntime | None = None
    try:
        await ready(a)
        assert a.leading
        async with EventTap(amqp_url, CHANGES) as tap:
            b = await started(watcher_settings(kube, amqp_url, mongodb_url, holder_identity="b"))
            kube.store.create(mediator())
            await tap.wait_for(1, routing_key="kabanero.trigger.created")
            assert not b.leading and b.session is None
            # A standby is healthy and ready.
            assert await _status(b, "/healthz") == 200 and await _status(b, "/readyz") == 200
            lease = kube.store.get("leases", "default", "kabanero-watcher")
            assert lease["spec"]["holderIdentity"] == "a"

            # The tap sees the event before a records it done (after the confirm): stopping a in
            # between would leave it pending, and b re-publish it (same id, deduplicated downstream).
            await wait_until(lambda: a.session is not None and a.session.idle.is_set(), what="a idle")
            await a.stop()  # releases the lease: b takes over at once
            await wait_until(lambda: b is not None and b.leading, timeout=3, what="b leads")
            await ready(b)
            kube.store.create(connections())
            await tap.wait_for(1, routing_key="kabanero.trigger.updated")
        # Each change exactly once, whoever published it; the handover itself re-published nothing.
        assert changes(tap) == [("kabanero.trigger.created", TRIGGER), ("kabanero.trigger.updated", TRIGGER)]
        assert kube.store.get("leases", "default", "kabanero-watcher")["spec"]["holderIdentity"] == "b"
    finally:
        await a.stop()
        if b is not None:
            await b.stop()


async def test_leader_that_stops_renewing_is_replaced_within_the_lease_period(
    kube: KubeEmulator, amqp_url: str, mongodb_url: str
) -> None:
    """A leader that hangs (no renew, no release) loses the lease by the clock on both sides."""
    kube.store.create(kabanero())
    a = await started(watcher_settings(kube, amqp_url, mongodb_url, holder_identity="a"))
    b = await started(watcher_settings(kube, amqp_url, mongodb_url, holder_identity="b"))
    try:
        await wait_until(lambda: a.leading or b.leading, timeout=5)
        leader, standby = (a, b) if a.leading else (b, a)
        await ready(leader)
        # Freeze the leader's election loop (as if partitioned from the API server).
        lease_task = next(t for t in leader.supervisor.tasks if t.get_name().endswith(":lease"))
        lease_task.cancel()
        assert leader.elector is not None
        leader.elector.release = _never  # type: ignore[method-assign]
        # Lease duration + one renew period, plus a margin for a loaded machine.
        await wait_until(lambda: standby.leading, timeout=2 + 0.3 + 4, what="standby takes over")
        assert not leader.leading
        await wait_until(lambda: leader.session is None, timeout=2, what="old leader stopped watching")
        await ready(standby)
    finally:
        await a.stop()
        await b.stop()


async def _never() -> None:
    return None


async def test_malformed_objects_are_skipped_and_the_loop_goes_on(
    kube: KubeEmulator, amqp_url: str, mongodb_url: str
) -> None:
    kube.store.create(kabanero())
    runtime = await started(watcher_settings(kube, amqp_url, mongodb_url))
    try:
        await ready(runtime)
        async with EventTap(amqp_url, CHANGES) as tap:
            bad = mediator(name="bad")
            bad["spec"]["mediations"] = "not-a-list"
            # The CRDs refuse these (422); validate=False stores them anyway, as objects kept from
            # before their CRD had a schema: the watcher must survive them.
            kube.store.create(bad, validate=False)
            worse = mediator(name="worse")
            worse["spec"]["mediations"] = [{"selector": {}}]  # no name
            kube.store.create(worse, validate=False)
            bad_cr = kabanero("badns")
            bad_cr["spec"]["stacks"] = {"repositories": [{"name": "x", "https": "oops"}]}
            kube.store.create(bad_cr, validate=False)
            kube.store.create(mediator(name="good"))
            (created,) = await tap.wait_for(1, routing_key="kabanero.trigger.created")
            assert TriggerData.model_validate(created.data).key.owner == "good"
            # A mediator that turns malformed keeps its published triggers (no spurious delete).
            good = kube.store.get("eventmediators", "kabanero", "good")
            good["spec"]["mediations"] = [{"name": 5}]
            kube.store.update(good, validate=False)
            kube.store.create(mediator(name="after"))
            await tap.wait_for(2, routing_key="kabanero.trigger.created")
            assert await _status(runtime, "/healthz") == 200
        assert changes(tap) == [
            ("kabanero.trigger.created", "test/kabanero/mediation/good/appsody"),
            ("kabanero.trigger.created", "test/kabanero/mediation/after/appsody"),
        ]
    finally:
        await runtime.stop()


async def test_absent_events_crds_mean_legacy_triggers_and_are_reprobed(
    kube: KubeEmulator, amqp_url: str, mongodb_url: str
) -> None:
    kube.inject("crds", present=False, group="events.kabanero.io")
    legacy = [
        {
            "id": "incubator",
            "sha256": "aa11",
            "https": {"url": "https://github.com/acme/triggers/releases/download/1.0/t.tar.gz"},
        },
        {
            "id": "old",
            "sha256": "bb22",
            "url": "https://raw.githubusercontent.com/acme/sandbox/main/t.tar.gz",
        },
    ]
    cr = kabanero(triggers=legacy)
    cr["spec"]["events"] = {"enable": True}  # kabanero-events runs only when enabled (0.6-0.8)
    kube.store.create(cr)
    old = "test/kabanero/legacy/kabanero/old"
    async with EventTap(amqp_url, CHANGES) as tap:
        runtime = await started(watcher_settings(kube, amqp_url, mongodb_url))
        try:
            await ready(runtime)
            # kabanero-events (GetTriggerInfo) runs the first entry with a flat `url`: "old" only.
            (created,) = await tap.wait_for(1, routing_key="kabanero.trigger.created")
            trigger = TriggerData.model_validate(created.data)
            assert trigger.key.id == old and trigger.version == "bb22"
            assert [r.url for r in trigger.repositories] == ["https://github.com/acme/sandbox"]
            assert trigger.url == "https://raw.githubusercontent.com/acme/sandbox/main/t.tar.gz"
            (inst,) = tap.of_type("kabanero.instance.changed")
            assert [r.url for r in InstanceData.model_validate(inst.data).repositories][-1] == (
                "https://github.com/acme/sandbox"
            )
            # New sha256 for the same id: updated.
            cr = kube.store.get("kabaneros", "kabanero", "kabanero")
            cr["spec"]["triggers"][1]["sha256"] = "bb23"
            kube.store.update(cr)
            (upd,) = await tap.wait_for(1, routing_key="kabanero.trigger.updated")
            assert TriggerData.model_validate(upd.data).version == "bb23"
            # The events CRDs appear (upgrade to 0.9): mediations replace the legacy trigger, and
            # its repository leaves the instance.
            kube.store.create(mediator())
            kube.inject("crds", present=True, group="events.kabanero.io")
            await tap.wait_for(2, routing_key="kabanero.trigger.created", timeout=5)
            await tap.wait_for(1, routing_key="kabanero.trigger.deleted", timeout=5)
            await tap.wait_for(2, routing_key="kabanero.instance.changed", timeout=5)
        finally:
            await runtime.stop()
    got = changes(tap)
    assert sorted(got[-3:]) == sorted(
        [
            ("kabanero.trigger.created", TRIGGER),
            ("kabanero.trigger.deleted", old),
            ("kabanero.instance.changed", "test/kabanero"),
        ]
    )
    assert len(got) == 1 + 1 + 1 + 3  # instance, created, updated, then the switch


async def test_kubeconfig_and_watch_namespaces(
    kube: KubeEmulator, amqp_url: str, mongodb_url: str, tmp_path: Path
) -> None:
    kube.store.create(kabanero("kabanero"))
    kube.store.create(kabanero("other"))
    kube.store.create(mediator("other"))
    settings = watcher_settings(
        kube,
        amqp_url,
        mongodb_url,
        kube_api_url=None,
        kubeconfig=str(kube.kubeconfig(tmp_path / "kubeconfig")),
        watch_namespaces="kabanero,empty",
    )
    async with EventTap(amqp_url, ("kabanero.#",)) as tap:
        runtime = await started(settings)
        try:
            await ready(runtime)
            await tap.wait_for(1, routing_key="kabanero.snapshot")
            kube.store.create(mediator("kabanero"))
            await tap.wait_for(1, routing_key="kabanero.trigger.created")
        finally:
            await runtime.stop()
    assert changes(tap) == [
        ("kabanero.instance.changed", "test/kabanero"),
        ("kabanero.trigger.created", TRIGGER),
    ]


async def test_a_lone_404_of_the_events_crds_deletes_nothing_a_lasting_one_deletes_their_triggers(
    kube: KubeEmulator, amqp_url: str, mongodb_url: str
) -> None:
    """A 404 of CRDs that were there (API server hiccup) is confirmed one re-probe later before it
    means "every mediation is gone"; a real removal then deletes their triggers."""
    kube.store.create(kabanero())
    kube.store.create(mediator())
    runtime = await started(watcher_settings(kube, amqp_url, mongodb_url, optional_reprobe_s=2.0))
    other = "test/kabanero/mediation/z/appsody"
    try:
        await ready(runtime)
        session = runtime.session
        assert session is not None
        optional = [w for w in session.watchers if w.resource.group == "events.kabanero.io"]
        async with EventTap(amqp_url, CHANGES) as tap:
            kube.inject("crds", present=False, group="events.kabanero.io")
            await wait_until(lambda: all(w.absence_suspected for w in optional), timeout=5, what="404 seen")
            kube.inject("crds", present=True, group="events.kabanero.io")
            kube.store.create(mediator(name="z"))  # barrier: seen by the confirming re-probe's list
            await tap.wait_for(1, routing_key="kabanero.trigger.created", timeout=10)
            assert changes(tap) == [("kabanero.trigger.created", other)]
            kube.inject("crds", present=False, group="events.kabanero.io")
            await tap.wait_for(2, routing_key="kabanero.trigger.deleted", timeout=10)
    finally:
        await runtime.stop()
    assert changes(tap) == [
        ("kabanero.trigger.created", other),
        ("kabanero.trigger.deleted", TRIGGER),
        ("kabanero.trigger.deleted", other),
    ]
