"""``scale.one_namespace_20k``: 20,000 mediations in one namespace, against one watcher (issue 19).

``python -m bench.one_namespace [--mediations 20000] [--mediators 20] [--cap-s 240]``: runs the
Kubernetes emulator as its own process (``emulators.kube``), seeds one namespace over HTTP with a
Kabanero CR (events enabled), ``--mediators`` EventMediators sharing ``--mediations`` mediations and
as many EventConnections objects (one connection item per mediation, so every mediation has a
destination), runs the watcher in this process against it (the machine's RabbitMQ in a throw-away
vhost, MongoDB: ``MONGODB_URL``, else ``emulators.mongo``), and measures:

1. first sync: from start until every trigger is published (confirmed, recorded done);
2. one edit: one mediation's content changed by a PATCH, timed until its record is done;
3. resync: the watcher stopped and started again over the unchanged world (published state loaded,
   every type listed, the namespace diffed), timed until it is synced and idle;
4. meanwhile: the longest the event loop was held (a 0.1 s timer on it, how late it fired), the
   leadership terms (a missed Lease renewal starts a new one), and once a second how long
   ``/readyz`` takes to answer and what it says.

Invariants: every trigger published exactly once in the first sync, one update for the edit, no
change event on the resync, one leadership term each time. Every phase is bounded by ``--cap-s``:
a watcher that does not get there is reported with how far it got, not waited for.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp

from bench.common import bench_infra
from bench.stack_scale import rss_mb
from scripts.stack import free_port, wait_http
from services.kabanero_watcher.app import WatcherRuntime, build
from services.kabanero_watcher.settings import Settings
from shared.events import RoutingKeys

ROOT = Path(__file__).resolve().parent.parent
NS = "big"
EVENTS = "/apis/events.kabanero.io/v1alpha1"


def _mediator(index: int, names: list[str], edit: str = "") -> dict[str, Any]:
    return {
        "apiVersion": "events.kabanero.io/v1alpha1",
        "kind": "EventMediator",
        "metadata": {"name": f"webhook-{index:02d}", "namespace": NS},
        "spec": {
            "createListener": True,
            "mediations": [
                {
                    "name": name,
                    "selector": {"urlPattern": f"{name}{edit if i == 0 else ''}"},
                    "sendTo": ["dest"],
                    "body": [{"=": "sendEvent(dest, body, header)"}],
                }
                for i, name in enumerate(names)
            ],
        },
    }


def _connections(index: int, names: list[str]) -> dict[str, Any]:
    return {
        "apiVersion": "events.kabanero.io/v1alpha1",
        "kind": "EventConnections",
        "metadata": {"name": f"connections-{index:02d}", "namespace": NS},
        "spec": {
            "connections": [
                {
                    "from": {
                        "mediator": {"name": f"webhook-{index:02d}", "mediation": name, "destination": "dest"}
                    },
                    "to": [
                        {"https": [{"url": f"https://el-listener.{NS}.svc:8080/{name}", "insecure": True}]}
                    ],
                }
                for name in names
            ]
        },
    }


class Cluster:
    """The emulator process and the requests the bench makes of it."""

    def __init__(self, http: aiohttp.ClientSession, url: str, mediators: int, mediations: int) -> None:
        self.http = http
        self.url = url
        per = -(-mediations // mediators)
        self.names = [
            [f"m{k:05d}" for k in range(i * per, min(mediations, (i + 1) * per))] for i in range(mediators)
        ]

    async def request(self, method: str, path: str, body: dict[str, Any]) -> None:
        ctype = "application/merge-patch+json" if method == "PATCH" else "application/json"
        async with self.http.request(
            method, self.url + path, data=json.dumps(body), headers={"Content-Type": ctype}
        ) as r:
            if r.status >= 300:
                raise RuntimeError(f"kube {method} {path}: {r.status} {(await r.text())[:300]}")

    async def seed(self) -> None:
        await self.request(
            "POST", "/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NS}}
        )
        await self.request(
            "POST",
            f"/apis/kabanero.io/v1alpha2/namespaces/{NS}/kabaneros",
            {
                "apiVersion": "kabanero.io/v1alpha2",
                "kind": "Kabanero",
                "metadata": {"name": "kabanero", "namespace": NS},
                "spec": {"version": "0.9.2"},
            },
        )
        for i, names in enumerate(self.names):
            await self.request("POST", f"{EVENTS}/namespaces/{NS}/eventmediators", _mediator(i, names))
            await self.request("POST", f"{EVENTS}/namespaces/{NS}/eventconnections", _connections(i, names))

    async def edit_one(self) -> str:
        """Change the first mediation's selector; returns its trigger key."""
        body = {"spec": {"mediations": _mediator(0, self.names[0], "-edited")["spec"]["mediations"]}}
        await self.request("PATCH", f"{EVENTS}/namespaces/{NS}/eventmediators/webhook-00", body)
        return f"bench/{NS}/mediation/webhook-00/{self.names[0][0]}"


class Probe:
    """Wakes every 0.1 s: the leadership terms, and how late it woke (the probe shares the watcher's
    event loop, so a held loop shows as lateness, not in an answer's time); asks /readyz once a
    second: the slowest answer and the reasons it gave."""

    TICK_S = 0.1

    def __init__(self, http: aiohttp.ClientSession) -> None:
        self.http = http
        self.runtime: WatcherRuntime | None = None
        self.reset()

    def reset(self) -> None:
        self.asleep_since: float | None = None
        self.slowest_s = 0.0
        self.latest_s = 0.0
        self.not_ready: dict[str, int] = {}
        self.answers = 0
        self.sessions: set[int] = set()

    async def run(self) -> None:
        asked = 0.0
        while True:
            self.asleep_since = time.perf_counter()
            await asyncio.sleep(self.TICK_S)
            self.latest_s = max(self.latest_s, self.lateness())
            self.asleep_since = None
            runtime = self.runtime
            if runtime is None:
                continue
            if runtime.session is not None:
                self.sessions.add(id(runtime.session))
            if time.perf_counter() - asked >= 1.0:
                asked = time.perf_counter()
                with contextlib.suppress(aiohttp.ClientError, OSError):
                    await self._ask(runtime)

    async def _ask(self, runtime: WatcherRuntime) -> None:
        t0 = time.perf_counter()
        async with self.http.get(f"http://127.0.0.1:{runtime.http_port}/readyz") as r:
            body = await r.json()
        self.slowest_s = max(self.slowest_s, time.perf_counter() - t0)
        self.answers += 1
        for name, reason in body.get("checks", {}).items():
            if str(reason).startswith("failing"):
                label = f"{name}: {str(reason)[:80]}"
                self.not_ready[label] = self.not_ready.get(label, 0) + 1

    def lateness(self) -> float:
        """How late the timer is (so far: a hold still going on when the figures are taken counts)."""
        return 0.0 if self.asleep_since is None else time.perf_counter() - self.asleep_since - self.TICK_S

    def figures(self) -> dict[str, Any]:
        top = sorted(self.not_ready.items(), key=lambda kv: -kv[1])[:5]
        return {
            "readyz_slowest_s": round(self.slowest_s, 2),
            "loop_held_max_s": round(max(self.latest_s, self.lateness()), 2),
            "readyz_answers": self.answers,
            "readyz_not_ready": dict(top),
            "leadership_terms": len(self.sessions),
        }


def _done_triggers(runtime: WatcherRuntime) -> int:
    return sum(not r.pending and not r.deleted for r in runtime.state.in_namespace(NS, "trigger"))


async def _until(what: Any, cap_s: float) -> float | None:
    """Seconds until ``what()`` holds (checked every 0.2 s), or None past ``cap_s``."""
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < cap_s:
        if what():
            return time.perf_counter() - t0
        await asyncio.sleep(0.2)
    return None


def _settled(runtime: WatcherRuntime) -> bool:
    session = runtime.session
    return session is not None and session.synced and session.idle.is_set()


async def _phases(
    settings: Settings, cluster: Cluster, probe: Probe, total: int, cap_s: float
) -> dict[str, Any]:
    out: dict[str, Any] = {}
    runtime = build(settings)
    probe.runtime = runtime
    await runtime.start()
    try:
        first = await _until(lambda: _done_triggers(runtime) >= total and _settled(runtime), cap_s)
        out["first_sync_s"] = round(first, 2) if first is not None else None
        out["first_sync_published"] = _done_triggers(runtime)
        out["first_sync"] = probe.figures()
        out["rss_mb_after_first_sync"] = rss_mb(os.getpid())
        if first is None:
            return out
        session = runtime.session
        assert session is not None
        out["first_sync_events"] = session.emitter.published
        out["first_sync_snapshot_parts"] = session.emitter.published_by_key[RoutingKeys.SNAPSHOT]
        before = session.emitter.published
        key = await cluster.edit_one()
        t0 = time.perf_counter()
        old = runtime.state.get("trigger", key)

        def edited() -> bool:
            record = runtime.state.get("trigger", key)
            return (
                record is not None
                and old is not None
                and record.revision > old.revision
                and not record.pending
            )

        edit = await _until(edited, cap_s)
        await _until(lambda: _settled(runtime), cap_s)
        out["one_edit_s"] = (
            round(edit, 3) if edit is not None else (round(time.perf_counter() - t0, 1), "capped")
        )
        out["one_edit_events"] = session.emitter.published - before
    finally:
        await runtime.stop()
    probe.reset()
    again = build(settings)
    probe.runtime = again
    await again.start()
    try:
        resync = await _until(lambda: _settled(again), cap_s)
        out["resync_s"] = round(resync, 2) if resync is not None else None
        session = again.session
        out["resync_change_events"] = (
            session.emitter.published - session.emitter.published_by_key[RoutingKeys.SNAPSHOT]
            if session is not None
            else None
        )
        out["resync"] = probe.figures()
        out["rss_mb_after_resync"] = rss_mb(os.getpid())
    finally:
        await again.stop()
    return out


@contextlib.contextmanager
def _kube_emulator() -> Iterator[str]:
    """``emulators.kube`` as its own process (its CPU and memory are not the watcher's); its URL."""
    port = free_port()
    kube = subprocess.Popen(
        [sys.executable, "-m", "emulators.kube", "--port", str(port), "--bookmark-interval", "5"],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        kube.terminate()
        kube.wait(10)


async def _run(mongodb_url: str, amqp_url: str, url: str, args: argparse.Namespace) -> dict[str, Any]:
    await wait_http(f"{url}/version", "kube emulator")
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120)) as http:
        cluster = Cluster(http, url, args.mediators, args.mediations)
        t0 = time.perf_counter()
        await cluster.seed()
        seed_s = time.perf_counter() - t0
        settings = Settings(
            amqp_url=amqp_url,  # type: ignore[arg-type]
            mongodb_url=mongodb_url,  # type: ignore[arg-type]
            http_host="127.0.0.1",
            http_port=0,
            kube_api_url=url,
            cluster_name="bench",
            watch_families=("kabanero",),
            lease_namespace="default",
            snapshot_interval_s=3600,
            log_level="WARNING",
        )
        probe = Probe(http)
        probing = asyncio.create_task(probe.run(), name="bench:readyz-probe")
        try:
            figures = await _phases(settings, cluster, probe, args.mediations, args.cap_s)
        finally:
            probing.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await probing
    holds = (
        figures.get("first_sync_s") is not None
        and figures.get("first_sync_events")
        # the triggers, the instance, its snapshot (in parts: 24 MB at 20,000 triggers)
        == args.mediations + 1 + figures.get("first_sync_snapshot_parts", 0)
        and figures.get("first_sync_snapshot_parts", 0) >= 1
        and figures["first_sync"]["leadership_terms"] == 1
        and figures.get("one_edit_events") == 1
        and figures.get("resync_change_events") == 0
        and figures.get("resync", {}).get("leadership_terms") == 1
    )
    return {
        "mediations": args.mediations,
        "mediators": args.mediators,
        "lease_duration_s": settings.lease_duration_s,
        "cap_s": args.cap_s,
        "seed_s": round(seed_s, 2),
        **figures,
        "invariants_hold": holds,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--mediations", type=int, default=20000, help="in the one namespace")
    parser.add_argument("--mediators", type=int, default=20, help="EventMediators sharing them")
    parser.add_argument("--cap-s", type=float, default=240.0, help="bound on each phase")
    args = parser.parse_args()
    with bench_infra("bench_one_namespace") as infra, _kube_emulator() as url:
        result = asyncio.run(_run(infra.mongodb_url, infra.amqp_url, url, args))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
