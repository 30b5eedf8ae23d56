"""Bounded load on broker-api: provision + bind pairs against a broker-api process on loopback.

``python -m bench.broker_load [--requests 2000] [--concurrency 32] [--broker tekton-broker]``: starts ``emulators.mongo``
(unless MONGODB_URL is set) and uses the machine's RabbitMQ (AMQP_URL) in a throw-away vhost,
starts broker-api as a process of its own (``bench.broker_server``: the load generator and the
service do not share an event loop), then measures requests/s and p50/p99 latency of PUT
service_instances and PUT toolchains, and the MongoDB commands each request costs (counted in the
server process).
Prints the figures as JSON (``make bench`` gathers them into bench/results.json).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
from cryptography.fernet import Fernet

from bench.common import bench_infra

ROOT = Path(__file__).resolve().parent.parent
AMQP = os.environ.get("AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")
MGMT = os.environ.get("RABBITMQ_MGMT_URL", "http://127.0.0.1:15672")
AUTH = {"Authorization": "Basic " + base64.b64encode(b"bench:bench-secret").decode()}


def _pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p * len(ordered)))] * 1000


# What a provision sends, per broker (the Tekton one with a namespace filter: its longest path).
PROVISION: dict[str, dict[str, Any]] = {
    "kabanero-broker": {"service_id": "kabanero", "parameters": {}},
    "tekton-broker": {"service_id": "tekton", "parameters": {"namespaces": ["team-b", "team-a"]}},
}


@contextlib.contextmanager
def broker_process(
    mongodb_url: str, amqp_url: str, workdir: Path, *, profile: Path | None = None
) -> Iterator[ServerProcess]:
    """broker-api as its own process (``bench.broker_server``: the service's ``main()`` plus the
    command counter), as the e2e tests start it; logs go to ``workdir/broker-api.log``."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    counts = workdir / "counts.json"
    env = {
        **os.environ,
        "BROKER_ID": "bench",
        "BROKER_SECRET": "bench-secret",
        "CREDENTIALS_KEY": Fernet.generate_key().decode(),
        "MONGODB_URL": mongodb_url,
        "AMQP_URL": amqp_url,
        "HTTP_HOST": "127.0.0.1",
        "HTTP_PORT": str(port),
        "LOG_FORMAT": "json",
        "OUTBOX_DRAIN_INTERVAL_S": "3600",  # the periodic pass is no request's work
        "BENCH_COUNTS_FILE": str(counts),
    }
    log_path = workdir / "broker-api.log"
    with log_path.open("w") as log:
        profiling = ["-m", "cProfile", "-o", str(profile)] if profile else []
        proc = subprocess.Popen(
            [sys.executable, *profiling, "-m", "bench.broker_server"],
            cwd=ROOT,
            env=env,
            stderr=log,
            stdout=log,
        )
        try:
            server = ServerProcess(proc, f"http://127.0.0.1:{port}", counts, log_path)
            server.wait_ready()
            yield server
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@dataclass(frozen=True)
class ServerProcess:
    proc: subprocess.Popen[bytes]
    url: str
    counts: Path
    log: Path

    def wait_ready(self, timeout_s: float = 60) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"broker-api exited with {self.proc.returncode}: {self.log.read_text()[-2000:]}"
                )
            try:
                with urllib.request.urlopen(f"{self.url}/readyz", timeout=1) as resp:
                    if resp.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"broker-api not ready within {timeout_s}s: {self.log.read_text()[-2000:]}")

    def cpu_s(self) -> float:
        """CPU seconds (user + system) the server process has used: what a request costs it,
        whatever else the machine runs (wall-clock figures on a shared machine are mostly waits)."""
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    async def commands(self) -> Counter[str]:
        """The MongoDB commands the server process has sent so far (SIGUSR1, then its file)."""
        done = self.counts.with_suffix(".done")
        done.unlink(missing_ok=True)
        self.proc.send_signal(signal.SIGUSR1)
        for _ in range(500):
            if done.exists():
                return Counter(json.loads(self.counts.read_text()))
            await asyncio.sleep(0.01)
        raise RuntimeError("broker-api did not write its command counts")


async def _run(server: ServerProcess, requests: int, concurrency: int, broker: str) -> dict[str, Any]:
    latencies: dict[str, list[float]] = {"provision": [], "bind": [], "counted": []}
    errors = 0
    pairs = requests // 2
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(pairs):
        queue.put_nowait(i)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency)) as session:
        base = f"{server.url}/{broker}/api/v1/service_instances"
        provision = PROVISION[broker]

        async def timed(kind: str, url: str, body: dict[str, Any]) -> None:
            nonlocal errors
            t0 = time.perf_counter()
            async with session.put(url, data=json.dumps(body), headers=AUTH) as resp:
                await resp.read()
                if resp.status >= 300:
                    errors += 1
            latencies[kind].append(time.perf_counter() - t0)

        async def worker() -> None:
            while not queue.empty():
                i = queue.get_nowait()
                sid = f"bench-{i}"
                await timed("provision", f"{base}/{sid}", provision)
                await timed("bind", f"{base}/{sid}/toolchains/tc-{i}", {"toolchain_credentials": "c"})

        started, cpu = time.perf_counter(), server.cpu_s()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed, cpu = time.perf_counter() - started, server.cpu_s() - cpu
        # MongoDB commands per request, counted on sequential requests of new instances, after the
        # service's background work of the load (a lazy release) has settled.
        counted = 20
        provision_ops = await _counted(
            server, [(f"{base}/count-{i}", provision) for i in range(counted)], timed
        )
        bind_ops = await _counted(
            server,
            [(f"{base}/count-{i}/toolchains/tc-{i}", {"toolchain_credentials": "c"}) for i in range(counted)],
            timed,
        )
    every = latencies["provision"] + latencies["bind"]
    return {
        "broker": broker,
        "server": "its own process (bench.broker_server)",
        "requests": len(every),
        "concurrency": concurrency,
        "errors": errors,
        "seconds": round(elapsed, 2),
        "requests_per_s": round(len(every) / elapsed, 1),
        "server_cpu_ms_per_request": round(cpu * 1000 / len(every), 2),
        "p50_ms": round(statistics.median(every) * 1000, 2),
        "p99_ms": round(_pct(every, 0.99), 2),
        "provision_p99_ms": round(_pct(latencies["provision"], 0.99), 2),
        "bind_p99_ms": round(_pct(latencies["bind"], 0.99), 2),
        "mongo_ops_per_provision": round(sum(provision_ops.values()) / counted, 2),
        "mongo_ops_per_bind": round(sum(bind_ops.values()) / counted, 2),
        "provision_ops_by_command": provision_ops,
        "bind_ops_by_command": bind_ops,
    }


async def _counted(
    server: ServerProcess,
    calls: list[tuple[str, dict[str, Any]]],
    timed: Callable[[str, str, dict[str, Any]], Awaitable[None]],
) -> dict[str, int]:
    """Commands the server sent for ``calls`` made one after the other (what a lazy release costs
    is included: the server settles its background work before each count, see ``settle``)."""
    await _settle(server)
    before = await server.commands()
    for url, body in calls:
        await timed("counted", url, body)
    await _settle(server)
    after = await server.commands()
    after.subtract(before)
    return {k: v for k, v in sorted(after.items()) if v}


async def _settle(server: ServerProcess) -> None:
    """Wait until the server's command count stops moving (its background work is done)."""
    last = -1
    while True:
        total = (await server.commands()).total()
        if total == last:
            return
        last = total
        await asyncio.sleep(1.0)  # over OUTBOX_RELEASE_DELAY_S: a pending release shows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--broker", choices=sorted(PROVISION), default="kabanero-broker")
    parser.add_argument("--profile", type=Path, help="cProfile the server process into this file")
    args = parser.parse_args()
    with (
        bench_infra("bench_broker") as infra,
        tempfile.TemporaryDirectory(prefix="bench-broker-") as tmp,
        broker_process(infra.mongodb_url, infra.amqp_url, Path(tmp), profile=args.profile) as server,
    ):
        result = asyncio.run(_run(server, args.requests, args.concurrency, args.broker))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
