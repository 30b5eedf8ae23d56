"""Group commit: the requests that arrive while one round trip is in flight go in the next one.

Handlers run concurrently (one per lane, ``HANDLER_CONCURRENCY`` at once), each asking for its own
ledger lease, its own commit. A :class:`GroupCommit` turns those per-change requests into one
command per batch: the first request is flushed at once (no added latency when the writer is
idle), and whatever arrives while that flush is in flight waits for the next, so under load a batch
holds about as many requests as there are handlers between two round trips.

A batch never holds two requests of one ``key_of`` (a ledger ``_id``): the later one waits for the
next batch, so one conditional update per document and batch, and the requests of one key are
flushed in the order they came.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass, field

log = logging.getLogger(__name__)

type Flush[R, T] = Callable[[list[R]], Awaitable[list[T | BaseException]]]
"""One round trip (or a few) for a batch: one result or error per request, in order."""


@dataclass(eq=False)
class _Waiting[R, T]:
    request: R
    future: asyncio.Future[T] = field(default_factory=lambda: asyncio.get_running_loop().create_future())


class GroupCommit[R, T]:
    def __init__(
        self,
        flush: Flush[R, T],
        *,
        key_of: Callable[[R], Hashable],
        max_batch: int,
        name: str,
        abandoned: Callable[[T], Awaitable[None]] | None = None,
    ) -> None:
        """``abandoned``: called with a result whose requester was cancelled meanwhile (a lease
        nobody will use: released at once rather than left to expire)."""
        self._flush = flush
        self._key_of = key_of
        self._max = max_batch
        self._name = name
        self._abandoned = abandoned
        self._queue: list[_Waiting[R, T]] = []
        self._task: asyncio.Task[None] | None = None
        self.batches = 0
        """Flushes so far (tests and the bench look at it)."""
        self.largest = 0

    async def submit(self, request: R) -> T:
        waiting: _Waiting[R, T] = _Waiting(request)
        self._queue.append(waiting)
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run(), name=f"group-commit:{self._name}")
        return await waiting.future

    def _next_batch(self) -> list[_Waiting[R, T]]:
        batch: list[_Waiting[R, T]] = []
        keys: set[Hashable] = set()
        rest: list[_Waiting[R, T]] = []
        for waiting in self._queue:
            if waiting.future.done():  # cancelled before its turn: nothing was done for it
                continue
            key = self._key_of(waiting.request)
            if key in keys or len(batch) >= self._max:
                rest.append(waiting)
                continue
            keys.add(key)
            batch.append(waiting)
        self._queue = rest
        return batch

    async def _run(self) -> None:
        await asyncio.sleep(0)  # the requests made in the same turn of the loop join the first batch
        while batch := self._next_batch():
            self.batches += 1
            self.largest = max(self.largest, len(batch))
            try:
                results = await self._flush([w.request for w in batch])
            except asyncio.CancelledError:  # the loop is closing: nobody gets an answer
                for waiting in [*batch, *self._queue]:
                    waiting.future.cancel()
                self._queue = []
                raise
            except Exception as exc:  # MongoDB down, say: every request of the batch fails with it
                for waiting in batch:
                    if not waiting.future.done():
                        waiting.future.set_exception(exc)
                continue
            for waiting, result in zip(batch, results, strict=True):
                await self._settle(waiting, result)

    async def _settle(self, waiting: _Waiting[R, T], result: T | BaseException) -> None:
        if not waiting.future.done():
            if isinstance(result, BaseException):
                waiting.future.set_exception(result)
            else:
                waiting.future.set_result(result)
            return
        if self._abandoned is not None and not isinstance(result, BaseException):
            try:
                await self._abandoned(result)
            except Exception as exc:
                log.warning(
                    "could not undo an abandoned request", extra={"batch": self._name, "error": str(exc)}
                )
