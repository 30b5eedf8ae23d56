"""What the watcher has published, persisted in its own collection ``watch_published``.

One record per (cluster, kind, key): the content hash, revision and data of the last event for
that key. The record is written *before* its event is published, marked ``pending``, and marked
done after the broker's confirm. A revision number is therefore never reused for other content,
even when the process dies between publish and record: after a restart a pending record is
either re-published as it is (same id; the cluster still looks like that) or superseded by the
next revision (the cluster moved on: an update, or the delete of a key the new process never
saw). Deleted keys stay as tombstones so revisions remain monotonic when a key comes back.

The records of one namespace live in its chunk documents (``_id``
``<cluster>|<namespace>|<n>/<chunks>``), each record as its JSON text in the chunk a stable hash of
its identity picks. A namespace's diff is published as one batch, so its pending records are one
``bulk_write`` (replacing only the chunks that changed) and its done records one more, whatever the
number of events (two round trips per batch, the minimum that "pending before publish, done after
confirm" allows). A namespace starts with one chunk; when a chunk would pass ``CHUNK_BYTES`` the
namespace doubles its chunks, written in the same bulk write before the old generation is deleted.
So no document nears MongoDB's 16 MiB (a single namespace document did, at about 12,000 triggers).
A crash between the two leaves both generations: load reads the newest *complete* one (every chunk
present; a batch not fully written was never published) and the next write deletes the other.
A snapshot's record keeps only its revision: its content is never read back.

Every document carries ``layout`` (:data:`LAYOUT_VERSION`). Load refuses a document of any other
layout (:class:`UnknownLayout`, naming its ``_id`` and layout) rather than misread or overwrite it:
a release that changes the layout bumps the number and migrates the older one explicitly
(docs/design.md, "Stored shapes and their versions").
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any, Literal

from bson.errors import InvalidDocument
from pydantic import BaseModel, ConfigDict
from pymongo import ASCENDING, DeleteMany, ReplaceOne
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import PyMongoError

from services.kabanero_watcher.refusals import StorageRefused, refusal
from shared.mongo import Document

log = logging.getLogger(__name__)

COLLECTION = "watch_published"
LAYOUT_VERSION = 3
CHUNK_BYTES = 64 * 1024
"""A chunk's record text, at most, before its namespace doubles its chunks. Far below MongoDB's
16 MiB, and small because every change rewrites its chunk twice (pending, done): at 2 MiB a
namespace of 100 triggers (about 1.2 KB each) was one 120 KB document, and its two rewrites cost the
embedded server 12.5 ms of CPU per change (in one process); at 64 KiB it is 4 chunks and 6.3 ms.
Smaller chunks cost per document where a namespace is written whole (20,000 triggers: 1,024
chunks, 2.3 s a write instead of 1.2 s for 16); docs/design.md, "watch_published of any size"."""
MAX_CHUNKS = 4096

RecordKind = Literal["instance", "trigger", "snapshot", "installation", "card", "tekton-snapshot"]
Ident = tuple[str, str]  # (kind, key)
# A snapshot's record keeps only its revision; it is never pending work.
SNAPSHOT_KINDS: frozenset[str] = frozenset({"snapshot", "tekton-snapshot"})


class UnknownLayout(Exception):
    """A ``watch_published`` document of a layout this version does not read: the term stops
    (loudly) instead of republishing everything or overwriting what it cannot read."""

    def __init__(self, doc_id: str, layout: object) -> None:
        super().__init__(
            f"{COLLECTION} document {doc_id!r} has layout {layout!r}; this version reads layout "
            f'{LAYOUT_VERSION} only (docs/design.md, "Stored shapes and their versions")'
        )
        self.doc_id = doc_id
        self.layout = layout


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


class PublishedState:
    """In-memory mirror of ``watch_published`` for one cluster; writes go through to MongoDB."""

    def __init__(self, db: AsyncDatabase[Document], cluster: str) -> None:
        self._coll = db[COLLECTION]
        self.cluster = cluster
        self._records: dict[Ident, Record] = {}
        self._texts: dict[Ident, str] = {}
        """Each record's JSON as stored: a namespace's write re-serialises only what changed."""
        self._by_ns: dict[str, set[Ident]] = {}
        self._chunks: dict[str, list[set[Ident]]] = {}  # namespace -> its chunks' records
        self._stale: dict[str, list[str]] = {}  # namespace -> _ids its next write deletes
        self._writing: dict[str, asyncio.Lock] = {}
        """One write of a namespace's chunks at a time: each family's loop commits on its own, and
        two writes planned from the same chunks would each drop the other's new records."""

    async def ensure_indexes(self) -> None:
        # Lookups are by ``_id`` (cluster and namespace); this index serves operators' queries only.
        await self._coll.create_index([("cluster", ASCENDING), ("namespace", ASCENDING)], name="namespace")

    async def load(self) -> None:
        """Read the newest complete generation of chunks of each namespace (a crash while a
        namespace doubled its chunks leaves two). Raises :class:`UnknownLayout` for a document of
        another layout."""
        self._records.clear()
        self._texts.clear()
        self._by_ns.clear()
        self._chunks.clear()
        self._stale.clear()
        chunked: dict[str, dict[int, dict[int, list[str]]]] = {}  # ns -> chunks -> n -> texts
        ids: dict[str, list[str]] = {}
        async for doc in self._coll.find({"cluster": self.cluster}):
            if doc.get("layout") != LAYOUT_VERSION:
                raise UnknownLayout(str(doc["_id"]), doc.get("layout"))
            namespace = doc["namespace"]
            ids.setdefault(namespace, []).append(str(doc["_id"]))
            chunked.setdefault(namespace, {}).setdefault(doc["chunks"], {})[doc["chunk"]] = doc["records"]
        for namespace in ids:
            kept = self._load_namespace(namespace, chunked[namespace])
            self._stale[namespace] = [i for i in ids[namespace] if i not in kept]

    def _load_namespace(self, namespace: str, generations: dict[int, dict[int, list[str]]]) -> set[str]:
        """Remember one namespace's records; returns the ``_id``s that hold them."""
        complete = [count for count, chunks in generations.items() if len(chunks) == count]
        if not complete:
            return set()  # only a batch never fully written (so never published): nothing to keep
        count = max(complete)
        for chunk in generations[count].values():
            for text in chunk:
                self._remember(Record.model_validate_json(text), text)
        self._chunks[namespace] = self._assign(self._by_ns.get(namespace, set()), count)
        return {self._chunk_id(namespace, n, count) for n in range(count)}

    def _remember(self, record: Record, text: str) -> None:
        ident = (record.kind, record.key)
        self._records[ident] = record
        self._texts[ident] = text
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
        the changed chunks of each namespace touched, in one ordered ``bulk_write`` (a batch is
        one namespace's). Raises :class:`StorageRefused` when MongoDB refuses it for good (the
        mirror unchanged: the same batch would be refused again)."""
        by_ns = _by_namespace(records)
        if not by_ns:
            return
        async with contextlib.AsyncExitStack() as held:
            for namespace in sorted(by_ns):
                await held.enter_async_context(self._writing.setdefault(namespace, asyncio.Lock()))
            await self._commit(by_ns)

    async def _commit(self, by_ns: dict[str, dict[Ident, Record]]) -> None:
        texts = {i: r.model_dump_json() for changed in by_ns.values() for i, r in changed.items()}
        layouts = {ns: self._plan(ns, changed, texts) for ns, changed in by_ns.items()}
        now = datetime.now(UTC)
        ops = [op for ns, changed in by_ns.items() for op in self._ops(ns, layouts[ns], changed, texts, now)]
        try:
            await self._coll.bulk_write(ops, ordered=True)
        except (PyMongoError, InvalidDocument) as exc:
            if (reason := refusal(exc)) is None:
                raise
            raise StorageRefused(sorted(by_ns), reason) from exc
        for namespace, changed in by_ns.items():
            self._stale.pop(namespace, None)
            self._chunks[namespace] = layouts[namespace][0]
            for ident, stored in changed.items():
                self._remember(stored, texts[ident])

    def _ops(
        self,
        namespace: str,
        layout: tuple[list[set[Ident]], list[int]],
        changed: dict[Ident, Record],
        texts: dict[Ident, str],
        now: datetime,
    ) -> list[ReplaceOne[Document] | DeleteMany]:
        """The chunks to write, then (once they are) the documents they supersede."""
        chunks, written = layout
        ops: list[ReplaceOne[Document] | DeleteMany] = [
            self._replace(namespace, n, chunks, changed, texts, now) for n in written
        ]
        stale = set(self._stale.get(namespace, ())) | self._superseded(namespace, chunks)
        stale -= {self._chunk_id(namespace, n, len(chunks)) for n in written}
        if stale:
            ops.append(DeleteMany({"_id": {"$in": sorted(stale)}}))
        return ops

    def _plan(
        self, namespace: str, changed: dict[Ident, Record], texts: dict[Ident, str]
    ) -> tuple[list[set[Ident]], list[int]]:
        """The namespace's chunks with ``changed`` applied, and which of them to write: the
        touched ones, or all of them when the namespace doubled its chunks (or had none yet)."""
        current = self._chunks.get(namespace)
        known = self._by_ns.get(namespace, set())
        idents = known | changed.keys()
        if current is None:
            chunks = self._assign(idents, 1)
        else:
            chunks = [set(c) for c in current]
            for ident in changed.keys() - known:
                chunks[_slot(ident, len(chunks))].add(ident)
        touched = sorted({_slot(i, len(chunks)) for i in changed})

        def too_big(members: set[Ident]) -> bool:
            return (
                len(members) > 1 and sum(len(texts.get(i) or self._texts[i]) for i in members) > CHUNK_BYTES
            )

        if not any(too_big(chunks[n]) for n in touched):
            return chunks, (touched if current is not None else list(range(len(chunks))))
        while len(chunks) < MAX_CHUNKS:
            chunks = self._assign(idents, 2 * len(chunks))
            if not any(too_big(c) for c in chunks):
                break
        return chunks, list(range(len(chunks)))

    @staticmethod
    def _assign(idents: Iterable[Ident], count: int) -> list[set[Ident]]:
        chunks: list[set[Ident]] = [set() for _ in range(count)]
        for ident in idents:
            chunks[_slot(ident, count)].add(ident)
        return chunks

    def _chunk_id(self, namespace: str, n: int, count: int) -> str:
        return f"{self.cluster}|{namespace}|{n}/{count}"

    def _superseded(self, namespace: str, chunks: list[set[Ident]]) -> set[str]:
        """The previous generation's chunk ids, when this write doubles the namespace's chunks."""
        current = self._chunks.get(namespace)
        if current is None or len(current) == len(chunks):
            return set()
        return {self._chunk_id(namespace, n, len(current)) for n in range(len(current))}

    def _replace(
        self,
        namespace: str,
        n: int,
        chunks: list[set[Ident]],
        changed: dict[Ident, Record],
        texts: dict[Ident, str],
        now: datetime,
    ) -> ReplaceOne[Document]:
        """Chunk ``n``: its records as the mirror has them, with ``changed`` applied."""
        idents = sorted(chunks[n])
        doc_id = self._chunk_id(namespace, n, len(chunks))
        doc: Document = {
            "_id": doc_id,
            "layout": LAYOUT_VERSION,
            "cluster": self.cluster,
            "namespace": namespace,
            "chunk": n,
            "chunks": len(chunks),
            # True while any record of the chunk waits for its confirm (for operators and tests).
            "pending": any((changed.get(i) or self._records[i]).pending for i in idents),
            "records": [texts.get(i) or self._texts[i] for i in idents],
            "updated_at": now,
        }
        return ReplaceOne({"_id": doc_id}, doc, upsert=True)

    async def commit(self, record: Record) -> None:
        """As :meth:`commit_many`, for one record."""
        await self.commit_many([record])


def _by_namespace(records: Iterable[Record]) -> dict[str, dict[Ident, Record]]:
    """The records to store, per namespace (a snapshot's without its data: never read back)."""
    by_ns: dict[str, dict[Ident, Record]] = {}
    for record in records:
        stored = record.model_copy(update={"data": {}}) if record.kind in SNAPSHOT_KINDS else record
        by_ns.setdefault(stored.namespace, {})[(stored.kind, stored.key)] = stored
    return by_ns


def _slot(ident: Ident, count: int) -> int:
    """The chunk of a record: a stable hash of its identity (Python's ``hash`` is salted per run)."""
    digest = hashlib.blake2b(f"{ident[0]}|{ident[1]}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") % count
