"""otc-writer end to end: events/commands in over RabbitMQ, tools out to emulators.otc over HTTP."""

from __future__ import annotations

import asyncio
import logging

import pytest

from services.otc_writer.app import COMMANDS_QUEUE, EVENTS_QUEUE, OtcWriter
from services.otc_writer.desired import trigger_tool_name
from shared.amqp import AmqpConnection
from tests.helpers import wait_until
from tests.integration.writer_support import (
    FAST,
    WriterEnv,
    command,
    service_event,
    snapshot_event,
    trigger,
    trigger_event,
    writes,
)


async def test_trigger_tool_lifecycle_one_write_per_change(env: WriterEnv) -> None:
    tc1 = env.otc.seed_toolchain(name="one")
    tc2 = env.otc.seed_toolchain(name="two")
    a, b = trigger("a"), trigger("b")
    async with env.writer() as w:
        # Triggers known before any binding: nothing to write yet.
        await env.publish(trigger_event(a), trigger_event(b))
        await env.wait_handled(w, 2)
        assert writes(env.otc.calls()) == []

        # Bind to tc1: exactly one tool per trigger, one POST each.
        await env.publish(service_event("bound", revision=2, toolchains=[tc1], toolchain_id=tc1))
        await env.wait_handled(w, 3)
        expected = sorted([trigger_tool_name(a.key), trigger_tool_name(b.key)])
        assert env.tool_names(tc1) == expected
        assert [c.method for c in writes(env.otc.calls())] == ["POST", "POST"]
        tool = next(t for t in env.otc.tools(tc1) if t.name == trigger_tool_name(a.key))
        assert tool.tool_type_id == "customtool"
        assert tool.parameters["lifecyclePhase"] == "DELIVER"
        assert tool.parameters["dashboard_url"].startswith("https://")

        # Bind tc2 as well.
        mark = env.otc.call_count
        await env.publish(service_event("bound", revision=3, toolchains=[tc1, tc2], toolchain_id=tc2))
        await env.wait_handled(w, 4)
        assert env.tool_names(tc2) == expected
        assert [c.method for c in writes(env.otc.calls(mark))] == ["POST", "POST"]

        # Trigger a changes: one PATCH per bound toolchain, merge-patch content type.
        mark = env.otc.call_count
        a2 = trigger("a", revision=2, body="v2")
        await env.publish(trigger_event(a2, "updated"))
        await env.wait_handled(w, 5)
        patch_calls = writes(env.otc.calls(mark))
        assert sorted(c.method for c in patch_calls) == ["PATCH", "PATCH"]
        assert all(c.body and set(c.body) == {"parameters"} for c in patch_calls)

        # Unchanged snapshot and a redelivered (stale) event: zero calls to OTC at all.
        mark = env.otc.call_count
        await env.publish(snapshot_event([a2, b], revision=1), trigger_event(a, "created"))
        await env.wait_handled(w, 7)
        assert env.otc.calls(mark) == []

        # Trigger b deleted: one DELETE per toolchain.
        mark = env.otc.call_count
        await env.publish(trigger_event(trigger("b", revision=2, deleted=True), "deleted"))
        await env.wait_handled(w, 8)
        assert [c.method for c in writes(env.otc.calls(mark))] == ["DELETE", "DELETE"]
        assert env.tool_names(tc1) == env.tool_names(tc2) == [trigger_tool_name(a.key)]

        # Snapshot with a new trigger c and without a: create c, delete a, in each toolchain.
        mark = env.otc.call_count
        c = trigger("c")
        known = {c.key.id: 1, a.key.id: 2, b.key.id: 2}  # a's and b's last events were published
        await env.publish(snapshot_event([c], revision=2, trigger_revisions=known))
        await env.wait_handled(w, 9)
        assert sorted(x.method for x in writes(env.otc.calls(mark))) == ["DELETE", "DELETE", "POST", "POST"]
        assert env.tool_names(tc1) == env.tool_names(tc2) == [trigger_tool_name(c.key)]

        # Unbind tc1: its tools go, tc2 keeps its own; deprovision: everything goes.
        mark = env.otc.call_count
        await env.publish(service_event("unbound", revision=4, toolchains=[tc2], toolchain_id=tc1))
        await env.wait_handled(w, 10)
        assert env.tool_names(tc1) == []
        assert env.tool_names(tc2) == [trigger_tool_name(c.key)]
        assert [x.method for x in writes(env.otc.calls(mark))] == ["DELETE"]
        await env.publish(service_event("deprovisioned", revision=5, toolchains=[]))
        await env.wait_handled(w, 11)
        assert env.tool_names(tc2) == []

    # A restart with an unchanged world writes nothing.
    mark = env.otc.call_count
    async with env.writer() as w2:
        await env.publish(snapshot_event([c], revision=3))
        await env.wait_handled(w2, 1)
    assert writes(env.otc.calls(mark)) == []


async def test_old_snapshot_never_deletes_a_trigger_published_after_it(env: WriterEnv) -> None:
    """A snapshot handled late (e.g. back from a retry queue) after newer trigger events.

    ``trigger_revisions`` says which trigger revisions the snapshot reflects: a trigger created or
    re-created after it keeps its tool; one whose delete the writer missed still goes.
    """
    tc = env.otc.seed_toolchain(name="late-snapshot")
    a, gone, back = trigger("a"), trigger("gone"), trigger("back")
    async with env.writer() as w:
        await env.publish(
            service_event("bound", revision=1, toolchains=[tc], toolchain_id=tc),
            trigger_event(a),
            trigger_event(gone),
            trigger_event(back),
        )
        await env.wait_handled(w, 4)
        # The watcher then deleted "back" (revision 2, while "gone"'s delete never reaches us), took a
        # snapshot, and afterwards created "new" and re-created "back" (revision 3). The snapshot's
        # first delivery failed, so the writer sees it last.
        new, back3 = trigger("new"), trigger("back", revision=3, body="v3")
        await env.publish(
            trigger_event(trigger("back", revision=2, deleted=True), "deleted"),
            trigger_event(new),
            trigger_event(back3),
        )
        await env.wait_handled(w, 7)
        assert env.tool_names(tc) == sorted(trigger_tool_name(t.key) for t in (a, gone, back, new))
        mark = env.otc.call_count
        known = {a.key.id: 1, gone.key.id: 2, back.key.id: 2}
        await env.publish(snapshot_event([a], revision=5, trigger_revisions=known))
        await env.wait_handled(w, 8)
        assert env.tool_names(tc) == sorted(trigger_tool_name(t.key) for t in (a, back, new))
        assert [c.method for c in writes(env.otc.calls(mark))] == ["DELETE"]  # only "gone"
        stored = await env.writers[0].projection.get_trigger(gone.key.id)
        assert stored is not None and stored.deleted and stored.revision == 2
        # Its redelivery changes nothing either.
        mark = env.otc.call_count
        await env.publish(snapshot_event([a], revision=5, trigger_revisions=known))
        await env.wait_handled(w, 9)
        assert writes(env.otc.calls(mark)) == []


async def test_github_tool_commands_lifecycle(env: WriterEnv) -> None:
    tc = env.otc.seed_toolchain(name="gh")
    async with env.writer() as w:
        await env.publish(command("apply", key="repo-1", toolchain_id=tc, revision=1))
        await env.wait_handled(w, 1, COMMANDS_QUEUE)
        (tool,) = env.otc.tools(tc)
        assert tool.tool_type_id == "githubconsolidated"
        assert tool.parameters["repo_url"] == "https://github.com/org/app"

        # Redelivered command: zero calls.
        mark = env.otc.call_count
        await env.publish(command("apply", key="repo-1", toolchain_id=tc, revision=1))
        await env.wait_handled(w, 2, COMMANDS_QUEUE)
        assert env.otc.calls(mark) == []

        # Change: one PATCH; a stale older command afterwards: nothing.
        mark = env.otc.call_count
        await env.publish(
            command("apply", key="repo-1", toolchain_id=tc, revision=3, repo="https://github.com/org/app2"),
            command("apply", key="repo-1", toolchain_id=tc, revision=2, repo="https://github.com/org/old"),
        )
        await env.wait_handled(w, 4, COMMANDS_QUEUE)
        assert [c.method for c in writes(env.otc.calls(mark))] == ["PATCH"]
        (tool,) = env.otc.tools(tc)
        assert tool.parameters["repo_url"] == "https://github.com/org/app2"

        # Remove: one DELETE; remove again: nothing.
        mark = env.otc.call_count
        await env.publish(
            command("remove", key="repo-1", toolchain_id=tc, revision=4),
            command("remove", key="repo-1", toolchain_id=tc, revision=4),
        )
        await env.wait_handled(w, 6, COMMANDS_QUEUE)
        assert [c.method for c in writes(env.otc.calls(mark))] == ["DELETE"]
        assert env.otc.tools(tc) == []


async def test_tool_deleted_behind_our_back_is_recreated_on_change(env: WriterEnv) -> None:
    tc = env.otc.seed_toolchain(name="gone")
    async with env.writer() as w:
        await env.publish(command("apply", key="r", toolchain_id=tc, revision=1))
        await env.wait_handled(w, 1, COMMANDS_QUEUE)
        (tool,) = env.otc.tools(tc)
        env.otc.emulator.store.delete_tool(tc, tool.id)
        await env.publish(
            command("apply", key="r", toolchain_id=tc, revision=2, repo="https://github.com/o/new")
        )
        await wait_until(lambda: len(env.otc.tools(tc)) == 1, timeout=10)
        (tool,) = env.otc.tools(tc)
        assert tool.parameters["repo_url"] == "https://github.com/o/new"


def held(writer: OtcWriter, queue: str) -> float:
    value = writer.infra.health.registry.get_sample_value("kotc_consumer_held", {"queue": queue})
    return value or 0.0


async def waiting_in(amqp_url: str, queue: str) -> int:
    """Messages ready in ``queue`` and its delay queues (passive declarations: exact counts)."""
    conn = AmqpConnection(amqp_url, name="test-depth", connect_timeout=5)
    await conn.connect()
    try:
        channel = await conn.channel()
        total = 0
        for name in (queue, *(f"{queue}.retry.{d}s" for d in FAST.retry_delays_s)):
            declared = await channel.declare_queue(name, passive=True)
            total += declared.declaration_result.message_count or 0
        return total
    finally:
        await conn.close()


async def test_sigterm_with_both_queues_busy_and_otc_slow_ends_within_the_deadline(
    env: WriterEnv, caplog: pytest.LogCaptureFixture
) -> None:
    """Both consumers have handlers waiting on slow OTC calls: their drains overlap and end within
    SHUTDOWN_TIMEOUT_S (before: one after the other, each up to 10 s, so the deadline cut the
    second short: otc-writer took 20 s to stop). What did not finish goes back to the queue."""
    tc = env.otc.seed_toolchain(name="busy")
    n = 8
    loop = asyncio.get_running_loop()
    async with env.writer(shutdown_timeout_s=5.0) as w:
        await env.publish(service_event("bound", revision=1, toolchains=[tc], toolchain_id=tc))
        await env.wait_handled(w, 1)
        env.otc.set_faults(latency_ms=4_000)  # within OTC_TIMEOUT_S: one call per handler, no retry
        await env.publish(*(command("apply", key=f"k{i}", toolchain_id=tc, revision=1) for i in range(n)))
        await env.publish(*(trigger_event(trigger(f"t{i}")) for i in range(n)))
        await wait_until(
            lambda: held(w, EVENTS_QUEUE) == n and held(w, COMMANDS_QUEUE) == n,
            timeout=20,
            what="both queues busy",
        )
        caplog.set_level(logging.WARNING, logger="shared.lifecycle")
        stopping = loop.time()
    took = loop.time() - stopping
    overran = [r.getMessage() for r in caplog.records if "did not close within" in r.getMessage()]
    assert not overran, f"stopped in {took:.1f}s: {overran}"
    # Nothing lost: every message was handled, or is back in its queue for the next writer.
    handled = {EVENTS_QUEUE: w.handled[EVENTS_QUEUE] - 1, COMMANDS_QUEUE: w.handled[COMMANDS_QUEUE]}
    for queue in (EVENTS_QUEUE, COMMANDS_QUEUE):
        assert handled[queue] + await waiting_in(env.amqp_url, queue) == n, queue
