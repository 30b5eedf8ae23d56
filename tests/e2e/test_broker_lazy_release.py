"""The lazy outbox release of broker-api (docs/design.md, broker-api): a published event stays in
its document's outbox (under the publisher lease) until a sweep or the next write pulls it. Real
``python -m services.broker_api`` processes, a real RabbitMQ, the Mongo wire server: a process
killed before its release leaves the event to be re-published by the next one, as a crash between
confirm and pull always did; a stopped one releases on its way out."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from cryptography.fernet import Fernet
from pymongo import AsyncMongoClient

from tests.helpers import EventTap, wait_until

ROOT = Path(__file__).resolve().parents[2]
AUTH = {"Authorization": "Basic " + base64.b64encode(b"otc:lazy-secret").decode()}
KEY = Fernet.generate_key().decode()

pytestmark = pytest.mark.e2e

Broker = Callable[..., AbstractAsyncContextManager[tuple[str, asyncio.subprocess.Process]]]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def broker(mongodb_url: str, amqp_url: str) -> Broker:
    @asynccontextmanager
    async def start(**env: str) -> AsyncIterator[tuple[str, asyncio.subprocess.Process]]:
        port = _free_port()
        full = {
            "PATH": os.environ.get("PATH", ""),
            "BROKER_ID": "otc",
            "BROKER_SECRET": "lazy-secret",
            "CREDENTIALS_KEY": KEY,
            "HTTP_HOST": "127.0.0.1",
            "HTTP_PORT": str(port),
            "MONGODB_URL": mongodb_url,
            "AMQP_URL": amqp_url,
            "LOG_FORMAT": "json",
            **env,
        }
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "services.broker_api", cwd=ROOT, env=full, stderr=subprocess.DEVNULL
        )
        url = f"http://127.0.0.1:{port}"

        async def ready() -> bool:
            try:
                async with aiohttp.ClientSession() as s, s.get(f"{url}/readyz") as r:
                    return r.status == 200
            except aiohttp.ClientError:
                return False

        try:
            await wait_until(ready, timeout=30, what="broker-api ready")
            yield url, proc
        finally:
            if proc.returncode is None:
                proc.kill()
            await proc.wait()

    return start


async def _doc(mongodb_url: str, key: str) -> dict[str, Any]:
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(mongodb_url)
    try:
        doc = await client.get_default_database()["service_instances"].find_one({"_id": key})
        assert doc is not None
        return doc
    finally:
        await client.close()


async def _put(url: str, path: str, body: dict[str, Any], status: int) -> None:
    """One PUT of OTC's to the Kabanero broker, answered ``status``."""
    async with (
        aiohttp.ClientSession() as s,
        s.put(f"{url}/kabanero-broker/api/v1/{path}", data=json.dumps(body), headers=AUTH) as r,
    ):
        assert r.status == status, await r.text()


async def _provision(url: str, sid: str) -> None:
    await _put(url, f"service_instances/{sid}", {"service_id": "kabanero"}, 200)


async def test_an_unreleased_event_is_published_again_after_a_kill(
    broker: Broker, mongodb_url: str, amqp_url: str
) -> None:
    # Release far off, lease 3 s (3 x PUBLISH_TIMEOUT_S): the kill lands between confirm and pull.
    slow = {"OUTBOX_RELEASE_DELAY_S": "5", "PUBLISH_TIMEOUT_S": "1", "OUTBOX_DRAIN_INTERVAL_S": "0.5"}
    async with EventTap(amqp_url, ("service.#",)) as tap:
        async with broker(**slow) as (url, proc):
            await _provision(url, "k1")
            (first,) = await tap.wait_for(1)
            doc = await _doc(mongodb_url, "kabanero:k1")
            assert [e["id"] for e in doc["outbox"]] == ["kabanero:k1:1"] and "outbox_lease" in doc
            proc.send_signal(signal.SIGKILL)
            await proc.wait()
        async with broker(OUTBOX_DRAIN_INTERVAL_S="0.5"):
            events = await tap.wait_for(2, timeout=20)  # once the dead process's lease ran out
            assert [e.id for e in events] == ["kabanero:k1:1", "kabanero:k1:1"]
            assert events[1].data == first.data

            async def released() -> bool:
                d = await _doc(mongodb_url, "kabanero:k1")
                return not d["outbox"] and "outbox_lease" not in d

            await wait_until(released, timeout=10, what="the outbox pulled and the lease released")


async def test_a_stopped_process_releases_on_its_way_out(
    broker: Broker, mongodb_url: str, amqp_url: str
) -> None:
    async with EventTap(amqp_url, ("service.#",)) as tap, broker(OUTBOX_RELEASE_DELAY_S="5") as (url, proc):
        await _provision(url, "k2")
        await tap.wait_for(1)
        assert (await _doc(mongodb_url, "kabanero:k2"))["outbox"]  # not released yet
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 30) == 0
        doc = await _doc(mongodb_url, "kabanero:k2")
        assert doc["outbox"] == [] and "outbox_lease" not in doc
        assert len(tap.events) == 1


async def test_the_next_write_drops_the_confirmed_entries_in_its_own_update(
    broker: Broker, mongodb_url: str, amqp_url: str
) -> None:
    """Provision then bind before any sweep: the bind's one update leaves only its own event."""
    async with EventTap(amqp_url, ("service.#",)) as tap, broker(OUTBOX_RELEASE_DELAY_S="5") as (url, _):
        await _provision(url, "k3")
        await tap.wait_for(1)
        await _put(url, "service_instances/k3/toolchains/t1", {"toolchain_credentials": "c"}, 204)
        await tap.wait_for(2)
        doc = await _doc(mongodb_url, "kabanero:k3")
        assert [e["id"] for e in doc["outbox"]] == ["kabanero:k3:2"]  # k3:1 dropped by the bind
        assert [e.id for e in tap.events] == ["kabanero:k3:1", "kabanero:k3:2"]
