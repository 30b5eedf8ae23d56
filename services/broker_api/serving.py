"""broker-api's HTTP server, hardened against what a client can do below the routes.

- Connections are capped in total and per client address: past a cap a new connection is reset at
  once, so one client holding many half-open connections can neither exhaust the descriptors nor
  starve others (OTC's calls, the kubelet's probes).
- A connection must deliver a complete request head within ``header_timeout_s`` of opening (and of
  its previous answer): aiohttp's keep-alive timer, started at connection time, closes it otherwise.
  The body has its own bound (``read_body`` in the HTTP layer).
- aiohttp's low-level parser errors (a malformed request line or header, a body it cannot frame)
  are answered ``400 {"description"}`` without echoing input, and logged as one line naming the
  error type and client, never the raw request or the parser's message (which quotes the input).
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections import Counter as Tally
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_request import BaseRequest
from prometheus_client import CollectorRegistry, Counter

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServerLimits:
    max_connections: int = 512
    max_connections_per_client: int = 64
    header_timeout_s: float = 15.0


class _Metrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.refused = Counter(
            "kotc_broker_api_connections_refused_total",
            "Connections reset at once because a connection cap was reached",
            ["cap"],
            registry=registry,
        )
        self.malformed = Counter(
            "kotc_broker_api_malformed_requests_total",
            "Requests aiohttp's parser rejected before any route saw them",
            registry=registry,
        )


class _GuardedHandler(RequestHandler):
    """aiohttp's protocol with a JSON, input-free answer and log line for parser-level errors."""

    _metrics: _Metrics

    def handle_error(
        self,
        request: BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        if status < 500:
            self._metrics.malformed.inc()
        log.warning(
            "rejected a request aiohttp could not parse",
            extra={"client": request.remote, "status": status, "error": type(exc).__name__ if exc else None},
        )
        description = "bad request: malformed HTTP" if status < 500 else "internal error"
        resp = web.Response(
            status=status, text=json.dumps({"description": description}), content_type="application/json"
        )
        resp.force_close()
        return resp

    def log_exception(self, *args: Any, **kw: Any) -> None:
        """aiohttp's own error log, without the traceback (its messages may quote the request)."""
        exc = kw.get("exc_info")
        log.error(
            "HTTP protocol error",
            extra={"error": type(exc).__name__ if isinstance(exc, BaseException) else None},
        )


class _GuardedServer(web.Server):
    def __init__(self, *args: Any, limits: ServerLimits, metrics: _Metrics, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._limits = limits
        self._metrics = metrics
        self._per_client: Tally[str] = Tally()
        self._counted: dict[RequestHandler, str] = {}

    def __call__(self) -> RequestHandler:
        handler = _GuardedHandler(self, loop=self._loop, **self._kwargs)
        handler._metrics = self._metrics
        return handler

    def connection_made(self, handler: RequestHandler, transport: asyncio.Transport) -> None:
        super().connection_made(handler, transport)
        peer = transport.get_extra_info("peername")
        client = str(peer[0]) if isinstance(peer, tuple) and peer else "unknown"
        cap = None
        if len(self._counted) >= self._limits.max_connections:
            cap = "total"
        elif self._per_client[client] >= self._limits.max_connections_per_client:
            cap = "per-client"
        if cap is not None:
            self._metrics.refused.labels(cap).inc()
            transport.abort()
            return
        self._counted[handler] = client
        self._per_client[client] += 1

    def connection_lost(self, handler: RequestHandler, exc: BaseException | None = None) -> None:
        client = self._counted.pop(handler, None)
        if client is not None:
            self._per_client[client] -= 1
            if self._per_client[client] <= 0:
                del self._per_client[client]
        super().connection_lost(handler, exc)


class GuardedAppRunner(web.AppRunner):
    """``web.AppRunner`` whose server enforces :class:`ServerLimits`."""

    def __init__(
        self, app: web.Application, *, limits: ServerLimits, registry: CollectorRegistry, **kwargs: Any
    ) -> None:
        super().__init__(app, keepalive_timeout=limits.header_timeout_s, **kwargs)
        self._limits = limits
        self._guard_metrics = _Metrics(registry)

    async def _make_server(self) -> web.Server:
        plain = await super()._make_server()
        return _GuardedServer(
            plain.request_handler,
            request_factory=plain.request_factory,
            handler_cancellation=plain.handler_cancellation,
            loop=asyncio.get_running_loop(),
            limits=self._limits,
            metrics=self._guard_metrics,
            **self._kwargs,
        )
