"""Upgrading the watcher over watch state published by the previous derivation rules.

``watch_published`` holds what the product published before it followed the Kabanero operators
exactly (first-wins repositories without stack hubs, connections matched on the mediator alone or on
(mediator, mediation), mediators published in a namespace without an events-enabled Kabanero). The
upgraded watcher publishes each corrected record once, then nothing for the unchanged cluster.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from pymongo import AsyncMongoClient

from emulators.kube.testing import KubeEmulator
from services.kabanero_watcher.state import PublishedState, Record, UnknownLayout
from shared.events import InstanceData, InstanceRef, Repository, TriggerData, TriggerKey, content_hash
from tests.helpers import EventTap, wait_until
from tests.integration.test_watcher_events import (
    changes,
    connections,
    kabanero,
    mediator,
    ready,
    started,
    watcher_settings,
)

PIPELINES = "https://github.com/acme/pipelines"
APPSODY = "test/kabanero/mediation/webhook/appsody"
GITOPS = "test/kabanero/mediation/webhook/gitops"
STRAY = "test/elsewhere/mediation/webhook/appsody"


@pytest.fixture
async def kube() -> AsyncIterator[KubeEmulator]:
    async with KubeEmulator.running(auto_namespaces=True, bookmark_interval=0.3) as emulator:
        yield emulator


def _cluster(kube: KubeEmulator) -> dict[str, Any]:
    """A 0.9 cluster: the instance, mediations appsody and gitops, and two connection items: one
    from (webhook, appsody, dest), one naming only the mediator (which matches no mediation)."""
    kube.store.create(kabanero())
    kube.store.create(mediator(mediations=("appsody", "gitops")))
    conns = connections()
    loose = {"from": {"mediator": {"name": "webhook"}}, "to": [{"https": [{"url": "https://loose"}]}]}
    conns["spec"]["connections"].append(loose)
    kube.store.create(conns)
    kube.store.create(mediator("elsewhere"))  # no Kabanero CR there: no events operator
    return conns


def _old_trigger(key: TriggerKey, med: dict[str, Any], conns: list[dict[str, Any]]) -> Record:
    content = {"mediation": med, "mediator": {"createListener": True}, "connections": conns}
    digest = content_hash(content)
    data = TriggerData(
        key=key,
        instance=InstanceRef(cluster="test", namespace=key.namespace, name="kabanero"),
        content=content,
        content_hash=digest,
        version=digest,
        revision=1,
    )
    return Record(
        cluster="test",
        kind="trigger",
        key=key.id,
        namespace=key.namespace,
        content_hash=digest,
        revision=1,
        data=data.model_dump(mode="json"),
        routing_key="kabanero.trigger.created",
    )


async def _seed_old_state(mongodb_url: str, kube: KubeEmulator, conns: dict[str, Any]) -> None:
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(mongodb_url)
    try:
        state = PublishedState(client.get_default_database(), "test")
        old_repos = [Repository.of(PIPELINES, "pipeline", ref="1.0.0")]  # no stack hub
        hashed = {
            "name": "kabanero",
            "version": "0.9.2",
            "repositories": [r.model_dump(mode="json") for r in old_repos],
        }
        inst = InstanceData(
            instance=InstanceRef(cluster="test", namespace="kabanero", name="kabanero"),
            version="0.9.2",
            repositories=old_repos,
            content_hash=content_hash(hashed),
            revision=1,
        )
        await state.commit(
            Record(
                cluster="test",
                kind="instance",
                key="test/kabanero",
                namespace="kabanero",
                content_hash=inst.content_hash,
                revision=1,
                data=inst.model_dump(mode="json"),
                routing_key="kabanero.instance.changed",
            )
        )
        item, loose = conns["spec"]["connections"]
        mediations = {
            m["name"]: m
            for m in kube.store.get("eventmediators", "kabanero", "webhook")["spec"]["mediations"]
        }
        for name, old_conns in (("appsody", [item, loose]), ("gitops", [loose])):
            key = TriggerKey(
                cluster="test", namespace="kabanero", generation="mediation", owner="webhook", name=name
            )
            await state.commit(_old_trigger(key, mediations[name], old_conns))
        stray = TriggerKey(
            cluster="test", namespace="elsewhere", generation="mediation", owner="webhook", name="appsody"
        )
        await state.commit(_old_trigger(stray, mediations["appsody"], [item, loose]))
    finally:
        await client.close()


async def test_upgrade_publishes_each_correction_once_then_nothing(
    kube: KubeEmulator, amqp_url: str, mongodb_url: str
) -> None:
    conns = _cluster(kube)
    await _seed_old_state(mongodb_url, kube, conns)
    settings = watcher_settings(kube, amqp_url, mongodb_url)
    async with EventTap(amqp_url, ("kabanero.#",)) as tap:
        runtime = await started(settings)
        try:
            await ready(runtime)
            await tap.wait_for(1, routing_key="kabanero.snapshot")
        finally:
            await runtime.stop()
        corrected = sorted(changes(tap))
        assert corrected == [
            ("kabanero.instance.changed", "test/kabanero"),
            ("kabanero.trigger.deleted", STRAY),
            ("kabanero.trigger.updated", APPSODY),
            ("kabanero.trigger.updated", GITOPS),
        ]
        by_subject = {e.subject: e for e in tap.events if e.routing_key != "kabanero.snapshot"}
        inst = InstanceData.model_validate(by_subject["test/kabanero"].data)
        assert inst.revision == 2
        assert [(r.url, r.kinds) for r in inst.repositories] == [
            ("https://github.com/acme/stack-hub", ["stack-hub"]),
            (PIPELINES, ["pipeline"]),
        ]
        appsody = TriggerData.model_validate(by_subject[APPSODY].data)
        assert appsody.revision == 2 and appsody.destinations == ["https://listener/a"]
        gitops = TriggerData.model_validate(by_subject[GITOPS].data)
        assert gitops.revision == 2 and gitops.destinations == []
        assert TriggerData.model_validate(by_subject[STRAY].data).deleted

        # Restarted again over the corrected state, against the same cluster: nothing but a snapshot.
        runtime = await started(settings)
        try:
            await ready(runtime)
            await tap.wait_for(2, routing_key="kabanero.snapshot")
        finally:
            await runtime.stop()
        assert sorted(changes(tap)) == corrected
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(mongodb_url)
    try:
        docs = await client.get_default_database()["watch_published"].find().to_list()
    finally:
        await client.close()
    # Both namespaces were written since: one chunk each.
    assert sorted(d["_id"] for d in docs) == ["test|elsewhere|0/1", "test|kabanero|0/1"]


async def test_a_document_of_another_layout_stops_the_watcher_by_name(
    kube: KubeEmulator, amqp_url: str, mongodb_url: str
) -> None:
    """The product reads one ``watch_published`` layout: a document of another (a later release's,
    or one written by hand) ends the leader's term and the process, naming its ``_id`` and layout,
    and is left as it is; nothing is published over it."""
    _cluster(kube)
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(mongodb_url)
    try:
        coll = client.get_default_database()["watch_published"]
        foreign = {
            "_id": "test|kabanero",
            "layout": 2,
            "cluster": "test",
            "namespace": "kabanero",
            "records": [],
        }
        await coll.insert_one(foreign)
        with pytest.raises(
            UnknownLayout, match=r"'test\|kabanero' has layout 2; this version reads layout 3"
        ):
            await PublishedState(client.get_default_database(), "test").load()
        async with EventTap(amqp_url, ("kabanero.#",)) as tap:
            runtime = await started(watcher_settings(kube, amqp_url, mongodb_url))
            try:
                await wait_until(runtime.supervisor.failed.is_set, timeout=20, what="the watcher failed")
            finally:
                await runtime.stop()
            assert "has layout 2; this version reads layout 3" in (runtime.supervisor.failure or "")
            assert tap.events == []
        assert await coll.find().to_list() == [foreign]
    finally:
        await client.close()
