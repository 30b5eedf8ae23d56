"""Run mongoeco's wire-protocol server, in memory or on a SQLite file.

The real PyMongo driver talks to it over TCP, so the services' code paths are the production ones;
tests may point ``MONGODB_URL`` at a real MongoDB instead.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

from mongoeco.engines.memory import MemoryEngine
from mongoeco.engines.sqlite import SQLiteEngine
from mongoeco.wire import AsyncMongoEcoProxyServer


class IdLookupMemoryEngine(MemoryEngine):
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


@contextlib.asynccontextmanager
async def running(host: str = "127.0.0.1", port: int = 0, path: str | None = None) -> AsyncIterator[str]:
    """Serve until the context exits; yields a ``mongodb://`` URL naming the ``kabanero_otc`` db."""
    engine = SQLiteEngine(path) if path else IdLookupMemoryEngine()
    async with AsyncMongoEcoProxyServer(engine=engine, host=host, port=port) as server:
        address = server.address
        yield f"mongodb://{address.host}:{address.port}/kabanero_otc?directConnection=true"
