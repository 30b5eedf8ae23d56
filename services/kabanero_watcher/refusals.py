"""Storage errors that can never succeed: retrying them every ``publish_retry_s`` would stall every
namespace of the cluster behind one that MongoDB will not store.

A write MongoDB refuses for what it holds (a document over 16 MiB, nested too deep, an invalid
``_id``) fails again with the same content, whatever the retry; an outage, a failover or a write
concern timeout does not. The first are raised as :class:`StorageRefused`, naming the namespaces
of the batch, so the session sets that namespace aside until it changes; the others stay
``PyMongoError``s, retried.
"""

from __future__ import annotations

from bson.errors import InvalidDocument
from pymongo.errors import BulkWriteError, DocumentTooLarge, OperationFailure

PERMANENT_CODES: frozenset[int] = frozenset(
    {
        2,  # BadValue: "object to insert too large"
        45,  # Overflow: nested more than 100 levels
        52,  # DollarPrefixedFieldName
        53,  # InvalidIdField: an array or regex _id
        10334,  # BSONObjectTooLarge: a document or statement over the server's limits
        17419,  # "Resulting document after update is larger than 16777216"
        17420,  # "Document to upsert is larger than 16777216"
    }
)


class StorageRefused(Exception):
    """MongoDB refused a batch of the published state for good: ``reason`` says why."""

    def __init__(self, namespaces: list[str], reason: str) -> None:
        super().__init__(f"MongoDB refuses the published state of {', '.join(namespaces)}: {reason}")
        self.namespaces = namespaces
        self.reason = reason


def refusal(exc: BaseException) -> str | None:
    """Why ``exc`` can never succeed, or None when a retry may (outages, write concern errors)."""
    if isinstance(exc, DocumentTooLarge | InvalidDocument):
        return f"{type(exc).__name__}: {str(exc)[:200]}"
    if isinstance(exc, BulkWriteError):
        refused = [e for e in exc.details.get("writeErrors", []) if e.get("code") in PERMANENT_CODES]
        if refused:
            first = refused[0]
            return f"BulkWriteError {first['code']}: {str(first.get('errmsg', ''))[:200]}"
        return None
    if isinstance(exc, OperationFailure) and exc.code in PERMANENT_CODES:
        errmsg = (exc.details or {}).get("errmsg") or str(exc)
        return f"{type(exc).__name__} {exc.code}: {str(errmsg)[:200]}"
    return None
