"""Bounded load on broker-api: provision + bind pairs against an in-process service on loopback.

``python -m bench.broker_load [--requests 2000] [--concurrency 32] [--broker tekton-broker]``: starts ``emulators.mongo``
(unless MONGODB_URL is set) and uses the machine's RabbitMQ (AMQP_URL) in a throw-away vhost,
then measures requests/s and p50/p99 latency of PUT service_instances and PUT toolchains.
Prints the figures as JSON (``make bench`` gathers them into bench/results.json).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import statistics
import time
from pathlib import Path
from typing import Any

import aiohttp
from cryptography.fernet import Fernet

from bench.common import bench_infra
from bench.counting import COUNTER, since
from services.broker_api.app import build
from services.broker_api.settings import Settings

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


async def _run(
    mongodb_url: str, amqp_url: str, requests: int, concurrency: int, broker: str = "kabanero-broker"
) -> dict[str, Any]:
    settings = Settings(
        broker_id="bench",
        broker_secret="bench-secret",  # type: ignore[arg-type]
        credentials_key=Fernet.generate_key().decode(),  # type: ignore[arg-type]
        mongodb_url=mongodb_url,  # type: ignore[arg-type]
        amqp_url=amqp_url,  # type: ignore[arg-type]
        http_host="127.0.0.1",
        http_port=0,
        outbox_drain_interval_s=3600,  # the periodic pass is no request's work: counted apart below
    )
    latencies: dict[str, list[float]] = {"provision": [], "bind": [], "counted": []}
    errors = 0
    pairs = requests // 2
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(pairs):
        queue.put_nowait(i)
    async with (
        build(settings) as rt,
        aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency)) as session,
    ):
        base = f"{rt.url}/{broker}/api/v1/service_instances"
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

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
        # MongoDB commands per request, counted on sequential requests of new instances.
        counted = 20
        ops = COUNTER.snapshot()
        for i in range(counted):
            await timed("counted", f"{base}/count-{i}", provision)
        provision_ops = since(ops)
        ops = COUNTER.snapshot()
        for i in range(counted):
            await timed("counted", f"{base}/count-{i}/toolchains/tc-{i}", {"toolchain_credentials": "c"})
        bind_ops = since(ops)
    every = latencies["provision"] + latencies["bind"]
    return {
        "broker": broker,
        "requests": len(every),
        "concurrency": concurrency,
        "errors": errors,
        "seconds": round(elapsed, 2),
        "requests_per_s": round(len(every) / elapsed, 1),
        "p50_ms": round(statistics.median(every) * 1000, 2),
        "p99_ms": round(_pct(every, 0.99), 2),
        "provision_p99_ms": round(_pct(latencies["provision"], 0.99), 2),
        "bind_p99_ms": round(_pct(latencies["bind"], 0.99), 2),
        "mongo_ops_per_provision": round(sum(provision_ops.values()) / counted, 2),
        "mongo_ops_per_bind": round(sum(bind_ops.values()) / counted, 2),
        "provision_ops_by_command": provision_ops,
        "bind_ops_by_command": bind_ops,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--broker", choices=sorted(PROVISION), default="kabanero-broker")
    args = parser.parse_args()
    with bench_infra("bench_broker") as infra:
        result = asyncio.run(
            _run(infra.mongodb_url, infra.amqp_url, args.requests, args.concurrency, args.broker)
        )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
