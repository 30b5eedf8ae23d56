"""The dashboard of a Kabanero service that creates its instance: broker-api consumes the watchers'
``kabanero.command.outcome`` events into its own collection (idempotent by revision) and serves the
page at the unguessable ``dashboard_url`` it returns (real RabbitMQ, the mongoeco server, HTTP)."""

from __future__ import annotations

import urllib.parse
from datetime import UTC, datetime
from typing import Any

import aio_pika
import aiohttp
import pytest
from pydantic import ValidationError

from services.broker_api.settings import Settings
from shared.amqp.publisher import to_message
from shared.amqp.topology import EXCHANGE
from shared.events import CloudEvent, CommandOutcomeData, RoutingKeys, event_id
from tests.helpers import wait_until
from tests.integration.test_broker_api import KB, KEY, Client, make_settings, running

SPEC = {"version": "0.9.2"}


async def publish(amqp_url: str, revision: int, outcome: str, message: str, sid: str = "kab-1") -> None:
    data = CommandOutcomeData(
        instance_id=sid,
        cluster="default",
        namespace="team-a",
        name="kabanero",
        revision=revision,
        outcome=outcome,  # type: ignore[arg-type]
        message=message,
        at=datetime.now(UTC),
    )
    event = CloudEvent.for_data(
        RoutingKeys.COMMAND_OUTCOME, data, source="/test", subject=sid, id=event_id("outcome", sid, revision)
    )
    conn = await aio_pika.connect(amqp_url)
    try:
        channel = await conn.channel()
        exchange = await channel.get_exchange(EXCHANGE)
        await exchange.publish(to_message(event), routing_key=event.routing_key, mandatory=True)
    finally:
        await conn.close()


async def get(session: aiohttp.ClientSession, url: str, accept: str = "application/json") -> tuple[int, Any]:
    async with session.get(url, headers={"Accept": accept}) as r:
        body = await r.json() if r.content_type == "application/json" else await r.text()
        if r.status == 200:
            assert r.headers["Cache-Control"] == "no-store" and r.headers["Referrer-Policy"] == "no-referrer"
        return r.status, body


async def test_dashboard_shows_the_watchers_outcome_idempotently_without_credentials(
    mongodb_url: str, amqp_url: str
) -> None:
    public = "https://kotc.example.com/base"
    settings = make_settings(mongodb_url, amqp_url, broker_public_url=public)
    async with running(settings) as rt, aiohttp.ClientSession() as session:
        c = Client(session, rt.url)
        body = {
            "service_id": "kabanero",
            "parameters": {"namespace": "team-a", "create": True, "instance": SPEC},
            "service_credentials": "svc-s3cret-value",
        }
        status, reply = await c.call("PUT", f"{KB}/service_instances/kab-1", body)
        assert status == 200, reply
        url = reply["dashboard_url"]
        prefix = f"{public}/dashboard/kab-1/"
        assert url.startswith(prefix) and len(url) - len(prefix) >= 22, url  # >= 128 bits of token
        local = rt.url + urllib.parse.urlsplit(url).path.removeprefix("/base")
        # A service that does not create its instance has its page too (its tools; no outcome).
        status, plain = await c.call(
            "PUT", f"{KB}/service_instances/kab-plain", {"service_id": "kabanero", "parameters": {}}
        )
        assert status == 200 and plain["dashboard_url"].startswith(f"{public}/dashboard/kab-plain/")
        status, shown = await get(session, rt.url + urllib.parse.urlsplit(plain["dashboard_url"]).path[5:])
        assert status == 200 and shown["creates_instance"] is False and shown["tools"]["total"] == 0

        status, shown = await get(session, local)
        assert status == 200 and shown["outcome"] is None and shown["creates_instance"] is True
        assert shown["kabanero_landing_url"].startswith("https://kabanero-landing-team-a.apps.default.")

        await publish(amqp_url, 1, "created", "Kabanero team-a/kabanero created for service kab-1")

        async def outcome_is(want: str) -> bool:
            _, now = await get(session, local)
            return now["outcome"] is not None and now["outcome"]["outcome"] == want

        await wait_until(lambda: outcome_is("created"), timeout=15, what="created shown")
        # An older revision and a repeat change nothing; a newer one replaces it.
        await publish(amqp_url, 0, "failed", "stale")
        await publish(amqp_url, 1, "failed", "a repeat of revision 1 with other content")
        await publish(amqp_url, 3, "refused", "the API server refused it (403): <b>forbidden</b>")
        await wait_until(lambda: outcome_is("refused"), timeout=15, what="refused shown")
        status, shown = await get(session, local)
        assert shown["outcome"]["revision"] == 3 and "(403)" in shown["outcome"]["message"]
        await publish(amqp_url, 2, "created", "late")
        status, page = await get(session, local, accept="text/html,*/*")
        assert status == 200 and "refused" in page and "&lt;b&gt;forbidden&lt;/b&gt;" in page
        assert "<b>forbidden</b>" not in page
        for text in (page, str(shown)):
            assert "svc-s3cret-value" not in text and "broker-s3cret" not in text and KEY not in text

        # A wrong token, another sid's token, an unknown sid: the same 404.
        token = local.rsplit("/", 1)[1]
        for path in (
            f"/dashboard/kab-1/{'A' * len(token)}",
            f"/dashboard/kab-plain/{token}",
            f"/dashboard/x/{token}",
        ):
            status, err = await get(session, rt.url + path)
            assert status == 404 and err == {"description": "no such dashboard"}, path
        status, _ = await c.call("DELETE", f"{KB}/service_instances/kab-1")
        assert status == 204
        await wait_until(lambda: _state_is(session, local, "deleted"), timeout=15, what="deleted")
        # The last outcome stays; only a newer revision may replace it.
        await publish(amqp_url, 9, "deleted", "Kabanero team-a/kabanero deleted with its service")
        await wait_until(lambda: outcome_is("deleted"), timeout=15, what="deleted shown")


async def _state_is(session: aiohttp.ClientSession, url: str, state: str) -> bool:
    return bool((await get(session, url))[1]["state"] == state)


async def test_without_a_public_url_the_dashboard_url_is_the_landing_page(
    mongodb_url: str, amqp_url: str
) -> None:
    async with running(make_settings(mongodb_url, amqp_url)) as rt, aiohttp.ClientSession() as session:
        c = Client(session, rt.url)
        body = {"service_id": "kabanero", "parameters": {"namespace": "team-b", "create": True}}
        status, reply = await c.call("PUT", f"{KB}/service_instances/kab-2", body)
        assert status == 200 and reply["dashboard_url"].startswith("https://kabanero-landing-team-b."), reply


@pytest.mark.parametrize(
    "bad", ["ftp://x", "https://user:pw@x.example.com", "https://x.example.com/?a=1", "x"]
)
def test_a_bad_public_url_is_refused_naming_the_setting(bad: str) -> None:
    with pytest.raises(ValidationError, match="broker_public_url"):
        Settings(
            broker_id="b",
            broker_secret="s",  # type: ignore[arg-type]
            credentials_key=KEY,  # type: ignore[arg-type]
            broker_public_url=bad,
        )
