"""Human tables (the default) and JSON (``--json``) for every subcommand."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

Row = dict[str, Any]
"""One line of a section: the same dict is in ``--json`` and, through its columns, in the table."""


@dataclass(frozen=True)
class Column:
    """A table column: its header and how a row shows in it."""

    header: str
    cell: Callable[[Row], object]


def column(header: str, key: str | None = None) -> Column:
    """A column showing ``row[key]`` (``key`` defaults to the header)."""
    name = key or header
    return Column(header, lambda row: row[name])


@dataclass
class Report:
    """What a subcommand found: ``data`` for ``--json``, ``sections`` for people, and its exit code."""

    data: dict[str, Any]
    code: int = 0
    sections: list[str] = field(default_factory=list)

    def add(self, title: str, headers: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
        body = table(headers, rows) if rows else "  (none)"
        self.sections.append(f"{title}\n{body}" if title else body)

    def rows(self, title: str, columns: Sequence[Column], rows: Sequence[Row]) -> None:
        self.add(title, [c.header for c in columns], [[c.cell(r) for c in columns] for r in rows])

    def problems(self, problems: Sequence[str], ok: str) -> None:
        """The closing line: each problem, or ``ok``."""
        self.line("problems:\n" + "\n".join(f"  - {p}" for p in problems) if problems else ok)

    def line(self, text: str) -> None:
        self.sections.append(text)

    def render(self, as_json: bool) -> str:
        if as_json:
            return json.dumps(self.data, indent=2, sort_keys=True, default=str)
        return "\n\n".join(self.sections)


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    cells = [[str(h).upper() for h in headers], *[[_cell(c) for c in row] for row in rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in cells]
    return "\n".join(lines)


def _cell(value: object) -> str:
    if value is None:
        return "-"
    text = str(value).replace("\n", " ")
    return text if len(text) <= 80 else text[:77] + "..."


def age(when: datetime | None, now: datetime | None = None) -> str:
    """``42s``, ``5m``, ``3h``, ``2d``: like kubectl's AGE column."""
    if when is None:
        return "-"
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    seconds = max(0, int(((now or datetime.now(UTC)) - when).total_seconds()))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"
