"""The HTTP face: routes of both brokers, Basic auth, body limits and the one error mapping.

Success means "committed in MongoDB": the event publish is attempted right after the commit, and
if RabbitMQ cannot confirm it the event stays in the outbox (published later by the drainer) while
OTC still gets its 200/204. OTC retrying a call whose event is pending is harmless (idempotent).
"""

from __future__ import annotations

import base64
import binascii
import hmac
import json
import logging
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

from aiohttp import web
from prometheus_client import Counter, Histogram
from pydantic import BaseModel, SecretStr, ValidationError

from services.broker_api import instances
from services.broker_api.crypto import CredentialsCipher
from services.broker_api.errors import (
    BadRequest,
    BrokerError,
    MethodNotAllowed,
    NotFound,
    PayloadTooLarge,
    Unauthorized,
    from_validation,
)
from services.broker_api.instances import Change, Policy, record_key
from services.broker_api.models import (
    BROKERS,
    ID_PATTERN,
    ID_RE,
    BindRequest,
    InstanceRecord,
    InstanceResponse,
    MessageRequest,
    ParametersOut,
    ProvisionRequest,
    StatusResponse,
    UpdateRequest,
    VersionResponse,
)
from services.broker_api.openapi import openapi_spec
from services.broker_api.outbox import Outbox
from services.broker_api.settings import Settings
from services.broker_api.store import Commit, InstanceStore
from shared.events import ServiceKind
from shared.health import Health

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
# Metric label values come from these sets only: a client must not create time series at will.
METHODS = frozenset({"GET", "HEAD", "PUT", "PATCH", "POST", "DELETE", "OPTIONS"})
MESSAGE_SOURCES = frozenset({"toolchain", "pipeline", "github"})


def _parse_basic(header: str | None) -> tuple[bytes, bytes] | None:
    if not header or header[:6].lower() != "basic ":
        return None
    try:
        raw = base64.b64decode(header[6:].strip(), validate=True)
    except (binascii.Error, ValueError):
        return None
    user, sep, password = raw.partition(b":")
    return (user, password) if sep else None


class BrokerApi:
    def __init__(
        self,
        settings: Settings,
        *,
        store: InstanceStore,
        outbox: Outbox,
        cipher: CredentialsCipher,
        health: Health,
        clock: Callable[[], datetime],
    ) -> None:
        self._settings = settings
        self._store = store
        self._outbox = outbox
        self._cipher = cipher
        self._health = health
        self._clock = clock
        self._policy = Policy(settings)
        self._user = settings.broker_id.encode()
        self._secret = settings.broker_secret.get_secret_value().encode()
        limit = settings.max_body_bytes
        self._too_large = f"request body over {limit // 1024} KiB ({limit} bytes)"
        reg = health.registry
        self._requests = Counter(
            "broker_api_requests_total", "HTTP requests", ["method", "route", "status"], registry=reg
        )
        self._latency = Histogram("broker_api_request_seconds", "HTTP latency", ["route"], registry=reg)
        self._messages = Counter(
            "broker_api_messages_total", "accepted OTC lifecycle messages", ["source"], registry=reg
        )

    # --- plumbing -----------------------------------------------------------------------------

    def is_broker(self, header: str | None) -> bool:
        """Constant-time check of ``BROKER_ID:BROKER_SECRET`` (both parts always compared)."""
        creds = _parse_basic(header)
        if creds is None:
            return False
        user_ok = hmac.compare_digest(creds[0], self._user)
        secret_ok = hmac.compare_digest(creds[1], self._secret)
        return user_ok and secret_ok

    @web.middleware
    async def errors(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """The single mapping of errors to HTTP: JSON ``{"description"}`` for every failure."""
        started = time.perf_counter()
        route = request.match_info.route.resource
        route_name = route.canonical if route is not None else "unmatched"
        status = 500
        try:
            response = await handler(request)
            status = response.status
            return response
        except BrokerError as exc:
            status = exc.status
            return web.json_response({"description": exc.description}, status=exc.status, headers=exc.headers)
        except web.HTTPException as exc:
            if exc.status < 400:
                status = exc.status
                raise
            status = exc.status
            description = {
                404: "not found: no such route",
                405: f"method {request.method} not allowed here",
                413: self._too_large,
            }.get(exc.status, exc.reason)
            allow = {"Allow": exc.headers["Allow"]} if "Allow" in exc.headers else None
            return web.json_response({"description": description}, status=exc.status, headers=allow)
        except Exception:
            log.exception("unexpected error", extra={"route": route_name, "method": request.method})
            return web.json_response({"description": "internal error"}, status=500)
        finally:
            method = request.method if request.method in METHODS else "other"
            self._requests.labels(method, route_name, str(status)).inc()
            self._latency.labels(route_name).observe(time.perf_counter() - started)

    @web.middleware
    async def guard(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """Body size (before reading it) and broker auth on the service_instances routes."""
        if request.content_length is not None and request.content_length > self._settings.max_body_bytes:
            raise PayloadTooLarge(self._too_large)
        match_exc = request.match_info.http_exception
        if match_exc is not None:
            if isinstance(match_exc, web.HTTPMethodNotAllowed):
                raise MethodNotAllowed(f"method {request.method} not allowed here", match_exc.allowed_methods)
            raise NotFound("not found: no such route")
        if "/service_instances" in request.path and not self.is_broker(request.headers.get("Authorization")):
            raise Unauthorized("invalid authorization header: HTTP Basic broker credentials required")
        return await handler(request)

    @staticmethod
    async def _body(request: web.Request, model: type[BaseModel], *, optional: bool = False) -> Any:
        raw = await request.read()
        if not raw.strip():
            if optional:
                return model.model_validate({})
            raise BadRequest("invalid request: a JSON object body is required")
        try:
            data = json.loads(raw)
        except (ValueError, RecursionError):
            raise BadRequest("invalid request: malformed JSON body") from None
        if not isinstance(data, dict):
            raise BadRequest("invalid request: the body must be a JSON object")
        try:
            return model.model_validate(data)
        except ValidationError as exc:
            raise from_validation(exc) from None

    @staticmethod
    def _id(request: web.Request, name: str, what: str) -> str:
        value = request.match_info[name]
        if not ID_RE.fullmatch(value):
            raise BadRequest(f"invalid {what}: must be 1-255 URL-safe characters ({ID_PATTERN})")
        return value

    @staticmethod
    def _kind(request: web.Request) -> ServiceKind:
        return BROKERS[request.path.split("/", 2)[1]]

    def _check_service_id(self, kind: ServiceKind, service_id: str | None) -> None:
        if service_id is not None and service_id != kind:
            raise BadRequest(f"invalid request: 'service_id' does not match this broker (expected {kind!r})")

    async def _publish(self, kind: ServiceKind, sid: str, commit: Commit) -> None:
        if not commit.events:
            return
        try:
            await self._outbox.publish_committed(record_key(kind, sid))
        except Exception as exc:  # committed: the drainer publishes later
            log.warning(
                "publish deferred to the outbox drainer",
                extra={"instance_id": sid, "kind": kind, "error": type(exc).__name__},
            )

    def _now(self) -> datetime:
        return self._clock()

    def _instance(self, rec: InstanceRecord) -> web.Response:
        body = InstanceResponse(
            instance_id=rec.instance_id,
            dashboard_url=rec.dashboard_url,
            parameters=ParametersOut(**rec.parameters.model_dump(), label=rec.parameters.label),
            organization_guid=rec.organization_guid,
        )
        out = body.model_dump(mode="json", exclude_none=True)
        out["organization_guid"] = rec.organization_guid  # part of the contract's shape, even if null
        return web.json_response(out)

    def _log(self, what: str, kind: ServiceKind, sid: str, commit: Commit, **extra: Any) -> None:
        log.info(
            what,
            extra={
                "kind": kind,
                "instance_id": sid,
                "events": [e.routing_key for e in commit.events],
                "revision": commit.record.revision if commit.record else None,
                **extra,
            },
        )

    # --- routes -------------------------------------------------------------------------------

    async def put_instance(self, request: web.Request) -> web.Response:
        return await self._upsert(
            request, ProvisionRequest, instances.provision, "service instance provisioned or updated"
        )

    async def patch_instance(self, request: web.Request) -> web.Response:
        return await self._upsert(request, UpdateRequest, instances.update, "service instance updated")

    async def _upsert[R: ProvisionRequest | UpdateRequest](
        self, request: web.Request, model: type[R], change: Callable[..., Change | None], message: str
    ) -> web.Response:
        """PUT (create-or-update) and PATCH: validate, compare-and-set, publish, answer §3's shape."""
        kind, sid = self._kind(request), self._id(request, "sid", "service instance id")
        req: R = await self._body(request, model)
        self._check_service_id(kind, req.service_id)
        now = self._now()
        commit = await self._store.mutate(
            kind,
            sid,
            lambda rec: change(
                rec, kind=kind, sid=sid, req=req, policy=self._policy, cipher=self._cipher, now=now
            ),
            now=self._now,
        )
        assert commit.record is not None
        self._log(message, kind, sid, commit)
        await self._publish(kind, sid, commit)
        return self._instance(commit.record)

    async def delete_instance(self, request: web.Request) -> web.Response:
        kind, sid = self._kind(request), self._id(request, "sid", "service instance id")
        now = self._now()
        commit = await self._store.mutate(
            kind, sid, lambda rec: instances.deprovision(rec, now=now), now=self._now
        )
        self._log("service instance deleted", kind, sid, commit)
        await self._publish(kind, sid, commit)
        return web.Response(status=204)

    async def bind(self, request: web.Request) -> web.Response:
        kind, sid = self._kind(request), self._id(request, "sid", "service instance id")
        tid = self._id(request, "tid", "toolchain id")
        req: BindRequest = await self._body(request, BindRequest)
        now = self._now()
        commit = await self._store.mutate(
            kind,
            sid,
            lambda rec: instances.bind(rec, tid=tid, req=req, cipher=self._cipher, now=now),
            now=self._now,
        )
        self._log("toolchain bound", kind, sid, commit, toolchain_id=tid)
        await self._publish(kind, sid, commit)
        return web.Response(status=204)

    async def unbind(self, request: web.Request) -> web.Response:
        kind, sid = self._kind(request), self._id(request, "sid", "service instance id")
        tid = self._id(request, "tid", "toolchain id")
        now = self._now()
        commit = await self._store.mutate(
            kind, sid, lambda rec: instances.unbind(rec, tid=tid, now=now), now=self._now
        )
        self._log("toolchain unbound", kind, sid, commit, toolchain_id=tid)
        await self._publish(kind, sid, commit)
        return web.Response(status=204)

    async def unbind_all(self, request: web.Request) -> web.Response:
        kind, sid = self._kind(request), self._id(request, "sid", "service instance id")
        now = self._now()
        commit = await self._store.mutate(
            kind, sid, lambda rec: instances.unbind_all(rec, now=now), now=self._now
        )
        self._log("all toolchains unbound", kind, sid, commit)
        await self._publish(kind, sid, commit)
        return web.Response(status=204)

    async def accept_message(self, request: web.Request) -> web.Response:
        """Lifecycle messages (otc-api §2.7). Auth: the broker credentials, or the Basic value
        equal to the ``toolchain_credentials`` stored for that instance and toolchain (TIAM
        introspection is not available here)."""
        kind = self._kind(request)
        header = request.headers.get("Authorization")
        as_broker = self.is_broker(header)
        given = header[6:].strip() if header and header[:6].lower() == "basic " else ""
        if not as_broker and not given:
            raise Unauthorized("invalid authorization header: HTTP Basic credentials required")
        req: MessageRequest = await self._body(request, MessageRequest)
        rec = await self._store.get(kind, req.instance_id)
        if rec is None or rec.state != "active":
            if as_broker:
                raise BadRequest("invalid request: unknown 'instance_id'")
            raise Unauthorized("invalid authorization header")
        if not as_broker:
            binding = next((b for b in rec.toolchains if b.id == req.toolchain_id), None)
            if binding is None or not self._cipher.matches(binding.credentials, SecretStr(given)):
                raise Unauthorized("invalid authorization header")
        event = req.payload.get("event")
        source = req.service_id if req.service_id in MESSAGE_SOURCES else "other"
        self._messages.labels(source).inc()
        log.info(
            "lifecycle message accepted",
            extra={
                "kind": kind,
                "instance_id": req.instance_id,
                "toolchain_id": req.toolchain_id,
                "source": req.service_id[:64],
                "event_type": event if isinstance(event, str) and len(event) <= 64 else None,
            },
        )
        return web.Response(status=204)

    async def status(self, request: web.Request) -> web.Response:
        """Always 200 (OTC monitoring must not flap); ``warn`` when a dependency is down."""
        ok, checks = await self._health.readiness()
        return web.json_response(StatusResponse(status="ok" if ok else "warn", checks=checks).model_dump())

    async def version(self, request: web.Request) -> web.Response:
        return web.json_response(VersionResponse(build=self._settings.build_version).model_dump())

    async def openapi(self, request: web.Request) -> web.Response:
        return web.json_response(openapi_spec(self._settings.build_version, self._settings.clusters))


def make_app(api: BrokerApi, health: Health, settings: Settings) -> web.Application:
    app = web.Application(client_max_size=settings.max_body_bytes, middlewares=[api.errors, api.guard])
    for root in BROKERS:
        base = f"/{root}/api/v1"
        r = app.router
        r.add_put(f"{base}/service_instances/{{sid}}", api.put_instance)
        r.add_patch(f"{base}/service_instances/{{sid}}", api.patch_instance)
        r.add_delete(f"{base}/service_instances/{{sid}}", api.delete_instance)
        r.add_put(f"{base}/service_instances/{{sid}}/toolchains/{{tid}}", api.bind)
        r.add_delete(f"{base}/service_instances/{{sid}}/toolchains/{{tid}}", api.unbind)
        r.add_delete(f"{base}/service_instances/{{sid}}/toolchains", api.unbind_all)
        r.add_post(f"{base}/messaging/accept", api.accept_message)
    app.router.add_get("/status", api.status)
    app.router.add_get("/version", api.version)
    app.router.add_get("/openapi.json", api.openapi)
    health.add_routes(app)
    return app


def utc_now() -> datetime:
    return datetime.now(UTC)
