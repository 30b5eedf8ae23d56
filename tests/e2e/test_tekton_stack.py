"""The Tekton broker through the whole stack (issue 18): two clusters, SIGKILLs of otc-writer and of
the watcher in the middle of a change.

One stack (``scripts/stack.py``, driven by ``scripts/driver.py``): cluster ``default`` with Kabanero
and Tekton, cluster ``east`` with Tekton only (its API server has no Kabanero CRDs). Three Tekton
services (default; east; east filtered to one namespace), each bound to its own toolchain, and a
Kabanero Events service on ``default`` in another toolchain. What users rely on:

- each toolchain shows exactly the read-only cards of its service's cluster and namespaces, and the
  Kabanero tools are untouched by anything Tekton does;
- otc-writer SIGKILLed right after its first OTC write of a change of several cards (the fault of
  ``tests/e2e/crashing_writer.py``), changes going on while it is down: after its restart OTC holds
  exactly the desired cards, none twice, nothing dead-lettered;
- the watcher SIGKILLed between its publish of a card event and its record of it (its MongoDB
  "done" write swallowed, as ``test_stack_faults`` does for Kabanero), the card changing again
  while it is down: after its restart exactly that missed change is published, once, and OTC
  follows with one write per change.
"""

from __future__ import annotations

import asyncio
import signal
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from scripts.driver import LISTENER_CARD, PIPELINE_CARD, TEKTON_GROUP, Driver, driving, fault_env, tool_kind
from scripts.stack import Stack
from tests.e2e.blackhole import Blackhole
from tests.helpers import EventTap, wait_until

pytestmark = pytest.mark.e2e

SAMPLE = (
    "kabanero/listener-b4ef64ab",
    "kabanero/nodejs-express-build-deploy-pl",
    "kabanero/nodejs-express-build-pl",
)
"""The cards of deploy/samples/tekton-sample.yaml (both clusters are seeded with it)."""
TEAM = "team-a"


def pipelines(ns: str) -> str:
    return f"{TEKTON_GROUP}/namespaces/{ns}/pipelines"


def pipeline(ns: str, name: str, *tasks: str) -> dict[str, Any]:
    return {
        "apiVersion": "tekton.dev/v1beta1",
        "kind": "Pipeline",
        "metadata": {"name": name, "namespace": ns},
        "spec": {"tasks": [{"name": t, "taskRef": {"name": t}} for t in tasks]},
    }


class Tekton:
    """The toolchains of the Tekton services: service id -> toolchain id."""

    def __init__(self, w: Driver) -> None:
        self.w = w
        self.toolchains: dict[str, str] = {}

    async def cards(self, sid: str) -> list[str]:
        """``<cluster>/<namespace>/<name>`` of every card in the service's toolchain (duplicates kept)."""
        tools = await self.w.tools(self.toolchains[sid])
        return sorted(
            t["parameters"]["name"] for t in tools if tool_kind(t) in (PIPELINE_CARD, LISTENER_CARD)
        )

    async def showing(self, want: dict[str, list[str]]) -> bool:
        return all([await self.cards(sid) == sorted(names) for sid, names in want.items()])

    async def card_mentions(self, sid: str, name: str, text: str) -> bool:
        tools = await self.w.tools(self.toolchains[sid])
        return any(
            t["parameters"]["name"].endswith(f"/{name}") and text in t["parameters"]["additional-properties"]
            for t in tools
        )


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[tuple[Driver, Blackhole]]:
    # The default cluster's watcher reaches MongoDB through a proxy that can swallow its "done" writes
    # (listening before the stack picks its free ports, so none of them is the proxy's).
    proxy = Blackhole(0)
    port = await proxy.start()
    env = fault_env(kabanero_watcher={"SNAPSHOT_INTERVAL_S": "4"})
    env["kabanero-watcher"]["MONGODB_URL"] = f"mongodb://127.0.0.1:{port}/kabanero_otc?directConnection=true"
    stack = Stack(
        f"kotc-test-tekton-{uuid.uuid4().hex[:8]}",
        extra_env=env,
        logs=tmp_path / "logs",
        clusters=("default", "east"),
        tekton_only=("east",),
    )
    proxy.port = stack.ports["mongo"]
    try:
        async with driving(stack, toolchain="kabanero") as w:
            yield w, proxy
    finally:
        await proxy.close()


async def test_two_clusters_and_sigkills_of_writer_and_watcher(world: tuple[Driver, Blackhole]) -> None:
    w, proxy = world
    stack = w.stack
    t = Tekton(w)

    # (a) Two clusters. east has no Kabanero API at all, and one more namespace with a Pipeline.
    status, _ = await w.get(w.kube_url("/apis/kabanero.io/v1alpha2/kabaneros", "east"))
    assert status == 404
    await w.kube("POST", "/api/v1/namespaces", {"metadata": {"name": TEAM}}, cluster="east")
    await w.kube("POST", pipelines(TEAM), pipeline(TEAM, "team-build", "build"), cluster="east")
    await w.set_mediations(appsody=1, gitops=1)  # the seeded mediations, with connections to follow
    await w.provision_and_bind(
        "kabanero-events-broker", "events", {"cluster": "default", "namespace": "kabanero"}
    )
    services: dict[str, dict[str, Any]] = {
        "tekton-default": {"cluster": "default"},
        "tekton-east": {"cluster": "east"},
        "tekton-east-team": {"cluster": "east", "namespaces": [TEAM]},
    }
    for sid, params in services.items():
        t.toolchains[sid] = await w.new_toolchain(sid)
        await w.provision_and_bind("tekton-broker", sid, params, t.toolchains[sid])
    want = {
        "tekton-default": [f"default/{n}" for n in SAMPLE],
        "tekton-east": [*(f"east/{n}" for n in SAMPLE), f"east/{TEAM}/team-build"],
        "tekton-east-team": [f"east/{TEAM}/team-build"],
    }
    await wait_until(lambda: t.showing(want), timeout=90, what="each service's cards")
    triggers, _ = await w.desired()
    await wait_until(lambda: _triggers_shown(w, len(triggers)), timeout=30, what="the Kabanero triggers")
    await w.quiet()
    kabanero_tools = await w.tools()
    assert not [x for x in kabanero_tools if tool_kind(x) in (PIPELINE_CARD, LISTENER_CARD)]

    # (b) otc-writer dies right after its first OTC write of a change of three cards (each in the
    # tekton-east and tekton-east-team toolchains); the cluster goes on changing while it is down.
    args, env = stack.specs["otc-writer"]
    stack.specs["otc-writer"] = (["tests.e2e.crashing_writer", "1"], env)
    await stack.restart("otc-writer")
    mark = await w.mark()
    for name in ("crash-a", "crash-b", "crash-c"):
        await w.kube("POST", pipelines(TEAM), pipeline(TEAM, name, "build"), cluster="east")
    assert await asyncio.to_thread(stack.proc("otc-writer").wait, 60) == -signal.SIGKILL
    # Mid-change: 3 cards in 2 toolchains are 6 writes; it died after its first (a write already in
    # flight beside it may land too).
    assert 1 <= await w.writes_since(mark) < 6
    await w.kube("DELETE", f"{pipelines(TEAM)}/team-build", cluster="east")
    await w.kube(
        "PATCH",
        f"{pipelines(TEAM)}/crash-a",
        {"spec": {"tasks": [{"name": "lint", "taskRef": {"name": "lint"}}]}},
        cluster="east",
    )
    stack.specs["otc-writer"] = (args, env)
    await stack.restart("otc-writer", sig=None)
    team = [f"east/{TEAM}/crash-{x}" for x in "abc"]
    want["tekton-east"] = [*(f"east/{n}" for n in SAMPLE), *team]
    want["tekton-east-team"] = team
    await wait_until(lambda: t.showing(want), timeout=45, what="the cards after the writer's restart")
    await wait_until(
        lambda: t.card_mentions("tekton-east", "crash-a", "lint"), timeout=20, what="crash-a edited"
    )
    await w.quiet()
    assert await t.showing(want)  # exactly: no card twice, none left over
    assert not any((await w.dead_letter_counts()).values())

    # (c) The default cluster's watcher publishes a new Pipeline's card (RabbitMQ confirms it), then its
    # "done" record never reaches MongoDB, and it is SIGKILLed there. While it is down the Pipeline
    # changes again. Its restart must publish exactly that missed change.
    mark = await w.mark()
    subject = "tekton:default/kabanero/Pipeline/kill-me"
    async with EventTap(stack.amqp_url, ("tekton.card.*",)) as tap:
        proxy.swallow_matching = b"\x08pending\x00\x00"
        await w.kube("POST", pipelines("kabanero"), pipeline("kabanero", "kill-me", "build"))
        await wait_until(lambda: any(e.subject == subject for e in tap.events), timeout=15, what="published")
        assert stack.kill("kabanero-watcher") == -signal.SIGKILL
        proxy.swallow_matching = None
    want["tekton-default"] = [*want["tekton-default"], "default/kabanero/kill-me"]
    await wait_until(lambda: t.showing(want), timeout=30, what="kill-me's card")
    await w.kube(
        "PATCH",
        f"{pipelines('kabanero')}/kill-me",
        {"spec": {"tasks": [{"name": "test", "taskRef": {"name": "test"}}]}},
    )
    changes = ("tekton.card.*", "kabanero.trigger.*", "kabanero.instance.*")
    async with EventTap(stack.amqp_url, changes) as tap:
        await stack.restart("kabanero-watcher", sig=None)
        await wait_until(
            lambda: t.card_mentions("tekton-default", "kill-me", "test"), timeout=30, what="edit"
        )
        await w.quiet()
    # Exactly the missed edit, once: nothing else is sent again (the records of the Kabanero and the
    # Tekton loops, committed at the same time in one namespace, were both kept).
    assert [(e.routing_key, e.subject) for e in tap.events] == [("tekton.card.updated", subject)]
    assert await w.writes_since(mark) == 2  # the create, then the edit: one write per change
    assert await t.showing(want)
    assert not any((await w.dead_letter_counts()).values())
    assert await w.tools() == kabanero_tools  # the Kabanero service saw none of it
    stack.check_alive()


async def _triggers_shown(w: Driver, n: int) -> bool:
    return sum(tool_kind(x) == "Kabanero Event Trigger" for x in await w.tools()) == n
