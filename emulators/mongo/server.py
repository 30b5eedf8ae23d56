"""Run mongoeco's wire-protocol server, in memory or on a SQLite file.

The real PyMongo driver talks to it over TCP, so the services' code paths are the production ones;
tests may point ``MONGODB_URL`` at a real MongoDB instead.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from mongoeco.engines.memory import MemoryEngine
from mongoeco.engines.sqlite import SQLiteEngine
from mongoeco.wire import AsyncMongoEcoProxyServer


@contextlib.asynccontextmanager
async def running(host: str = "127.0.0.1", port: int = 0, path: str | None = None) -> AsyncIterator[str]:
    """Serve until the context exits; yields a ``mongodb://`` URL naming the ``kabanero_otc`` db."""
    engine = SQLiteEngine(path) if path else MemoryEngine()
    async with AsyncMongoEcoProxyServer(engine=engine, host=host, port=port) as server:
        address = server.address
        yield f"mongodb://{address.host}:{address.port}/kabanero_otc?directConnection=true"
