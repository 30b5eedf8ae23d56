"""The HTTP face: routes of the brokers served (setting ``BROKERS``), Basic auth, body limits and the one error mapping.

Success means "committed in MongoDB": the event publish is attempted right after the commit, and
if RabbitMQ cannot confirm it the event stays in the outbox (published later by the drainer) while
OTC still gets its 200/204. OTC retrying a call whose event is pending is harmless (idempotent).
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import pymongo
from aiohttp import web
from prometheus_client import Counter, Histogram
from pydantic import BaseModel, SecretStr, ValidationError
from pymongo.errors import PyMongoError

from services.broker_api.auth import AuthThrottle, basic_credentials, basic_value
from services.broker_api.crypto import CredentialsCipher
from services.broker_api.errors import (
    BadRequest,
    BrokerError,
    ClientClosedRequest,
    MethodNotAllowed,
    NotFound,
    PayloadTooLarge,
    RequestTimeout,
    TooManyRequests,
    Unauthorized,
    Unavailable,
    from_validation,
)
from services.broker_api.instances import Policy, record_key
from services.broker_api.kinds import RULES
from services.broker_api.models import (
    BROKERS,
    ID_PATTERN,
    ID_RE,
    InstanceRecord,
    InstanceResponse,
    MessageRequest,
    ParametersOut,
    StatusResponse,
    VersionResponse,
)
from services.broker_api.openapi import openapi_spec
from services.broker_api.outbox import Lease, Outbox
from services.broker_api.routes import MESSAGING, MUTATIONS, Call, Mutation
from services.broker_api.settings import Settings
from services.broker_api.store import Commit, InstanceStore
from shared.dependencies import never_succeeds
from shared.events import ServiceKind
from shared.health import VERSION, Health

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
KIND: web.AppKey[ServiceKind] = web.AppKey("kind")
"""On each broker's sub-application: the service kind its routes act on."""
AS_BROKER = web.RequestKey("as_broker", bool)
"""Set by the broker's auth middleware: the request carries the broker credentials."""
SELF_AUTHENTICATING = "messaging-accept"
"""Name of the one broker route whose handler also accepts toolchain credentials."""
# Metric label values come from these sets only: a client must not create time series at will.
METHODS = frozenset({"GET", "HEAD", "PUT", "PATCH", "POST", "DELETE", "OPTIONS"})
MESSAGE_SOURCES = frozenset({"toolchain", "pipeline", "github"})


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
        self._throttle = AuthThrottle(settings.auth_failures_per_minute)
        self._user = settings.broker_id.encode()
        self._secret = settings.broker_secret.get_secret_value().encode()
        limit = settings.max_body_bytes
        self._too_large = f"request body over {limit // 1024} KiB ({limit} bytes)"
        reg = health.registry
        self._requests = Counter(
            "kotc_broker_api_requests_total", "HTTP requests", ["method", "route", "status"], registry=reg
        )
        self._latency = Histogram("kotc_broker_api_request_seconds", "HTTP latency", ["route"], registry=reg)
        self._messages = Counter(
            "kotc_broker_api_messages_total", "accepted OTC lifecycle messages", ["source"], registry=reg
        )

    @property
    def policy(self) -> Policy:
        return self._policy

    # --- plumbing -----------------------------------------------------------------------------

    def is_broker(self, header: str | None) -> bool:
        """Constant-time check of ``BROKER_ID:BROKER_SECRET`` (both parts always compared)."""
        creds = basic_credentials(header)
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
        except ClientClosedRequest as exc:  # the client's doing: one line, no traceback, no 5xx
            log.info(exc.description, extra={"route": route_name, "client": request.remote})
            status = exc.status
            return web.Response(status=status)  # nobody reads it
        except BrokerError as exc:
            status = exc.status
            answer = web.json_response(
                {"description": exc.description}, status=exc.status, headers=exc.headers
            )
            if isinstance(exc, RequestTimeout):
                await _answer_and_close(request, answer)
            return answer
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
        except Exception as exc:
            failure = _failure(exc, route_name, request.method)
            status = failure.status
            return failure
        finally:
            method = request.method if request.method in METHODS else "other"
            self._requests.labels(method, route_name, str(status)).inc()
            self._latency.labels(route_name).observe(time.perf_counter() - started)

    @web.middleware
    async def guard(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """Body size (before reading it); no route or method: 404/405 before any auth check."""
        if request.content_length is not None and request.content_length > self._settings.max_body_bytes:
            raise PayloadTooLarge(self._too_large)
        match_exc = request.match_info.http_exception
        if match_exc is not None:
            if isinstance(match_exc, web.HTTPMethodNotAllowed):
                raise MethodNotAllowed(f"method {request.method} not allowed here", match_exc.allowed_methods)
            raise NotFound("not found: no such route")
        # One bound for all MongoDB work of a request (server selection included): a hung or down
        # MongoDB answers 503 within it instead of after the driver's 30 s selection timeout.
        with pymongo.timeout(self._settings.store_timeout_s):
            return await handler(request)

    def _auth_failed(self, request: web.Request) -> None:
        """Count a failed authentication (a credential was presented); 429 once the client failed
        too often (see ``auth``)."""
        if request.headers.get("Authorization") is None:
            return  # nothing guessed: a plain 401
        client = request.remote or "unknown"
        self._check_throttle(request)
        self._throttle.failed(client)

    def _check_throttle(self, request: web.Request) -> None:
        wait = self._throttle.retry_after(request.remote or "unknown")
        if wait is not None:
            raise TooManyRequests("too many failed authentications from this client, retry later", wait)

    @web.middleware
    async def authenticate(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """A broker's routes answer the broker credentials only, except the lifecycle messages,
        which also accept a toolchain's (their handler checks those against the instance)."""
        request[AS_BROKER] = self.is_broker(request.headers.get("Authorization"))
        if not request[AS_BROKER] and request.match_info.route.name != SELF_AUTHENTICATING:
            self._auth_failed(request)
            raise Unauthorized("invalid authorization header: HTTP Basic broker credentials required")
        return await handler(request)

    async def _body(self, request: web.Request, model: type[BaseModel], *, optional: bool = False) -> Any:
        timeout_s = self._settings.body_timeout_s
        try:
            raw = await asyncio.wait_for(request.read(), timeout_s)
        except TimeoutError:
            raise RequestTimeout(f"request body not received within {timeout_s:g}s") from None
        except ConnectionError:  # the peer closed mid-body (aiohttp's "Connection lost")
            raise ClientClosedRequest(
                "client closed the connection before its request body was complete"
            ) from None
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

    def _check_service_id(self, kind: ServiceKind, service_id: str | None) -> None:
        if service_id is not None and service_id != kind:
            raise BadRequest(f"invalid request: 'service_id' does not match this broker (expected {kind!r})")

    async def _publish(self, kind: ServiceKind, sid: str, commit: Commit, lease: Lease | None) -> None:
        if not commit.events:
            return
        try:
            await self._outbox.after_commit(record_key(kind, sid), lease, commit.pending)
        except Exception as exc:  # committed: the drainer publishes later
            log.warning(
                "publish deferred to the outbox drainer",
                extra={"instance_id": sid, "kind": kind, "error": type(exc).__name__},
            )

    def _now(self) -> datetime:
        return self._clock()

    def _instance(self, rec: InstanceRecord) -> web.Response:
        rules = RULES[rec.kind]
        # From the validated record: constructed, not validated again (once per request: the body).
        body = InstanceResponse.model_construct(
            instance_id=rec.instance_id,
            dashboard_url=rec.dashboard_url,
            parameters=ParametersOut.model_construct(
                **rec.parameters.model_dump(
                    exclude={"create", "instance"}
                    if rules.one_instance
                    else {"create", "instance", "namespace"}
                ),
                label=rules.label(rec.parameters),
                events_note=_events_note(rec),
                **_creation_out(rec),
            ),
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

    def mutation(self, route: Mutation) -> Handler:
        """The handler of one row of :data:`MUTATIONS`: ids, body, compare-and-set, publish, answer."""

        async def handle(request: web.Request) -> web.StreamResponse:
            kind = request.config_dict[KIND]
            sid = self._id(request, "sid", "service instance id")
            tid = self._id(request, "tid", "toolchain id") if "tid" in request.match_info else None
            req: Any = await self._body(request, route.body) if route.body is not None else None
            if route.checks_service_id:
                self._check_service_id(kind, req.service_id)
            now = self._now()
            call = Call(
                kind=kind, sid=sid, tid=tid, req=req, policy=self._policy, cipher=self._cipher, now=now
            )
            key = record_key(kind, sid)
            async with self._outbox.holding(key) as lease:
                commit = await self._store.mutate(
                    kind,
                    sid,
                    lambda rec: route.change(call, rec),
                    now=self._now,
                    lease=lease,
                    likely_new=route.likely_new,
                )
                self._log(route.message, kind, sid, commit, **({"toolchain_id": tid} if tid else {}))
                await self._publish(kind, sid, commit, lease)
            if route.answers_instance:
                assert commit.record is not None
                return self._instance(commit.record)
            return web.Response(status=204)

        return handle

    async def accept_message(self, request: web.Request) -> web.Response:
        """Lifecycle messages (docs/reference/otc-api.md §2). Auth: the broker credentials, or the
        Basic value equal to the ``toolchain_credentials`` stored for that instance and toolchain
        (TIAM introspection is not available here)."""
        kind = request.config_dict[KIND]
        as_broker = request[AS_BROKER]
        header = request.headers.get("Authorization")
        given = basic_value(header) or ""
        if not as_broker and not given:
            self._auth_failed(request)
            raise Unauthorized("invalid authorization header: HTTP Basic credentials required")
        if not as_broker:
            self._check_throttle(request)  # before the MongoDB lookup a guess would cost
        req: MessageRequest = await self._body(request, MessageRequest)
        try:
            await self._authorize_message(kind, req, as_broker=as_broker, given=given)
        except Unauthorized:
            self._auth_failed(request)
            raise
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

    async def _authorize_message(
        self, kind: ServiceKind, req: MessageRequest, *, as_broker: bool, given: str
    ) -> None:
        rec = await self._store.get(kind, req.instance_id)
        if rec is None or rec.state != "active":
            if as_broker:
                raise BadRequest("invalid request: unknown 'instance_id'")
            raise Unauthorized("invalid authorization header")
        if not as_broker:
            binding = next((b for b in rec.toolchains if b.id == req.toolchain_id), None)
            if binding is None or not self._cipher.matches(binding.credentials, SecretStr(given)):
                raise Unauthorized("invalid authorization header")

    async def status(self, request: web.Request) -> web.Response:
        """Always 200 (OTC monitoring must not flap); ``warn`` when a dependency is down."""
        ok, checks = await self._health.readiness()
        answer = StatusResponse(
            status="ok" if ok else "warn", checks=checks, brokers=list(self._settings.served)
        )
        return web.json_response(answer.model_dump())

    async def version(self, request: web.Request) -> web.Response:
        return web.json_response(
            VersionResponse(build=self._settings.build_version, version=VERSION).model_dump()
        )

    async def openapi(self, request: web.Request) -> web.Response:
        s = self._settings
        return web.json_response(openapi_spec(s.build_version, s.clusters, s.served))


def broker_app(api: BrokerApi, kind: ServiceKind) -> web.Application:
    """One broker (§3): its kind for every handler, its auth middleware, the route table."""
    app = web.Application(middlewares=[api.authenticate])
    app[KIND] = kind
    for route in MUTATIONS:
        app.router.add_route(route.method, route.path, api.mutation(route))
    app.router.add_post(MESSAGING.path, api.accept_message, name=SELF_AUTHENTICATING)
    return app


def make_app(api: BrokerApi, health: Health, settings: Settings) -> web.Application:
    app = web.Application(client_max_size=settings.max_body_bytes, middlewares=[api.errors, api.guard])
    app.router.add_get("/status", api.status)
    app.router.add_get("/version", api.version)
    app.router.add_get("/openapi.json", api.openapi)
    health.add_routes(app)
    for root in settings.served:  # a broker not served has no route: 404, like any unknown path
        app.add_subapp(f"/{root}/api/v1", broker_app(api, BROKERS[root]))
    return app


def _creation_out(rec: InstanceRecord) -> dict[str, Any]:
    """``create``/``instance`` are echoed only for a service that creates its instance (so the
    answers of the others keep their shape), with where the cluster side's outcome shows."""
    if not rec.parameters.create:
        return {}
    return {
        "create": True,
        "instance": rec.parameters.instance,
        "instance_status": (
            f"the watcher of cluster '{rec.parameters.cluster}' creates or updates Kabanero "
            f"{rec.parameters.namespace}/{rec.parameters.name or 'kabanero'} (or refuses to touch one it "
            "did not create); outcome: this service's dashboard_url and `kabanero-otc status`"
        ),
    }


def _events_note(rec: InstanceRecord) -> str | None:
    """Say, when ``events`` is manual, that the Events tools added while it was auto stay."""
    if rec.parameters.events != "manual" or not rec.events_tools:
        return None
    return (
        f"{len(rec.events_tools)} Kabanero Events tool(s) added while events was 'auto' are left in "
        "place (each is removed when this service is unbound from its toolchain or deleted); "
        "no new ones are added"
    )


async def _answer_and_close(request: web.Request, answer: web.StreamResponse) -> None:
    """Send ``answer``, then close the connection (RFC 9110 §15.5.9, after a 408): left open,
    aiohttp would linger up to 10 s reading the rest of a body that is not coming, even after the
    client went away."""
    answer.force_close()
    await answer.prepare(request)
    await answer.write_eof()
    if request.protocol is not None:
        request.protocol.force_close()  # the transport flushes the answer before it closes


def utc_now() -> datetime:
    return datetime.now(UTC)


def _failure(exc: Exception, route_name: str, method: str) -> web.Response:
    """What no handler answered: a value MongoDB can never store (400: what validation missed is
    still the caller's; a retry cannot help), MongoDB trouble (503: the one place it becomes an
    answer, retry later), else a bug (500, logged with its traceback)."""
    if (refused := never_succeeds(exc)) is not None:
        log.warning("request refused by storage", extra={"route": route_name, "error": refused})
        return web.json_response({"description": f"invalid request: {refused}"}, status=400)
    if isinstance(exc, PyMongoError):
        log.warning("storage unavailable", extra={"route": route_name, "error": type(exc).__name__})
        return web.json_response(
            {"description": "storage unavailable, retry later"}, status=Unavailable.status
        )
    log.error("unexpected error", extra={"route": route_name, "method": method}, exc_info=exc)
    return web.json_response({"description": "internal error"}, status=500)
