"""Loading objects from (multi-document) YAML files into a store."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml

from .store import Obj, Store


def documents(text: str) -> list[Obj]:
    """Every object in a multi-document YAML text; `kind: List` documents are flattened."""
    found: list[Obj] = []
    for doc in yaml.safe_load_all(text):
        if doc is None:
            continue
        if not isinstance(doc, dict):
            raise ValueError(f"a YAML document is not an object: {doc!r:.80}")
        if doc.get("kind") == "List" or (str(doc.get("kind", "")).endswith("List") and "items" in doc):
            items: Any = doc.get("items") or []
            found.extend(item for item in items if isinstance(item, dict))
        else:
            found.append(doc)
    return found


def seed(store: Store, paths: Iterable[str | Path]) -> int:
    """Apply every object of every file (create, or replace if present). Returns the object count."""
    count = 0
    for path in paths:
        for obj in documents(Path(path).read_text()):
            store.apply(obj)
            count += 1
    return count
