"""broker-api's HTTP server, hardened against what a client can do below the routes.

Admission (docs/design.md, "broker-api below the routes"): connections are capped in total
(``max_connections``) and per client address (``max_connections_per_client``), and a full cap never
hides a client that sends its request promptly:

- A new connection past a cap takes the place of the oldest connection of that cap that is still
  waiting for a request head (one that never sent a complete head first, then an idle keep-alive
  one), which is closed. Slow-header connections, however many and from however many addresses,
  therefore only ever displace each other: the kubelet's probe, OTC's ``/status`` and OTC's calls get
  a connection and are answered.
- When every connection of the cap is busy with a request, the new connection is admitted *over the
  cap* (at most ``overflow_connections`` of them, displacing each other the same way): its
  ``/healthz``, ``/readyz``, ``/status``, ``/version`` and ``/metrics`` are served, anything else is
  answered at once (429 over the client's cap, 503 over the total) with ``Retry-After`` and the
  connection closed. Only when even the overflow is full of busy connections is a connection reset.
- A connection must deliver a complete request head within ``header_timeout_s`` of opening (and of
  its previous answer): aiohttp's keep-alive timer, started at connection time, closes it otherwise.
  The body has its own bound (``read_body`` in the HTTP layer).

aiohttp's low-level parser errors (a malformed request line or header, a body it cannot frame) are
answered ``400 {"description"}`` without echoing input, and logged as one line naming the error type
and client, never the raw request or the parser's message (which quotes the input).
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections import Counter as Tally
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_request import BaseRequest
from prometheus_client import CollectorRegistry, Counter, Gauge

log = logging.getLogger(__name__)

ALWAYS_SERVED = frozenset({"/healthz", "/readyz", "/status", "/version", "/metrics"})
"""What a connection over a cap is still served (GET/HEAD): the probes, OTC's monitoring, Prometheus."""
RETRY_AFTER_S = 1
"""A busy connection is released within milliseconds typically (a request's work), at worst after
the body timeout; IBM's SDK core retries 429 and 503 after ``Retry-After`` (docs/design.md)."""
EVICT_AFTER_S = 1.0
"""A connection waiting this long for a request head is displaced first at a full cap: far longer
than a prompt client's head takes to arrive, far shorter than the header timeout."""
_OVER_CAP = {
    "per-client": (429, "too many connections from this client address, retry later"),
    "total": (503, "the server is at its connection limit, retry later"),
}


@dataclass(frozen=True)
class ServerLimits:
    max_connections: int = 512
    max_connections_per_client: int = 256
    header_timeout_s: float = 15.0
    overflow_connections: int = 256


class _Metrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.refused = Counter(
            "kotc_broker_api_connections_refused_total",
            "Connections over a cap with every connection of the cap busy: answered 429 (cap=per-client) "
            "or 503 (cap=total) unless a probe, or reset at once when the overflow is full (cap=overflow)",
            ["cap"],
            registry=registry,
        )
        self.evicted = Counter(
            "kotc_broker_api_connections_evicted_total",
            "Connections still waiting for a request head, closed to make room for a new one at a cap",
            registry=registry,
        )
        self.malformed = Counter(
            "kotc_broker_api_malformed_requests_total",
            "Requests aiohttp's parser rejected before any route saw them",
            registry=registry,
        )
        self.open = Gauge(
            "kotc_broker_api_connections",
            "Open HTTP connections: waiting for a request head, busy with a request, or over a cap",
            ["state"],
            registry=registry,
        )


class _GuardedHandler(RequestHandler):
    """aiohttp's protocol with a JSON, input-free answer and log line for parser-level errors."""

    _metrics: _Metrics
    over_cap: str | None = None
    """The cap this connection is over (``"per-client"``, ``"total"``), or None: admitted under it."""

    def waiting(self) -> bool:
        """Waiting for a request head: nothing of a request is in progress, so closing the connection
        loses no request. aiohttp's own idle test (``RequestHandler._process_keepalive``), on its
        internals, as ``waited_s``: the admission tests fail if a new aiohttp moves them."""
        return self._waiter is not None and not self._waiter.done()

    def waited_s(self) -> float:
        """Since the connection opened or answered its last request (aiohttp's keep-alive deadline
        is set from that moment)."""
        return self._loop.time() - (self._next_keepalive_close_time - self._keepalive_timeout)

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
    def __init__(
        self,
        handler: Callable[[BaseRequest], Awaitable[web.StreamResponse]],
        *args: Any,
        limits: ServerLimits,
        metrics: _Metrics,
        **kwargs: Any,
    ) -> None:
        super().__init__(self._admit, *args, **kwargs)
        self._routes = handler
        self._limits = limits
        self._metrics = metrics
        # Insertion-ordered (oldest first): connections under the caps, by client, and those over one.
        self._admitted: dict[_GuardedHandler, str] = {}
        self._per_client: dict[str, dict[_GuardedHandler, None]] = {}
        self._overflow: dict[_GuardedHandler, str] = {}
        self._open = Tally[str]()  # every open connection (admitted or over a cap), by client
        metrics.open.labels("waiting").set_function(lambda: sum(h.waiting() for h in self._admitted))
        metrics.open.labels("busy").set_function(lambda: sum(not h.waiting() for h in self._admitted))
        metrics.open.labels("overflow").set_function(lambda: len(self._overflow))

    def __call__(self) -> RequestHandler:
        handler = _GuardedHandler(self, loop=self._loop, **self._kwargs)
        handler._metrics = self._metrics
        return handler

    def connection_made(self, handler: RequestHandler, transport: asyncio.Transport) -> None:
        super().connection_made(handler, transport)
        assert isinstance(handler, _GuardedHandler)
        peer = transport.get_extra_info("peername")
        client = str(peer[0]) if isinstance(peer, tuple) and peer else "unknown"
        mine = self._per_client.get(client, {})
        if len(mine) >= self._limits.max_connections_per_client and not self._evict(mine, fresh=False):
            handler.over_cap = "per-client"
        elif len(self._admitted) >= self._limits.max_connections and not self._evict(self._admitted):
            handler.over_cap = "total"
        if handler.over_cap is None:
            self._admitted[handler] = client
            self._per_client.setdefault(client, {})[handler] = None
        else:
            self._metrics.refused.labels(handler.over_cap).inc()
            if len(self._overflow) >= self._limits.overflow_connections and not self._evict(self._overflow):
                self._metrics.refused.labels("overflow").inc()
                transport.abort()
                return
            self._overflow[handler] = client
        self._open[client] += 1

    def _evict(
        self, pool: dict[_GuardedHandler, str] | dict[_GuardedHandler, None], *, fresh: bool = True
    ) -> bool:
        """Close the oldest connection of ``pool`` that waits for a request head, to make room: one
        that has waited ``EVICT_AFTER_S`` (a slow head, an idle keep-alive connection), or a fresh one
        of a client holding several connections, never a lone fresh one: a flood of new connections
        never displaces a probe whose head is on its way. Within one client's own cap
        (``fresh=False``) only the long-waiting give way: a burst is answered 429, never cut. False
        when none qualifies. The pool is in connection order: under a flood the first one qualifies."""
        victim = next(
            (
                handler
                for handler in pool
                if handler.waiting()
                and (handler.waited_s() >= EVICT_AFTER_S or (fresh and self._open[self._client(handler)] > 1))
            ),
            None,
        )
        if victim is None:
            return False
        self._forget(victim)
        self._metrics.evicted.inc()
        victim.force_close()
        return True

    def _client(self, handler: _GuardedHandler) -> str:
        return self._admitted.get(handler) or self._overflow.get(handler) or ""

    def _forget(self, handler: _GuardedHandler) -> None:
        client = self._admitted.pop(handler, None)
        if client is not None:
            mine = self._per_client[client]
            del mine[handler]
            if not mine:
                del self._per_client[client]
        else:
            client = self._overflow.pop(handler, None)
        if client is not None:
            self._open[client] -= 1
            if self._open[client] <= 0:
                del self._open[client]

    def connection_lost(self, handler: RequestHandler, exc: BaseException | None = None) -> None:
        if isinstance(handler, _GuardedHandler):
            self._forget(handler)
        super().connection_lost(handler, exc)

    async def _admit(self, request: BaseRequest) -> web.StreamResponse:
        """The routes, for a connection under the caps; over a cap only what must always answer."""
        handler = request.protocol
        over = handler.over_cap if isinstance(handler, _GuardedHandler) else None
        if over is None:
            return await self._routes(request)
        if request.method in ("GET", "HEAD") and request.path in ALWAYS_SERVED:
            response = await self._routes(request)
        else:
            status, description = _OVER_CAP[over]
            response = web.Response(
                status=status,
                text=json.dumps({"description": description}),
                content_type="application/json",
                headers={"Retry-After": str(RETRY_AFTER_S)},
            )
        response.force_close()  # the client's next request takes a new connection, under the cap
        return response


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
