"""What the watcher has published, persisted in its own collection ``watch_published``.

One record per (cluster, kind, key): the content hash, revision and data of the last event for
that key. The record is written *before* its event is published, marked ``pending``, and marked
done after the broker's confirm. A revision number is therefore never reused for other content,
even when the process dies between publish and record: after a restart a pending record is
either re-published as it is (same id; the cluster still looks like that) or superseded by the
next revision (the cluster moved on: an update, or the delete of a key the new process never
saw). Deleted keys stay as tombstones so revisions remain monotonic when a key comes back.

The records of one namespace live in one document (``_id`` ``<cluster>|<namespace>``), each record
as its JSON text: a namespace's diff is published as one batch, so its pending records are one
write and its done records one more, whatever the number of events (two round trips per batch,
the minimum that "pending before publish, done after confirm" allows). A snapshot's record keeps
only its revision: its content is never read back. Documents of the first layout (one per record,
``schema_version`` 1) are read on load and replaced by their namespace's document on its first write.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict
from pymongo import ASCENDING, DeleteMany, ReplaceOne
from pymongo.asynchronous.database import AsyncDatabase

from shared.mongo import Document

log = logging.getLogger(__name__)

COLLECTION = "watch_published"
LAYOUT_VERSION = 2

RecordKind = Literal["instance", "trigger", "snapshot", "installation", "card", "tekton-snapshot"]
Ident = tuple[str, str]  # (kind, key)
# A snapshot's record keeps only its revision; it is never pending work.
SNAPSHOT_KINDS: frozenset[str] = frozenset({"snapshot", "tekton-snapshot"})


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
        """The ``_id`` of the record's own document in the first layout."""
        return f"{self.cluster}|{self.kind}|{self.key}"


class PublishedState:
    """In-memory mirror of ``watch_published`` for one cluster; writes go through to MongoDB."""

    def __init__(self, db: AsyncDatabase[Document], cluster: str) -> None:
        self._coll = db[COLLECTION]
        self.cluster = cluster
        self._records: dict[Ident, Record] = {}
        self._texts: dict[Ident, str] = {}
        """Each record's JSON as stored: a namespace's write re-serialises only what changed."""
        self._by_ns: dict[str, set[Ident]] = {}
        self._legacy: dict[str, list[str]] = {}  # namespace -> _ids of first-layout documents

    async def ensure_indexes(self) -> None:
        # Lookups are by ``_id`` (cluster and namespace); this index serves operators' queries only.
        await self._coll.create_index([("cluster", ASCENDING), ("namespace", ASCENDING)], name="namespace")

    async def load(self) -> None:
        self._records.clear()
        self._texts.clear()
        self._by_ns.clear()
        self._legacy.clear()
        current: dict[str, list[str]] = {}
        async for doc in self._coll.find({"cluster": self.cluster}):
            if doc.get("layout") == LAYOUT_VERSION:
                current[doc["namespace"]] = doc.get("records") or []
                continue
            doc_id = doc.pop("_id", None)
            doc.pop("updated_at", None)
            record = Record.model_validate(doc)
            self._legacy.setdefault(record.namespace, []).append(str(doc_id))
            if record.namespace not in current:
                self._remember(record)
        for namespace, texts in current.items():
            # A namespace document is written after (and holds) everything its old documents held.
            for ident in self._by_ns.pop(namespace, set()):
                self._records.pop(ident, None)
                self._texts.pop(ident, None)
            for text in texts:
                self._remember(Record.model_validate_json(text), text)

    def _remember(self, record: Record, text: str | None = None) -> None:
        ident = (record.kind, record.key)
        self._records[ident] = record
        self._texts[ident] = text if text is not None else record.model_dump_json()
        self._by_ns.setdefault(record.namespace, set()).add(ident)

    def get(self, kind: RecordKind, key: str) -> Record | None:
        return self._records.get((kind, key))

    def namespaces(self, kinds: frozenset[str] | None = None) -> set[str]:
        """Namespaces with records (of ``kinds`` only, when given)."""
        if kinds is None:
            return set(self._by_ns)
        return {ns for ns, idents in self._by_ns.items() if any(i[0] in kinds for i in idents)}

    def in_namespace(self, namespace: str, kind: RecordKind) -> list[Record]:
        idents = sorted(i for i in self._by_ns.get(namespace, ()) if i[0] == kind)
        return [self._records[i] for i in idents]

    def pending_in_namespace(self, namespace: str, kinds: frozenset[str]) -> list[Record]:
        """Records of ``kinds`` whose event may not have been confirmed."""
        return [
            self._records[i]
            for i in sorted(self._by_ns.get(namespace, ()))
            if i[0] in kinds and i[0] not in SNAPSHOT_KINDS and self._records[i].pending
        ]

    def live_in_namespace(self, namespace: str, kinds: frozenset[str]) -> bool:
        """Whether any record of ``kinds`` in the namespace stands for something that exists."""
        return any(not self._records[i].deleted for i in self._by_ns.get(namespace, ()) if i[0] in kinds)

    def next_revision(self, kind: RecordKind, key: str) -> int:
        record = self.get(kind, key)
        return 1 if record is None else record.revision + 1

    async def commit_many(self, records: Iterable[Record]) -> None:
        """Persist (pending before the publish, done after the confirm), then advance the mirror:
        one replace per namespace touched, in one ``bulk_write`` (a batch is one namespace's)."""
        by_ns: dict[str, dict[Ident, Record]] = {}
        for record in records:
            stored = record.model_copy(update={"data": {}}) if record.kind in SNAPSHOT_KINDS else record
            by_ns.setdefault(stored.namespace, {})[(stored.kind, stored.key)] = stored
        if not by_ns:
            return
        now = datetime.now(UTC)
        ops: list[ReplaceOne[Document] | DeleteMany] = []
        texts = {i: r.model_dump_json() for changed in by_ns.values() for i, r in changed.items()}
        for namespace, changed in by_ns.items():
            ops.append(self._replace(namespace, changed, texts, now))
            if legacy := self._legacy.get(namespace):
                ops.append(DeleteMany({"_id": {"$in": legacy}}))
        await self._coll.bulk_write(ops, ordered=True)
        for namespace, changed in by_ns.items():
            self._legacy.pop(namespace, None)
            for ident, stored in changed.items():
                self._remember(stored, texts[ident])

    def _replace(
        self, namespace: str, changed: dict[Ident, Record], texts: dict[Ident, str], now: datetime
    ) -> ReplaceOne[Document]:
        """The namespace's document: its records as the mirror has them, with ``changed`` applied
        (``texts``: the JSON of the changed ones)."""
        idents = sorted(self._by_ns.get(namespace, set()) | changed.keys())
        records = [changed.get(i) or self._records[i] for i in idents]
        doc_id = f"{self.cluster}|{namespace}"
        doc: Document = {
            "_id": doc_id,
            "layout": LAYOUT_VERSION,
            "cluster": self.cluster,
            "namespace": namespace,
            # True while any record of the namespace waits for its confirm (for operators and tests).
            "pending": any(r.pending for r in records),
            "records": [texts.get(i) or self._texts[i] for i in idents],
            "updated_at": now,
        }
        return ReplaceOne({"_id": doc_id}, doc, upsert=True)

    async def commit(self, record: Record) -> None:
        """As :meth:`commit_many`, for one record."""
        await self.commit_many([record])
