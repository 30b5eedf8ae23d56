"""github-linker's concurrency: diffs of different toolchains run at once; diffs of one toolchain
fed by several instances at once still end in its exact desired state.

The Linker runs on the real MongoDB store; the publisher is a fake that records the commands and
can hold one back until another has been sent (two diffs that only finish together prove they ran
at the same time: a process-wide lock would deadlock them).
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Callable

import pytest
from prometheus_client import CollectorRegistry

from services.github_linker.linking import Linker, Metrics, decode
from services.github_linker.settings import Settings
from services.github_linker.store import Store
from shared.events import CloudEvent, RoutingKeys, ToolCommand
from shared.mongo import database, make_client
from tests.integration.test_linker_flow import instance, service


class FakePublisher:
    def __init__(self) -> None:
        self.sent: list[CloudEvent] = []
        self.gate: Callable[[ToolCommand], asyncio.Event | None] = lambda _: None
        self.jitter = False

    async def publish(self, event: CloudEvent) -> None:
        command = ToolCommand.model_validate(event.data)
        gate = self.gate(command)
        if gate is not None:
            await gate.wait()
        if self.jitter:
            await asyncio.sleep(random.uniform(0, 0.01))
        self.sent.append(event)


@pytest.fixture
async def store(mongodb_url: str) -> AsyncIterator[Store]:
    client = make_client(mongodb_url, timeout_s=10)
    try:
        s = Store(database(client))
        await s.create_indexes()
        yield s
    finally:
        await client.close()


def _linker(store: Store, publisher: FakePublisher) -> Linker:
    settings = Settings(http_port=0)
    return Linker(store=store, publisher=publisher, settings=settings, metrics=Metrics(CollectorRegistry()))  # type: ignore[arg-type]


async def test_diffs_of_different_toolchains_run_concurrently(store: Store) -> None:
    publisher = FakePublisher()
    linker = _linker(store, publisher)
    await linker.handle(decode(service("s1", "bound", ["tc-1"], 1, namespace="ns-1")))
    await linker.handle(decode(service("s2", "bound", ["tc-2"], 1, namespace="ns-2")))
    tc2_sent = asyncio.Event()

    def gate(command: ToolCommand) -> asyncio.Event | None:
        if command.toolchain_id == "tc-2":
            tc2_sent.set()
            return None
        return tc2_sent  # tc-1's command waits until tc-2's was sent

    publisher.gate = gate
    await asyncio.wait_for(
        asyncio.gather(
            linker.handle(decode(instance(["https://github.com/org/a"], 1, namespace="ns-1"))),
            linker.handle(decode(instance(["https://github.com/org/b"], 1, namespace="ns-2"))),
        ),
        timeout=10,
    )
    assert sorted(ToolCommand.model_validate(e.data).toolchain_id for e in publisher.sent) == ["tc-1", "tc-2"]


async def test_one_toolchain_fed_by_two_instances_at_once_ends_exact(store: Store) -> None:
    """Two instances bound to one toolchain change at the same moment, round after round: each
    diff must see the other's facts or wait for them (unlocked, one removes the other's tool)."""
    publisher = FakePublisher()
    publisher.jitter = True
    linker = _linker(store, publisher)
    await linker.handle(decode(service("s1", "bound", ["tc"], 1, namespace="ns-1")))
    await linker.handle(decode(service("s2", "bound", ["tc"], 1, namespace="ns-2")))
    for rnd in range(1, 11):
        a, b = f"https://github.com/org/a{rnd}", f"https://github.com/org/b{rnd}"
        await asyncio.gather(
            linker.handle(decode(instance([a], rnd, namespace="ns-1"))),
            linker.handle(decode(instance([b], rnd, namespace="ns-2"))),
        )
        present = {e.url for e in (await store.tools_in("tc")).values() if e.present}
        assert present == {a, b}, f"round {rnd}"
    last: dict[str, str] = {}
    for event in publisher.sent:
        last[ToolCommand.model_validate(event.data).key] = event.routing_key
    applied = sorted(k for k, rk in last.items() if rk == RoutingKeys.TOOL_APPLY)
    assert applied == sorted(e.key for e in (await store.tools_in("tc")).values() if e.present)
