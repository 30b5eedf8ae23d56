"""Label selectors (equality and set-based) and the `metadata.name`/`metadata.namespace` field selectors."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from .errors import ApiError, bad_request

_SET_RE = re.compile(r"^\s*([^\s!=()]+)\s+(in|notin)\s+\(([^)]*)\)\s*$")
_EQ_RE = re.compile(r"^\s*([^\s!=()]+)\s*(==|=|!=)\s*([^\s!=()]*)\s*$")
_EXISTS_RE = re.compile(r"^\s*(!?)\s*([^\s!=()]+)\s*$")

Requirement = Callable[[Mapping[str, str]], bool]


def _split_top_level(text: str) -> list[str]:
    parts: list[str] = []
    depth = 0
    current: list[str] = []
    for char in text:
        if char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
        if char == "," and depth == 0:
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
    parts.append("".join(current))
    return [p for p in parts if p.strip()]


def _requirement(term: str) -> Requirement:
    if match := _SET_RE.match(term):
        key, op, raw = match.groups()
        values = {v.strip() for v in raw.split(",") if v.strip()}
        if op == "in":
            return lambda labels: labels.get(key) in values
        return lambda labels: labels.get(key) not in values
    if match := _EQ_RE.match(term):
        key, op, value = match.groups()
        if op == "!=":
            return lambda labels: labels.get(key) != value
        return lambda labels: labels.get(key) == value
    if match := _EXISTS_RE.match(term):
        negate, key = match.groups()
        if negate:
            return lambda labels: key not in labels
        return lambda labels: key in labels
    raise bad_request(f"unable to parse requirement: {term!r}")


@dataclass(frozen=True, slots=True)
class Selector:
    """A parsed labelSelector plus fieldSelector; matches whole objects."""

    labels: tuple[Requirement, ...] = ()
    fields: tuple[tuple[str, str, str], ...] = ()
    """(field, op, value) with op in {"=", "!="}."""

    @classmethod
    def parse(cls, label_selector: str | None, field_selector: str | None) -> Selector:
        labels = tuple(_requirement(t) for t in _split_top_level(label_selector or ""))
        fields: list[tuple[str, str, str]] = []
        for term in _split_top_level(field_selector or ""):
            match = _EQ_RE.match(term)
            if match is None:
                raise bad_request(f"invalid field selector: {term!r}")
            name, op, value = match.groups()
            if name not in ("metadata.name", "metadata.namespace"):
                raise ApiError(400, "BadRequest", f"field label not supported: {name}")
            fields.append((name, "!=" if op == "!=" else "=", value))
        return cls(labels, tuple(fields))

    def matches(self, obj: Mapping[str, Any]) -> bool:
        meta = obj.get("metadata")
        meta = meta if isinstance(meta, Mapping) else {}
        raw_labels = meta.get("labels")
        labels: Mapping[str, str] = raw_labels if isinstance(raw_labels, Mapping) else {}
        if not all(req(labels) for req in self.labels):
            return False
        for name, op, value in self.fields:
            actual = meta.get(name.split(".", 1)[1]) or ""
            if (actual == value) != (op == "="):
                return False
        return True
