"""``kabanero-otc plan`` without I/O: which toolchains it reads, what it would do for each desired
tool matched as otc-writer and its audit match it, and the exit code. End to end:
tests/e2e/test_cli.py (a tool deleted by hand, a refused tool)."""

from __future__ import annotations

import json
from typing import Any

from kotc_cli import plan
from kotc_cli.errors import OK, PROBLEM
from services.otc_writer.desired import DesiredTool
from services.otc_writer.ledger import Intent, LedgerEntry, ledger_id
from services.otc_writer.otc_client import Tool


def _want(key: str, tc: str = "tc", name: str | None = None, **parameters: Any) -> DesiredTool:
    return DesiredTool(
        purpose="trigger",
        key=key,
        toolchain_id=tc,
        tool_type_id="customtool",
        name=name or f"tool {key}",
        parameters=parameters or {"label": key},
        revision=1,
    )


def _entry(want: DesiredTool, **fields: Any) -> LedgerEntry:
    base = {
        "_id": ledger_id(want.purpose, want.key, want.toolchain_id),
        "purpose": want.purpose,
        "key": want.key,
        "toolchain_id": want.toolchain_id,
    }
    return LedgerEntry.model_validate(base | fields)


def _tool(tool_id: str, name: str, tc: str = "tc", **parameters: Any) -> Tool:
    return Tool(id=tool_id, toolchain_id=tc, tool_type_id="customtool", name=name, parameters=parameters)


def _ids(*wants: DesiredTool) -> dict[str, DesiredTool]:
    return {ledger_id(w.purpose, w.key, w.toolchain_id): w for w in wants}


def test_each_desired_tool_is_matched_by_ledger_id_then_by_name() -> None:
    a, b, c = _want("a"), _want("b"), _want("c")
    ledger = {ledger_id("trigger", "a", "tc"): _entry(a, present=True, tool_id="t-a")}
    tools = {
        "tc": [
            _tool("t-a", "renamed by hand", label="a"),  # ours by id: its name differs
            _tool("t-b", "tool b", label="b"),  # ours by name, identical
            _tool("t-b2", "tool b", label="b"),  # a second tool with our name
        ]
    }
    steps = plan.compare(_ids(a, b, c), ledger, tools)
    assert [(s.action, s.name, s.tool_id, s.detail) for s in steps] == [
        ("update", "tool a", "t-a", "differs: name"),
        ("unchanged", "tool b", "t-b", ""),
        ("delete-duplicate", "tool b", "t-b2", "second tool with our name"),
        ("create", "tool c", None, "not in OTC"),
    ]
    assert [s.action for s in plan.changes(steps)] == ["update", "delete-duplicate", "create"]


def test_a_refused_content_is_not_retried_and_a_tool_no_longer_wanted_is_deleted() -> None:
    a, gone = _want("a"), _want("gone")
    ledger = {
        ledger_id("trigger", "a", "tc"): _entry(a, refused_hash=a.hash, last_error="name not allowed"),
        ledger_id("trigger", "gone", "tc"): _entry(gone, present=True, tool_id="t-gone"),
    }
    steps = plan.compare(_ids(a), ledger, {"tc": [_tool("t-gone", "tool gone")]})
    assert [(s.action, s.name, s.detail) for s in steps] == [
        ("refused", "tool a", "OTC: name not allowed"),
        ("delete", "tool gone", "no longer desired"),
    ]


def test_narrow_to_one_toolchain_reads_it_and_every_toolchain_a_tool_is_wanted_or_recorded_in() -> None:
    a, b = _want("a", tc="tc1"), _want("b", tc="tc2")
    flying = _entry(_want("f", tc="tc3"), intent=Intent(op="create", name="f"))
    idle = _entry(_want("i", tc="tc4"))  # neither present nor in flight: nothing to read
    ledger = {e.id: e for e in (flying, idle)}
    every = plan.narrow(plan.Found(_ids(a, b), ledger), None)
    assert every.toolchains == ["tc1", "tc2", "tc3"]
    one = plan.narrow(plan.Found(_ids(a, b), ledger), "tc9")
    assert (one.toolchains, one.wanted, one.ledger) == (["tc9"], {}, {})


def test_render_counts_the_changes_and_sets_the_exit_code() -> None:
    a, c = _want("a"), _want("c")
    found = plan.Found(_ids(a, c), {}, ["tc", "lost"], {"tc": [_tool("t-a", "tool a", label="a")]}, ["lost"])
    report = plan.render(found, plan.compare(found.wanted, found.ledger, found.tools))
    assert report.code == PROBLEM
    data = json.loads(report.render(as_json=True))
    assert set(data) == {"toolchains", "missing_toolchains", "steps", "changes"}
    assert data["changes"] == 1 and data["missing_toolchains"] == ["lost"]
    assert data["steps"][0] == {
        "action": "unchanged",
        "toolchain_id": "tc",
        "purpose": "trigger",
        "name": "tool a",
        "tool_id": "t-a",
        "detail": "",
    }
    text = report.render(as_json=False)
    assert "toolchains not found in OTC: lost" in text and text.endswith("would change: 1 create")
    quiet = plan.render(plan.Found({}, {}), [])
    assert quiet.code == OK and quiet.render(as_json=False).endswith(
        "no changes: OTC matches the desired state"
    )
