"""The four services as processes through a MongoDB restart, then SIGTERM with RabbitMQ gone.

- MongoDB (``emulators.mongo`` with a file, so its data outlives the restart, as a real server's
  does) is killed and started again on its port while the cluster changes: no service exits,
  each says so in ``/readyz`` meanwhile, broker-api answers 503, and the change the watcher could
  not record is published once MongoDB is back (its namespace was left pending and retried).
- RabbitMQ becomes unreachable (every service reaches it through a proxy that is closed, so the
  machine's broker is never touched): each service still exits 0 on SIGTERM within its one
  shutdown deadline.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import signal
import time
import urllib.parse
import uuid
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from scripts.stack import SERVICES, Stack
from tests.conftest import AMQP_BASE, _mgmt
from tests.helpers import EventTap, wait_until

pytestmark = pytest.mark.e2e

SHUTDOWN_S = 6.0
MEDIATOR = "/apis/events.kabanero.io/v1alpha1/namespaces/kabanero/eventmediators/webhook"


class Cuttable:
    """A TCP proxy to RabbitMQ that can be cut: it stops listening and drops every connection."""

    def __init__(self, host: str, port: int) -> None:
        self._target = (host, port)
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self.port = 0

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = int(self._server.sockets[0].getsockname()[1])

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self._target)
        except OSError:
            writer.close()
            return
        self._writers |= {writer, up_writer}

        async def pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError):
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            dst.close()

        await asyncio.gather(pump(reader, up_writer), pump(up_reader, writer))

    async def cut(self) -> None:
        if self._server is not None:
            self._server.close()
        for w in self._writers:
            w.transport.abort()
        if self._server is not None:
            await self._server.wait_closed()


class OutageStack(Stack):
    """scripts/stack.py's stack with RabbitMQ behind the proxy and MongoDB persisted to a file."""

    def __init__(self, vhost: str, logs: Path, proxy: Cuttable) -> None:
        env = {name: {"SHUTDOWN_TIMEOUT_S": str(SHUTDOWN_S)} for name in SERVICES}
        # CONNECT_TIMEOUT_S is also MongoDB's server selection timeout: a write during the outage
        # fails after 5 s (not 30 s), so the namespace shows as pending while MongoDB is still gone.
        env["kabanero-watcher"] |= {
            "PUBLISH_RETRY_S": "0.5",
            "SNAPSHOT_INTERVAL_S": "300",
            "CONNECT_TIMEOUT_S": "5",
        }
        super().__init__(vhost, extra_env=env, logs=logs)
        self.proxy = proxy

    @property
    def direct_amqp_url(self) -> str:
        return super().amqp_url

    @property
    def amqp_url(self) -> str:
        parts = urllib.parse.urlsplit(self.direct_amqp_url)
        netloc = f"{parts.username}:{parts.password}@127.0.0.1:{self.proxy.port}"
        return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, "", ""))

    def spawn(self, name: str, args: list[str], env: dict[str, str] | None = None) -> None:
        if name == "mongo":
            args = [*args, "--file", str(self.logs / "mongo.db")]
        super().spawn(name, args, env)

    def services_alive(self) -> None:
        exited = {n: self.proc(n).poll() for n in SERVICES if self.proc(n).poll() is not None}
        assert not exited, f"exited: {exited}; see {self.logs}"

    def restart_mongo(self) -> None:
        index = next(i for i, (n, _) in enumerate(self.procs) if n == "mongo")
        self.procs[index] = ("mongo", self._popen("mongo", "ab"))


async def _readyz(http: aiohttp.ClientSession, url: str) -> tuple[int, dict[str, str]]:
    async with http.get(f"{url}/readyz", timeout=aiohttp.ClientTimeout(total=5)) as r:
        return r.status, (await r.json())["checks"]


async def test_mongodb_restart_then_sigterm_with_rabbitmq_gone(tmp_path: Path) -> None:
    target = urllib.parse.urlsplit(AMQP_BASE)
    proxy = Cuttable(target.hostname or "127.0.0.1", target.port or 5672)
    await proxy.start()
    vhost = f"kotc-test-outage-{uuid.uuid4().hex[:8]}"
    stack = OutageStack(vhost, tmp_path / "logs", proxy)
    try:
        await stack.start()
        async with (
            aiohttp.ClientSession() as http,
            EventTap(stack.direct_amqp_url, ("kabanero.trigger.*",)) as tap,
        ):
            await _mongodb_restart(stack, http, tap)
        await _sigterm_without_rabbitmq(stack)
    finally:
        await asyncio.to_thread(stack.stop)
        await proxy.cut()
        _mgmt("DELETE", f"vhosts/{urllib.parse.quote(vhost, safe='')}")


async def _mongodb_restart(stack: OutageStack, http: aiohttp.ClientSession, tap: EventTap) -> None:
    mongo = stack.proc("mongo")
    mongo.kill()
    await asyncio.to_thread(mongo.wait)
    # A cluster change while MongoDB is gone: the watcher cannot record it before publishing.
    async with http.get(f"{stack.url('kube')}{MEDIATOR}") as r:
        current = (await r.json())["spec"]["mediations"]
    release = {**current[0], "name": "release", "selector": {"urlPattern": "release"}}
    async with http.patch(
        f"{stack.url('kube')}{MEDIATOR}",
        data=json.dumps({"spec": {"mediations": [*current, release]}}),
        headers={"Content-Type": "application/merge-patch+json"},
    ) as r:
        r.raise_for_status()
    async with http.put(
        f"{stack.url('broker')}/kabanero-broker/api/v1/service_instances/outage-1",
        json={"service_id": "kabanero", "parameters": {"cluster": "default", "namespace": "kabanero"}},
        headers={
            "X-Broker-Api-Version": "2.12",
            "Authorization": "Basic "
            + base64.b64encode(f"kabanero-otc:{stack.broker_secret}".encode()).decode(),
        },
    ) as r:
        assert r.status == 503, await r.text()

    async def all_say_mongodb_down() -> bool:
        stack.services_alive()
        answers = [await _readyz(http, stack.url(port)) for port in SERVICES.values()]
        return all(status == 503 and checks["mongodb"].startswith("failing") for status, checks in answers)

    await wait_until(
        all_say_mongodb_down, timeout=30, interval=0.5, what="every /readyz reports MongoDB down"
    )
    await wait_until(
        lambda: _reconcile_failing(http, stack), timeout=20, interval=0.5, what="watcher: namespace pending"
    )

    stack.restart_mongo()

    async def all_ready() -> bool:
        stack.services_alive()
        answers = [await _readyz(http, stack.url(port)) for port in SERVICES.values()]
        return all(status == 200 for status, _ in answers)

    await wait_until(all_ready, timeout=60, interval=0.5, what="every service ready again")
    # The change made during the outage is published now (nothing was published before the kill).
    await tap.wait_for(1, routing_key="kabanero.trigger.created", timeout=30)
    stack.services_alive()


async def _reconcile_failing(http: aiohttp.ClientSession, stack: OutageStack) -> bool:
    _, checks = await _readyz(http, stack.url("watcher"))
    return checks.get("reconcile", "").startswith("failing")


async def _sigterm_without_rabbitmq(stack: OutageStack) -> None:
    await stack.proxy.cut()
    async with aiohttp.ClientSession() as http:

        async def all_say_rabbitmq_down() -> bool:
            answers = [await _readyz(http, stack.url(port)) for port in SERVICES.values()]
            return all(checks["rabbitmq"].startswith("failing") for _, checks in answers)

        await wait_until(all_say_rabbitmq_down, timeout=30, interval=0.5, what="every /readyz: RabbitMQ down")

    async def stop(name: str) -> tuple[str, float, int | None]:
        proc = stack.proc(name)
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        try:
            code: int | None = await asyncio.to_thread(proc.wait, SHUTDOWN_S + 30)
        except Exception:
            proc.kill()
            proc.wait()
            code = None
        return name, time.monotonic() - started, code

    results = await asyncio.gather(*(stop(name) for name in SERVICES))
    report: dict[str, Any] = {name: (round(took, 1), code) for name, took, code in results}
    print("shutdown with RabbitMQ gone (s, exit code):", report)
    # The deadline bounds the shutdown itself; process exit adds interpreter teardown on a busy machine.
    assert all(code == 0 for _, _, code in results), report
    assert all(took < SHUTDOWN_S + 4 for _, took, _ in results), report
