"""What this process last wrote to each recently changed ``service_instances`` document.

A hint, never the truth: a request on a sid this process changed a moment ago (the bind right after
a provision) computes its change from the record kept here and commits it with one conditional
update whose filter (``revision``, and the lease token or an empty outbox) fails if anything else
wrote to the document since; a failed filter falls back to a read. The entries already confirmed
by RabbitMQ but not yet pulled from the outbox (the lazy release, :mod:`.outbox`) are tracked here
too, so the next commit drops them in the same update and the release sweeper knows what to pull.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field, replace

from services.broker_api.models import InstanceRecord, OutboxEntry

SIZE = 4096
"""Records kept (least recently used dropped first; one with an unreleased outbox never is)."""


@dataclass(frozen=True)
class Known:
    record: InstanceRecord
    """The record at ``record.revision``, as this process committed or read it."""
    outbox: tuple[OutboxEntry, ...]
    """The document's outbox as of that write (confirmed entries included until pulled)."""
    token: str | None
    """The token of the publisher lease this process took with that write (None: it holds none)."""
    published: frozenset[str] = field(default=frozenset())
    """Ids of ``outbox`` entries RabbitMQ confirmed; pulled by the next write or the sweeper."""
    stale: bool = False
    """Something else wrote since: kept only until the sweeper pulled ``published`` (never a
    base for a commit)."""

    @property
    def kept(self) -> tuple[OutboxEntry, ...]:
        """The outbox without the confirmed entries: what the next write leaves in it."""
        return tuple(e for e in self.outbox if e.id not in self.published)


class Recent:
    def __init__(self, size: int = SIZE) -> None:
        self._size = size
        self._known: OrderedDict[str, Known] = OrderedDict()

    def current(self, key: str) -> Known | None:
        """What a commit may start from (not stale)."""
        known = self._known.get(key)
        if known is None or known.stale:
            return None
        self._known.move_to_end(key)
        return known

    def get(self, key: str) -> Known | None:
        """Stale or not (what the sweeper still has to pull)."""
        return self._known.get(key)

    def put(self, key: str, known: Known) -> None:
        self._known[key] = known
        self._known.move_to_end(key)
        if len(self._known) > self._size:
            for old in [k for k, v in self._known.items() if not v.published][
                : len(self._known) - self._size
            ]:
                del self._known[old]

    def forget(self, key: str) -> None:
        """Something else wrote: no longer a base for a commit (kept while entries await their pull)."""
        known = self._known.get(key)
        if known is not None and known.published:
            self._known[key] = replace(known, stale=True)
        else:
            self._known.pop(key, None)

    def published(self, key: str, ids: frozenset[str]) -> bool:
        """Mark ``ids`` confirmed (to be pulled lazily); False when the key is not known here."""
        known = self._known.get(key)
        if known is None or known.token is None:
            return False
        self._known[key] = replace(known, published=known.published | ids)
        return True

    def released(self, key: str, *, exact: bool) -> None:
        """The confirmed entries were pulled and the lease released; ``exact``: by the update that
        matched this write's revision and token (so the rest of the outbox is known)."""
        known = self._known.get(key)
        if known is None:
            return
        if exact and not known.stale:
            self._known[key] = replace(known, outbox=known.kept, token=None, published=frozenset())
        else:
            del self._known[key]
