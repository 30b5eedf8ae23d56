"""Snapshots over RabbitMQ's message size (``shared.snapshot_parts``, the watcher's
``Emitter.emit_snapshot``, otc-writer's coalescing of parts), without a broker: splitting is exact,
bounded and ordered; joining takes the parts in any order and refuses an incomplete set; parts of
one revision never supersede each other in a consumer's lane. Against the real parts:
tests/integration/test_writer_snapshot_parts.py, tests/e2e/test_snapshot_parts_stack.py."""

from __future__ import annotations

import asyncio
import random
from typing import Any

import pytest
from pydantic import ValidationError

from services.kabanero_watcher.emitting import SNAPSHOT_PART_BYTES, Emitter
from services.kabanero_watcher.pacing import Pacer
from services.kabanero_watcher.state import PublishedState
from services.otc_writer.reconcile import key_of_event, revision_of_event
from shared.amqp.consuming.decode import Delivery
from shared.amqp.consuming.lanes import Lanes
from shared.amqp.messages import to_message
from shared.events import (
    CloudEvent,
    InstanceRef,
    RoutingKeys,
    SnapshotData,
    TektonCardData,
    TektonCardKey,
    TektonSnapshotData,
    TriggerData,
)
from shared.snapshot_parts import WHOLE_CHECK_ENTRIES, IncompleteParts, join, split, split_steps
from tests.integration.test_watcher_state_size import trigger
from tests.unit.amqp_fakes import FakeMessage
from tests.unit.test_watcher_scale import _Db

REVISION = 7


def snapshot(count: int, *, deleted: int = 0) -> SnapshotData:
    """``count`` realistic triggers (1,243 bytes each in a body) and ``deleted`` tombstoned keys."""
    records = [trigger(n) for n in range(count + deleted)]
    live = [TriggerData.model_validate(r.data) for r in records[:count]]
    return SnapshotData(
        instance=InstanceRef(cluster="test", namespace="big", name="kabanero"),
        exists=True,
        version="0.9.2",
        triggers=live,
        revision=REVISION,
        instance_revision=3,
        trigger_revisions={r.key: r.revision + (1 if i >= count else 0) for i, r in enumerate(records)},
    )


def emitter(part_bytes: int, published: list[CloudEvent]) -> Emitter:
    async def publish(event: CloudEvent) -> None:
        published.append(event)

    state = PublishedState(_Db(), "test")  # type: ignore[arg-type]
    return Emitter(state, publish, is_leader=lambda: True, pacer=Pacer(), part_bytes=part_bytes)


async def published_parts(snap: SnapshotData, part_bytes: int) -> list[CloudEvent]:
    published: list[CloudEvent] = []
    em = emitter(part_bytes, published)
    record = em.record("snapshot", "test/big", "big", "", snap.revision, snap)
    parts = await em.emit_snapshot(RoutingKeys.SNAPSHOT, record, SnapshotData.split_fields)
    await em.flush()
    assert len(published) == parts
    return published


@pytest.mark.parametrize("part_bytes", [16 * 1024, 50_000, 200_000])
async def test_every_part_body_is_within_the_bound_and_the_parts_join_to_the_snapshot(
    part_bytes: int,
) -> None:
    snap = snapshot(300, deleted=40)
    whole = len(to_message(CloudEvent.for_data(RoutingKeys.SNAPSHOT, snap, source="x")).body)
    events = await published_parts(snap, part_bytes)
    sizes = [len(to_message(e).body) for e in events]
    assert max(sizes) <= part_bytes
    assert len(events) >= whole // part_bytes + 1  # 373 KB: 23 parts of 16 KiB, 8 of 50 KB, 2 of 200 KB
    # Not much room wasted: every part but the last is filled to within two triggers of the bound.
    assert all(size > part_bytes - 2 * 1300 for size in sizes[:-1])
    parts = [SnapshotData.model_validate(e.data) for e in events]
    assert [p.part for p in parts] == list(range(1, len(parts) + 1))
    assert {(p.parts, p.revision) for p in parts} == {(len(parts), REVISION)}
    # Ordered: each part holds a contiguous run of the triggers, then of the known revisions.
    assert [t for p in parts for t in p.triggers] == snap.triggers
    assert [k for p in parts for k in p.trigger_revisions] == list(snap.trigger_revisions)
    # Every other field whole in every part.
    assert all(p.repositories == snap.repositories and p.instance_revision == 3 for p in parts)
    # Exact: joined, in any order, the parts are the snapshot.
    shuffled = parts[:]
    random.Random(5).shuffle(shuffled)
    assert join(shuffled) == snap
    # Ids: one revision, one part each; the subject names the instance.
    assert [e.id for e in events] == [f"snapshot:test/big:{REVISION}:{n}" for n in range(1, len(events) + 1)]
    assert {e.subject for e in events} == {"test/big"}


async def test_a_snapshot_within_the_bound_is_one_event_as_before() -> None:
    snap = snapshot(20)
    (event,) = await published_parts(snap, SNAPSHOT_PART_BYTES)
    assert event.id == f"snapshot:test/big:{REVISION}"
    assert SnapshotData.model_validate(event.data) == snap
    assert (event.data["part"], event.data["parts"]) == (1, 1)


def test_a_snapshot_that_fits_is_measured_whole_without_a_step() -> None:
    """Nearly every snapshot fits one message: it costs one measurement, not one per trigger (the
    paced steps are for the large ones), and is the same single part the steps would give."""
    data = snapshot(200).model_dump(mode="json")
    steps = split_steps(data, SnapshotData.split_fields, budget=SNAPSHOT_PART_BYTES - 2048)
    with pytest.raises(StopIteration) as done:
        next(steps)
    assert done.value.value == [{**data, "part": 1, "parts": 1}]
    # Over the whole-check size it is measured entry by entry (paced), with the same result.
    big = snapshot(WHOLE_CHECK_ENTRIES // 2 + 1).model_dump(mode="json")
    stepped = split_steps(big, SnapshotData.split_fields, budget=SNAPSHOT_PART_BYTES - 2048)
    next(stepped)
    assert split(big, SnapshotData.split_fields, budget=SNAPSHOT_PART_BYTES - 2048) == [
        {**big, "part": 1, "parts": 1}
    ]


def test_20000_realistic_triggers_take_six_parts_of_at_most_4_mib() -> None:
    """The issue's figure: 24.9 MB in one message (RabbitMQ 4.x refuses it: 16 MiB)."""
    snap = snapshot(20_000)
    data = snap.model_dump(mode="json")
    parts = split(data, SnapshotData.split_fields, budget=SNAPSHOT_PART_BYTES - 2048)
    assert len(parts) == 6
    assert join([SnapshotData.model_validate(p) for p in parts]) == snap


def test_an_entry_over_the_budget_gets_a_part_of_its_own() -> None:
    snap = snapshot(3)
    parts = split(snap.model_dump(mode="json"), SnapshotData.split_fields, budget=40)
    assert [len(p["triggers"]) for p in parts] == [1, 1, 1, 0, 0, 0]
    assert [len(p["trigger_revisions"]) for p in parts] == [0, 0, 0, 1, 1, 1]
    assert join([SnapshotData.model_validate(p) for p in parts]) == snap


def test_tekton_snapshots_split_their_cards_and_card_revisions() -> None:
    cards = [
        TektonCardData(
            key=TektonCardKey(cluster="c", namespace="ns", kind="Pipeline", name=f"p{n:03d}"),
            api_version="tekton.dev/v1",
            tasks=[f"task-{i}" for i in range(20)],
            content_hash=f"{n:064x}",
            revision=1,
        )
        for n in range(100)
    ]
    snap = TektonSnapshotData(
        cluster="c", namespace="ns", cards=cards, revision=4, card_revisions={c.key.id: 1 for c in cards}
    )
    parts = split(snap.model_dump(mode="json"), TektonSnapshotData.split_fields, budget=8000)
    assert len(parts) > 3
    assert join([TektonSnapshotData.model_validate(p) for p in reversed(parts)]) == snap


def test_join_refuses_a_missing_part_and_parts_of_two_revisions() -> None:
    snap = snapshot(30)
    parts = [
        SnapshotData.model_validate(p)
        for p in split(snap.model_dump(mode="json"), SnapshotData.split_fields, budget=8000)
    ]
    assert len(parts) >= 3
    with pytest.raises(IncompleteParts, match=r"want 1\.\."):
        join(parts[:-1])
    newer = parts[1].model_copy(update={"revision": REVISION + 1})
    with pytest.raises(IncompleteParts):
        join([parts[0], newer, *parts[2:]])
    with pytest.raises(IncompleteParts):
        join([*parts, parts[0]])  # twice the same part


def test_a_part_beyond_parts_is_refused_naming_the_field() -> None:
    data: dict[str, Any] = snapshot(1).model_dump(mode="json") | {"part": 3, "parts": 2}
    with pytest.raises(ValidationError, match="part: 3 is beyond parts: 2"):
        SnapshotData.model_validate(data)


def _delivery(data: SnapshotData) -> Delivery[Any]:
    return Delivery(CloudEvent.for_data(RoutingKeys.SNAPSHOT, data, source="test"), data)


async def test_parts_of_one_revision_never_supersede_each_other_in_otc_writers_lanes() -> None:
    """Parts share the lane (the instance) and the revision: with the sequence alone, part 2 would
    have been acked unrun as "superseded" by part 1 waiting ahead of it."""
    snap = snapshot(40)
    data = snap.model_dump(mode="json")
    old = [SnapshotData.model_validate(p) for p in split(data, SnapshotData.split_fields, budget=12_000)]
    new = [p.model_copy(update={"revision": REVISION + 1}) for p in old]
    assert len(old) >= 3
    lanes = Lanes()

    def join_lane(part: SnapshotData) -> Any:
        delivery = _delivery(part)
        message = FakeMessage(delivery.event).incoming
        return lanes.join(key_of_event(delivery), message, revision_of_event(delivery), 0.0)

    entries = [join_lane(p) for p in old]
    assert not any(e.superseded for e in entries)  # every part of the revision stays to run
    newer_first = join_lane(new[0])
    # A newer revision's part supersedes the same part of the older one, waiting: the older
    # revision can never complete, and what a newer one brings replaces it part by part.
    assert entries[0].superseded and not any(e.superseded for e in entries[1:])
    assert not newer_first.superseded
    await asyncio.sleep(0)
