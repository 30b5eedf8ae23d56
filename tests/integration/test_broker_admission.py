"""broker-api with clients by the hundred: what the connection caps do to the probes, to OTC's bursts
and to a client that goes away mid-body. Real server, real sockets, many loopback source addresses
(127.0.0.0/8 is all loopback), each load bounded in count and time."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import pytest

from services.broker_api.app import BrokerRuntime
from tests.helpers import wait_until
from tests.integration.test_broker_api import AUTH, KB, PROVISION, Client, basic, make_settings, running

HEALTH = ("/status", "/readyz", "/healthz")


def _sample(rt: BrokerRuntime, name: str, **labels: str) -> float:
    return rt.infra.health.registry.get_sample_value(name, labels) or 0.0


def _busy(rt: BrokerRuntime) -> float:
    return _sample(rt, "kotc_broker_api_connections", state="busy")


def _started(rt: BrokerRuntime) -> int:
    """Requests aiohttp has started handling (a slow body's among them, from its head on)."""
    server = rt.http._runner.server
    return server.requests_count if server is not None else 0


async def _slow_head(port: int, local: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A connection whose request head never ends (slowloris)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(local, 0))
    writer.write(b"GET /status HTTP/1.1\r\nHost: x\r\n")
    await writer.drain()
    return reader, writer


async def _slow_body(port: int, local: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """An authenticated provision whose body never ends: the connection is busy until the body timeout."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(local, 0))
    writer.write(
        f"PUT {KB}/service_instances/slow HTTP/1.1\r\nHost: x\r\nAuthorization: {AUTH}\r\n"
        "Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{".encode()
    )
    await writer.drain()
    return reader, writer


async def _probe(port: int, path: str) -> str:
    """GET ``path`` on a fresh connection, as the kubelet probes: "served", or what came instead (a
    status, an error). /readyz's own 503 (a check slower than its 1 s bound on a loaded machine) is
    served too: only an answer without the checks, or none, is the server turning the probe away."""
    connector = aiohttp.TCPConnector(force_close=True)
    try:
        async with (
            aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=5)) as session,
            session.get(f"http://127.0.0.1:{port}{path}") as r,
        ):
            body = await r.json()
    except (OSError, aiohttp.ClientError) as exc:
        return type(exc).__name__
    ready = r.status == 503 and path == "/readyz" and "checks" in body
    return "served" if r.status == 200 or ready else str(r.status)


@contextlib.asynccontextmanager
async def _holding(
    opener: Callable[[int, str], Awaitable[tuple[asyncio.StreamReader, asyncio.StreamWriter]]],
    port: int,
    addresses: list[str],
    per_address: int,
    *,
    reopen: bool,
) -> AsyncIterator[list[int]]:
    """``per_address`` connections from each address, opened by ``opener``; with ``reopen`` each one
    is opened again as soon as the server closes it, until the block ends (an attacker that keeps
    the cap full). Yields a one-element list counting the connections opened."""
    opened = [0]
    stop = asyncio.Event()

    async def hold(local: str) -> None:
        while not stop.is_set():
            writer = None
            try:
                reader, writer = await opener(port, local)
                opened[0] += 1
                read = asyncio.ensure_future(reader.read())
                stopped = asyncio.ensure_future(stop.wait())
                await asyncio.wait({read, stopped}, return_when=asyncio.FIRST_COMPLETED)
                for task in (read, stopped):
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError, OSError):
                        await task
            except OSError:
                pass
            finally:
                if writer is not None:
                    writer.close()
            if not reopen:
                await stop.wait()
            else:
                await asyncio.sleep(0.05)  # an attacker's pace; bounded CPU on a shared machine

    tasks = [asyncio.create_task(hold(a)) for a in addresses for _ in range(per_address)]
    try:
        yield opened
    finally:
        stop.set()
        await asyncio.gather(*tasks, return_exceptions=True)


@pytest.fixture
async def capped(mongodb_url: str, amqp_url: str) -> AsyncIterator[tuple[BrokerRuntime, Client]]:
    settings = make_settings(
        mongodb_url,
        amqp_url,
        max_connections=40,
        max_connections_per_client=12,
        header_timeout_s=2.0,
        body_timeout_s=5.0,  # the window in which the slow bodies keep their connections busy
    )
    async with running(settings) as rt, aiohttp.ClientSession() as session:
        yield rt, Client(session, rt.url)


async def test_health_and_status_answer_while_slow_heads_from_many_addresses_fill_the_cap(
    capped: tuple[BrokerRuntime, Client],
) -> None:
    """Issue 19: slow-header connections from many addresses filled the total cap, and /status and
    /readyz were refused for as long as the attacker kept it full. Now a new connection takes the
    place of the oldest one still waiting for its request head."""
    rt, _ = capped
    addresses = [f"127.0.9.{i}" for i in range(1, 21)]  # 20 addresses x 6 = 120, three times the cap
    answers: list[str] = []
    async with _holding(_slow_head, rt.port, addresses, 6, reopen=True) as opened:
        await wait_until(lambda: opened[0] >= 120, timeout=20, what="the attacker's connections")
        deadline = time.monotonic() + 3.0  # longer than the header timeout: the attacker keeps it up
        while time.monotonic() < deadline:
            answers += [await _probe(rt.port, path) for path in HEALTH]
            await asyncio.sleep(0.2)
    assert answers and set(answers) == {"served"}, answers
    assert _sample(rt, "kotc_broker_api_connections_evicted_total") > 0


async def test_health_answers_and_the_api_says_503_when_every_connection_is_busy(
    capped: tuple[BrokerRuntime, Client],
) -> None:
    """All 40 connections busy (slow bodies, nothing to evict): the probes and /status still answer,
    on a connection over the cap; any other request gets 503 with Retry-After, never a reset."""
    rt, c = capped
    addresses = [f"127.0.8.{i}" for i in range(1, 5)]  # 4 x 10: the total cap, under the per-client one
    async with _holding(_slow_body, rt.port, addresses, 10, reopen=False):
        await wait_until(lambda: _started(rt) >= 40, timeout=10, what="every connection busy")
        assert [await _probe(rt.port, path) for path in HEALTH] == ["served"] * len(HEALTH)
        async with c.session.put(
            c.base + f"{KB}/service_instances/sid-x", json=PROVISION, headers={"Authorization": AUTH}
        ) as resp:
            body = await resp.json()
            assert resp.status == 503, body
            assert int(resp.headers["Retry-After"]) >= 1 and "description" in body
        assert _busy(rt) == 40
    assert _sample(rt, "kotc_broker_api_connections_refused_total", cap="total") >= 1


async def test_over_the_per_client_cap_a_client_gets_429_with_retry_after_never_a_reset(
    capped: tuple[BrokerRuntime, Client],
) -> None:
    """One address busy up to its cap (12): its further requests are answered 429 + Retry-After
    (a client honouring it gets through later); another address is served meanwhile."""
    rt, c = capped
    nat = "127.0.7.1"
    connector = aiohttp.TCPConnector(limit=0, force_close=True, local_addr=(nat, 0))
    async with aiohttp.ClientSession(connector=connector) as same:
        async with _holding(_slow_body, rt.port, [nat], 12, reopen=False):
            await wait_until(lambda: _started(rt) >= 12, timeout=10, what="its connections busy")

            async def provision(i: int) -> tuple[int, str | None, Any]:
                async with same.put(
                    c.base + f"{KB}/service_instances/b-{i}", json=PROVISION, headers={"Authorization": AUTH}
                ) as resp:
                    return resp.status, resp.headers.get("Retry-After"), await resp.json()

            answers = await asyncio.gather(*(provision(i) for i in range(20)))
            assert {status for status, _, _ in answers} == {429}, answers
            assert all(int(after or 0) >= 1 and "description" in body for _, after, body in answers)
            assert (await c.call("PUT", f"{KB}/service_instances/other", PROVISION))[0] == 200
        # The slow bodies answered (408), the client retries and is served.
        await wait_until(lambda: _busy(rt) == 0, timeout=10, what="the slow bodies answered")
        async with same.put(
            c.base + f"{KB}/service_instances/b-0", json=PROVISION, headers={"Authorization": AUTH}
        ) as resp:
            assert resp.status == 200
    assert _sample(rt, "kotc_broker_api_connections_refused_total", cap="per-client") >= 20


async def test_a_burst_of_200_provisions_from_one_address_is_answered_in_full(
    mongodb_url: str, amqp_url: str
) -> None:
    """Issue 19: 200 concurrent provisions from one address (OTC behind a NAT) got 64 answers and 136
    TCP resets. With the default limits every one is admitted and reaches its route: 200, or on a
    machine too loaded for the 5 s MongoDB bound the route's own retryable 503 (never a reset, never
    the connection caps' answer)."""
    async with running(make_settings(mongodb_url, amqp_url)) as rt:
        connector = aiohttp.TCPConnector(limit=0, force_close=True, local_addr=("127.0.6.1", 0))
        async with aiohttp.ClientSession(connector=connector) as session:

            async def provision(i: int) -> str:
                try:
                    async with session.put(
                        f"{rt.url}{KB}/service_instances/n-{i}",
                        json=PROVISION,
                        headers={"Authorization": AUTH},
                    ) as resp:
                        body = await resp.json()
                        return "200" if resp.status == 200 else f"{resp.status} {body['description']}"
                except (OSError, aiohttp.ClientError) as exc:
                    return type(exc).__name__

            answers = await asyncio.gather(*(provision(i) for i in range(200)))
        routed = sum(
            _sample(
                rt,
                "kotc_broker_api_requests_total",
                method="PUT",
                route=f"{KB}/service_instances/{{sid}}",
                status=s,
            )
            for s in ("200", "503")
        )
    tally = {a: answers.count(a) for a in set(answers)}
    assert set(answers) <= {"200", "503 storage unavailable, retry later"}, tally
    assert answers.count("200") > 0 and routed == 200, tally


@pytest.mark.parametrize("route", ["messaging", "provision"])
async def test_a_client_that_drops_mid_body_is_one_info_line_and_no_5xx(
    capped: tuple[BrokerRuntime, Client], caplog: pytest.LogCaptureFixture, route: str
) -> None:
    """Issue 19: a client that went away mid-body logged an ERROR traceback (3 KB per 200-byte request)
    and counted a 500. It is the client's doing: one INFO line, counted as 499."""
    rt, c = capped
    assert (await c.call("PUT", f"{KB}/service_instances/sid-d", PROVISION))[0] == 200
    assert (
        await c.call("PUT", f"{KB}/service_instances/sid-d/toolchains/tc", {"toolchain_credentials": "t"})
    )[0] == 204
    if route == "messaging":
        method, path, auth = "POST", f"{KB}/messaging/accept", basic("tc", "t")
        canonical = path
    else:
        method, path, auth = "PUT", f"{KB}/service_instances/sid-d", AUTH
        canonical = f"{KB}/service_instances/{{sid}}"
    body = json.dumps(
        {"service_id": "toolchain", "instance_id": "sid-d", "toolchain_id": "tc", "payload": {}}
    )
    head = (
        f"{method} {path} HTTP/1.1\r\nHost: x\r\nAuthorization: {auth}\r\n"
        "Content-Type: application/json\r\nContent-Length: 200\r\n\r\n"
    )
    with caplog.at_level(logging.INFO):
        for _ in range(3):  # 50 of the 200 bytes announced, then the client is gone
            _, writer = await asyncio.open_connection("127.0.0.1", rt.port)
            writer.write((head + body[:50]).encode())
            await writer.drain()
            writer.close()
            await writer.wait_closed()

        def counted(status: str) -> float:
            return _sample(
                rt, "kotc_broker_api_requests_total", method=method, route=canonical, status=status
            )

        await wait_until(
            lambda: counted("499") + counted("500") == 3, timeout=10, what="three requests counted"
        )
    assert (counted("499"), counted("500")) == (3, 0)
    mine = [r for r in caplog.records if r.name.startswith(("services.", "aiohttp", "shared."))]
    assert not [r for r in mine if r.levelno >= logging.WARNING], [r.getMessage() for r in mine]
    gone = [r for r in mine if "before its request body" in r.getMessage()]
    assert len(gone) == 3 and all(r.levelno == logging.INFO and r.exc_info is None for r in gone)
