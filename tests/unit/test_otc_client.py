"""OtcClient against emulators.otc in-process over HTTP: IAM single flight, 401, paging, faults, and
an OTC that lies (a 2xx that is cut off, of the wrong shape, endless or huge; a wild Retry-After)."""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import AsyncIterator
from dataclasses import dataclass

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from emulators.otc.faults import ErrorRule, FaultConfig, LieRule, RateLimitFault
from emulators.otc.testing import OtcEmulator
from services.otc_writer.otc_client import (
    IamTokenManager,
    IamUnavailableError,
    OtcCircuitOpenError,
    OtcClient,
    OtcClientConfig,
    OtcEndlessListingError,
    OtcMalformedError,
    OtcNotFoundError,
    OtcPermanentError,
    OtcRetryableError,
    OtcTooLargeError,
    OtcUnavailableError,
)
from shared.dependencies import unavailable_dependency

KEY = "unit-key"
GH = {"type": "link", "repo_url": "https://github.com/o/r"}


class FakeTime:
    """The client's injected clock and sleep: a wait advances this clock and the emulator's at
    once, without real waiting (the emulator still judges whether a retry came too early)."""

    def __init__(self, otc: OtcEmulator) -> None:
        self.now = 0.0
        self.slept: list[float] = []
        self._otc = otc

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.advance(seconds)
        await asyncio.sleep(0)

    def advance(self, seconds: float) -> None:
        self.now += seconds
        self._otc.advance_clock(seconds)


@dataclass
class Ctx:
    otc: OtcEmulator
    client: OtcClient
    iam: IamTokenManager
    session: aiohttp.ClientSession
    time: FakeTime

    def token_calls(self) -> int:
        return sum(1 for c in self.otc.calls() if c.path == "/identity/token")


def make_client(
    otc: OtcEmulator, session: aiohttp.ClientSession, time: FakeTime, **config: float
) -> tuple[OtcClient, IamTokenManager]:
    iam = IamTokenManager(session, otc.url, KEY, clock=time.clock)
    cfg = OtcClientConfig(
        api_url=otc.api_url,
        rate_limit=config.pop("rate_limit", 1000.0),
        backoff_base_s=0.01,
        backoff_cap_s=0.05,
        page_limit=int(config.pop("page_limit", 100)),
        **config,  # type: ignore[arg-type]
    )
    return OtcClient(cfg, session, iam, rng=random.Random(3), clock=time.clock, sleep=time.sleep), iam


@pytest.fixture
async def ctx() -> AsyncIterator[Ctx]:
    async with (
        OtcEmulator.running(port=0, api_keys=(KEY,), token_ttl=100) as otc,
        aiohttp.ClientSession() as s,
    ):
        time = FakeTime(otc)
        client, iam = make_client(otc, s, time)
        yield Ctx(otc, client, iam, s, time)


async def test_crud_with_merge_patch_and_paging(ctx: Ctx) -> None:
    tc = ctx.otc.seed_toolchain()
    small, _ = make_client(ctx.otc, ctx.session, ctx.time, page_limit=2)
    created = [
        await ctx.client.create_tool(tc, tool_type_id="githubconsolidated", name=f"t{i}", parameters=GH)
        for i in range(5)
    ]
    assert [t.name for t in await small.list_tools(tc)] == [f"t{i}" for i in range(5)]
    assert sum(1 for c in ctx.otc.calls() if c.method == "GET") == 3  # 3 pages of 2
    patched = await ctx.client.update_tool(
        tc, created[0].id, {"parameters": {"has_issues": None, "title": "x"}}
    )
    assert "has_issues" not in patched.parameters and patched.parameters["title"] == "x"
    patch_call = next(c for c in ctx.otc.calls() if c.method == "PATCH")
    assert patch_call.status == 200
    await ctx.client.delete_tool(tc, created[0].id)
    with pytest.raises(OtcNotFoundError):
        await ctx.client.get_tool(tc, created[0].id)


async def test_token_single_flight_and_refresh_before_expiry(ctx: Ctx) -> None:
    tc = ctx.otc.seed_toolchain()
    await asyncio.gather(*(ctx.client.list_tools(tc) for _ in range(20)))
    assert ctx.token_calls() == 1
    ctx.time.advance(86)  # past the refresh point (85 % of the 100 s lifetime), not yet expired
    await asyncio.gather(*(ctx.client.list_tools(tc) for _ in range(10)))
    assert ctx.token_calls() == 2


async def test_401_forces_one_refresh_then_retries(ctx: Ctx) -> None:
    tc = ctx.otc.seed_toolchain()
    await ctx.client.list_tools(tc)
    ctx.otc.advance_clock(101)  # the token expired server-side before our refresh point
    tools = await asyncio.gather(*(ctx.client.list_tools(tc) for _ in range(5)))
    assert tools == [[]] * 5
    assert ctx.token_calls() == 2
    assert sum(1 for c in ctx.otc.calls() if c.status == 401) >= 1


async def test_bad_api_key_is_iam_unavailable_without_leaking_it(ctx: Ctx) -> None:
    iam = IamTokenManager(ctx.session, ctx.otc.url, "wrong-secret-key")
    client = OtcClient(OtcClientConfig(api_url=ctx.otc.api_url), ctx.session, iam)
    with pytest.raises(IamUnavailableError) as err:
        await client.list_tools(ctx.otc.seed_toolchain())
    # Not the message's fault: the consumer holds messages instead of dead-lettering them.
    assert unavailable_dependency(err.value) == "iam"
    assert "wrong-secret-key" not in str(err.value)
    assert "API key could not be found" in str(err.value)
    assert iam.rejected is not None and "wrong-secret-key" not in iam.rejected
    assert not await client.probe()


async def test_probe_tells_whether_otc_answers_and_closes_the_circuit(ctx: Ctx) -> None:
    tc = ctx.otc.seed_toolchain()
    client, _ = make_client(
        ctx.otc, ctx.session, ctx.time, breaker_threshold=3, max_attempts=3, breaker_reset_s=600
    )
    ctx.otc.set_faults(error_rate=1.0)
    with pytest.raises(OtcUnavailableError):  # the circuit opened on the way: OTC is down
        await client.list_tools(tc)
    assert client.breaker.state == "open"
    assert not await client.probe()
    ctx.otc.clear_faults()
    assert await client.probe()
    assert client.breaker.state == "closed"
    assert await client.list_tools(tc) == []


async def test_5xx_retried_then_gives_up_retryable(ctx: Ctx) -> None:
    tc = ctx.otc.seed_toolchain()
    ctx.otc.set_faults(error_rate=1.0)
    with pytest.raises(OtcRetryableError) as err:
        await ctx.client.list_tools(tc)
    assert err.value.status == 503 and err.value.transaction_id
    assert sum(1 for c in ctx.otc.calls() if c.status == 503) == ctx.client.config.max_attempts


async def test_breaker_opens_and_refuses_without_calling(ctx: Ctx) -> None:
    tc = ctx.otc.seed_toolchain()
    client, _ = make_client(
        ctx.otc, ctx.session, ctx.time, breaker_threshold=3, max_attempts=3, breaker_reset_s=60
    )
    ctx.otc.set_faults(error_rate=1.0)
    with pytest.raises(OtcRetryableError):
        await client.list_tools(tc)
    before = ctx.otc.call_count
    with pytest.raises(OtcCircuitOpenError):
        await client.list_tools(tc)
    assert ctx.otc.call_count == before


async def test_429_retry_after_respected(ctx: Ctx) -> None:
    tc = ctx.otc.seed_toolchain()
    ctx.otc.set_faults(rate_limit=RateLimitFault(count=2, retry_after=1))
    started = ctx.time.now
    assert await ctx.client.list_tools(tc) == []
    assert ctx.time.now - started >= 2.0  # two advertised waits of 1 s, on the injected clock
    assert not [c for c in ctx.otc.calls() if c.early]


async def test_ambiguous_create_adopts_the_committed_tool(ctx: Ctx) -> None:
    tc = ctx.otc.seed_toolchain()
    ctx.otc.set_faults(drop_after_commit=1)
    tool = await ctx.client.create_tool(tc, tool_type_id="githubconsolidated", name="once", parameters=GH)
    assert [t.id for t in ctx.otc.tools(tc)] == [tool.id]
    assert [c.method for c in ctx.otc.calls() if c.path.endswith("/tools")] == ["POST", "GET"]


async def test_error_mapping_keeps_ibm_message(ctx: Ctx) -> None:
    tc = ctx.otc.seed_toolchain()
    with pytest.raises(OtcPermanentError) as err:
        await ctx.client.create_tool(tc, tool_type_id="githubconsolidated", name="bad/name", parameters=GH)
    assert err.value.status == 400 and "name" in err.value.message
    ctx.otc.set_faults(FaultConfig(rules=[ErrorRule(path=".*/tools", method="POST", status=409, times=1)]))
    tool = await ctx.client.create_tool(tc, tool_type_id="githubconsolidated", name="ok", parameters=GH)
    assert tool.name == "ok"  # 409 is retryable


async def test_retry_after_holds_back_callers_already_waiting_for_the_rate_limit(ctx: Ctx) -> None:
    """A caller queued in the token bucket when a 429 arrives must still wait for Retry-After."""
    tc = ctx.otc.seed_toolchain()
    # Burst 1.5: the first call takes a token, the second waits ~0.33 s in the bucket, well before
    # the 1 s the 429 (answered to the first call) advertises.
    client, iam = make_client(ctx.otc, ctx.session, ctx.time, rate_limit=1.5)
    await iam.token()
    ctx.otc.set_faults(rate_limit=RateLimitFault(count=1, retry_after=1))
    assert list(await asyncio.gather(client.list_tools(tc), client.list_tools(tc))) == [[], []]
    calls = [c for c in ctx.otc.calls() if c.path.endswith("/tools")]
    assert [c.status for c in calls].count(429) == 1
    assert not [c for c in calls if c.early]


async def test_answers_below_500_do_not_open_the_breaker(ctx: Ctx) -> None:
    """409s and 404s are OTC answering normally: they must not count as failures of OTC."""
    tc = ctx.otc.seed_toolchain()
    client, _ = make_client(
        ctx.otc, ctx.session, ctx.time, breaker_threshold=2, max_attempts=3, breaker_reset_s=60
    )
    ctx.otc.set_faults(FaultConfig(rules=[ErrorRule(path=".*/tools", method="POST", status=409, times=2)]))
    await client.create_tool(tc, tool_type_id="githubconsolidated", name="after-409s", parameters=GH)
    for _ in range(3):
        with pytest.raises(OtcNotFoundError):
            await client.get_tool(tc, "00000000-0000-4000-8000-000000000000")
    assert client.breaker.state == "closed"


TOOLS = r".*/tools"
ONE_TOOL = r".*/tools/[^/]+"


def gets(otc: OtcEmulator, pattern: str = "/tools") -> int:
    return sum(1 for c in otc.calls() if c.method == "GET" and c.path.endswith(pattern))


def lies(*rules: LieRule) -> FaultConfig:
    return FaultConfig(lies=list(rules))


async def seed_tools(ctx: Ctx, count: int) -> str:
    tc = ctx.otc.seed_toolchain()
    for i in range(count):
        await ctx.client.create_tool(tc, tool_type_id="githubconsolidated", name=f"t{i}", parameters=GH)
    return tc


@pytest.mark.parametrize("lie", ["truncate", "wrong_shape"])
async def test_a_listing_that_is_not_one_is_retried_never_read_as_no_tools(ctx: Ctx, lie: str) -> None:
    tc = await seed_tools(ctx, 3)
    client, _ = make_client(ctx.otc, ctx.session, ctx.time, breaker_threshold=10)
    ctx.otc.set_faults(lies(LieRule(path=TOOLS, lie=lie)))  # type: ignore[arg-type]
    with pytest.raises(OtcMalformedError) as err:
        await client.list_tools(tc)
    assert isinstance(err.value, OtcRetryableError) and err.value.status == 200
    assert "not the documented answer" in str(err.value) and err.value.transaction_id
    assert "github.com" not in str(err.value)  # the body itself (parameters) is never echoed
    assert gets(ctx.otc) == client.config.max_attempts  # retried like a 5xx
    ctx.otc.set_faults(lies(LieRule(path=TOOLS, lie=lie, times=1)))  # type: ignore[arg-type]
    assert [t.name for t in await client.list_tools(tc)] == ["t0", "t1", "t2"]


async def test_a_cut_off_tool_is_retried_and_a_cut_off_create_adopts_the_tool(ctx: Ctx) -> None:
    tc = await seed_tools(ctx, 1)
    tool = ctx.otc.tools(tc)[0]
    client, _ = make_client(ctx.otc, ctx.session, ctx.time, breaker_threshold=10)
    ctx.otc.set_faults(lies(LieRule(path=ONE_TOOL, lie="truncate")))
    with pytest.raises(OtcMalformedError):
        await client.get_tool(tc, tool.id)
    # A POST answered 201 with a cut-off body was applied: looked up by name, never posted twice.
    ctx.otc.set_faults(lies(LieRule(path=TOOLS, method="POST", lie="truncate")))
    made = await ctx.client.create_tool(tc, tool_type_id="githubconsolidated", name="once", parameters=GH)
    assert [t.id for t in ctx.otc.tools(tc) if t.name == "once"] == [made.id]
    posts = [c for c in ctx.otc.calls() if c.method == "POST" and c.path.endswith("/tools")]
    assert len(posts) == 2  # t0, then "once" once


async def test_lies_count_against_the_breaker(ctx: Ctx) -> None:
    tc = ctx.otc.seed_toolchain()
    client, _ = make_client(
        ctx.otc, ctx.session, ctx.time, breaker_threshold=3, max_attempts=3, breaker_reset_s=60
    )
    ctx.otc.set_faults(lies(LieRule(path=TOOLS, lie="wrong_shape")))
    with pytest.raises(OtcUnavailableError):  # the circuit opened on the way: OTC is unwell
        await client.list_tools(tc)
    assert client.breaker.state == "open"


async def test_a_next_cursor_that_repeats_ends_the_listing(ctx: Ctx) -> None:
    tc = await seed_tools(ctx, 2)
    ctx.otc.set_faults(lies(LieRule(path=TOOLS, lie="self_next")))
    with pytest.raises(OtcEndlessListingError, match="repeated"):
        await ctx.client.list_tools(tc)
    assert gets(ctx.otc) == 2  # the first page, then the page its cursor names, once


@pytest.mark.parametrize(
    ("bound", "match"), [({"list_max_pages": 3}, "more than 3 pages"), ({"list_max_items": 2}, "more than 2")]
)
async def test_a_listing_is_bounded_in_pages_and_items(ctx: Ctx, bound: dict[str, float], match: str) -> None:
    tc = await seed_tools(ctx, 5)
    small, _ = make_client(ctx.otc, ctx.session, ctx.time, page_limit=1, **bound)
    with pytest.raises(OtcEndlessListingError, match=match):
        await small.list_tools(tc)
    assert gets(ctx.otc) == 3


async def test_a_listing_has_one_deadline_for_all_its_pages(ctx: Ctx) -> None:
    tc = await seed_tools(ctx, 5)
    # 1 s per page after the first on the injected clock (the token bucket's wait), 1.5 s for the
    # whole listing: each page is quick, the listing is not.
    slow, _ = make_client(ctx.otc, ctx.session, ctx.time, page_limit=1, rate_limit=1.0, deadline_s=1.5)
    with pytest.raises(OtcEndlessListingError, match=r"no end within 1.5s after 3 pages"):
        await slow.list_tools(tc)
    assert gets(ctx.otc) == 3


async def test_a_body_over_the_cap_is_not_read_and_is_retryable(ctx: Ctx) -> None:
    tc = await seed_tools(ctx, 1)
    client, _ = make_client(ctx.otc, ctx.session, ctx.time, max_body_bytes=64 * 1024, max_attempts=2)
    ctx.otc.set_faults(lies(LieRule(path=TOOLS, lie="huge", size_bytes=8 * 1024 * 1024)))
    with pytest.raises(OtcTooLargeError) as err:
        await client.list_tools(tc)
    assert isinstance(err.value, OtcMalformedError) and "size cap" in str(err.value)
    ctx.otc.set_faults(lies(LieRule(path=TOOLS, lie="huge", size_bytes=1024)))  # within the cap
    assert [t.name for t in await client.list_tools(tc)] == ["t0"]


@pytest.mark.parametrize("header", ["3600", "inf", "1e308"])
async def test_retry_after_is_clamped_and_readiness_says_until_when(ctx: Ctx, header: str) -> None:
    tc = ctx.otc.seed_toolchain()
    client, _ = make_client(ctx.otc, ctx.session, ctx.time, retry_after_max_s=30, deadline_s=10)
    ctx.otc.set_faults(rate_limit=RateLimitFault(count=1, retry_after_header=header))
    with pytest.raises(OtcUnavailableError):  # the hold ends after this call's deadline
        await client.list_tools(tc)
    assert client.gate.not_before - ctx.time.now == pytest.approx(30)
    ready, detail = client.readiness()
    assert not ready and detail.startswith("holding for OTC's rate limit until ")
    until = client.holding_until()
    assert until is not None and detail.endswith(f"{until:%Y-%m-%dT%H:%M:%SZ}")
    ctx.time.advance(30)
    assert client.readiness() == (True, "closed") and client.holding_until() is None
    assert await client.list_tools(tc) == []


async def test_the_emulator_tells_each_lie_on_the_wire(ctx: Ctx) -> None:
    """Emulator-only feature: what each lie looks like to any HTTP client."""
    tc = await seed_tools(ctx, 2)
    token = await ctx.iam.token()
    url = f"{ctx.otc.api_url}/toolchains/{tc}/tools"
    seen: dict[str, tuple[int, bytes, str | None]] = {}
    for lie in ("truncate", "wrong_shape", "self_next", "huge"):
        ctx.otc.set_faults(lies(LieRule(path=TOOLS, lie=lie, size_bytes=100_000, times=1)))
        async with ctx.session.get(url, headers={"Authorization": f"Bearer {token}"}) as resp:
            seen[lie] = (resp.status, await resp.read(), resp.headers.get("Content-Length"))
    assert seen["truncate"][0] == 200
    with pytest.raises(json.JSONDecodeError):
        json.loads(seen["truncate"][1])
    assert json.loads(seen["wrong_shape"][1]) == []
    listing = json.loads(seen["self_next"][1])
    assert len(listing["tools"]) == 2 and listing["next"]["start"]
    huge = json.loads(seen["huge"][1])
    assert len(huge["padding"]) == 100_000 and len(huge["tools"]) == 2
    assert seen["huge"][2] is None  # streamed: a client cannot tell its size up front
    assert [c.fault for c in ctx.otc.calls()[-4:]] == [f"lie:{k}" for k in seen]
    ctx.otc.set_faults(rate_limit=RateLimitFault(count=1, retry_after_header="inf"))
    async with ctx.session.get(url, headers={"Authorization": f"Bearer {token}"}) as resp:
        assert (resp.status, resp.headers["Retry-After"]) == (429, "inf")


@pytest.mark.parametrize("lie", ["huge", "truncate"])
async def test_iam_that_lies_is_unavailable_never_a_token(lie: str) -> None:
    """A token answer over the cap is not read; a cut-off one is no token (both: IAM unavailable)."""
    token = b'{"access_token": "' + b"t" * 100 + b'", "expires_in": 3600}'

    async def answer(request: web.Request) -> web.StreamResponse:
        if lie == "truncate":
            return web.Response(body=token[:40], content_type="application/json")
        resp = web.StreamResponse()  # chunked: no Content-Length to judge by
        await resp.prepare(request)
        for _ in range(64):
            await resp.write(b" " * 65536)
        await resp.write(token)
        return resp

    app = web.Application()
    app.router.add_post("/identity/token", answer)
    async with TestServer(app) as server, aiohttp.ClientSession() as session:
        iam = IamTokenManager(session, str(server.make_url("")), KEY, max_body_bytes=64 * 1024)
        with pytest.raises(IamUnavailableError) as err:
            await iam.token()
    assert ("over 65536 bytes" if lie == "huge" else "no usable token") in str(err.value)
