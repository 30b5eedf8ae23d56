"""otc-writer applies a snapshot published in parts only once it holds every part of its revision
(``Projection.whole_snapshot``): real RabbitMQ, the Mongo wire server, emulators.otc over HTTP.

A part alone deletes nothing (a level-triggered apply of a partial list would delete the rest), a
redelivered part changes nothing, parts arrive in any order, a newer revision supersedes an
incomplete older one, and the parts are deleted once applied."""

from __future__ import annotations

from services.otc_writer.desired import trigger_tool_name
from services.otc_writer.projection import SNAPSHOT_PARTS
from shared.events import (
    CloudEvent,
    InstanceRef,
    RoutingKeys,
    SnapshotData,
    TektonSnapshotData,
    TriggerData,
)
from shared.mongo import make_client
from shared.snapshot_parts import split
from tests.integration.writer_support import (
    CLUSTER,
    NAMESPACE,
    WriterEnv,
    card,
    service_event,
    tekton_service_event,
    trigger,
    writes,
)


def parts(
    triggers: list[TriggerData], *, revision: int, known: dict[str, int], budget: int
) -> list[CloudEvent]:
    data = SnapshotData(
        instance=InstanceRef(cluster=CLUSTER, namespace=NAMESPACE),
        exists=True,
        triggers=triggers,
        revision=revision,
        instance_revision=0,
        trigger_revisions=known,
    ).model_dump(mode="json")
    return [
        CloudEvent.for_data(
            RoutingKeys.SNAPSHOT,
            SnapshotData.model_validate(p),
            source="test",
            id=f"snapshot:{CLUSTER}/{NAMESPACE}:{revision}:{p['part']}",
        )
        for p in split(data, SnapshotData.split_fields, budget=budget)
    ]


async def stored_parts(env: WriterEnv) -> list[tuple[int, int]]:
    client = make_client(env.mongodb_url)
    try:
        docs = await client.get_default_database()[SNAPSHOT_PARTS].find({}).to_list()
    finally:
        await client.close()
    return sorted((d["revision"], d["part"]) for d in docs)


async def test_a_snapshot_in_parts_applies_whole_once_every_part_is_here_and_a_part_deletes_nothing(
    env: WriterEnv,
) -> None:
    tc = env.otc.seed_toolchain(name="parts")
    first = [trigger(f"t{n:02d}") for n in range(12)]
    names = sorted(trigger_tool_name(t.key) for t in first)
    handled = 0

    async def deliver(*events: CloudEvent) -> None:
        nonlocal handled
        for event in events:  # one at a time: a redelivery comes after its first delivery
            await env.publish(event)
            handled += 1
            await env.wait_handled(w, handled)

    async with env.writer() as w:
        await deliver(service_event("bound", revision=1, toolchains=[tc], toolchain_id=tc))
        # Revision 1 in parts: nothing before the last part, then every tool at once.
        rev1 = parts(first, revision=1, known={t.key.id: 1 for t in first}, budget=1500)
        assert len(rev1) >= 4
        await deliver(*rev1[1:])
        assert writes(env.otc.calls()) == []
        assert [p for _, p in await stored_parts(env)] == list(range(2, len(rev1) + 1))
        await deliver(rev1[0])
        assert env.tool_names(tc) == names
        assert await stored_parts(env) == []  # applied: its parts are gone
        assert (await w.projection.applied_snapshot(f"{CLUSTER}/{NAMESPACE}")).revision == 1  # type: ignore[union-attr]

        # Revision 2 drops t06..t11 and adds t12..t15. Its parts arrive out of order, one twice, and
        # revision 3 (the same world, t00 changed) overtakes it before its last part: no tool is
        # deleted or created until a revision is whole, and the late part of 2 is stale.
        kept, gone = first[:6], first[6:]
        added = [trigger(f"t{n:02d}") for n in range(12, 16)]
        known = {t.key.id: 1 for t in kept + added} | {t.key.id: 1 for t in gone}
        rev2 = parts(kept + added, revision=2, known=known, budget=1500)
        mark = env.otc.call_count
        await deliver(rev2[2], rev2[0], rev2[2])
        assert writes(env.otc.calls(mark)) == []
        changed = trigger("t00", revision=2, body="v2")
        rev3 = parts([changed, *kept[1:], *added], revision=3, known=known | {changed.key.id: 2}, budget=1500)
        await deliver(*reversed(rev3[1:]))
        assert writes(env.otc.calls(mark)) == []
        await deliver(rev3[0])
        want = sorted(trigger_tool_name(t.key) for t in kept + added)
        assert env.tool_names(tc) == want
        methods = sorted(c.method for c in writes(env.otc.calls(mark)))
        assert methods == ["DELETE"] * 6 + ["PATCH"] + ["POST"] * 4
        assert await stored_parts(env) == []  # revision 3 and the incomplete revision 2 dropped

        # What comes late or twice changes nothing and keeps nothing.
        mark = env.otc.call_count
        await deliver(rev2[1], rev3[1], rev1[0])
        assert writes(env.otc.calls(mark)) == []
        assert await stored_parts(env) == []
        assert env.tool_names(tc) == want


async def test_a_tekton_snapshot_in_parts_applies_once_whole(env: WriterEnv) -> None:
    tc = env.otc.seed_toolchain(name="tekton-parts")
    cards = [card(f"pipeline-{n:02d}", tasks=("build", "test", "deploy")) for n in range(10)]
    data = TektonSnapshotData(
        cluster=CLUSTER,
        namespace=NAMESPACE,
        cards=cards,
        revision=1,
        card_revisions={c.key.id: 1 for c in cards},
    ).model_dump(mode="json")
    events = [
        CloudEvent.for_data(RoutingKeys.TEKTON_SNAPSHOT, TektonSnapshotData.model_validate(p), source="test")
        for p in split(data, TektonSnapshotData.split_fields, budget=1200)
    ]
    assert len(events) >= 3
    async with env.writer() as w:
        await env.publish(tekton_service_event("bound", revision=1, toolchains=[tc], toolchain_id=tc))
        await env.wait_handled(w, 1)
        for n, event in enumerate(reversed(events), 2):
            assert writes(env.otc.calls()) == []  # nothing before the revision is whole
            await env.publish(event)
            await env.wait_handled(w, n)
        assert len(env.otc.tools(tc)) == len(cards)
        assert [c.method for c in writes(env.otc.calls())] == ["POST"] * len(cards)
        assert await stored_parts(env) == []
