"""One leadership term: fresh cache, watch loops, the reconciler and the snapshot timer.

Each term starts from nothing in memory: the persisted published state is loaded, every watched
type is listed, and only once all lists are in (optional CRDs may be absent) is the first diff
made, so a type that has not been listed yet can never look like "everything was deleted".
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Awaitable, Callable

from kubernetes_asyncio import client
from pymongo.errors import PyMongoError

from services.kabanero_watcher.cache import RESOURCES, ClusterCache
from services.kabanero_watcher.emitting import Emitter
from services.kabanero_watcher.settings import Settings
from services.kabanero_watcher.state import PublishedState
from services.kabanero_watcher.watching import ResourceWatcher, WatchMetrics
from shared.amqp import PublishError

log = logging.getLogger(__name__)


class Session:
    def __init__(
        self,
        *,
        settings: Settings,
        api: client.CustomObjectsApi,
        emitter: Emitter,
        metrics: WatchMetrics | None = None,
    ) -> None:
        self.settings = settings
        self.emitter = emitter
        self.state: PublishedState = emitter.state
        self.cache = ClusterCache(
            settings.cluster_name,
            legacy_triggers=settings.legacy_triggers,
            legacy_trigger_fields=settings.legacy_trigger_fields,
        )
        scopes: list[str | None] = list(settings.watch_namespaces) or [None]
        self.watchers = [
            ResourceWatcher(
                api=api,
                resource=resource,
                namespace=scope,
                cache=self.cache,
                settings=settings,
                on_change=self._mark,
                on_relist=self.request_snapshot,
                metrics=metrics,
            )
            for resource in RESOURCES
            for scope in scopes
        ]
        self._dirty: set[str] = set()
        self._wake = asyncio.Event()
        self._snapshot_due = False
        self.synced = False
        # The last MongoDB error that left namespaces pending (None once a reconcile succeeded).
        self.storage_error: str | None = None
        # Set while the reconciler waits with nothing to do (benchmarks and tests use it).
        self.idle = asyncio.Event()
        self.last_reconcile_ms: float | None = None
        # On-demand resyncs (``control.resync``): namespace filter (None = all) -> waiting caller.
        self._resyncs: list[tuple[str | None, asyncio.Future[dict[str, int]]]] = []

    # --- signals from watchers -----------------------------------------------------------------

    def _in_scope(self, namespace: str) -> bool:
        return not self.settings.watch_namespaces or namespace in self.settings.watch_namespaces

    def _mark(self, namespaces: set[str]) -> None:
        self._dirty |= {ns for ns in namespaces if self._in_scope(ns)}
        self.idle.clear()
        self._wake.set()

    def request_snapshot(self) -> None:
        self._snapshot_due = True
        self.idle.clear()
        self._wake.set()

    async def resync(self, namespace: str | None = None) -> dict[str, int]:
        """Fresh snapshots now (of one namespace, or all), taken by the reconcile loop after the
        initial sync; returns namespace -> published snapshot revision."""
        future: asyncio.Future[dict[str, int]] = asyncio.get_running_loop().create_future()
        self._resyncs.append((namespace, future))
        self.idle.clear()
        self._wake.set()
        return await future

    async def _answer_resyncs(self) -> None:
        requests, self._resyncs = self._resyncs, []
        namespaces = self._resync_targets(requests)
        try:
            await self._bounded([functools.partial(self.emitter.snapshot, ns) for ns in namespaces])
        except BaseException:
            self._resyncs = requests + self._resyncs  # answered after the retry
            raise
        for ns, future in requests:
            if not future.done():
                future.set_result(
                    {n: self._snapshot_revision(n) for n in namespaces if ns is None or n == ns}
                )

    def _resync_targets(self, requests: list[tuple[str | None, asyncio.Future[dict[str, int]]]]) -> list[str]:
        """The live namespaces in scope that the requests name (all of them if one asks for all)."""
        live = {ns for ns in self.emitter.snapshot_namespaces() if self._in_scope(ns)}
        wanted = set() if any(ns is None for ns, _ in requests) else {ns for ns, _ in requests}
        return sorted(live if not wanted else live & wanted)

    def _snapshot_revision(self, namespace: str) -> int:
        record = self.state.get("snapshot", f"{self.settings.cluster_name}/{namespace}")
        return record.revision if record is not None else 0

    # --- health ----------------------------------------------------------------------------------

    def oldest_activity_age(self) -> float:
        now = time.monotonic()
        return max(now - w.last_alive for w in self.watchers)

    # --- loops -----------------------------------------------------------------------------------

    async def run(self) -> None:
        try:
            await self._load_state()
            async with asyncio.TaskGroup() as tg:
                for watcher in self.watchers:
                    tg.create_task(watcher.run(), name=f"watch:{watcher.name}")
                tg.create_task(self._reconcile_loop(), name="reconcile")
                tg.create_task(self._snapshot_timer(), name="snapshot-timer")
        finally:
            for _, future in self._resyncs:
                future.cancel()  # the term ended: the caller's next leader answers a new request

    async def _load_state(self) -> None:
        """The published state, read again until MongoDB answers (a term that starts during an
        outage waits for it rather than ending)."""
        while True:
            try:
                await self.state.load()
                self.storage_error = None
                return
            except PyMongoError as exc:
                self.storage_error = type(exc).__name__
                log.warning("cannot load the published state, retrying: %s", _describe(exc))
                await asyncio.sleep(self.settings.publish_retry_s)

    async def _snapshot_timer(self) -> None:
        while True:
            await asyncio.sleep(self.settings.snapshot_interval_s)
            self.request_snapshot()

    async def _reconcile_loop(self) -> None:
        await asyncio.gather(*(w.synced.wait() for w in self.watchers))
        # First diff: everything the cluster has, plus everything we once published (deletes).
        self._dirty |= {ns for ns in self.cache.namespaces() | self.state.namespaces() if self._in_scope(ns)}
        self._snapshot_due = True
        while True:
            self._wake.clear()
            if not await self._pass():
                await asyncio.sleep(self.settings.publish_retry_s)
                continue
            if not self._dirty and not self._snapshot_due and not self._resyncs:
                self.idle.set()
            await self._wake.wait()
            self.idle.clear()

    async def _pass(self) -> bool:
        """One pass: dirty namespaces, then due snapshots, then resync requests. False after an
        error: RabbitMQ or MongoDB unavailable leaves the namespaces pending (still dirty) to be
        retried; it never ends the session (the watcher's error policy). /readyz says so."""
        try:
            await self.reconcile_dirty()
            if self._snapshot_due:
                await self._snapshots()
                self._snapshot_due = False
            if self._resyncs:
                await self._answer_resyncs()
        except (PublishError, PyMongoError) as exc:
            self.storage_error = f"{type(exc).__name__}" if isinstance(exc, PyMongoError) else None
            log.warning(
                "reconcile failed; %d namespaces left pending, retrying: %s",
                len(self._dirty),
                _describe(exc),
                extra={"error": type(exc).__name__},
            )
            return False
        self.storage_error = None
        if not self.synced:
            self.synced = True
            log.info("initial sync done", extra={"namespaces": len(self.state.namespaces())})
        return True

    async def reconcile_dirty(self) -> int:
        """Diff every dirty namespace; on failure the namespace stays dirty. Returns events published.

        Namespaces own disjoint keys, so up to ``publish_concurrency`` of them are reconciled at once;
        a namespace is never in two batches at a time (marks made meanwhile wait for the next batch).
        """
        before = self.emitter.published
        started = time.monotonic()
        while self._dirty:
            batch = sorted(self._dirty)
            self._dirty.clear()
            await self._bounded([functools.partial(self._reconcile_one, ns) for ns in batch])
        self.last_reconcile_ms = (time.monotonic() - started) * 1000
        return self.emitter.published - before

    async def _reconcile_one(self, namespace: str) -> None:
        try:
            gone = await self.emitter.reconcile(self.cache.desired(namespace))
            if gone:
                await self.emitter.snapshot(namespace)
        except BaseException:
            self._dirty.add(namespace)
            raise

    async def _snapshots(self) -> None:
        namespaces = [ns for ns in self.emitter.snapshot_namespaces() if self._in_scope(ns)]
        await self._bounded([functools.partial(self.emitter.snapshot, ns) for ns in namespaces])

    async def _bounded(self, jobs: list[Callable[[], Awaitable[None]]]) -> None:
        """Run every job, ``publish_concurrency`` at a time; one failing does not cancel the others
        (a cancelled publish could be confirmed yet unrecorded). Raises the first error after all ran,
        preferring anything over a retryable PublishError."""
        limit = asyncio.Semaphore(self.settings.publish_concurrency)

        async def run(job: Callable[[], Awaitable[None]]) -> None:
            async with limit:
                await job()

        results = await asyncio.gather(*(run(job) for job in jobs), return_exceptions=True)
        errors = [r for r in results if isinstance(r, BaseException)]
        if errors:
            raise next((e for e in errors if not isinstance(e, PublishError)), errors[0])


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {str(exc)[:200]}"
