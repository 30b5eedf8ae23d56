"""Shared set-up for the otc-writer integration tests (no tests here).

Real RabbitMQ (a vhost per test), the mongoeco wire server, and emulators.otc over HTTP.
"""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import pytest
from aio_pika.abc import AbstractIncomingMessage

from emulators.otc.models import CallRecord
from emulators.otc.testing import OtcEmulator
from services.otc_writer.app import EVENTS_QUEUE, Deps, OtcWriter, build
from services.otc_writer.settings import Settings
from shared.amqp import AmqpConnection, Publisher, Topology, declare_topology
from shared.events import (
    CloudEvent,
    InstanceRef,
    RoutingKeys,
    ServiceEvent,
    ServiceEventData,
    ServiceParameters,
    SnapshotData,
    TektonCardData,
    TektonCardKey,
    TektonKind,
    TektonSnapshotData,
    ToolCommand,
    TriggerData,
    TriggerKey,
)
from tests.helpers import drain_queue, wait_until

FAST = Topology(retry_delays_s=(1,))
API_KEY = "writer-test-key"
CLUSTER, NAMESPACE = "default", "kabanero"
INSTANCE = InstanceRef(cluster=CLUSTER, namespace=NAMESPACE)
WRITE_METHODS = ("POST", "PATCH", "DELETE")


def writes(calls: list[CallRecord]) -> list[CallRecord]:
    """Tool writes that reached the API and were answered 2xx or dropped after commit."""
    return [
        c
        for c in calls
        if c.method in WRITE_METHODS
        and "/tools" in c.path
        and (c.dropped or (c.status is not None and c.status < 300))
    ]


def service_event(
    what: ServiceEvent,
    *,
    revision: int,
    toolchains: list[str],
    toolchain_id: str | None = None,
    instance_id: str = "svc-1",
    namespace: str = NAMESPACE,
) -> CloudEvent:
    data = ServiceEventData(
        kind="kabanero-events",
        instance_id=instance_id,
        service_id="kabanero-events",
        parameters=ServiceParameters(cluster=CLUSTER, namespace=namespace),
        toolchains=toolchains,
        toolchain_id=toolchain_id,
        revision=revision,
        deleted=what == "deprovisioned",
    )
    return CloudEvent.for_data(
        RoutingKeys.service("kabanero-events", what), data, source="test", subject=instance_id
    )


def trigger(
    name: str,
    *,
    revision: int = 1,
    body: str = "v1",
    owner: str = "webhook",
    deleted: bool = False,
    namespace: str = NAMESPACE,
) -> TriggerData:
    content: dict[str, Any] = {"body": body}
    return TriggerData(
        key=TriggerKey(cluster=CLUSTER, namespace=namespace, generation="mediation", owner=owner, name=name),
        instance=InstanceRef(cluster=CLUSTER, namespace=namespace),
        content=content,
        content_hash=hashlib.sha256(body.encode()).hexdigest(),
        destinations=[f"https://listener.example/{name}"],
        revision=revision,
        deleted=deleted,
    )


def trigger_event(data: TriggerData, what: str = "created") -> CloudEvent:
    rk = {
        "created": RoutingKeys.TRIGGER_CREATED,
        "updated": RoutingKeys.TRIGGER_UPDATED,
        "deleted": RoutingKeys.TRIGGER_DELETED,
    }[what]
    return CloudEvent.for_data(rk, data, source="test", subject=data.key.id)


def snapshot_event(
    triggers: list[TriggerData],
    *,
    revision: int,
    namespace: str = NAMESPACE,
    trigger_revisions: dict[str, int] | None = None,
) -> CloudEvent:
    """``trigger_revisions`` defaults to the listed triggers' own: a watcher that never published
    any other trigger of the instance."""
    data = SnapshotData(
        instance=InstanceRef(cluster=CLUSTER, namespace=namespace),
        exists=True,
        triggers=triggers,
        revision=revision,
        instance_revision=0,
        trigger_revisions=(
            {t.key.id: t.revision for t in triggers} if trigger_revisions is None else trigger_revisions
        ),
    )
    return CloudEvent.for_data(RoutingKeys.SNAPSHOT, data, source="test")


def tekton_service_event(
    what: ServiceEvent,
    *,
    revision: int,
    toolchains: list[str],
    toolchain_id: str | None = None,
    instance_id: str = "tekton-1",
    namespaces: list[str] | None = None,
) -> CloudEvent:
    """A ``service.tekton.*`` event: a Tekton service of ``CLUSTER`` mirroring ``namespaces`` (None: all)."""
    data = ServiceEventData(
        kind="tekton",
        instance_id=instance_id,
        service_id="tekton",
        parameters=ServiceParameters(cluster=CLUSTER, namespaces=namespaces),
        toolchains=toolchains,
        toolchain_id=toolchain_id,
        revision=revision,
        deleted=what == "deprovisioned",
    )
    return CloudEvent.for_data(RoutingKeys.service("tekton", what), data, source="test", subject=instance_id)


def card(
    name: str,
    *,
    kind: TektonKind = "Pipeline",
    revision: int = 1,
    tasks: tuple[str, ...] = ("build",),
    namespace: str = NAMESPACE,
    deleted: bool = False,
    content_hash: str | None = None,
) -> TektonCardData:
    """A Tekton card; ``content_hash`` differs from what the card shows only to model status noise."""
    return TektonCardData(
        key=TektonCardKey(cluster=CLUSTER, namespace=namespace, kind=kind, name=name),
        api_version="tekton.dev/v1beta1",
        pipelines_version="v0.11.3",
        tasks=list(tasks),
        content_hash=content_hash or hashlib.sha256(",".join(tasks).encode()).hexdigest(),
        revision=revision,
        deleted=deleted,
    )


def card_event(data: TektonCardData, what: str = "created") -> CloudEvent:
    rk = {
        "created": RoutingKeys.CARD_CREATED,
        "updated": RoutingKeys.CARD_UPDATED,
        "deleted": RoutingKeys.CARD_DELETED,
    }[what]
    return CloudEvent.for_data(rk, data, source="test", subject=data.key.id)


def tekton_snapshot_event(
    cards: list[TektonCardData],
    *,
    revision: int,
    namespace: str = NAMESPACE,
    card_revisions: dict[str, int] | None = None,
) -> CloudEvent:
    data = TektonSnapshotData(
        cluster=CLUSTER,
        namespace=namespace,
        cards=cards,
        revision=revision,
        card_revisions=card_revisions or {},
    )
    return CloudEvent.for_data(RoutingKeys.TEKTON_SNAPSHOT, data, source="test")


def command(
    what: str,
    *,
    key: str,
    toolchain_id: str,
    revision: int,
    repo: str = "https://github.com/org/app",
    name: str | None = None,
) -> CloudEvent:
    data = ToolCommand(
        purpose="github",
        key=key,
        toolchain_id=toolchain_id,
        tool_type_id="githubconsolidated",
        name=name or f"kabanero-repo {key}",
        parameters={"type": "link", "git_id": "github", "repo_url": repo, "has_issues": False},
        revision=revision,
    )
    rk = RoutingKeys.TOOL_APPLY if what == "apply" else RoutingKeys.TOOL_REMOVE
    return CloudEvent.for_data(rk, data, source="test", subject=key)


async def dead_letters(env: WriterEnv, queue: str, *, wait: bool) -> list[AbstractIncomingMessage]:
    """What ``queue``'s dead-letter queue holds (waiting for at least one when ``wait``)."""
    dead: list[AbstractIncomingMessage] = []

    async def arrived() -> bool:
        dead.extend(await drain_queue(env.amqp_url, f"{queue}.dead", timeout=0.2))
        return bool(dead)

    if wait:
        await wait_until(arrived, timeout=10, what=f"a dead letter on {queue}")
    else:
        await arrived()
    return dead


@dataclass
class WriterEnv:
    otc: OtcEmulator
    amqp_url: str
    mongodb_url: str
    publisher: Publisher
    writers: list[OtcWriter] = field(default_factory=list)

    def settings(self, **overrides: Any) -> Settings:
        values: dict[str, Any] = {
            "amqp_url": self.amqp_url,
            "mongodb_url": self.mongodb_url,
            "http_host": "127.0.0.1",
            "http_port": 0,
            "otc_api_url": self.otc.api_url,
            "otc_iam_url": self.otc.url,
            "otc_api_key": API_KEY,
            "otc_rate_limit": 1000.0,
            "otc_backoff_base_s": 0.05,
            "connect_timeout_s": 10.0,
            "lease_ttl_s": 5.0,
            "lease_wait_s": 10.0,
            "shutdown_timeout_s": 5.0,
        }
        values.update(overrides)
        return Settings(**values)

    @asynccontextmanager
    async def writer(self, deps: Deps | None = None, **overrides: Any) -> AsyncIterator[OtcWriter]:
        runtime = build(self.settings(**overrides), deps=deps or Deps(topology=FAST))
        async with runtime:
            self.writers.append(runtime)
            yield runtime

    async def publish(self, *events: CloudEvent) -> None:
        for event in events:
            await self.publisher.publish(event)

    async def wait_handled(self, writer: OtcWriter, count: int, queue: str = EVENTS_QUEUE) -> None:
        await wait_until(
            lambda: writer.handled[queue] >= count, timeout=20, what=f"{count} handled on {queue}"
        )

    def tool_names(self, toolchain_id: str) -> list[str]:
        return sorted(t.name or "" for t in self.otc.tools(toolchain_id))


@pytest.fixture(name="env")
async def writer_env_fixture(amqp_url: str, mongodb_url: str) -> AsyncIterator[WriterEnv]:
    async with OtcEmulator.running(port=0, api_keys=(API_KEY,)) as otc:
        conn = AmqpConnection(amqp_url, name="test-publisher", connect_timeout=5)
        await conn.connect()
        channel = await conn.channel()
        await declare_topology(channel, FAST)
        await channel.close()
        publisher = Publisher(conn, timeout=5)
        await publisher.start()
        try:
            yield WriterEnv(otc=otc, amqp_url=amqp_url, mongodb_url=mongodb_url, publisher=publisher)
        finally:
            await conn.close()
