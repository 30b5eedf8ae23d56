"""kabanero-watcher with thousands of triggers in one namespace (issue 19), without timing anything:
the work is counted (connection items examined, hashes computed, turns the event loop got, events
per batch). The 20,000-mediation figures are the bench's (``bench.one_namespace``)."""

from __future__ import annotations

import asyncio
import copy
from typing import Any

import pytest

import services.kabanero_watcher.cache as cache_module
import services.kabanero_watcher.derive as derive_module
from services.kabanero_watcher.cache import CONNECTIONS, KABANEROS, MEDIATORS, ClusterCache
from services.kabanero_watcher.emitting import Emitter
from services.kabanero_watcher.kabanero_family import KabaneroFamily
from services.kabanero_watcher.lease import LeaseElector
from services.kabanero_watcher.pacing import STEPS_PER_SLICE, Pacer
from services.kabanero_watcher.settings import Settings
from services.kabanero_watcher.state import PublishedState
from shared.events import CloudEvent, content_hash
from shared.loop_stalls import LoopStalls

NS = "big"


class CountingItem(dict[str, Any]):
    """A connection item that counts how often its ``from`` is read (each read is one comparison of
    a mediation against it)."""

    reads = 0

    def __getitem__(self, key: str) -> Any:
        if key == "from":
            CountingItem.reads += 1
        return super().__getitem__(key)

    def get(self, key: str, default: Any = None) -> Any:
        if key == "from":
            CountingItem.reads += 1
        return super().get(key, default)


def _world(mediations: int, *, item: type[dict[str, Any]] = dict) -> ClusterCache:
    cache = ClusterCache("c", legacy_triggers="never")
    cache.replace(
        KABANEROS, None, [{"metadata": {"name": "k", "namespace": NS}, "spec": {"version": "0.9.2"}}]
    )
    names = [f"m{i:05d}" for i in range(mediations)]
    cache.replace(MEDIATORS, None, [_mediator(names)])
    items = [
        item(
            {
                "from": {"mediator": {"name": "webhook", "mediation": n, "destination": "dest"}},
                "to": [{"https": [{"url": f"https://listener/{n}"}]}],
            }
        )
        for n in names
    ]
    conns = {"metadata": {"name": "conns", "namespace": NS}, "spec": {"connections": items}}
    cache.replace(CONNECTIONS, None, [conns])
    return cache


def _mediator(names: list[str], edited: str = "") -> dict[str, Any]:
    return {
        "metadata": {"name": "webhook", "namespace": NS},
        "spec": {
            "mediations": [
                {"name": n, "selector": {"urlPattern": n + (edited if i == 0 else "")}, "sendTo": ["dest"]}
                for i, n in enumerate(names)
            ]
        },
    }


def test_each_connection_item_is_examined_a_bounded_number_of_times_not_once_per_mediation() -> None:
    """Today's main compared every mediation with every item: 400 x 400 reads here."""
    CountingItem.reads = 0
    cache = _world(400, item=CountingItem)
    triggers = cache.desired(NS).triggers
    assert len(triggers) == 400
    assert triggers[f"c/{NS}/mediation/webhook/m00007"].destinations == ["https://listener/m00007"]
    assert CountingItem.reads <= 3 * 400


def test_an_unchanged_namespace_hashes_nothing_and_one_edit_hashes_one_mediation(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Derive only what changed: connection items are hashed once per object, mediations once per
    content (today's main hashed every matched connection of every mediation on every derivation)."""
    hashed: list[object] = []

    def counting(value: Any) -> str:
        if isinstance(value, dict) and ("from" in value or "mediation" in value):
            hashed.append(value)  # connection items and mediation contents (not the instance's)
        return content_hash(value)

    monkeypatch.setattr(derive_module, "content_hash", counting)
    monkeypatch.setattr(cache_module, "content_hash", counting)
    cache = _world(300)
    first = cache.desired(NS).triggers
    assert len(hashed) == 300 + 300  # each item once, each mediation once
    hashed.clear()
    assert cache.desired(NS).triggers == first
    assert hashed == []
    names = [f"m{i:05d}" for i in range(300)]
    cache.apply(MEDIATORS, "MODIFIED", _mediator(names, "-edited"))
    edited = cache.desired(NS).triggers
    assert len(hashed) == 1
    changed = [k for k in first if edited[k].content_hash != first[k].content_hash]
    assert changed == [f"c/{NS}/mediation/webhook/m00000"]


def test_an_edit_of_one_mediator_leaves_the_others_untouched() -> None:
    """Counted in steps (a step is one mediation, item or object looked at): with the connections
    and the other mediators the same objects as last time, only the edited mediator's mediations
    are looked at."""
    cache = _world(0)
    groups = {f"w{g}": [f"m{g}-{i}" for i in range(100)] for g in range(4)}
    for name, names in groups.items():
        cache.apply(MEDIATORS, "ADDED", _named(name, names))
    assert len(cache.desired(NS).triggers) == 400
    assert sum(1 for _ in cache.derive_steps(NS)) <= 4 + 1  # nothing changed: one step per mediator
    cache.apply(MEDIATORS, "MODIFIED", _named("w2", groups["w2"], "-edited"))
    steps = cache.derive_steps(NS)
    assert sum(1 for _ in steps) <= 100 + 4 + 1
    edited = cache.desired(NS).triggers
    assert (
        edited[f"c/{NS}/mediation/w2/m2-0"].content["mediation"]["selector"]["urlPattern"].endswith("-edited")
    )


def _named(name: str, names: list[str], edited: str = "") -> dict[str, Any]:
    mediator = _mediator(names, edited)
    mediator["metadata"]["name"] = name
    return mediator


class _Collection:
    """The slice of a pymongo collection PublishedState writes through; it answers at once (without
    suspending), so any turn the loop gets comes from the watcher's own pacing."""

    def __init__(self) -> None:
        self.writes: list[int] = []

    async def bulk_write(self, ops: list[Any], ordered: bool = True) -> None:
        self.writes.append(sum(len(op._doc["records"]) for op in ops if hasattr(op, "_doc")))


class _Db:
    def __init__(self) -> None:
        self.coll = _Collection()

    def __getitem__(self, name: str) -> _Collection:
        return self.coll


def _family(cache: ClusterCache, publish: Any, *, batch: int = 1000) -> tuple[KabaneroFamily, _Db]:
    db = _Db()
    state = PublishedState(db, "c")  # type: ignore[arg-type]
    emitter = Emitter(state, publish, is_leader=lambda: True, batch=batch, pacer=Pacer())
    return KabaneroFamily(cache, emitter), db


async def test_deriving_and_diffing_a_big_namespace_gives_the_event_loop_back_between_slices() -> None:
    """Today's main derived and diffed 2,000 mediations without one turn for any other task (the
    Lease renewal among them) before its first publish."""
    mediations = 2000
    ticks = 0
    at_first_publish: list[int] = []

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0)
            ticks += 1

    async def publish(event: CloudEvent) -> None:
        if not at_first_publish:
            at_first_publish.append(ticks)

    family, _ = _family(_world(mediations), publish)
    other = asyncio.create_task(ticker())
    await asyncio.sleep(0)
    start = ticks
    try:
        await family.reconcile(NS)
    finally:
        other.cancel()
    # One turn at least per slice of derivation (2,000 steps) and of diff (2,000 more).
    assert at_first_publish[0] - start >= 2 * mediations // STEPS_PER_SLICE
    assert family.emitter.published == mediations + 1


async def test_a_big_namespace_is_published_in_bounded_batches_each_recorded() -> None:
    """1,200 events with a batch of 500: three pending writes and three done writes, never more
    than 500 publishes in flight (today's main: one batch of 1,201)."""
    in_flight = 0
    most = 0

    async def publish(event: CloudEvent) -> None:
        nonlocal in_flight, most
        in_flight += 1
        most = max(most, in_flight)
        await asyncio.sleep(0)
        in_flight -= 1

    family, db = _family(_world(1199), publish, batch=500)
    await family.reconcile(NS)
    assert family.emitter.published == 1200  # 1,199 triggers and the instance
    assert most == 500
    assert len(db.coll.writes) == 6
    assert not any(r.pending for r in family.state.in_namespace(NS, "trigger"))


async def test_concurrent_reconciles_flush_only_their_own_events() -> None:
    """A paced diff suspends between emits: two namespaces reconciled at once must not publish or
    discard each other's events."""
    seen: dict[str, set[str]] = {}

    async def publish(event: CloudEvent) -> None:
        await asyncio.sleep(0)

    cache = _world(600)
    other = copy.deepcopy(cache.in_namespace(MEDIATORS, NS)[0])
    other["metadata"]["namespace"] = "small"
    cache.apply(MEDIATORS, "ADDED", other)
    cache.apply(
        KABANEROS, "ADDED", {"metadata": {"name": "k", "namespace": "small"}, "spec": {"version": "0.9.2"}}
    )
    family, _ = _family(cache, publish, batch=100)
    original = family.emitter._flush_batch

    async def spy(batch: list[Any]) -> list[tuple[str, str]]:
        seen.setdefault(asyncio.current_task().get_name(), set()).update(r.namespace for _, r, _ in batch)  # type: ignore[union-attr]
        return await original(batch)

    family.emitter._flush_batch = spy  # type: ignore[method-assign]
    await asyncio.gather(
        asyncio.create_task(family.reconcile(NS), name=NS),
        asyncio.create_task(family.reconcile("small"), name="small"),
    )
    assert seen == {NS: {NS}, "small": {"small"}}
    assert family.emitter.published == 2 * 601


class _Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_lease_that_lapsed_because_the_loop_was_blocked_says_so_not_the_api_server() -> None:
    clock = _Clock()
    stalls = LoopStalls(clock=clock)
    settings = Settings(lease_duration_s=15, lease_renew_s=5)
    elector = LeaseElector(None, settings, clock=clock, stalls=stalls)  # type: ignore[arg-type]
    clock.now += 17.0
    stalls.record(16.8)  # the loop was held for 16.8 s: no round could run
    ok, reason = elector.health()
    assert not ok
    assert "event loop was blocked for 16.8s" in reason
    assert "cannot reach the Kubernetes API" not in reason
    # Failing rounds are the API server's fault, stall or not.
    elector.failed_rounds = 3
    ok, reason = elector.health()
    assert not ok and "cannot reach the Kubernetes API" in reason


def test_loop_stalls_name_the_longest_recent_stall_and_forget_old_ones() -> None:
    clock = _Clock()
    stalls = LoopStalls(clock=clock, keep_s=60)
    stalls.record(0.05)  # noise
    assert stalls.health(bound_s=5, window_s=15) == (True, "longest stall in the last 15s: 0.0s")
    stalls.record(6.4)
    ok, reason = stalls.health(bound_s=5, window_s=15)
    assert not ok and "blocked for 6.4s" in reason
    clock.now += 16
    assert stalls.health(bound_s=5, window_s=15)[0]
    clock.now += 60
    stalls.record(0.0)
    assert stalls.worst_since(0.0) == 0.0
