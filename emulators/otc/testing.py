"""Test harness: run the emulator on the current event loop and drive it in-process.

async with OtcEmulator.running(api_keys=("k",)) as otc:
    tid = otc.seed_toolchain(name="demo")
    ...  # call f"{otc.url}/toolchain/v2" with a token from f"{otc.url}/identity/token"
    assert otc.calls()[-1].status == 201
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

from aiohttp import web

from emulators.otc.app import EMULATOR_KEY, Emulator, build_app
from emulators.otc.clock import Clock
from emulators.otc.control import seed_toolchain, snapshot
from emulators.otc.faults import FaultConfig
from emulators.otc.models import CallRecord, EmulatorState, SeedToolchain, ToolRecord
from emulators.otc.platform import OtcPlatform
from emulators.otc.render import Renderer
from emulators.otc.settings import OtcEmulatorSettings


class OtcEmulator:
    def __init__(self, app: web.Application, url: str) -> None:
        self.app = app
        self.url = url
        """Base URL: ``f"{url}/toolchain/v2"`` is the API, ``f"{url}/identity/token"`` the IAM."""
        self._emu: Emulator = app[EMULATOR_KEY]

    @classmethod
    @asynccontextmanager
    async def running(
        cls,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        api_keys: tuple[str, ...] = ("test-api-key",),
        token_ttl: int = 3600,
        broker_url: str | None = None,
        broker_id: str | None = None,
        broker_secret: str | None = None,
        **settings: Any,
    ) -> AsyncIterator[OtcEmulator]:
        """Serve on ``host:port`` (0: a free port) until the block exits.

        Extra keyword arguments go to :class:`OtcEmulatorSettings` (e.g. ``tools_default_limit``).
        """
        config = OtcEmulatorSettings(
            host=host,
            port=port,
            api_keys=api_keys,
            token_ttl=token_ttl,
            broker_url=broker_url,
            broker_id=broker_id,
            broker_secret=broker_secret,
            **settings,
        )
        app = build_app(config, clock=Clock())
        runner = web.AppRunner(app, handle_signals=False, access_log=None)
        await runner.setup()
        try:
            site = web.TCPSite(runner, host, port)
            await site.start()
            bound_host, bound_port = runner.addresses[0][:2]
            yield cls(app, f"http://{bound_host}:{bound_port}")
        finally:
            await runner.cleanup()

    # --- inspection ---

    @property
    def settings(self) -> OtcEmulatorSettings:
        return self._emu.settings

    @property
    def emulator(self) -> Emulator:
        """Store, call log, faults, clock, token issuer: the live objects."""
        return self._emu

    @property
    def api_url(self) -> str:
        return f"{self.url}/toolchain/v2"

    @property
    def api_key(self) -> str:
        return self._emu.settings.api_keys[0]

    @property
    def state(self) -> EmulatorState:
        """Same as ``GET /_emulator/state``: every toolchain with its tools (wire shapes)."""
        return snapshot(self._emu.store, Renderer(self._emu.settings, self.url))

    def tools(self, toolchain_id: str) -> list[ToolRecord]:
        """The stored tools of a toolchain, in creation order."""
        return self._emu.store.tools_of(toolchain_id)

    def calls(self, since: int = 0) -> list[CallRecord]:
        """The call log from index ``since`` (``/_emulator`` calls are not logged)."""
        return self._emu.calls.since(since)

    @property
    def call_count(self) -> int:
        return len(self._emu.calls)

    # --- control ---

    def seed_toolchain(
        self,
        id: str | None = None,
        name: str = "toolchain",
        *,
        resource_group_id: str | None = None,
        description: str = "",
    ) -> str:
        """Create a toolchain (with ``id`` if given) and return its id."""
        seed = SeedToolchain(id=id, name=name, resource_group_id=resource_group_id, description=description)
        return seed_toolchain(self._emu.store, self._emu.settings, seed).id

    def set_faults(self, config: FaultConfig | None = None, **fields: Any) -> None:
        """Replace the fault configuration: a :class:`FaultConfig` or its fields as keywords."""
        self._emu.faults.configure(config or FaultConfig.model_validate(fields))

    def clear_faults(self) -> None:
        self._emu.faults.clear()

    def reset(self, *, state: bool = True, calls: bool = True, faults: bool = True) -> None:
        if state:
            self._emu.store.reset()
        if calls:
            self._emu.calls.clear()
        if faults:
            self._emu.faults.clear()

    def advance_clock(self, seconds: float) -> None:
        """Move the emulator's clock forward (tokens expire, 429 windows end); no real sleep."""
        self._emu.clock.advance(seconds)

    def issue_token(self) -> str:
        """A valid access token for the first API key, without an HTTP round trip."""
        token: str = self._emu.issuer.issue(self.api_key, self.url)["access_token"]
        return token

    @property
    def platform(self) -> OtcPlatform:
        """The broker driver (configure with ``broker_url``/``broker_id``/``broker_secret``)."""
        if self._emu.platform.platform is None:
            raise RuntimeError("no broker configured: pass broker_url, broker_id and broker_secret")
        return self._emu.platform.platform

    async def wait_until(
        self, predicate: Callable[[], bool], *, timeout: float = 5.0, interval: float = 0.01
    ) -> None:
        """Poll ``predicate`` on the loop until it holds; TimeoutError after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() >= deadline:
                raise TimeoutError(f"condition not met within {timeout} s")
            await asyncio.sleep(interval)
