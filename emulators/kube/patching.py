"""The three patch formats the API server accepts for custom resources and built-in types.

Strategic merge patch is applied as a JSON merge patch after dropping its `$`-directives
(`$setElementOrder/...`, `$retainKeys`, `$patch`, `$deleteFromPrimitiveList/...`): good enough for the maps and
scalars kubectl sends for ConfigMaps and Leases, not a full implementation of list merge keys.
"""

from __future__ import annotations

import copy
from typing import Any

from emulators.json_merge_patch import merge_patch

from .errors import ApiError, bad_request, unsupported_media_type

MERGE = "application/merge-patch+json"
STRATEGIC = "application/strategic-merge-patch+json"
JSON_PATCH = "application/json-patch+json"


def _strip_directives(patch: Any) -> Any:
    if isinstance(patch, dict):
        if patch.get("$patch") == "delete":
            return None
        return {k: _strip_directives(v) for k, v in patch.items() if not k.startswith("$")}
    if isinstance(patch, list):
        return [_strip_directives(v) for v in patch if not (isinstance(v, dict) and "$patch" in v)]
    return patch


def _pointer(path: str) -> list[str]:
    if path == "":
        return []
    if not path.startswith("/"):
        raise bad_request(f"invalid JSON pointer {path!r}")
    return [p.replace("~1", "/").replace("~0", "~") for p in path[1:].split("/")]


def _parent(doc: Any, tokens: list[str]) -> Any:
    node = doc
    for token in tokens[:-1]:
        if isinstance(node, dict) and token in node:
            node = node[token]
        elif isinstance(node, list) and token.isdigit() and int(token) < len(node):
            node = node[int(token)]
        else:
            raise ApiError(
                422,
                "Invalid",
                f"the server rejected our request due to an error in our request: path {token!r} not found",
            )
    return node


def _get(doc: Any, tokens: list[str]) -> Any:
    if not tokens:
        return doc
    parent = _parent(doc, tokens)
    last = tokens[-1]
    if isinstance(parent, dict) and last in parent:
        return parent[last]
    if isinstance(parent, list) and last.isdigit() and int(last) < len(parent):
        return parent[int(last)]
    raise ApiError(422, "Invalid", f"the server rejected our request: path {'/'.join(tokens)!r} not found")


def _remove(doc: Any, tokens: list[str]) -> Any:
    value = _get(doc, tokens)
    parent = _parent(doc, tokens)
    if isinstance(parent, dict):
        del parent[tokens[-1]]
    else:
        del parent[int(tokens[-1])]
    return value


def _add(doc: Any, tokens: list[str], value: Any) -> Any:
    if not tokens:
        return value
    parent = _parent(doc, tokens)
    last = tokens[-1]
    if isinstance(parent, dict):
        parent[last] = value
    elif isinstance(parent, list):
        if last == "-":
            parent.append(value)
        elif last.isdigit() and int(last) <= len(parent):
            parent.insert(int(last), value)
        else:
            raise ApiError(422, "Invalid", f"the server rejected our request: index {last!r} out of range")
    else:
        raise ApiError(422, "Invalid", "the server rejected our request: cannot add to a scalar")
    return doc


def json_patch(target: Any, operations: Any) -> Any:
    """RFC 6902 (add, remove, replace, move, copy, test)."""
    if not isinstance(operations, list):
        raise bad_request("json patch must be a list of operations")
    doc = copy.deepcopy(target)
    for op in operations:
        if not isinstance(op, dict) or "op" not in op or "path" not in op:
            raise bad_request(f"invalid json patch operation {op!r}")
        tokens = _pointer(str(op["path"]))
        kind = op["op"]
        if kind == "add":
            doc = _add(doc, tokens, copy.deepcopy(op.get("value")))
        elif kind == "remove":
            _remove(doc, tokens)
        elif kind == "replace":
            _get(doc, tokens)
            if tokens:
                _remove(doc, tokens)
            doc = _add(doc, tokens, copy.deepcopy(op.get("value")))
        elif kind in ("move", "copy"):
            source = _pointer(str(op.get("from", "")))
            value = _remove(doc, source) if kind == "move" else copy.deepcopy(_get(doc, source))
            doc = _add(doc, tokens, value)
        elif kind == "test":
            if _get(doc, tokens) != op.get("value"):
                raise ApiError(
                    422, "Invalid", f"the server rejected our request: test failed at {op['path']}"
                )
        else:
            raise bad_request(f"unknown json patch operation {kind!r}")
    return doc


def apply_patch(target: dict[str, Any], patch: Any, content_type: str) -> Any:
    """Apply a patch of the given media type (parameters such as `; charset=utf-8` are ignored)."""
    media = content_type.split(";", 1)[0].strip().lower()
    if media == MERGE:
        return merge_patch(target, patch)
    if media == STRATEGIC:
        return merge_patch(target, _strip_directives(patch))
    if media == JSON_PATCH:
        return json_patch(target, patch)
    raise unsupported_media_type(content_type)
