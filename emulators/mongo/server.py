"""Run mongoeco's wire-protocol server, in memory or on a SQLite file.

The real PyMongo driver talks to it over TCP, so the services' code paths are the production ones;
tests may point ``MONGODB_URL`` at a real MongoDB instead.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

from mongoeco.core.query_plan import EqualsCondition
from mongoeco.engines.memory import MemoryEngine
from mongoeco.engines.sqlite import SQLiteEngine
from mongoeco.wire import AsyncMongoEcoProxyServer
from mongoeco.wire.protocol import OP_MSG

from emulators.mongo.limits import check_op_msg, check_stored, writing


class LimitedWrites:
    """Marks each engine write as an insert or an update, for :func:`check_stored` (the engines
    check every document they are about to store in one place: their unique-index validation)."""

    async def insert_document(self, *args: Any, **kwargs: Any) -> Any:
        with writing("insert"):
            return await super().insert_document(*args, **kwargs)  # type: ignore[misc]

    async def insert_documents(self, *args: Any, **kwargs: Any) -> Any:
        with writing("insert"):
            return await super().insert_documents(*args, **kwargs)  # type: ignore[misc]

    async def update_with_operation(self, *args: Any, **kwargs: Any) -> Any:
        with writing("update"):
            return await super().update_with_operation(*args, **kwargs)  # type: ignore[misc]


class IdLookupMemoryEngine(LimitedWrites, MemoryEngine):
    """mongoeco's in-memory engine, with string ``_id`` misses answered from the primary key.

    mongoeco 4.11 scans the whole collection when an ``_id`` equality finds no document (every
    upsert of a new document) and, on a single insert, once more to look for an equal ``_id`` of
    another type. So creating a document cost time proportional to the collection: 23 ms for an
    upsert and 44 ms for an insert at 5,000 documents, against 2 ms for an update. A string equals
    only the same string, and its storage key is exact, so for string ``_id``s (all of this
    project's) the key lookup is the whole answer; other types (numbers compare across types) keep
    mongoeco's own path.
    """

    def _ensure_unique_indexes(self, db_name: str, coll_name: str, candidate: Any, **kwargs: Any) -> None:
        check_stored(candidate, replaces_existing=kwargs.get("exclude_storage_key") is not None)
        if isinstance(candidate.get("_id"), str):
            kwargs["scan_payload_id"] = False
        super()._ensure_unique_indexes(db_name, coll_name, candidate, **kwargs)

    def _candidate_items_for_plan_locked(self, coll: Any, query_plan: Any, **kwargs: Any) -> Any:
        wanted = self._direct_id_lookup_from_plan(query_plan)
        if (
            isinstance(wanted, str)
            and kwargs.get("collation") is None
            and self._storage_key(wanted) not in coll
        ):
            return []
        return super()._candidate_items_for_plan_locked(coll, query_plan, **kwargs)


class IdLookupSQLiteEngine(LimitedWrites, SQLiteEngine):
    """mongoeco's SQLite engine (``--file``), with the same two shortcuts for string ``_id``s.

    mongoeco 4.11 looks an ``_id`` equality up by its storage key but, on a miss (every upsert of
    a new document), goes on to compile a general read plan, whose type checks run
    ``json_extract`` over every document of the collection; and a single insert loads and decodes
    every document to look for an equal ``_id`` of another type; a ``find_one`` miss compiles the
    same plan. All three grow with the collection
    (measured: 8 ms per new-document upsert at 500 documents, 14 ms at 2,000, and more for
    inserts). The storage key of a string is its ``repr``, which no other type's key equals and
    which equals only the same string, so a missing key is the whole answer; other ``_id`` types
    keep mongoeco's own path.
    """

    def _validate_document_against_unique_indexes(
        self, db_name: str, coll_name: str, document: Any, **kwargs: Any
    ) -> None:
        check_stored(document, replaces_existing=kwargs.get("exclude_storage_key") is not None)
        if isinstance(document.get("_id"), str):
            kwargs["scan_payload_id"] = False
        super()._validate_document_against_unique_indexes(db_name, coll_name, document, **kwargs)

    def _select_first_document_for_plan(self, db_name: str, coll_name: str, plan: Any, **kwargs: Any) -> Any:
        if kwargs.get("hint") is None and self._missing_string_id(
            db_name, coll_name, plan, kwargs.get("context")
        ):
            return None
        return super()._select_first_document_for_plan(db_name, coll_name, plan, **kwargs)

    def _missing_string_id(self, db_name: str, coll_name: str, plan: Any, context: Any) -> bool:
        if not (isinstance(plan, EqualsCondition) and plan.field == "_id" and isinstance(plan.value, str)):
            return False
        row = (
            self._require_connection(context)
            .execute(
                "SELECT 1 FROM documents WHERE db_name = ? AND coll_name = ? AND storage_key = ?",
                (db_name, coll_name, self._storage_key(plan.value)),
            )
            .fetchone()
        )
        return row is None

    def _open_scan_documents_sync(self, reader: Any) -> Any:
        """A ``find_one`` of a missing string ``_id`` finds nothing (mongoeco compiles a plan)."""
        sem = reader.semantics
        if (
            sem.text_query is None
            and sem.hint is None
            and sem.collation is None
            and sem.skip == 0
            and sem.limit == 1
            and not self._is_profile_namespace(reader.coll_name)
            and self._missing_string_id(reader.db_name, reader.coll_name, sem.query_plan, reader.context)
        ):
            return iter(())
        return super()._open_scan_documents_sync(reader)


class LimitedProxyServer(AsyncMongoEcoProxyServer):  # type: ignore[misc]
    """mongoeco's wire server, refusing a command or statement over the server's parse limit."""

    def _decode_wire_context(self, header: Any, payload: bytes, connection: Any, state: Any) -> Any:
        if header.op_code == OP_MSG:
            check_op_msg(payload)
        return super()._decode_wire_context(header, payload, connection, state)


@contextlib.asynccontextmanager
async def running(host: str = "127.0.0.1", port: int = 0, path: str | None = None) -> AsyncIterator[str]:
    """Serve until the context exits; yields a ``mongodb://`` URL naming the ``kabanero_otc`` db."""
    engine = IdLookupSQLiteEngine(path) if path else IdLookupMemoryEngine()
    async with LimitedProxyServer(engine=engine, host=host, port=port) as server:
        address = server.address
        yield f"mongodb://{address.host}:{address.port}/kabanero_otc?directConnection=true"
