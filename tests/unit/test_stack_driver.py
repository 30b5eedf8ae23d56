"""The stack driver's definitions (scripts/driver.py): what counts as an OTC write, what a tool is."""

from __future__ import annotations

from typing import Any

import pytest

from scripts.driver import FAULT_ENV, fault_env, is_tool_write, tool_kind

TOOLS = "/toolchain/v2/toolchains/tc-1/tools"


def call(method: str, path: str, status: int | None, *, dropped: bool = False) -> dict[str, Any]:
    return {"method": method, "path": path, "status": status, "dropped": dropped}


@pytest.mark.parametrize(
    ("record", "write"),
    [
        (call("POST", TOOLS, 201), True),
        (call("PATCH", f"{TOOLS}/t-1", 200), True),
        (call("DELETE", f"{TOOLS}/t-1", 204), True),
        (call("POST", TOOLS, 201, dropped=True), True),  # committed, then the answer was dropped
        (call("POST", TOOLS, None, dropped=True), True),
        (call("POST", TOOLS, 503), False),  # refused: nothing changed in OTC
        (call("PATCH", f"{TOOLS}/t-1", 429), False),
        (call("DELETE", f"{TOOLS}/t-1", 404), False),
        (call("POST", TOOLS, None), False),  # no answer and not committed
        (call("GET", TOOLS, 200), False),
        (call("POST", "/toolchain/v2/toolchains", 201), False),
        (call("POST", "/identity/token", 200), False),
    ],
)
def test_an_otc_write_is_a_committed_create_update_or_delete_of_a_tool(
    record: dict[str, Any], write: bool
) -> None:
    assert is_tool_write(record) is write


def test_tools_by_kind_tell_cards_from_triggers() -> None:
    def custom(kind: str) -> dict[str, Any]:
        return {"tool_type_id": "customtool", "parameters": {"type": kind}}

    assert tool_kind(custom("Kabanero Event Trigger")) == "Kabanero Event Trigger"
    assert tool_kind(custom("Tekton Pipeline")) == "Tekton Pipeline"
    assert tool_kind(custom("Tekton EventListener")) == "Tekton EventListener"
    assert tool_kind({"tool_type_id": "customtool", "parameters": {}}) == "customtool"
    assert tool_kind({"tool_type_id": "githubconsolidated", "parameters": {}}) == "githubconsolidated"


def test_fault_env_adds_to_the_short_leases_without_changing_them() -> None:
    env = fault_env(otc_writer={"OTC_BREAKER_RESET_S": "2"}, kabanero_watcher={"LEASE_RENEW_S": "2"})
    assert env["otc-writer"] == {**FAULT_ENV["otc-writer"], "OTC_BREAKER_RESET_S": "2"}
    assert env["kabanero-watcher"]["LEASE_RENEW_S"] == "2"
    assert FAULT_ENV["kabanero-watcher"]["LEASE_RENEW_S"] == "1"  # a copy was changed
