"""github-linker end to end: events published to the real exchange -> otc.tool.* commands in a real queue."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest
from prometheus_client import CollectorRegistry

from services.github_linker import naming
from services.github_linker.app import QUEUE, Deps, LinkerRuntime, build
from services.github_linker.settings import Settings
from shared.events import (
    CloudEvent,
    InstanceData,
    InstanceRef,
    Repository,
    RoutingKeys,
    ServiceEvent,
    ServiceEventData,
    ServiceParameters,
    SnapshotData,
    ToolCommand,
)
from tests.helpers import EventTap, wait_until

REPO_A = "https://github.com/org/app-a"
REPO_B = "https://github.com/org/app-b"
REPO_C = "https://github.com/org/app-c"
GHE_REPO = "https://ghe.example.com/team/pipelines"
MARKER = "test-marker"


@dataclass
class Linker:
    runtime: LinkerRuntime
    registry: CollectorRegistry
    tap: EventTap
    published: int = 0
    seen: int = 0  # commands already returned by new_commands()

    async def publish(self, event: CloudEvent) -> None:
        await self.runtime.infra.publisher.publish(event)
        self.published += 1

    def _acked(self) -> float:
        value = self.registry.get_sample_value("kotc_messages_total", {"queue": QUEUE, "outcome": "ack"})
        return value or 0.0

    async def new_commands(self) -> list[tuple[str, ToolCommand]]:
        """Commands emitted since the last call, once every published event has been handled.

        Barrier: all events acked (their commands were confirmed before the ack), then a marker
        published into the same exchange: anything the linker sent arrives in the tap before it.
        """
        await wait_until(lambda: self._acked() >= self.published, what="events handled")
        marker = ToolCommand(
            purpose=MARKER, key=MARKER, toolchain_id="-", tool_type_id="-", name="-", revision=0
        )
        before = len(self.tap.events)
        await self.runtime.infra.publisher.publish(
            CloudEvent.for_data(RoutingKeys.TOOL_APPLY, marker, source=MARKER)
        )
        await wait_until(lambda: any(e.source == MARKER for e in self.tap.events[before:]), what="marker")
        out = [
            (e.routing_key, ToolCommand.model_validate(e.data))
            for e in self.tap.events[self.seen :]
            if e.source != MARKER
        ]
        self.seen = len(self.tap.events)
        return out


def _settings(amqp_url: str, mongodb_url: str, **overrides: Any) -> Settings:
    return Settings(
        amqp_url=amqp_url,  # type: ignore[arg-type]
        mongodb_url=mongodb_url,  # type: ignore[arg-type]
        http_host="127.0.0.1",
        http_port=0,
        ghe_hosts={"ghe.example.com": "ghe-guid"},
        connect_timeout_s=10,
        **overrides,
    )


@asynccontextmanager
async def running(amqp_url: str, mongodb_url: str, **overrides: Any) -> AsyncIterator[Linker]:
    registry = CollectorRegistry()
    runtime = build(_settings(amqp_url, mongodb_url, **overrides), deps=Deps(registry=registry))
    async with runtime, EventTap(amqp_url, ("otc.tool.#",)) as tap:
        await wait_until(lambda: runtime.consumer.consuming, what="consumer")
        yield Linker(runtime, registry, tap)


@pytest.fixture
async def linker(amqp_url: str, mongodb_url: str) -> AsyncIterator[Linker]:
    async with running(amqp_url, mongodb_url) as linker:
        yield linker


def service(
    sid: str,
    event: ServiceEvent,
    toolchains: Sequence[str],
    revision: int,
    *,
    namespace: str = "kabanero",
) -> CloudEvent:
    data = ServiceEventData(
        kind="kabanero",
        instance_id=sid,
        service_id="kabanero",
        parameters=ServiceParameters(cluster="c1", namespace=namespace),
        toolchains=list(toolchains),
        revision=revision,
        deleted=event == "deprovisioned",
    )
    return CloudEvent.for_data(RoutingKeys.service("kabanero", event), data, source="test", subject=sid)


def repos(*urls: str) -> list[Repository]:
    return [Repository.of(u, "pipeline") for u in urls]


def instance(urls: Sequence[str], revision: int, *, namespace: str = "kabanero") -> CloudEvent:
    data = InstanceData(
        instance=InstanceRef(cluster="c1", namespace=namespace, name="kabanero"),
        repositories=repos(*urls),
        content_hash=json.dumps(sorted(urls)),
        revision=revision,
    )
    return CloudEvent.for_data(RoutingKeys.INSTANCE_CHANGED, data, source="test")


def snapshot(
    urls: Sequence[str], revision: int, *, exists: bool = True, instance_revision: int
) -> CloudEvent:
    data = SnapshotData(
        instance=InstanceRef(cluster="c1", namespace="kabanero"),
        exists=exists,
        repositories=repos(*urls),
        revision=revision,
        instance_revision=instance_revision,
        trigger_revisions={},
    )
    return CloudEvent.for_data(RoutingKeys.SNAPSHOT, data, source="test")


def summary(commands: list[tuple[str, ToolCommand]]) -> set[tuple[str, str, str]]:
    """(apply|remove, toolchain, repo url) per command; asserts no duplicates."""
    out = {(rk.rsplit(".", 1)[1], c.toolchain_id, c.parameters.get("repo_url", "")) for rk, c in commands}
    assert len(out) == len(commands), commands
    return out


def _kinds_instance(revision: int) -> CloudEvent:
    """Repositories as the watcher reports them: several kinds per URL."""
    data = InstanceData(
        instance=InstanceRef(cluster="c1", namespace="kabanero", name="kabanero"),
        repositories=[
            Repository.of(REPO_A, "stack-hub").merged(Repository.of(REPO_A, "pipeline")),
            Repository.of(REPO_B, "stack-hub"),
            Repository.of(REPO_C, "gitops"),
            Repository.of("https://github.com/org/not-a-repo", "unknown"),
        ],
        content_hash=f"kinds-{revision}",
        revision=revision,
    )
    return CloudEvent.for_data(RoutingKeys.INSTANCE_CHANGED, data, source="test")


@pytest.mark.parametrize(
    ("kinds", "linked"),
    [
        pytest.param(None, {REPO_A, REPO_B, REPO_C}, id="default-links-stack-hubs"),
        pytest.param(["pipeline", "gitops", "trigger"], {REPO_A, REPO_C}, id="stack-hub-left-out"),
    ],
)
async def test_repository_kinds_select_what_is_linked(
    amqp_url: str, mongodb_url: str, kinds: list[str] | None, linked: set[str]
) -> None:
    overrides = {} if kinds is None else {"github_repo_kinds": tuple(kinds)}
    async with running(amqp_url, mongodb_url, **overrides) as linker:
        await linker.publish(service("sid-k", "provisioned", ["tc-k"], 1))
        await linker.publish(_kinds_instance(1))
        assert summary(await linker.new_commands()) == {("apply", "tc-k", url) for url in linked}


async def test_lifecycle_follows_repositories_and_bindings(linker: Linker) -> None:
    await linker.publish(service("sid-1", "provisioned", [], 1))
    await linker.publish(service("sid-1", "bound", ["tc-1"], 2))
    assert await linker.new_commands() == []  # no repositories known yet

    await linker.publish(instance([REPO_A, REPO_B, REPO_A + ".git"], 1))
    commands = await linker.new_commands()
    assert summary(commands) == {("apply", "tc-1", REPO_A), ("apply", "tc-1", REPO_B)}
    by_url = {c.parameters["repo_url"]: c for _, c in commands}
    tool = by_url[REPO_A]
    assert tool.tool_type_id == "githubconsolidated"
    assert tool.parameters == {"type": "link", "repo_url": REPO_A, "git_id": "github", "has_issues": False}
    assert tool.key == naming.tool_key("tc-1", REPO_A)
    assert tool.name == "github org-app-a"
    assert tool.purpose == "github"

    await linker.publish(instance([REPO_A, REPO_B, REPO_C], 2))
    assert summary(await linker.new_commands()) == {("apply", "tc-1", REPO_C)}

    await linker.publish(instance([REPO_A, REPO_C], 3))
    removed = await linker.new_commands()
    assert summary(removed) == {("remove", "tc-1", REPO_B)}
    assert removed[0][1].key == naming.tool_key("tc-1", REPO_B)
    assert removed[0][1].revision > by_url[REPO_B].revision

    await linker.publish(service("sid-1", "bound", ["tc-1", "tc-2"], 3))
    assert summary(await linker.new_commands()) == {("apply", "tc-2", REPO_A), ("apply", "tc-2", REPO_C)}

    await linker.publish(service("sid-1", "unbound", ["tc-2"], 4))
    assert summary(await linker.new_commands()) == {("remove", "tc-1", REPO_A), ("remove", "tc-1", REPO_C)}

    await linker.publish(service("sid-1", "deprovisioned", [], 5))
    assert summary(await linker.new_commands()) == {("remove", "tc-2", REPO_A), ("remove", "tc-2", REPO_C)}

    # Health and metrics on the bound port.
    async with aiohttp.ClientSession() as http:
        base = f"http://127.0.0.1:{linker.runtime.port}"
        for path in ("/healthz", "/readyz"):
            async with http.get(base + path) as resp:
                assert resp.status == 200, await resp.text()
        async with http.get(base + "/metrics") as resp:
            body = await resp.text()
    assert 'kotc_github_linker_commands_total{command="otc.tool.apply"} 5.0' in body


async def test_duplicates_stale_events_and_unchanged_snapshots_send_nothing(linker: Linker) -> None:
    bound = service("sid-1", "bound", ["tc-1"], 2)
    changed = instance([REPO_A, REPO_B], 5)
    await linker.publish(bound)
    await linker.publish(changed)
    first = await linker.new_commands()
    assert summary(first) == {("apply", "tc-1", REPO_A), ("apply", "tc-1", REPO_B)}

    await linker.publish(changed)  # redelivery: same event id
    await linker.publish(bound)
    await linker.publish(instance([REPO_A], 4))  # stale: older revision
    await linker.publish(service("sid-1", "unbound", [], 1))  # stale
    await linker.publish(snapshot([REPO_B, REPO_A], 1, instance_revision=5))  # same state as a snapshot
    await linker.publish(snapshot([REPO_B, REPO_A], 2, instance_revision=5))
    assert await linker.new_commands() == []

    await linker.publish(
        snapshot([REPO_A, REPO_C], 3, instance_revision=5)
    )  # a snapshot that differs reconciles
    assert summary(await linker.new_commands()) == {("apply", "tc-1", REPO_C), ("remove", "tc-1", REPO_B)}
    await linker.publish(snapshot([REPO_A], 2, instance_revision=5))  # stale snapshot
    assert await linker.new_commands() == []
    await linker.publish(snapshot([], 4, exists=False, instance_revision=6))  # instance gone
    assert summary(await linker.new_commands()) == {("remove", "tc-1", REPO_A), ("remove", "tc-1", REPO_C)}


async def test_snapshot_older_than_an_applied_instance_event_does_not_undo_it(linker: Linker) -> None:
    """Snapshots have their own sequence; their repositories count as of ``instance_revision``.

    A snapshot taken before an instance change but handled after it (its first delivery failed and
    it came back from a retry queue) must not remove the tools that change added.
    """
    await linker.publish(service("sid-1", "bound", ["tc-1"], 1))
    await linker.publish(instance([REPO_A], 2))
    await linker.publish(instance([REPO_A, REPO_B], 3))
    assert summary(await linker.new_commands()) == {("apply", "tc-1", REPO_A), ("apply", "tc-1", REPO_B)}

    await linker.publish(snapshot([REPO_A], 7, instance_revision=2))  # taken before revision 3
    assert await linker.new_commands() == []

    # A snapshot at the applied revision (or newer) still reconciles, and then fences older events.
    await linker.publish(snapshot([REPO_A, REPO_B, REPO_C], 8, instance_revision=4))
    assert summary(await linker.new_commands()) == {("apply", "tc-1", REPO_C)}
    await linker.publish(instance([REPO_A, REPO_B], 3))  # late: older than the snapshot's view
    assert await linker.new_commands() == []
    await linker.publish(instance([REPO_A], 5))
    assert summary(await linker.new_commands()) == {("remove", "tc-1", REPO_B), ("remove", "tc-1", REPO_C)}


async def test_instance_before_service_converges_to_the_same_commands(linker: Linker) -> None:
    # Instance "late" first: service then instance; instance "early": instance then service.
    await linker.publish(service("sid-late", "bound", ["tc-1"], 1, namespace="late"))
    await linker.publish(instance([REPO_A, REPO_B], 1, namespace="late"))
    await linker.publish(instance([REPO_A, REPO_B], 1, namespace="early"))
    await linker.publish(service("sid-early", "bound", ["tc-2"], 1, namespace="early"))
    commands = await linker.new_commands()
    per_toolchain: dict[str, set[tuple[str, str, str]]] = {}
    for rk, c in commands:
        per_toolchain.setdefault(c.toolchain_id, set()).add((rk, c.name, json.dumps(c.parameters)))
    assert len(commands) == 4
    assert per_toolchain["tc-1"] == per_toolchain["tc-2"]


async def test_services_sharing_a_toolchain_share_tools(linker: Linker) -> None:
    await linker.publish(instance([REPO_A, GHE_REPO, "https://gitlab.com/o/r"], 1))
    await linker.publish(service("sid-1", "bound", ["tc-1"], 1))
    await linker.publish(service("sid-2", "bound", ["tc-1"], 1))
    commands = await linker.new_commands()
    assert summary(commands) == {("apply", "tc-1", REPO_A), ("apply", "tc-1", GHE_REPO)}
    ghe = next(c for _, c in commands if c.parameters["repo_url"] == GHE_REPO)
    assert ghe.parameters["git_id"] == "ghe-guid"
    assert naming.NAME_PATTERN.match(ghe.name)

    await linker.publish(service("sid-1", "unbound", [], 2))
    assert await linker.new_commands() == []  # sid-2 still wants them
    await linker.publish(service("sid-2", "deprovisioned", [], 2))
    assert summary(await linker.new_commands()) == {("remove", "tc-1", REPO_A), ("remove", "tc-1", GHE_REPO)}


async def test_restart_sends_nothing_for_an_unchanged_world(amqp_url: str, mongodb_url: str) -> None:
    async with running(amqp_url, mongodb_url) as first:
        await first.publish(service("sid-1", "bound", ["tc-1"], 1))
        await first.publish(instance([REPO_A], 1))
        assert summary(await first.new_commands()) == {("apply", "tc-1", REPO_A)}
    async with running(amqp_url, mongodb_url) as second:
        await second.publish(snapshot([REPO_A], 1, instance_revision=1))
        await second.publish(service("sid-1", "bound", ["tc-1"], 1))  # redelivered after restart
        assert await second.new_commands() == []
        await second.publish(snapshot([REPO_A, REPO_B], 2, instance_revision=1))
        assert summary(await second.new_commands()) == {("apply", "tc-1", REPO_B)}
