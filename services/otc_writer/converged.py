"""What lets an unchanged snapshot cost O(1): the fingerprint of the last snapshot a scope converged on.

A snapshot is compared with the scope's items and ledger entries, two reads of the whole scope
(20,000 documents for 10,000 triggers). But a producer never reuses an item revision for other
content, so a snapshot is known by the (key, revision) pairs it lists, the revisions it knew, and
whether its scope exists. When a full reconcile of a snapshot ends with every tool applied (no
error), the writer records that fingerprint, with the bindings it reconciled against and the tool
styles it derived with, in the scope's ``otc_writer_instances`` document. A later snapshot with the
same fingerprint, bindings and styles would find every entry unchanged: it is skipped after the
revision compare-and-set and the bindings read, its two commands.

Why the skip is safe: every change of a scope's items comes with new revisions (the next snapshot
differs), every binding change moves the bindings' ``rev``, a settings change moves the styles.
What changes the ledger without any of them (an item event or a service event whose tool writes
failed) unsets the record (:meth:`Projection.unconverge`), so the next snapshot runs in full and
retries. An OTC edited by hand is the audit's to repair, as before: a snapshot compares with the
ledger, never with OTC.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from pydantic import BaseModel, ConfigDict

from services.otc_writer.family import Family, ToolStyles
from shared.health import VERSION


class Converged(BaseModel):
    """A scope's record of the last snapshot whose reconcile ended with every tool applied."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    fingerprint: str
    """sha256 of what the snapshot said: listed (key, revision), known revisions, existence."""
    bindings_rev: int
    toolchains: list[str]
    styles: str
    """sha256 of the tool styles and the writer's version (a new release may derive differently)."""


def styles_fingerprint(styles: ToolStyles) -> str:
    return hashlib.sha256(f"{VERSION}\n{styles!r}".encode()).hexdigest()


def snapshot_fingerprint(family: Family[Any, Any], snap: Any) -> str:
    """What a snapshot says, by revisions: its items' content is determined by (key, revision)."""
    listed = sorted((t.key.id, t.revision, t.deleted) for t in family.snapshot_items(snap))
    known = sorted(family.snapshot_known(snap).items())
    body = json.dumps([family.name, family.snapshot_exists(snap), listed, known], separators=(",", ":"))
    return hashlib.sha256(body.encode()).hexdigest()


def converged_for(
    family: Family[Any, Any], snap: Any, bindings: tuple[int, set[str]], styles: str
) -> Converged:
    """The record of ``snap`` reconciled against ``bindings`` (rev, toolchains) with ``styles``
    (:func:`styles_fingerprint`)."""
    rev, toolchains = bindings
    return Converged(
        fingerprint=snapshot_fingerprint(family, snap),
        bindings_rev=rev,
        toolchains=sorted(toolchains),
        styles=styles,
    )
