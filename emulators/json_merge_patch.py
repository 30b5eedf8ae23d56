"""RFC 7386 JSON merge patch, as both emulated servers apply it (Kubernetes ``merge-patch+json``
on custom resources, OTC's ``PATCH /tools`` parameters): one definition, so they cannot drift."""

from __future__ import annotations

import copy
from typing import Any


def merge_patch(target: Any, patch: Any) -> Any:
    """``patch`` applied to a copy of ``target``: objects merge recursively, ``null`` removes a key,
    anything else replaces."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result: dict[str, Any] = copy.deepcopy(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result
