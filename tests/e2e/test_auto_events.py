"""``parameters.events: auto`` end to end: the real processes, the OTC emulator's broker-backed tools.

Binding a Kabanero service with ``events: auto`` makes otc-writer add a Kabanero Events tool
(``tool_type_id`` = the events broker's service id) to the toolchain; OTC (the emulator) then
provisions and binds that Events service through our own events broker, and the trigger tools
follow. Unbind and delete remove that tool only: a Kabanero Events tool the user added by hand stays.
Under commit-then-drop and a SIGKILL of otc-writer there is still exactly one auto Events tool.
"""

from __future__ import annotations

import signal
import uuid
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from emulators.otc.platform import OtcPlatform
from scripts.stack import API_KEY, BROKER_ID, Stack, mgmt
from tests.conftest import _mgmt
from tests.helpers import wait_until

pytestmark = pytest.mark.e2e
PARAMS = {"cluster": "default", "namespace": "kabanero"}
EVENTS_TYPE = "kabanero-events"


class World:
    def __init__(self, stack: Stack, http: aiohttp.ClientSession) -> None:
        self.stack = stack
        self.http = http
        self.otc = stack.url("otc")
        self.toolchain = ""

    async def request(self, method: str, url: str, body: Any = None, **kw: Any) -> Any:
        async with self.http.request(method, url, json=body, **kw) as r:
            assert r.status < 400, (method, url, r.status, await r.text())
            return await r.json() if r.content_type == "application/json" else None

    async def tools(self) -> list[dict[str, Any]]:
        state = await self.request("GET", f"{self.otc}/_emulator/state")
        (tc,) = [t for t in state["toolchains"] if t["id"] == self.toolchain]
        return list(tc["tools"])

    async def count(self, tool_type: str) -> int:
        return sum(t["tool_type_id"] == tool_type for t in await self.tools())

    async def shows(self, *, events: int, triggers: int, github: int) -> bool:
        tools = await self.tools()
        got = tuple(
            sum(t["tool_type_id"] == k for t in tools)
            for k in (EVENTS_TYPE, "customtool", "githubconsolidated")
        )
        return got == (events, triggers, github)

    async def hand_add_events_tool(self) -> dict[str, Any]:
        """What a user does in OTC: add a Kabanero Events tool to the toolchain (Toolchain API)."""
        async with self.http.post(
            f"{self.otc}/identity/token",
            data={"grant_type": "urn:ibm:params:oauth:grant-type:apikey", "apikey": API_KEY},
        ) as r:
            access = (await r.json())["access_token"]
        async with self.http.post(
            f"{self.otc}/toolchain/v2/toolchains/{self.toolchain}/tools",
            json={"tool_type_id": EVENTS_TYPE, "name": "my events service", "parameters": PARAMS},
            headers={"Authorization": f"Bearer {access}"},
        ) as r:
            assert r.status == 201, await r.text()
            return dict(await r.json())


@pytest.fixture
async def world() -> AsyncIterator[World]:
    vhost = f"kotc-test-auto-events-{uuid.uuid4().hex[:8]}"
    stack = Stack(vhost, extra_env={"otc-writer": {"LEASE_TTL_S": "2", "LEASE_WAIT_S": "10"}})
    try:
        await stack.start()
        async with aiohttp.ClientSession() as http:
            w = World(stack, http)
            tc = await w.request("POST", f"{w.otc}/_emulator/toolchains", {"name": "auto-events"})
            w.toolchain = tc["id"]
            yield w
    finally:
        stack.stop()
        _mgmt("DELETE", f"vhosts/{vhost}")


async def test_auto_events_tool_added_removed_never_duplicated_hand_added_untouched(world: World) -> None:
    w, stack = world, world.stack
    # The user adds a Kabanero Events tool by hand: OTC provisions and binds it at our events broker.
    hand = await w.hand_add_events_tool()
    await wait_until(lambda: w.shows(events=1, triggers=2, github=0), timeout=45, what="hand-added Events")

    async with OtcPlatform(stack.url("broker"), BROKER_ID, stack.broker_secret) as otc:
        reply = await otc.provision("kabanero-broker", "kab-auto", parameters={**PARAMS, "events": "auto"})
        assert reply.status == 200 and reply.body["parameters"]["events"] == "auto", reply
        # The bind makes 4 GitHub tool POSTs and the Events tool POST before anything else: the first
        # 5 OTC writes are committed, then their connections drop (the Events tool's among them);
        # otc-writer is SIGKILLed while it works. Still exactly one auto Events tool.
        mark = (await w.request("GET", f"{w.otc}/_emulator/calls"))["total"]
        await w.request("POST", f"{w.otc}/_emulator/faults", {"drop_after_commit": 5})
        assert (await otc.bind("kabanero-broker", "kab-auto", w.toolchain)).status == 204
        await wait_until(lambda: _events_tool_posted(w, mark), timeout=30, what="otc-writer at work")
        assert stack.kill("otc-writer") == -signal.SIGKILL
        await stack.restart("otc-writer", sig=None)
        # A repeated bind (OTC retrying) changes nothing.
        assert (await otc.bind("kabanero-broker", "kab-auto", w.toolchain)).status == 204
        await wait_until(lambda: w.shows(events=2, triggers=2, github=4), timeout=60, what="auto Events tool")
        await stack.quiet()
        assert await w.shows(events=2, triggers=2, github=4)
        calls = (await w.request("GET", f"{w.otc}/_emulator/calls?since={mark}"))["calls"]
        events_posts = [c for c in calls if (c["body"] or {}).get("tool_type_id") == EVENTS_TYPE]
        assert events_posts[0]["dropped"]  # the fault really hit the Events tool's create
        await w.request("DELETE", f"{w.otc}/_emulator/faults")

        # Unbind: the auto Events tool goes (and its Events service is unbound and deleted by OTC);
        # the hand-added one stays, so the trigger tools stay too.
        assert (await otc.unbind("kabanero-broker", "kab-auto", w.toolchain)).status == 204
        await wait_until(
            lambda: w.shows(events=1, triggers=2, github=0), timeout=45, what="auto tool removed"
        )
        assert [t["id"] for t in await w.tools() if t["tool_type_id"] == EVENTS_TYPE] == [hand["id"]]

        # Bind again, switch to manual (the tool stays, the answer says so), then delete the service.
        assert (await otc.bind("kabanero-broker", "kab-auto", w.toolchain)).status == 204
        await wait_until(lambda: w.shows(events=2, triggers=2, github=4), timeout=45, what="re-added")
        reply = await otc.update("kabanero-broker", "kab-auto", parameters={"events": "manual"})
        assert reply.status == 200 and reply.body["parameters"]["events"] == "manual", reply
        assert "left in place" in reply.body["parameters"]["events_note"]
        await stack.quiet()
        assert await w.shows(events=2, triggers=2, github=4)
        assert (await otc.deprovision("kabanero-broker", "kab-auto")).status == 204
        await wait_until(lambda: w.shows(events=1, triggers=2, github=0), timeout=45, what="deleted")
        await stack.quiet()
        tools = await w.tools()
        assert [t["id"] for t in tools if t["tool_type_id"] == EVENTS_TYPE] == [hand["id"]]
        # The hand-added tool is unchanged (same name and parameters).
        (still,) = [t for t in tools if t["id"] == hand["id"]]
        assert (still["name"], still["parameters"]) == (hand["name"], hand["parameters"])

        # A manual Kabanero service (the default) adds nothing.
        reply = await otc.provision("kabanero-broker", "kab-manual", parameters=PARAMS)
        assert reply.status == 200 and reply.body["parameters"]["events"] == "manual"
        assert (await otc.bind("kabanero-broker", "kab-manual", w.toolchain)).status == 204
        await wait_until(lambda: w.shows(events=1, triggers=2, github=4), timeout=45, what="manual bound")
        await stack.quiet()
        assert await w.shows(events=1, triggers=2, github=4)
    dead = {}
    for q in ("otc-writer.events.dead", "otc-writer.commands.dead", "github-linker.events.dead"):
        info = await mgmt("GET", f"queues/{stack.vhost}/{q}")
        dead[q] = int(info.get("messages", 0))
    assert dead == dict.fromkeys(dead, 0)


async def _events_tool_posted(w: World, since: int) -> bool:
    calls = await w.request("GET", f"{w.otc}/_emulator/calls?since={since}")
    return any(
        c["method"] == "POST" and (c["body"] or {}).get("tool_type_id") == EVENTS_TYPE for c in calls["calls"]
    )
