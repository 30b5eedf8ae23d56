"""``parameters.instance``: the Kabanero spec a service creates, checked against the real CRD schema.

The schema is the ``openAPIV3Schema`` of ``kabaneros.kabanero.io`` v1alpha2 from the Kabanero
operator's release manifest (``crds/kabanero.io_kabaneros_crd.yaml``, source named in its first
line; the same file as ``emulators/kube/crds/``, a test keeps them equal). The API server applies
the same schema when the watcher creates the CR, so a spec we accept is one it accepts, and a spec
it would refuse is refused here at once with a 400 naming the field, before anything is stored.
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema  # type: ignore[import-untyped]  # no stubs; one validator call below
import yaml

CRD = Path(__file__).parent / "crds" / "kabanero.io_kabaneros_crd.yaml"
VERSION = "v1alpha2"


@cache
def spec_schema() -> dict[str, Any]:
    """The ``spec`` part of the CRD's schema for :data:`VERSION`."""
    crd = yaml.safe_load(CRD.read_text())
    (version,) = [v for v in crd["spec"]["versions"] if v["name"] == VERSION]
    schema: dict[str, Any] = version["schema"]["openAPIV3Schema"]["properties"]["spec"]
    return schema


@cache
def _validator() -> Any:
    return jsonschema.Draft4Validator(spec_schema())


def _where(path: list[str | int]) -> str:
    out = "parameters.instance"
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else f".{part}"
    return out


INT64 = (-(2**63), 2**63 - 1)
"""What an API server stores of a JSON integer (and BSON, where the spec is kept): a wider one is a
400 naming the field, never a storage error."""


def _wide_integers(value: Any, path: list[str | int]) -> list[list[str | int]]:
    """The paths of the integers outside ``INT64`` (an unknown field's too: they are kept as is)."""
    if isinstance(value, bool):
        return []
    if isinstance(value, int):
        return [] if INT64[0] <= value <= INT64[1] else [path]
    if isinstance(value, dict):
        return [p for k, v in value.items() for p in _wide_integers(v, [*path, str(k)])]
    if isinstance(value, list):
        return [p for i, v in enumerate(value) for p in _wide_integers(v, [*path, i])]
    return []


def spec_errors(spec: Any) -> list[str]:
    """Every violation of the CRD schema, as ``<field>: <problem>`` (no value echoed), field order."""
    if not isinstance(spec, dict):
        return ["parameters.instance: must be an object (a Kabanero spec)"]
    try:
        json.dumps(spec, ensure_ascii=False).encode()
    except UnicodeEncodeError:  # JSON can carry a lone surrogate; no API server stores it
        return ["parameters.instance: must be valid Unicode text (a lone surrogate is not)"]
    errors = sorted(_validator().iter_errors(spec), key=lambda e: [str(p) for p in e.absolute_path])
    out = [f"{_where(path)}: must be a 64-bit integer" for path in _wide_integers(spec, [])]
    for err in errors:
        problem = {
            "type": f"must be of type {err.validator_value}",
            "required": "a required field is missing",
            "enum": "must be one of the allowed values",
        }.get(str(err.validator), f"violates the CRD's '{err.validator}' rule")
        if err.validator == "required":
            missing = err.message.split("'")[1] if "'" in err.message else "?"
            out.append(f"{_where([*err.absolute_path, missing])}: required")
        else:
            out.append(f"{_where(list(err.absolute_path))}: {problem}")
    return out
