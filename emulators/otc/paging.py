"""Paging of collections with ``limit`` and an opaque ``start`` cursor (docs/reference/otc-api.md §6).

The cursor encodes the creation sequence number of the last item before the page, so deleting items
while a client pages never makes it skip or repeat one. ``first``/``last`` are always present (the
IBM SDK requires them); ``previous``/``next`` only when such a page exists.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from yarl import URL

from emulators.otc.errors import ApiError


class _Sequenced(Protocol):
    @property
    def seq(self) -> int: ...


def encode_cursor(after_seq: int) -> str:
    return base64.urlsafe_b64encode(f"after:{after_seq}".encode()).decode().rstrip("=")


def decode_cursor(start: str) -> int:
    try:
        raw = base64.urlsafe_b64decode(start + "=" * (-len(start) % 4)).decode()
        prefix, _, number = raw.partition(":")
        if prefix != "after" or not number.isdigit():
            raise ValueError(start)
        return int(number)
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise ApiError(400, "Invalid pagination token in 'start'", code="invalid_start") from None


def parse_limit(raw: str | None, *, default: int, maximum: int) -> int:
    if raw is None or raw == "":
        return default
    if not raw.isdigit() or not 1 <= int(raw) <= maximum:
        raise ApiError(400, f"'limit' must be an integer between 1 and {maximum}", code="invalid_limit")
    return int(raw)


@dataclass(frozen=True)
class Page[T]:
    items: list[T]
    links: dict[str, dict[str, str]]
    total_count: int
    limit: int


def paginate[T: _Sequenced](
    items: Sequence[T],
    *,
    limit: int,
    start: str | None,
    href_base: URL,
    query: Mapping[str, str],
) -> Page[T]:
    """Cut one page out of ``items`` (sorted by ``seq``) and build the collection links."""
    after = decode_cursor(start) if start else 0
    total = len(items)
    i = next((n for n, item in enumerate(items) if item.seq > after), total)

    def link(index: int) -> dict[str, str]:
        params = {**query, "limit": str(limit)}
        if index > 0:
            params["start"] = encode_cursor(items[index - 1].seq)
        href = str(href_base.with_query(params))
        return {"href": href, "start": params["start"]} if "start" in params else {"href": href}

    links: dict[str, dict[str, str]] = {"first": {"href": link(0)["href"]}}
    if i > 0:
        links["previous"] = link(max(0, i - limit))
    if i + limit < total:
        links["next"] = link(i + limit)
    if total == 0:
        last = 0
    elif i < total:
        last = i + (total - 1 - i) // limit * limit
    else:
        last = (total - 1) // limit * limit
    links["last"] = link(last)
    return Page(items=list(items[i : i + limit]), links=links, total_count=total, limit=limit)
