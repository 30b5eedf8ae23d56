"""Process lifecycle: resources as async context managers on one exit stack, guarded vital tasks,
one shutdown deadline, graceful SIGTERM.

A service's ``build()`` returns a :class:`Runtime` and adds its parts in start order: each part is
an async context manager factory (like aiohttp's ``cleanup_ctx``), entered on one
:class:`~contextlib.AsyncExitStack`. So only a part that started is ever closed, and parts close in
reverse order: consumers stop before the connection they use, the connection before MongoDB.

Shutdown has one overall deadline (``shutdown_timeout``): every part's exit runs with what is left
of it, less a small reserve for each part still to close after it (so a consumer that overruns
cannot leave the MongoDB client no time at all); a part that overruns is abandoned with a warning
and the next one still gets its turn.

Background tasks are parts too (:meth:`Runtime.add_task`): named, guarded (kopf's
``aiotasks.guard`` is the model: a crash is logged with its traceback, cancellation is quiet), and a
vital one that ends or raises makes the process exit non-zero: a half-alive service that looks
healthy is worse than a restart. Tests start and stop a runtime in-process; ``main()`` hands the
builder to :func:`run_service`.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import signal
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Mapping
from contextlib import AbstractAsyncContextManager, AsyncExitStack
from types import TracebackType
from typing import Any, NoReturn, Self

from shared.logs import configure_logging
from shared.settings import CommonSettings, SettingsError

log = logging.getLogger(__name__)

Part = Callable[[], AbstractAsyncContextManager[object]]
"""Opens a resource when entered, closes it when exited (an ``@asynccontextmanager`` function)."""


class Supervisor:
    """Owns named background tasks; the first vital one to end or fail sets :attr:`failed`."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._tasks: list[asyncio.Task[Any]] = []
        self.stopping = False
        self.failed = asyncio.Event()
        self.failure: str | None = None

    def spawn(self, name: str, coro: Coroutine[Any, Any, Any], *, vital: bool = True) -> asyncio.Task[Any]:
        task = asyncio.create_task(coro, name=f"{self.name}:{name}")
        task.add_done_callback(lambda t: self._on_done(t, vital))
        self._tasks.append(task)
        return task

    def _on_done(self, task: asyncio.Task[Any], vital: bool) -> None:
        if task.cancelled():
            return
        exc = task.exception()  # retrieved even while stopping: no "never retrieved" noise
        if self.stopping:
            return
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

    def find(self, name: str) -> asyncio.Task[Any] | None:
        """The task spawned under ``name`` (without the supervisor's prefix), if any."""
        full = f"{self.name}:{name}"
        return next((t for t in self._tasks if t.get_name() == full), None)

    @contextlib.asynccontextmanager
    async def running(
        self, name: str, coro: Coroutine[Any, Any, Any], *, vital: bool = True
    ) -> AsyncIterator[asyncio.Task[Any]]:
        """The task as a part: spawned on entry; on exit cancelled and awaited (the runtime bounds
        the wait by its shutdown deadline)."""
        async with self.running_all({name: coro}, vital=vital) as (task,):
            yield task

    @contextlib.asynccontextmanager
    async def running_all(
        self, coros: Mapping[str, Coroutine[Any, Any, Any]], *, vital: bool = True
    ) -> AsyncIterator[list[asyncio.Task[Any]]]:
        """Tasks as one part: spawned on entry; on exit all cancelled at once and awaited together
        (the runtime bounds the wait by its shutdown deadline), so tasks that each drain their
        work on cancel (consumers) drain in parallel, not one after the other."""
        tasks = [self.spawn(name, coro, vital=vital) for name, coro in coros.items()]
        try:
            yield tasks
        finally:
            self.stopping = True
            for task in tasks:
                task.cancel()
            # ``wait`` neither raises a task's error (its done callback logged it) nor swallows
            # our own cancellation (the shutdown deadline's).
            await asyncio.wait(tasks)


class Runtime:
    """Parts entered in order at :meth:`start`, exited in reverse at :meth:`stop`, within one deadline."""

    def __init__(self, name: str, *, shutdown_timeout: float = 25.0) -> None:
        self.name = name
        self.supervisor = Supervisor(name)
        self.shutdown_timeout = shutdown_timeout
        self._parts: list[tuple[str, Part]] = []
        self._stack: AsyncExitStack | None = None
        self._deadline: float | None = None
        self._reserve = 0.0
        self._entered = 0

    def add(self, name: str, part: Part) -> None:
        """Add a part; ``name`` is what the logs call it when it fails to close in time."""
        self._parts.append((name, part))

    def add_task(
        self, name: str, coro: Callable[[], Coroutine[Any, Any, Any]], *, vital: bool = True
    ) -> None:
        """A background task started at this point of the start order and cancelled at its turn."""
        self.add_tasks({name: coro}, vital=vital)

    def add_tasks(
        self, coros: Mapping[str, Callable[[], Coroutine[Any, Any, Any]]], *, vital: bool = True
    ) -> None:
        """Background tasks started together at this point and cancelled together at their turn:
        their stops overlap instead of adding up (otc-writer's two consumers, each draining up
        to its drain timeout, took the sum of both to stop: 20 s)."""
        names = ", ".join(coros)
        self.add(
            f"task {names}" if len(coros) == 1 else f"tasks {names}",
            lambda: self.supervisor.running_all({n: c() for n, c in coros.items()}, vital=vital),
        )

    async def start(self) -> None:
        stack = AsyncExitStack()
        self._deadline = None
        self._entered = 0
        try:
            for index, (name, part) in enumerate(self._parts):
                await stack.enter_async_context(_Bounded(self, index, name, part()))
                self._entered = index + 1
        except BaseException:
            await self._close(stack)
            raise
        self._stack = stack

    async def stop(self) -> None:
        stack, self._stack = self._stack, None
        if stack is not None:
            await self._close(stack)

    async def _close(self, stack: AsyncExitStack) -> None:
        self.supervisor.stopping = True
        self._deadline = asyncio.get_running_loop().time() + self.shutdown_timeout
        # A quarter of the deadline is shared out as reserves (at most 1 s a part).
        self._reserve = min(1.0, 0.25 * self.shutdown_timeout / max(1, self._entered + 1))
        await stack.aclose()

    def remaining(self, index: int = 0) -> float | None:
        """Seconds the part started ``index``-th has to close: what is left of the deadline less a
        reserve for each of the ``index`` parts that close after it (None while not stopping)."""
        if self._deadline is None:
            return None
        until = self._deadline - index * self._reserve
        return max(0.0, until - asyncio.get_running_loop().time())

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()


class _Bounded:
    """A part whose exit runs within what is left of the runtime's shutdown deadline and never
    raises: a part that cannot close (cleanly, or in time) must not keep the others open."""

    def __init__(
        self, runtime: Runtime, index: int, name: str, inner: AbstractAsyncContextManager[object]
    ) -> None:
        self._runtime = runtime
        self._index = index
        self._name = name
        self._inner = inner

    async def __aenter__(self) -> object:
        return await self._inner.__aenter__()

    async def __aexit__(
        self, typ: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> bool:
        remaining = self._runtime.remaining(self._index)
        try:
            async with asyncio.timeout(remaining):
                await self._inner.__aexit__(typ, exc, tb)
        except TimeoutError:
            log.warning(
                "%s did not close within the shutdown deadline (%.1fs)",
                self._name,
                self._runtime.shutdown_timeout,
                extra={"service": self._runtime.name},
            )
        except Exception:
            log.exception("%s failed to close", self._name, extra={"service": self._runtime.name})
        return False


async def serve(runtime: Runtime) -> int:
    """Run until SIGTERM/SIGINT (exit 0) or a vital task dies (exit 1). A signal during start-up
    abandons the start (what had started is closed)."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    stopped = asyncio.create_task(stop.wait(), name=f"{runtime.name}:signal")
    failed = asyncio.create_task(runtime.supervisor.failed.wait(), name=f"{runtime.name}:failure")
    starting = asyncio.create_task(runtime.start(), name=f"{runtime.name}:start")
    try:
        await asyncio.wait([starting, stopped], return_when=asyncio.FIRST_COMPLETED)
        if not starting.done():
            log.info("signal during start-up: stopping", extra={"service": runtime.name})
            starting.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await starting
            return 0
        starting.result()  # a failed start raises here (its parts are closed already)
        await asyncio.wait([stopped, failed], return_when=asyncio.FIRST_COMPLETED)
        log.info("stopping", extra={"service": runtime.name, "failure": runtime.supervisor.failure})
        await runtime.stop()
    finally:
        stopped.cancel()
        failed.cancel()
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


@contextlib.asynccontextmanager
async def step(action: Callable[[], Awaitable[object]]) -> AsyncIterator[None]:
    """A start-up action with nothing to close (e.g. creating indexes), as a part."""
    await action()
    yield
