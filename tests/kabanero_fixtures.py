"""The Kabanero sample fixtures (tests/fixtures/kabanero): cases, their objects and what they yield.

Each case is one namespace holding some published samples (see the fixtures' README for sources);
``expected.yaml`` says, by hand, which repositories and triggers each must yield.
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).parent / "fixtures" / "kabanero"
SAMPLES = ROOT / "samples"
CRDS = ROOT.parents[2] / "emulators" / "kube" / "crds"
# What the watcher reads; samples also hold Tekton objects (TriggerBinding, …) it never sees.
KINDS = ("Kabanero", "Stack", "EventMediator", "EventConnections", "ConfigMap")


@dataclass(frozen=True)
class Case:
    name: str
    namespace: str
    cluster: str  # "legacy" (no events CRDs) or "0.9"
    files: tuple[str, ...]
    repositories: list[dict[str, Any]]
    triggers: list[dict[str, Any]]
    instance: bool
    rejected: list[dict[str, str]]

    def objects(self, *, include_rejected: bool = False) -> list[tuple[str, dict[str, Any]]]:
        """(file, object) of every document of the case's files, placed in its namespace."""
        skip = set() if include_rejected else {r["file"] for r in self.rejected}
        out: list[tuple[str, dict[str, Any]]] = []
        for file in self.files:
            if file in skip:
                continue
            for doc in _documents(file):
                if doc.get("kind") not in KINDS:
                    continue
                obj = copy.deepcopy(doc)
                obj.setdefault("metadata", {})["namespace"] = self.namespace
                out.append((file, obj))
        return out

    def rejected_objects(self) -> list[tuple[dict[str, str], dict[str, Any]]]:
        out = []
        for entry in self.rejected:
            for doc in _documents(entry["file"]):
                obj = copy.deepcopy(doc)
                obj.setdefault("metadata", {})["namespace"] = self.namespace
                out.append((entry, obj))
        return out


def path_of(file: str) -> Path:
    """A sample file by name; ``deploy:<name>`` is one of deploy/samples."""
    if file.startswith("deploy:"):
        return ROOT.parents[2] / "deploy" / "samples" / f"{file.removeprefix('deploy:')}.yaml"
    return SAMPLES / f"{file}.yaml"


@cache
def _documents(file: str) -> tuple[dict[str, Any], ...]:
    text = path_of(file).read_text()
    return tuple(d for d in yaml.safe_load_all(text) if isinstance(d, dict))


def _namespace(name: str) -> str:
    return re.sub(r"[^a-z0-9-]", "-", name.lower())[:63].strip("-")


@cache
def cases() -> dict[str, Case]:
    raw = yaml.safe_load((ROOT / "expected.yaml").read_text())["cases"]
    return {
        name: Case(
            name=name,
            namespace=_namespace(name),
            cluster=str(body["cluster"]),
            files=tuple(body["files"]),
            repositories=body["repositories"],
            triggers=body["triggers"],
            instance=bool(body.get("instance", True)),
            rejected=body.get("rejected", []),
        )
        for name, body in raw.items()
    }


def of_cluster(cluster: str) -> list[Case]:
    return [c for c in cases().values() if c.cluster == cluster]


def repositories_view(repos: list[Any]) -> list[dict[str, Any]]:
    """Published/derived repositories as the expectations write them (url, kinds, refs)."""
    out = []
    for r in repos:
        data = r if isinstance(r, dict) else r.model_dump(mode="json")
        kinds = data.get("kinds") or [data["kind"]]
        refs = data.get("refs") or ([data["ref"]] if data.get("ref") else [])
        out.append({"url": data["url"], "kinds": kinds, "refs": refs})
    return out
