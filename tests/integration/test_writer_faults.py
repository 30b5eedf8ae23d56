"""otc-writer under OTC faults: 5xx, 429 storms, commit-then-drop, permanent 400, two replicas."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import aiohttp
import pytest
from aio_pika.abc import AbstractIncomingMessage
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families

from emulators.otc.faults import ErrorRule, FaultConfig, RateLimitFault
from services.otc_writer.app import COMMANDS_QUEUE, EVENTS_QUEUE, Deps
from services.otc_writer.desired import TRIGGER_PURPOSE, trigger_tool_name
from services.otc_writer.ledger import LeaseLost
from shared.amqp.consumer import ERROR_HEADER, REASON_HEADER
from tests.helpers import drain_queue, wait_until
from tests.integration.writer_support import (
    FAST,
    WriterEnv,
    command,
    dead_letters,
    service_event,
    snapshot_event,
    trigger,
    trigger_event,
    writes,
)


async def test_30_percent_5xx_converges_without_duplicates(env: WriterEnv) -> None:
    tc = env.otc.seed_toolchain(name="flaky")
    triggers = [trigger(f"t{i}") for i in range(12)]
    env.otc.set_faults(seed=7, error_rate=0.3)
    async with env.writer() as w:
        await env.publish(
            snapshot_event(triggers, revision=1),
            service_event("bound", revision=1, toolchains=[tc], toolchain_id=tc),
        )
        await env.wait_handled(w, 2)
        await wait_until(lambda: len(env.otc.tools(tc)) == 12, timeout=30)
        expected = sorted(trigger_tool_name(t.key) for t in triggers)
        assert env.tool_names(tc) == expected  # exactly one per trigger
        assert any(c.fault == "5xx" for c in env.otc.calls())
        # One successful POST per tool, whatever failed around it.
        assert len([c for c in writes(env.otc.calls()) if c.method == "POST"]) == 12
        # After faults stop, an unchanged snapshot costs nothing.
        env.otc.clear_faults()
        mark = env.otc.call_count
        await env.publish(snapshot_event(triggers, revision=2))
        await env.wait_handled(w, 3)
        assert env.otc.calls(mark) == []


async def test_429_storm_is_honoured(env: WriterEnv) -> None:
    tc = env.otc.seed_toolchain(name="limited")
    env.otc.set_faults(rate_limit=RateLimitFault(count=4, retry_after=1))
    # One request in flight at a time: a request already sent when a 429 arrives cannot be recalled,
    # so "no call before the advertised time" is checkable only for calls that could have waited.
    async with env.writer(otc_max_concurrency=1) as w:
        for i in range(5):
            await env.publish(command("apply", key=f"r{i}", toolchain_id=tc, revision=1))
        await env.wait_handled(w, 5, COMMANDS_QUEUE)
    calls = env.otc.calls()
    assert sum(1 for c in calls if c.status == 429) >= 1
    assert [c for c in calls if c.early] == []  # never called before the advertised time
    assert len(env.otc.tools(tc)) == 5
    assert len([c for c in writes(calls) if c.method == "POST"]) == 5


async def test_commit_then_drop_creates_no_duplicate(env: WriterEnv) -> None:
    tc = env.otc.seed_toolchain(name="dropping")
    env.otc.set_faults(drop_after_commit=3)
    async with env.writer() as w:
        await env.publish(
            command("apply", key="r1", toolchain_id=tc, revision=1),
            command("apply", key="r2", toolchain_id=tc, revision=1),
        )
        await env.wait_handled(w, 2, COMMANDS_QUEUE)
        assert sorted(t.name or "" for t in env.otc.tools(tc)) == ["kabanero-repo r1", "kabanero-repo r2"]
        assert any(c.dropped for c in env.otc.calls())
        # A dropped PATCH is also applied exactly once in effect.
        await env.publish(
            command("apply", key="r1", toolchain_id=tc, revision=2, repo="https://github.com/org/b")
        )
        await env.wait_handled(w, 3, COMMANDS_QUEUE)
        r1 = next(t for t in env.otc.tools(tc) if t.name == "kabanero-repo r1")
        assert r1.parameters["repo_url"] == "https://github.com/org/b"
        assert len(env.otc.tools(tc)) == 2


async def test_permanent_400_is_dead_lettered_and_others_proceed(env: WriterEnv) -> None:
    tc = env.otc.seed_toolchain(name="strict")
    env.otc.set_faults(
        FaultConfig(
            rules=[
                ErrorRule(
                    path=r"/toolchain/v2/toolchains/.*/tools",
                    method="POST",
                    name="kabanero-repo bad",
                    status=400,
                    message="Parameter 'repo_url' is not allowed here",
                )
            ]
        )
    )
    async with env.writer() as w:
        await env.publish(
            command("apply", key="bad", toolchain_id=tc, revision=1),
            command("apply", key="good", toolchain_id=tc, revision=1),
        )
        await env.wait_handled(w, 1, COMMANDS_QUEUE)
        dead: list[AbstractIncomingMessage] = []

        async def dead_lettered() -> bool:
            dead.extend(await drain_queue(env.amqp_url, f"{COMMANDS_QUEUE}.dead", timeout=0.2))
            return bool(dead)

        await wait_until(dead_lettered, timeout=10, what="a dead letter")
        ledger = await w.ledger.get("github", "bad", tc)
    assert [t.name for t in env.otc.tools(tc)] == ["kabanero-repo good"]
    (msg,) = dead
    headers = msg.headers or {}
    assert headers[REASON_HEADER] == "permanent error"
    error = str(headers[ERROR_HEADER])
    assert "Parameter 'repo_url' is not allowed here" in error
    assert "X-Global-Transaction-ID" in error
    # Exactly one attempt: a permanent error is not retried.
    assert len([c for c in env.otc.calls() if c.method == "POST" and c.status == 400]) == 1
    assert ledger is not None and "not allowed" in ledger["last_error"]


async def test_two_writers_keep_order_per_key(env: WriterEnv) -> None:
    tc = env.otc.seed_toolchain(name="shared")
    keys = [f"k{i}" for i in range(4)]
    revisions = range(1, 9)
    async with (
        env.writer(Deps(topology=FAST, owner="w1")) as w1,
        env.writer(Deps(topology=FAST, owner="w2")) as w2,
    ):
        env.otc.set_faults(latency_ms=5)
        for rev in revisions:
            for key in keys:
                await env.publish(
                    command(
                        "apply",
                        key=key,
                        toolchain_id=tc,
                        revision=rev,
                        repo=f"https://github.com/o/{key}-{rev}",
                    )
                )
        total = len(keys) * len(revisions)
        await wait_until(lambda: w1.handled[COMMANDS_QUEUE] + w2.handled[COMMANDS_QUEUE] >= total, timeout=30)
        assert w1.handled[COMMANDS_QUEUE] > 0 and w2.handled[COMMANDS_QUEUE] > 0
    tools = {t.name or "": t for t in env.otc.tools(tc)}
    assert sorted(tools) == sorted(f"kabanero-repo {k}" for k in keys)  # one tool per key
    for key in keys:
        # The newest revision wins, and the writes of one key went out in revision order.
        assert tools[f"kabanero-repo {key}"].parameters["repo_url"].endswith(f"{key}-8")
        applied = [
            int(str((c.body or {}).get("parameters", {}).get("repo_url", "")).rsplit("-", 1)[1])
            for c in writes(env.otc.calls())
            if c.method in ("POST", "PATCH")
            and (
                (c.body or {}).get("name") == f"kabanero-repo {key}"
                or c.path.endswith(tools[f"kabanero-repo {key}"].id)
            )
        ]
        assert applied == sorted(applied), (key, applied)
        assert len(applied) <= len(revisions)


async def test_lease_outlives_its_ttl_while_held_two_writers_one_post(
    env: WriterEnv, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each POST of a tool takes longer than the lease TTL: the holder must keep renewing its lease.

    Otherwise the other writer takes the expired lease mid-POST, finds no tool yet and creates a
    second one. Both writers get one copy of the same command (prefetch 1 each).
    """
    tc = env.otc.seed_toolchain(name="slow")
    faults = env.otc.emulator.faults
    plain = faults.before_auth
    posts_started = 0

    async def slow_tool_posts(request: web.Request) -> None:
        nonlocal posts_started
        if request.method == "POST" and request.path.endswith("/tools"):
            posts_started += 1
            await asyncio.sleep(2.5)  # the emulator's latency, for tool creates only
        await plain(request)

    monkeypatch.setattr(faults, "before_auth", slow_tool_posts)
    short = {"lease_ttl_s": 0.8, "lease_wait_s": 10.0, "prefetch": 1}
    async with (
        env.writer(Deps(topology=FAST, owner="w1"), **short) as w1,
        env.writer(Deps(topology=FAST, owner="w2"), **short) as w2,
    ):
        await wait_until(lambda: all(c.consuming for w in (w1, w2) for c in w.consumers), what="consumers")
        cmd = command("apply", key="slow", toolchain_id=tc, revision=1)
        await env.publish(cmd, cmd)
        await wait_until(
            lambda: w1.handled[COMMANDS_QUEUE] + w2.handled[COMMANDS_QUEUE] >= 2, timeout=30, what="both"
        )
        assert w1.handled[COMMANDS_QUEUE] == w2.handled[COMMANDS_QUEUE] == 1  # they did contend
    assert len(env.otc.tools(tc)) == 1
    assert posts_started == 1
    assert len([c for c in writes(env.otc.calls()) if c.method == "POST"]) == 1


async def test_lost_lease_aborts_before_the_otc_write(env: WriterEnv) -> None:
    """A holder whose lease was taken over (or expired unrenewed) must not start its OTC write."""
    async with env.writer(lease_ttl_s=30.0) as w:
        ledger = w.ledger
        lease = await ledger.acquire("github", "k", "tc", "me")
        await ledger.coll.update_one({"_id": lease.id}, {"$set": {"lease_owner": "thief"}})
        async with ledger.kept(lease):
            assert not await ledger.renew(lease)
            with pytest.raises(LeaseLost):
                await ledger.mark_pending(lease, "create", "x")
        doc = await ledger.coll.find_one({"_id": lease.id})
        assert doc is not None and doc["lease_owner"] == "thief" and not doc.get("pending")

        # Our renewals failed until it expired; nobody took it yet. Fenced locally and in the update.
        mine = await ledger.acquire("github", "k2", "tc", "me")
        mine.until = datetime.now(UTC)
        with pytest.raises(LeaseLost):
            await ledger.mark_pending(mine, "create", "x")
        assert await ledger.renew(mine)  # still ours: a renewal that gets through restores it
        await ledger.coll.update_one({"_id": mine.id}, {"$set": {"lease_until": datetime.now(UTC)}})
        with pytest.raises(LeaseLost):
            await ledger.mark_pending(mine, "create", "x")
        mine.lost = False
        assert await ledger.renew(mine)
        await ledger.mark_pending(mine, "create", "x")
        doc = await ledger.coll.find_one({"_id": mine.id})
        assert doc is not None and doc["pending"]["op"] == "create"


async def test_crash_between_otc_write_and_commit_is_adopted_not_repeated(env: WriterEnv) -> None:
    """In-process crash between the OTC write and the ledger commit: the retry adopts, never repeats."""
    tc = env.otc.seed_toolchain(name="crash")
    crashed = asyncio.Event()

    async def crash(op: str, ledger_id: str) -> None:
        if not crashed.is_set():
            crashed.set()
            raise RuntimeError("injected crash after the OTC write")

    async with env.writer(Deps(topology=FAST, after_otc_write=crash)) as w:
        await env.publish(command("apply", key="x", toolchain_id=tc, revision=1))
        await env.wait_handled(w, 1, COMMANDS_QUEUE)
    assert len(env.otc.tools(tc)) == 1
    assert len([c for c in writes(env.otc.calls()) if c.method == "POST"]) == 1


async def test_redelivery_after_a_failed_otc_write_still_applies_the_change(env: WriterEnv) -> None:
    """The projection is written before OTC is called: the redelivered event must still converge.

    The first delivery of the trigger event updates the projection, then its only POST fails (5xx,
    no in-client retry); the redelivery carries the same revision and must not be skipped as stale.
    """
    tc = env.otc.seed_toolchain(name="redelivered")
    t = trigger("late")
    env.otc.set_faults(
        FaultConfig(
            rules=[
                ErrorRule(
                    path=r"/toolchain/v2/toolchains/.*/tools",
                    method="POST",
                    name=trigger_tool_name(t.key),
                    status=503,
                    times=1,
                )
            ]
        )
    )
    async with env.writer(otc_max_attempts=1) as w:
        await env.publish(service_event("bound", revision=1, toolchains=[tc], toolchain_id=tc))
        await env.wait_handled(w, 1)
        await env.publish(trigger_event(t))
        await env.wait_handled(w, 2)  # handled = succeeded, i.e. after the redelivery
    assert any(c.fault for c in env.otc.calls()), "the fault never fired"
    assert env.tool_names(tc) == [trigger_tool_name(t.key)]
    assert len([c for c in writes(env.otc.calls()) if c.method == "POST"]) == 1


async def test_permanent_error_does_not_swallow_a_transient_one_in_the_same_message(env: WriterEnv) -> None:
    """One snapshot, two tools: a permanent 400 on one and a single 503 on the other.

    The message must be retried (not dead-lettered at once) so the transient failure converges.
    """
    tc = env.otc.seed_toolchain(name="mixed")
    bad, flaky = trigger("bad"), trigger("flaky")
    tools = r"/toolchain/v2/toolchains/.*/tools"
    env.otc.set_faults(
        FaultConfig(
            rules=[
                ErrorRule(path=tools, method="POST", name=trigger_tool_name(bad.key), status=400),
                ErrorRule(path=tools, method="POST", name=trigger_tool_name(flaky.key), status=503, times=1),
            ]
        )
    )
    async with env.writer(otc_max_attempts=1) as w:
        await env.publish(service_event("bound", revision=1, toolchains=[tc], toolchain_id=tc))
        await env.wait_handled(w, 1)
        await env.publish(snapshot_event([bad, flaky], revision=1))
        await wait_until(
            lambda: env.tool_names(tc) == [trigger_tool_name(flaky.key)], timeout=15, what="flaky tool"
        )
        # The retry still dead-letters the message with the reason, without asking OTC again.
        (dead,) = await dead_letters(env, EVENTS_QUEUE, wait=True)
    assert "Request rejected" in str((dead.headers or {})[ERROR_HEADER])
    assert len([c for c in writes(env.otc.calls()) if c.method == "POST"]) == 1
    assert len([c for c in env.otc.calls() if c.method == "POST" and c.status == 400]) == 1


async def _refused_skips(port: int) -> float:
    """``kotc_otc_tool_outcomes_total{purpose="trigger", outcome="refused"}`` as /metrics serves it."""
    async with aiohttp.ClientSession() as session, session.get(f"http://127.0.0.1:{port}/metrics") as resp:
        text = await resp.text()
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "kotc_otc_tool_outcomes_total"
        and sample.labels == {"purpose": "trigger", "outcome": "refused"}
    )


async def test_refused_trigger_tool_is_not_reattempted_until_its_content_changes(env: WriterEnv) -> None:
    """A 400 on a tool is remembered per content: unchanged snapshots skip it and are acked."""
    tc = env.otc.seed_toolchain(name="refusing")
    t = trigger("refused")
    name = trigger_tool_name(t.key)
    tools = r"/toolchain/v2/toolchains/.*/tools"
    env.otc.set_faults(
        FaultConfig(
            rules=[ErrorRule(path=tools, method="POST", name=name, status=400, message="no such phase")]
        )
    )
    async with env.writer() as w:
        await env.publish(service_event("bound", revision=1, toolchains=[tc], toolchain_id=tc))
        await env.wait_handled(w, 1)
        await env.publish(snapshot_event([t], revision=1))
        (first,) = await dead_letters(env, EVENTS_QUEUE, wait=True)
        assert "no such phase" in str((first.headers or {})[ERROR_HEADER])
        entry = await w.ledger.get(TRIGGER_PURPOSE, t.key.id, tc)
        assert entry is not None and entry["refused_hash"] and entry["refused_at"]
        assert "no such phase" in entry["last_error"] and "X-Global-Transaction-ID" in entry["last_error"]

        # Unchanged: a later snapshot and a redelivered trigger event cost no OTC call and are acked.
        mark = env.otc.call_count
        await env.publish(snapshot_event([t], revision=2), trigger_event(t, "updated"))
        await env.wait_handled(w, 3)
        assert env.otc.calls(mark) == []
        assert await dead_letters(env, EVENTS_QUEUE, wait=False) == []
        assert await _refused_skips(w.http_port) == 2

        # The trigger changes (and OTC would now accept it): exactly one POST, the tool exists.
        env.otc.clear_faults()
        mark = env.otc.call_count
        await env.publish(trigger_event(trigger("refused", revision=2, body="v2"), "updated"))
        await env.wait_handled(w, 4)
        assert [c.method for c in writes(env.otc.calls(mark))] == ["POST"]
        assert env.tool_names(tc) == [name]
        entry = await w.ledger.get(TRIGGER_PURPOSE, t.key.id, tc)
        assert entry is not None and entry["refused_hash"] is None and entry["last_error"] is None
    assert await dead_letters(env, EVENTS_QUEUE, wait=False) == []


async def test_refused_command_resent_unchanged_is_acked_without_a_call(env: WriterEnv) -> None:
    """``otc.tool.apply`` refused, re-sent unchanged: acked, no call; after a remove it is tried again."""
    tc = env.otc.seed_toolchain(name="refusing-commands")
    tools = r"/toolchain/v2/toolchains/.*/tools"
    env.otc.set_faults(
        FaultConfig(rules=[ErrorRule(path=tools, method="POST", name="kabanero-repo bad", status=400)])
    )

    def refused_posts() -> int:
        return len([c for c in env.otc.calls() if c.method == "POST" and c.status == 400])

    async with env.writer() as w:
        await env.publish(command("apply", key="bad", toolchain_id=tc, revision=1))
        assert len(await dead_letters(env, COMMANDS_QUEUE, wait=True)) == 1
        mark = env.otc.call_count
        await env.publish(
            command("apply", key="bad", toolchain_id=tc, revision=1),
            command("apply", key="bad", toolchain_id=tc, revision=2),  # new revision, same content
        )
        await env.wait_handled(w, 2, COMMANDS_QUEUE)
        assert env.otc.calls(mark) == []
        assert await dead_letters(env, COMMANDS_QUEUE, wait=False) == []

        # An explicit remove forgets the refusal: the same content is attempted (and refused) again.
        await env.publish(command("remove", key="bad", toolchain_id=tc, revision=3))
        await env.wait_handled(w, 3, COMMANDS_QUEUE)
        await env.publish(command("apply", key="bad", toolchain_id=tc, revision=4))
        assert len(await dead_letters(env, COMMANDS_QUEUE, wait=True)) == 1
    assert refused_posts() == 2
    assert env.otc.tools(tc) == []


async def test_invalid_trigger_data_is_dead_lettered_at_once_naming_model_and_field(env: WriterEnv) -> None:
    """The events consumer decodes each event's data once: invalid data never reaches the handler
    (no OTC call, no projection write) and dead-letters with a reason naming the model and field;
    the valid events around it still run."""
    tc = env.otc.seed_toolchain(name="decoded")
    good = trigger("ok")
    bad = trigger_event(trigger("bad"))
    bad.data["revision"] = -1
    async with env.writer() as w:
        await env.publish(
            bad,
            snapshot_event([good], revision=1),
            service_event("bound", revision=1, toolchains=[tc], toolchain_id=tc),
        )
        (dead,) = await dead_letters(env, EVENTS_QUEUE, wait=True)
        await env.wait_handled(w, 2)
        assert await w.projection.get_trigger(trigger("bad").key.id) is None
    headers = dead.headers or {}
    assert (
        headers[REASON_HEADER]
        == "invalid TriggerData: data.revision: Input should be greater than or equal to 0"
    )
    assert env.tool_names(tc) == [trigger_tool_name(good.key)]
