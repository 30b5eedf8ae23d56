"""Event handling: keep the facts, derive desired GitHub tools per toolchain, send the difference.

Desired state of toolchain T: for every (not deleted) Kabanero service bound to T, one
``githubconsolidated`` link tool per distinct repository of the service's instance; the key is per
(T, repository URL), so two services wanting the same repository in T share one tool, which is removed
only when no bound service wants it any more.

The "before" of each diff is the tools ledger (what this service last sent per key), so the
comparison is level-triggered: an unchanged event or snapshot sends nothing, and a missed change is
corrected by the next event touching the toolchain. Order per event: compute with the new facts in
memory, publish the commands (confirmed), record them in the ledger, and only then store the new
facts; a crash anywhere replays the same diff on redelivery, and a replayed command is harmless
(same key and content; otc-writer is idempotent).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter

from services.github_linker import naming
from services.github_linker.settings import Settings
from services.github_linker.store import InstanceState, Sent, ServiceState, Store
from shared.amqp import DataModels, Delivery, Publisher, PublishError, RetryableError
from shared.events import (
    CloudEvent,
    InstanceData,
    InstanceRef,
    Repository,
    RoutingKeys,
    ServiceEventData,
    SnapshotData,
    ToolCommand,
    normalize_repository_url,
)
from shared.keyed_locks import KeyedLocks
from shared.otc_tools import tool_content_hash

log = logging.getLogger(__name__)

SOURCE = "github-linker"
SERVICE_PREFIX = "service.kabanero."


type LinkerData = ServiceEventData | InstanceData | SnapshotData
type Message = Delivery[LinkerData | None]

decode: DataModels[LinkerData] = DataModels(
    {
        f"{SERVICE_PREFIX}*": ServiceEventData,
        RoutingKeys.INSTANCE_CHANGED: InstanceData,
        RoutingKeys.INSTANCE_DELETED: InstanceData,
        RoutingKeys.SNAPSHOT: SnapshotData,
    }
)
"""The consumer's decoder: each message's data is validated once, here, for the key and the handler."""


def key_of(message: Message) -> str:
    """Serialization key for the consumer: the Kabanero instance an event concerns."""
    match message.data:
        case ServiceEventData() as data:
            return data.scope
        case InstanceData(instance=ref) | SnapshotData(instance=ref):
            return ref.scope
    return message.event.subject or message.event.id


@dataclass(frozen=True)
class DesiredTool:
    key: str
    url: str
    command: ToolCommand  # revision 0: the real one is reserved when sent
    content_hash: str


class Metrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.events = Counter(
            "kotc_github_linker_events_total", "Events by outcome", ["outcome"], registry=registry
        )
        self.commands = Counter(
            "kotc_github_linker_commands_total", "Tool commands sent", ["command"], registry=registry
        )


class Linker:
    def __init__(self, *, store: Store, publisher: Publisher, settings: Settings, metrics: Metrics) -> None:
        self._store = store
        self._publisher = publisher
        self._settings = settings
        self._metrics = metrics
        self._ghe = {h.lower(): g for h, g in settings.ghe_hosts.items()}
        self._github = frozenset(h.lower() for h in settings.github_hosts)
        self._kinds = frozenset(settings.github_repo_kinds)
        # Concurrency (the consumer runs up to PREFETCH messages at once, one at a time per instance,
        # :func:`key_of`): the facts of an instance only change under its own key, but the desired
        # state of a toolchain spans every instance bound to it. So a diff holds the lock of each
        # toolchain it touches (sorted: no deadlock) from the first read of the toolchain's facts
        # until its own facts are stored; a service event also holds its service's lock (a service
        # whose parameters moved it to another instance changes key). Different toolchains run in
        # parallel.
        self._toolchains = KeyedLocks()
        self._services = KeyedLocks()

    async def handle(self, message: Message) -> None:
        match message.data:
            case ServiceEventData() as data:
                async with self._services[data.instance_id]:
                    await self._on_service(data)
            case InstanceData() as inst:
                deleted = inst.deleted or message.routing_key == RoutingKeys.INSTANCE_DELETED
                repos = () if deleted else inst.repositories
                await self._on_instance(inst.instance, repos, revision=inst.revision)
            case SnapshotData() as snap:
                repos = snap.repositories if snap.exists else ()
                await self._on_instance(
                    snap.instance,
                    repos,
                    revision=snap.revision,
                    instance_revision=snap.instance_revision,
                    parts=snap.parts,
                )
            case None:
                self._metrics.events.labels("ignored").inc()
                log.info("ignoring event", extra={"type": message.event.type, "event_id": message.id})

    @contextlib.asynccontextmanager
    async def _holding(self, toolchains: Iterable[str]) -> AsyncIterator[None]:
        async with contextlib.AsyncExitStack() as stack:
            for toolchain_id in sorted(set(toolchains)):
                await stack.enter_async_context(self._toolchains[toolchain_id])
            yield

    # --- facts --------------------------------------------------------------------------------

    async def _on_service(self, data: ServiceEventData) -> None:
        if data.kind != "kabanero":
            self._metrics.events.labels("ignored").inc()
            return
        old = await self._store.service(data.instance_id)
        if old is not None and data.revision < old.revision:
            self._skip_stale(data.instance_id, data.revision, old.revision)
            return
        new = ServiceState(
            sid=data.instance_id,
            instance=data.parameters.scope,
            toolchains=() if data.deleted else tuple(sorted(set(data.toolchains))),
            revision=data.revision,
            deleted=data.deleted,
        )
        affected = set(new.toolchains) | set(old.toolchains if old else ())
        async with self._holding(affected):
            await self._reconcile(affected, service=new)
            await self._store.put_service(new)
        self._metrics.events.labels("applied").inc()

    async def _on_instance(
        self,
        ref: InstanceRef,
        repos: Iterable[Repository],
        *,
        revision: int,
        instance_revision: int | None = None,
        parts: int = 1,
    ) -> None:
        """Store an instance's repositories and reconcile the toolchains of its services.

        A snapshot (``instance_revision`` given) has its own sequence (``revision``, against
        ``snapshot_revision``); its repositories are instance data at ``instance_revision``, so they
        are ignored when an instance event newer than that was applied already (a snapshot delayed
        by a retry must not undo it). The toolchains are still reconciled then, from the stored
        repositories (drift repair).

        A snapshot in several ``parts`` (``shared.snapshot_parts``) splits only its triggers, which
        the linker does not read: every part carries the whole of what it reads (``exists``,
        ``repositories``, ``instance_revision``), so the first part of a revision to arrive applies
        it and the others are skipped, with no part to keep.
        """
        key = ref.scope
        old = await self._store.instance(key) or InstanceState(key=key)
        last = old.revision if instance_revision is None else old.snapshot_revision
        if revision < last or (parts > 1 and revision == last):
            self._skip_stale(key, revision, last)
            return
        urls = tuple(
            sorted({normalize_repository_url(r.url) for r in repos if self._kinds.intersection(r.kinds)})
        )
        changes: dict[str, object]
        if instance_revision is None:
            changes = {"repos": urls, "revision": revision}
        elif instance_revision < old.revision:
            log.info(
                "snapshot older than the applied instance event: keeping its repositories",
                extra={"key": key, "instance_revision": instance_revision, "applied": old.revision},
            )
            changes = {"snapshot_revision": revision}
        else:
            # Also fences instance events older than the snapshot that are still to come.
            changes = {"repos": urls, "snapshot_revision": revision, "revision": instance_revision}
        new = old.model_copy(update=changes)
        affected = {t for s in await self._store.services_of(key) for t in s.toolchains}
        async with self._holding(affected):
            await self._reconcile(affected, instance=new)
            await self._store.put_instance(new)
        self._metrics.events.labels("applied").inc()

    def _skip_stale(self, key: str, revision: int, last: int) -> None:
        self._metrics.events.labels("stale").inc()
        log.info("skipping stale event", extra={"key": key, "revision": revision, "applied": last})

    # --- desired state and diff ----------------------------------------------------------------

    async def _reconcile(
        self,
        toolchains: Iterable[str],
        *,
        service: ServiceState | None = None,
        instance: InstanceState | None = None,
    ) -> None:
        for toolchain_id in sorted(toolchains):
            desired = await self._desired(toolchain_id, service=service, instance=instance)
            sent = await self._store.tools_in(toolchain_id)
            confirmed: list[Sent] = []
            try:
                for key, tool in desired.items():
                    entry = sent.get(key)
                    if entry is None or not entry.present or entry.content_hash != tool.content_hash:
                        confirmed.append(await self._send(RoutingKeys.TOOL_APPLY, tool, present=True))
                for key, entry in sent.items():
                    if entry.present and key not in desired:
                        tool = self._tool(toolchain_id, entry.url)
                        confirmed.append(await self._send(RoutingKeys.TOOL_REMOVE, tool, present=False))
            finally:
                # One round trip for the toolchain's confirmed commands, also when a later one failed
                # (its retry then resends only what is not recorded).
                await self._store.mark_sent(confirmed)

    async def _desired(
        self, toolchain_id: str, *, service: ServiceState | None, instance: InstanceState | None
    ) -> dict[str, DesiredTool]:
        """The tools ``toolchain_id`` should have, with the new facts of this event in memory."""
        services = await self._bound_services(toolchain_id, service)
        urls: set[str] = set()
        for key in {s.instance for s in services}:
            state = (
                instance if instance is not None and instance.key == key else await self._store.instance(key)
            )
            urls.update(state.repos if state else ())
        tools = (self._tool(toolchain_id, url) for url in urls)
        return {t.key: t for t in tools if t.command.parameters}

    async def _bound_services(self, toolchain_id: str, service: ServiceState | None) -> list[ServiceState]:
        """The stored services bound to the toolchain, with ``service`` (new) in place of its old self."""
        stored = await self._store.services_bound_to(toolchain_id)
        if service is None:
            return stored
        others = [s for s in stored if s.sid != service.sid]
        return [*others, service] if toolchain_id in service.toolchains else others

    def _tool(self, toolchain_id: str, url: str) -> DesiredTool:
        """The tool for ``url`` in ``toolchain_id``; empty parameters when its host is no known GitHub."""
        git = naming.git_id(
            url, github_git_id=self._settings.github_git_id, github_hosts=self._github, ghe_hosts=self._ghe
        )
        params = naming.link_parameters(url, git) if git else {}
        name = naming.tool_name(url, github_hosts=self._github)
        command = ToolCommand(
            purpose=naming.PURPOSE,
            key=naming.tool_key(toolchain_id, url),
            toolchain_id=toolchain_id,
            tool_type_id=naming.TOOL_TYPE_ID,
            name=name,
            parameters=params,
            revision=0,
        )
        return DesiredTool(
            key=command.key,
            url=url,
            command=command,
            content_hash=tool_content_hash(naming.TOOL_TYPE_ID, name, params),
        )

    async def _send(self, routing_key: str, tool: DesiredTool, *, present: bool) -> Sent:
        """Reserve the key's next revision, publish the command (confirmed); the caller records it."""
        revision = await self._store.next_revision(
            tool.key, toolchain_id=tool.command.toolchain_id, url=tool.url
        )
        command = tool.command.model_copy(update={"revision": revision})
        event = CloudEvent.for_data(routing_key, command, source=SOURCE, subject=tool.key)
        try:
            await self._publisher.publish(event)
        except PublishError as exc:
            raise RetryableError(f"command not confirmed: {exc}") from exc
        self._metrics.commands.labels(routing_key).inc()
        log.info(
            "sent %s",
            routing_key,
            extra={
                "key": tool.key,
                "toolchain_id": tool.command.toolchain_id,
                "url": tool.url,
                "revision": revision,
            },
        )
        return Sent(tool.key, revision, present, tool.content_hash if present else None)
