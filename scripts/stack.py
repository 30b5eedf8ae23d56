"""``make run`` / ``make demo``: the whole stack as local processes, no Docker (docs/architecture.md §7).

Starts the embedded MongoDB (``emulators.mongo``), the Kubernetes and OTC emulators, and the four
services, against the machine's RabbitMQ. ``run`` keeps them up and prints where to look; ``demo``
(``scripts/demo.py``) drives a full scenario through OTC's broker contract and the cluster with the
stack driver (``scripts/driver.py``). This module is the processes only: what drives them is the
driver's, shared by the demo, the benchmarks and the e2e tests.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import ctypes
import fcntl
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import aio_pika
import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from shared.amqp.topology import Topology, with_owned_instances

ROOT = Path(__file__).resolve().parent.parent
LOGS = ROOT / ".run"
RUN_FILE = "stack.json"  # in the run directory: what ``kabanero-otc`` reads (kotc_cli.config)
LOCK_FILE = "stack.lock"
PR_SET_PDEATHSIG = 1
SEED = ROOT / "deploy" / "samples" / "kabanero-sample.yaml"
# The cluster also has Kabanero 0.9's Tekton (its CRDs, then the installation: tekton-sample.yaml's header).
TEKTON_CRDS = ("tekton-v0.11.3", "openshift-pipelines-operator")
TEKTON_SEED = ROOT / "deploy" / "samples" / "tekton-sample.yaml"
AMQP_HOST = "amqp://guest:guest@127.0.0.1:5672"
MGMT = "http://127.0.0.1:15672/api"
API_KEY = "demo-otc-api-key"
BROKER_ID = "kabanero-otc"
BROKERS: tuple[tuple[Literal["kabanero-broker", "kabanero-events-broker"], str], ...] = (
    ("kabanero-events-broker", "demo-events"),
    ("kabanero-broker", "demo-kabanero"),
)
CLUSTER = (
    "default"  # the stack's first cluster (CLUSTER_NAME of its watcher, in broker-api's ALLOWED_CLUSTERS)
)
# The consuming queues of docs/architecture.md §4, with the watcher's command queue of that cluster
# (kabanero-watcher.default.instances): the drain wait and the dead-letter summary cover it too
# (a stack of more clusters: Stack.queues).
QUEUES = tuple(with_owned_instances([CLUSTER]))
SERVICES = {  # process name -> its key in Stack.ports (a stack of more clusters: Stack.services)
    "broker-api": "broker",
    "kabanero-watcher": "watcher",
    "otc-writer": "writer",
    "github-linker": "linker",
}


def _die_with_parent() -> None:
    """In the child, before exec: get SIGTERM when the stack process dies, even by SIGKILL, so no
    service outlives its stack and steals the next stack's work (Linux ``PR_SET_PDEATHSIG``)."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    if os.getppid() != _STACK_PID:  # the stack died before prctl took effect
        os._exit(1)


_STACK_PID = os.getpid()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cluster_suffix(cluster: str) -> str:
    """``""`` for the first cluster (``kube``, ``kabanero-watcher``), ``-<cluster>`` for the others
    (``kube-east``, ``kabanero-watcher-east``): the names of a cluster's processes and ports."""
    return "" if cluster == CLUSTER else f"-{cluster}"


class Stack:
    """Child processes with their logs in ``.run/``; stopped with SIGTERM, in reverse order."""

    def __init__(
        self,
        vhost: str,
        *,
        extra_env: dict[str, dict[str, str]] | None = None,
        logs: Path = LOGS,
        amqp_host: str | None = None,
        clusters: tuple[str, ...] = (CLUSTER,),
        tekton_only: tuple[str, ...] = (),
    ) -> None:
        """``extra_env``: more environment per process name (e.g. short intervals for fault tests).
        ``amqp_host``: another broker (e.g. a private node for broker faults) whose ``vhost`` exists
        already; by default the machine's RabbitMQ, where the vhost is recreated empty.
        ``clusters``: one Kubernetes emulator and one kabanero-watcher per cluster (the first is
        ``default``: ``kube`` and ``kabanero-watcher``; another ``east`` is ``kube-east`` and
        ``kabanero-watcher-east``), all of them in broker-api's ``ALLOWED_CLUSTERS``.
        ``tekton_only``: clusters (not the first) whose Kubernetes emulator has Tekton and no Kabanero
        (``--no-kabanero``, the Tekton seed only), watched by the Tekton family only.

        MongoDB (``emulators.mongo``) keeps its data in ``<logs>/mongo.sqlite``: a restart of the
        Mongo process loses nothing (memory-only, a restart would lose every record, ledger and
        outbox entry, and the services would re-create OTC tools they no longer know about). The
        file is started empty with each stack, as the OTC and Kubernetes emulators are.
        """
        if not clusters or clusters[0] != CLUSTER or len(set(clusters)) != len(clusters):
            raise ValueError(f"clusters must start with {CLUSTER!r} and name each cluster once: {clusters}")
        if not set(tekton_only) <= set(clusters[1:]):
            raise ValueError(f"tekton_only must name clusters after the first: {tekton_only}")
        self.tekton_only = tekton_only
        self.vhost = vhost
        self.clusters = clusters
        self.amqp_host = amqp_host or AMQP_HOST
        self.mongo_file = logs / "mongo.sqlite"
        self.procs: list[tuple[str, subprocess.Popen[bytes]]] = []
        self.specs: dict[str, tuple[list[str], dict[str, str]]] = {}
        self.extra_env = extra_env or {}
        self.logs = logs
        names = ["mongo", "otc", "broker", "writer", "linker"]
        names += [f"{port}{cluster_suffix(c)}" for c in clusters for port in ("kube", "watcher")]
        self.ports = {n: free_port() for n in names}
        self.services = dict(SERVICES) | {
            f"kabanero-watcher{cluster_suffix(c)}": f"watcher{cluster_suffix(c)}" for c in clusters
        }
        """Service process name -> its key in ``ports`` (one watcher per cluster)."""
        self.queues = tuple(with_owned_instances(list(clusters)))
        """The consuming queues, with each cluster's watcher command queue."""
        self.broker_secret = secrets.token_urlsafe(24)
        self.credentials_key = base64.urlsafe_b64encode(os.urandom(32)).decode()
        self.logs.mkdir(parents=True, exist_ok=True)

    @property
    def owns_vhost(self) -> bool:
        """The vhost is the stack's own, on the machine's RabbitMQ (recreated empty by ``start``)."""
        return self.amqp_host == AMQP_HOST

    @property
    def amqp_url(self) -> str:
        return f"{self.amqp_host}/{urllib.parse.quote(self.vhost, safe='')}"

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.ports[name]}"

    def spawn(self, name: str, args: list[str], env: dict[str, str] | None = None) -> None:
        env = {**(env or {}), **self.extra_env.get(name, {})}
        self.specs[name] = (args, env)
        self.procs.append((name, self._popen(name, "wb")))

    def _popen(self, name: str, mode: Literal["wb", "ab"]) -> subprocess.Popen[bytes]:
        args, env = self.specs[name]
        with (self.logs / f"{name}.log").open(mode) as log:
            return subprocess.Popen(  # noqa: S603 - our own modules, fixed arguments
                [sys.executable, "-m", *args],
                cwd=ROOT,
                env={**os.environ, "LOG_FORMAT": "json", **env},
                stdout=log,
                stderr=subprocess.STDOUT,
                preexec_fn=_die_with_parent,
            )

    def proc(self, name: str) -> subprocess.Popen[bytes]:
        return next(p for n, p in self.procs if n == name)

    def kill(self, name: str, sig: signal.Signals = signal.SIGKILL, *, timeout: float = 20.0) -> int:
        """Send ``sig`` to one process and wait for it to exit (SIGKILL after ``timeout``)."""
        proc = self.proc(name)
        if proc.poll() is None:
            proc.send_signal(sig)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        return proc.returncode

    async def restart(self, name: str, sig: signal.Signals | None = signal.SIGTERM) -> None:
        """Stop one process with ``sig`` (None: it has already exited), start it again with the same
        arguments and environment (its log is appended to), and wait until it answers /readyz."""
        if sig is not None:
            await asyncio.to_thread(self.kill, name, sig)
        index = next(i for i, (n, _) in enumerate(self.procs) if n == name)
        self.procs[index] = (name, self._popen(name, "ab"))
        if name in self.services:
            await wait_http(f"{self.url(self.services[name])}/readyz", name, timeout=60)

    def common_env(self, http_port: int) -> dict[str, str]:
        return {
            "AMQP_URL": self.amqp_url,
            "MONGODB_URL": f"mongodb://127.0.0.1:{self.ports['mongo']}/kabanero_otc?directConnection=true",
            "HTTP_PORT": str(http_port),
            "HTTP_HOST": "127.0.0.1",
        }

    async def start(self) -> None:
        if self.owns_vhost:
            await reset_vhost(self.vhost)
        for stale in self.logs.glob("mongo.sqlite*"):
            stale.unlink()
        self.spawn(
            "mongo",
            ["emulators.mongo", "--port", str(self.ports["mongo"]), "--file", str(self.mongo_file)],
        )
        for cluster in self.clusters:
            kube = f"kube{cluster_suffix(cluster)}"
            self.spawn(
                kube,
                [
                    "emulators.kube",
                    "--port",
                    str(self.ports[kube]),
                    "--crds",
                    *TEKTON_CRDS,
                    *(
                        ("--no-kabanero", "--seed", str(TEKTON_SEED))
                        if cluster in self.tekton_only
                        else ("--seed", str(SEED), str(TEKTON_SEED))
                    ),
                ],
            )
        self.spawn(
            "otc",
            [
                "emulators.otc",
                "--port",
                str(self.ports["otc"]),
                "--api-key",
                API_KEY,
                "--broker-url",
                self.url("broker"),
                "--broker-id",
                BROKER_ID,
            ],
            {"BROKER_SECRET": self.broker_secret},
        )
        for cluster in self.clusters:
            await wait_http(f"{self.url('kube' + cluster_suffix(cluster))}/version", "kube emulator")
        await wait_http(f"{self.url('otc')}/_emulator/state", "OTC emulator")
        self.spawn(
            "broker-api",
            ["services.broker_api"],
            {
                **self.common_env(self.ports["broker"]),
                "BROKER_ID": BROKER_ID,
                "BROKER_SECRET": self.broker_secret,
                "CREDENTIALS_KEY": self.credentials_key,
                "OUTBOX_DRAIN_INTERVAL_S": "1",
                "BROKER_PUBLIC_URL": self.url("broker"),  # the services' dashboards
                "ALLOWED_CLUSTERS": ",".join(self.clusters),
            },
        )
        for cluster in self.clusters:
            suffix = cluster_suffix(cluster)
            self.spawn(
                f"kabanero-watcher{suffix}",
                ["services.kabanero_watcher"],
                {
                    **self.common_env(self.ports[f"watcher{suffix}"]),
                    "KUBE_API_URL": self.url(f"kube{suffix}"),
                    "CLUSTER_NAME": cluster,
                    "SNAPSHOT_INTERVAL_S": "30",
                    # The Kubernetes emulator refuses objects in a missing namespace (as a real API
                    # server does): the demo's create=true service gets its namespace made for it.
                    "CREATE_NAMESPACES": "true",
                    # A Tekton-only cluster's watcher watches no Kabanero kind (its API server has none).
                    **({"WATCH_FAMILIES": "tekton"} if cluster in self.tekton_only else {}),
                },
            )
        self.spawn(
            "otc-writer",
            ["services.otc_writer"],
            {
                **self.common_env(self.ports["writer"]),
                "OTC_API_URL": f"{self.url('otc')}/toolchain/v2",
                "OTC_IAM_URL": self.url("otc"),
                "OTC_API_KEY": API_KEY,
                "OTC_RATE_LIMIT": "50",
            },
        )
        self.spawn("github-linker", ["services.github_linker"], self.common_env(self.ports["linker"]))
        for name, port in self.services.items():
            await wait_http(f"{self.url(port)}/readyz", name, timeout=60)

    async def queue_depths(self) -> dict[str, int]:
        """Ready messages per queue of the topology: consuming, delay and dead-letter queues."""
        conn = await aio_pika.connect(self.amqp_url)
        try:
            channel = await conn.channel()
            out = {}
            for q in self.queues:
                delays = sorted(set(Topology().retry_delays_s))
                for name in (q, *(f"{q}.retry.{d}s" for d in delays), f"{q}.dead"):
                    queue = await channel.declare_queue(name, passive=True)
                    out[name] = queue.declaration_result.message_count or 0
            return out
        finally:
            await conn.close()

    async def metric(
        self, http: aiohttp.ClientSession, port: str, sample: str, **labels: str
    ) -> float | None:
        """The sum of one sample's values on a service's /metrics (those with ``labels``); None when
        the service does not answer."""
        try:
            async with http.get(f"{self.url(port)}/metrics") as r:
                text = await r.text()
        except (aiohttp.ClientError, OSError, TimeoutError):
            return None
        return sum(
            s.value
            for family in text_string_to_metric_families(text)
            for s in family.samples
            if s.name == sample and all(s.labels.get(k) == v for k, v in labels.items())
        )

    async def held(self, http: aiohttp.ClientSession) -> dict[str, float]:
        """Messages each running service has been delivered and not settled yet
        (``kotc_consumer_held``): a queue can be empty while a consumer still works on its prefetch."""
        out: dict[str, float] = {}
        for name, port in self.services.items():
            if port in self.ports and any(n == name and p.poll() is None for n, p in self.procs):
                value = await self.metric(http, port, "kotc_consumer_held")
                if value is not None:
                    out[name] = value
        return out

    async def loop_holds(self, http: aiohttp.ClientSession) -> dict[str, dict[float, float]]:
        """Each answering service's ``kotc_event_loop_held_seconds`` buckets (upper bound ->
        cumulative count), for :func:`held_between`."""
        out: dict[str, dict[float, float]] = {}
        for name, port in self.services.items():
            try:
                async with http.get(f"{self.url(port)}/metrics") as r:
                    text = await r.text()
            except (aiohttp.ClientError, OSError, TimeoutError):
                continue
            out[name] = {
                float(s.labels["le"]): s.value
                for family in text_string_to_metric_families(text)
                for s in family.samples
                if s.name == "kotc_event_loop_held_seconds_bucket"
            }
        return out

    async def quiet(self, timeout: float = 45.0, *, stable_polls: int = 3) -> float:
        """Wait until no message waits in a consuming or delay queue, and no service holds one
        unsettled, on ``stable_polls`` polls in a row (the consumers have caught up, retries included).
        Returns when (``time.monotonic()``) the calm began: the last busy poll's end, or the first
        poll's start when none was busy (the polls after it only confirm it)."""
        deadline = time.monotonic() + timeout
        calm = 0
        since = time.monotonic()
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as http:
            while calm < stable_polls:
                depths = await self.queue_depths()
                busy = any(n for q, n in depths.items() if not q.endswith(".dead"))
                held = {} if busy else await self.held(http)
                if busy or any(held.values()):
                    calm, since = 0, time.monotonic()
                else:
                    calm += 1
                if time.monotonic() > deadline:
                    raise RuntimeError(f"queues not drained after {timeout:.0f}s: {depths}, held: {held}")
                await asyncio.sleep(0.2)
        return since

    def describe(self) -> dict[str, Any]:
        """Everything ``kabanero-otc`` needs to reach this stack (the run file; secrets of a dev stack)."""
        return {
            "pid": os.getpid(),
            "vhost": self.vhost,
            "AMQP_URL": self.amqp_url,
            "RABBITMQ_MGMT_URL": MGMT.removesuffix("/api"),
            "MONGODB_URL": self.common_env(0)["MONGODB_URL"],
            "KUBE_API_URL": self.url("kube"),
            "OTC_API_URL": f"{self.url('otc')}/toolchain/v2",
            "OTC_IAM_URL": self.url("otc"),
            "OTC_API_KEY": API_KEY,
            "BROKER_ID": BROKER_ID,
            "BROKER_SECRET": self.broker_secret,
            "CREDENTIALS_KEY": self.credentials_key,
            "CLUSTER_NAME": CLUSTER,
            "clusters": {c: self.url(f"kube{cluster_suffix(c)}") for c in self.clusters},
            "services": {name: [self.url(port)] for name, port in SERVICES.items()},
            "logs": str(self.logs),
            "pids": {name: proc.pid for name, proc in self.procs},
        }

    def check_alive(self) -> None:
        for name, proc in self.procs:
            if proc.poll() is not None:
                raise RuntimeError(f"{name} exited with {proc.returncode}; see {self.logs}/{name}.log")

    def stop(self) -> None:
        for _, proc in reversed(self.procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for name, proc in reversed(self.procs):
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                print(f"{name} did not stop in time; killing")
                proc.kill()
                proc.wait()


def held_between(
    before: dict[str, dict[float, float]], after: dict[str, dict[float, float]]
) -> dict[str, str]:
    """Per service, the bucket its longest loop hold between the two readings fell in
    (``"0.3-0.5"`` seconds, ``">30"``): the process that stalled names itself."""
    out: dict[str, str] = {}
    for name, buckets in after.items():
        grew = {le: n - before.get(name, {}).get(le, 0.0) for le, n in buckets.items()}
        bounds = sorted(grew)
        if not bounds:
            continue
        # The first cumulative bucket that holds every wake of the phase bounds its longest hold.
        first = next(i for i, le in enumerate(bounds) if grew[le] >= grew[bounds[-1]])
        lower = bounds[first - 1] if first else 0.0
        out[name] = f">{lower:g}" if bounds[first] == float("inf") else f"{lower:g}-{bounds[first]:g}"
    return out


async def mgmt(method: str, path: str, body: Any = None) -> Any:
    async with (
        aiohttp.ClientSession(
            headers={"Authorization": "Basic " + base64.b64encode(b"guest:guest").decode()}
        ) as s,
        s.request(method, f"{MGMT}/{path}", json=body) as r,
    ):
        if r.status >= 400 and not (method == "DELETE" and r.status == 404):
            raise RuntimeError(f"RabbitMQ management {method} {path}: {r.status}")
        return await r.json() if r.content_type == "application/json" else None


async def reset_vhost(vhost: str) -> None:
    quoted = urllib.parse.quote(vhost, safe="")
    await mgmt("DELETE", f"vhosts/{quoted}")
    await mgmt("PUT", f"vhosts/{quoted}")
    await mgmt("PUT", f"permissions/{quoted}/guest", {"configure": ".*", "write": ".*", "read": ".*"})


async def wait_http(url: str, what: str, *, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession() as s:
        while True:
            with contextlib.suppress(aiohttp.ClientError, OSError):
                async with s.get(url) as r:
                    if r.status < 400:
                        return
            if time.monotonic() > deadline:
                raise RuntimeError(f"{what} not ready at {url} after {timeout:.0f}s (see .run/)")
            await asyncio.sleep(0.2)


@contextlib.contextmanager
def single_instance(run_dir: Path) -> Iterator[bool]:
    """Hold ``<run dir>/stack.lock`` (flock) while the stack runs; False when another holds it."""
    run_dir.mkdir(parents=True, exist_ok=True)
    with (run_dir / LOCK_FILE).open("a+") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        lock.truncate(0)
        lock.write(f"{os.getpid()}\n")
        lock.flush()
        try:
            yield True
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def write_run_file(stack: Stack) -> Path:
    """``<logs>/stack.json``, owner-only (it holds the dev stack's credentials)."""
    path = stack.logs / RUN_FILE
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(stack.describe(), f, indent=2)
    tmp.replace(path)
    return path


async def run(vhost: str, run_dir: Path = LOGS) -> int:
    with single_instance(run_dir) as alone:
        if not alone:
            holder = (run_dir / LOCK_FILE).read_text().strip() or "?"
            print(
                f"kabanero-otc is already running (make run, pid {holder}; see {run_dir / RUN_FILE}); "
                "stop it first (Ctrl-C in its terminal)",
                file=sys.stderr,
            )
            return 1
        try:
            return await _run(vhost, run_dir)
        finally:
            (run_dir / RUN_FILE).unlink(missing_ok=True)


async def _run(vhost: str, run_dir: Path) -> int:
    stack = Stack(vhost, logs=run_dir)
    try:
        await stack.start()
    except Exception as exc:
        print(f"start failed: {exc}", file=sys.stderr)
        stack.stop()
        return 1
    run_file = write_run_file(stack)
    print("kabanero-otc is running (Ctrl-C stops it):")
    print(
        f"  broker-api        {stack.url('broker')}  (Basic {BROKER_ID}:{'*' * 8}, secret in the process env)"
    )
    print(
        f"  brokers           {stack.url('broker')}/{{kabanero-broker,kabanero-events-broker,tekton-broker}}/api/v1"
    )
    print(f"  OTC emulator      {stack.url('otc')}/_emulator/state  (platform driver at /_emulator/platform)")
    print(
        f"  Kubernetes        kubectl --server {stack.url('kube')} get kabaneros,eventmediators,pipelines,eventlisteners -A"
    )
    print(
        f"  health            {', '.join(stack.url(n) + '/healthz' for n in ('watcher', 'writer', 'linker'))}"
    )
    print(f"  RabbitMQ console  http://127.0.0.1:15672 (guest/guest), vhost '{stack.vhost}'")
    print(f"  logs              {run_dir}/<process>.log")
    print(f"  CLI               .venv/bin/kabanero-otc status   (reads {run_file})")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        while not stop.is_set():
            stack.check_alive()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 1.0)
    finally:
        stack.stop()
    return 0


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m scripts.stack", description=__doc__)
    parser.add_argument("mode", choices=("demo", "run"))
    parser.add_argument(
        "--vhost", help="RabbitMQ virtual host, recreated empty (default: kabanero-otc[-demo])"
    )
    parser.add_argument(
        "--run-dir", type=Path, default=LOGS, help="logs, run file and lock of `run` (default .run/)"
    )
    args = parser.parse_args()
    if args.mode == "demo":
        from scripts.demo import demo  # here: scripts.demo imports this module

        sys.exit(asyncio.run(demo(args.vhost or "kabanero-otc-demo")))
    sys.exit(asyncio.run(run(args.vhost or "kabanero-otc", args.run_dir.resolve())))


if __name__ == "__main__":
    main()
