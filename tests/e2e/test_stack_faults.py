"""The whole product under faults: docs/architecture.md §9's invariants across process kills and OTC errors.

The stack of ``scripts/stack.py`` (four services, the Kubernetes, OTC and Mongo emulators as real
processes, the real RabbitMQ) runs a burst of cluster changes while OTC answers 30 % 5xx, 429 storms
and commit-then-drop, otc-writer and kabanero-watcher are SIGKILLed and restarted, the Kubernetes
history expires and watch streams drop. Once the faults stop, OTC's tools must equal the desired
state, computed from the final Kubernetes objects by the user-visible rules
(docs/reference/kabanero.md §6, §7; ``scripts/expected.py``), not by the product's own derivation; no tool
may be duplicated and nothing dead-lettered. Then an unchanged world (restarts of all four services,
snapshots, a 410 re-list) must cost zero OTC writes.
"""

from __future__ import annotations

import contextlib
import json
import signal
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from scripts.driver import BROKERS, TRIGGER, Driver, driving, fault_env, tool_kind
from scripts.expected import connection
from scripts.stack import Stack
from tests.e2e.blackhole import Blackhole
from tests.helpers import EventTap, wait_until

pytestmark = pytest.mark.e2e

SNAPSHOT_S = 4
EXTRA_ENV = fault_env(
    kabanero_watcher={"SNAPSHOT_INTERVAL_S": str(SNAPSHOT_S)}, otc_writer={"OTC_BREAKER_RESET_S": "2"}
)
OTC_FAULTS = {"seed": 7, "error_rate": 0.3, "error_status": 503, "drop_after_commit": 2}
PARAMS = {"cluster": "default", "namespace": "kabanero"}


async def trigger_tools(w: Driver) -> dict[str, int]:
    """Mediation name -> how many trigger tools reference it."""
    out: dict[str, int] = {}
    for tool in await w.tools():
        if tool_kind(tool) == TRIGGER:
            name = json.loads(tool["parameters"]["additional-properties"])["trigger"]
            out[name] = out.get(name, 0) + 1
    return out


async def dead_letters(w: Driver) -> list[str]:
    return [f"{d.queue}: {d.type}: {d.reason!r} {d.error!r}" for d in await w.drain_dead_letters()]


@contextlib.asynccontextmanager
async def running_world(logs: Path, *, watcher_proxy: Blackhole | None = None) -> AsyncIterator[Driver]:
    env = {name: dict(values) for name, values in EXTRA_ENV.items()}
    stack = Stack(f"kotc-test-faults-{uuid.uuid4().hex[:8]}", extra_env=env, logs=logs)
    if watcher_proxy is not None:  # kabanero-watcher reaches MongoDB through the proxy
        watcher_proxy.port = stack.ports["mongo"]
        port = await watcher_proxy.start()
        env["kabanero-watcher"]["MONGODB_URL"] = (
            f"mongodb://127.0.0.1:{port}/kabanero_otc?directConnection=true"
        )
    try:
        async with driving(stack, toolchain="faults") as w:
            yield w
    finally:
        if watcher_proxy is not None:
            await watcher_proxy.close()


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[Driver]:
    async with running_world(tmp_path / "logs") as w:
        yield w


async def bind_both(w: Driver) -> None:
    """Both Kabanero services provisioned and bound; the seeded mediations taken over (appsody,
    gitops, with connections the test can follow); OTC shows them."""
    for broker, sid in BROKERS:
        await w.provision_and_bind(broker, sid, PARAMS)
    await w.set_mediations(appsody=1, gitops=1)
    await w.converged("baseline", timeout=30)


async def test_faults_converge_without_loss_or_duplicates_and_idle_costs_nothing(world: Driver) -> None:
    w, stack = world, world.stack
    await bind_both(w)

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
    log = await w.call_log(faults_from)
    assert {"429", "5xx", "drop"} <= {c["fault"] for c in log}  # every OTC fault happened
    # A condition wait (it costs what convergence takes): generous, since a message that failed three
    # times under the 30 % errors waits out the 30 s step of the retry ladder (shared.amqp.topology),
    # and a loaded machine can add such a step (a two-worker run once missed a GitHub tool for 60 s).
    await w.converged("after the faults", timeout=120)
    await w.quiet(timeout=45)
    await w.converged("after the queues drained", timeout=5)
    assert await dead_letters(w) == []

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
        await tap.wait_for(2, timeout=3 * SNAPSHOT_S + 30)
        await w.watching()
        await w.kube_fault("expire")
        await w.kube_fault("drop", {"mode": "abort"})
        await tap.wait_for(3, timeout=2 * SNAPSHOT_S + 30)
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
    assert await dead_letters(w) == []
    stack.check_alive()


async def _has_tools(w: Driver, *mediations: str) -> bool:
    tools = await trigger_tools(w)
    return all(m in tools for m in mediations)


async def _shown(w: Driver, *mediations: str) -> bool:
    """OTC's tools for ``mediations`` show their current revision (destination URL)."""
    want = {m: [connection(m, w.revs[m])["to"][0]["https"][0]["url"]] for m in mediations}
    got: dict[str, list[str]] = {}
    for tool in await w.tools():
        if tool_kind(tool) == TRIGGER:
            props = json.loads(tool["parameters"]["additional-properties"])
            got[props["trigger"]] = props["destinations"]
    return all(got.get(m) == urls for m, urls in want.items())


async def _writes_since(w: Driver, mark: int) -> bool:
    _, writes = await w.calls(mark)
    return bool(writes)


class LostChange(AssertionError):
    """OTC keeps a trigger tool that no longer matches the cluster."""


async def test_change_after_watcher_killed_between_publish_and_record(tmp_path: Path) -> None:
    """Both cases on one stack, one after the other (each starts from a converged world): the key
    is later deleted, then another key is later updated."""
    proxy = Blackhole(0)
    async with running_world(tmp_path / "logs", watcher_proxy=proxy) as w:
        await bind_both(w)
        for later in ("delete", "update"):
            await _killed_between_publish_and_record(w, proxy, later)


async def _killed_between_publish_and_record(w: Driver, proxy: Blackhole, later: str) -> None:
    stack = w.stack
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
        await snapshots.wait_for(2, timeout=3 * SNAPSHOT_S + 30)  # start-up + one periodic
    await w.quiet(timeout=20)
    if problems := await w.differences():
        raise LostChange(f"{later}: not converged after a restart and two snapshots: {problems}")
