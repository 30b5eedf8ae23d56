"""A service's page with many tools: size and time to render (issue 22).

``python -m bench.service_page [--tools 10000]``: broker-api in process (``emulators.mongo`` unless
MONGODB_URL is set, the machine's RabbitMQ in a throw-away vhost), one Kabanero Events service bound
to one toolchain, ``--tools`` tool outcomes published as otc-writer publishes them (1 % refused,
0.5 % held, 0.5 % pending, the rest applied), consumed through ``broker-api.tools``. Then: the time
to ingest them, the HTML and JSON sizes of the first page, broker-api's time to answer (median of
5), and headless Chromium's time from navigation to the load event (tests/cdp.py), first and last
page. Prints the figures as JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import statistics
import tempfile
import time
import urllib.parse
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aio_pika
import aiohttp
from cryptography.fernet import Fernet

from bench.common import bench_infra
from services.broker_api.app import build
from services.broker_api.settings import Settings
from services.broker_api.tool_states import COLLECTION
from shared.amqp.publisher import to_message
from shared.amqp.topology import EXCHANGE
from shared.events import CloudEvent, RoutingKeys, ToolOutcomeData, ToolState
from tests.cdp import browser
from tests.helpers import wait_until

AUTH = {"Authorization": "Basic " + base64.b64encode(b"bench:bench-secret").decode()}
T0 = datetime(2026, 1, 1, tzinfo=UTC)


def outcome(i: int) -> ToolOutcomeData:
    state: ToolState = "applied"
    extra: dict[str, Any] = {"change": "created", "link": f"https://github.com/acme/repo-{i}"}
    if i % 100 == 0:
        state, extra = (
            "refused",
            {"message": f"400: Invalid parameters of tool {i}", "dead_letter": f"ev-{i}"},
        )
    elif i % 200 == 1:
        state, extra = "held", {"message": "503: circuit open", "until": T0 + timedelta(minutes=5)}
    elif i % 200 == 2:
        state, extra = "pending", {"message": "503: Service Unavailable"}
    return ToolOutcomeData(
        purpose="kabanero-trigger",
        key=f"default/kabanero/mediation/webhook/m-{i:05d}",
        toolchain_id="tc-bench",
        scope="default/kabanero",
        name=f"kabanero-trigger kabanero webhook m-{i:05d}",
        state=state,
        revision=1,
        at=T0 + timedelta(seconds=i),
        **extra,
    )


async def publish_all(amqp_url: str, n: int) -> None:
    conn = await aio_pika.connect(amqp_url)
    try:
        channel = await conn.channel(publisher_confirms=True)
        exchange = await channel.get_exchange(EXCHANGE)
        for start in range(0, n, 500):
            await asyncio.gather(
                *(
                    exchange.publish(to_message(ev), routing_key=ev.routing_key)
                    for ev in (
                        CloudEvent.for_data(RoutingKeys.TOOL_OUTCOME, o, source="/bench", subject=o.id)
                        for o in map(outcome, range(start, min(n, start + 500)))
                    )
                )
            )
    finally:
        await conn.close()


async def _all_in(collection: Any, tools: int) -> bool:
    return bool(await collection.count_documents({}) >= tools)


async def _get(session: aiohttp.ClientSession, url: str, accept: str) -> tuple[float, bytes]:
    t0 = time.perf_counter()
    async with session.get(url, headers={"Accept": accept}) as r:
        body = await r.read()
        assert r.status == 200, body[:200]
    return time.perf_counter() - t0, body


async def _run(mongodb_url: str, amqp_url: str, tools: int) -> dict[str, Any]:
    settings = Settings(
        broker_id="bench",
        broker_secret="bench-secret",  # type: ignore[arg-type]
        credentials_key=Fernet.generate_key().decode(),  # type: ignore[arg-type]
        mongodb_url=mongodb_url,  # type: ignore[arg-type]
        amqp_url=amqp_url,  # type: ignore[arg-type]
        http_host="127.0.0.1",
        http_port=0,
        broker_public_url="http://bench.invalid",
    )
    async with build(settings) as rt, aiohttp.ClientSession() as session:
        base = f"{rt.url}/kabanero-events-broker/api/v1/service_instances/bench-ev"
        body = {"service_id": "kabanero-events", "parameters": {"namespace": "kabanero"}}
        async with session.put(base, data=json.dumps(body), headers=AUTH) as r:
            url = rt.url + urllib.parse.urlsplit((await r.json())["dashboard_url"]).path
        async with session.put(
            f"{base}/toolchains/tc-bench", data='{"toolchain_credentials": "c"}', headers=AUTH
        ):
            pass
        t0 = time.perf_counter()
        await publish_all(amqp_url, tools)
        # Ingest watched in the collection itself (the page is measured once it is all there).
        collection = rt.infra.db[COLLECTION]
        await wait_until(
            lambda: _all_in(collection, tools), timeout=3600, interval=1, what="the outcomes stored"
        )
        ingest_s = time.perf_counter() - t0
        html_times, json_times = [], []
        for _ in range(5):
            dt, html = await _get(session, url, "text/html")
            html_times.append(dt)
            dt, js = await _get(session, url, "application/json")
            json_times.append(dt)
        shown = json.loads(js)["tools"]
        with tempfile.TemporaryDirectory() as shots:
            async with browser(Path(shots)) as b:
                await b.visit(url)  # warm
                t1 = time.perf_counter()
                first = await b.visit(url)
                first_s = time.perf_counter() - t1
                t1 = time.perf_counter()
                last = await b.visit(f"{url}?page={shown['pages']}")
                last_s = time.perf_counter() - t1
        assert not first.csp_violations and not first.console_errors
    return {
        "tools": tools,
        "ingest_seconds": round(ingest_s, 1),
        "ingest_per_s": round(tools / ingest_s, 1),
        "pages": shown["pages"],
        "counts": shown["counts"],
        "html_bytes_first_page": len(html),
        "json_bytes_first_page": len(js),
        "server_html_ms_median": round(statistics.median(html_times) * 1000, 1),
        "server_json_ms_median": round(statistics.median(json_times) * 1000, 1),
        "chromium_load_ms_first_page": round(first_s * 1000, 1),
        "chromium_load_ms_last_page": round(last_s * 1000, 1),
        "first_page_starts_with_problems": first.text.count("refused by OTC") > 1,
        "last_page_text_chars": len(last.text),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--tools", type=int, default=10_000)
    args = parser.parse_args()
    with bench_infra("bench_page") as infra:
        result = asyncio.run(_run(infra.mongodb_url, infra.amqp_url, args.tools))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
