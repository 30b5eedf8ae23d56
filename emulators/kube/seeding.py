"""Loading objects from (multi-document) YAML files into a store."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml

from . import crd
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
    """Apply every object of every file in order (create, or replace if present): a CRD serves its resource
    for the documents after it (an `apiextensions.k8s.io/v1beta1` one is converted, as the API server
    did). Returns the object count."""
    count = 0
    for path in paths:
        for obj in documents(Path(path).read_text()):
            store.apply(crd.to_v1(obj) if crd.is_crd(obj) else obj)
            count += 1
    return count
