"""Per-key lanes and coalescing of whole-state messages.

Messages with the same ``key_of`` value (a *lane*) run one after the other in delivery order, so one
slow key never blocks the others and one key stays ordered: a message stays at the head of its lane
until it is settled (a message held for an outage included), so a later one of its key never
overtakes it. A message without a key has a lane of its own.

Coalescing: ``revision_of`` (optional) names a message's sequence and revision when it carries the
whole state of its key (a trigger event, a snapshot). A waiting message (not running) whose lane
holds a later delivered one of the same sequence with a revision at least as new leaves its lane
without running (:attr:`Skip.SUPERSEDED`, acked); the newer one is still unacked, so nothing is lost.
Acking frees a prefetch slot, so a consumer that holds for an outage keeps receiving and keeps at most
about one message per key and sequence.
"""

from __future__ import annotations

import asyncio
import enum
import heapq
import itertools
from collections import deque
from dataclasses import dataclass, field

from aio_pika.abc import AbstractIncomingMessage

Revision = tuple[str, int]
"""(sequence, revision) of a message that carries the whole state of its key."""


class Skip(enum.Enum):
    """How a message left its lane without a handler result."""

    SUPERSEDED = "superseded"
    """A newer message of its key and sequence is waiting: acked without running."""
    REQUEUED = "requeued"
    """It waited for the hold limit: a copy was put back in the queue."""


@dataclass(eq=False)
class Entry:
    """One delivered, unacked message in its lane."""

    message: AbstractIncomingMessage
    arrival: int
    delivered_at: float
    revision: Revision | None
    lane_key: object = None
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None
    running: bool = False
    superseded: bool = False
    requeuing: bool = False
    requeued: bool = False

    @property
    def live(self) -> bool:
        """Still going to run (not superseded, not being put back in the queue)."""
        return not (self.superseded or self.requeuing or self.requeued)

    @property
    def skipped(self) -> Skip | None:
        """Why the entry leaves its lane without running, if it does."""
        if self.superseded:
            return Skip.SUPERSEDED
        return Skip.REQUEUED if self.requeued else None


class Lanes:
    """The lanes of one consumer: who is at the head, who waits, what is obsolete."""

    def __init__(self) -> None:
        self._lanes: dict[object, deque[Entry]] = {}
        self._arrivals = itertools.count()

    def join(
        self, key: str | None, message: AbstractIncomingMessage, revision: Revision | None, now: float
    ) -> Entry:
        """The entry of ``message`` at the tail of the lane of ``key`` (the calling task's)."""
        entry = Entry(message, next(self._arrivals), now, revision, task=asyncio.current_task())
        entry.lane_key = key if key is not None else entry  # no key: a lane of its own
        lane = self._lanes.setdefault(entry.lane_key, deque())
        coalesce(lane, entry)
        lane.append(entry)
        return entry

    def leave(self, entry: Entry) -> None:
        lane = self._lanes[entry.lane_key]
        lane.remove(entry)
        if not lane:
            del self._lanes[entry.lane_key]
        else:
            lane[0].wake.set()

    def at_head(self, entry: Entry) -> bool:
        return self._lanes[entry.lane_key][0] is entry

    def wake_heads(self, slots: int | None = None) -> None:
        """Wake the lanes' heads to try their turn: every head (``slots`` None: a dependency is
        back), or only the ``slots`` oldest live heads not running (handler slots were freed: no
        more can run, and waking all of them cost every waiting task a turn per handler end; a
        head woken already and not yet run counts as one of them)."""
        if slots is None:
            for lane in self._lanes.values():
                lane[0].wake.set()
            return
        if slots <= 0:
            return
        heads = (lane[0] for lane in self._lanes.values() if lane[0].live and not lane[0].running)
        for head in heapq.nsmallest(slots, heads, key=lambda e: e.arrival):
            head.wake.set()

    def waiting(self) -> list[Entry]:
        """Entries still to run and not running, in delivery order."""
        entries = (e for lane in self._lanes.values() for e in lane if e.live and not e.running)
        return sorted(entries, key=lambda e: e.arrival)

    def idle_tasks(self) -> set[asyncio.Task[None]]:
        """The tasks of entries whose handler is not running (waiting, held, being skipped)."""
        return {e.task for lane in self._lanes.values() for e in lane if not e.running and e.task}


def coalesce(lane: deque[Entry], entry: Entry) -> None:
    """Supersede what ``entry`` makes obsolete in its lane, or ``entry`` itself if it is."""
    if entry.revision is None:
        return
    sequence, revision = entry.revision
    for other in lane:
        if not other.live or other.revision is None or other.revision[0] != sequence:
            continue
        if other.revision[1] >= revision:
            entry.superseded = True  # delivered late (a retry): an as-new one is here already
        elif not other.running:
            other.superseded = True
            other.wake.set()
