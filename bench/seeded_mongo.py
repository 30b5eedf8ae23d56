"""``emulators.mongo`` with a pre-filled otc-writer database, for measuring cost against data size.

Seeding over the wire is itself slow on mongoeco (an insert scans the collection), so the documents
go into the engine directly, in one batch per collection, before the server starts listening.

    python -m bench.seeded_mongo --db NAME --writer-entries 10000   # prints MONGODB_URL=...
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib

from mongoeco.wire import AsyncMongoEcoProxyServer

from bench.writer_seed import seed_documents
from emulators.mongo.server import IdLookupMemoryEngine


async def serve(db: str, entries: int) -> None:
    engine = IdLookupMemoryEngine()
    for collection, docs in seed_documents(entries).items():
        await engine.insert_documents(db, collection, docs)
    async with AsyncMongoEcoProxyServer(engine=engine, host="127.0.0.1", port=0) as server:
        address = server.address
        print(f"MONGODB_URL=mongodb://{address.host}:{address.port}/{db}?directConnection=true", flush=True)
        await asyncio.Event().wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--db", required=True)
    parser.add_argument("--writer-entries", type=int, default=0)
    args = parser.parse_args()
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(args.db, args.writer_entries))


if __name__ == "__main__":
    main()
