"""``parameters.events: auto`` end to end: the real processes, the OTC emulator's broker-backed tools.

Binding a Kabanero service with ``events: auto`` makes otc-writer add a Kabanero Events tool
(``tool_type_id`` = the events broker's service id) to the toolchain; OTC (the emulator) then
provisions and binds that Events service through our own events broker, and the trigger tools
follow. Unbind and delete remove that tool only: a Kabanero Events tool the user added by hand stays.
Under commit-then-drop and a SIGKILL of otc-writer there is still exactly one auto Events tool.
"""

from __future__ import annotations

import signal
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from scripts.driver import EVENTS_TOOL, GITHUB, TRIGGER, Driver, count, driven, tool_kind
from tests.helpers import wait_until

pytestmark = pytest.mark.e2e
PARAMS = {"cluster": "default", "namespace": "kabanero"}


async def shows(w: Driver, *, events: int, triggers: int, github: int) -> bool:
    tools = await w.tools()
    return (count(tools, EVENTS_TOOL), count(tools, TRIGGER), count(tools, GITHUB)) == (
        events,
        triggers,
        github,
    )


async def hand_add_events_tool(w: Driver) -> dict[str, Any]:
    """What a user does in OTC: add a Kabanero Events tool to the toolchain (Toolchain API)."""
    body = {"tool_type_id": EVENTS_TOOL, "name": "my events service", "parameters": PARAMS}
    status, tool = await w.otc_api("POST", f"/toolchain/v2/toolchains/{w.toolchain}/tools", body)
    assert status == 201, tool
    return dict(tool)


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[Driver]:
    env = {"otc-writer": {"LEASE_TTL_S": "2", "LEASE_WAIT_S": "10"}}
    async with driven("test-auto-events", tmp_path / ".run", extra_env=env) as w:
        yield w


async def test_auto_events_tool_added_removed_never_duplicated_hand_added_untouched(world: Driver) -> None:
    w, stack = world, world.stack
    # The user adds a Kabanero Events tool by hand: OTC provisions and binds it at our events broker.
    hand = await hand_add_events_tool(w)
    await wait_until(lambda: shows(w, events=1, triggers=2, github=0), timeout=45, what="hand-added Events")

    otc = w.platform
    reply = await otc.provision("kabanero-broker", "kab-auto", parameters={**PARAMS, "events": "auto"})
    assert reply.status == 200 and reply.body["parameters"]["events"] == "auto", reply
    # The bind makes 4 GitHub tool POSTs and the Events tool POST before anything else: the first
    # 5 OTC writes are committed, then their connections drop (the Events tool's among them);
    # otc-writer is SIGKILLed while it works. Still exactly one auto Events tool.
    mark = await w.mark()
    await w.otc_faults({"drop_after_commit": 5})
    assert (await otc.bind("kabanero-broker", "kab-auto", w.toolchain)).status == 204
    await wait_until(lambda: _events_tool_posted(w, mark), timeout=30, what="otc-writer at work")
    assert stack.kill("otc-writer") == -signal.SIGKILL
    await stack.restart("otc-writer", sig=None)
    # A repeated bind (OTC retrying) changes nothing.
    assert (await otc.bind("kabanero-broker", "kab-auto", w.toolchain)).status == 204
    await wait_until(lambda: shows(w, events=2, triggers=2, github=4), timeout=60, what="auto Events tool")
    await stack.quiet()
    assert await shows(w, events=2, triggers=2, github=4)
    calls = await w.call_log(mark)
    events_posts = [c for c in calls if (c["body"] or {}).get("tool_type_id") == EVENTS_TOOL]
    assert events_posts[0]["dropped"]  # the fault really hit the Events tool's create
    await w.otc_faults(None)

    # Unbind: the auto Events tool goes (and its Events service is unbound and deleted by OTC);
    # the hand-added one stays, so the trigger tools stay too.
    assert (await otc.unbind("kabanero-broker", "kab-auto", w.toolchain)).status == 204
    await wait_until(lambda: shows(w, events=1, triggers=2, github=0), timeout=45, what="auto tool removed")
    assert [t["id"] for t in await w.tools() if tool_kind(t) == EVENTS_TOOL] == [hand["id"]]

    # Bind again, switch to manual (the tool stays, the answer says so), then delete the service.
    assert (await otc.bind("kabanero-broker", "kab-auto", w.toolchain)).status == 204
    await wait_until(lambda: shows(w, events=2, triggers=2, github=4), timeout=45, what="re-added")
    reply = await otc.update("kabanero-broker", "kab-auto", parameters={"events": "manual"})
    assert reply.status == 200 and reply.body["parameters"]["events"] == "manual", reply
    assert "left in place" in reply.body["parameters"]["events_note"]
    await stack.quiet()
    assert await shows(w, events=2, triggers=2, github=4)
    assert (await otc.deprovision("kabanero-broker", "kab-auto")).status == 204
    await wait_until(lambda: shows(w, events=1, triggers=2, github=0), timeout=45, what="deleted")
    await stack.quiet()
    tools = await w.tools()
    assert [t["id"] for t in tools if tool_kind(t) == EVENTS_TOOL] == [hand["id"]]
    # The hand-added tool is unchanged (same name and parameters).
    (still,) = [t for t in tools if t["id"] == hand["id"]]
    assert (still["name"], still["parameters"]) == (hand["name"], hand["parameters"])

    # A manual Kabanero service (the default) adds nothing.
    reply = await otc.provision("kabanero-broker", "kab-manual", parameters=PARAMS)
    assert reply.status == 200 and reply.body["parameters"]["events"] == "manual"
    assert (await otc.bind("kabanero-broker", "kab-manual", w.toolchain)).status == 204
    await wait_until(lambda: shows(w, events=1, triggers=2, github=4), timeout=45, what="manual bound")
    await stack.quiet()
    assert await shows(w, events=1, triggers=2, github=4)
    dead = await w.dead_letter_counts()
    assert dead == dict.fromkeys(dead, 0)


async def _events_tool_posted(w: Driver, since: int) -> bool:
    calls = await w.call_log(since)
    return any(c["method"] == "POST" and (c["body"] or {}).get("tool_type_id") == EVENTS_TOOL for c in calls)
