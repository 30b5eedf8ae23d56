"""Every service's page shows its tools as otc-writer reported them: broker-api consumes
``otc.outcome.tool`` into its own collection (newest per tool by revision and time, replays change
nothing) and shows, per bound toolchain, the tools that concern the service, problems first and
paged; never another service's toolchain (real RabbitMQ, the mongoeco server, HTTP)."""

from __future__ import annotations

import urllib.parse
from datetime import UTC, datetime, timedelta
from typing import Any

import aio_pika
import aiohttp

from shared.amqp.publisher import to_message
from shared.amqp.topology import EXCHANGE
from shared.events import CloudEvent, RoutingKeys, ToolOutcomeData, ToolState
from tests.helpers import wait_until
from tests.integration.test_broker_api import KB, Client, make_settings, running
from tests.integration.test_broker_dashboard import get

BIND = {"toolchain_credentials": "TC"}
T0 = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)


def outcome(name: str, state: ToolState, revision: int, minute: int, **kw: Any) -> ToolOutcomeData:
    base: dict[str, Any] = {
        "purpose": "kabanero-trigger",
        "key": f"default/team-a/{name}",
        "toolchain_id": "tc-mine",
        "scope": "default/team-a",
        "name": name,
    }
    return ToolOutcomeData(
        **{**base, **kw}, state=state, revision=revision, at=T0 + timedelta(minutes=minute)
    )


async def publish(amqp_url: str, *outcomes: ToolOutcomeData) -> None:
    conn = await aio_pika.connect(amqp_url)
    try:
        channel = await conn.channel()
        exchange = await channel.get_exchange(EXCHANGE)
        for o in outcomes:
            event = CloudEvent.for_data(RoutingKeys.TOOL_OUTCOME, o, source="/test", subject=o.id)
            await exchange.publish(to_message(event), routing_key=event.routing_key, mandatory=True)
    finally:
        await conn.close()


async def test_the_page_shows_each_tools_sync_state_newest_first_problems_first(
    mongodb_url: str, amqp_url: str
) -> None:
    settings = make_settings(mongodb_url, amqp_url).model_copy(
        update={"broker_public_url": "https://kotc.example"}
    )
    async with running(settings) as rt, aiohttp.ClientSession() as session:
        c = Client(session, rt.url)
        body = {"service_id": "kabanero", "parameters": {"namespace": "team-a"}}
        status, reply = await c.call("PUT", f"{KB}/service_instances/kab-t", body)
        assert status == 200
        assert (await c.call("PUT", f"{KB}/service_instances/kab-t/toolchains/tc-mine", BIND))[0] == 204
        # Another service, bound to another toolchain, with a tool of the same instance.
        assert (await c.call("PUT", f"{KB}/service_instances/kab-o", body))[0] == 200
        assert (await c.call("PUT", f"{KB}/service_instances/kab-o/toolchains/tc-other", BIND))[0] == 204
        local = rt.url + urllib.parse.urlsplit(reply["dashboard_url"]).path

        await publish(
            amqp_url,
            outcome("a", "pending", 1, 0, message="POST /tools: 503: unavailable"),
            outcome("a", "held", 1, 1, until=T0 + timedelta(minutes=5), message="circuit open"),
            outcome("b", "applied", 2, 0, change="created", link="https://github.com/acme/b"),
            outcome("c", "refused", 3, 0, message="400: Invalid parameters", dead_letter="ev-c-3"),
            outcome("x", "applied", 1, 0, toolchain_id="tc-other"),
            outcome("w", "applied", 1, 0, scope="elsewhere/ns"),
        )

        async def shown(total: int) -> bool:
            _, v = await get(session, local)
            return bool(v["tools"]["total"] == total and v["tools"]["counts"].get("held") == 1)

        await wait_until(lambda: shown(3), timeout=15, what="three tools shown")
        _, v = await get(session, local)
        tools = v["tools"]
        assert [t["name"] for t in tools["tools"]] == ["c", "a", "b"]  # problems first
        assert tools["counts"] == {"refused": 1, "held": 1, "applied": 1} and tools["in_sync"] is False
        held = tools["tools"][1]
        assert held["since"].startswith("2026-01-01T12:00") and held["until"].startswith("2026-01-01T12:05")
        assert tools["dead_letters"] == [
            {"message_id": "ev-c-3", "tool": "c", "reason": "400: Invalid parameters"}
        ]
        assert tools["links"] == [{"title": "b", "url": "https://github.com/acme/b"}]
        assert tools["toolchains"] == ["tc-mine"]
        _, page = await get(session, local, accept="text/html")
        assert (
            "refused by OTC" in page and "400: Invalid parameters" in page and "held: OTC unavailable" in page
        )
        assert "tc-other" not in page and "tc-other" not in str(v)

        # Replays and older outcomes change nothing; a newer one does.
        await publish(amqp_url, outcome("a", "pending", 1, 0), outcome("c", "applied", 2, 9))
        await publish(
            amqp_url, outcome("a", "applied", 1, 2, change="created"), outcome("c", "applied", 4, 1)
        )
        await wait_until(lambda: _in_sync(session, local), timeout=15, what="all applied")
        _, v = await get(session, local)
        assert v["tools"]["last_change"]["name"] == "a"
        _, page = await get(session, local, accept="text/html")
        assert "All 3 tools are in sync with OTC." in page

        status, _ = await get(session, local + "?page=x")
        assert status == 400


async def _in_sync(session: aiohttp.ClientSession, url: str) -> bool:
    return bool((await get(session, url))[1]["tools"]["in_sync"])
