"""The stack driver: everything that drives a running stack (``scripts/stack.py``'s processes) from
outside, as OTC, the cluster's users and an operator would. One driver serves ``make demo``
(``scripts/demo.py``), the benchmarks (``bench/chaos.py``, ``bench/stack_scale.py``,
``bench/stack_latency.py``) and the e2e tests, so they agree on what they measure:

- OTC's side of the broker contract (provision, bind, unbind, delete through ``OtcPlatform``, retried
  on 5xx and refused connections as OTC retries), new toolchains, OTC's tools, its call log;
- the cluster: any object of any cluster's Kubernetes emulator (merge patches, status-only patches),
  the seeded Kabanero namespace's mediations by revision, the emulators' fault switches;
- the product's state: quiescence (no message waiting or held), dead letters (counted, or drained
  with their reasons).

**An OTC write** is one thing everywhere (:func:`is_tool_write`): a create, update or delete of a
toolchain's tool that OTC committed, i.e. answered below 300, or committed and then dropped the
answer (the emulator's commit-then-drop). A refused or failed call changed nothing and is no write.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import time
import urllib.parse
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self

import aio_pika
import aiohttp
from aio_pika.abc import AbstractIncomingMessage, AbstractRobustConnection

from emulators.otc.platform import BrokerName, BrokerReply, OtcPlatform
from scripts.expected import CRS, connection, differences, expected_repos, expected_triggers, mediation
from scripts.stack import API_KEY, BROKER_ID, Stack, cluster_suffix, mgmt
from shared.amqp.topology import EXCHANGE
from shared.events import CloudEvent

BROKERS: tuple[tuple[BrokerName, str], ...] = (
    ("kabanero-events-broker", "demo-events"),
    ("kabanero-broker", "demo-kabanero"),
)
"""The two Kabanero services (broker, instance id) the demo and the fault tests provision."""
TOOL_WRITE_METHODS = frozenset({"POST", "PATCH", "DELETE"})
TEKTON_GROUP = "/apis/tekton.dev/v1beta1"
TRIGGERS_GROUP = "/apis/triggers.tekton.dev/v1alpha1"
ROUTES_GROUP = "/apis/route.openshift.io/v1"


def is_tool_write(call: dict[str, Any]) -> bool:
    """The one definition of an OTC write (a record of the OTC emulator's call log): a POST, PATCH
    or DELETE of a toolchain's tools that OTC committed (status < 300, or dropped after the commit)."""
    if call["method"] not in TOOL_WRITE_METHODS or "/tools" not in call["path"]:
        return False
    status = call.get("status")
    return bool(call.get("dropped")) or (status is not None and status < 300)


def tool_kind(tool: dict[str, Any]) -> str:
    """What a tool is to a user: a custom tool by its ``type`` (Kabanero Event Trigger, Tekton
    Pipeline, Tekton EventListener), any other by its tool type."""
    if tool["tool_type_id"] == "customtool":
        return str((tool.get("parameters") or {}).get("type") or "customtool")
    return str(tool["tool_type_id"])


TRIGGER = "Kabanero Event Trigger"
PIPELINE_CARD = "Tekton Pipeline"
LISTENER_CARD = "Tekton EventListener"
GITHUB = "githubconsolidated"
EVENTS_TOOL = "kabanero-events"


def count(tools: list[dict[str, Any]], kind: str) -> int:
    return sum(tool_kind(t) == kind for t in tools)


class EventTap:
    """A private queue bound to the events exchange: every event that matches, and when it arrived
    (wall clock), as any consumer of the exchange sees it."""

    def __init__(self, amqp_url: str, patterns: tuple[str, ...] = ("#",), exchange: str = EXCHANGE) -> None:
        self._url = amqp_url
        self._patterns = patterns
        self._exchange = exchange
        self._conn: AbstractRobustConnection | None = None
        self.events: list[CloudEvent] = []
        self.messages: list[AbstractIncomingMessage] = []
        self.arrivals: list[float] = []

    async def __aenter__(self) -> Self:
        self._conn = await aio_pika.connect_robust(self._url)
        channel = await self._conn.channel()
        exchange = await channel.declare_exchange(self._exchange, aio_pika.ExchangeType.TOPIC, durable=True)
        queue = await channel.declare_queue(exclusive=True, auto_delete=True)
        for pattern in self._patterns:
            await queue.bind(exchange, routing_key=pattern)
        await queue.consume(self._on_message, no_ack=True)
        return self

    async def _on_message(self, message: AbstractIncomingMessage) -> None:
        self.arrivals.append(time.time())
        self.messages.append(message)
        self.events.append(CloudEvent.model_validate_json(message.body))

    async def __aexit__(self, *exc: object) -> None:
        if self._conn is not None:
            await self._conn.close()

    def of_type(self, routing_key: str) -> list[CloudEvent]:
        return [e for e in self.events if e.routing_key == routing_key]


class DriverError(RuntimeError):
    """A call the driver made was refused, or a wait ran out."""


async def wait_for(
    check: Callable[[], Awaitable[bool]], what: str, timeout: float = 45.0, interval: float = 0.2
) -> float:
    """Seconds until ``check`` holds (``DriverError`` after ``timeout``)."""
    started = time.monotonic()
    while not await check():
        if time.monotonic() - started > timeout:
            raise DriverError(f"timed out after {timeout:g}s waiting for: {what}")
        await asyncio.sleep(interval)
    return time.monotonic() - started


@dataclass(frozen=True)
class DeadLetter:
    queue: str
    message_id: str
    type: str
    reason: str
    error: str


class Driver:
    """HTTP and AMQP access to one running stack: OTC, the clusters, the queues."""

    def __init__(self, stack: Stack, http: aiohttp.ClientSession, *, toolchain: str = "") -> None:
        self.stack = stack
        self.http = http
        self.toolchain = toolchain
        """The toolchain :meth:`tools` reads by default."""
        self.revs: dict[str, int] = {}
        """The mediations of the seeded EventMediator this driver manages: name -> revision."""
        self._platform: OtcPlatform | None = None
        self._token = ""
        self.url_secret = ""
        """When set, a credential the cluster's URLs carry (every EventConnections destination's
        ``?access_token=``, the userinfo of :meth:`add_pipeline_repo`'s ``credentials`` repository):
        one that must never leave the cluster."""

    async def close(self) -> None:
        if self._platform is not None:
            await self._platform.close()
            self._platform = None

    # --- plain HTTP --------------------------------------------------------------------------

    async def request(self, method: str, url: str, body: Any = None, **kw: Any) -> Any:
        """The JSON answer (None for another body); ``DriverError`` on a status of 300 or more."""
        async with self.http.request(method, url, json=body, **kw) as r:
            if r.status >= 300:
                raise DriverError(f"{method} {url}: {r.status} {await r.text()}")
            return await r.json() if r.content_type == "application/json" else None

    async def get(self, url: str) -> tuple[int, Any]:
        """(status, JSON or None) of a GET, whatever the status."""
        async with self.http.get(url) as r:
            return r.status, (await r.json() if r.content_type == "application/json" else None)

    # --- the clusters ------------------------------------------------------------------------

    def kube_url(self, path: str, cluster: str | None = None) -> str:
        """``path`` (or the name of a seeded object in ``scripts.expected.CRS``) at a cluster's API."""
        kube = "kube" + cluster_suffix(cluster or self.stack.clusters[0])
        return self.stack.url(kube) + CRS.get(path, path)

    async def kube(self, method: str, path: str, body: Any = None, *, cluster: str | None = None) -> Any:
        """One Kubernetes API call; a PATCH is a JSON merge patch."""
        url = self.kube_url(path, cluster)
        if method != "PATCH":
            return await self.request(method, url, body)
        headers = {"Content-Type": "application/merge-patch+json"}
        async with self.http.patch(url, data=json.dumps(body), headers=headers) as r:
            if r.status != 200:
                raise DriverError(f"PATCH {url}: {r.status} {await r.text()}")
            return await r.json()

    async def kube_status(self, path: str, status: dict[str, Any], *, cluster: str | None = None) -> None:
        """A status-only change (the ``/status`` subresource): nothing a user sees in OTC changes."""
        await self.kube("PATCH", f"{CRS.get(path, path)}/status", {"status": status}, cluster=cluster)

    async def kube_fault(
        self, name: str, body: dict[str, Any] | None = None, *, cluster: str | None = None
    ) -> None:
        await self.request("POST", self.kube_url(f"/_emulator/{name}", cluster), body or {})

    async def watching(self, streams: int = 3, *, cluster: str | None = None) -> None:
        """The (new) leading watcher of the cluster has at least ``streams`` watch streams open."""

        async def open_streams() -> bool:
            state = await self.request("GET", self.kube_url("/_emulator/state", cluster))
            return int(state["watches"]["open"]) >= streams

        await wait_for(open_streams, "open watch streams", timeout=20)

    # The seeded Kabanero namespace: mediations m* with one EventConnections entry each.

    async def set_mediations(
        self, objects: tuple[str, ...] = ("mediator", "connections"), **changes: int | None
    ) -> None:
        """Set (revision) or remove (None) mediations, then write the mediator and its connections."""
        for name, rev in changes.items():
            if rev is None:
                self.revs.pop(name, None)
            else:
                self.revs[name] = rev
        if "mediator" in objects:
            mediations = [mediation(n, r) for n, r in self.revs.items()]
            await self.kube("PATCH", "mediator", {"spec": {"mediations": mediations}})
        if "connections" in objects:
            conns = [connection(n, r) for n, r in self.revs.items()]
            if self.url_secret:
                for conn in conns:
                    for to in conn["to"]:
                        for h in to["https"]:
                            h["url"] += f"?access_token={self.url_secret}"
            await self.kube("PATCH", "connections", {"spec": {"connections": conns}})

    async def add_pipeline_repo(self, repo: str, *, credentials: bool = False) -> None:
        """The seeded instance's pipelines get one more repository (one more GitHub tool); with
        ``credentials``, its archive URL carries :attr:`url_secret` as userinfo."""
        pipelines = (await self.kube("GET", "kabanero"))["spec"]["stacks"]["pipelines"]
        userinfo = f"chaos:{self.url_secret}@" if credentials and self.url_secret else ""
        url = f"https://{userinfo}github.com/acme/{repo}/releases/download/1.0.0/{repo}.tar.gz"
        pipelines.append({"id": repo, "sha256": uuid.uuid4().hex * 2, "https": {"url": url}})
        await self.kube("PATCH", "kabanero", {"spec": {"stacks": {"pipelines": pipelines}}})

    async def desired(self) -> tuple[dict[str, list[str]], set[str]]:
        """(mediation -> destinations, repositories) of the seeded namespace, by the user-visible rules."""
        triggers = expected_triggers(
            await self.kube("GET", "mediator"), await self.kube("GET", "connections")
        )
        repos = expected_repos(
            await self.kube("GET", "kabanero"),
            (await self.kube("GET", "stacks"))["items"],
            await self.kube("GET", "gitops-map"),
        )
        return triggers, repos

    async def differences(self) -> list[str]:
        """How the toolchain's tools differ from the seeded namespace's desired tools."""
        triggers, repos = await self.desired()
        return differences(await self.tools(), triggers, repos)

    async def converged(self, what: str, timeout: float) -> None:
        """Wait until :meth:`differences` is empty (``DriverError`` naming the last ones)."""
        last: list[str] = []

        async def check() -> bool:
            self.stack.check_alive()
            last[:] = await self.differences()
            return not last

        try:
            await wait_for(check, what, timeout=timeout, interval=0.3)
        except DriverError:
            raise DriverError(f"{what}: not converged after {timeout}s: {last}") from None

    # --- OTC ---------------------------------------------------------------------------------

    @property
    def otc(self) -> str:
        return self.stack.url("otc")

    @property
    def platform(self) -> OtcPlatform:
        """OTC's side of the broker contract, at this stack's broker-api (opened on first use)."""
        if self._platform is None:
            self._platform = OtcPlatform(self.stack.url("broker"), BROKER_ID, self.stack.broker_secret)
        return self._platform

    async def broker(
        self, call: Callable[[OtcPlatform], Awaitable[BrokerReply]], expect: int, attempts: int = 60
    ) -> BrokerReply:
        """A broker call, retried as OTC retries it (5xx or no connection: broker-api may be
        restarting, or its store too busy to answer in time; either commits nothing)."""
        reply: BrokerReply | None = None
        for _ in range(attempts):
            with contextlib.suppress(aiohttp.ClientError, OSError):
                reply = await call(self.platform)
                if reply.status < 500:
                    break
            await asyncio.sleep(1.0)
        if reply is None or reply.status != expect:
            raise DriverError(f"broker answered {reply}, expected {expect}")
        return reply

    async def provision(
        self, broker: BrokerName, sid: str, parameters: dict[str, Any], **kw: Any
    ) -> BrokerReply:
        return await self.broker(lambda p: p.provision(broker, sid, parameters=parameters, **kw), 200)

    async def bind(self, broker: BrokerName, sid: str, toolchain: str | None = None, **kw: Any) -> None:
        await self.broker(lambda p: p.bind(broker, sid, toolchain or self.toolchain, **kw), 204)

    async def unbind(self, broker: BrokerName, sid: str, toolchain: str | None = None) -> None:
        await self.broker(lambda p: p.unbind(broker, sid, toolchain or self.toolchain), 204)

    async def deprovision(self, broker: BrokerName, sid: str) -> None:
        await self.broker(lambda p: p.deprovision(broker, sid), 204)

    async def provision_and_bind(
        self, broker: BrokerName, sid: str, parameters: dict[str, Any], toolchain: str | None = None
    ) -> BrokerReply:
        reply = await self.provision(broker, sid, parameters)
        await self.bind(broker, sid, toolchain)
        return reply

    async def new_toolchain(self, name: str) -> str:
        """A toolchain made in OTC (the emulator's control API): its id."""
        return str((await self.request("POST", f"{self.otc}/_emulator/toolchains", {"name": name}))["id"])

    async def otc_faults(self, config: dict[str, Any] | None) -> None:
        """The OTC emulator's faults (``None``: none)."""
        url = f"{self.otc}/_emulator/faults"
        await (self.request("POST", url, config) if config else self.request("DELETE", url))

    async def tools_by_toolchain(self) -> dict[str, list[dict[str, Any]]]:
        """Every toolchain's tools, by toolchain id."""
        state = await self.request("GET", f"{self.otc}/_emulator/state")
        return {t["id"]: list(t["tools"]) for t in state["toolchains"]}

    async def tools(self, toolchain: str | None = None) -> list[dict[str, Any]]:
        return (await self.tools_by_toolchain())[toolchain or self.toolchain]

    async def calls(self, since: int = 0) -> tuple[int, list[dict[str, Any]]]:
        """(the call log's length, the OTC writes since index ``since``)."""
        log = await self.request("GET", f"{self.otc}/_emulator/calls?since={since}")
        return int(log["total"]), [c for c in log["calls"] if is_tool_write(c)]

    async def call_log(self, since: int = 0) -> list[dict[str, Any]]:
        """Every call OTC got since index ``since``, writes or not."""
        return list((await self.request("GET", f"{self.otc}/_emulator/calls?since={since}"))["calls"])

    async def mark(self) -> int:
        """The call log's length now: count writes since it with :meth:`writes_since`."""
        return (await self.calls(1 << 62))[0]

    async def writes_since(self, mark: int) -> int:
        return len((await self.calls(mark))[1])

    async def otc_api(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        """The Toolchain API as a user calls it (an IAM token from the API key): (status, JSON)."""
        for _ in range(2):
            if not self._token:
                async with self.http.post(
                    f"{self.otc}/identity/token",
                    data={"grant_type": "urn:ibm:params:oauth:grant-type:apikey", "apikey": API_KEY},
                ) as r:
                    self._token = (await r.json())["access_token"]
            headers = {"Authorization": f"Bearer {self._token}"}
            async with self.http.request(method, self.otc + path, json=body, headers=headers) as r:
                if r.status == 401:  # the token expired: a new one, once
                    self._token = ""
                    continue
                return r.status, await r.json() if r.content_type == "application/json" else None
        raise DriverError(f"{method} {path}: 401 with a new token")

    # --- the product's state -----------------------------------------------------------------

    async def quiet(self, timeout: float = 45.0) -> None:
        """No message waits in a consuming or retry queue, none is held (the consumers caught up)."""
        await self.stack.quiet(timeout)

    async def processed(self, port: str, queue: str) -> int:
        """Messages the service (its key in ``Stack.ports``) consumed from ``queue`` since it started."""
        return int(await self.stack.metric(self.http, port, "kotc_messages_total", queue=queue) or 0)

    async def dead_letter_counts(self) -> dict[str, int]:
        """Messages in each dead-letter queue (``<queue>.dead``), in the stack's queue order."""
        depths = await self.stack.queue_depths()
        return {f"{q}.dead": depths[f"{q}.dead"] for q in self.stack.queues}

    async def drain_dead_letters(self) -> list[DeadLetter]:
        """Everything in the dead-letter queues, with its reason; the queues are emptied."""
        out = []
        conn = await aio_pika.connect(self.stack.amqp_url)
        try:
            channel = await conn.channel()
            for q in self.stack.queues:
                queue = await channel.declare_queue(f"{q}.dead", passive=True)
                while (msg := await queue.get(fail=False, no_ack=True)) is not None:
                    headers = msg.headers or {}
                    out.append(
                        DeadLetter(
                            queue=q,
                            message_id=msg.message_id or "",
                            type=str(msg.type),
                            reason=str(headers.get("x-kotc-dead-reason", "broker: delivery limit")),
                            error=str(headers.get("x-kotc-error")),
                        )
                    )
        finally:
            await conn.close()
        return out


FAULT_ENV: dict[str, dict[str, str]] = {
    "kabanero-watcher": {
        "LEASE_DURATION_S": "3",
        "LEASE_RENEW_S": "1",
        "RECONNECT_BACKOFF_S": "0.2",
        "RECONNECT_BACKOFF_MAX_S": "2",
    },
    "otc-writer": {"LEASE_TTL_S": "6", "LEASE_WAIT_S": "10", "OTC_BACKOFF_CAP_S": "2"},
}
"""Short leases and backoffs for fault harnesses: a killed process's work is taken over, and a
broken watch or OTC is retried, within seconds (the defaults take tens of seconds)."""


def fault_env(**more: dict[str, str]) -> dict[str, dict[str, str]]:
    """:data:`FAULT_ENV` with ``more`` per process (``fault_env(otc_writer={...})``: ``_`` for ``-``)."""
    env = {name: dict(values) for name, values in FAULT_ENV.items()}
    for name, values in more.items():
        env.setdefault(name.replace("_", "-"), {}).update(values)
    return env


@contextlib.asynccontextmanager
async def driven(name: str, logs: Path, **stack_kw: Any) -> AsyncIterator[Driver]:
    """A new stack (vhost ``kotc-<name>-<random>``, logs in ``logs``, ``stack_kw`` as for
    :class:`Stack`) started and driven, with a new toolchain named ``name``."""
    stack = Stack(f"kotc-{name}-{uuid.uuid4().hex[:8]}", logs=logs, **stack_kw)
    async with driving(stack, toolchain=name) as driver:
        yield driver


@contextlib.asynccontextmanager
async def driving(
    stack: Stack, *, toolchain: str | None = None, keep_vhost: bool = False
) -> AsyncIterator[Driver]:
    """Start ``stack`` and yield its driver (with a new toolchain named ``toolchain``); then stop the
    services first (while MongoDB still answers their goodbyes), the rest after, and delete the
    stack's vhost on the machine's RabbitMQ unless ``keep_vhost``."""
    try:
        await stack.start()
        async with aiohttp.ClientSession() as http:
            driver = Driver(stack, http)
            try:
                if toolchain is not None:
                    driver.toolchain = await driver.new_toolchain(toolchain)
                yield driver
            finally:
                await driver.close()
    finally:
        for name in reversed(stack.services):
            if any(n == name for n, _ in stack.procs):
                await asyncio.to_thread(stack.kill, name, signal.SIGTERM)
        await asyncio.to_thread(stack.stop)
        if not keep_vhost and stack.owns_vhost:
            with contextlib.suppress(RuntimeError, aiohttp.ClientError, OSError):
                await mgmt("DELETE", f"vhosts/{urllib.parse.quote(stack.vhost, safe='')}")
