"""otc-writer's audit: drift made by hand in OTC is repaired; no drift costs only the list GETs."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from services.otc_writer.app import COMMANDS_QUEUE, OtcWriter
from services.otc_writer.desired import TRIGGER_PURPOSE, trigger_tool_name
from tests.helpers import wait_until
from tests.integration.writer_support import (
    WriterEnv,
    command,
    service_event,
    trigger,
    trigger_event,
    writes,
)


@dataclass
class World:
    writer: OtcWriter
    tc: str
    names: list[str]
    """Every tool name we applied in ``tc`` (two trigger tools, one GitHub tool), sorted."""


@asynccontextmanager
async def converged(env: WriterEnv, **overrides: Any) -> AsyncIterator[World]:
    """A writer after a normal lifecycle converged: two trigger tools and one GitHub tool in one toolchain."""
    tc = env.otc.seed_toolchain(name="audited")
    a, b = trigger("a"), trigger("b")
    async with env.writer(**overrides) as w:
        await env.publish(
            service_event("bound", revision=1, toolchains=[tc], toolchain_id=tc),
            trigger_event(a),
            trigger_event(b),
        )
        await env.wait_handled(w, 3)
        await env.publish(command("apply", key="repo-1", toolchain_id=tc, revision=1))
        await env.wait_handled(w, 1, COMMANDS_QUEUE)
        names = sorted([trigger_tool_name(a.key), trigger_tool_name(b.key), "kabanero-repo repo-1"])
        assert env.tool_names(tc) == names
        yield World(w, tc, names)


def tool_named(env: WriterEnv, tc: str, name: str) -> str:
    (tool,) = [t for t in env.otc.tools(tc) if t.name == name]
    return tool.id


async def test_no_drift_costs_only_list_gets(env: WriterEnv) -> None:
    async with converged(env) as world:
        mark = env.otc.call_count
        report = await world.writer.audit_once()
        calls = env.otc.calls(mark)
        assert calls and {c.method for c in calls} == {"GET"}  # the paged list, nothing else
        assert report.tools_checked == 3 and not report.repairs and not report.errors


async def test_tool_deleted_by_hand_is_recreated_once(env: WriterEnv) -> None:
    async with converged(env) as world:
        a_name = trigger_tool_name(trigger("a").key)
        old_id = tool_named(env, world.tc, a_name)
        env.otc.emulator.store.delete_tool(world.tc, old_id)
        mark = env.otc.call_count
        report = await world.writer.audit_once()
        assert [c.method for c in writes(env.otc.calls(mark))] == ["POST"]
        assert env.tool_names(world.tc) == world.names
        new_id = tool_named(env, world.tc, a_name)
        assert new_id != old_id
        entry = await world.writer.ledger.get(TRIGGER_PURPOSE, trigger("a").key.id, world.tc)
        assert entry is not None and entry["tool_id"] == new_id and entry["pending"] is None
        assert dict(report.repairs) == {"recreate": 1}
        # Converged: the next pass writes nothing.
        mark = env.otc.call_count
        await world.writer.audit_once()
        assert writes(env.otc.calls(mark)) == []


async def test_tool_edited_by_hand_is_patched_back_once(env: WriterEnv) -> None:
    async with converged(env) as world:
        tool_id = tool_named(env, world.tc, "kabanero-repo repo-1")
        store = env.otc.emulator.store
        record = store.tool(world.tc, tool_id)
        applied = dict(record.parameters)
        edited = {**applied, "repo_url": "https://github.com/evil/fork", "hand_added": "keep me"}
        store.replace_tool(record.model_copy(update={"name": "renamed by hand", "parameters": edited}))
        mark = env.otc.call_count
        report = await world.writer.audit_once()
        (patch,) = writes(env.otc.calls(mark))
        assert patch.method == "PATCH" and patch.path.endswith(tool_id)
        # Only what we own: the changed key and the name; the key added by hand is not nulled.
        assert patch.body == {"parameters": {"repo_url": applied["repo_url"]}, "name": "kabanero-repo repo-1"}
        restored = store.tool(world.tc, tool_id)
        assert restored.name == "kabanero-repo repo-1"
        assert restored.parameters == {**applied, "hand_added": "keep me"}
        assert dict(report.repairs) == {"patch": 1}
        mark = env.otc.call_count
        await world.writer.audit_once()
        assert writes(env.otc.calls(mark)) == []


async def test_duplicate_by_name_is_deleted_and_ours_kept(env: WriterEnv) -> None:
    async with converged(env) as world:
        b_name = trigger_tool_name(trigger("b").key)
        ours = tool_named(env, world.tc, b_name)
        store = env.otc.emulator.store
        params = dict(store.tool(world.tc, ours).parameters)
        duplicate = store.create_tool(world.tc, tool_type_id="customtool", name=b_name, parameters=params)
        foreign = store.create_tool(world.tc, tool_type_id="customtool", name="not ours", parameters=params)
        mark = env.otc.call_count
        report = await world.writer.audit_once()
        (delete,) = writes(env.otc.calls(mark))
        assert delete.method == "DELETE" and delete.path.endswith(duplicate.id)
        ids = {t.id for t in env.otc.tools(world.tc)}
        assert ours in ids and foreign.id in ids and duplicate.id not in ids
        assert env.tool_names(world.tc) == sorted([*world.names, "not ours"])
        assert dict(report.repairs) == {"delete_duplicate": 1}


async def test_audit_under_5xx_leaves_the_rest_for_the_next_pass(env: WriterEnv) -> None:
    fast = {"otc_audit_interval_s": 0.3, "otc_max_attempts": 2, "otc_breaker_reset_s": 0.3}
    async with converged(env, **fast) as world:
        w = world.writer
        a_name = trigger_tool_name(trigger("a").key)
        env.otc.emulator.store.delete_tool(world.tc, tool_named(env, world.tc, a_name))
        env.otc.set_faults(error_rate=1.0)
        report = await w.audit_once()  # a direct pass: no exception, the failure is reported
        assert report.errors and not report.repairs
        passes = w.auditor.passes
        await wait_until(
            lambda: w.auditor.passes >= passes + 2, timeout=15, what="periodic passes under faults"
        )
        task = next(t for t in w.supervisor.tasks if t.get_name().endswith(":otc-audit"))
        assert not task.done()
        assert a_name not in env.tool_names(world.tc)
        env.otc.clear_faults()
        await wait_until(lambda: env.tool_names(world.tc) == world.names, timeout=15, what="tool recreated")
        assert not task.done()
    assert len([c for c in writes(env.otc.calls()) if c.method == "POST"]) == 4  # 3 at first, 1 repair
