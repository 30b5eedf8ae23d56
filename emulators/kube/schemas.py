"""CRD `openAPIV3Schema` validation of written custom resources, as the API server does it.

The schemas come from CRD manifests (`crds/`, taken from the Kabanero releases; each file names its
source): apiextensions v1beta1 `spec.validation.openAPIV3Schema` (all versions) or
`spec.versions[].schema.openAPIV3Schema` (that version). Checked: `type` (JSON types; `integer` is a
whole number, never a boolean), `required`, `enum`, `properties`, `items`, `additionalProperties`,
`nullable` and `x-kubernetes-int-or-string`. Unknown fields are kept: the Kabanero CRDs are v1beta1
without `preserveUnknownFields: false`, so the API server neither prunes nor refuses them.
A refused write is a 422 `Invalid` Status whose message and causes read like the API server's:
``EventMediator.events.kabanero.io "x" is invalid: spec.mediations[0].name: Required value``.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from .errors import ApiError
from .resources import ResourceType

BUNDLED = Path(__file__).parent / "crds"

Schema = dict[str, Any]


@dataclass(frozen=True, slots=True)
class Cause:
    reason: str
    message: str
    field: str

    def text(self) -> str:
        return f"{self.field}: {self.message}"


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "integer" if value.is_integer() else "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


def _has_type(value: Any, expected: str) -> bool:
    actual = _json_type(value)
    return actual == expected or (expected == "number" and actual == "integer")


def _shown(value: Any) -> str:
    return (
        json.dumps(value)
        if isinstance(value, str | int | float | bool) or value is None
        else _json_type(value)
    )


def validate(schema: Schema, value: Any, path: str = "") -> Iterator[Cause]:
    """Every violation of ``schema`` by ``value`` (``path`` is the field path of ``value``)."""
    if value is None and schema.get("nullable"):
        return
    expected = schema.get("type")
    if schema.get("x-kubernetes-int-or-string"):
        if _json_type(value) not in ("integer", "string"):
            yield Cause(
                "FieldValueInvalid",
                f'Invalid value: "{_json_type(value)}": {path} in body must be of type integer or string',
                path,
            )
            return
    elif isinstance(expected, str) and not _has_type(value, expected):
        shown = json.dumps(_json_type(value))  # the API server shows the actual type, twice
        yield Cause(
            "FieldValueInvalid",
            f"Invalid value: {shown}: {path} in body must be of type {expected}: {shown}",
            path,
        )
        return
    if "enum" in schema and value not in schema["enum"]:
        supported = ", ".join(json.dumps(v) for v in schema["enum"])
        yield Cause(
            "FieldValueNotSupported",
            f"Unsupported value: {_shown(value)}: supported values: {supported}",
            path,
        )
    if isinstance(value, dict):
        properties: dict[str, Schema] = schema.get("properties") or {}
        for name in schema.get("required") or ():
            if name not in value:
                yield Cause("FieldValueRequired", "Required value", _join(path, name))
        extra = schema.get("additionalProperties")
        for name, item in value.items():
            if name in properties:
                yield from validate(properties[name], item, _join(path, name))
            elif isinstance(extra, dict):
                yield from validate(extra, item, _join(path, name))
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        for i, item in enumerate(value):
            yield from validate(schema["items"], item, f"{path}[{i}]")


def _join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


class Schemas:
    """The schemas of the CRDs known to the emulator, by (group, plural, version)."""

    def __init__(self, schemas: dict[tuple[str, str, str], Schema] | None = None) -> None:
        self._schemas = dict(schemas or {})

    @classmethod
    def from_manifests(cls, paths: Iterable[Path]) -> Schemas:
        found: dict[tuple[str, str, str], Schema] = {}
        for path in paths:
            for doc in yaml.safe_load_all(path.read_text()):
                if not isinstance(doc, dict) or doc.get("kind") != "CustomResourceDefinition":
                    continue
                spec = doc["spec"]
                group, plural = spec["group"], spec["names"]["plural"]
                common = (spec.get("validation") or {}).get("openAPIV3Schema")
                versions = [v["name"] for v in spec.get("versions") or []] or [spec["version"]]
                for entry in spec.get("versions") or [{"name": spec.get("version")}]:
                    schema = (entry.get("schema") or {}).get("openAPIV3Schema") or common
                    if schema is not None and entry.get("name") in versions:
                        found[(group, plural, entry["name"])] = schema
        return cls(found)

    @classmethod
    def bundled(cls) -> Schemas:
        """The Kabanero 0.9.2 CRDs shipped in `crds/` (kabaneros, stacks, eventmediators, eventconnections)."""
        return cls.from_manifests(sorted(BUNDLED.glob("*.yaml")))

    def known(self) -> list[tuple[str, str, str]]:
        return sorted(self._schemas)

    def replace(self, group: str, plural: str, schemas: dict[tuple[str, str, str], Schema]) -> None:
        """Use `schemas` for the resource `plural` in `group` (a CRD was written); {} forgets them."""
        for key in [k for k in self._schemas if k[:2] == (group, plural)]:
            del self._schemas[key]
        self._schemas.update(schemas)

    def check(self, rt: ResourceType, version: str, obj: dict[str, Any]) -> None:
        """Raise the API server's 422 Invalid when ``obj`` violates the schema of ``rt`` at ``version``."""
        schema = self._schemas.get((rt.group, rt.plural, version))
        if schema is None:
            return
        causes = list(validate(schema, obj))
        if not causes:
            return
        name = str(obj.get("metadata", {}).get("name", ""))
        texts = [c.text() for c in causes]
        summary = texts[0] if len(texts) == 1 else "[" + ", ".join(texts) + "]"
        qualified = f"{rt.kind}.{rt.group}" if rt.group else rt.kind
        details: dict[str, Any] = {
            "name": name,
            "group": rt.group,
            "kind": rt.kind,
            "causes": [{"reason": c.reason, "message": c.message, "field": c.field} for c in causes],
        }
        raise ApiError(422, "Invalid", f'{qualified} "{name}" is invalid: {summary}', details=details)
