"""Pure derivation: Kabanero CRs, Stacks, the gitops-map, EventMediators, EventConnections ->
repositories and triggers, as the Kabanero 0.6-0.9 operators read them.

Every rule names the operator source it follows (docs/design.md, "Kabanero semantics", has the
full list with tags). A content hash of what was derived decides "changed": status, metadata and
ordering noise never reach it. Objects that do not have the documented shape raise
:class:`Malformed`; the caller logs them and freezes what they own.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from shared.events import (
    InstanceData,
    InstanceRef,
    Repository,
    RepositoryKind,
    TriggerData,
    TriggerKey,
    content_hash,
    normalize_repository_url,
)
from shared.urls import scrub_urls, scrub_values, without_credentials

Obj = Mapping[str, Any]
LegacyTriggerFields = Literal["url", "any"]

_RELEASE_DOWNLOAD = re.compile(r"^https?://([^/]+)/([^/]+)/([^/]+)/releases/download/([^/]+)/[^/]+$")
_RAW_GITHUB = re.compile(r"^https?://raw\.githubusercontent\.com/([^/]+)/([^/]+)/([^/]+)/.+$")
_HTTP_URL = re.compile(r"^https?://[^/\s<>]+(/\S*)?$")
_GIT_RELEASE_FIELDS = ("hostname", "organization", "project", "release", "assetName")
GITOPS_MAP = "gitops-map"
GITOPS_REPOSITORY_URL = "gitops-repository-url"
# kabanero-operator config/versions.yaml: Kabanero 0.6-0.8 run events 0.1.0 (kabanero-events).
_EVENTS_0_1_RELEASES = re.compile(r"^v?0\.[678](\.|$)")


class Malformed(ValueError):
    """A custom object whose shape does not match its CRD schema."""


def _quoted(value: Any) -> str:
    """A value for a Malformed message (logged): its repr, URL credentials removed, then cut."""
    return f"{scrub_urls(repr(value)):.40}"


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
        raise Malformed(f"{where}: expected a string, got {_quoted(value)}")
    return value


def _identity(value: Any, where: str) -> str:
    """A name that becomes part of a trigger's key: a non-empty string without control characters.

    Kubernetes checks object names but not names inside a spec, so a mediation name can hold a NUL
    or a newline. Such a name cannot be an identity in keys, stores, logs and tool names (a NUL
    left otc-writer retrying its tool forever): the object is Malformed, and the reason names the
    field and the character, never the name itself."""
    text = _str(value, where, optional=False)
    assert text is not None
    if bad := next((c for c in text if unicodedata.category(c) in ("Cc", "Cs")), None):
        raise Malformed(f"{where}: contains the control character U+{ord(bad):04X}")
    return text


def object_id(obj: Obj) -> tuple[str, str]:
    """(namespace, name) of a namespaced object, or Malformed."""
    meta = _dict(obj.get("metadata"), "metadata", optional=False)
    namespace = _str(meta.get("namespace"), "metadata.namespace", optional=False)
    name = _str(meta.get("name"), "metadata.name", optional=False)
    assert namespace is not None and name is not None
    return namespace, name


# --- archive references -> repositories ------------------------------------------------------------


def _usable_git_release(ref: Obj, where: str) -> tuple[str, str, str, str, str] | None:
    """The five gitRelease strings when all are set (``GitReleaseSpec.IsUsable``), else None."""
    git_release = _dict(ref.get("gitRelease"), f"{where}.gitRelease")
    values = [git_release.get(f) for f in _GIT_RELEASE_FIELDS]
    if all(isinstance(v, str) and v for v in values):
        host, org, project, release, asset = (str(v) for v in values)
        return host, org, project, release, asset
    return None


def _https_url(ref: Obj, where: str) -> str | None:
    https = _dict(ref.get("https"), f"{where}.https")
    return _str(https.get("url"), f"{where}.https.url") or None


def repository_of_url(url: str, *, kind: RepositoryKind, source: str) -> Repository:
    """The repository an archive or index URL names: a GitHub release download or a raw file URL
    name ``https://<host>/<org>/<repo>`` (at that tag/ref); anything else is kept as it is, kind
    ``unknown`` (it names no repository; github-linker never links it)."""
    if m := _RELEASE_DOWNLOAD.match(url):
        host, org, repo, tag = m.groups()
        return Repository.of(
            normalize_repository_url(f"https://{host}/{org}/{repo}"), kind, ref=tag, source=source
        )
    if m := _RAW_GITHUB.match(url):
        org, repo, ref = m.groups()
        return Repository.of(
            normalize_repository_url(f"https://github.com/{org}/{repo}"), kind, ref=ref, source=source
        )
    return Repository.of(normalize_repository_url(url), "unknown", source=source)


def archive_repository(ref: Obj, *, kind: RepositoryKind, source: str) -> Repository | None:
    """Repository of one PipelineSpec/TriggerSpec/RepositoryConfig: its ``gitRelease`` when usable,
    else its ``https.url`` (kabanero-operator ``utils/pipelines.go``, ``stack/resolver.go``)."""
    if usable := _usable_git_release(ref, source):
        host, org, project, release, _ = usable
        repo_url = without_credentials(f"https://{host}/{org}/{project}")
        return Repository.of(repo_url, kind, ref=release, source=source)
    url = _https_url(ref, source)
    return repository_of_url(url, kind=kind, source=source) if url else None


def archive_url(ref: Obj, *, flat: bool = True) -> str | None:
    """Where an archive is downloaded from: gitRelease, then https.url, then (``flat``) ``url``."""
    git_release = ref.get("gitRelease")
    if isinstance(git_release, dict):
        values = [git_release.get(f) for f in _GIT_RELEASE_FIELDS]
        if all(isinstance(v, str) and v for v in values):
            host, org, project, release, asset = values
            return f"https://{host}/{org}/{project}/releases/download/{release}/{asset}"
    https = ref.get("https")
    if isinstance(https, dict) and isinstance(https.get("url"), str) and https["url"]:
        return str(https["url"])
    url = ref.get("url")
    return url if flat and isinstance(url, str) and url else None


def merge_repositories(repos: Iterable[Repository]) -> list[Repository]:
    """One entry per URL, in order of first appearance, keeping every kind and ref it appears with."""
    merged: dict[str, Repository] = {}
    for repo in repos:
        seen = merged.get(repo.url)
        merged[repo.url] = repo if seen is None else seen.merged(repo)
    return list(merged.values())


# --- the instance's repositories ---------------------------------------------------------------------


def _stack_repositories(spec: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """(source, RepositoryConfig) of ``spec.stacks.repositories[]`` then, for an instance written
    as v1alpha1, ``spec.collections.repositories[]`` as ``convertTo_v1alpha2`` appends them
    (``https.url`` = the collection's ``url``, no pipelines of their own)."""
    stacks = _dict(spec.get("stacks"), "spec.stacks")
    out: list[tuple[str, dict[str, Any]]] = []
    for i, r in enumerate(_list_of_dicts(stacks.get("repositories"), "spec.stacks.repositories")):
        name = _str(r.get("name"), f"spec.stacks.repositories[{i}].name") or str(i)
        out.append((f"spec.stacks.repositories[{name}]", r))
    collections = _dict(spec.get("collections"), "spec.collections")
    for i, c in enumerate(_list_of_dicts(collections.get("repositories"), "spec.collections.repositories")):
        name = _str(c.get("name"), f"spec.collections.repositories[{i}].name") or str(i)
        url = _str(c.get("url"), f"spec.collections.repositories[{i}].url")
        out.append((f"spec.collections.repositories[{name}]", {"name": name, "https": {"url": url}}))
    return out


def _pipeline_refs(where: str, pipelines: list[dict[str, Any]]) -> list[tuple[str, dict[str, Any]]]:
    return [(f"{where}[{p.get('id', i)}]", p) for i, p in enumerate(pipelines)]


def kabanero_repositories(kabanero: Obj) -> list[Repository]:
    """Stack hubs, their pipelines and the GitOps pipelines of one Kabanero CR (unmerged)."""
    spec = _dict(kabanero.get("spec"), "spec")
    stacks = _dict(spec.get("stacks"), "spec.stacks")
    gitops = _dict(spec.get("gitops"), "spec.gitops")
    default_pipelines = _list_of_dicts(stacks.get("pipelines"), "spec.stacks.pipelines")
    out: list[Repository] = []
    pipelines: list[tuple[str, dict[str, Any]]] = []
    for source, repo_config in _stack_repositories(spec):
        hub = archive_repository(repo_config, kind="stack-hub", source=source)
        if hub is not None:
            out.append(hub)
        # featured_stacks.go featuredStacks: the repository's own pipelines when non-empty, else
        # the instance's; instance pipelines no repository uses are activated by nobody.
        own = _list_of_dicts(repo_config.get("pipelines"), f"{source}.pipelines")
        if own:
            pipelines += _pipeline_refs(f"{source}.pipelines", own)
        else:
            pipelines += _pipeline_refs("spec.stacks.pipelines", default_pipelines)
    for source, ref in pipelines:
        if (repo := archive_repository(ref, kind="pipeline", source=source)) is not None:
            out.append(repo)
    for source, ref in _pipeline_refs(
        "spec.gitops.pipelines", _list_of_dicts(gitops.get("pipelines"), "spec.gitops.pipelines")
    ):
        if (repo := archive_repository(ref, kind="gitops", source=source)) is not None:
            out.append(repo)
    return out


def stack_repositories(stack: Obj) -> list[Repository]:
    """Pipelines of a Stack CR: ``spec.versions[].pipelines[]`` of the versions the stack controller
    activates (``desiredState`` not ``inactive``, case-insensitive: stack_controller.go)."""
    _, name = object_id(stack)
    spec = _dict(stack.get("spec"), "spec")
    out: list[Repository] = []
    for i, version in enumerate(_list_of_dicts(spec.get("versions"), "spec.versions")):
        label = _str(version.get("version"), f"spec.versions[{i}].version") or str(i)
        state = _str(version.get("desiredState"), f"spec.versions[{i}].desiredState") or ""
        if state.lower() == "inactive":
            continue
        where = f"stacks/{name}.spec.versions[{label}].pipelines"
        for source, ref in _pipeline_refs(where, _list_of_dicts(version.get("pipelines"), where)):
            if (repo := archive_repository(ref, kind="pipeline", source=source)) is not None:
                out.append(repo)
    return out


def gitops_map_repository(config_map: Obj) -> Repository | None:
    """The GitOps repository of the ``gitops-map`` ConfigMap (kabanero-pipelines 0.9
    ``pipelines/incubator/events/build-push-promote-task.yaml``), when it holds an http(s) URL (the
    published sample holds the placeholder ``<gitops_repo_url>``: no repository)."""
    data = _dict(config_map.get("data"), "data")
    url = _str(data.get(GITOPS_REPOSITORY_URL), f"data.{GITOPS_REPOSITORY_URL}")
    if not url or not _HTTP_URL.match(url.strip()):
        return None
    return Repository.of(
        normalize_repository_url(url),
        "gitops",
        source=f"configmaps/{GITOPS_MAP}.data.{GITOPS_REPOSITORY_URL}",
    )


# --- events enabled ------------------------------------------------------------------------------------


def events_enabled(kabanero: Obj, *, operator_0_9: bool) -> bool:
    """Whether the Kabanero CR deploys its events component.

    0.6-0.8 (``operator_0_9`` False): ``spec.events.enable``, a bool, false by default
    (events.go ``k.Spec.Events.Enable == false``). 0.9 (``EventsCustomizationSpec.IsEnabled``):
    ``enable`` when set, else on unless the events version is 0.1.0 (``spec.events.version``, or
    the one config/versions.yaml maps ``spec.version`` to: 0.6-0.8 -> 0.1.0).
    """
    spec = _dict(kabanero.get("spec"), "spec")
    events = _dict(spec.get("events"), "spec.events")
    enable = events.get("enable")
    if enable is not None:
        if not isinstance(enable, bool):
            raise Malformed(f"spec.events.enable: expected a boolean, got {_quoted(enable)}")
        return enable
    if not operator_0_9:
        return False
    version = _str(events.get("version"), "spec.events.version")
    if version:
        return version != "0.1.0"
    release = _str(spec.get("version"), "spec.version") or ""
    return not _EVENTS_0_1_RELEASES.match(release)


# --- derived state of one namespace ------------------------------------------------------------------


# What is derived is the message itself: the emitter only stamps the revision (and, for a trigger,
# the instance name), with ``model_copy``, instead of copying the derived record field by field.
DesiredInstance = InstanceData
"""A derived instance: ``revision`` 0 until the emitter stamps it."""
DesiredTrigger = TriggerData
"""A derived trigger: ``revision`` 0 and ``instance.name`` None until the emitter stamps them."""


@dataclass
class Desired:
    """Everything derived for one (cluster, namespace).

    ``frozen_owners`` are (generation, owner) pairs whose source object is malformed right now: their
    last published triggers are kept as they are (neither updated nor deleted) until it is fixed.
    ``instance_frozen`` does the same for the instance record, ``all_mediations_frozen`` and
    ``all_legacy_frozen`` for every trigger of that generation in the namespace.
    """

    namespace: str
    instance: DesiredInstance | None = None
    triggers: dict[str, DesiredTrigger] = field(default_factory=dict)
    frozen_owners: set[tuple[str, str]] = field(default_factory=set)
    instance_frozen: bool = False
    all_mediations_frozen: bool = False
    all_legacy_frozen: bool = False


def derive_instance(
    cluster: str,
    kabanero: Obj,
    *,
    stacks: Sequence[Obj] = (),
    gitops_map: Obj | None = None,
    triggers: Sequence[DesiredTrigger] = (),
) -> DesiredInstance:
    """The instance record: the CR's repositories, then the Stacks', the gitops-map's and the
    repositories of the namespace's triggers, merged by URL."""
    namespace, name = object_id(kabanero)
    spec = _dict(kabanero.get("spec"), "spec")
    version = _str(spec.get("version"), "spec.version")
    found = kabanero_repositories(kabanero)
    for stack in stacks:
        found += stack_repositories(stack)
    if gitops_map is not None and (repo := gitops_map_repository(gitops_map)) is not None:
        found.append(repo)
    for trigger in triggers:
        found += trigger.repositories
    repositories = merge_repositories(found)
    meta = kabanero["metadata"]
    uid = meta.get("uid") if isinstance(meta.get("uid"), str) else None
    hashed = {
        "name": name,
        "version": version,
        "repositories": [r.model_dump(mode="json") for r in repositories],
    }
    return DesiredInstance(
        instance=InstanceRef(cluster=cluster, namespace=namespace, name=name),
        uid=uid,
        version=version,
        repositories=repositories,
        content_hash=content_hash(hashed),
        revision=0,
    )


def instance_repositories(kabanero: Obj) -> list[Repository]:
    """The repositories of one Kabanero CR alone (no Stacks, gitops-map or triggers), merged."""
    return merge_repositories(kabanero_repositories(kabanero))


def derive_legacy_trigger(
    cluster: str, kabaneros: Sequence[Obj], *, fields: LegacyTriggerFields = "url"
) -> DesiredTrigger | None:
    """0.6-0.8: the one trigger archive kabanero-events runs in a namespace.

    kabanero-events is deployed when a Kabanero CR of the namespace enables events; it lists every
    Kabanero of its namespace and takes the first ``spec.triggers[]`` entry with a flat ``url``
    (``pkg/utils/kabanero_util.go`` ``GetTriggerInfo``); version = that entry's ``sha256``. With
    ``fields="any"`` (off by default; not what kabanero-events does) an entry located by
    ``https.url`` or ``gitRelease`` counts as well.
    """
    if not any(events_enabled(k, operator_0_9=False) for k in kabaneros):
        return None
    for kabanero in kabaneros:
        namespace, name = object_id(kabanero)
        spec = _dict(kabanero.get("spec"), "spec")
        for i, entry in enumerate(_list_of_dicts(spec.get("triggers"), "spec.triggers")):
            flat = _str(entry.get("url"), f"spec.triggers[{i}].url")
            url = flat or (archive_url(entry, flat=False) if fields == "any" else None)
            if not url:
                continue
            trigger_id = _str(entry.get("id"), f"spec.triggers[{i}].id") or str(i)
            _identity(trigger_id, f"spec.triggers[{i}].id")
            source = f"kabaneros/{name}.spec.triggers[{trigger_id}]"
            repo = (
                repository_of_url(url, kind="trigger", source=source)
                if flat
                else archive_repository(entry, kind="trigger", source=source)
            )
            content = scrub_values(dict(entry))  # no URL credentials in what we publish
            return DesiredTrigger(
                key=TriggerKey(
                    cluster=cluster, namespace=namespace, generation="legacy", owner=name, name=trigger_id
                ),
                instance=InstanceRef(cluster=cluster, namespace=namespace),
                content=content,
                content_hash=content_hash(content),
                version=_str(entry.get("sha256"), f"spec.triggers[{i}].sha256"),
                url=without_credentials(url),
                repositories=[repo] if repo and repo.kinds != ["unknown"] else [],
                destinations=[],
                revision=0,
            )
    return None


_MEDIATOR_FIELDS = ("createListener", "createRoute", "insecureListener", "repositories", "variables")


def check_mediator(mediator: Obj) -> list[dict[str, Any]]:
    """The mediations of an EventMediator, or Malformed."""
    object_id(mediator)
    spec = _dict(mediator.get("spec"), "spec", optional=False)
    mediations = _list_of_dicts(spec.get("mediations"), "spec.mediations")
    for i, item in enumerate(mediations):
        _identity(item.get("name"), f"spec.mediations[{i}].name")
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
    """The ``spec.connections[]`` items of an EventConnections object that name a mediator, or
    Malformed. An item without ``from.mediator`` (the CRD allows it) matches no mediation
    (``eventEndpointMatch``) and is left out."""
    object_id(connections)
    spec = _dict(connections.get("spec"), "spec", optional=False)
    items = _list_of_dicts(spec.get("connections"), "spec.connections")
    out: list[dict[str, Any]] = []
    for i, item in enumerate(items):
        frm = _dict(item.get("from"), f"spec.connections[{i}].from")
        if frm.get("mediator") is None:
            continue
        med = _dict(frm.get("mediator"), f"spec.connections[{i}].from.mediator", optional=False)
        _str(med.get("name"), f"spec.connections[{i}].from.mediator.name", optional=False)
        _str(med.get("mediation"), f"spec.connections[{i}].from.mediator.mediation")
        _str(med.get("destination"), f"spec.connections[{i}].from.mediator.destination")
        for j, to in enumerate(_list_of_dicts(item.get("to"), f"spec.connections[{i}].to")):
            _list_of_dicts(to.get("https"), f"spec.connections[{i}].to[{j}].https")
        out.append(item)
    return out


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
    cluster: str,
    mediator: Obj,
    connections: list[tuple[str, dict[str, Any]]],
    previous: Mapping[str, DesiredTrigger] | None = None,
) -> list[DesiredTrigger]:
    """0.9+: one trigger per mediation; content = mediation + mediator-level fields + its connections.

    ``connections`` are (EventConnections name, connection item) pairs of the same namespace. An item
    applies to a mediation when ``from.mediator`` names this mediator, this mediation and one of the
    mediation's ``sendTo`` destinations, all three exactly (events-operator
    ``pkg/connections/connections.go`` ``eventEndpointMatch``; unset fields compare as "").
    ``previous``: this mediator's triggers derived last time, by mediation name; one whose content is equal
    is reused as it is (an edit of one mediation hashes only that one, not all of the mediator's).
    """
    namespace, name = object_id(mediator)
    mediations = check_mediator(mediator)
    spec = mediator["spec"]
    mediator_level = {f: spec[f] for f in _MEDIATOR_FIELDS if spec.get(f) is not None}
    out: list[DesiredTrigger] = []
    for item in mediations:
        mediation = item["name"]
        conns = _connections_of(name, item, connections)
        raw: dict[str, Any] = {"mediation": item, "mediator": mediator_level, "connections": conns}
        before = previous.get(mediation) if previous else None
        # No URL credentials in what we publish: a destination is its URL without userinfo or query.
        # ``before.content`` was scrubbed here: equal to it, ``raw`` is clean (the memo costs no scrub).
        content = raw if before is not None and before.content == raw else scrub_values(raw)
        if before is not None and before.content == content and before.key.cluster == cluster:
            out.append(before)
            continue
        digest = content_hash(content)
        out.append(
            DesiredTrigger(
                key=TriggerKey(
                    cluster=cluster, namespace=namespace, generation="mediation", owner=name, name=mediation
                ),
                instance=InstanceRef(cluster=cluster, namespace=namespace),
                content=content,
                content_hash=digest,
                version=digest,
                url=None,
                repositories=[],
                destinations=_destinations(content["connections"]),
                revision=0,
            )
        )
    return out


def _connections_of(
    mediator: str, item: dict[str, Any], connections: list[tuple[str, dict[str, Any]]]
) -> list[dict[str, Any]]:
    """The connection items that apply to one mediation (see :func:`derive_mediation_triggers`)."""
    mediation = item["name"]
    send_to = set(item.get("sendTo") or ())
    matched = [
        (source, conn)
        for source, conn in connections
        if conn["from"]["mediator"]["name"] == mediator
        and (conn["from"]["mediator"].get("mediation") or "") == mediation
        and (conn["from"]["mediator"].get("destination") or "") in send_to
    ]
    # Order-independent: connections are a set across EventConnections objects.
    matched.sort(key=lambda pair: (pair[0], content_hash(pair[1])))
    return [conn for _, conn in matched]
