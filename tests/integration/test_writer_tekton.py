"""otc-writer's Tekton cards end to end: service.tekton.*, tekton.card.*, tekton.snapshot in over
RabbitMQ, read-only customtool cards out to emulators.otc over HTTP, exactly once."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from pymongo import AsyncMongoClient

from emulators.otc.faults import ErrorRule, FaultConfig
from services.otc_writer.app import EVENTS_QUEUE
from services.otc_writer.desired import trigger_tool_name
from services.otc_writer.family import TEKTON
from services.otc_writer.projection import Projection
from services.otc_writer.tekton_cards import TEKTON_PURPOSE, card_tool_name
from shared.amqp.consumer import ERROR_HEADER
from shared.events import ServiceEventData, TektonCardData
from shared.mongo import Document
from tests.integration.writer_support import (
    WriterEnv,
    card,
    card_event,
    dead_letters,
    service_event,
    snapshot_event,
    tekton_service_event,
    tekton_snapshot_event,
    trigger,
    trigger_event,
    writes,
)


def names(*cards: TektonCardData) -> list[str]:
    return sorted(card_tool_name(c.key) for c in cards)


async def test_card_lifecycle_one_write_per_change(env: WriterEnv) -> None:
    tc = env.otc.seed_toolchain(name="tekton")
    build = card("build-pipeline")
    async with env.writer() as w:
        # A card known before the service is bound: nothing to write yet.
        await env.publish(tekton_service_event("provisioned", revision=1, toolchains=[]), card_event(build))
        await env.wait_handled(w, 2)
        assert writes(env.otc.calls()) == []

        # Bind: exactly one card, one POST, with the card's content.
        await env.publish(tekton_service_event("bound", revision=2, toolchains=[tc], toolchain_id=tc))
        await env.wait_handled(w, 3)
        assert env.tool_names(tc) == names(build)
        assert [c.method for c in writes(env.otc.calls())] == ["POST"]
        (tool,) = env.otc.tools(tc)
        assert tool.tool_type_id == "customtool"
        assert tool.parameters["type"] == "Tekton Pipeline"
        assert tool.parameters["lifecyclePhase"] == "DELIVER"
        assert tool.parameters["name"] == "default/kabanero/build-pipeline"
        assert tool.parameters["dashboard_url"] == "https://kabanero.local/tekton/clusters/default"

        # An EventListener appears: one POST; its external URL is its link.
        mark = env.otc.call_count
        el = card("listener", kind="EventListener").model_copy(
            update={"external_url": "https://el-listener.apps.example", "triggers": ["push (github)"]}
        )
        await env.publish(card_event(el))
        await env.wait_handled(w, 4)
        assert [c.method for c in writes(env.otc.calls(mark))] == ["POST"]
        assert env.tool_names(tc) == names(build, el)
        el_tool = next(t for t in env.otc.tools(tc) if t.name == card_tool_name(el.key))
        assert el_tool.parameters["type"] == "Tekton EventListener"
        assert el_tool.parameters["dashboard_url"] == "https://el-listener.apps.example"

        # What the card shows changes: one PATCH.
        mark = env.otc.call_count
        build2 = card("build-pipeline", revision=2, tasks=("build", "test"))
        await env.publish(card_event(build2, "updated"))
        await env.wait_handled(w, 5)
        (patch,) = writes(env.otc.calls(mark))
        assert patch.method == "PATCH" and patch.body and set(patch.body) == {"parameters"}
        assert "Tasks: build, test." in patch.body["parameters"]["description"]

        # A redelivery (same revision), a stale older event, and a newer revision that shows
        # nothing new (status noise): no OTC write at all, not even a read.
        mark = env.otc.call_count
        noisy = card("build-pipeline", revision=3, tasks=("build", "test"), content_hash="status-only")
        for handled, event in enumerate(
            (card_event(build2, "updated"), card_event(build, "created"), card_event(noisy, "updated")),
            start=6,
        ):  # one at a time: one lane, where a newer waiting event would make the older ones obsolete
            await env.publish(event)
            await env.wait_handled(w, handled)
        assert env.otc.calls(mark) == []

        # The Pipeline goes: one DELETE.
        mark = env.otc.call_count
        await env.publish(card_event(card("build-pipeline", revision=4, deleted=True), "deleted"))
        await env.wait_handled(w, 9)
        assert [c.method for c in writes(env.otc.calls(mark))] == ["DELETE"]
        assert env.tool_names(tc) == names(el)

        # Unbind: the cards go.
        mark = env.otc.call_count
        await env.publish(tekton_service_event("unbound", revision=3, toolchains=[], toolchain_id=tc))
        await env.wait_handled(w, 10)
        assert env.tool_names(tc) == []
        assert [c.method for c in writes(env.otc.calls(mark))] == ["DELETE"]

        # Bound again, then deprovisioned: back, then gone.
        await env.publish(tekton_service_event("bound", revision=4, toolchains=[tc], toolchain_id=tc))
        await env.wait_handled(w, 11)
        assert env.tool_names(tc) == names(el)
        await env.publish(tekton_service_event("deprovisioned", revision=5, toolchains=[]))
        await env.wait_handled(w, 12)
        assert env.tool_names(tc) == []
        entry = await w.ledger.get(TEKTON_PURPOSE, el.key.id, tc)
        assert entry is not None and entry["present"] is False and entry["scope"] == el.scope


async def test_namespace_filters_of_two_services_of_one_cluster(env: WriterEnv) -> None:
    """Two Tekton services of one cluster, bound to different toolchains, mirror different namespaces."""
    tc_one, tc_all = env.otc.seed_toolchain(name="one"), env.otc.seed_toolchain(name="all")
    a, b = card("a", namespace="ns-a"), card("b", namespace="ns-b")
    async with env.writer() as w:
        await env.publish(card_event(a), card_event(b))
        await env.wait_handled(w, 2)
        await env.publish(
            tekton_service_event(
                "bound", revision=1, toolchains=[tc_one], instance_id="svc-one", namespaces=["ns-a"]
            ),
            tekton_service_event("bound", revision=1, toolchains=[tc_all], instance_id="svc-all"),
        )
        await env.wait_handled(w, 4)
        assert env.tool_names(tc_one) == names(a)
        assert env.tool_names(tc_all) == names(a, b)
        assert len(writes(env.otc.calls())) == 3

        # A card of a namespace seen for the first time: only the service mirroring it gets it.
        c = card("c", namespace="ns-c")
        mark = env.otc.call_count
        await env.publish(card_event(c))
        await env.wait_handled(w, 5)
        assert env.tool_names(tc_one) == names(a)
        assert env.tool_names(tc_all) == names(a, b, c)
        assert [x.method for x in writes(env.otc.calls(mark))] == ["POST"]

        # svc-one now mirrors ns-b as well: b appears in its toolchain, nothing else moves.
        mark = env.otc.call_count
        await env.publish(
            tekton_service_event(
                "updated",
                revision=2,
                toolchains=[tc_one],
                instance_id="svc-one",
                namespaces=["ns-a", "ns-b"],
            )
        )
        await env.wait_handled(w, 6)
        assert env.tool_names(tc_one) == names(a, b)
        assert [x.method for x in writes(env.otc.calls(mark))] == ["POST"]

        # svc-all unbound: its toolchain empties; svc-one's is untouched.
        mark = env.otc.call_count
        await env.publish(
            tekton_service_event(
                "unbound", revision=2, toolchains=[], toolchain_id=tc_all, instance_id="svc-all"
            )
        )
        await env.wait_handled(w, 7)
        assert env.tool_names(tc_all) == []
        assert env.tool_names(tc_one) == names(a, b)
        assert sorted(x.method for x in writes(env.otc.calls(mark))) == ["DELETE"] * 3


async def test_snapshot_tombstones_only_per_card_revisions(env: WriterEnv) -> None:
    """A snapshot handled late: a card it omits goes only if the watcher had published its revision."""
    tc = env.otc.seed_toolchain(name="late-snapshot")
    keep, gone, back = card("keep"), card("gone"), card("back")
    async with env.writer() as w:
        await env.publish(
            tekton_service_event("bound", revision=1, toolchains=[tc], toolchain_id=tc),
            card_event(keep),
            card_event(gone),
            card_event(back),
        )
        await env.wait_handled(w, 4)
        # The watcher deleted "back" (revision 2; "gone"'s delete never reaches us), took the
        # snapshot, then created "new" and re-created "back" (revision 3). The snapshot comes last.
        new, back3 = card("new"), card("back", revision=3, tasks=("v3",))
        await env.publish(card_event(card("back", revision=2, deleted=True), "deleted"))
        await env.wait_handled(w, 5)
        await env.publish(card_event(new), card_event(back3))
        await env.wait_handled(w, 7)
        mark = env.otc.call_count
        revisions = {keep.key.id: 1, gone.key.id: 1, back.key.id: 2}
        await env.publish(tekton_snapshot_event([keep], revision=1, card_revisions=revisions))
        await env.wait_handled(w, 8)
        assert [c.method for c in writes(env.otc.calls(mark))] == ["DELETE"]  # "gone" only
        assert env.tool_names(tc) == names(keep, new, back3)
        stored = await w.projection.get_item(TEKTON, gone.key.id)
        assert stored is not None and stored.deleted and stored.revision == 1

        # The same snapshot again, and an unchanged newer one: no OTC call.
        mark = env.otc.call_count
        await env.publish(tekton_snapshot_event([keep], revision=1, card_revisions=revisions))
        await env.wait_handled(w, 9)
        await env.publish(
            tekton_snapshot_event(
                [keep, new, back3],
                revision=2,
                card_revisions={**revisions, new.key.id: 1, back.key.id: 3},
            )
        )
        await env.wait_handled(w, 10)
        assert env.otc.calls(mark) == []
        applied = await w.projection.applied_snapshot("tekton:default/kabanero")
        assert applied is not None and applied.revision == 2


async def test_hand_edit_of_a_card_is_repaired_by_the_audit(env: WriterEnv) -> None:
    tc = env.otc.seed_toolchain(name="audited-tekton")
    build = card("build-pipeline")
    async with env.writer() as w:
        await env.publish(
            tekton_service_event("bound", revision=1, toolchains=[tc], toolchain_id=tc), card_event(build)
        )
        await env.wait_handled(w, 2)
        (tool,) = env.otc.tools(tc)
        store = env.otc.emulator.store
        record = store.tool(tc, tool.id)
        applied = dict(record.parameters)
        store.replace_tool(
            record.model_copy(
                update={"name": "renamed", "parameters": {**applied, "description": "edited by hand"}}
            )
        )
        mark = env.otc.call_count
        report = await w.audit_once()
        (patch,) = writes(env.otc.calls(mark))
        assert patch.method == "PATCH" and patch.path.endswith(tool.id)
        assert patch.body == {
            "parameters": {"description": applied["description"]},
            "name": card_tool_name(build.key),
        }
        assert dict(report.repairs) == {"patch": 1}
        store.delete_tool(tc, tool.id)
        mark = env.otc.call_count
        report = await w.audit_once()
        assert [c.method for c in writes(env.otc.calls(mark))] == ["POST"]
        assert env.tool_names(tc) == names(build) and dict(report.repairs) == {"recreate": 1}
        mark = env.otc.call_count
        await w.audit_once()
        assert writes(env.otc.calls(mark)) == []


async def test_kabanero_events_and_tekton_in_one_namespace_do_not_disturb_each_other(
    env: WriterEnv,
) -> None:
    tc = env.otc.seed_toolchain(name="both")
    t, c = trigger("t"), card("listener", kind="EventListener")
    async with env.writer() as w:
        await env.publish(
            service_event("bound", revision=1, toolchains=[tc], toolchain_id=tc),
            tekton_service_event("bound", revision=1, toolchains=[tc], toolchain_id=tc),
            trigger_event(t),
            card_event(c),
        )
        await env.wait_handled(w, 4)
        both = sorted([trigger_tool_name(t.key), card_tool_name(c.key)])
        assert env.tool_names(tc) == both
        assert len(writes(env.otc.calls())) == 2

        # Each family's snapshot judges only its own items: an empty trigger snapshot removes the
        # trigger tool, an empty Tekton snapshot (that never saw the card) keeps the card.
        mark = env.otc.call_count
        await env.publish(
            tekton_snapshot_event([], revision=1),
            snapshot_event([], revision=1, trigger_revisions={t.key.id: 1}),
        )
        await env.wait_handled(w, 6)
        assert env.tool_names(tc) == [card_tool_name(c.key)]
        assert [x.method for x in writes(env.otc.calls(mark))] == ["DELETE"]

        # Unbinding the Tekton service removes its card only; the trigger comes back and stays.
        await env.publish(trigger_event(trigger("t", revision=2, body="v2")))
        await env.wait_handled(w, 7)
        mark = env.otc.call_count
        await env.publish(tekton_service_event("unbound", revision=2, toolchains=[], toolchain_id=tc))
        await env.wait_handled(w, 8)
        assert env.tool_names(tc) == [trigger_tool_name(t.key)]
        assert [x.method for x in writes(env.otc.calls(mark))] == ["DELETE"]


@asynccontextmanager
async def projection(mongodb_url: str) -> AsyncIterator[Projection]:
    client: AsyncMongoClient[Document] = AsyncMongoClient(mongodb_url)
    try:
        proj = Projection(client.get_default_database())
        await proj.ensure_indexes()
        yield proj
    finally:
        await client.close()


def _bound(toolchains: list[str], revision: int = 1, namespaces: list[str] | None = None) -> ServiceEventData:
    return ServiceEventData.model_validate(
        tekton_service_event("bound", revision=revision, toolchains=toolchains, namespaces=namespaces).data
    )


async def test_a_bind_and_the_first_card_of_a_namespace_never_miss_each_other(mongodb_url: str) -> None:
    """The two orders of a bind racing the first card of a new namespace, step by step on the
    projection: either the bind lists the card's scope, or the card's first bindings read sees the
    bind (two replicas, or two lanes of one consumer, run them at once)."""
    first, second = card("a", namespace="ns-1"), card("b", namespace="ns-2")
    async with projection(mongodb_url) as proj:
        # The bind first: it knows no scope of the cluster yet; the card's first read sees the bind.
        fresh, scopes = await proj.put_service(TEKTON, _bound(["tc-1"]), deleted=False)
        assert fresh and scopes == []
        assert await proj.put_item_bound(TEKTON, first) == ("stored", {"tc-1"})
        # The card first: the bind lists its scope, derives its bindings and updates the card's copy.
        assert await proj.put_item_bound(TEKTON, second) == ("stored", {"tc-1"})
        fresh, scopes = await proj.put_service(TEKTON, _bound(["tc-1", "tc-2"], 2), deleted=False)
        assert fresh and scopes == [first.scope, second.scope]
        copy = second.model_copy(update={"revision": 2})
        assert await proj.put_item_bound(TEKTON, copy) == ("stored", {"tc-1", "tc-2"})
        # Found by _id: the cluster's document lists both scopes.
        assert await proj.scopes_of(TEKTON, "tekton:default") == [first.scope, second.scope]
        # A narrower filter unbinds the other namespace (and a stale service event changes nothing).
        fresh, _ = await proj.put_service(TEKTON, _bound(["tc-1"], 3, ["ns-1"]), deleted=False)
        assert fresh
        assert await proj.bound_toolchains(first.scope) == {"tc-1"}
        assert await proj.bound_toolchains(second.scope) == set()
        fresh, _ = await proj.put_service(TEKTON, _bound(["tc-9"], 2), deleted=False)
        assert not fresh and await proj.bound_toolchains(second.scope) == set()


async def test_a_refused_card_is_recorded_and_not_resent_until_it_changes(env: WriterEnv) -> None:
    tc = env.otc.seed_toolchain(name="refusing-tekton")
    refused = card("refused")
    name = card_tool_name(refused.key)
    env.otc.set_faults(
        FaultConfig(
            rules=[
                ErrorRule(
                    path=r"/toolchain/v2/toolchains/.*/tools",
                    method="POST",
                    name=name,
                    status=400,
                    message="Parameter 'type' is not allowed",
                )
            ]
        )
    )
    async with env.writer() as w:
        await env.publish(tekton_service_event("bound", revision=1, toolchains=[tc], toolchain_id=tc))
        await env.wait_handled(w, 1)
        await env.publish(card_event(refused))
        (dead,) = await dead_letters(env, EVENTS_QUEUE, wait=True)
        assert "Parameter 'type' is not allowed" in str((dead.headers or {})[ERROR_HEADER])
        entry = await w.ledger.get(TEKTON_PURPOSE, refused.key.id, tc)
        assert entry is not None and entry["refused_hash"] and "not allowed" in entry["last_error"]

        # The same content again (a status-only revision, a snapshot): acked, no OTC call.
        mark = env.otc.call_count
        noise = card("refused", revision=2, content_hash="status-only")
        await env.publish(card_event(noise, "updated"))
        await env.wait_handled(w, 2)
        await env.publish(tekton_snapshot_event([noise], revision=1, card_revisions={refused.key.id: 2}))
        await env.wait_handled(w, 3)
        assert env.otc.calls(mark) == []
        assert await dead_letters(env, EVENTS_QUEUE, wait=False) == []

        # What the card shows changes: tried again, once.
        env.otc.clear_faults()
        mark = env.otc.call_count
        await env.publish(card_event(card("refused", revision=3, tasks=("build", "scan")), "updated"))
        await env.wait_handled(w, 4)
        assert [c.method for c in writes(env.otc.calls(mark))] == ["POST"]
        assert env.tool_names(tc) == [name]
