"""github-linker's own collections (docs/architecture.md §6): only what it needs to derive GitHub tools.

- ``github_linker_services``: Kabanero service -> its instance, bound toolchains, last revision.
- ``github_linker_instances``: instance (cluster/namespace) -> repository URLs, last revisions.
- ``github_linker_tools``: per command key what was last sent (present or removed, content hash) and
  the revision counter of that key; the "before" of every diff, so it survives restarts.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict
from pymongo import ASCENDING, ReturnDocument, UpdateOne
from pymongo.asynchronous.database import AsyncDatabase

from shared.mongo import Document

SERVICES = "github_linker_services"
INSTANCES = "github_linker_instances"
TOOLS = "github_linker_tools"


class _Doc(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    schema_version: int = 1


class ServiceState(_Doc):
    sid: str
    instance: str
    toolchains: tuple[str, ...] = ()
    revision: int
    deleted: bool = False


class InstanceState(_Doc):
    key: str
    repos: tuple[str, ...] = ()
    revision: int = -1
    snapshot_revision: int = -1


class ToolEntry(_Doc):
    key: str
    toolchain_id: str
    url: str
    revision: int = 0
    present: bool = False
    content_hash: str | None = None


@dataclass(frozen=True)
class Sent:
    """A command RabbitMQ confirmed, to record in the tools ledger."""

    key: str
    revision: int
    present: bool
    content_hash: str | None


def _load[M: _Doc](model: type[M], doc: Document | None, id_field: str) -> M | None:
    if doc is None:
        return None
    return model.model_validate({**doc, id_field: doc["_id"]})


class Store:
    def __init__(self, db: AsyncDatabase[Document]) -> None:
        self._services = db[SERVICES]
        self._instances = db[INSTANCES]
        self._tools = db[TOOLS]

    async def create_indexes(self) -> None:
        await self._services.create_index([("toolchains", ASCENDING)])
        await self._services.create_index([("instance", ASCENDING)])
        await self._tools.create_index([("toolchain_id", ASCENDING)])

    async def service(self, sid: str) -> ServiceState | None:
        return _load(ServiceState, await self._services.find_one({"_id": sid}), "sid")

    async def services_bound_to(self, toolchain_id: str) -> list[ServiceState]:
        cursor = self._services.find({"toolchains": toolchain_id, "deleted": False})
        return [s for d in await cursor.to_list() if (s := _load(ServiceState, d, "sid"))]

    async def services_of(self, instance: str) -> list[ServiceState]:
        cursor = self._services.find({"instance": instance, "deleted": False})
        return [s for d in await cursor.to_list() if (s := _load(ServiceState, d, "sid"))]

    async def put_service(self, state: ServiceState) -> None:
        doc = state.model_dump(exclude={"sid"})
        doc["toolchains"] = list(state.toolchains)
        await self._services.replace_one({"_id": state.sid}, doc, upsert=True)

    async def instance(self, key: str) -> InstanceState | None:
        return _load(InstanceState, await self._instances.find_one({"_id": key}), "key")

    async def put_instance(self, state: InstanceState) -> None:
        doc = state.model_dump(exclude={"key"})
        doc["repos"] = list(state.repos)
        await self._instances.replace_one({"_id": state.key}, doc, upsert=True)

    async def tools_in(self, toolchain_id: str) -> dict[str, ToolEntry]:
        docs = await self._tools.find({"toolchain_id": toolchain_id}).to_list()
        return {e.key: e for d in docs if (e := _load(ToolEntry, d, "key"))}

    async def next_revision(self, key: str, *, toolchain_id: str, url: str) -> int:
        """Atomically reserve the next command revision of ``key`` (monotonic across processes)."""
        doc = await self._tools.find_one_and_update(
            {"_id": key},
            {
                "$inc": {"revision": 1},
                "$setOnInsert": {
                    "toolchain_id": toolchain_id,
                    "url": url,
                    "present": False,
                    "schema_version": 1,
                },
            },
            upsert=True,
            return_document=ReturnDocument.AFTER,
        )
        assert doc is not None
        return int(doc["revision"])

    async def mark_sent(self, sent: Sequence[Sent]) -> None:
        """Record confirmed commands in one round trip, each unless a newer revision of its key was
        reserved meanwhile."""
        if not sent:
            return
        await self._tools.bulk_write(
            [
                UpdateOne(
                    {"_id": s.key, "revision": s.revision},
                    {"$set": {"present": s.present, "content_hash": s.content_hash}},
                )
                for s in sent
            ],
            ordered=False,
        )
