"""MongoDB access through PyMongo's async API, one client per process."""

from __future__ import annotations

import asyncio
from typing import Any

from pymongo import AsyncMongoClient
from pymongo.asynchronous.database import AsyncDatabase

DEFAULT_DB = "kabanero_otc"

Document = dict[str, Any]


def make_client(url: str, *, timeout_s: float = 10.0) -> AsyncMongoClient[Document]:
    return AsyncMongoClient(
        url,
        tz_aware=True,
        serverSelectionTimeoutMS=int(timeout_s * 1000),
        connectTimeoutMS=int(timeout_s * 1000),
    )


def database(client: AsyncMongoClient[Document]) -> AsyncDatabase[Document]:
    """The database named in the URL, ``kabanero_otc`` when the URL names none."""
    return client.get_default_database(default=DEFAULT_DB)


async def ping(client: AsyncMongoClient[Document], *, timeout_s: float = 2.0) -> tuple[bool, str]:
    """Bounded: a probe must answer while MongoDB is gone (server selection alone waits up to
    ``serverSelectionTimeoutMS``)."""
    try:
        async with asyncio.timeout(timeout_s):
            await client.admin.command("ping")
    except TimeoutError:
        return False, f"MongoDB unreachable: no answer within {timeout_s:.0f}s"
    except Exception as exc:
        return False, f"MongoDB unreachable: {type(exc).__name__}"
    return True, ""
