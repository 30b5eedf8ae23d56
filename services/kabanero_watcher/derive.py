"""Pure derivation: Kabanero CRs, EventMediators, EventConnections -> repositories and triggers.

Rules from kabanero.md §6 (trigger identity) and §7 (repositories). A content hash of the spec
slice is what decides "changed": status, metadata and ordering noise never reach it. Objects that
do not have the documented shape raise :class:`Malformed`; the caller logs and skips them.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from shared.events import InstanceRef, Repository, TriggerKey

Obj = Mapping[str, Any]
RepoKind = Literal["trigger", "pipeline", "gitops"]

_RELEASE_DOWNLOAD = re.compile(r"^https?://([^/]+)/([^/]+)/([^/]+)/releases/download/([^/]+)/[^/]+$")
_RAW_GITHUB = re.compile(r"^https?://raw\.githubusercontent\.com/([^/]+)/([^/]+)/([^/]+)/.+$")
_GIT_RELEASE_FIELDS = ("hostname", "organization", "project", "release", "assetName")


class Malformed(ValueError):
    """A custom object whose shape does not match its CRD schema."""


def content_hash(value: Any) -> str:
    """Stable sha256 of a JSON-able value (sorted keys, no whitespace)."""
    text = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode()).hexdigest()


# --- shape checks ---------------------------------------------------------------------------------


def _dict(value: Any, where: str, *, optional: bool = True) -> dict[str, Any]:
    if value is None and optional:
        return {}
    if not isinstance(value, dict):
        raise Malformed(f"{where}: expected an object, got {type(value).__name__}")
    return value


def _list_of_dicts(value: Any, where: str) -> list[dict[str, Any]]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise Malformed(f"{where}: expected a list, got {type(value).__name__}")
    for i, item in enumerate(value):
        _dict(item, f"{where}[{i}]", optional=False)
    return value


def _str(value: Any, where: str, *, optional: bool = True) -> str | None:
    if value is None and optional:
        return None
    if not isinstance(value, str) or (not optional and not value):
        raise Malformed(f"{where}: expected a string, got {value!r:.40}")
    return value


def object_id(obj: Obj) -> tuple[str, str]:
    """(namespace, name) of a namespaced object, or Malformed."""
    meta = _dict(obj.get("metadata"), "metadata", optional=False)
    namespace = _str(meta.get("namespace"), "metadata.namespace", optional=False)
    name = _str(meta.get("name"), "metadata.name", optional=False)
    assert namespace is not None and name is not None
    return namespace, name


# --- repositories (kabanero.md §7) -----------------------------------------------------------------


def _normalize(url: str) -> str:
    url = url.strip().rstrip("/")
    return url.removesuffix(".git")


def archive_repository(ref: Obj, *, kind: RepoKind, source: str) -> Repository | None:
    """Repository of one archive reference (PipelineSpec/TriggerSpec); gitRelease wins over https."""
    git_release = _dict(ref.get("gitRelease"), f"{source}.gitRelease")
    values = [git_release.get(f) for f in _GIT_RELEASE_FIELDS]
    if all(isinstance(v, str) and v for v in values):
        host, org, project, release, _ = values
        return Repository(url=f"https://{host}/{org}/{project}", kind=kind, ref=release, source=source)
    https = _dict(ref.get("https"), f"{source}.https")
    url = _str(https.get("url"), f"{source}.https.url") or _str(ref.get("url"), f"{source}.url")
    if not url:
        return None
    if m := _RELEASE_DOWNLOAD.match(url):
        host, org, repo, tag = m.groups()
        return Repository(url=_normalize(f"https://{host}/{org}/{repo}"), kind=kind, ref=tag, source=source)
    if m := _RAW_GITHUB.match(url):
        org, repo, ref_ = m.groups()
        return Repository(
            url=_normalize(f"https://github.com/{org}/{repo}"), kind=kind, ref=ref_, source=source
        )
    return Repository(url=_normalize(url), kind="unknown", source=source)


def archive_url(ref: Obj) -> str | None:
    """Where the archive is downloaded from (gitRelease wins over https, legacy flat ``url`` last)."""
    git_release = ref.get("gitRelease") or {}
    values = [git_release.get(f) for f in _GIT_RELEASE_FIELDS] if isinstance(git_release, dict) else []
    if values and all(isinstance(v, str) and v for v in values):
        host, org, project, release, asset = values
        return f"https://{host}/{org}/{project}/releases/download/{release}/{asset}"
    https = ref.get("https")
    if isinstance(https, dict) and isinstance(https.get("url"), str):
        return str(https["url"])
    url = ref.get("url")
    return url if isinstance(url, str) else None


def instance_repositories(kabanero: Obj) -> list[Repository]:
    """Pipeline, gitops and trigger repositories of a Kabanero CR, deduplicated by URL (first wins)."""
    spec = _dict(kabanero.get("spec"), "spec")
    stacks = _dict(spec.get("stacks"), "spec.stacks")
    gitops = _dict(spec.get("gitops"), "spec.gitops")
    refs: list[tuple[dict[str, Any], RepoKind, str]] = []
    for p in _list_of_dicts(stacks.get("pipelines"), "spec.stacks.pipelines"):
        refs.append((p, "pipeline", f"spec.stacks.pipelines[{p.get('id')}]"))
    for r in _list_of_dicts(stacks.get("repositories"), "spec.stacks.repositories"):
        for p in _list_of_dicts(r.get("pipelines"), f"spec.stacks.repositories[{r.get('name')}].pipelines"):
            refs.append(
                (p, "pipeline", f"spec.stacks.repositories[{r.get('name')}].pipelines[{p.get('id')}]")
            )
    for p in _list_of_dicts(gitops.get("pipelines"), "spec.gitops.pipelines"):
        refs.append((p, "gitops", f"spec.gitops.pipelines[{p.get('id')}]"))
    for t in _list_of_dicts(spec.get("triggers"), "spec.triggers"):
        refs.append((t, "trigger", f"spec.triggers[{t.get('id')}]"))
    seen: dict[str, Repository] = {}
    for ref, kind, source in refs:
        repo = archive_repository(ref, kind=kind, source=source)
        if repo is not None and repo.url not in seen:
            seen[repo.url] = repo
    return list(seen.values())


# --- derived state of one instance -----------------------------------------------------------------


@dataclass(frozen=True)
class DesiredInstance:
    ref: InstanceRef
    uid: str | None
    version: str | None
    repositories: list[Repository]
    content_hash: str


@dataclass(frozen=True)
class DesiredTrigger:
    key: TriggerKey
    content: dict[str, Any]
    content_hash: str
    version: str | None
    url: str | None
    repositories: list[Repository]
    destinations: list[str]


@dataclass
class Desired:
    """Everything derived for one (cluster, namespace).

    ``frozen_owners`` are (generation, owner) pairs whose source object is malformed right now: their
    last published triggers are kept as they are (neither updated nor deleted) until it is fixed.
    ``instance_frozen`` does the same for the instance record.
    """

    namespace: str
    instance: DesiredInstance | None = None
    triggers: dict[str, DesiredTrigger] = field(default_factory=dict)
    frozen_owners: set[tuple[str, str]] = field(default_factory=set)
    instance_frozen: bool = False
    all_mediations_frozen: bool = False


def derive_instance(cluster: str, kabanero: Obj) -> DesiredInstance:
    namespace, name = object_id(kabanero)
    spec = _dict(kabanero.get("spec"), "spec")
    version = _str(spec.get("version"), "spec.version")
    repositories = instance_repositories(kabanero)
    meta = kabanero["metadata"]
    uid = meta.get("uid") if isinstance(meta.get("uid"), str) else None
    hashed = {
        "name": name,
        "version": version,
        "repositories": [r.model_dump(mode="json") for r in repositories],
    }
    return DesiredInstance(
        ref=InstanceRef(cluster=cluster, namespace=namespace, name=name),
        uid=uid,
        version=version,
        repositories=repositories,
        content_hash=content_hash(hashed),
    )


def derive_legacy_triggers(cluster: str, kabanero: Obj) -> list[DesiredTrigger]:
    """0.6-0.8: one trigger per ``spec.triggers[]`` entry; version = sha256 (legacy ``url`` accepted)."""
    namespace, name = object_id(kabanero)
    spec = _dict(kabanero.get("spec"), "spec")
    out: list[DesiredTrigger] = []
    for i, entry in enumerate(_list_of_dicts(spec.get("triggers"), "spec.triggers")):
        trigger_id = _str(entry.get("id"), f"spec.triggers[{i}].id", optional=False)
        sha = _str(entry.get("sha256"), f"spec.triggers[{i}].sha256")
        assert trigger_id is not None
        repo = archive_repository(entry, kind="trigger", source=f"spec.triggers[{trigger_id}]")
        out.append(
            DesiredTrigger(
                key=TriggerKey(
                    cluster=cluster, namespace=namespace, generation="legacy", owner=name, name=trigger_id
                ),
                content=dict(entry),
                content_hash=content_hash(entry),
                version=sha,
                url=archive_url(entry),
                repositories=[repo] if repo else [],
                destinations=[],
            )
        )
    return out


_MEDIATOR_FIELDS = ("createListener", "createRoute", "insecureListener", "repositories", "variables")


def check_mediator(mediator: Obj) -> list[dict[str, Any]]:
    """The mediations of an EventMediator, or Malformed."""
    object_id(mediator)
    spec = _dict(mediator.get("spec"), "spec", optional=False)
    mediations = _list_of_dicts(spec.get("mediations"), "spec.mediations")
    for i, item in enumerate(mediations):
        _str(item.get("name"), f"spec.mediations[{i}].name", optional=False)
        if item.get("sendTo") is not None and not (
            isinstance(item["sendTo"], list) and all(isinstance(s, str) for s in item["sendTo"])
        ):
            raise Malformed(f"spec.mediations[{i}].sendTo: expected a list of strings")
        _dict(item.get("selector"), f"spec.mediations[{i}].selector")
        _list_of_dicts(item.get("variables"), f"spec.mediations[{i}].variables")
    _list_of_dicts(spec.get("repositories"), "spec.repositories")
    _list_of_dicts(spec.get("variables"), "spec.variables")
    return mediations


def check_connections(connections: Obj) -> list[dict[str, Any]]:
    """The ``spec.connections[]`` of an EventConnections object, or Malformed."""
    object_id(connections)
    spec = _dict(connections.get("spec"), "spec", optional=False)
    items = _list_of_dicts(spec.get("connections"), "spec.connections")
    for i, item in enumerate(items):
        frm = _dict(item.get("from"), f"spec.connections[{i}].from", optional=False)
        med = _dict(frm.get("mediator"), f"spec.connections[{i}].from.mediator", optional=False)
        _str(med.get("name"), f"spec.connections[{i}].from.mediator.name", optional=False)
        _str(med.get("mediation"), f"spec.connections[{i}].from.mediator.mediation")
        _str(med.get("destination"), f"spec.connections[{i}].from.mediator.destination")
        for j, to in enumerate(_list_of_dicts(item.get("to"), f"spec.connections[{i}].to")):
            _list_of_dicts(to.get("https"), f"spec.connections[{i}].to[{j}].https")
    return items


def _destinations(connections: Iterable[dict[str, Any]]) -> list[str]:
    out: list[str] = []
    for conn in connections:
        for to in conn.get("to") or []:
            for https in to.get("https") or []:
                target = https.get("url") or https.get("urlExpression")
                if isinstance(target, str) and target not in out:
                    out.append(target)
    return out


def derive_mediation_triggers(
    cluster: str, mediator: Obj, connections: list[tuple[str, dict[str, Any]]]
) -> list[DesiredTrigger]:
    """0.9+: one trigger per mediation; content = mediation + mediator-level fields + its connections.

    ``connections`` are (EventConnections name, connection item) pairs of the same namespace; an item
    applies when ``from.mediator.name`` is this mediator and ``from.mediator.mediation`` is this
    mediation or unset (all mediations of the mediator).
    """
    namespace, name = object_id(mediator)
    mediations = check_mediator(mediator)
    spec = mediator["spec"]
    mediator_level = {f: spec[f] for f in _MEDIATOR_FIELDS if spec.get(f) is not None}
    out: list[DesiredTrigger] = []
    for item in mediations:
        mediation = item["name"]
        matched = [
            (source, conn)
            for source, conn in connections
            if conn["from"]["mediator"]["name"] == name
            and conn["from"]["mediator"].get("mediation") in (None, mediation)
        ]
        # Order-independent: connections are a set across EventConnections objects.
        matched.sort(key=lambda pair: (pair[0], content_hash(pair[1])))
        conns = [conn for _, conn in matched]
        content = {"mediation": item, "mediator": mediator_level, "connections": conns}
        digest = content_hash(content)
        out.append(
            DesiredTrigger(
                key=TriggerKey(
                    cluster=cluster, namespace=namespace, generation="mediation", owner=name, name=mediation
                ),
                content=content,
                content_hash=digest,
                version=digest,
                url=None,
                repositories=[],
                destinations=_destinations(conns),
            )
        )
    return out
