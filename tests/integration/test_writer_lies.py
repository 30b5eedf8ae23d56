"""otc-writer against an OTC that lies (emulators.otc ``lies``; issue 19): a 2xx listing that is cut
off, of the wrong shape, endless or huge is an error, never "no tools"; ``Retry-After: 3600`` holds
for ``OTC_RETRY_AFTER_MAX_S`` at most, and ``/readyz`` and ``kabanero-otc status`` say until when."""

from __future__ import annotations

import asyncio
from typing import Literal

import aiohttp
import pytest

from emulators.otc.faults import FaultConfig, LieRule, RateLimitFault
from kotc_cli.clients import sources
from kotc_cli.config import Config
from kotc_cli.settings import RunFileSettings
from kotc_cli.status import service_health
from services.otc_writer.app import COMMANDS_QUEUE, Deps, OtcWriter
from tests.helpers import wait_until
from tests.integration.writer_support import FAST, WriterEnv, command, writes

LISTING = r"/toolchain/v2/toolchains/[^/]+/tools"
TOOLS = 6


def posts(env: WriterEnv, since: int = 0) -> int:
    return len([c for c in writes(env.otc.calls(since)) if c.method == "POST"])


def listing_gets(env: WriterEnv, since: int = 0) -> int:
    return len([c for c in env.otc.calls(since) if c.method == "GET" and c.path.endswith("/tools")])


async def six_tools(env: WriterEnv, writer: OtcWriter) -> str:
    tc = env.otc.seed_toolchain(name="lied-to")
    await env.publish(*(command("apply", key=f"r{i}", toolchain_id=tc, revision=1) for i in range(TOOLS)))
    await env.wait_handled(writer, TOOLS, COMMANDS_QUEUE)
    assert len(env.otc.tools(tc)) == TOOLS
    return tc


@pytest.mark.parametrize("lie", ["truncate", "wrong_shape"])
async def test_audit_never_reads_a_lying_listing_as_no_tools(
    env: WriterEnv, lie: Literal["truncate", "wrong_shape"]
) -> None:
    """Before: every pass recreated every tool (4 passes: 24 POSTs, 30 tools where 6 were wanted)."""
    async with env.writer(otc_max_attempts=2, otc_breaker_threshold=100) as w:
        tc = await six_tools(env, w)
        mark = env.otc.call_count
        env.otc.set_faults(FaultConfig(lies=[LieRule(path=LISTING, lie=lie)]))
        for _ in range(4):
            report = await w.audit_once()
            assert not report.repairs and len(report.errors) == 1
            assert "not the documented answer" in report.errors[0]
        assert posts(env, mark) == 0 and len(env.otc.tools(tc)) == TOOLS
        env.otc.clear_faults()
        assert not (await w.audit_once()).errors


async def test_audit_stops_at_a_repeated_cursor_and_releases_its_lock(env: WriterEnv) -> None:
    """Before: 1,362 pages in 30 s, RSS 61 -> 403 MiB, the audit lock held throughout."""
    async with env.writer() as w:
        tc = await six_tools(env, w)
        mark = env.otc.call_count
        env.otc.set_faults(FaultConfig(lies=[LieRule(path=LISTING, lie="self_next")]))
        async with asyncio.timeout(20):
            report = await w.audit_once()
            assert len(report.errors) == 1 and "repeated" in report.errors[0]
            assert listing_gets(env, mark) == 2
            await w.audit_once()  # the lock was released: a second pass runs
        assert posts(env, mark) == 0 and len(env.otc.tools(tc)) == TOOLS


async def test_audit_does_not_read_a_huge_listing(env: WriterEnv) -> None:
    """Before: a 20 MB listing was read whole (RSS 62 -> 161 MiB) and used."""
    async with env.writer(otc_max_attempts=1) as w:
        tc = await six_tools(env, w)
        env.otc.set_faults(FaultConfig(lies=[LieRule(path=LISTING, lie="huge")]))
        report = await w.audit_once()
        assert len(report.errors) == 1 and "size cap" in report.errors[0]
        assert not report.repairs and len(env.otc.tools(tc)) == TOOLS


async def test_interrupted_create_is_adopted_through_a_lying_listing(env: WriterEnv) -> None:
    """``_observe``: the retry after a crash between POST and commit lists the toolchain; a cut-off
    listing used to read as "not created", so the tool was posted twice."""
    tc = env.otc.seed_toolchain(name="interrupted")
    crashed = asyncio.Event()

    async def crash(op: str, ledger_id: str) -> None:
        if not crashed.is_set():
            crashed.set()
            env.otc.set_faults(FaultConfig(lies=[LieRule(path=LISTING, lie="truncate", times=2)]))
            raise RuntimeError("injected crash after the OTC write")

    async with env.writer(Deps(topology=FAST, after_otc_write=crash)) as w:
        await env.publish(command("apply", key="x", toolchain_id=tc, revision=1))
        await env.wait_handled(w, 1, COMMANDS_QUEUE)
    assert any(c.fault == "lie:truncate" for c in env.otc.calls()), "the lie was never told"
    assert len(env.otc.tools(tc)) == 1 and posts(env) == 1


async def test_remove_after_an_interrupted_create_finds_the_tool_through_a_lying_listing(
    env: WriterEnv,
) -> None:
    """``_tools_of``: a remove after an interrupted create lists the toolchain for the names it may
    have been created under; a cut-off listing used to read as "nothing to delete" (a leaked tool)."""
    tc = env.otc.seed_toolchain(name="leak")

    async def crash(op: str, ledger_id: str) -> None:
        if op == "create":
            raise RuntimeError("injected crash after the OTC write")

    async with env.writer(Deps(topology=FAST, after_otc_write=crash, max_attempts=1)) as w:
        await env.publish(command("apply", key="x", toolchain_id=tc, revision=1))
        await wait_until(lambda: len(env.otc.tools(tc)) == 1, timeout=20, what="the interrupted create")
        env.otc.set_faults(FaultConfig(lies=[LieRule(path=LISTING, lie="wrong_shape", times=2)]))
        await env.publish(command("remove", key="x", toolchain_id=tc, revision=2))
        await env.wait_handled(w, 1, COMMANDS_QUEUE)
    assert any(c.fault == "lie:wrong_shape" for c in env.otc.calls()), "the lie was never told"
    assert env.otc.tools(tc) == []


@pytest.mark.parametrize("header", ["3600", "inf", "1e308"])
async def test_retry_after_is_clamped_and_readyz_and_status_say_until_when(
    env: WriterEnv, header: str
) -> None:
    """Before: ``Retry-After: 3600`` stopped every OTC call for an hour while ``/readyz`` said 200."""
    tc = env.otc.seed_toolchain(name="held")
    async with env.writer(otc_retry_after_max_s=3, otc_deadline_s=1) as w:
        env.otc.set_faults(rate_limit=RateLimitFault(count=1, retry_after_header=header))
        await env.publish(command("apply", key="x", toolchain_id=tc, revision=1))
        await wait_until(lambda: w.client.rate_limited == 1, timeout=20, what="the 429")
        url = f"http://127.0.0.1:{w.http_port}"
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{url}/readyz") as resp:
                status, body = resp.status, await resp.json()
            config = Config(settings=RunFileSettings(kotc_otc_writer_url=(url,)), source="test")
            async with sources(config) as src:
                rows = await service_health(src)
            (health,) = [r for r in rows if r["url"] == url]
        assert status == 503
        assert body["checks"]["otc"].startswith("failing: holding for OTC's rate limit until ")
        assert not health["ready"] and health["failing"]["otc"] == body["checks"]["otc"]
        await env.wait_handled(w, 1, COMMANDS_QUEUE)  # within the clamp, not an hour
        assert len(env.otc.tools(tc)) == 1
        async with aiohttp.ClientSession() as http, http.get(f"{url}/readyz") as resp:
            assert resp.status == 200
