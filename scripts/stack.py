"""``make run`` / ``make demo``: the whole stack as local processes, no Docker (docs/architecture.md §7).

Starts the embedded MongoDB (``emulators.mongo``), the Kubernetes and OTC emulators, and the four
services, against the machine's RabbitMQ. ``run`` keeps them up and prints where to look; ``demo``
drives a full scenario through OTC's broker contract and the cluster, checks that OTC mirrors the
cluster with one write per change, prints a summary and exits 0 (1 if a check failed).
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
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, Literal

import aio_pika
import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from emulators.otc.platform import OtcPlatform
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
EVENTS_CRD = "/apis/events.kabanero.io/v1alpha1/namespaces/kabanero/eventmediators/webhook"
BROKERS: tuple[tuple[Literal["kabanero-broker", "kabanero-events-broker"], str], ...] = (
    ("kabanero-events-broker", "demo-events"),
    ("kabanero-broker", "demo-kabanero"),
)
CLUSTER = "default"  # the stack's one cluster (CLUSTER_NAME of its watcher, broker-api's ALLOWED_CLUSTERS)
# The consuming queues of docs/architecture.md §4, with the watcher's command queue of that cluster
# (kabanero-watcher.default.instances): the drain wait and the dead-letter summary cover it too.
QUEUES = tuple(with_owned_instances([CLUSTER]))
SERVICES = {  # process name -> its key in Stack.ports
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


class Stack:
    """Child processes with their logs in ``.run/``; stopped with SIGTERM, in reverse order."""

    def __init__(
        self,
        vhost: str,
        *,
        extra_env: dict[str, dict[str, str]] | None = None,
        logs: Path = LOGS,
        amqp_host: str | None = None,
    ) -> None:
        """``extra_env``: more environment per process name (e.g. short intervals for fault tests).
        ``amqp_host``: another broker (e.g. a private node for broker faults) whose ``vhost`` exists
        already; by default the machine's RabbitMQ, where the vhost is recreated empty.

        MongoDB (``emulators.mongo``) keeps its data in ``<logs>/mongo.sqlite``: a restart of the
        Mongo process loses nothing (memory-only, a restart would lose every record, ledger and
        outbox entry, and the services would re-create OTC tools they no longer know about). The
        file is started empty with each stack, as the OTC and Kubernetes emulators are.
        """
        self.vhost = vhost
        self.amqp_host = amqp_host or AMQP_HOST
        self.mongo_file = logs / "mongo.sqlite"
        self.procs: list[tuple[str, subprocess.Popen[bytes]]] = []
        self.specs: dict[str, tuple[list[str], dict[str, str]]] = {}
        self.extra_env = extra_env or {}
        self.logs = logs
        self.ports = {
            n: free_port() for n in ("mongo", "kube", "otc", "broker", "watcher", "writer", "linker")
        }
        self.broker_secret = secrets.token_urlsafe(24)
        self.credentials_key = base64.urlsafe_b64encode(os.urandom(32)).decode()
        self.logs.mkdir(parents=True, exist_ok=True)

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
        if name in SERVICES:
            await wait_http(f"{self.url(SERVICES[name])}/readyz", name, timeout=60)

    def common_env(self, http_port: int) -> dict[str, str]:
        return {
            "AMQP_URL": self.amqp_url,
            "MONGODB_URL": f"mongodb://127.0.0.1:{self.ports['mongo']}/kabanero_otc?directConnection=true",
            "HTTP_PORT": str(http_port),
            "HTTP_HOST": "127.0.0.1",
        }

    async def start(self) -> None:
        if self.amqp_host == AMQP_HOST:
            await reset_vhost(self.vhost)
        for stale in self.logs.glob("mongo.sqlite*"):
            stale.unlink()
        self.spawn(
            "mongo",
            ["emulators.mongo", "--port", str(self.ports["mongo"]), "--file", str(self.mongo_file)],
        )
        self.spawn(
            "kube",
            [
                "emulators.kube",
                "--port",
                str(self.ports["kube"]),
                "--crds",
                *TEKTON_CRDS,
                "--seed",
                str(SEED),
                str(TEKTON_SEED),
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
        await wait_http(f"{self.url('kube')}/version", "kube emulator")
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
                "BROKER_PUBLIC_URL": self.url("broker"),  # the dashboards of create=true services
            },
        )
        self.spawn(
            "kabanero-watcher",
            ["services.kabanero_watcher"],
            {
                **self.common_env(self.ports["watcher"]),
                "KUBE_API_URL": self.url("kube"),
                "CLUSTER_NAME": CLUSTER,
                "SNAPSHOT_INTERVAL_S": "30",
                # The Kubernetes emulator refuses objects in a missing namespace (as a real API
                # server does): the demo's create=true service gets its namespace made for it.
                "CREATE_NAMESPACES": "true",
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
        for name in ("broker", "watcher", "writer", "linker"):
            await wait_http(f"{self.url(name)}/readyz", name, timeout=60)

    async def queue_depths(self) -> dict[str, int]:
        """Ready messages per queue of the topology: consuming, delay and dead-letter queues."""
        conn = await aio_pika.connect(self.amqp_url)
        try:
            channel = await conn.channel()
            out = {}
            for q in QUEUES:
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
        for name, port in SERVICES.items():
            if port in self.ports and any(n == name and p.poll() is None for n, p in self.procs):
                value = await self.metric(http, port, "kotc_consumer_held")
                if value is not None:
                    out[name] = value
        return out

    async def quiet(self, timeout: float = 45.0, *, stable_polls: int = 3) -> None:
        """Wait until no message waits in a consuming or delay queue, and no service holds one
        unsettled, on ``stable_polls`` polls in a row (the consumers have caught up, retries included)."""
        deadline = time.monotonic() + timeout
        calm = 0
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as http:
            while calm < stable_polls:
                depths = await self.queue_depths()
                busy = any(n for q, n in depths.items() if not q.endswith(".dead"))
                held = {} if busy else await self.held(http)
                calm = 0 if busy or any(held.values()) else calm + 1
                if time.monotonic() > deadline:
                    raise RuntimeError(f"queues not drained after {timeout:.0f}s: {depths}, held: {held}")
                await asyncio.sleep(0.2)

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


async def _is(status: Awaitable[int], expected: int) -> bool:
    return await status == expected


async def _is_created(outcome: Awaitable[str | None]) -> bool:
    return (await outcome or "").startswith("created")


async def wait_for(check: Callable[[], Awaitable[bool]], what: str, timeout: float = 45.0) -> float:
    started = time.monotonic()
    while not await check():
        if time.monotonic() - started > timeout:
            raise RuntimeError(f"timed out waiting for: {what}")
        await asyncio.sleep(0.2)
    return time.monotonic() - started


class Demo:
    """The scenario: OTC provisions and binds both services, the cluster changes, OTC follows."""

    def __init__(
        self, stack: Stack, session: aiohttp.ClientSession, *, echo: Callable[[str], None] | None = None
    ) -> None:
        """``echo``: where to print each step with the toolchain's tools as it completes."""
        self.stack = stack
        self.http = session
        self.otc = stack.url("otc")
        self.toolchain = ""
        self.rows: list[tuple[str, str, str]] = []
        self.echo = echo

    async def tools(self, tool_type: str | None = None) -> list[dict[str, Any]]:
        async with self.http.get(f"{self.otc}/_emulator/state") as r:
            state = await r.json()
        (tc,) = [t for t in state["toolchains"] if t["id"] == self.toolchain]
        return [t for t in tc["tools"] if tool_type is None or t["tool_type_id"] == tool_type]

    async def writes(self) -> int:
        async with self.http.get(f"{self.otc}/_emulator/calls") as r:
            calls = (await r.json())["calls"]
        return sum(1 for c in calls if c["method"] in ("POST", "PATCH", "DELETE") and "/tools" in c["path"])

    async def settle(
        self, what: str, action: Awaitable[None], check: Callable[[list[dict[str, Any]]], bool]
    ) -> None:
        """Do ``action``, wait until OTC's tools pass ``check``, record the time and the OTC writes."""
        before = await self.writes()
        await action

        async def ok() -> bool:
            self.stack.check_alive()
            return check(await self.tools())

        took = await wait_for(ok, what)
        await self.stack.quiet()  # retries and stragglers land before the write count below
        tools = await self.tools()
        if not check(tools):
            raise RuntimeError(f"state changed again after: {what}")
        self.rows.append((what, f"{took:.1f}s", str(await self.writes() - before)))
        if self.echo is not None:
            self.echo(tools_by_kind(len(self.rows), self.rows[-1], tools))

    async def kube_patch(self, body: dict[str, Any]) -> None:
        async with self.http.patch(
            f"{self.stack.url('kube')}{EVENTS_CRD}",
            data=json.dumps(body),
            headers={"Content-Type": "application/merge-patch+json"},
        ) as r:
            r.raise_for_status()

    async def mediations(self) -> list[dict[str, Any]]:
        async with self.http.get(f"{self.stack.url('kube')}{EVENTS_CRD}") as r:
            return list((await r.json())["spec"]["mediations"])

    async def run(self) -> None:
        async with self.http.post(f"{self.otc}/_emulator/toolchains", json={"name": "demo-toolchain"}) as r:
            self.toolchain = (await r.json())["id"]
        params = {"cluster": "default", "namespace": "kabanero"}

        def counts(trig: int, gh: int | None) -> Callable[[list[dict[str, Any]]], bool]:
            def check(tools: list[dict[str, Any]]) -> bool:
                n_trig = sum(t["tool_type_id"] == "customtool" for t in tools)
                n_gh = sum(t["tool_type_id"] == "githubconsolidated" for t in tools)
                return bool(n_trig == trig and (n_gh >= 1 if gh is None else n_gh == gh))

            return check

        async with OtcPlatform(self.stack.url("broker"), BROKER_ID, self.stack.broker_secret) as otc:

            async def provision_and_bind() -> None:
                for broker, sid in BROKERS:
                    reply = await otc.provision(broker, sid, parameters=params)
                    assert reply.status == 200, reply
                    reply = await otc.bind(broker, sid, self.toolchain)
                    assert reply.status == 204, reply

            async def expect(status: int, call: Awaitable[Any]) -> None:
                reply = await call
                assert reply.status == status, reply

            # deploy/samples/kabanero-sample.yaml yields 2 triggers and 4 repositories (its header).
            await self.settle(
                "OTC: provision + bind both services",
                provision_and_bind(),
                counts(2, 4),
            )
            gh = sum(t["tool_type_id"] == "githubconsolidated" for t in await self.tools())
            current = await self.mediations()
            release = {**current[0], "name": "release", "selector": {"urlPattern": "release"}}
            await self.settle(
                "cluster: mediation 'release' added",
                self.kube_patch({"spec": {"mediations": [*current, release]}}),
                counts(3, gh),
            )
            await self.settle(
                "cluster: mediation 'gitops' removed",
                self.kube_patch(
                    {"spec": {"mediations": [m for m in current if m["name"] != "gitops"] + [release]}}
                ),
                counts(2, gh),
            )
            await self.settle(
                "cluster: status-only change (expect 0 writes)",
                self.kube_patch({"status": {"summary": [{"operation": "noop"}]}}),
                counts(2, gh),
            )
            await self.settle(
                "OTC: unbind the Kabanero Events service",
                expect(204, otc.unbind("kabanero-events-broker", "demo-events", self.toolchain)),
                counts(0, gh),
            )
            await self.settle(
                "OTC: delete the Kabanero service",
                expect(204, otc.deprovision("kabanero-broker", "demo-kabanero")),
                counts(0, 0),
            )
            await self.auto_events(otc, counts)
            await self.create_instance(otc, counts)

    async def auto_events(
        self, otc: OtcPlatform, counts: Callable[[int, int | None], Callable[[list[dict[str, Any]]], bool]]
    ) -> None:
        """``parameters.events: auto``: binding adds a Kabanero Events tool, unbinding removes it."""
        sid, params = "demo-kabanero-auto", {"cluster": "default", "namespace": "kabanero", "events": "auto"}

        def with_events(n: int, trig: int, gh: int) -> Callable[[list[dict[str, Any]]], bool]:
            def check(tools: list[dict[str, Any]]) -> bool:
                return (
                    counts(trig, gh)(tools)
                    and sum(t["tool_type_id"] == "kabanero-events" for t in tools) == n
                )

            return check

        async def provision_and_bind() -> None:
            assert (await otc.provision("kabanero-broker", sid, parameters=params)).status == 200
            assert (await otc.bind("kabanero-broker", sid, self.toolchain)).status == 204

        async def unbind() -> None:
            assert (await otc.unbind("kabanero-broker", sid, self.toolchain)).status == 204

        await self.settle(
            "OTC: events=auto Kabanero service bound (+Events tool, 2 trig.)",
            provision_and_bind(),
            with_events(1, 2, 4),
        )
        await self.settle(
            "OTC: unbind it (its Events tool and all it brought go)", unbind(), with_events(0, 0, 0)
        )

    async def create_instance(
        self, otc: OtcPlatform, counts: Callable[[int, int | None], Callable[[list[dict[str, Any]]], bool]]
    ) -> None:
        """``parameters.create: true``: the watcher creates the Kabanero CR (owned, marked); its stack
        hub reaches OTC as a GitHub tool; deprovisioning deletes the CR and the tool goes."""
        sid = "demo-kabanero-create"
        hub = "https://github.com/demo-org/demo-stacks/releases/download/0.9.0/kabanero-index.yaml"
        spec = {"version": "0.9.2", "stacks": {"repositories": [{"name": "demo", "https": {"url": hub}}]}}
        params = {"cluster": "default", "namespace": "team-demo", "create": True, "instance": spec}
        cr = f"{self.stack.url('kube')}/apis/kabanero.io/v1alpha2/namespaces/team-demo/kabaneros/kabanero"

        async def cr_status() -> int:
            async with self.http.get(cr) as r:
                return r.status

        dashboard: list[str] = []

        async def create_and_bind() -> None:
            reply = await otc.provision("kabanero-broker", sid, parameters=params)
            assert reply.status == 200, reply
            dashboard.append(reply.body["dashboard_url"])
            assert (await otc.bind("kabanero-broker", sid, self.toolchain)).status == 204

        async def dashboard_outcome() -> str | None:
            async with self.http.get(dashboard[0], headers={"Accept": "application/json"}) as r:
                shown = (await r.json())["outcome"] if r.status == 200 else None
            return f"{shown['outcome']}: {shown['message']}" if shown else None

        async def deprovision() -> None:
            assert (await otc.deprovision("kabanero-broker", sid)).status == 204

        await self.settle(
            "OTC: create=true service: CR created, its stack hub linked", create_and_bind(), counts(0, 1)
        )
        assert await cr_status() == 200, "the Kabanero CR the service created"
        await wait_for(lambda: _is_created(dashboard_outcome()), "the outcome on the service's dashboard")
        if self.echo is not None:
            self.echo(f"    service dashboard {dashboard[0]}\n      {await dashboard_outcome()}")
        await self.settle(
            "OTC: delete it (its CR is deleted, the GitHub tool goes)", deprovision(), counts(0, 0)
        )
        await wait_for(lambda: _is(cr_status(), 404), "the created CR deleted")

    async def dead_letters(self) -> dict[str, int]:
        vhost = urllib.parse.quote(self.stack.vhost, safe="")
        out = {}
        for q in QUEUES:
            info = await mgmt("GET", f"queues/{vhost}/{urllib.parse.quote(q + '.dead', safe='')}")
            out[q + ".dead"] = int(info.get("messages", 0))
        return out


TOOL_KINDS = {"customtool": "Kabanero Event Trigger", "githubconsolidated": "GitHub"}


def tools_by_kind(number: int, row: tuple[str, str, str], tools: list[dict[str, Any]]) -> str:
    """One step as it completed: what happened, then every tool of the toolchain by kind and name."""
    what, took, writes = row
    lines = [f"\n[{number}] {what}  (converged in {took}, {writes} OTC writes)"]
    by_kind: dict[str, list[str]] = {}
    for tool in tools:
        by_kind.setdefault(tool["tool_type_id"], []).append(str(tool.get("name") or tool["id"]))
    if not by_kind:
        lines.append("    toolchain: no tools")
    for kind, names in sorted(by_kind.items()):
        label = f"{TOOL_KINDS.get(kind, kind)} ({kind}), {len(names)}"
        lines += [f"    {label}:"] + [f"      - {name}" for name in sorted(names)]
    return "\n".join(lines)


def cli_status(stack: Stack) -> str:
    """``kabanero-otc status`` of this stack, as an operator would run it (its own run file)."""
    run_file = stack.logs / f"demo-{stack.vhost}.json"
    fd = os.open(run_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(stack.describe(), f)
    try:
        proc = subprocess.run(  # noqa: S603 - our own console script
            [str(Path(sys.executable).parent / "kabanero-otc"), "--run-file", str(run_file), "status"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    finally:
        run_file.unlink(missing_ok=True)
    return f"$ kabanero-otc status   (exit {proc.returncode})\n{proc.stdout}{proc.stderr}"


async def demo(vhost: str) -> int:
    stack = Stack(vhost)
    print("kabanero-otc demo: OTC mirrors the cluster; after each step, the toolchain's tools")
    try:
        await stack.start()
        async with aiohttp.ClientSession() as session:
            scenario = Demo(stack, session, echo=print)
            await scenario.run()
            dead = await scenario.dead_letters()
        status = await asyncio.to_thread(cli_status, stack)
    except Exception as exc:
        print(f"\nDEMO FAILED: {exc}\nLogs: {LOGS}/", file=sys.stderr)
        stack.stop()
        return 1
    stack.stop()
    print("\nsummary")
    print(f"{'step':<66} {'converged':>9} {'OTC writes':>10}")
    for what, took, writes in scenario.rows:
        print(f"{what:<66} {took:>9} {writes:>10}")
    print(f"dead letters: {dead}")
    print(f"logs: {LOGS}/  (RabbitMQ vhost '{stack.vhost}' at http://127.0.0.1:15672, guest/guest)")
    print(f"\n{status}")
    return 0 if not any(dead.values()) else 1


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
        sys.exit(asyncio.run(demo(args.vhost or "kabanero-otc-demo")))
    sys.exit(asyncio.run(run(args.vhost or "kabanero-otc", args.run_dir.resolve())))


if __name__ == "__main__":
    main()
