"""A small Chrome DevTools Protocol client: Debian's headless Chromium (``/usr/bin/chromium``,
scripts/ensure-chromium.sh) driven over its websocket with aiohttp (no new dependency, no browser
download), to see a page as a user's browser shows it.

:func:`browser` starts Chromium with ``--remote-debugging-port=0`` and reads the port it chose from
``<user-data-dir>/DevToolsActivePort``; :meth:`Browser.visit` opens a new target, enables
Page/Runtime/Log/Network, navigates, waits for the load event and returns a :class:`Visit`: every
request URL, console errors, exceptions, CSP violations (the console's "Refused to ..." entries and
``Log.entryAdded`` of source ``security``), the rendered text (``document.body.innerText``, read by
``Runtime.evaluate``, which is the debugger's, not page script, so the page's CSP does not apply),
the ``lang``, the headings, and a PNG screenshot.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json
import shutil
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

CHROMIUM = "/usr/bin/chromium"
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-extensions",
    "--disable-default-apps",
    "--remote-debugging-port=0",
)


WATCH_CSP = (
    "window.__kotcCsp = [];"
    "document.addEventListener('securitypolicyviolation', e => window.__kotcCsp.push("
    "'securitypolicyviolation: ' + e.violatedDirective + ' ' + e.blockedURI));"
)


class CdpError(RuntimeError):
    pass


@dataclass
class Visit:
    url: str
    requests: list[str] = field(default_factory=list)
    console_errors: list[str] = field(default_factory=list)
    csp_violations: list[str] = field(default_factory=list)
    exceptions: list[str] = field(default_factory=list)
    text: str = ""
    lang: str = ""
    headings: list[str] = field(default_factory=list)
    screenshot: Path | None = None
    status: int | None = None
    overflow_px: int = 0
    """How much wider than the viewport the page is (0: nothing to scroll sideways)."""


class Session:
    """One websocket to one target: commands by id, events collected."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self._ws = ws
        self._ids = itertools.count(1)
        self._waiting: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self.events: list[dict[str, Any]] = []
        self._event = asyncio.Event()
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        async for msg in self._ws:
            if msg.type != aiohttp.WSMsgType.TEXT:
                continue
            data = json.loads(msg.data)
            if "id" in data:
                fut = self._waiting.pop(data["id"], None)
                if fut is not None and not fut.done():
                    fut.set_result(data)
            else:
                self.events.append(data)
                self._event.set()
        for fut in self._waiting.values():
            if not fut.done():
                fut.set_exception(CdpError("DevTools connection closed"))

    async def send(
        self, method: str, params: dict[str, Any] | None = None, timeout: float = 30
    ) -> dict[str, Any]:
        ident = next(self._ids)
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._waiting[ident] = fut
        await self._ws.send_json({"id": ident, "method": method, "params": params or {}})
        answer = await asyncio.wait_for(fut, timeout)
        if "error" in answer:
            raise CdpError(f"{method}: {answer['error']}")
        return dict(answer.get("result", {}))

    async def wait_event(self, method: str, timeout: float = 30) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        seen = 0
        while True:
            for ev in self.events[seen:]:
                if ev.get("method") == method:
                    return ev
            seen = len(self.events)
            self._event.clear()
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise CdpError(f"no {method} within {timeout}s")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._event.wait(), remaining)

    async def close(self) -> None:
        self._reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._reader
        await self._ws.close()


class Browser:
    def __init__(self, http: aiohttp.ClientSession, port: int, shots: Path) -> None:
        self._http = http
        self._base = f"http://127.0.0.1:{port}"
        self._shots = shots

    async def visit(
        self, url: str, *, shot: str | None = None, width: int = 1000, mobile: bool = False
    ) -> Visit:
        """Open ``url`` in a new tab and read it as a user would (screenshot ``<shot>.png``)."""
        async with self._http.put(f"{self._base}/json/new?about:blank") as r:
            target = await r.json()
        ws = await self._http.ws_connect(target["webSocketDebuggerUrl"], max_msg_size=64 * 2**20)
        session = Session(ws)
        try:
            for domain in ("Page", "Runtime", "Log", "Network"):
                await session.send(f"{domain}.enable")
            # The debugger's script (not subject to the page's CSP): records every CSP violation.
            await session.send("Page.addScriptToEvaluateOnNewDocument", {"source": WATCH_CSP})
            if mobile:
                await session.send(
                    "Emulation.setDeviceMetricsOverride",
                    {"width": 390, "height": 844, "deviceScaleFactor": 2, "mobile": True},
                )
            else:
                await session.send(
                    "Emulation.setDeviceMetricsOverride",
                    {"width": width, "height": 900, "deviceScaleFactor": 1, "mobile": False},
                )
            nav = await session.send("Page.navigate", {"url": url})
            if nav.get("errorText"):
                raise CdpError(f"navigation to {url} failed: {nav['errorText']}")
            await session.wait_event("Page.loadEventFired")
            visit = Visit(url=url)
            await self._read(session, visit)
            if shot is not None:
                visit.screenshot = await self._screenshot(session, shot)
            _collect(session.events, visit)
            return visit
        finally:
            await session.close()
            with contextlib.suppress(aiohttp.ClientError):
                async with self._http.get(f"{self._base}/json/close/{target['id']}"):
                    pass

    async def _read(self, session: Session, visit: Visit) -> None:
        async def value(expr: str) -> Any:
            result = await session.send("Runtime.evaluate", {"expression": expr, "returnByValue": True})
            return result["result"].get("value")

        visit.csp_violations += list(await value("window.__kotcCsp || []") or [])
        visit.text = str(await value("document.body ? document.body.innerText : ''"))
        visit.lang = str(await value("document.documentElement.lang"))
        visit.overflow_px = int(await value("document.documentElement.scrollWidth - window.innerWidth") or 0)
        visit.headings = list(
            await value("Array.from(document.querySelectorAll('h1,h2,h3')).map(h => h.innerText)") or []
        )

    async def _screenshot(self, session: Session, name: str) -> Path:
        shot = await session.send("Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True})
        self._shots.mkdir(parents=True, exist_ok=True)
        path = self._shots / f"{name}.png"
        path.write_bytes(base64.b64decode(shot["data"]))
        return path


def _collect(events: list[dict[str, Any]], visit: Visit) -> None:
    for ev in events:
        method, params = ev.get("method"), ev.get("params", {})
        if method == "Network.requestWillBeSent":
            visit.requests.append(params["request"]["url"])
        elif (
            method == "Network.responseReceived" and params.get("type") == "Document" and visit.status is None
        ):
            visit.status = int(params["response"]["status"])
        elif method == "Log.entryAdded":
            entry = params["entry"]
            text = f"{entry.get('source')}: {entry.get('text')}"
            if entry.get("source") == "security" or "Content Security Policy" in str(entry.get("text")):
                visit.csp_violations.append(text)
            elif entry.get("level") == "error":
                visit.console_errors.append(text)
        elif method == "Runtime.consoleAPICalled" and params.get("type") == "error":
            visit.console_errors.append(json.dumps(params.get("args")))
        elif method == "Runtime.exceptionThrown":
            visit.exceptions.append(json.dumps(params.get("exceptionDetails")))


async def _port(profile: Path, proc: subprocess.Popen[bytes], timeout: float) -> int:
    marker = profile / "DevToolsActivePort"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise CdpError(f"chromium exited with {proc.returncode}")
        with contextlib.suppress(FileNotFoundError, ValueError, IndexError):
            return int(marker.read_text().splitlines()[0])
        await asyncio.sleep(0.05)
    raise CdpError(f"chromium wrote no {marker} within {timeout}s")


def _launch(profile: Path, log: Path | None) -> subprocess.Popen[bytes]:
    if not Path(CHROMIUM).exists():
        raise CdpError(f"{CHROMIUM} is missing: run scripts/ensure-chromium.sh (make chromium)")
    out = log.open("wb") if log is not None else None
    try:
        return subprocess.Popen(
            [CHROMIUM, *FLAGS, f"--user-data-dir={profile}", "about:blank"],
            stdout=out or subprocess.DEVNULL,
            stderr=out or subprocess.DEVNULL,
        )
    finally:
        if out is not None:
            out.close()  # the child has its own descriptor


def _stop(proc: subprocess.Popen[bytes], profile: Path) -> None:
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    shutil.rmtree(profile, ignore_errors=True)


@contextlib.asynccontextmanager
async def browser(shots: Path, *, log: Path | None = None, timeout: float = 60) -> AsyncIterator[Browser]:
    """A headless Chromium of its own (a fresh profile), stopped at the end; screenshots in ``shots``."""
    profile = Path(tempfile.mkdtemp(prefix="kotc-chromium-"))
    proc = _launch(profile, log)
    try:
        port = await _port(profile, proc, timeout)
        async with aiohttp.ClientSession() as http:
            yield Browser(http, port, shots)
    finally:
        await asyncio.to_thread(_stop, proc, profile)
