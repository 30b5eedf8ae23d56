"""aiohttp routes: the Kubernetes REST API for the registered types, discovery, and `/_emulator/` controls.

Watch streams are chunked `application/json` responses with one JSON event per line, as the real API
server sends them; a watch from an expired resourceVersion is answered 200 followed by one `ERROR` event
carrying a 410 `Status`, then the end of the stream.
"""

from __future__ import annotations

import asyncio
import copy
import json
import logging
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from . import errors, protobuf
from .discovery import SERVER_VERSION, Discovery
from .errors import ApiError
from .faults import Faults
from .resources import ResourceType
from .selectors import Selector
from .store import Obj, Store, Subscription

logger = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass(frozen=True, slots=True)
class WatchSettings:
    bookmark_interval: float = 60.0
    """Seconds between BOOKMARK events on watches that asked for them (the real server: about 60 s)."""
    max_watch_seconds: float = 1800.0
    """Server-side end of a watch that has no `timeoutSeconds` (the real server: 1800-3600 s)."""


STORE = web.AppKey("store", Store)
FAULTS = web.AppKey("faults", Faults)
SETTINGS = web.AppKey("settings", WatchSettings)
DISCOVERY = web.AppKey("discovery", Discovery)


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))


def _json(body: Any, status: int = 200) -> web.Response:
    return web.json_response(body, status=status, dumps=_dumps)


def _flag(value: str | None) -> bool:
    return value is not None and value.lower() in ("1", "true", "yes")


async def _read_json(request: web.Request) -> Any:
    raw = await request.read()
    if not raw:
        return {}
    if request.content_type == protobuf.MEDIA_TYPE:
        return protobuf.decode(raw)
    try:
        return json.loads(raw)
    except ValueError as exc:
        raise errors.bad_request(f"couldn't decode request body as JSON: {exc}") from exc


# ---------------------------------------------------------------------- middlewares


@web.middleware
async def _errors_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except ApiError as exc:
        return _json(exc.status(), exc.code)
    except web.HTTPNotFound:
        return _json(errors.no_such_resource().status(), 404)
    except web.HTTPMethodNotAllowed as exc:
        return _json(errors.method_not_allowed(exc.method).status(), 405)


@web.middleware
async def _latency_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    delay = request.app[FAULTS].latency_ms
    if delay > 0 and not request.path.startswith("/_emulator/"):
        await asyncio.sleep(delay / 1000)
    return await handler(request)


# ---------------------------------------------------------------------- discovery and misc


async def _version(request: web.Request) -> web.Response:
    return _json(SERVER_VERSION)


async def _health(request: web.Request) -> web.Response:
    return web.Response(text="ok")


async def _api(request: web.Request) -> web.Response:
    return _json(request.app[DISCOVERY].core_versions(request.host))


async def _apis(request: web.Request) -> web.Response:
    return _json(request.app[DISCOVERY].api_groups())


async def _api_group(request: web.Request) -> web.Response:
    body = request.app[DISCOVERY].api_group(request.match_info["group"])
    if body is None:
        raise errors.no_such_resource()
    return _json(body)


async def _resource_list(request: web.Request) -> web.Response:
    body = request.app[DISCOVERY].resource_list(
        request.match_info.get("group", ""), request.match_info["version"]
    )
    if body is None:
        raise errors.no_such_resource()
    return _json(body)


async def _openapi_v2(request: web.Request) -> web.Response:
    if "protobuf" in request.headers.get("Accept", ""):
        return web.Response(
            body=Discovery.openapi_v2_protobuf(),
            content_type="application/com.github.proto-openapi.spec.v2.v1.0+protobuf",
        )
    return _json(Discovery.openapi_v2_json())


async def _openapi_v3(request: web.Request) -> web.Response:
    return _json(request.app[DISCOVERY].openapi_v3_root())


async def _openapi_v3_group(request: web.Request) -> web.Response:
    parts = request.match_info["tail"].split("/")
    if parts[0] == "api" and len(parts) == 2:
        body = request.app[DISCOVERY].openapi_v3_group("", parts[1])
    elif parts[0] == "apis" and len(parts) == 3:
        body = request.app[DISCOVERY].openapi_v3_group(parts[1], parts[2])
    else:
        body = None
    if body is None:
        raise errors.no_such_resource()
    return _json(body)


# ---------------------------------------------------------------------- /_emulator/


async def _emulator_state(request: web.Request) -> web.Response:
    return _json(request.app[FAULTS].state())


async def _emulator_action(request: web.Request) -> web.Response:
    params = await _read_json(request)
    if not isinstance(params, dict):
        raise errors.bad_request("the body must be a JSON object")
    return _json(request.app[FAULTS].inject(request.match_info["name"], params))


# ---------------------------------------------------------------------- resources


@dataclass(frozen=True, slots=True)
class _Target:
    rt: ResourceType
    namespace: str | None
    name: str | None
    subresource: str | None
    version: str

    @property
    def api_version(self) -> str:
        return f"{self.rt.group}/{self.version}" if self.rt.group else self.version

    def _same_group(self, obj: Any) -> bool:
        return isinstance(obj, dict) and str(obj.get("apiVersion", "")).rpartition("/")[0] == self.rt.group

    def view(self, obj: Obj) -> Obj:
        """An object (or a list and its items) as read in the requested version (conversion None). An
        object stored in an older storage version of its CRD is converted the same way."""
        if self._same_group(obj) and obj.get("kind") in (self.rt.kind, self.rt.list_kind):
            obj["apiVersion"] = self.api_version
        for item in obj.get("items") or ():
            if self._same_group(item):
                item["apiVersion"] = self.api_version
        return obj


def _target(request: web.Request, group: str, version: str) -> _Target:
    if group and not request.app[FAULTS].group_present(group):
        raise errors.no_such_resource()
    registry = request.app[STORE].registry
    segs = request.match_info["tail"].strip("/").split("/")
    namespace: str | None = None
    if segs[0] == "namespaces" and len(segs) >= 3:
        candidate = registry.by_path(group, version, segs[2])
        if candidate is not None and candidate.namespaced:
            namespace, segs = segs[1], segs[2:]
    rt = registry.by_path(group, version, segs[0])
    rest = segs[1:]
    if rt is None or len(rest) > 2 or (namespace is None and rt.namespaced and rest):
        raise errors.no_such_resource()
    name = rest[0] if rest else None
    sub = rest[1] if len(rest) == 2 else None
    if sub is not None and (sub != "status" or not rt.status_subresource):
        raise errors.no_such_resource()
    return _Target(rt, namespace, name, sub, version)


async def _core(request: web.Request) -> web.StreamResponse:
    return await _dispatch(request, _target(request, "", "v1"))


async def _grouped(request: web.Request) -> web.StreamResponse:
    return await _dispatch(
        request, _target(request, request.match_info["group"], request.match_info["version"])
    )


async def _dispatch(request: web.Request, target: _Target) -> web.StreamResponse:
    store = request.app[STORE]
    rt, ns, name, sub = target.rt, target.namespace, target.name, target.subresource
    q = request.query
    method = request.method
    if method == "GET":
        if _flag(q.get("watch")):
            field_selector = q.get("fieldSelector")
            if name is not None:
                extra = f"metadata.name={name}"
                field_selector = f"{field_selector},{extra}" if field_selector else extra
            selector = Selector.parse(q.get("labelSelector"), field_selector)
            return await _watch(request, target, ns, selector)
        if name is None:
            selector = Selector.parse(q.get("labelSelector"), q.get("fieldSelector"))
            limit = q.get("limit")
            body = store.list_body(
                rt,
                ns,
                selector,
                resource_version=q.get("resourceVersion"),
                resource_version_match=q.get("resourceVersionMatch"),
                limit=int(limit) if limit and limit.isdigit() else None,
                continue_token=q.get("continue") or None,
            )
            return _json(target.view(body))
        return _json(target.view(store.get(rt, ns, name)))
    if method == "POST":
        if name is not None or (rt.namespaced and ns is None):
            raise errors.method_not_allowed(method)
        body = await _read_json(request)
        if rt.status_subresource and isinstance(body, dict):
            body.pop("status", None)
        created = store.create(body, resource=rt, namespace=ns, version=target.version)
        return _json(target.view(created), 201)
    if method == "PUT":
        if name is None:
            raise errors.method_not_allowed(method)
        body = await _read_json(request)
        if not isinstance(body, dict):
            raise errors.bad_request("the body must be a JSON object")
        updated = store.update(
            body, resource=rt, namespace=ns, name=name, subresource=sub, version=target.version
        )
        return _json(target.view(updated))
    if method == "PATCH":
        if name is None:
            raise errors.method_not_allowed(method)
        patch = await _read_json(request)
        patched = store.patch(
            rt, ns, name, patch, request.content_type, subresource=sub, version=target.version
        )
        return _json(target.view(patched))
    if method == "DELETE":
        options = await _read_json(request)
        pre = options.get("preconditions") if isinstance(options, dict) else None
        pre = pre if isinstance(pre, dict) else {}
        if name is None:
            selector = Selector.parse(q.get("labelSelector"), q.get("fieldSelector"))
            items = [
                store.delete(rt, obj["metadata"].get("namespace"), obj["metadata"]["name"])
                for obj in store.list_objects(rt, ns, selector)
            ]
            body = {"apiVersion": rt.api_version, "kind": rt.list_kind, "metadata": {}, "items": items}
            return _json(target.view(body))
        result = store.delete(
            rt,
            ns,
            name,
            precondition_rv=pre.get("resourceVersion"),
            precondition_uid=pre.get("uid"),
        )
        pending = bool(result["metadata"].get("finalizers"))
        if rt.tracks_generation or pending:
            return _json(target.view(result), 202 if pending else 200)
        details = {"name": name, "kind": rt.plural, "uid": result["metadata"]["uid"]}
        if rt.group:
            details["group"] = rt.group
        return _json(
            {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "details": details}
        )
    raise errors.method_not_allowed(method)


# ---------------------------------------------------------------------- watch


def _event_line(kind: str, obj: Obj) -> bytes:
    return (_dumps({"type": kind, "object": obj}) + "\n").encode()


async def _wait(signal: asyncio.Event, seconds: float) -> None:
    if seconds <= 0:
        return
    try:
        async with asyncio.timeout(None if math.isinf(seconds) else seconds):
            await signal.wait()
    except TimeoutError:
        pass


async def _watch(
    request: web.Request, target: _Target, namespace: str | None, selector: Selector
) -> web.StreamResponse:
    rt = target.rt
    store = request.app[STORE]
    settings = request.app[SETTINGS]
    q = request.query
    timeout_raw = q.get("timeoutSeconds")
    try:
        timeout = float(timeout_raw) if timeout_raw else settings.max_watch_seconds
    except ValueError as exc:
        raise errors.bad_request(f"invalid timeoutSeconds {timeout_raw!r}") from exc
    bookmarks = _flag(q.get("allowWatchBookmarks"))
    resp = web.StreamResponse(
        status=200, headers={"Content-Type": "application/json", "Cache-Control": "no-cache, private"}
    )
    resp.enable_chunked_encoding()
    try:
        sub = store.watch(rt, namespace, selector, q.get("resourceVersion"))
    except ApiError as exc:
        if exc.code != 410:
            raise
        await resp.prepare(request)
        await resp.write(_event_line("ERROR", exc.status()))
        await resp.write_eof()
        return resp
    try:
        await resp.prepare(request)
        await _pump(
            request,
            resp,
            sub,
            target,
            timeout=timeout,
            bookmarks=bookmarks,
            interval=settings.bookmark_interval,
        )
    except ConnectionError:
        logger.debug("watch client of %s went away", rt.qualified)
    finally:
        store.unsubscribe(sub)
    return resp


async def _pump(
    request: web.Request,
    resp: web.StreamResponse,
    sub: Subscription,
    target: _Target,
    *,
    timeout: float,
    bookmarks: bool,
    interval: float,
) -> None:
    store = request.app[STORE]
    start = time.monotonic()
    deadline = start + max(timeout, 0.0)
    next_bookmark = start + interval if bookmarks else math.inf
    while True:
        sub.signal.clear()
        transport = request.transport
        if sub.drop_mode == "abort":
            if transport is not None:
                transport.abort()
            return
        if sub.drop_mode == "close":
            break
        now = time.monotonic()
        if sub.stall_until is not None:
            if now < sub.stall_until:
                await _wait(sub.signal, sub.stall_until - now)
                continue
            sub.stall_until = None
        if transport is None or transport.is_closing():
            return
        if sub.pending:
            kind, obj = sub.pending.popleft()
            await resp.write(_event_line(kind, target.view(copy.copy(obj))))
            continue
        if sub.drop_mode == "drain":
            break
        if now >= deadline:
            break
        if now >= next_bookmark:
            bookmark = {
                "kind": target.rt.kind,
                "apiVersion": target.api_version,
                "metadata": {"resourceVersion": str(store.resource_version)},
            }
            await resp.write(_event_line("BOOKMARK", bookmark))
            next_bookmark = now + interval
            continue
        await _wait(sub.signal, min(deadline, next_bookmark, now + 1.0) - now)
    await resp.write_eof()


def close_streams(store: Store) -> None:
    """End every open watch (used at shutdown so the runner does not wait for them)."""
    for sub in list(store.subscriptions):
        sub.release()
        sub.drop("close")


# ---------------------------------------------------------------------- app


def build_app(store: Store, faults: Faults, settings: WatchSettings | None = None) -> web.Application:
    app = web.Application(middlewares=[_errors_middleware, _latency_middleware], client_max_size=16 * 1024**2)
    app[STORE] = store
    app[FAULTS] = faults
    app[SETTINGS] = settings or WatchSettings()
    app[DISCOVERY] = Discovery(store.registry, faults.group_present)
    app.router.add_get("/version", _version)
    for probe in ("/healthz", "/livez", "/readyz"):
        app.router.add_get(probe, _health)
    # The discovery roots answer with and without the trailing slash, as the API server does
    # (client libraries' generated ApisApi asks for ``/apis/``).
    app.router.add_get("/api", _api)
    app.router.add_get("/api/", _api)
    app.router.add_get("/api/{version}", _resource_list)
    app.router.add_get("/apis", _apis)
    app.router.add_get("/apis/", _apis)
    app.router.add_get("/apis/{group}", _api_group)
    app.router.add_get("/apis/{group}/{version}", _resource_list)
    app.router.add_get("/openapi/v2", _openapi_v2)
    app.router.add_get("/openapi/v3", _openapi_v3)
    app.router.add_get("/openapi/v3/{tail:.+}", _openapi_v3_group)
    app.router.add_get("/_emulator/state", _emulator_state)
    app.router.add_post("/_emulator/{name}", _emulator_action)
    app.router.add_route("*", "/api/v1/{tail:.+}", _core)
    app.router.add_route("*", "/apis/{group}/{version}/{tail:.+}", _grouped)
    return app
