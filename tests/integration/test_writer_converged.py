"""An unchanged snapshot costs O(1): the scope's converged record (services/otc_writer/converged.py).

A snapshot that says what its scope last converged on (same items at the same revisions, same
bindings, same tool styles) is settled by the revision compare-and-set and the bindings read; one
that differs in any of them, or that follows a failure in the scope, is compared item by item and
applied as before.
"""

from __future__ import annotations

import aiohttp
from prometheus_client import CollectorRegistry
from pymongo import AsyncMongoClient

from services.otc_writer.app import Deps, OtcWriter, tool_styles
from services.otc_writer.applier import Outcome, ToolApplier
from services.otc_writer.desired import DesiredTool
from services.otc_writer.ledger import Ledger
from services.otc_writer.projection import INSTANCES, Projection
from services.otc_writer.reconcile import Metrics, Reconciler
from shared.amqp.consuming.decode import Delivery
from shared.events import SnapshotData, TriggerData
from shared.mongo import Document, database
from tests.helpers import CommandLog, wait_until
from tests.integration.writer_support import (  # noqa: F401 (the env fixture)
    FAST,
    WriterEnv,
    service_event,
    snapshot_event,
    trigger,
    trigger_event,
    writer_env_fixture,
    writes,
)


class _NoWrites(ToolApplier):
    """An applier a converged snapshot must not reach."""

    def __init__(self) -> None:
        self.calls = 0

    async def apply(self, want: DesiredTool, *, cause: str | None = None) -> Outcome:
        self.calls += 1
        raise AssertionError(f"apply of {want.key} for a converged snapshot")


async def _converged_count(port: int) -> float:
    async with aiohttp.ClientSession() as http, http.get(f"http://127.0.0.1:{port}/metrics") as r:
        text = await r.text()
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("kotc_otc_writer_converged_snapshots_total{")
    )


async def _record(env: WriterEnv) -> dict[str, object] | None:
    client: AsyncMongoClient[Document] = AsyncMongoClient(env.mongodb_url, tz_aware=True)
    try:
        doc = await database(client)[INSTANCES].find_one({"_id": "default/kabanero"})
        return None if doc is None else doc.get("converged")
    finally:
        await client.close()


async def test_an_unchanged_snapshot_is_two_commands_and_no_scope_read(env: WriterEnv) -> None:
    """An instance's 200 triggers, then its service bound: the bind's reconcile creates the tools
    and records the scope converged. The next snapshot, the same but for its revision (a watcher
    restart, a periodic snapshot), touches neither the scope's items nor its ledger entries."""
    tc = env.otc.seed_toolchain(name="converged")
    triggers = [trigger(f"t{i:03}") for i in range(200)]
    async with env.writer() as w:
        await env.publish(snapshot_event(triggers, revision=1))
        await env.publish(service_event("bound", revision=1, toolchains=[tc], toolchain_id=tc))
        await env.wait_handled(w, 2)
        await wait_until(lambda: len(env.otc.tools(tc)) == 200, timeout=30, what="200 tools")
        await wait_until(lambda: _record_present(env), timeout=10, what="the converged record")
        mark = env.otc.call_count
        await env.publish(snapshot_event(triggers, revision=2))
        await env.wait_handled(w, 3)
        assert await _converged_count(w.http_port) == 1
        assert env.otc.calls(mark) == []

    # The same, counted: a reconciler on a client that sees every command, an applier that fails.
    commands = CommandLog()
    client: AsyncMongoClient[Document] = AsyncMongoClient(
        env.mongodb_url, tz_aware=True, event_listeners=[commands]
    )
    try:
        db = database(client)
        applier = _NoWrites()
        styles = tool_styles(env.settings())  # the styles the writer ran with
        reconciler = Reconciler(Projection(db), Ledger(db), applier, styles, Metrics(CollectorRegistry()))
        event = snapshot_event(triggers, revision=3)
        await reconciler.handle_event(Delivery(event, SnapshotData.model_validate(event.data)))
        assert applier.calls == 0
        assert commands.names == ["findAndModify", "find"], commands.names
        assert commands.collections == [INSTANCES, "otc_writer_bindings"]
    finally:
        await client.close()


async def _bound_then_snapshot(env: WriterEnv, w: OtcWriter, tc: str, triggers: list[TriggerData]) -> None:
    """A service bound to ``tc``, then the instance's first snapshot, both handled."""
    await env.publish(service_event("bound", revision=1, toolchains=[tc], toolchain_id=tc))
    await env.publish(snapshot_event(triggers, revision=1))
    await env.wait_handled(w, 2)


async def _record_present(env: WriterEnv) -> bool:
    return await _record(env) is not None


async def test_items_known_by_events_then_bound_make_the_first_snapshot_o1(env: WriterEnv) -> None:
    """The common start (and the bench's): the watcher publishes each trigger as an event, the
    service is bound later and its reconcile creates the tools; no snapshot came yet. The first
    one, after a watcher restart, says what the bind applied: settled by the record."""
    tc = env.otc.seed_toolchain(name="events-first")
    triggers = [trigger(f"t{i}") for i in range(5)]
    async with env.writer() as w:
        await env.publish(*(trigger_event(t) for t in triggers))
        await env.wait_handled(w, 5)
        await env.publish(service_event("bound", revision=1, toolchains=[tc], toolchain_id=tc))
        await env.wait_handled(w, 6)
        assert len(env.otc.tools(tc)) == 5
        mark = env.otc.call_count
        await env.publish(snapshot_event(triggers, revision=1))
        await env.wait_handled(w, 7)
        assert await _converged_count(w.http_port) == 1
        assert env.otc.calls(mark) == []


async def test_a_changed_snapshot_runs_in_full_and_is_recorded_again(env: WriterEnv) -> None:
    tc = env.otc.seed_toolchain(name="changed")
    triggers = [trigger("a"), trigger("b")]
    async with env.writer() as w:
        await _bound_then_snapshot(env, w, tc, triggers)
        first = await _record(env)
        assert first is not None
        # b changed while the writer was away (its event lost): only the snapshot says so.
        b2 = trigger("b", revision=2, body="v2")
        mark = env.otc.call_count
        await env.publish(snapshot_event([triggers[0], b2], revision=2))
        await env.wait_handled(w, 3)
        assert [c.method for c in writes(env.otc.calls(mark))] == ["PATCH"]
        second = await _record(env)
        assert second is not None and second != first
        assert await _converged_count(w.http_port) == 0


async def test_a_failure_in_the_scope_unsets_the_record(env: WriterEnv) -> None:
    """A trigger event whose tool write fails leaves the scope unconverged: the next snapshot is
    compared item by item (and applies what failed), whatever it says."""
    tc = env.otc.seed_toolchain(name="failing")
    triggers = [trigger("a")]
    async with env.writer(Deps(topology=FAST, max_attempts=1)) as w:
        await _bound_then_snapshot(env, w, tc, triggers)
        assert await _record(env) is not None
        env.otc.set_faults(seed=1, error_rate=1.0)
        c = trigger("c")
        await env.publish(trigger_event(c))
        await wait_until(lambda: _record_gone(env), timeout=20, what="the record unset by the failure")
        env.otc.clear_faults()
        await env.publish(snapshot_event([triggers[0], c], revision=2))
        await wait_until(lambda: len(env.otc.tools(tc)) == 2, timeout=20, what="c applied by the snapshot")
        await wait_until(lambda: _record_present(env), timeout=10, what="the record again")


async def _record_gone(env: WriterEnv) -> bool:
    return await _record(env) is None


async def test_new_tool_styles_make_the_same_snapshot_apply_them(env: WriterEnv) -> None:
    """An operator changes how trigger tools look (``TRIGGER_DASHBOARD_URL``) and restarts: the next
    snapshot, the same as the last, patches every tool."""
    tc = env.otc.seed_toolchain(name="styles")
    triggers = [trigger("a"), trigger("b")]
    async with env.writer() as w:
        await _bound_then_snapshot(env, w, tc, triggers)
        await wait_until(lambda: _record_present(env), timeout=10, what="the converged record")
    mark = env.otc.call_count
    url = "https://dashboard.example/{cluster}/{namespace}/{owner}/{name}"
    async with env.writer(trigger_dashboard_url=url) as w:
        await env.publish(snapshot_event(triggers, revision=2))
        await env.wait_handled(w, 1)
        assert [c.method for c in writes(env.otc.calls(mark))] == ["PATCH", "PATCH"]
        assert all(
            t.parameters["dashboard_url"].startswith("https://dashboard.example/") for t in env.otc.tools(tc)
        )
