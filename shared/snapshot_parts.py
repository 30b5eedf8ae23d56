"""Snapshots over RabbitMQ's message size: one snapshot revision as ``parts`` events, and back.

RabbitMQ 4.x refuses a message over 16 MiB; a ``kabanero.snapshot`` of 13,500 realistic triggers is
one. The watcher splits a snapshot whose serialized body would pass its bound (``split``, on the
event data as published: the JSON of :class:`~shared.events.SnapshotData` or
:class:`~shared.events.TektonSnapshotData`); the consumers apply a revision only once they hold every
part (``join``), so a part alone never deletes anything (docs/design.md, "Snapshots over RabbitMQ's
message size"). Shared because the producer splits and two consumers join.
"""

from __future__ import annotations

import logging
from collections.abc import Generator, Iterator, Mapping
from typing import Any, ClassVar, Protocol, Self, cast

from pydantic_core import to_json

log = logging.getLogger(__name__)

WHOLE_CHECK_ENTRIES = 4_000
"""Up to this many items and known revisions a snapshot is measured whole first (one call, a few
milliseconds at most: too short to pace); a larger one is measured entry by entry, paced."""

Entry = tuple[bool, Any, int]
"""(is an item, the item or a (key, revision) pair, its bytes in the body with its comma)."""


def split(data: dict[str, Any], fields: tuple[str, str], *, budget: int) -> list[dict[str, Any]]:
    """``data`` as parts, in order: each part is ``data`` with ``part``/``parts`` set and a
    contiguous share of the items (``fields[0]``, a list) then of the known revisions
    (``fields[1]``, a dict), whose JSON costs at most ``budget`` bytes (the body's bytes minus what
    every part carries anyway). Joining the parts gives ``data`` back exactly. An item alone over
    ``budget`` gets a part of its own (logged: that part passes the bound)."""
    steps = split_steps(data, fields, budget=budget)
    while True:
        try:
            next(steps)
        except StopIteration as done:
            return cast(list[dict[str, Any]], done.value)


def split_steps(
    data: dict[str, Any], fields: tuple[str, str], *, budget: int
) -> Generator[None, None, list[dict[str, Any]]]:
    """:func:`split`, a step per entry measured (a producer on an event loop paces them: 20,000
    triggers take about 0.7 s to measure). A snapshot of at most ``WHOLE_CHECK_ENTRIES`` entries is
    measured whole first, in one call and no step: when it fits, as nearly every one does, it is one
    part and no entry is measured alone."""
    items_field, known_field = fields
    small = len(data[items_field]) + len(data[known_field]) <= WHOLE_CHECK_ENTRIES
    if small and len(to_json(data[items_field])) + len(to_json(data[known_field])) <= budget:
        return [{**data, "part": 1, "parts": 1}]
    chunks: list[list[Entry]] = [[]]
    used = 0
    for entry in _entries(data, fields):
        if chunks[-1] and used + entry[2] > budget:
            chunks.append([])
            used = 0
        chunks[-1].append(entry)
        used += entry[2]
        if entry[2] > budget:
            log.warning(
                "one snapshot entry is over the part budget: its part passes the bound",
                extra={"bytes": entry[2], "budget": budget},
            )
        yield
    return [
        {
            **data,
            items_field: [value for is_item, value, _ in chunk if is_item],
            known_field: dict(value for is_item, value, _ in chunk if not is_item),
            "part": n,
            "parts": len(chunks),
        }
        for n, chunk in enumerate(chunks, 1)
    ]


def _entries(data: dict[str, Any], fields: tuple[str, str]) -> Iterator[Entry]:
    """Each item, then each known revision, with its bytes in a body (its comma included)."""
    items_field, known_field = fields
    for item in data[items_field]:
        yield True, item, len(to_json(item)) + 1
    for key, rev in data[known_field].items():
        yield False, (key, rev), len(to_json(key)) + len(to_json(rev)) + 2


class Parted(Protocol):
    split_fields: ClassVar[tuple[str, str]]

    @property
    def revision(self) -> int: ...
    @property
    def part(self) -> int: ...
    @property
    def parts(self) -> int: ...
    def model_copy(self, *, update: Mapping[str, Any] | None = ..., deep: bool = ...) -> Self: ...


class IncompleteParts(ValueError):
    """The parts given are not every part of one revision."""


def join[P: Parted](parts: list[P]) -> P:
    """The whole snapshot of every part of one revision (any order): the items, then the known
    revisions, in part order; every other field as part 1 has it. Raises :class:`IncompleteParts`."""
    ordered = sorted(parts, key=lambda p: p.part)
    if not ordered:
        raise IncompleteParts("no part")
    first = ordered[0]
    numbers = [p.part for p in ordered]
    if numbers != list(range(1, first.parts + 1)) or any(
        (p.revision, p.parts) != (first.revision, first.parts) for p in ordered
    ):
        raise IncompleteParts(
            f"parts {numbers} of revisions {sorted({p.revision for p in ordered})}: "
            f"want 1..{first.parts} of revision {first.revision}"
        )
    items_field, known_field = first.split_fields
    items = [item for p in ordered for item in getattr(p, items_field)]
    known = {k: v for p in ordered for k, v in getattr(p, known_field).items()}
    return first.model_copy(update={items_field: items, known_field: known, "part": 1, "parts": 1})


def sequence(label: str, part: int) -> str:
    """The consumer's coalescing sequence of a snapshot part: a newer revision supersedes an older
    waiting one part by part, and no part ever supersedes another part of its own revision."""
    return label if part == 1 else f"{label}#{part}"
