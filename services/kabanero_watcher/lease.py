"""One active replica: a coordination.k8s.io/v1 Lease, renewed with optimistic concurrency.

Like client-go's leader election: a standby judges expiry by how long it has observed the record
unchanged (its own monotonic clock), never by comparing wall clocks across machines. The leader
considers itself leading only until ``last successful renew + duration`` (minus a margin) and
checks that before every publish, so a partitioned leader stops before a standby can take over.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import aiohttp
from pymongo.errors import PyMongoError

from services.kabanero_watcher.identity import IdentityConflict
from services.kabanero_watcher.kube import ApiException, CustomObjectsApi
from services.kabanero_watcher.settings import Settings
from shared.loop_stalls import LoopStalls

log = logging.getLogger(__name__)

GROUP, VERSION, PLURAL = "coordination.k8s.io", "v1", "leases"


def _micro_time(when: datetime) -> str:
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class LeaseElector:
    def __init__(
        self,
        api: CustomObjectsApi,
        settings: Settings,
        *,
        clock: Callable[[], float] = time.monotonic,
        precheck: Callable[[], Awaitable[None]] | None = None,
        stalls: LoopStalls | None = None,
    ) -> None:
        """``precheck`` runs before every round; an exception from it fails the round (the cluster
        identity check raises :class:`~services.kabanero_watcher.identity.IdentityConflict`).
        ``stalls`` tells a round that could not run (the event loop was held) from one that failed."""
        self.api = api
        self.identity = settings.holder_identity
        self.name = settings.lease_name
        self.namespace = settings.lease_namespace
        self.duration = settings.lease_duration_s
        self.renew_period = settings.lease_renew_s
        self.timeout = settings.kube_request_timeout_s
        self._clock = clock
        self._valid_until = 0.0
        self._observed: tuple[Any, ...] | None = None
        self._observed_at = 0.0
        self.changed = asyncio.Event()
        self.leading_flag = False
        self._precheck = precheck
        self._stalls = stalls
        self._last_ok = clock()
        """When a round last reached the API server (start: the grace of one lease duration)."""
        self.failed_rounds = 0
        """Consecutive rounds that could not talk to the API server (reset by one that did)."""
        self.last_error: str | None = None
        self.refusal: str | None = None
        """Why this watcher refuses to lead (an identity conflict), None when it may."""
        self.holder: str | None = None
        """Holder of the lease as last read."""

    # Rounds failed in a row before /readyz says the API server is unreachable (~15 s by default).
    UNREACHABLE_AFTER = 3

    def health(self) -> tuple[bool, str]:
        """Readiness: false with the reason when the API server keeps failing or we refuse to lead."""
        if self.refusal is not None:
            return False, self.refusal
        silent = self._clock() - self._last_ok
        stalled = self._stalls.worst_since(self._last_ok) if self._stalls is not None else 0.0
        if (
            silent > self.duration
            and self.failed_rounds < self.UNREACHABLE_AFTER
            and stalled >= self.renew_period
        ):
            # Rounds did not fail: they did not run. Blaming the API server here sent operators
            # to the wrong place (issue 19); the loop's stall is what to look at.
            return False, (
                f"no lease round for {silent:.0f}s: the event loop was blocked for {stalled:.1f}s, "
                f"so renewals could not run (the last round reached the Kubernetes API; "
                f"{self.failed_rounds} failed since)"
            )
        if self.failed_rounds >= self.UNREACHABLE_AFTER or silent > self.duration:
            # Counted rounds catch fast failures (refused connections); the clock catches a hung
            # API server, whose every round takes the whole request timeout.
            return False, (
                f"cannot reach the Kubernetes API: no lease round succeeded for {silent:.0f}s, "
                f"{self.failed_rounds} lease rounds failed in a row (last: {self.last_error or 'still waiting'})"
            )
        if self.is_leader():
            return True, "leading"
        if self.holder == self.identity:
            return True, "standby (our lease expired; taking it back)"
        return True, f"standby (lease held by {self.holder or 'nobody'})"

    def is_leader(self) -> bool:
        return self.leading_flag and self._clock() < self._valid_until

    def _body(self, *, rv: str | None, transitions: int, acquired: str | None) -> dict[str, Any]:
        now = _micro_time(datetime.now(UTC))
        meta: dict[str, Any] = {"name": self.name, "namespace": self.namespace}
        if rv is not None:
            meta["resourceVersion"] = rv
        return {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": "Lease",
            "metadata": meta,
            "spec": {
                "holderIdentity": self.identity,
                "leaseDurationSeconds": self.duration,
                "acquireTime": acquired or now,
                "renewTime": now,
                "leaseTransitions": transitions,
            },
        }

    async def _read(self) -> dict[str, Any] | None:
        try:
            lease: dict[str, Any] = await self.api.get_namespaced_custom_object(
                GROUP, VERSION, self.namespace, PLURAL, self.name, _request_timeout=self.timeout
            )
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise
        return lease

    async def try_acquire_or_renew(self) -> bool:
        """One election round; True when we hold the lease afterwards."""
        started = self._clock()
        lease = await self._read()
        if lease is None:
            return await self._create(started)
        spec = lease.get("spec") or {}
        holder = spec.get("holderIdentity") or ""
        self.holder = holder or None
        expired = self._expired(lease, started)  # observed on every round, as client-go does
        if holder and holder != self.identity and not expired:
            return False
        return await self._take(lease, started)

    async def _create(self, started: float) -> bool:
        """No Lease yet: create it; a 409 means another replica created it first."""
        try:
            await self.api.create_namespaced_custom_object(
                GROUP,
                VERSION,
                self.namespace,
                PLURAL,
                self._body(rv=None, transitions=0, acquired=None),
                _request_timeout=self.timeout,
            )
        except ApiException as exc:
            if exc.status == 409:
                return False
            raise
        return self._won(started)

    def _expired(self, lease: dict[str, Any], started: float) -> bool:
        """Expiry as client-go judges it: the record unchanged for longer than its duration, by our
        own clock (since we first observed it like this)."""
        spec = lease.get("spec") or {}
        meta = lease.get("metadata") or {}
        observed = (spec.get("holderIdentity") or "", spec.get("renewTime"), meta.get("resourceVersion"))
        if observed != self._observed:
            self._observed, self._observed_at = observed, started
        duration = spec.get("leaseDurationSeconds") or self.duration
        return started - self._observed_at > float(duration)

    async def _take(self, lease: dict[str, Any], started: float) -> bool:
        """Renew our lease, or take over a free or expired one, fenced on its resourceVersion."""
        spec = lease.get("spec") or {}
        holder = spec.get("holderIdentity") or ""
        ours = holder == self.identity
        transitions = int(spec.get("leaseTransitions") or 0) + (0 if ours else 1)
        body = self._body(
            rv=(lease.get("metadata") or {}).get("resourceVersion"),
            transitions=transitions,
            acquired=spec.get("acquireTime") if ours else None,
        )
        try:
            await self.api.replace_namespaced_custom_object(
                GROUP, VERSION, self.namespace, PLURAL, self.name, body, _request_timeout=self.timeout
            )
        except ApiException as exc:
            if exc.status == 409:  # somebody else renewed or took it first
                return False
            raise
        if not ours:
            log.info(
                "lease acquired", extra={"lease": self.name, "holder": self.identity, "previous": holder}
            )
        return self._won(started)

    def _won(self, started: float) -> bool:
        # Valid from when we sent the request, minus a margin for the renew round-trip.
        self._valid_until = started + self.duration - min(self.renew_period, self.duration / 4)
        return True

    async def run(self) -> None:
        """Election loop; sets/clears :attr:`leading_flag` and pulses :attr:`changed`."""
        try:
            while True:
                ok = await self._round()
                leading = ok or (self.leading_flag and self._clock() < self._valid_until)
                if leading != self.leading_flag:
                    self.leading_flag = leading
                    log.info(
                        "leadership %s", "gained" if leading else "lost", extra={"holder": self.identity}
                    )
                    self.changed.set()
                await self._sleep_watching_expiry()
        finally:
            if self.leading_flag:
                self.leading_flag = False
                self.changed.set()
                with contextlib.suppress(Exception):
                    await asyncio.shield(self.release())

    async def _round(self) -> bool:
        try:
            if self._precheck is not None:
                await self._precheck()
            ok = await self.try_acquire_or_renew()
        except IdentityConflict as exc:
            if self.refusal != str(exc):
                log.error("refusing to lead: %s", exc)
            self.refusal = str(exc)
            self.failed_rounds = 0
            self._last_ok = self._clock()  # the API answered: it is the cluster that is wrong
            return False
        except (ApiException, aiohttp.ClientError, OSError, TimeoutError, ValueError, PyMongoError) as exc:
            self.failed_rounds += 1
            self.last_error = f"{type(exc).__name__}: {str(exc)[:200]}"
            log.warning(
                "lease round failed: %s",
                type(exc).__name__,
                extra={"error": str(exc)[:200], "failed_rounds": self.failed_rounds},
            )
            return False
        self.refusal = None
        self.failed_rounds = 0
        self._last_ok = self._clock()
        self.last_error = None
        return ok

    async def _sleep_watching_expiry(self) -> None:
        end = self._clock() + self.renew_period
        while self._clock() < end:
            await asyncio.sleep(min(0.1, self.renew_period))
            if self.leading_flag and not self.is_leader():
                self.leading_flag = False
                log.warning("lease expired before it could be renewed", extra={"holder": self.identity})
                self.changed.set()
                return

    async def release(self) -> None:
        """Give the lease up on a clean stop so a standby takes over at once."""
        lease = await self._read()
        if lease is None or (lease.get("spec") or {}).get("holderIdentity") != self.identity:
            return
        body = self._body(
            rv=lease["metadata"].get("resourceVersion"),
            transitions=int(lease["spec"].get("leaseTransitions") or 0),
            acquired=lease["spec"].get("acquireTime"),
        )
        body["spec"]["holderIdentity"] = None
        body["spec"]["leaseDurationSeconds"] = 1
        await self.api.replace_namespaced_custom_object(
            GROUP, VERSION, self.namespace, PLURAL, self.name, body, _request_timeout=self.timeout
        )
        self._valid_until = 0.0
        log.info("lease released", extra={"lease": self.name, "holder": self.identity})
