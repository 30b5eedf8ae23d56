"""Application factory: ``build_app(settings)`` wires store, IAM, faults, call log and routes."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

from aiohttp import web
from aiohttp.typedefs import Handler

from emulators.otc.brokered import BrokeredTools
from emulators.otc.calllog import CallLog, call_log_middleware
from emulators.otc.clock import Clock
from emulators.otc.control import control_routes
from emulators.otc.errors import TRANSACTION_HEADER, transaction_id
from emulators.otc.faults import FaultInjector
from emulators.otc.iam import TokenIssuer, token_handler
from emulators.otc.platform import OtcPlatform, PlatformHolder, platform_routes
from emulators.otc.settings import OtcEmulatorSettings
from emulators.otc.store import Store
from emulators.otc.toolchain_api import ToolchainApi


@dataclass(frozen=True)
class Emulator:
    """Everything the app holds, for in-process access (tests, ``testing.OtcEmulator``)."""

    settings: OtcEmulatorSettings
    clock: Clock
    store: Store
    calls: CallLog
    faults: FaultInjector
    issuer: TokenIssuer
    platform: PlatformHolder


EMULATOR_KEY = web.AppKey("otc_emulator", Emulator)


def _with_trace(handler: Handler) -> Handler:
    async def handle(request: web.Request) -> web.StreamResponse:
        transaction_id(request)
        response = await handler(request)
        response.headers[TRANSACTION_HEADER] = transaction_id(request)
        return response

    return handle


def build_app(settings: OtcEmulatorSettings, *, clock: Clock | None = None) -> web.Application:
    clock = clock or Clock()
    platform = None
    if settings.broker_url and settings.broker_id and settings.broker_secret:
        platform = OtcPlatform(settings.broker_url, settings.broker_id, settings.broker_secret)
    emulator = Emulator(
        settings=settings,
        clock=clock,
        store=Store(clock),
        calls=CallLog(clock),
        faults=FaultInjector(clock),
        issuer=TokenIssuer(settings, clock),
        platform=PlatformHolder(platform),
    )
    api = ToolchainApi(
        settings, emulator.store, emulator.issuer, emulator.faults, BrokeredTools(emulator.platform)
    )
    app = web.Application(middlewares=[call_log_middleware(emulator.calls), api.middleware()])
    app[EMULATOR_KEY] = emulator
    app.router.add_post("/identity/token", _with_trace(token_handler(settings, emulator.issuer)))
    app.router.add_routes(api.routes())
    app.router.add_routes(
        control_routes(settings, emulator.store, emulator.calls, emulator.faults, emulator.clock)
    )
    app.router.add_routes(platform_routes(emulator.platform))

    async def close_platform(_: web.Application) -> AsyncIterator[None]:
        yield
        await emulator.platform.replace(None)

    app.cleanup_ctx.append(close_platform)
    return app
