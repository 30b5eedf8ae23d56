"""One leadership term: fresh caches, watch loops, one reconcile loop per family, snapshot timer.

Each term starts from nothing in memory: the persisted published state is loaded, every watched
type is listed, and only once all lists of a family are in (optional CRDs may be absent) is that
family's first diff made, so a type that has not been listed yet can never look like "everything
was deleted". Families do not wait for each other: a cluster whose Kabanero CRD is missing still
mirrors its Tekton installation.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Awaitable, Callable, Sequence

from pymongo.errors import PyMongoError

from services.kabanero_watcher.emitting import Emitter
from services.kabanero_watcher.family import Family
from services.kabanero_watcher.kube import CustomObjectsApi
from services.kabanero_watcher.refusals import StorageRefused
from services.kabanero_watcher.resources import ResourceSpec
from services.kabanero_watcher.settings import Settings
from services.kabanero_watcher.state import PublishedState
from services.kabanero_watcher.watching import ResourceWatcher, WatchMetrics
from shared.amqp import PublishError

log = logging.getLogger(__name__)

Resync = tuple[str | None, asyncio.Future[dict[str, int]]]


class Session:
    def __init__(
        self,
        *,
        settings: Settings,
        api: CustomObjectsApi,
        emitter: Emitter,
        families: Sequence[Family],
        metrics: WatchMetrics | None = None,
    ) -> None:
        self.settings = settings
        self.emitter = emitter
        self.state: PublishedState = emitter.state
        self.loops = [FamilyLoop(self, family) for family in families]
        self.watchers = [
            ResourceWatcher(
                api=api,
                resource=resource,
                namespace=scope,
                cache=loop.family.cache,
                settings=settings,
                on_change=loop.mark,
                on_relist=self.request_snapshot,
                metrics=metrics,
            )
            for loop in self.loops
            for resource in loop.family.cache.resources
            for scope in self._scopes(resource)
        ]
        for loop in self.loops:
            loop.watchers = [w for w in self.watchers if w.cache is loop.family.cache]
        # The last MongoDB error that left namespaces pending (None once a reconcile succeeded).
        self.storage_error: str | None = None
        # Namespaces whose published state MongoDB refuses for good -> why; each is set aside
        # (not retried) until it changes, so the others proceed (/readyz names them).
        self.refused: dict[str, str] = {}
        # Set while every reconcile loop waits with nothing to do (benchmarks and tests use it).
        self.idle = asyncio.Event()

    def _scopes(self, resource: ResourceSpec) -> list[str | None]:
        if resource.cluster_scoped:
            return [None]
        if resource.namespaces is not None:
            return list(resource.namespaces)
        return list(self.settings.watch_namespaces) or [None]

    def in_scope(self, namespace: str) -> bool:
        return not self.settings.watch_namespaces or namespace in self.settings.watch_namespaces

    @property
    def synced(self) -> bool:
        return all(loop.synced for loop in self.loops)

    @property
    def last_reconcile_ms(self) -> float | None:
        times = [loop.last_reconcile_ms for loop in self.loops if loop.last_reconcile_ms is not None]
        return max(times) if times else None

    def pending_families(self) -> list[str]:
        """The families whose initial sync is pending, each with what its unlisted kinds answered
        (``kabanero (kabaneros.kabanero.io: 404 Not Found)``: the CRD is missing)."""
        out = []
        for loop in self.loops:
            if loop.synced:
                continue
            errors = [
                f"{w.name}: {w.last_error}" for w in loop.watchers if not w.synced.is_set() and w.last_error
            ]
            out.append(f"{loop.family.name} ({'; '.join(errors)})" if errors else loop.family.name)
        return out

    def update_idle(self) -> None:
        if all(loop.idle for loop in self.loops):
            self.idle.set()
        else:
            self.idle.clear()

    def request_snapshot(self) -> None:
        for loop in self.loops:
            loop.request_snapshot()

    def refuse(self, family: str, error: StorageRefused) -> None:
        for namespace in error.namespaces:
            if self.refused.get(namespace) != error.reason:
                log.error(
                    "MongoDB refuses the published state of namespace %r; set aside until it changes: %s",
                    namespace,
                    error.reason,
                    extra={"family": family, "namespace": namespace, "reason": error.reason},
                )
            self.refused[namespace] = error.reason

    def accepted(self, namespace: str) -> None:
        if self.refused.pop(namespace, None) is not None:
            log.info("the published state of namespace %r is stored again", namespace)

    async def resync(self, namespace: str | None = None) -> dict[str, dict[str, int]]:
        """Fresh snapshots now (of one namespace, or all) from every family, taken by the reconcile
        loops after their initial sync; returns family -> namespace -> snapshot revision."""
        answers = await asyncio.gather(*(loop.resync(namespace) for loop in self.loops))
        return {loop.family.name: answer for loop, answer in zip(self.loops, answers, strict=True)}

    # --- health ----------------------------------------------------------------------------------

    def oldest_activity_age(self) -> float:
        now = time.monotonic()
        return max((now - w.last_alive for w in self.watchers), default=0.0)

    # --- loops -----------------------------------------------------------------------------------

    async def run(self) -> None:
        try:
            await self._load_state()
            async with asyncio.TaskGroup() as tg:
                for watcher in self.watchers:
                    tg.create_task(watcher.run(), name=f"watch:{watcher.name}")
                for loop in self.loops:
                    tg.create_task(loop.run(), name=f"reconcile:{loop.family.name}")
                tg.create_task(self._snapshot_timer(), name="snapshot-timer")
        finally:
            for loop in self.loops:
                loop.cancel_resyncs()  # the term ended: the caller's next leader answers a new request

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

    async def bounded(self, jobs: list[Callable[[], Awaitable[None]]]) -> None:
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


class FamilyLoop:
    """The reconcile loop of one family: dirty namespaces, then due snapshots, then resyncs."""

    def __init__(self, session: Session, family: Family) -> None:
        self.session = session
        self.family = family
        self.watchers: list[ResourceWatcher] = []
        self._dirty: set[str] = set()
        self._wake = asyncio.Event()
        self._snapshot_due = False
        self._snapshotted: set[str] = set()
        """Namespaces whose due snapshot went with their changes, in this pass or in one that failed
        since the snapshot fell due: the snapshot round skips them."""
        self.synced = False
        self.idle = False
        self.last_reconcile_ms: float | None = None
        # On-demand resyncs (``control.resync``): namespace filter (None = all) -> waiting caller.
        self._resyncs: list[Resync] = []

    def _busy(self) -> None:
        self.idle = False
        self.session.idle.clear()
        self._wake.set()

    def mark(self, namespaces: set[str]) -> None:
        marked = {ns for ns in namespaces if self.session.in_scope(ns)}
        if marked:
            self._dirty |= marked
            self._busy()

    def request_snapshot(self) -> None:
        self._snapshot_due = True
        self._busy()

    async def resync(self, namespace: str | None) -> dict[str, int]:
        future: asyncio.Future[dict[str, int]] = asyncio.get_running_loop().create_future()
        self._resyncs.append((namespace, future))
        self._busy()
        return await future

    def cancel_resyncs(self) -> None:
        for _, future in self._resyncs:
            future.cancel()

    async def run(self) -> None:
        await asyncio.gather(*(w.synced.wait() for w in self.watchers))
        # First diff: everything the cluster has, plus everything we once published (deletes).
        self.mark(self.family.cache.namespaces() | self.family.published_namespaces())
        self._snapshot_due = True
        settings = self.session.settings
        while True:
            self._wake.clear()
            if not await self._pass():
                await asyncio.sleep(settings.publish_retry_s)
                continue
            if not self._dirty and not self._snapshot_due and not self._resyncs:
                self.idle = True
                self.session.update_idle()
            await self._wake.wait()

    async def _pass(self) -> bool:
        """One pass. False after an error: RabbitMQ or MongoDB unavailable leaves the namespaces
        pending (still dirty) to be retried; it never ends the session (the watcher's error
        policy). /readyz says so."""
        try:
            self.mark(self.family.prepare())
            # A namespace's published state changes only by its reconcile: the snapshot taken with
            # it answers every request of this pass, as the snapshots after the reconciles did.
            await self.reconcile_dirty(snapshot=self._snapshot_due)
            await self._after_pass()
            if self._snapshot_due:
                await self._snapshots(skip=self._snapshotted)
                self._snapshot_due = False
            self._snapshotted.clear()
            if self._resyncs:
                await self._answer_resyncs()
        except (PublishError, PyMongoError) as exc:
            self.session.storage_error = f"{type(exc).__name__}" if isinstance(exc, PyMongoError) else None
            log.warning(
                "reconcile failed; %d namespaces left pending, retrying: %s",
                len(self._dirty),
                _describe(exc),
                extra={"error": type(exc).__name__, "family": self.family.name},
            )
            return False
        self.session.storage_error = None
        if not self.synced:
            self.synced = True
            log.info(
                "initial sync done",
                extra={"family": self.family.name, "namespaces": len(self.family.published_namespaces())},
            )
        return True

    async def reconcile_dirty(self, *, snapshot: bool = False) -> None:
        """Diff every dirty namespace; on failure the namespace stays dirty. With ``snapshot`` (one
        is due), a namespace that changed publishes its snapshot with its diff, in the same batch
        (one pending and one done write, not two of each: the initial sync's cost); they are kept
        in ``_snapshotted`` (reconciled again while the snapshot is due, a changed one publishes
        its snapshot again).

        Namespaces own disjoint keys, so up to ``publish_concurrency`` of them are reconciled at once;
        a namespace is never in two batches at a time (marks made meanwhile wait for the next batch).
        """
        started = time.monotonic()
        while self._dirty:
            batch = sorted(self._dirty)
            self._dirty.clear()
            jobs: list[Callable[[], Awaitable[None]]] = [
                functools.partial(self._reconcile_one, ns, snapshot) for ns in batch
            ]
            await self.session.bounded(jobs)
        self.last_reconcile_ms = (time.monotonic() - started) * 1000

    async def _reconcile_one(self, namespace: str, snapshot: bool) -> None:
        """A namespace MongoDB refuses for good is set aside, not left dirty: it is tried again
        when it changes (a retry of the same batch fails the same way)."""
        revision = self.family.snapshot_revision(namespace)
        try:
            if await self.family.reconcile(namespace, snapshot=snapshot):
                await self.family.snapshot(namespace)
        except StorageRefused as exc:
            self.session.refuse(self.family.name, exc)
            return
        except BaseException:
            self._dirty.add(namespace)
            raise
        if snapshot and self.family.snapshot_revision(namespace) != revision:
            self._snapshotted.add(namespace)
        self.session.accepted(namespace)

    async def _after_pass(self) -> None:
        """The family's cluster-wide publishing (Tekton's installation), set aside as a namespace."""
        try:
            await self.family.after_pass()
        except StorageRefused as exc:
            self.session.refuse(self.family.name, exc)

    async def _snapshot_one(self, namespace: str) -> None:
        try:
            await self.family.snapshot(namespace)
        except StorageRefused as exc:
            self.session.refuse(self.family.name, exc)

    def _live(self) -> list[str]:
        return [ns for ns in self.family.snapshot_namespaces() if self.session.in_scope(ns)]

    async def _snapshots(self, *, skip: set[str]) -> None:
        live = [ns for ns in self._live() if ns not in skip]
        await self.session.bounded([functools.partial(self._snapshot_one, ns) for ns in live])

    async def _answer_resyncs(self) -> None:
        requests, self._resyncs = self._resyncs, []
        live = set(self._live())
        wanted = set() if any(ns is None for ns, _ in requests) else {ns for ns, _ in requests}
        namespaces = sorted(live if not wanted else live & wanted)
        try:
            await self.session.bounded([functools.partial(self._snapshot_one, ns) for ns in namespaces])
        except BaseException:
            self._resyncs = requests + self._resyncs  # answered after the retry
            raise
        for ns, future in requests:
            if not future.done():
                future.set_result(
                    {n: self.family.snapshot_revision(n) for n in namespaces if ns is None or n == ns}
                )


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {str(exc)[:200]}"
