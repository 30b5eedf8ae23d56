"""Toolchain API v2 under ``/toolchain/v2`` (otc-api.md §4.3-§4.7), with its middleware.

The middleware, for every ``/toolchain/v2`` call: injects faults (``faults.py``), checks the bearer
token (401), turns :class:`ApiError` and aiohttp's 404/405 into IBM error bodies, tells the lies
asked for, stamps ``X-Global-Transaction-ID``, and performs "commit then drop" after a successful
mutation.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware
from pydantic import BaseModel, ValidationError
from yarl import URL

from emulators.json_merge_patch import merge_patch
from emulators.otc.brokered import BrokeredTools
from emulators.otc.errors import TRANSACTION_HEADER, ApiError, error_response, transaction_id
from emulators.otc.faults import FaultInjector
from emulators.otc.iam import TokenIssuer
from emulators.otc.models import ToolchainCreate, ToolchainRecord, ToolCreate, ToolRecord
from emulators.otc.paging import paginate, parse_limit
from emulators.otc.render import API_PREFIX, Renderer
from emulators.otc.request_keys import DROPPED
from emulators.otc.settings import OtcEmulatorSettings
from emulators.otc.store import Store
from emulators.otc.validation import (
    canonical_uuid,
    check_description,
    check_immutable,
    check_name,
    check_resource_group_id,
    check_tool_type,
    normalize_parameters,
)

JSON = "application/json"
MERGE_PATCH = "application/merge-patch+json"


def _first_error(exc: ValidationError) -> str:
    err = exc.errors()[0]
    where = ".".join(str(p) for p in err["loc"]) or "body"
    return f"Invalid '{where}': {err['msg']}"


async def _json_object(request: web.Request, content_type: str) -> dict[str, Any]:
    if request.content_type != content_type:
        raise ApiError(415, f"Content-Type must be {content_type}")
    try:
        body = json.loads(await request.read())
    except ValueError:
        raise ApiError(400, "Request body is not valid JSON", code="invalid_json") from None
    if not isinstance(body, dict):
        raise ApiError(400, "Request body must be a JSON object", code="invalid_json")
    return body


def _parse[M: BaseModel](model: type[M], body: dict[str, Any]) -> M:
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        raise ApiError(400, _first_error(exc)) from None


def _json(model: BaseModel, status: int = 200) -> web.Response:
    return web.json_response(model.model_dump(mode="json", exclude_none=True), status=status)


class ToolchainApi:
    def __init__(
        self,
        settings: OtcEmulatorSettings,
        store: Store,
        issuer: TokenIssuer,
        faults: FaultInjector,
        brokered: BrokeredTools,
    ) -> None:
        self._settings = settings
        self._brokered = brokered
        self._store = store
        self._issuer = issuer
        self._faults = faults

    def renderer(self, request: web.Request) -> Renderer:
        return Renderer(self._settings, self._settings.public_url or str(request.url.origin()))

    def routes(self) -> list[web.RouteDef]:
        p = API_PREFIX
        return [
            web.get(f"{p}/toolchains", self.list_toolchains, allow_head=False),
            web.post(f"{p}/toolchains", self.create_toolchain),
            web.get(f"{p}/toolchains/{{toolchain_id}}", self.get_toolchain, allow_head=False),
            web.patch(f"{p}/toolchains/{{toolchain_id}}", self.update_toolchain),
            web.delete(f"{p}/toolchains/{{toolchain_id}}", self.delete_toolchain),
            web.get(f"{p}/toolchains/{{toolchain_id}}/tools", self.list_tools, allow_head=False),
            web.post(f"{p}/toolchains/{{toolchain_id}}/tools", self.create_tool),
            web.get(f"{p}/toolchains/{{toolchain_id}}/tools/{{tool_id}}", self.get_tool, allow_head=False),
            web.patch(f"{p}/toolchains/{{toolchain_id}}/tools/{{tool_id}}", self.update_tool),
            web.delete(f"{p}/toolchains/{{toolchain_id}}/tools/{{tool_id}}", self.delete_tool),
        ]

    def middleware(self) -> Middleware:
        @web.middleware
        async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
            if not request.path.startswith(API_PREFIX):
                return await handler(request)
            trace = transaction_id(request)
            response: web.StreamResponse
            try:
                await self._faults.before_auth(request)
                self._issuer.verify_bearer(request.headers.get("Authorization"))
                if request.body_exists:
                    try:
                        body: Any = json.loads(await request.read())
                    except ValueError:
                        body = None
                    self._faults.apply_rules(request, body)
                else:
                    self._faults.apply_rules(request, None)
                response = await handler(request)
            except ApiError as err:
                response = error_response(request, err)
            except web.HTTPException as exc:
                if exc.status < 400:
                    raise
                response = error_response(request, ApiError(exc.status, exc.reason))
            response = self._faults.lie(request, response)
            response.headers[TRANSACTION_HEADER] = trace
            if response.status < 400 and self._faults.take_drop(request):
                request[DROPPED] = True
                if request.transport is not None:
                    request.transport.close()
            return response

        return middleware

    def _toolchain_id(self, request: web.Request) -> str:
        return canonical_uuid(request.match_info["toolchain_id"], "toolchain_id")

    # --- toolchains ---

    async def list_toolchains(self, request: web.Request) -> web.Response:
        rg = request.query.get("resource_group_id")
        if not rg:
            raise ApiError(400, "Query parameter 'resource_group_id' is required")
        check_resource_group_id(rg)
        name = request.query.get("name")
        limit = parse_limit(
            request.query.get("limit"),
            default=self._settings.tools_default_limit,
            maximum=self._settings.max_limit,
        )
        items = [
            t
            for t in self._store.toolchains.values()
            if t.resource_group_id == rg and (name is None or t.name == name)
        ]
        r = self.renderer(request)
        query = {"resource_group_id": rg, **({"name": name} if name is not None else {})}
        page = paginate(
            items,
            limit=limit,
            start=request.query.get("start"),
            href_base=URL(f"{r.api}/toolchains"),
            query=query,
        )
        return web.json_response(
            {
                "total_count": page.total_count,
                "limit": page.limit,
                **page.links,
                "toolchains": [r.toolchain(t).model_dump(mode="json") for t in page.items],
            }
        )

    async def create_toolchain(self, request: web.Request) -> web.Response:
        body = _parse(ToolchainCreate, await _json_object(request, JSON))
        record = self._store.create_toolchain(
            name=check_name(body.name),
            resource_group_id=check_resource_group_id(body.resource_group_id),
            description=check_description(body.description or ""),
        )
        return _json(self.renderer(request).toolchain(record), status=201)

    async def get_toolchain(self, request: web.Request) -> web.Response:
        record = self._store.toolchain(self._toolchain_id(request))
        return _json(self.renderer(request).toolchain(record))

    async def update_toolchain(self, request: web.Request) -> web.Response:
        tid = self._toolchain_id(request)
        patch = await _json_object(request, MERGE_PATCH)
        self._store.toolchain(tid)
        changes: dict[str, Any] = {}
        if "name" in patch:
            if patch["name"] is None:
                raise ApiError(400, "'name' cannot be removed")
            changes["name"] = check_name(patch["name"])
        if "description" in patch:
            changes["description"] = check_description(patch["description"] or "")
        record = self._store.update_toolchain(tid, **changes)
        return _json(self.renderer(request).toolchain(record))

    async def delete_toolchain(self, request: web.Request) -> web.Response:
        tid = self._toolchain_id(request)
        for tool in self._store.tools_of(tid):
            await self._delete_brokered(tool)
            self._store.delete_tool(tid, tool.id)
        self._store.delete_toolchain(tid)
        return web.Response(status=204)

    # --- tools ---

    def _tool_ids(self, request: web.Request) -> tuple[ToolchainRecord, str]:
        toolchain = self._store.toolchain(self._toolchain_id(request))
        return toolchain, canonical_uuid(request.match_info["tool_id"], "tool_id")

    async def list_tools(self, request: web.Request) -> web.Response:
        toolchain = self._store.toolchain(self._toolchain_id(request))
        limit = parse_limit(
            request.query.get("limit"),
            default=self._settings.tools_default_limit,
            maximum=self._settings.max_limit,
        )
        r = self.renderer(request)
        page = paginate(
            self._store.tools_of(toolchain.id),
            limit=limit,
            start=request.query.get("start"),
            href_base=URL(f"{r.api}/toolchains/{toolchain.id}/tools"),
            query={},
        )
        return web.json_response(
            {
                "total_count": page.total_count,
                "limit": page.limit,
                **page.links,
                "tools": [
                    r.tool(t, toolchain).model_dump(mode="json", exclude_none=True) for t in page.items
                ],
            }
        )

    async def create_tool(self, request: web.Request) -> web.Response:
        toolchain = self._store.toolchain(self._toolchain_id(request))
        body = _parse(ToolCreate, await _json_object(request, JSON))
        broker = self._brokered.broker_of(body.tool_type_id)
        if broker is None:
            check_tool_type(body.tool_type_id)
        name = check_name(body.name) if body.name is not None else None
        params = normalize_parameters(body.tool_type_id, body.parameters or {}, create=True)
        tool_id, dashboard = None, None
        if broker is not None:
            tool_id = str(uuid.uuid4())
            dashboard = (await self._brokered.create(broker, tool_id, toolchain.id, params)).dashboard_url
            toolchain = self._store.toolchain(toolchain.id)  # deleted while the broker answered: 404
        record = self._store.create_tool(
            toolchain.id,
            tool_type_id=body.tool_type_id,
            name=name,
            parameters=params,
            tool_id=tool_id,
            broker_dashboard_url=dashboard,
        )
        return _json(self.renderer(request).tool(record, toolchain), status=201)

    async def get_tool(self, request: web.Request) -> web.Response:
        toolchain, tool_id = self._tool_ids(request)
        record = self._store.tool(toolchain.id, tool_id)
        return _json(self.renderer(request).tool(record, toolchain))

    async def update_tool(self, request: web.Request) -> web.Response:
        toolchain, tool_id = self._tool_ids(request)
        patch = await _json_object(request, MERGE_PATCH)
        record = self._store.tool(toolchain.id, tool_id)
        type_id = patch.get("tool_type_id", record.tool_type_id)
        if type_id != record.tool_type_id:
            raise ApiError(400, "'tool_type_id' cannot be changed", code="immutable")
        name = record.name
        if "name" in patch:
            name = None if patch["name"] is None else check_name(patch["name"])
        params = record.parameters
        if "parameters" in patch:
            if not isinstance(patch["parameters"], dict | None):
                raise ApiError(400, "'parameters' must be a JSON object")
            raw = patch["parameters"]
            merged = {} if raw is None else merge_patch(record.parameters, raw)
            check_immutable(record.tool_type_id, record.parameters, merged)
            params = normalize_parameters(record.tool_type_id, merged, create=False)
        broker = self._brokered.broker_of(record.tool_type_id)
        if broker is not None and params != record.parameters:
            await self._brokered.update(broker, record.id, params)
        updated = self._store.replace_tool(record.model_copy(update={"name": name, "parameters": params}))
        return _json(self.renderer(request).tool(updated, toolchain))

    async def delete_tool(self, request: web.Request) -> web.Response:
        toolchain, tool_id = self._tool_ids(request)
        await self._delete_brokered(self._store.tool(toolchain.id, tool_id))
        if tool_id in self._store.tools.get(toolchain.id, {}):  # not deleted meanwhile
            self._store.delete_tool(toolchain.id, tool_id)
        return web.Response(status=204)

    async def _delete_brokered(self, tool: ToolRecord) -> None:
        broker = self._brokered.broker_of(tool.tool_type_id)
        if broker is not None:
            await self._brokered.delete(broker, tool.id, tool.toolchain_id)
