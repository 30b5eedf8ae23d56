"""What the watcher has published, persisted in its own collection ``watch_published``.

One document per (cluster, kind, key): the content hash, revision and data of the last event for
that key. The record is written *before* its event is published, marked ``pending``, and marked
done after the broker's confirm. A revision number is therefore never reused for other content,
even when the process dies between publish and record: after a restart a pending record is
either re-published as it is (same id; the cluster still looks like that) or superseded by the
next revision (the cluster moved on: an update, or the delete of a key the new process never
saw). Deleted keys stay as tombstones so revisions remain monotonic when a key comes back.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict
from pymongo import ASCENDING, ReplaceOne
from pymongo.asynchronous.database import AsyncDatabase

from shared.mongo import Document

COLLECTION = "watch_published"

RecordKind = Literal["instance", "trigger", "snapshot"]


class Record(BaseModel):
    model_config = ConfigDict(frozen=True)

    schema_version: Literal[1] = 1
    cluster: str
    kind: RecordKind
    key: str
    namespace: str
    content_hash: str
    revision: int
    deleted: bool = False
    data: dict[str, Any]
    routing_key: str = ""
    pending: bool = False

    @property
    def doc_id(self) -> str:
        return f"{self.cluster}|{self.kind}|{self.key}"


class PublishedState:
    """In-memory mirror of ``watch_published`` for one cluster; writes go through to MongoDB."""

    def __init__(self, db: AsyncDatabase[Document], cluster: str) -> None:
        self._coll = db[COLLECTION]
        self.cluster = cluster
        self._records: dict[tuple[str, str], Record] = {}
        self._by_ns: dict[str, set[tuple[str, str]]] = {}

    async def ensure_indexes(self) -> None:
        # The identity (cluster, kind, key) is the ``_id`` (``Record.doc_id``), unique by nature: a
        # second unique index on the same fields would only add a cost to every write.
        await self._coll.create_index([("cluster", ASCENDING), ("namespace", ASCENDING)], name="namespace")

    async def load(self) -> None:
        self._records.clear()
        self._by_ns.clear()
        async for doc in self._coll.find({"cluster": self.cluster}):
            doc.pop("_id", None)
            doc.pop("updated_at", None)
            self._remember(Record.model_validate(doc))

    def _remember(self, record: Record) -> None:
        ident = (record.kind, record.key)
        self._records[ident] = record
        self._by_ns.setdefault(record.namespace, set()).add(ident)

    def get(self, kind: RecordKind, key: str) -> Record | None:
        return self._records.get((kind, key))

    def namespaces(self) -> set[str]:
        return set(self._by_ns)

    def in_namespace(self, namespace: str, kind: RecordKind) -> list[Record]:
        idents = sorted(i for i in self._by_ns.get(namespace, ()) if i[0] == kind)
        return [self._records[i] for i in idents]

    def pending_in_namespace(self, namespace: str) -> list[Record]:
        """Instance and trigger records whose event may not have been confirmed."""
        return [
            self._records[i]
            for i in sorted(self._by_ns.get(namespace, ()))
            if i[0] != "snapshot" and self._records[i].pending
        ]

    def live_in_namespace(self, namespace: str) -> bool:
        return any(not self._records[i].deleted for i in self._by_ns.get(namespace, ()) if i[0] != "snapshot")

    def next_revision(self, kind: RecordKind, key: str) -> int:
        record = self.get(kind, key)
        return 1 if record is None else record.revision + 1

    async def commit_many(self, records: list[Record]) -> None:
        """As ``commit``, for a batch: one ``bulk_write`` (the records of one namespace's diff)."""
        if not records:
            return
        now = datetime.now(UTC)
        ops = [
            ReplaceOne(
                {"_id": r.doc_id},
                {"_id": r.doc_id, **r.model_dump(mode="json"), "updated_at": now},
                upsert=True,
            )
            for r in records
        ]
        await self._coll.bulk_write(ops, ordered=False)
        for record in records:
            self._remember(record)

    async def commit(self, record: Record) -> None:
        """Persist (pending before the publish, done after the confirm), then advance the mirror."""
        doc = record.model_dump(mode="json") | {"updated_at": datetime.now(UTC)}
        await self._coll.replace_one({"_id": record.doc_id}, {"_id": record.doc_id, **doc}, upsert=True)
        self._remember(record)
