"""Liveness, readiness and Prometheus metrics over HTTP, shared by every service.

``/healthz`` answers whether the process is doing its job (a vital loop is alive); ``/readyz``
whether it can serve now (dependencies reachable). Checks are small callables registered by the
components that know their own state. ``/version`` names the service and the package version.

Metrics: every series of ours is named ``kotc_*``; each registry also carries the client library's
standard process, platform and GC collectors under their standard names (``process_*``,
``python_*``), which stock dashboards and alerts expect, and ``kotc_build_info{service,version}``.
"""

from __future__ import annotations

import asyncio
import importlib.metadata
import inspect
import logging
from collections.abc import Awaitable, Callable
from typing import Self

from aiohttp import web
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Gauge,
    GCCollector,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)

log = logging.getLogger(__name__)


def package_version() -> str:
    try:
        return importlib.metadata.version("kabanero-otc")
    except importlib.metadata.PackageNotFoundError:
        return "0+unknown"


VERSION = package_version()

CheckResult = bool | tuple[bool, str]
Check = Callable[[], CheckResult | Awaitable[CheckResult]]


class Health:
    """Registry of named liveness/readiness checks and the service's metrics registry."""

    def __init__(self, registry: CollectorRegistry | None = None, *, check_timeout_s: float = 1.0) -> None:
        if registry is None:
            registry = CollectorRegistry()
            ProcessCollector(registry=registry)
            PlatformCollector(registry=registry)
            GCCollector(registry=registry)
        self.registry = registry
        self.service = "kabanero-otc"
        self.check_timeout_s = check_timeout_s
        """Bound of each check: a hung dependency makes its check fail, never the endpoint hang."""
        self._live: dict[str, Check] = {}
        self._ready: dict[str, Check] = {}

    def identify(self, service: str) -> None:
        """Name the service: ``kotc_build_info`` and ``/version`` (called once, by :class:`Infra`)."""
        self.service = service
        Gauge(
            "kotc_build_info",
            "Service and version of this process (always 1)",
            ["service", "version"],
            registry=self.registry,
        ).labels(service, VERSION).set(1)

    def add_liveness(self, name: str, check: Check) -> None:
        self._live[name] = check

    def add_readiness(self, name: str, check: Check) -> None:
        self._ready[name] = check

    async def _run(self, checks: dict[str, Check]) -> tuple[bool, dict[str, str]]:
        """All checks at once, each bounded: the endpoint answers within ``check_timeout_s``."""
        results = await asyncio.gather(*(self._one(check) for check in checks.values()))
        details = {}
        for name, (ok, detail) in zip(checks, results, strict=True):
            details[name] = ("ok" if ok else "failing") + (f": {detail}" if detail else "")
        return all(ok for ok, _ in results), details

    async def _one(self, check: Check) -> tuple[bool, str]:
        try:
            result = check()
            if inspect.isawaitable(result):
                result = await asyncio.wait_for(result, self.check_timeout_s)
        except TimeoutError:
            return False, f"no answer within {self.check_timeout_s:g}s"
        except Exception as exc:
            return False, f"{type(exc).__name__}: {exc}"
        return result if isinstance(result, tuple) else (result, "")

    async def liveness(self) -> tuple[bool, dict[str, str]]:
        return await self._run(self._live)

    async def readiness(self) -> tuple[bool, dict[str, str]]:
        return await self._run(self._ready)

    def add_routes(self, app: web.Application) -> None:
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/version", self._version)

    async def _version(self, request: web.Request) -> web.Response:
        return web.json_response({"service": self.service, "version": VERSION})

    async def _healthz(self, request: web.Request) -> web.Response:
        ok, details = await self.liveness()
        return web.json_response(
            {"status": "ok" if ok else "failing", "checks": details}, status=200 if ok else 503
        )

    async def _readyz(self, request: web.Request) -> web.Response:
        ok, details = await self.readiness()
        return web.json_response(
            {"status": "ok" if ok else "failing", "checks": details}, status=200 if ok else 503
        )

    async def _metrics(self, request: web.Request) -> web.Response:
        body = generate_latest(self.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


class HttpServer:
    """An aiohttp application served on host:port, as a part of the runtime: listening once
    entered (``port`` is the one bound: tests bind 0), stopped gracefully on exit."""

    def __init__(
        self,
        app: web.Application,
        host: str,
        port: int,
        *,
        name: str,
        shutdown_timeout: float = 5.0,
        runner: web.AppRunner | None = None,
    ) -> None:
        """``runner``: one of the caller's own (e.g. with connection limits) instead of the plain one."""
        self.app = app
        self.port = 0
        self._host = host
        self._wanted = port
        self._name = name
        # How long in-flight requests may finish; the runtime's shutdown deadline bounds it anyway.
        self._runner = runner or web.AppRunner(app, access_log=None, shutdown_timeout=shutdown_timeout)

    async def __aenter__(self) -> Self:
        await self._runner.setup()  # runs the app's cleanup_ctx start halves
        try:
            site = web.TCPSite(self._runner, self._host, self._wanted)
            await site.start()
        except BaseException:
            await self._runner.cleanup()
            raise
        self.port = int(self._runner.addresses[0][1])
        for addr in self._runner.addresses:
            log.info("listening on http://%s:%s", addr[0], addr[1], extra={"service": self._name})
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._runner.cleanup()


def health_app(health: Health) -> web.Application:
    """A service's own small HTTP server for /healthz, /readyz and /metrics."""
    app = web.Application()
    health.add_routes(app)
    return app
