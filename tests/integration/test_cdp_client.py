"""The browser checks of the page tests can fail: the CDP client (tests/cdp.py) in Debian's
headless Chromium reports a CSP violation, a console error and a request to another origin when a
page has them, and nothing when it has none."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web

from tests.cdp import browser

CSP = {"Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'"}
CLEAN = "<!doctype html><html lang=en><title>t</title><body><h1>Clean</h1><p style='color:red'>ok</p></body></html>"
DIRTY = (
    "<!doctype html><html lang=fr><title>t</title><body><h1>Dirty</h1>"
    "<script>console.error('boom')</script><img src='http://127.0.0.1:9/x.png' alt=x></body></html>"
)


@pytest.fixture
async def site() -> AsyncIterator[str]:
    async def clean(_: web.Request) -> web.Response:
        return web.Response(text=CLEAN, content_type="text/html", headers=CSP)

    async def dirty(_: web.Request) -> web.Response:
        return web.Response(text=DIRTY, content_type="text/html")  # no CSP: the script runs

    async def dirty_csp(_: web.Request) -> web.Response:
        return web.Response(text=DIRTY, content_type="text/html", headers=CSP)

    app = web.Application()
    app.router.add_get("/clean", clean)
    app.router.add_get("/dirty", dirty)
    app.router.add_get("/dirty-csp", dirty_csp)
    runner = web.AppRunner(app)
    await runner.setup()
    tcp = web.TCPSite(runner, "127.0.0.1", 0)
    await tcp.start()
    port = runner.addresses[0][1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


async def test_the_browser_reports_what_a_page_does(site: str, tmp_path: Path) -> None:
    async with browser(tmp_path / "shots") as b:
        clean = await b.visit(f"{site}/clean", shot="clean")
        assert clean.status == 200 and clean.requests == [f"{site}/clean"]
        assert (clean.console_errors, clean.csp_violations, clean.exceptions) == ([], [], [])
        assert clean.lang == "en" and clean.headings == ["Clean"] and "ok" in clean.text
        assert clean.screenshot is not None and clean.screenshot.read_bytes()[:4] == b"\x89PNG"

        blocked = await b.visit(f"{site}/dirty-csp")
        assert any("script" in v for v in blocked.csp_violations), blocked.csp_violations
        assert any("img-src" in v or "127.0.0.1:9" in v for v in blocked.csp_violations)
        assert "http://127.0.0.1:9/x.png" in blocked.requests and blocked.lang == "fr"

        ran = await b.visit(f"{site}/dirty")
        assert any("boom" in e for e in ran.console_errors), ran.console_errors
