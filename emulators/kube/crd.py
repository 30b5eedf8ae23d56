"""CustomResourceDefinition objects: what the emulator serves for each one, and the bundled release sets.

A CRD written to `apiextensions.k8s.io/v1` `customresourcedefinitions` (over HTTP, by `kubectl apply`, from
a seed file or from a bundle) makes its resource served at once: discovery, OpenAPI, list/watch and
writes, with its own `openAPIV3Schema` for validation. Deleting it deletes its objects (DELETED events)
and its paths answer 404 again, as on a real API server (where the CRD is removed when the
`customresourcecleanup` finalizer is done; here that happens within the delete).

The bundles are the CRDs of real releases, each document naming its public source (`crds/tekton/`):
which Tekton a cluster has is chosen by installing one bundle (one cluster installs one release).
Served versions share one stored object with conversion None (only `apiVersion` changes); Tekton's own
conversion webhook (v1beta1 <-> v1) also renames a few fields, which the emulator does not.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml

from .errors import ApiError
from .resources import CUSTOM_RESOURCE_DEFINITIONS, ResourceType

BUNDLED_DIR = Path(__file__).parent / "crds"

BUNDLES: dict[str, tuple[str, ...]] = {
    # Kabanero 0.6-0.8: OpenShift Pipelines Operator 0.10.x (Pipelines v0.10.1, Triggers v0.2.1).
    "tekton-v0.10.1": ("tekton/pipelines-v0.10.1.yaml", "tekton/triggers-v0.2.1.yaml"),
    # Kabanero 0.9: OpenShift Pipelines Operator 0.11.2 (Pipelines v0.11.3, Triggers v0.4.0).
    "tekton-v0.11.3": ("tekton/pipelines-v0.11.3.yaml", "tekton/triggers-v0.4.0.yaml"),
    # Current releases: Pipelines v1.15.0, Triggers v0.37.0.
    "tekton-current": ("tekton/pipelines-v1.15.0.yaml", "tekton/triggers-v0.37.0.yaml"),
    # OpenShift Pipelines Operator 0.10/0.11: `operator.tekton.dev/v1alpha1` Config (cluster-scoped).
    "openshift-pipelines-operator": ("tekton/openshift-pipelines-operator-v0.10.7.yaml",),
    # tektoncd/operator (current): TektonConfig and TektonPipeline (cluster-scoped).
    "tekton-operator": ("tekton/tekton-operator-v0.81.1.yaml",),
}

_V1 = "apiextensions.k8s.io/v1"
_V1BETA1 = "apiextensions.k8s.io/v1beta1"

Obj = dict[str, Any]


def load_documents(text: str) -> list[Obj]:
    """The objects of a multi-document YAML text (libyaml when present: the current Tekton CRDs are 1.5 MB)."""
    loader: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    return [doc for doc in yaml.load_all(text, Loader=loader) if isinstance(doc, dict)]


def is_crd(doc: Obj) -> bool:
    return doc.get("kind") == "CustomResourceDefinition" and doc.get("apiVersion") in (_V1, _V1BETA1)


def to_v1(doc: Obj) -> Obj:
    """An `apiextensions.k8s.io/v1beta1` CRD in its v1 form (as the API server converts it): per-version
    schema, subresources and printer columns; `preserveUnknownFields` true unless set false."""
    if doc.get("apiVersion") != _V1BETA1:
        return doc
    spec = dict(doc.get("spec") or {})
    schema = (spec.pop("validation", None) or {}).get("openAPIV3Schema")
    subresources = spec.pop("subresources", None)
    columns = [
        {("jsonPath" if k == "JSONPath" else k): v for k, v in column.items()}
        for column in spec.pop("additionalPrinterColumns", None) or ()
    ]
    single = spec.pop("version", None)
    versions = spec.get("versions") or [{"name": single, "served": True, "storage": True}]
    converted = []
    for entry in versions:
        version = dict(entry)
        if schema is not None and "schema" not in version:
            version["schema"] = {"openAPIV3Schema": schema}
        if subresources is not None and "subresources" not in version:
            version["subresources"] = subresources
        if columns and "additionalPrinterColumns" not in version:
            version["additionalPrinterColumns"] = columns
        converted.append(version)
    spec["versions"] = converted
    spec.setdefault("preserveUnknownFields", True)
    return {**doc, "apiVersion": _V1, "spec": spec}


def bundle(name: str) -> list[Obj]:
    """The v1 CRDs of a bundle (a name of `BUNDLES`) or of a YAML file (its CRD documents)."""
    if name in BUNDLES:
        paths = [BUNDLED_DIR / rel for rel in BUNDLES[name]]
    elif Path(name).is_file():
        paths = [Path(name)]
    else:
        known = ", ".join(sorted(BUNDLES))
        raise ValueError(f"unknown CRD bundle {name!r} (known: {known}; or a path to a YAML file)")
    return [to_v1(doc) for path in paths for doc in load_documents(path.read_text()) if is_crd(doc)]


def _invalid(name: str, causes: list[tuple[str, str]]) -> ApiError:
    texts = [f"{field}: {message}" for field, message in causes]
    summary = texts[0] if len(texts) == 1 else "[" + ", ".join(texts) + "]"
    details = {
        "name": name,
        "group": CUSTOM_RESOURCE_DEFINITIONS.group,
        "kind": CUSTOM_RESOURCE_DEFINITIONS.kind,
        "causes": [{"reason": "FieldValueInvalid", "message": m, "field": f} for f, m in causes],
    }
    return ApiError(
        422,
        "Invalid",
        f'CustomResourceDefinition.apiextensions.k8s.io "{name}" is invalid: {summary}',
        details=details,
    )


def _one_storage_version(versions: Any) -> bool:
    if not isinstance(versions, list) or not all(isinstance(v, dict) for v in versions):
        return False
    return sum(1 for v in versions if v.get("storage")) == 1


def _spec_causes(spec: Obj) -> list[tuple[str, str]]:
    given = spec.get("names")
    names: Obj = given if isinstance(given, dict) else {}
    causes: list[tuple[str, str]] = []
    group = spec.get("group")
    if not isinstance(group, str) or "." not in group:
        causes.append(("spec.group", "Invalid value: should be a domain with at least one dot"))
    for field in ("plural", "kind"):
        if not isinstance(names.get(field), str) or not names[field]:
            causes.append((f"spec.names.{field}", "Required value"))
    if spec.get("scope") not in ("Namespaced", "Cluster"):
        causes.append(("spec.scope", 'Unsupported value: supported values: "Cluster", "Namespaced"'))
    if not _one_storage_version(spec.get("versions")):
        causes.append(
            ("spec.versions", "Invalid value: must have exactly one version marked as storage version")
        )
    return causes


def check(crd: Obj) -> None:
    """The API server's 422 for a CRD it cannot serve (the checks the emulator relies on)."""
    name = str((crd.get("metadata") or {}).get("name", ""))
    spec = crd.get("spec")
    if not isinstance(spec, dict):
        raise _invalid(name, [("spec", "Required value")])
    causes = _spec_causes(spec)
    expected = f"{spec['names']['plural']}.{spec['group']}" if not causes else name
    if name != expected:
        causes.append(("metadata.name", f'Invalid value: "{name}": must be spec.names.plural+"."+spec.group'))
    if causes:
        raise _invalid(name, causes)


def accepted(crd: Obj) -> Obj:
    """`crd` with the names defaulted and the status the API server's controllers write once it serves it
    (NamesAccepted and Established true, acceptedNames, storedVersions)."""
    spec = crd["spec"]
    names = spec["names"]
    names.setdefault("singular", names["kind"].lower())
    names.setdefault("listKind", f"{names['kind']}List")
    storage = next(v["name"] for v in spec["versions"] if v.get("storage"))
    stored = list((crd.get("status") or {}).get("storedVersions") or [])
    conditions = [
        {"type": kind, "status": "True", "reason": reason, "message": message}
        for kind, reason, message in (
            ("NamesAccepted", "NoConflicts", "no conflicts found"),
            ("Established", "InitialNamesAccepted", "the initial names have been accepted"),
        )
    ]
    crd["status"] = {
        "acceptedNames": dict(names),
        "conditions": conditions,
        "storedVersions": [*stored, storage] if storage not in stored else stored,
    }
    return crd


def resource_type(crd: Obj) -> ResourceType:
    """The served resource of a (checked, defaulted) CRD: storage version first, the other served ones
    also served from the same objects."""
    spec = crd["spec"]
    names = spec["names"]
    versions = [v for v in spec["versions"] if v.get("served", True)]
    storage = next(v["name"] for v in spec["versions"] if v.get("storage"))
    return ResourceType(
        group=spec["group"],
        version=storage,
        plural=names["plural"],
        singular=names.get("singular") or names["kind"].lower(),
        kind=names["kind"],
        namespaced=spec["scope"] == "Namespaced",
        short_names=tuple(names.get("shortNames") or ()),
        status_subresource=any("status" in (v.get("subresources") or {}) for v in versions),
        tracks_generation=True,
        categories=tuple(names.get("categories") or ()),
        also_served=tuple(v["name"] for v in versions if v["name"] != storage),
    )


def schemas(crd: Obj) -> dict[tuple[str, str, str], dict[str, Any]]:
    """The `openAPIV3Schema` of each version that has one, by (group, plural, version)."""
    spec = crd["spec"]
    found: dict[tuple[str, str, str], dict[str, Any]] = {}
    for version in spec["versions"]:
        schema = (version.get("schema") or {}).get("openAPIV3Schema")
        if isinstance(schema, dict):
            found[(spec["group"], spec["names"]["plural"], version["name"])] = schema
    return found


def names_of(docs: Iterable[Obj]) -> list[str]:
    return [str(doc["metadata"]["name"]) for doc in docs]
