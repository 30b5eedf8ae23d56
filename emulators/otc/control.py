"""``/_emulator/`` control endpoints (JSON, no auth): inspect state and calls, reset, seed, faults.

Calls to these endpoints are not recorded in the call log and never see injected faults.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web
from pydantic import BaseModel, ValidationError

from emulators.otc.calllog import CallLog
from emulators.otc.clock import Clock
from emulators.otc.errors import ApiError
from emulators.otc.faults import FaultConfig, FaultInjector
from emulators.otc.models import (
    EmulatorState,
    ResetRequest,
    SeedToolchain,
    ToolchainRecord,
    ToolchainWithTools,
)
from emulators.otc.render import Renderer
from emulators.otc.settings import OtcEmulatorSettings
from emulators.otc.store import Store
from emulators.otc.validation import canonical_uuid, check_description, check_name, check_resource_group_id


def seed_toolchain(store: Store, settings: OtcEmulatorSettings, seed: SeedToolchain) -> ToolchainRecord:
    """Create a toolchain with a chosen (or random) id, under OTC's validation rules."""
    return store.create_toolchain(
        toolchain_id=canonical_uuid(seed.id, "id") if seed.id else None,
        name=check_name(seed.name),
        resource_group_id=check_resource_group_id(
            seed.resource_group_id or settings.default_resource_group_id
        ),
        description=check_description(seed.description),
    )


def snapshot(store: Store, renderer: Renderer) -> EmulatorState:
    toolchains = []
    for record in store.toolchains.values():
        tools = [renderer.tool(t, record) for t in store.tools[record.id].values()]
        toolchains.append(ToolchainWithTools(**renderer.toolchain(record).model_dump(), tools=tools))
    return EmulatorState(toolchains=toolchains)


class BadControlRequest(Exception):
    pass


async def _body[M: BaseModel](request: web.Request, model: type[M]) -> M:
    raw = await request.read()
    try:
        return model.model_validate_json(raw or b"{}")
    except ValidationError as exc:
        raise BadControlRequest(str(exc)) from None


class AdvanceClock(BaseModel):
    seconds: float


def control_routes(
    settings: OtcEmulatorSettings,
    store: Store,
    calls: CallLog,
    faults: FaultInjector,
    clock: Clock,
) -> list[web.RouteDef]:
    def renderer(request: web.Request) -> Renderer:
        return Renderer(settings, settings.public_url or str(request.url.origin()))

    def dump(model: BaseModel, status: int = 200) -> web.Response:
        return web.json_response(model.model_dump(mode="json", exclude_none=True), status=status)

    def bad(message: str) -> web.Response:
        return web.json_response({"error": message}, status=400)

    async def get_state(request: web.Request) -> web.Response:
        return dump(snapshot(store, renderer(request)))

    async def get_calls(request: web.Request) -> web.Response:
        raw = request.query.get("since", "0")
        if not raw.isdigit():
            return bad("'since' must be a non-negative integer")
        records = calls.since(int(raw))
        body: dict[str, Any] = {
            "total": len(calls),
            "calls": [r.model_dump(mode="json") for r in records],
        }
        return web.json_response(body)

    async def reset(request: web.Request) -> web.Response:
        try:
            req = await _body(request, ResetRequest)
        except BadControlRequest as exc:
            return bad(str(exc))
        if req.state:
            store.reset()
        if req.calls:
            calls.clear()
        if req.faults:
            faults.clear()
        return dump(req)

    async def seed(request: web.Request) -> web.Response:
        try:
            req = await _body(request, SeedToolchain)
            record = seed_toolchain(store, settings, req)
        except BadControlRequest as exc:
            return bad(str(exc))
        except ApiError as err:
            return web.json_response({"error": err.message}, status=err.status)
        return dump(renderer(request).toolchain(record), status=201)

    async def get_faults(request: web.Request) -> web.Response:
        return dump(faults.status())

    async def set_faults(request: web.Request) -> web.Response:
        try:
            config = await _body(request, FaultConfig)
        except BadControlRequest as exc:
            return bad(str(exc))
        faults.configure(config)
        return dump(faults.status())

    async def clear_faults(request: web.Request) -> web.Response:
        faults.clear()
        return dump(faults.status())

    async def advance_clock(request: web.Request) -> web.Response:
        try:
            req = await _body(request, AdvanceClock)
        except BadControlRequest as exc:
            return bad(str(exc))
        clock.advance(req.seconds)
        return web.json_response({"offset": clock.offset, "now": clock.now()})

    return [
        web.get("/_emulator/state", get_state, allow_head=False),
        web.get("/_emulator/calls", get_calls, allow_head=False),
        web.post("/_emulator/reset", reset),
        web.post("/_emulator/toolchains", seed),
        web.get("/_emulator/faults", get_faults, allow_head=False),
        web.post("/_emulator/faults", set_faults),
        web.delete("/_emulator/faults", clear_faults),
        web.post("/_emulator/clock", advance_clock),
    ]
