"""Process lifecycle: named guarded background tasks, ordered start/stop, graceful SIGTERM.

A service's ``build()`` returns a :class:`Runtime`; tests start and stop it in-process, ``main()``
hands it to :func:`run_main`. A vital task that ends or raises makes the process exit non-zero:
a half-alive service that looks healthy is worse than a restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import signal
import sys
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, NoReturn, Self

from shared.logs import configure_logging
from shared.settings import CommonSettings, SettingsError

log = logging.getLogger(__name__)

Hook = Callable[[], Awaitable[None]]


class Supervisor:
    """Owns named background tasks; the first vital one to die sets :attr:`failed`."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._tasks: list[asyncio.Task[Any]] = []
        self._stopping = False
        self.failed = asyncio.Event()
        self.failure: str | None = None

    def spawn(self, name: str, coro: Coroutine[Any, Any, Any], *, vital: bool = True) -> asyncio.Task[Any]:
        task = asyncio.create_task(coro, name=f"{self.name}:{name}")
        task.add_done_callback(lambda t: self._on_done(t, vital))
        self._tasks.append(task)
        return task

    def _on_done(self, task: asyncio.Task[Any], vital: bool) -> None:
        if self._stopping or task.cancelled():
            return
        exc = task.exception()
        if exc is not None:
            log.error("task %s died", task.get_name(), exc_info=exc, extra={"task": task.get_name()})
        elif vital:
            log.error("vital task %s ended unexpectedly", task.get_name(), extra={"task": task.get_name()})
        if vital and not self.failed.is_set():
            self.failure = f"{task.get_name()}: {exc!r}" if exc else f"{task.get_name()} ended"
            self.failed.set()

    @property
    def tasks(self) -> list[asyncio.Task[Any]]:
        return list(self._tasks)

    async def stop(self, grace_s: float) -> None:
        """Cancel tasks newest first (consumers drain before what they depend on) and wait."""
        self._stopping = True
        for task in reversed(self._tasks):
            if task.done():
                continue
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await asyncio.wait_for(asyncio.shield(task), grace_s)
            if not task.done():
                log.warning("task %s did not stop within %.1fs", task.get_name(), grace_s)


class Runtime:
    """Start hooks run in order, cleanup hooks in reverse; tasks stop before cleanups run."""

    def __init__(self, name: str, *, shutdown_timeout: float = 20.0) -> None:
        self.name = name
        self.supervisor = Supervisor(name)
        self.shutdown_timeout = shutdown_timeout
        self._startup: list[Hook] = []
        self._cleanup: list[Hook] = []
        self._started = False

    def on_startup(self, hook: Hook) -> None:
        self._startup.append(hook)

    def on_cleanup(self, hook: Hook) -> None:
        self._cleanup.append(hook)

    async def start(self) -> None:
        try:
            for hook in self._startup:
                await hook()
        except BaseException:
            await self.stop()
            raise
        self._started = True

    async def stop(self) -> None:
        await self.supervisor.stop(self.shutdown_timeout)
        while self._cleanup:
            hook = self._cleanup.pop()
            try:
                await asyncio.wait_for(hook(), self.shutdown_timeout)
            except Exception:
                log.exception("cleanup step failed", extra={"service": self.name})

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()


async def serve(runtime: Runtime) -> int:
    """Run until SIGTERM/SIGINT (exit 0) or a vital task dies (exit 1)."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await runtime.start()
    waiters = [asyncio.create_task(stop.wait()), asyncio.create_task(runtime.supervisor.failed.wait())]
    try:
        await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for w in waiters:
            w.cancel()
        log.info("stopping", extra={"service": runtime.name, "failure": runtime.supervisor.failure})
        await runtime.stop()
    return 1 if runtime.supervisor.failed.is_set() else 0


def run_main(build: Callable[[], Awaitable[Runtime]]) -> NoReturn:
    """Entry point helper for ``main()``: build the runtime inside the loop, serve, exit."""

    async def _main() -> int:
        runtime = await build()
        return await serve(runtime)

    try:
        code = asyncio.run(_main())
    except Exception as exc:
        log.critical("start-up failed: %s", exc, exc_info=exc)
        code = 2
    sys.exit(code)


def run_service[S: CommonSettings](
    load: Callable[[], S], build: Callable[[S], Runtime | Awaitable[Runtime]]
) -> NoReturn:
    """``main()`` of every service: settings from the environment (exit 2 naming what is wrong),
    logging as configured, then :func:`run_main`."""
    try:
        settings = load()
    except SettingsError as exc:
        configure_logging()
        log.critical("%s", exc)
        sys.exit(2)
    configure_logging(settings.log_format, settings.log_level)

    async def _build() -> Runtime:
        built = build(settings)
        return await built if inspect.isawaitable(built) else built

    run_main(_build)
