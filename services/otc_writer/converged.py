"""What lets an unchanged snapshot cost O(1): the fingerprint of what a scope last converged on.

A snapshot is compared with the scope's items and ledger entries, two reads of the whole scope
(20,000 documents for 10,000 triggers). But a producer never reuses an item revision for other
content, so the live items of a scope are known by their (key, revision) pairs. When a reconcile of
a scope (a snapshot's, a service event's) ends with every tool applied, the writer records the
fingerprint of the live items it reconciled, the bindings it reconciled against (their ``rev`` and
toolchains) and the tool styles it derived with, in the scope's ``otc_writer_instances`` document.
A later snapshot that lists exactly those items at those revisions, under the same bindings and
styles, would store nothing (nothing newer, nothing unlisted to tombstone) and find every entry
unchanged: it is settled by the revision compare-and-set and the bindings read, its two commands.

Why the skip is safe: every change of a scope's items comes with new revisions (the next snapshot
differs), every binding change moves the bindings' ``rev``, a settings change or a new release moves
the styles. What changes the ledger without any of them (an item or service event whose tool writes
failed) unsets the record (:meth:`Projection.unconverge`), so the next snapshot runs in full and
retries. An OTC edited by hand is the audit's to repair, as before: a snapshot compares with the
ledger, never with OTC.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable

from pydantic import BaseModel, ConfigDict

from services.otc_writer.family import Item, ToolStyles
from shared.health import VERSION


class Converged(BaseModel):
    """A scope's record of the last reconcile that ended with every tool applied."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    fingerprint: str
    """sha256 of the live items' (key, revision) pairs (:func:`fingerprint`)."""
    bindings_rev: int
    toolchains: list[str]
    styles: str
    """sha256 of the tool styles and the writer's version (a new release may derive differently)."""


def styles_fingerprint(styles: ToolStyles) -> str:
    return hashlib.sha256(f"{VERSION}\n{styles!r}".encode()).hexdigest()


def fingerprint(items: Iterable[Item]) -> str:
    """The live items by (key, revision): an item's content is determined by them."""
    live = sorted((t.key.id, t.revision) for t in items if not t.deleted)
    return hashlib.sha256(json.dumps(live, separators=(",", ":")).encode()).hexdigest()


def converged_for(items: Iterable[Item], bindings: tuple[int, set[str]], styles: str) -> Converged:
    """The record of ``items`` reconciled against ``bindings`` (rev, toolchains) with ``styles``
    (:func:`styles_fingerprint`)."""
    rev, toolchains = bindings
    return Converged(
        fingerprint=fingerprint(items), bindings_rev=rev, toolchains=sorted(toolchains), styles=styles
    )
