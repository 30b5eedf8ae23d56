"""emulators.otc: tools of a broker-backed type call the broker (provision + bind, unbind +
deprovision) with the contract's bodies; a broker error fails the tool create in OTC's shape and
leaves nothing behind. The broker here is a recording stand-in (real HTTP), so every body is seen."""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from emulators.otc.testing import OtcEmulator


@dataclass
class RecordingBroker:
    calls: list[tuple[str, str, Any, str]] = field(default_factory=list)
    fail: dict[str, int] = field(default_factory=dict)  # action -> status to answer

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.json() if request.body_exists else None
        path = request.path
        self.calls.append((request.method, path, body, request.headers.get("Authorization", "")))
        action = {
            ("PUT", False): "provision",
            ("PATCH", False): "update",
            ("DELETE", False): "deprovision",
            ("PUT", True): "bind",
            ("DELETE", True): "unbind",
        }[(request.method, "/toolchains/" in path)]
        if action in self.fail:
            return web.json_response(
                {"description": f"{action} refused: bad cluster"}, status=self.fail[action]
            )
        if action in ("provision", "update"):
            sid = request.match_info["sid"]
            return web.json_response(
                {
                    "instance_id": sid,
                    "dashboard_url": f"https://dash.example/{sid}",
                    "parameters": {**(body or {}).get("parameters", {}), "label": "lbl"},
                    "organization_guid": "o",
                }
            )
        return web.Response(status=204)


@pytest.fixture
async def brokered() -> AsyncIterator[tuple[OtcEmulator, RecordingBroker, str]]:
    broker = RecordingBroker()
    app = web.Application()
    root = "/kabanero-events-broker/api/v1/service_instances/{sid}"
    app.router.add_route("*", root, broker.handle)
    app.router.add_route("*", root + "/toolchains/{tid}", broker.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    try:
        async with OtcEmulator.running(broker_url=url, broker_id="bid", broker_secret="bsecret") as otc:
            yield otc, broker, otc.seed_toolchain(name="tc")
    finally:
        await runner.cleanup()


async def _call(otc: OtcEmulator, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    headers = {"Authorization": f"Bearer {otc.issue_token()}"}
    if method == "PATCH":
        headers["Content-Type"] = "application/merge-patch+json"
    async with (
        aiohttp.ClientSession() as s,
        s.request(
            method,
            f"{otc.api_url}{path}",
            data=None if body is None else json.dumps(body),
            headers={"Content-Type": "application/json", **headers},
        ) as r,
    ):
        return r.status, (await r.json() if r.content_type == "application/json" else None)


async def test_create_provisions_and_binds_delete_unbinds_and_deprovisions(
    brokered: tuple[OtcEmulator, RecordingBroker, str],
) -> None:
    otc, broker, tc = brokered
    params = {"cluster": "default", "namespace": "kabanero"}
    status, tool = await _call(
        otc,
        "POST",
        f"/toolchains/{tc}/tools",
        {"tool_type_id": "kabanero-events", "name": "ev", "parameters": params},
    )
    assert status == 201, tool
    sid = tool["id"]
    basic = "Basic " + base64.b64encode(b"bid:bsecret").decode()
    (put, bind) = broker.calls
    assert put[:2] == ("PUT", f"/kabanero-events-broker/api/v1/service_instances/{sid}") and put[3] == basic
    assert put[2]["service_id"] == "kabanero-events" and put[2]["parameters"] == params
    assert put[2]["service_credentials"] and put[2]["organization_guid"]
    assert bind[:2] == ("PUT", f"/kabanero-events-broker/api/v1/service_instances/{sid}/toolchains/{tc}")
    assert bind[2]["toolchain_credentials"]
    assert tool["referent"]["ui_href"] == f"https://dash.example/{sid}"
    assert tool["parameters"] == params  # the tool keeps what the user gave

    broker.calls.clear()
    status, _ = await _call(otc, "PATCH", f"/toolchains/{tc}/tools/{sid}", {"parameters": {"namespace": "b"}})
    assert status == 200
    assert [(m, b["parameters"]) for m, _, b, _ in broker.calls] == [
        ("PATCH", {"cluster": "default", "namespace": "b"})
    ]

    broker.calls.clear()
    status, _ = await _call(otc, "DELETE", f"/toolchains/{tc}/tools/{sid}")
    assert status == 204
    assert [(m, p) for m, p, _, _ in broker.calls] == [
        ("DELETE", f"/kabanero-events-broker/api/v1/service_instances/{sid}/toolchains/{tc}"),
        ("DELETE", f"/kabanero-events-broker/api/v1/service_instances/{sid}"),
    ]
    assert otc.tools(tc) == []


@pytest.mark.parametrize(("action", "status", "otc_status"), [("provision", 400, 400), ("bind", 503, 502)])
async def test_broker_error_fails_the_create_in_otc_shape_and_leaves_nothing(
    brokered: tuple[OtcEmulator, RecordingBroker, str], action: str, status: int, otc_status: int
) -> None:
    otc, broker, tc = brokered
    broker.fail[action] = status
    got, body = await _call(
        otc, "POST", f"/toolchains/{tc}/tools", {"tool_type_id": "kabanero-events", "parameters": {}}
    )
    assert got == otc_status
    assert body["status_code"] == otc_status and body["trace"]
    (err,) = body["errors"]
    assert err["code"] == "broker_error" and f"{action} refused: bad cluster" in err["message"]
    assert otc.tools(tc) == []
    if action == "bind":  # the half-made instance is deprovisioned (orphan mitigation)
        assert [m for m, _, _, _ in broker.calls] == ["PUT", "PUT", "DELETE"]


async def test_broker_types_exist_only_with_a_broker_configured() -> None:
    async with OtcEmulator.running() as otc:
        tc = otc.seed_toolchain(name="tc")
        status, body = await _call(
            otc, "POST", f"/toolchains/{tc}/tools", {"tool_type_id": "kabanero-events"}
        )
        assert status == 400 and body["errors"][0]["code"] == "invalid_tool_type"
