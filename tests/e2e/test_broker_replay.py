"""Replay of OTC's call sequences (as IBM's public brokers receive them) against a real
``python -m services.broker_api`` process, checking the HTTP answers and the exact events that
reach a real RabbitMQ queue."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from cryptography.fernet import Fernet
from pymongo import AsyncMongoClient

from shared.events import ServiceEventData
from tests.helpers import EventTap, wait_until

ROOT = Path(__file__).resolve().parents[2]
AUTH = {"Authorization": "Basic " + base64.b64encode(b"otc:replay-secret").decode()}

pytestmark = pytest.mark.e2e


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
async def broker_process(mongodb_url: str, amqp_url: str) -> AsyncIterator[tuple[str, list[str]]]:
    port = _free_port()
    env = {
        "PATH": os.environ.get("PATH", ""),
        "BROKER_ID": "otc",
        "BROKER_SECRET": "replay-secret",
        "CREDENTIALS_KEY": Fernet.generate_key().decode(),
        "HTTP_PORT": str(port),
        "MONGODB_URL": mongodb_url,
        "AMQP_URL": amqp_url,
        "LOG_FORMAT": "json",
        "OUTBOX_DRAIN_INTERVAL_S": "1",
    }
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "services.broker_api", cwd=ROOT, env=env, stderr=subprocess.PIPE
    )
    assert proc.stderr is not None
    lines: list[str] = []

    async def read_logs() -> None:
        assert proc.stderr is not None
        async for raw in proc.stderr:
            lines.append(raw.decode())

    reader = asyncio.create_task(read_logs())
    try:
        await wait_until(
            lambda: (
                any(f"listening on http://0.0.0.0:{port}" in line for line in lines)
                or proc.returncode is not None
            ),
            timeout=30,
            what="broker-api to listen",
        )
        assert proc.returncode is None, "".join(lines)
        yield f"http://127.0.0.1:{port}", lines
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 30) == 0, "".join(lines[-20:])
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        await reader


async def _call(
    session: aiohttp.ClientSession,
    method: str,
    url: str,
    body: Any = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, Any]:
    data = None if body is None else json.dumps(body)
    async with session.request(method, url, data=data, headers=AUTH if headers is None else headers) as r:
        text = await r.text()
        return r.status, json.loads(text) if text else None


async def _outbox_empty(mongodb_url: str) -> bool:
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(mongodb_url)
    try:
        coll = client.get_default_database()["service_instances"]
        return await coll.count_documents({"outbox.id": {"$exists": True}}) == 0
    finally:
        await client.close()


async def test_otc_call_sequence_replay(
    broker_process: tuple[str, list[str]], amqp_url: str, mongodb_url: str
) -> None:
    base, logs = broker_process
    kb = f"{base}/kabanero-broker/api/v1/service_instances"
    keb = f"{base}/kabanero-events-broker/api/v1"
    sid, sid2 = "2f6c7b9e-1d3a-4a5b-9c8d-0e1f2a3b4c5d", "8a9b0c1d-2e3f-4a5b-8c7d-6e5f4a3b2c1d"
    tc1, tc2 = "d1c2b3a4-0000-4000-8000-000000000001", "d1c2b3a4-0000-4000-8000-000000000002"
    tc_creds = "dGlhbTp0b29sY2hhaW4tY3JlZHM="
    async with EventTap(amqp_url, ("service.#",)) as tap, aiohttp.ClientSession() as s:
        provision = {
            "service_id": "kabanero",
            "organization_guid": "org-guid",
            "parameters": {"cluster": "default", "namespace": "kabanero"},
            "service_credentials": "c2VydmljZS1jcmVkcw==",
            "dashboard_url": "https://otc.example/ignored",
        }
        status, body = await _call(s, "PUT", f"{kb}/{sid}", provision)
        assert (status, body["instance_id"], body["parameters"]["label"]) == (200, sid, "default/kabanero")
        assert body["dashboard_url"].startswith("https://kabanero-landing-kabanero.apps.default.")
        assert (await _call(s, "PUT", f"{kb}/{sid}/toolchains/{tc1}", {"toolchain_credentials": tc_creds}))[
            0
        ] == 204
        status, body = await _call(
            s, "PATCH", f"{kb}/{sid}", {"service_id": "kabanero", "parameters": {"namespace": "team-b"}}
        )
        assert status == 200 and body["parameters"]["label"] == "default/team-b"
        assert (await _call(s, "PUT", f"{kb}/{sid}/toolchains/{tc2}", {"toolchain_credentials": tc_creds}))[
            0
        ] == 204
        assert (await _call(s, "PUT", f"{kb}/{sid}/toolchains/{tc2}", {"toolchain_credentials": tc_creds}))[
            0
        ] == 204
        # LMS message authenticated with the stored toolchain credentials
        message = {
            "service_id": "toolchain",
            "instance_id": sid,
            "toolchain_id": tc2,
            "payload": {"event": "bind"},
        }
        headers = {"Authorization": f"Basic {tc_creds}"}
        assert (await _call(s, "POST", f"{base}/kabanero-broker/api/v1/messaging/accept", message, headers))[
            0
        ] == 204
        user_info = {"user_info": {"user_id": "u", "user_name": "u@example.com"}}
        assert (await _call(s, "DELETE", f"{kb}/{sid}/toolchains/{tc1}", user_info))[0] == 204
        assert (await _call(s, "DELETE", f"{kb}/{sid}/toolchains"))[0] == 204
        assert (await _call(s, "DELETE", f"{kb}/{sid}"))[0] == 204
        assert (await _call(s, "DELETE", f"{kb}/{sid}"))[0] == 204  # orphan mitigation repeat
        assert (await _call(s, "DELETE", f"{kb}/{sid}", headers={}))[0] == 401
        # the events broker: provision + bind + delete while bound
        events_body = {"service_id": "kabanero-events", "parameters": {"namespace": "kabanero"}}
        assert (await _call(s, "PUT", f"{keb}/service_instances/{sid2}", events_body))[0] == 200
        assert (
            await _call(
                s, "PUT", f"{keb}/service_instances/{sid2}/toolchains/{tc1}", {"toolchain_credentials": "x"}
            )
        )[0] == 204
        assert (await _call(s, "DELETE", f"{keb}/service_instances/{sid2}"))[0] == 204
        await tap.wait_for(11, timeout=15)
        # No late duplicate: once no outbox entry is pending nothing can re-publish an earlier
        # event, and whatever was published before a sentinel event reaches the queue before it.
        await wait_until(lambda: _outbox_empty(mongodb_url), timeout=15, what="outbox drained")
        sentinel = "0f0f0f0f-0000-4000-8000-00000000000f"
        assert (await _call(s, "PUT", f"{keb}/service_instances/{sentinel}", events_body))[0] == 200
        await wait_until(
            lambda: any(e.subject == sentinel for e in tap.events), timeout=15, what="the sentinel event"
        )
        got = [
            (
                e.routing_key,
                (d := ServiceEventData.model_validate(e.data)).instance_id,
                d.revision,
                d.toolchain_id,
                d.toolchains,
            )
            for e in tap.events
        ]
    assert got == [
        ("service.kabanero.provisioned", sid, 1, None, []),
        ("service.kabanero.bound", sid, 2, tc1, [tc1]),
        ("service.kabanero.updated", sid, 3, None, [tc1]),
        ("service.kabanero.bound", sid, 4, tc2, [tc1, tc2]),
        ("service.kabanero.unbound", sid, 5, tc1, [tc2]),
        ("service.kabanero.unbound", sid, 6, tc2, []),
        ("service.kabanero.deprovisioned", sid, 7, None, []),
        ("service.kabanero-events.provisioned", sid2, 1, None, []),
        ("service.kabanero-events.bound", sid2, 2, tc1, [tc1]),
        ("service.kabanero-events.unbound", sid2, 3, tc1, []),
        ("service.kabanero-events.deprovisioned", sid2, 4, None, []),
        ("service.kabanero-events.provisioned", sentinel, 1, None, []),
    ]
    text = "".join(logs)
    for secret in ("replay-secret", tc_creds, "c2VydmljZS1jcmVkcw=="):
        assert secret not in text
    assert "lifecycle message accepted" in text
