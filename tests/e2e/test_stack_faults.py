"""The whole product under faults: docs/architecture.md §9's invariants across process kills and OTC errors.

The stack of ``scripts/stack.py`` (four services, the Kubernetes, OTC and Mongo emulators as real
processes, the real RabbitMQ) runs a burst of cluster changes while OTC answers 30 % 5xx, 429 storms
and commit-then-drop, otc-writer and kabanero-watcher are SIGKILLed and restarted, the Kubernetes
history expires and watch streams drop. Once the faults stop, OTC's tools must equal the desired
state, computed here from the final Kubernetes objects by the user-visible rules (kabanero.md §6, §7),
not by the product's own derivation; no tool may be duplicated and nothing dead-lettered. Then an
unchanged world (restarts of all four services, snapshots, a 410 re-list) must cost zero OTC writes.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import signal
import urllib.parse
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from emulators.otc.platform import OtcPlatform
from scripts.stack import BROKER_ID, BROKERS, QUEUES, SERVICES, Stack
from tests.conftest import _mgmt
from tests.helpers import EventTap, drain_queue, wait_until

pytestmark = pytest.mark.e2e

NS = "kabanero"
MEDIATOR = "webhook"


def mediation(name: str, rev: int) -> dict[str, Any]:
    """Mediation ``name`` at revision ``rev`` (the revision is in its selector): also bench/chaos.py's."""
    return {
        "name": name,
        "selector": {"urlPattern": f"{name}-r{rev}"},
        "sendTo": ["dest"],
        "body": [{"=": "sendEvent(dest, body, header)"}],
    }


def connection(name: str, rev: int) -> dict[str, Any]:
    """The EventConnections entry of mediation ``name``; its URL carries the revision."""
    url = f"https://el-{name}.{NS}.svc:8080/r{rev}"
    return {
        "from": {"mediator": {"name": MEDIATOR, "mediation": name, "destination": "dest"}},
        "to": [{"https": [{"url": url, "insecure": True}]}],
    }


CRS = {
    "mediator": f"/apis/events.kabanero.io/v1alpha1/namespaces/{NS}/eventmediators/{MEDIATOR}",
    "connections": f"/apis/events.kabanero.io/v1alpha1/namespaces/{NS}/eventconnections/connections",
    "kabanero": f"/apis/kabanero.io/v1alpha2/namespaces/{NS}/kabaneros/kabanero",
    "stacks": f"/apis/kabanero.io/v1alpha2/namespaces/{NS}/stacks",
    "gitops-map": f"/api/v1/namespaces/{NS}/configmaps/gitops-map",
}
SNAPSHOT_S = 4
EXTRA_ENV = {
    "kabanero-watcher": {
        "SNAPSHOT_INTERVAL_S": str(SNAPSHOT_S),
        "LEASE_DURATION_S": "3",
        "LEASE_RENEW_S": "1",
        "RECONNECT_BACKOFF_S": "0.2",
        "RECONNECT_BACKOFF_MAX_S": "2",
    },
    "otc-writer": {
        "LEASE_TTL_S": "6",
        "LEASE_WAIT_S": "10",
        "OTC_BREAKER_RESET_S": "2",
        "OTC_BACKOFF_CAP_S": "2",
    },
}
OTC_FAULTS = {"seed": 7, "error_rate": 0.3, "error_status": 503, "drop_after_commit": 2}
TOOL_WRITE = ("POST", "PATCH", "DELETE")
_RELEASE = re.compile(r"^https://([^/]+)/([^/]+)/([^/]+)/releases/download/[^/]+/[^/]+$")


# --- the desired state, from the final cluster objects -----------------------------------------------


def expected_triggers(mediator: dict[str, Any], connections: dict[str, Any]) -> dict[str, list[str]]:
    """Mediation name -> its destination URLs: the EventConnections entries whose ``from.mediator``
    names this mediator, this mediation and one of its ``sendTo`` destinations (eventEndpointMatch)."""
    out: dict[str, list[str]] = {}
    for mediation in mediator["spec"].get("mediations") or []:
        urls: set[str] = set()
        for conn in connections["spec"].get("connections") or []:
            src = conn["from"]["mediator"]
            if (
                src["name"] == MEDIATOR
                and src.get("mediation") == mediation["name"]
                and src.get("destination") in (mediation.get("sendTo") or [])
            ):
                urls |= {h["url"] for to in conn.get("to") or [] for h in to.get("https") or []}
        out[mediation["name"]] = sorted(urls)
    return out


def _repository(ref: dict[str, Any]) -> str:
    """The repository of an archive reference: a complete gitRelease, else a release-download URL."""
    g = ref.get("gitRelease") or {}
    if all(g.get(f) for f in ("hostname", "organization", "project", "release", "assetName")):
        return f"https://{g['hostname']}/{g['organization']}/{g['project']}"
    m = _RELEASE.match(ref["https"]["url"])
    assert m, ref
    return "https://{}/{}/{}".format(*m.groups())


def expected_repos(
    kabanero: dict[str, Any], stacks: list[dict[str, Any]], gitops_map: dict[str, Any]
) -> set[str]:
    """Stack hubs, the pipelines they use (their own, else the instance's), GitOps pipelines, the
    active Stack versions' pipelines and the gitops-map repository (docs/design.md, Kabanero semantics)."""
    spec = kabanero["spec"]
    assert not spec.get("triggers"), "this scenario has no legacy triggers"
    repos = set()
    for hub in spec["stacks"].get("repositories") or []:
        repos.add(_repository(hub))
        for p in hub.get("pipelines") or spec["stacks"].get("pipelines") or []:
            repos.add(_repository(p))
    for p in spec.get("gitops", {}).get("pipelines") or []:
        repos.add(_repository(p))
    for stack in stacks:
        for version in stack["spec"].get("versions") or []:
            if str(version.get("desiredState", "")).lower() != "inactive":
                repos |= {_repository(p) for p in version.get("pipelines") or []}
    repos.add(gitops_map["data"]["gitops-repository-url"].removesuffix(".git"))
    return repos


def differences(tools: list[dict[str, Any]], triggers: dict[str, list[str]], repos: set[str]) -> list[str]:
    """Every way OTC's tools differ from the desired state (empty: converged, nothing duplicated)."""
    problems: list[str] = []
    names = [str(t.get("name")) for t in tools]
    if len(set(names)) != len(names):
        problems.append(f"duplicate tool names: {sorted(n for n in set(names) if names.count(n) > 1)}")
    seen: dict[str, list[str]] = {}
    for tool in (t for t in tools if t["tool_type_id"] == "customtool"):
        props = json.loads(tool["parameters"]["additional-properties"])
        mediation = props["trigger"]
        seen.setdefault(mediation, []).append(tool["name"])
        if not tool["name"].startswith(f"kabanero-trigger {NS} {MEDIATOR} {mediation} "):
            problems.append(f"trigger tool name {tool['name']!r} does not name mediation {mediation!r}")
        if (props["cluster"], props["namespace"], props["owner"]) != ("default", NS, MEDIATOR):
            problems.append(f"trigger tool {tool['name']!r} references {props}")
        if mediation in triggers and props["destinations"] != triggers[mediation]:
            problems.append(f"{mediation}: destinations {props['destinations']} != {triggers[mediation]}")
    for mediation, tool_names in seen.items():
        if len(tool_names) > 1:
            problems.append(f"{len(tool_names)} trigger tools for mediation {mediation!r}: {tool_names}")
    if set(seen) != set(triggers):
        problems.append(f"trigger tools for {sorted(seen)}, mediations {sorted(triggers)}")
    urls = [t["parameters"]["repo_url"] for t in tools if t["tool_type_id"] == "githubconsolidated"]
    if sorted(urls) != sorted(repos):
        problems.append(f"GitHub tools {sorted(urls)} != repositories {sorted(repos)}")
    if len(tools) != len(triggers) + len(repos):
        problems.append(f"{len(tools)} tools, expected {len(triggers)} + {len(repos)}")
    return problems


def params_default() -> dict[str, str]:
    return {"cluster": "default", "namespace": NS}


# --- driving the stack --------------------------------------------------------------------------------


class World:
    """HTTP access to the emulators and the services of one running stack."""

    def __init__(self, stack: Stack, http: aiohttp.ClientSession) -> None:
        self.stack = stack
        self.http = http
        self.toolchain = ""
        self.revs: dict[str, int] = {}
        """The mediations this test manages: name -> content revision."""

    async def request(self, method: str, url: str, body: Any = None, **kw: Any) -> Any:
        async with self.http.request(method, url, json=body, **kw) as r:
            assert r.status < 300, f"{method} {url}: {r.status} {await r.text()}"
            return await r.json() if r.content_type == "application/json" else None

    async def kube(self, method: str, what: str, body: Any = None) -> Any:
        if method != "PATCH":
            return await self.request(method, self.stack.url("kube") + CRS[what], body)
        headers = {"Content-Type": "application/merge-patch+json"}
        url = self.stack.url("kube") + CRS[what]
        async with self.http.patch(url, data=json.dumps(body), headers=headers) as r:
            assert r.status == 200, await r.text()

    async def kube_fault(self, name: str, body: dict[str, Any] | None = None) -> None:
        await self.request("POST", f"{self.stack.url('kube')}/_emulator/{name}", body or {})

    async def otc_faults(self, config: dict[str, Any] | None) -> None:
        url = f"{self.stack.url('otc')}/_emulator/faults"
        await (self.request("POST", url, config) if config else self.request("DELETE", url))

    async def tools(self) -> list[dict[str, Any]]:
        state = await self.request("GET", f"{self.stack.url('otc')}/_emulator/state")
        (tc,) = [t for t in state["toolchains"] if t["id"] == self.toolchain]
        return list(tc["tools"])

    async def calls(self, since: int = 0) -> tuple[int, list[dict[str, Any]]]:
        """(next index, the tool writes since ``since``) of OTC's call log."""
        log = await self.request("GET", f"{self.stack.url('otc')}/_emulator/calls?since={since}")
        writes = [c for c in log["calls"] if c["method"] in TOOL_WRITE and "/tools" in c["path"]]
        return log["total"], writes

    async def trigger_tools(self) -> dict[str, int]:
        """Mediation name -> how many trigger tools reference it."""
        out: dict[str, int] = {}
        for tool in await self.tools():
            if tool["tool_type_id"] == "customtool":
                name = json.loads(tool["parameters"]["additional-properties"])["trigger"]
                out[name] = out.get(name, 0) + 1
        return out

    async def watching(self) -> None:
        """The (new) leading watcher has its three watch streams open."""

        async def streams() -> bool:
            state = await self.request("GET", f"{self.stack.url('kube')}/_emulator/state")
            return int(state["watches"]["open"]) >= 3

        await wait_until(streams, timeout=20, interval=0.2, what="open watch streams")

    async def processed(self, service: str, queue: str) -> int:
        """Messages the service consumed from ``queue`` since it started (its /metrics)."""
        return int(await self.stack.metric(self.http, service, "kotc_messages_total", queue=queue) or 0)

    # The cluster: mediations m* with one EventConnections entry each, whose URL carries the revision.

    def mediation(self, name: str) -> dict[str, Any]:
        return mediation(name, self.revs[name])

    def connection(self, name: str) -> dict[str, Any]:
        return connection(name, self.revs[name])

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
            mediations = [self.mediation(n) for n in self.revs]
            await self.kube("PATCH", "mediator", {"spec": {"mediations": mediations}})
        if "connections" in objects:
            conns = [self.connection(n) for n in self.revs]
            await self.kube("PATCH", "connections", {"spec": {"connections": conns}})

    async def add_pipeline_repo(self, repo: str) -> None:
        pipelines = (await self.kube("GET", "kabanero"))["spec"]["stacks"]["pipelines"]
        pipelines.append(
            {
                "id": repo,
                "sha256": uuid.uuid4().hex * 2,
                "https": {"url": f"https://github.com/acme/{repo}/releases/download/1.0.0/{repo}.tar.gz"},
            }
        )
        await self.kube("PATCH", "kabanero", {"spec": {"stacks": {"pipelines": pipelines}}})

    async def differences(self) -> list[str]:
        triggers = expected_triggers(
            await self.kube("GET", "mediator"), await self.kube("GET", "connections")
        )
        repos = expected_repos(
            await self.kube("GET", "kabanero"),
            (await self.kube("GET", "stacks"))["items"],
            await self.kube("GET", "gitops-map"),
        )
        return differences(await self.tools(), triggers, repos)

    async def converged(self, what: str, timeout: float) -> None:
        last: list[str] = []

        async def check() -> bool:
            self.stack.check_alive()
            last[:] = await self.differences()
            return not last

        try:
            await wait_until(check, timeout=timeout, interval=0.3, what=what)
        except AssertionError:
            raise AssertionError(f"{what}: not converged after {timeout}s: {last}") from None

    async def quiet(self, timeout: float) -> None:
        """No message waits in any consuming or retry queue (the consumers are idle)."""
        await self.stack.quiet(timeout)

    async def dead_letters(self) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {}
        for q in QUEUES:
            msgs = await drain_queue(self.stack.amqp_url, f"{q}.dead", timeout=0.3)
            reasons = [
                f"{m.type!s}: {m.headers.get('x-kotc-dead-reason')!r} {m.headers.get('x-kotc-error')!r}"
                for m in msgs
            ]
            if reasons:
                out[f"{q}.dead"] = reasons
        return out


class Blackhole:
    """A TCP proxy that can stop forwarding what its clients send (their requests never arrive):
    everything, or only the requests that contain ``swallow_matching``."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.swallow = False
        self.swallow_matching: bytes | None = None
        self.server: asyncio.Server | None = None

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return int(self.server.sockets[0].getsockname()[1])

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.port)
        except OSError:
            writer.close()
            return

        async def pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter, upstream: bool) -> None:
            with contextlib.suppress(OSError):
                while data := await src.read(65536):
                    marker = self.swallow_matching
                    if not (upstream and (self.swallow or (marker is not None and marker in data))):
                        dst.write(data)
                        await dst.drain()
            dst.close()

        await asyncio.gather(pump(reader, up_writer, True), pump(up_reader, writer, False))

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()


@contextlib.asynccontextmanager
async def running_world(logs: Path, *, watcher_proxy: Blackhole | None = None) -> AsyncIterator[World]:
    vhost = f"kotc-test-faults-{uuid.uuid4().hex[:8]}"
    env = {name: dict(values) for name, values in EXTRA_ENV.items()}
    stack = Stack(vhost, extra_env=env, logs=logs)
    if watcher_proxy is not None:  # kabanero-watcher reaches MongoDB through the proxy
        watcher_proxy.port = stack.ports["mongo"]
        port = await watcher_proxy.start()
        env["kabanero-watcher"]["MONGODB_URL"] = (
            f"mongodb://127.0.0.1:{port}/kabanero_otc?directConnection=true"
        )
    try:
        await stack.start()
        async with aiohttp.ClientSession() as http:
            w = World(stack, http)
            tc = await w.request("POST", f"{stack.url('otc')}/_emulator/toolchains", {"name": "faults"})
            w.toolchain = tc["id"]
            yield w
    finally:
        for name in reversed(SERVICES):  # the services first, while MongoDB still answers their goodbyes
            await asyncio.to_thread(stack.kill, name, signal.SIGTERM)
        await asyncio.to_thread(stack.stop)
        _mgmt("DELETE", f"vhosts/{urllib.parse.quote(vhost, safe='')}")
        if watcher_proxy is not None:
            await watcher_proxy.close()


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[World]:
    async with running_world(tmp_path / "logs") as w:
        yield w


async def test_faults_converge_without_loss_or_duplicates_and_idle_costs_nothing(world: World) -> None:
    w, stack = world, world.stack
    async with OtcPlatform(stack.url("broker"), BROKER_ID, stack.broker_secret) as otc:
        for broker, sid in BROKERS:
            assert (await otc.provision(broker, sid, parameters=params_default())).status == 200
            assert (await otc.bind(broker, sid, w.toolchain)).status == 204
    # Take over the seeded mediations (appsody, gitops) with connections this test can follow.
    await w.set_mediations(appsody=1, gitops=1)
    await w.converged("baseline", timeout=30)

    # 1. OTC fails 30 % of calls, starts with a 429 storm, drops two committed answers; otc-writer is
    # SIGKILLed while it works through a burst of changes, which goes on while it is down.
    faults_from, _ = await w.calls()
    mark = faults_from
    await w.otc_faults({**OTC_FAULTS, "rate_limit": {"count": 6, "retry_after": 1}})
    await w.set_mediations(m1=1, m2=1)
    await w.set_mediations(m3=1, appsody=2)
    await wait_until(lambda: _writes_since(w, mark), timeout=20, what="otc-writer at work")
    assert stack.kill("otc-writer") == -signal.SIGKILL
    await w.set_mediations(gitops=None, m4=1)
    await w.add_pipeline_repo("extra-pipelines")
    await w.set_mediations(m1=2)
    await stack.restart("otc-writer", sig=None)
    await w.otc_faults({**OTC_FAULTS, "rate_limit": {"count": 4, "retry_after": 1}})
    await w.set_mediations(m5=1)

    # 2. kabanero-watcher is SIGKILLed; changes go on while it is down and the history it would resume
    # from expires (410: it must re-list and emit exactly what it missed, deletes included). A kill
    # between a publish and its record is covered deterministically by the test below.
    await w.set_mediations(m2=2, m6=1)
    await wait_until(lambda: _shown(w, "m2", "m3", "m5", "m6"), timeout=30, what="m2, m3, m5, m6 in OTC")
    assert stack.kill("kabanero-watcher") == -signal.SIGKILL
    await w.set_mediations(m3=None, m4=2)
    await w.add_pipeline_repo("more-pipelines")
    await w.set_mediations(m5=None, m7=1)
    await w.kube_fault("expire")
    await stack.restart("kabanero-watcher", sig=None)
    await w.set_mediations(m2=3)

    # 3. Watch streams break (aborted, closed cleanly, and resumed past an expired history).
    await w.watching()
    await w.kube_fault("drop", {"mode": "abort"})
    await w.set_mediations(m6=2)
    await w.watching()
    await w.kube_fault("drop", {"mode": "close"})
    await w.set_mediations(m4=None, m8=1)
    await w.watching()
    await w.kube_fault("expire")
    await w.set_mediations(m9=1)
    await w.kube_fault("drop", {"mode": "abort"})
    await w.set_mediations(m1=3)

    # Faults stop: OTC must equal the desired state, with nothing duplicated and nothing dead-lettered.
    await w.otc_faults(None)
    log = await w.request("GET", f"{stack.url('otc')}/_emulator/calls?since={faults_from}")
    assert {"429", "5xx", "drop"} <= {c["fault"] for c in log["calls"]}  # every OTC fault happened
    await w.converged("after the faults", timeout=60)
    await w.quiet(timeout=45)
    await w.converged("after the queues drained", timeout=5)
    assert await w.dead_letters() == {}

    # One more change in a healthy world: exactly one OTC write.
    mark, _ = await w.calls()
    await w.set_mediations(("connections",), m2=4)
    await w.converged("one change", timeout=20)
    await w.quiet(timeout=20)
    _, writes = await w.calls(mark)
    assert [(c["method"], c["status"]) for c in writes] == [("PATCH", 200)]

    # An unchanged world costs nothing: restarts of every service, their start-up snapshots, a periodic
    # snapshot, and a 410 re-list.
    mark, _ = await w.calls()
    for name in ("broker-api", "github-linker", "otc-writer"):
        await stack.restart(name)
    # Every snapshot the tap sees is published after the consumers restarted, so they count it.
    async with EventTap(stack.amqp_url, ("kabanero.snapshot",)) as tap:
        await stack.restart("kabanero-watcher")
        await tap.wait_for(2, timeout=3 * SNAPSHOT_S + 10)
        await w.watching()
        await w.kube_fault("expire")
        await w.kube_fault("drop", {"mode": "abort"})
        await tap.wait_for(3, timeout=2 * SNAPSHOT_S + 10)
        snapshots = len(tap.events)

        async def consumed() -> bool:
            return (
                await w.processed("writer", "otc-writer.events") >= snapshots
                and await w.processed("linker", "github-linker.events") >= snapshots
            )

        await wait_until(consumed, timeout=20, interval=0.3, what="snapshots consumed")
        await w.quiet(timeout=20)
    _, writes = await w.calls(mark)
    assert writes == [], f"an unchanged world wrote to OTC: {writes}"
    assert await w.differences() == []
    assert await w.dead_letters() == {}
    stack.check_alive()


async def _has_tools(w: World, *mediations: str) -> bool:
    tools = await w.trigger_tools()
    return all(m in tools for m in mediations)


async def _shown(w: World, *mediations: str) -> bool:
    """OTC's tools for ``mediations`` show their current revision (destination URL)."""
    want = {m: [w.connection(m)["to"][0]["https"][0]["url"]] for m in mediations}
    got: dict[str, list[str]] = {}
    for tool in await w.tools():
        if tool["tool_type_id"] == "customtool":
            props = json.loads(tool["parameters"]["additional-properties"])
            got[props["trigger"]] = props["destinations"]
    return all(got.get(m) == urls for m, urls in want.items())


async def _writes_since(w: World, mark: int) -> bool:
    _, writes = await w.calls(mark)
    return bool(writes)


class LostChange(AssertionError):
    """OTC keeps a trigger tool that no longer matches the cluster."""


@pytest.mark.parametrize("later", ["delete", "update"])
async def test_change_after_watcher_killed_between_publish_and_record(tmp_path: Path, later: str) -> None:
    proxy = Blackhole(0)
    async with running_world(tmp_path / "logs", watcher_proxy=proxy) as w:
        stack = w.stack
        async with OtcPlatform(stack.url("broker"), BROKER_ID, stack.broker_secret) as otc:
            for broker, sid in BROKERS:
                assert (await otc.provision(broker, sid, parameters=params_default())).status == 200
                assert (await otc.bind(broker, sid, w.toolchain)).status == 204
        await w.set_mediations(appsody=1, gitops=1)
        await w.converged("baseline", timeout=30)

        # Open the crash window deterministically: the watcher records the event as pending, publishes
        # it (RabbitMQ confirms it), then its "done" write (a BSON `pending: false`) never reaches
        # MongoDB: it hangs there and dies. "delete": the event creates mediation x; "update": it
        # changes appsody's selector.
        subject = "default/kabanero/mediation/webhook/" + ("x" if later == "delete" else "appsody")
        async with EventTap(stack.amqp_url, ("kabanero.trigger.*",)) as tap:
            proxy.swallow_matching = b"\x08pending\x00\x00"
            if later == "delete":
                await w.set_mediations(("mediator",), x=1)
            else:
                await w.set_mediations(("mediator",), appsody=2)
            await wait_until(lambda: any(e.subject == subject for e in tap.events), timeout=15)
            assert stack.kill("kabanero-watcher") == -signal.SIGKILL
            proxy.swallow_matching = None
        # otc-writer applies that event. Then, while no watcher runs, the same key changes again:
        # x is deleted, or appsody's connection changes (its tool's destinations must follow).
        if later == "delete":
            await wait_until(lambda: _has_tools(w, "x"), timeout=30, what="x in OTC")
            await w.set_mediations(("mediator",), x=None)
        else:
            await w.set_mediations(("connections",))
        async with EventTap(stack.amqp_url, ("kabanero.snapshot",)) as snapshots:
            await stack.restart("kabanero-watcher", sig=None)
            await snapshots.wait_for(2, timeout=3 * SNAPSHOT_S + 10)  # start-up + one periodic
        await w.quiet(timeout=20)
        if problems := await w.differences():
            raise LostChange(f"not converged after a restart and two snapshots: {problems}")
