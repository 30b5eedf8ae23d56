"""The OTC emulator (``emulators.otc``) against IBM's own Python SDK and raw HTTP.

IBM's SDK is synchronous: it runs in a worker thread (``asyncio.to_thread``) while the emulator
serves on the test's event loop.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import requests
from aiohttp import web
from ibm_cloud_sdk_core import ApiException
from ibm_cloud_sdk_core.authenticators import IAMAuthenticator
from ibm_continuous_delivery.cd_toolchain_v2 import CdToolchainV2, ToolchainTool, ToolsPager

from emulators.otc.testing import OtcEmulator

KEY = "test-key-1"
TC = "00000000-0000-4000-8000-0000000000aa"
RG = "6a9a01f2cff54a7f966f803d92877123"
ROOT = Path(__file__).resolve().parents[2]
TOOL_FIELDS = {
    "id",
    "resource_group_id",
    "crn",
    "tool_type_id",
    "toolchain_id",
    "toolchain_crn",
    "href",
    "referent",
    "name",
    "updated_at",
    "parameters",
    "state",
}


def custom_params(**extra: Any) -> dict[str, Any]:
    return {
        "type": "Kabanero Event Trigger",
        "lifecyclePhase": "DELIVER",
        "name": "trigger",
        "dashboard_url": "https://kabanero.example/triggers/t1",
        **extra,
    }


def link_params(repo: str = "org/repo") -> dict[str, Any]:
    return {"type": "link", "repo_url": f"https://github.com/{repo}.git"}


@pytest.fixture
async def otc() -> AsyncIterator[OtcEmulator]:
    async with OtcEmulator.running(api_keys=(KEY, "test-key-2")) as emulator:
        emulator.seed_toolchain(TC, name="kabanero toolchain")
        yield emulator


@pytest.fixture
async def http(otc: OtcEmulator) -> AsyncIterator[aiohttp.ClientSession]:
    headers = {"Authorization": f"Bearer {otc.issue_token()}"}
    async with aiohttp.ClientSession(base_url=otc.url, headers=headers) as session:
        yield session


def sdk(otc: OtcEmulator, api_key: str = KEY) -> CdToolchainV2:
    service = CdToolchainV2(authenticator=IAMAuthenticator(api_key, url=otc.url))
    service.set_service_url(otc.api_url)
    return service


async def in_thread[T](fn: Callable[[], T]) -> T:
    return await asyncio.to_thread(fn)


def claims(jwt: str) -> dict[str, Any]:
    payload = jwt.split(".")[1]
    decoded: dict[str, Any] = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    return decoded


async def eventually(check: Callable[[], Awaitable[bool]], *, timeout: float) -> None:
    """Poll an async condition until it holds; fail at the deadline."""
    deadline = time.monotonic() + timeout
    while not await check():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.05)


async def status_is(get_status: Callable[[], Awaitable[int]], expected: int) -> bool:
    return await get_status() == expected


def assert_ibm_error(status: int, body: dict[str, Any], headers: Any, expected: int) -> None:
    assert status == expected
    assert set(body) == {"errors", "trace", "status_code"}
    assert body["status_code"] == expected
    assert set(body["errors"][0]) == {"code", "message", "more_info"}
    assert body["trace"] == headers["X-Global-Transaction-ID"]
    uuid.UUID(body["trace"])


async def post_tool(
    http: aiohttp.ClientSession, body: dict[str, Any], toolchain: str = TC
) -> tuple[int, dict[str, Any], Any]:
    async with http.post(f"/toolchain/v2/toolchains/{toolchain}/tools", json=body) as resp:
        return resp.status, await resp.json(), resp.headers


# --- IAM ------------------------------------------------------------------------------------------


async def test_token_endpoint_issues_jwts_the_sdk_core_accepts(otc: OtcEmulator) -> None:
    async with (
        aiohttp.ClientSession() as s,
        s.post(
            f"{otc.url}/identity/token",
            data={
                "grant_type": "urn:ibm:params:oauth:grant-type:apikey",
                "apikey": KEY,
                "response_type": "cloud_iam",
            },
            headers={"Accept": "application/json"},
        ) as resp,
    ):
        assert resp.status == 200
        body = await resp.json()
    assert {"access_token", "refresh_token", "token_type", "expires_in", "expiration"} <= set(body)
    assert body["token_type"] == "Bearer"
    assert body["expires_in"] == 3600
    access = claims(body["access_token"])
    assert access["exp"] - access["iat"] == 3600 == body["expiration"] - access["iat"]
    assert "iat" in claims(body["refresh_token"])

    authenticator = IAMAuthenticator(KEY, url=otc.url)
    token = await in_thread(authenticator.token_manager.get_token)
    assert claims(token)["sub_type"] == "ServiceId"
    assert authenticator.token_manager.expire_time == claims(token)["exp"]
    # the apikey never reaches the call log
    assert all(c.body["apikey"] == "***" for c in otc.calls() if c.path == "/identity/token")


@pytest.mark.parametrize(
    ("form", "code"),
    [
        pytest.param(
            {"grant_type": "urn:ibm:params:oauth:grant-type:apikey", "apikey": "nope"}, "BXNIM0415E"
        ),
        pytest.param({"grant_type": "password", "apikey": KEY}, "BXNIM0106E", id="grant-type"),
        pytest.param({"apikey": KEY}, "BXNIM0109E", id="no-grant-type"),
    ],
)
async def test_token_endpoint_rejects_bad_requests(otc: OtcEmulator, form: dict[str, str], code: str) -> None:
    async with aiohttp.ClientSession() as s, s.post(f"{otc.url}/identity/token", data=form) as resp:
        assert resp.status == 400
        body = await resp.json()
    assert body["errorCode"] == code
    assert body["errorMessage"]


async def test_sdk_reports_an_unknown_api_key(otc: OtcEmulator) -> None:
    with pytest.raises(ApiException) as info:
        await in_thread(lambda: sdk(otc, "wrong").get_toolchain_by_id(TC))
    assert info.value.status_code == 400
    assert "API key could not be found" in info.value.message


@pytest.mark.parametrize(
    "authorization",
    [
        pytest.param(None, id="missing"),
        pytest.param("Basic Zm9vOmJhcg==", id="not-bearer"),
        pytest.param("Bearer not-a-jwt", id="garbage"),
        pytest.param("Bearer eyJhbGciOiJIUzI1NiJ9.eyJleHAiOjk5OTk5OTk5OTl9.c2ln", id="bad-signature"),
    ],
)
async def test_api_requires_a_valid_bearer_token(otc: OtcEmulator, authorization: str | None) -> None:
    headers = {"Authorization": authorization} if authorization else {}
    async with (
        aiohttp.ClientSession() as s,
        s.get(f"{otc.api_url}/toolchains/{TC}/tools", headers=headers) as resp,
    ):
        assert_ibm_error(resp.status, await resp.json(), resp.headers, 401)


async def test_refresh_token_is_not_an_access_token(otc: OtcEmulator) -> None:
    refresh = otc.emulator.issuer.issue(KEY, otc.url)["refresh_token"]
    async with (
        aiohttp.ClientSession() as s,
        s.get(f"{otc.api_url}/toolchains/{TC}", headers={"Authorization": f"Bearer {refresh}"}) as resp,
    ):
        assert resp.status == 401


async def test_expired_token_gets_401_and_the_sdk_refreshes() -> None:
    async with OtcEmulator.running(api_keys=(KEY,), token_ttl=1) as otc:
        otc.seed_toolchain(TC)
        token = otc.issue_token()
        async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {token}"}) as s:

            async def status() -> int:
                async with s.get(f"{otc.api_url}/toolchains/{TC}") as resp:
                    return resp.status

            assert await status() == 200
            await eventually(lambda: status_is(status, 401), timeout=3)

        service = sdk(otc)
        await in_thread(lambda: service.get_toolchain_by_id(TC))
        first = claims(service.authenticator.token_manager.access_token)
        await otc.wait_until(lambda: time.time() >= first["exp"], timeout=3)
        result = await in_thread(lambda: service.get_toolchain_by_id(TC))
        assert result.get_status_code() == 200
        assert sum(c.path == "/identity/token" for c in otc.calls()) == 2


async def test_advancing_the_clock_expires_tokens(otc: OtcEmulator, http: aiohttp.ClientSession) -> None:
    otc.advance_clock(3601)
    async with http.get(f"/toolchain/v2/toolchains/{TC}") as resp:
        body = await resp.json()
    assert_ibm_error(resp.status, body, resp.headers, 401)
    assert body["errors"][0]["code"] == "token_expired"


# --- tools through IBM's SDK --------------------------------------------------------------------


async def test_sdk_tool_lifecycle(otc: OtcEmulator) -> None:
    service = sdk(otc)

    created = await in_thread(
        lambda: service.create_tool(TC, "githubconsolidated", name="app-repo", parameters=link_params())
    )
    assert created.get_status_code() == 201
    tool = created.get_result()
    assert set(tool) == TOOL_FIELDS
    ToolchainTool.from_dict(tool)  # the SDK's own model accepts it
    uuid.UUID(tool["id"], version=4)
    assert tool["toolchain_id"] == TC
    assert tool["parameters"] == {**link_params(), "git_id": "github", "has_issues": True}
    assert tool["referent"]["api_href"] == "https://api.github.com/repos/org/repo"
    assert tool["state"] == "configured"
    assert tool["href"] == f"{otc.api_url}/toolchains/{TC}/tools/{tool['id']}"

    fetched = await in_thread(lambda: service.get_tool_by_id(TC, tool["id"]).get_result())
    assert fetched == tool

    patched = await in_thread(
        lambda: service.update_tool(TC, tool["id"], {"parameters": {"has_issues": False}}).get_result()
    )
    assert patched["parameters"]["has_issues"] is False
    assert patched["parameters"]["repo_url"] == link_params()["repo_url"]
    assert otc.calls()[-1].method == "PATCH"

    listed = await in_thread(lambda: ToolsPager(client=service, toolchain_id=TC, limit=10).get_all())
    assert [t["id"] for t in listed] == [tool["id"]]

    deleted = await in_thread(lambda: service.delete_tool(TC, tool["id"]))
    assert deleted.get_status_code() == 204
    with pytest.raises(ApiException) as info:
        await in_thread(lambda: service.get_tool_by_id(TC, tool["id"]))
    assert info.value.status_code == 404
    assert info.value.global_transaction_id
    assert otc.tools(TC) == []


async def test_sdk_toolchain_crud_and_cascading_delete(otc: OtcEmulator) -> None:
    service = sdk(otc)
    created = await in_thread(lambda: service.create_toolchain("my chain", RG, description="d"))
    assert created.get_status_code() == 201
    tid = created.get_result()["id"]
    await in_thread(lambda: service.create_tool(tid, "customtool", name="t", parameters=custom_params()))

    found = await in_thread(lambda: service.list_toolchains(RG, name="my chain").get_result())
    assert [t["id"] for t in found["toolchains"]] == [tid]
    assert found["total_count"] == 1

    patched = await in_thread(lambda: service.update_toolchain(tid, {"name": "renamed"}).get_result())
    assert patched["name"] == "renamed"
    assert patched["description"] == "d"

    await in_thread(lambda: service.delete_toolchain(tid))
    assert tid not in otc.emulator.store.toolchains
    assert tid not in otc.emulator.store.tools
    with pytest.raises(ApiException) as info:
        await in_thread(lambda: service.list_tools(tid))
    assert info.value.status_code == 404


async def test_toolchain_list_needs_a_resource_group(http: aiohttp.ClientSession) -> None:
    async with http.get("/toolchain/v2/toolchains") as resp:
        assert_ibm_error(resp.status, await resp.json(), resp.headers, 400)
    async with http.get("/toolchain/v2/toolchains", params={"resource_group_id": RG, "limit": "201"}) as resp:
        assert resp.status == 400


# --- validation -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        pytest.param(
            {"tool_type_id": "customtool", "name": "bad/name", "parameters": custom_params()},
            "pattern",
            id="name-charset",
        ),
        pytest.param(
            {"tool_type_id": "customtool", "name": "x" * 129, "parameters": custom_params()},
            "128",
            id="name-too-long",
        ),
        pytest.param({"tool_type_id": "github", "name": "x"}, "tool_type_id", id="unknown-type"),
        pytest.param(
            {"tool_type_id": "githubconsolidated", "parameters": {"repo_url": "https://github.com/a/b"}},
            "type",
            id="github-no-type",
        ),
        pytest.param(
            {"tool_type_id": "githubconsolidated", "parameters": {"type": "mirror"}},
            "new, clone, fork, link",
            id="github-bad-type",
        ),
        pytest.param(
            {"tool_type_id": "githubconsolidated", "parameters": {"type": "link"}},
            "repo_url",
            id="link-no-repo-url",
        ),
        pytest.param(
            {"tool_type_id": "customtool", "parameters": {**custom_params(), "dashboard_url": None}},
            "dashboard_url",
            id="custom-no-dashboard",
        ),
        pytest.param(
            {"tool_type_id": "customtool", "parameters": custom_params(lifecyclePhase="DEPLOY")},
            "lifecyclePhase",
            id="custom-bad-phase",
        ),
        pytest.param(
            {"tool_type_id": "customtool", "parameters": "nope"},
            "parameters",
            id="parameters-not-object",
        ),
    ],
)
async def test_create_tool_validation(
    otc: OtcEmulator, http: aiohttp.ClientSession, body: dict[str, Any], fragment: str
) -> None:
    status, payload, headers = await post_tool(http, body)
    assert_ibm_error(status, payload, headers, 400)
    assert fragment in payload["errors"][0]["message"]
    assert otc.tools(TC) == []


async def test_names_allow_non_ascii_and_duplicates(otc: OtcEmulator, http: aiohttp.ClientSession) -> None:
    for _ in range(2):
        status, _body, _ = await post_tool(
            http, {"tool_type_id": "customtool", "name": "tête-à-tête 1.0_x", "parameters": custom_params()}
        )
        assert status == 201
    assert [t.name for t in otc.tools(TC)] == ["tête-à-tête 1.0_x"] * 2


async def test_github_type_is_immutable(otc: OtcEmulator) -> None:
    service = sdk(otc)
    tool = await in_thread(
        lambda: service.create_tool(TC, "githubconsolidated", name="r", parameters=link_params()).get_result()
    )
    for patch in (
        {"parameters": {"type": "new"}},
        {"parameters": {"type": None}},
        {"tool_type_id": "hostedgit"},
    ):
        with pytest.raises(ApiException) as info:
            await in_thread(lambda p=patch: service.update_tool(TC, tool["id"], p))  # type: ignore[misc]
        assert info.value.status_code == 400
    assert otc.tools(TC)[0].parameters["type"] == "link"


async def test_patch_requires_merge_patch_content_type(http: aiohttp.ClientSession) -> None:
    _, tool, _ = await post_tool(http, {"tool_type_id": "customtool", "parameters": custom_params()})
    async with http.patch(f"/toolchain/v2/toolchains/{TC}/tools/{tool['id']}", json={"name": "x"}) as resp:
        assert_ibm_error(resp.status, await resp.json(), resp.headers, 415)


async def test_unknown_ids_and_routes(http: aiohttp.ClientSession) -> None:
    missing = str(uuid.uuid4())
    async with http.get(f"/toolchain/v2/toolchains/{missing}/tools") as resp:
        assert_ibm_error(resp.status, await resp.json(), resp.headers, 404)
    async with http.get(f"/toolchain/v2/toolchains/{TC}/tools/{missing}") as resp:
        assert_ibm_error(resp.status, await resp.json(), resp.headers, 404)
    async with http.get(f"/toolchain/v2/toolchains/{TC}/tools/not-a-uuid") as resp:
        assert_ibm_error(resp.status, await resp.json(), resp.headers, 400)
    async with http.get("/toolchain/v2/nowhere") as resp:
        assert_ibm_error(resp.status, await resp.json(), resp.headers, 404)


async def test_merge_patch_null_removes_keys(otc: OtcEmulator, http: aiohttp.ClientSession) -> None:
    params = custom_params(
        description="old", imageUrl="https://img/x.png", **{"additional-properties": {"a": 1}}
    )
    _, tool, _ = await post_tool(http, {"tool_type_id": "customtool", "name": "card", "parameters": params})
    patch = {
        "name": None,
        "parameters": {
            "description": None,
            "imageUrl": "https://img/y.png",
            "additional-properties": {"b": 2},
        },
    }
    async with http.patch(
        f"/toolchain/v2/toolchains/{TC}/tools/{tool['id']}",
        data=json.dumps(patch),
        headers={"Content-Type": "application/merge-patch+json"},
    ) as resp:
        assert resp.status == 200
        patched = await resp.json()
    assert "name" not in patched
    assert "description" not in patched["parameters"]
    assert patched["parameters"]["imageUrl"] == "https://img/y.png"
    assert patched["parameters"]["additional-properties"] == {"a": 1, "b": 2}
    assert otc.tools(TC)[0].parameters == patched["parameters"]

    # removing a required parameter is a validation error and leaves the tool as it was
    async with http.patch(
        f"/toolchain/v2/toolchains/{TC}/tools/{tool['id']}",
        data=json.dumps({"parameters": {"dashboard_url": None}}),
        headers={"Content-Type": "application/merge-patch+json"},
    ) as resp:
        assert resp.status == 400
    assert otc.tools(TC)[0].parameters == patched["parameters"]


# --- paging ---------------------------------------------------------------------------------------


async def _create_many(http: aiohttp.ClientSession, count: int) -> list[str]:
    ids = []
    for n in range(count):
        status, tool, _ = await post_tool(
            http, {"tool_type_id": "customtool", "name": f"tool {n:03d}", "parameters": custom_params()}
        )
        assert status == 201
        ids.append(tool["id"])
    return ids


async def test_sdk_pager_walks_250_tools(otc: OtcEmulator, http: aiohttp.ClientSession) -> None:
    ids = await _create_many(http, 250)
    service = sdk(otc)
    for limit in (None, 100, 200):
        pager = ToolsPager(client=service, toolchain_id=TC, limit=limit)
        assert [t["id"] for t in await in_thread(pager.get_all)] == ids

    first = await in_thread(lambda: service.list_tools(TC).get_result())
    assert first["limit"] == 20
    assert len(first["tools"]) == 20
    assert first["total_count"] == 250
    assert "previous" not in first
    last = await in_thread(
        lambda: service.list_tools(TC, limit=100, start=first["last"]["start"]).get_result()
    )
    assert [t["id"] for t in last["tools"]] == ids[240:]  # aligned to the first page's limit (20)
    assert "next" not in last

    page = await in_thread(lambda: service.list_tools(TC, limit=100).get_result())
    assert page["last"]["start"]
    second = await in_thread(
        lambda: service.list_tools(TC, limit=100, start=page["next"]["start"]).get_result()
    )
    assert [t["id"] for t in second["tools"]] == ids[100:200]
    assert "start" not in second["previous"]  # the previous page is the first one

    for bad in ({"limit": "0"}, {"limit": "201"}, {"limit": "x"}, {"start": "garbage!"}):
        async with http.get(f"/toolchain/v2/toolchains/{TC}/tools", params=bad) as resp:
            assert resp.status == 400, bad


async def test_deletes_while_paging_skip_nothing(otc: OtcEmulator, http: aiohttp.ClientSession) -> None:
    ids = await _create_many(http, 30)
    async with http.get(f"/toolchain/v2/toolchains/{TC}/tools", params={"limit": "10"}) as resp:
        page = await resp.json()
    for tool_id in ids[:10]:
        async with http.delete(f"/toolchain/v2/toolchains/{TC}/tools/{tool_id}") as resp:
            assert resp.status == 204
    async with http.get(
        f"/toolchain/v2/toolchains/{TC}/tools", params={"limit": "10", "start": page["next"]["start"]}
    ) as resp:
        second = await resp.json()
    assert [t["id"] for t in second["tools"]] == ids[10:20]


async def test_toolchain_paging(otc: OtcEmulator, http: aiohttp.ClientSession) -> None:
    for n in range(4):
        otc.seed_toolchain(name=f"chain {n}")
    otc.seed_toolchain(name="elsewhere", resource_group_id="f" * 32)
    seen: list[str] = []
    params: dict[str, str] = {"resource_group_id": RG, "limit": "2"}
    while True:
        async with http.get("/toolchain/v2/toolchains", params=params) as resp:
            page = await resp.json()
        assert page["total_count"] == 5
        seen += [t["id"] for t in page["toolchains"]]
        if "next" not in page:
            break
        params["start"] = page["next"]["start"]
    assert seen == [t.id for t in otc.emulator.store.toolchains.values() if t.resource_group_id == RG]


# --- faults ---------------------------------------------------------------------------------------


async def _statuses(http: aiohttp.ClientSession, count: int) -> list[int]:
    codes = []
    for _ in range(count):
        async with http.get(f"/toolchain/v2/toolchains/{TC}/tools") as resp:
            codes.append(resp.status)
            if resp.status >= 500:
                assert_ibm_error(resp.status, await resp.json(), resp.headers, resp.status)
    return codes


async def test_5xx_share_is_deterministic_with_a_seed(otc: OtcEmulator, http: aiohttp.ClientSession) -> None:
    otc.set_faults(seed=42, error_rate=0.3, error_status=502)
    first = await _statuses(http, 60)
    assert set(first) == {200, 502}
    assert 8 <= first.count(502) <= 30
    otc.set_faults(seed=42, error_rate=0.3, error_status=502)
    assert await _statuses(http, 60) == first
    faulted = [c for c in otc.calls() if c.status == 502]
    assert faulted
    assert all(c.fault == "5xx" for c in faulted)
    otc.clear_faults()
    assert set(await _statuses(http, 5)) == {200}


async def test_5xx_fault_changes_nothing(otc: OtcEmulator, http: aiohttp.ClientSession) -> None:
    otc.set_faults(error_rate=1.0)
    status, _, _ = await post_tool(http, {"tool_type_id": "customtool", "parameters": custom_params()})
    assert status == 503
    assert otc.tools(TC) == []


async def test_429_storm_with_retry_after_and_early_retries(
    otc: OtcEmulator, http: aiohttp.ClientSession
) -> None:
    otc.set_faults(rate_limit={"count": 2, "retry_after": 7})
    for _ in range(2):
        async with http.get(f"/toolchain/v2/toolchains/{TC}") as resp:
            assert_ibm_error(resp.status, await resp.json(), resp.headers, 429)
            assert resp.headers["Retry-After"] == "7"
    async with http.get(f"/toolchain/v2/toolchains/{TC}") as resp:
        assert resp.status == 200
    otc.advance_clock(7.5)
    async with http.get(f"/toolchain/v2/toolchains/{TC}") as resp:
        assert resp.status == 200
    calls = otc.calls()[-4:]
    assert [c.status for c in calls] == [429, 429, 200, 200]
    assert [c.early for c in calls] == [None, True, True, False]
    assert [c.fault for c in calls] == ["429", "429", None, None]


async def test_429_storm_for_a_time_window(otc: OtcEmulator, http: aiohttp.ClientSession) -> None:
    otc.set_faults(rate_limit={"seconds": 30, "retry_after": 1})
    assert await _statuses(http, 3) == [429, 429, 429]
    otc.advance_clock(31)
    assert await _statuses(http, 2) == [200, 200]


async def test_sdk_retries_honour_retry_after(otc: OtcEmulator) -> None:
    otc.set_faults(rate_limit={"count": 1, "retry_after": 1})
    service = sdk(otc)
    service.enable_retries(max_retries=2, retry_interval=0.1)
    result = await in_thread(lambda: service.get_toolchain_by_id(TC))
    assert result.get_status_code() == 200
    api_calls = [c for c in otc.calls() if c.path.startswith("/toolchain/v2")]
    assert [c.status for c in api_calls] == [429, 200]
    assert api_calls[1].early is False


async def test_latency(otc: OtcEmulator, http: aiohttp.ClientSession) -> None:
    otc.set_faults(latency_ms=150)
    started = time.monotonic()
    assert await _statuses(http, 1) == [200]
    assert time.monotonic() - started >= 0.15


async def test_commit_then_drop(otc: OtcEmulator, http: aiohttp.ClientSession) -> None:
    otc.set_faults(drop_after_commit=1)
    with pytest.raises(aiohttp.ServerDisconnectedError):
        await post_tool(
            http, {"tool_type_id": "customtool", "name": "ambiguous", "parameters": custom_params()}
        )
    assert [t.name for t in otc.tools(TC)] == ["ambiguous"]
    record = otc.calls()[-1]
    assert (record.status, record.dropped, record.fault) == (201, True, "drop")
    # only the next N mutating calls: reads and later writes are answered
    assert await _statuses(http, 1) == [200]
    status, _, _ = await post_tool(
        http, {"tool_type_id": "customtool", "name": "next", "parameters": custom_params()}
    )
    assert status == 201


async def test_commit_then_drop_seen_by_the_sdk(otc: OtcEmulator) -> None:
    service = sdk(otc)
    await in_thread(lambda: service.get_toolchain_by_id(TC))  # fetch the token first
    otc.set_faults(drop_after_commit=1)
    with pytest.raises(requests.exceptions.ConnectionError):
        await in_thread(
            lambda: service.create_tool(
                TC, "githubconsolidated", name="repo-x", parameters=link_params("o/x")
            )
        )
    tools = await in_thread(lambda: ToolsPager(client=service, toolchain_id=TC).get_all())
    assert [t["name"] for t in tools] == ["repo-x"]  # a client resolves the ambiguity by name


async def test_rules_fail_matching_calls(otc: OtcEmulator, http: aiohttp.ClientSession) -> None:
    otc.set_faults(
        rules=[
            {
                "method": "POST",
                "path": r"/toolchain/v2/toolchains/[^/]+/tools",
                "name": "poison",
                "status": 400,
            },
            {"method": "POST", "path": r".*/tools", "name": "once", "status": 500, "times": 1},
        ]
    )
    body = {"tool_type_id": "customtool", "parameters": custom_params()}
    for _ in range(2):
        status, payload, headers = await post_tool(http, {**body, "name": "poison"})
        assert_ibm_error(status, payload, headers, 400)
    assert (await post_tool(http, {**body, "name": "once"}))[0] == 500
    assert (await post_tool(http, {**body, "name": "once"}))[0] == 201
    assert (await post_tool(http, {**body, "name": "fine"}))[0] == 201
    assert [t.name for t in otc.tools(TC)] == ["once", "fine"]
    assert otc.emulator.faults.status().rules_remaining == [None, 0]


# --- control endpoints and call log ---------------------------------------------------------------


async def test_call_log(otc: OtcEmulator, http: aiohttp.ClientSession) -> None:
    start = otc.call_count
    await post_tool(http, {"tool_type_id": "customtool", "name": "logged", "parameters": custom_params()})
    async with http.get(f"/toolchain/v2/toolchains/{TC}/tools", params={"limit": "5"}) as resp:
        assert resp.status == 200
    async with http.get("/_emulator/state") as resp:
        assert resp.status == 200
    async with http.get("/_emulator/calls", params={"since": str(start)}) as resp:
        log = await resp.json()
    assert log["total"] == start + 2
    post, get = log["calls"]
    assert (post["index"], post["method"], post["status"]) == (start, "POST", 201)
    assert post["body"]["name"] == "logged"
    assert (get["query"], get["status"], get["body"]) == ({"limit": "5"}, 200, None)
    assert {"time", "path", "trace", "dropped", "early"} <= set(get)

    async with http.post("/_emulator/reset", json={"state": False, "faults": False}) as resp:
        assert resp.status == 200
    assert otc.calls() == []
    assert len(otc.tools(TC)) == 1
    await _statuses(http, 1)
    assert otc.calls()[0].index == start + 2  # indexes keep growing across a reset


async def test_control_endpoints(otc: OtcEmulator) -> None:
    tid = "11111111-2222-4333-8444-555555555555"
    async with aiohttp.ClientSession(base_url=otc.url) as s:
        async with s.post("/_emulator/toolchains", json={"id": tid, "name": "seeded"}) as resp:
            assert resp.status == 201
            assert (await resp.json())["id"] == tid
        async with s.post("/_emulator/toolchains", json={"id": tid}) as resp:
            assert resp.status == 409
        async with s.post("/_emulator/toolchains", json={"id": "nope"}) as resp:
            assert resp.status == 400
        async with s.post("/_emulator/faults", json={"error_rate": 2}) as resp:
            assert resp.status == 400
        async with s.post("/_emulator/faults", json={"latency_ms": 5, "drop_after_commit": 2}) as resp:
            assert (await resp.json())["drop_after_commit_remaining"] == 2
        async with s.delete("/_emulator/faults") as resp:
            assert (await resp.json())["config"]["latency_ms"] == 0

        otc.emulator.store.create_tool(tid, tool_type_id="customtool", name="t", parameters={})
        async with s.get("/_emulator/state") as resp:
            state = await resp.json()
        assert [t["id"] for t in state["toolchains"]] == [TC, tid]
        assert [t["name"] for t in state["toolchains"][1]["tools"]] == ["t"]
        assert state == otc.state.model_dump(mode="json", exclude_none=True)

        async with s.post("/_emulator/reset") as resp:
            assert resp.status == 200
        assert otc.state.toolchains == []
    assert otc.calls() == []  # control calls are not logged


# --- OTC platform driver --------------------------------------------------------------------------


@pytest.fixture
async def fake_broker() -> AsyncIterator[tuple[str, list[dict[str, Any]]]]:
    """A stand-in broker that records what the platform sends and answers like the contract."""
    seen: list[dict[str, Any]] = []

    async def handle(request: web.Request) -> web.Response:
        body = await request.json() if request.body_exists else None
        seen.append(
            {
                "method": request.method,
                "path": request.path,
                "auth": request.headers.get("Authorization"),
                "body": body,
            }
        )
        if request.method == "PUT" and "/toolchains/" not in request.path:
            sid = request.match_info["tail"].split("/")[-1]
            return web.json_response({"instance_id": sid, "parameters": {"label": "x"}})
        if request.method == "PATCH":
            return web.json_response({"description": "nope"}, status=400)
        return web.Response(status=204)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    try:
        yield f"http://{host}:{port}", seen
    finally:
        await runner.cleanup()


async def test_platform_driver_over_http(fake_broker: tuple[str, list[dict[str, Any]]]) -> None:
    url, seen = fake_broker
    basic = "Basic " + base64.b64encode(b"otc:s3cret").decode()
    async with (
        OtcEmulator.running(broker_url=url, broker_id="otc", broker_secret="s3cret") as otc,
        aiohttp.ClientSession(base_url=otc.url) as s,
    ):

        async def act(action: str, **body: Any) -> dict[str, Any]:
            async with s.post(f"/_emulator/platform/{action}", json=body) as resp:
                assert resp.status == 200, await resp.text()
                reply: dict[str, Any] = await resp.json()
                return reply

        sid, tid = "sid-1", TC
        reply = await act("provision", broker="kabanero-broker", instance_id=sid, parameters={"cluster": "c"})
        assert reply == {"status": 200, "body": {"instance_id": sid, "parameters": {"label": "x"}}}
        assert (await act("update", broker="kabanero-broker", instance_id=sid, parameters={}))[
            "status"
        ] == 400
        for action in ("bind", "unbind", "message"):
            reply = await act(action, broker="kabanero-events-broker", instance_id=sid, toolchain_id=tid)
            assert reply == {"status": 204, "body": None}
        await act("unbind-all", broker="kabanero-events-broker", instance_id=sid)
        await act("deprovision", broker="kabanero-events-broker", instance_id=sid)
        async with s.post("/_emulator/platform/bind", json={"broker": "other", "instance_id": sid}) as resp:
            assert resp.status == 400

    assert all(r["auth"] == basic for r in seen)
    assert [(r["method"], r["path"]) for r in seen] == [
        ("PUT", f"/kabanero-broker/api/v1/service_instances/{sid}"),
        ("PATCH", f"/kabanero-broker/api/v1/service_instances/{sid}"),
        ("PUT", f"/kabanero-events-broker/api/v1/service_instances/{sid}/toolchains/{tid}"),
        ("DELETE", f"/kabanero-events-broker/api/v1/service_instances/{sid}/toolchains/{tid}"),
        ("POST", "/kabanero-events-broker/api/v1/messaging/accept"),
        ("DELETE", f"/kabanero-events-broker/api/v1/service_instances/{sid}/toolchains"),
        ("DELETE", f"/kabanero-events-broker/api/v1/service_instances/{sid}"),
    ]
    provision = seen[0]["body"]
    assert provision["service_id"] == "kabanero"
    assert provision["parameters"] == {"cluster": "c"}
    uuid.UUID(provision["organization_guid"])
    assert provision["service_credentials"]
    assert seen[2]["body"]["toolchain_credentials"]
    assert seen[4]["body"] == {
        "service_id": "toolchain",
        "instance_id": sid,
        "toolchain_id": tid,
        "payload": {},
    }


async def test_platform_needs_a_broker(otc: OtcEmulator) -> None:
    async with (
        aiohttp.ClientSession(base_url=otc.url) as s,
        s.post(
            "/_emulator/platform/provision", json={"broker": "kabanero-broker", "instance_id": "x"}
        ) as resp,
    ):
        assert resp.status == 409


async def test_platform_config_endpoint(
    otc: OtcEmulator, fake_broker: tuple[str, list[dict[str, Any]]]
) -> None:
    url, seen = fake_broker
    async with aiohttp.ClientSession(base_url=otc.url) as s:
        cfg = {"broker_url": url, "broker_id": "a", "broker_secret": "b"}
        async with s.put("/_emulator/platform/config", json=cfg) as resp:
            assert resp.status == 200
        reply = await otc.platform.deprovision("kabanero-broker", "gone")
    assert reply.status == 204
    assert seen[0]["path"] == "/kabanero-broker/api/v1/service_instances/gone"


# --- the CLI --------------------------------------------------------------------------------------


async def test_cli_serves_until_terminated() -> None:
    env = {k: v for k, v in os.environ.items() if k != "OTC_API_KEY"}
    proc = await asyncio.create_subprocess_exec(
        *(sys.executable, "-m", "emulators.otc", "--port", "0", "--api-key", "a", "--api-key", "b"),
        cwd=ROOT,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        assert proc.stdout is not None
        line = (await asyncio.wait_for(proc.stdout.readline(), 15)).decode().strip()
        assert line.startswith("OTC_URL=http://127.0.0.1:"), line
        base = line.removeprefix("OTC_URL=")
        async with (
            aiohttp.ClientSession() as s,
            s.post(
                f"{base}/identity/token",
                data={"grant_type": "urn:ibm:params:oauth:grant-type:apikey", "apikey": "b"},
            ) as resp,
        ):
            assert resp.status == 200
    finally:
        proc.terminate()
        assert await asyncio.wait_for(proc.wait(), 10) == 0

    missing_key = await asyncio.create_subprocess_exec(
        *(sys.executable, "-m", "emulators.otc", "--port", "0"),
        cwd=ROOT,
        env=env,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    _, stderr = await asyncio.wait_for(missing_key.communicate(), 15)
    assert missing_key.returncode == 2
    assert "--api-key" in stderr.decode()
