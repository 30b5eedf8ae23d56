"""Ledger entries as the CLI shows them: whether otc-writer's tool is applied, pending, refused or
failing (``status`` per tool and per Tekton cluster, ``plan`` for what may be in OTC)."""

from __future__ import annotations

from services.otc_writer.ledger import Intent, LedgerEntry
from shared.mongo import Document


def in_flight(entry: LedgerEntry) -> Intent | None:
    """The OTC write that may have started for this entry (``intent``; ``pending`` in older ledgers)."""
    return entry.intent or entry.pending


def sync_state(entry: LedgerEntry) -> tuple[str, str | None]:
    """applied / pending / refused / failing (retried) / removing, with OTC's message when relevant."""
    if entry.refused_hash is not None:
        return "refused", entry.last_error
    if (started := in_flight(entry)) is not None:
        return "pending", f"{started.op} in progress or interrupted" + (
            f"; last error: {entry.last_error}" if entry.last_error else ""
        )
    if entry.last_error:
        return "failing", entry.last_error
    return "applied", None


OWNED_TOOLS_QUERY: Document = {
    "$or": [
        {"present": True},
        {"intent": {"$ne": None}},
        {"pending": {"$ne": None}},
        {"refused_hash": {"$ne": None}},
    ]
}
